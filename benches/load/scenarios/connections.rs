//! Connections: churn, idle connections and their memory, many queues.

use super::*;

/// Connection churn: each worker loops TCP connect, full TLS handshake (no resumption), EXTERNAL,
/// connection.open, connection.close/close-ok.
pub async fn churn(ctx: &Ctx, workers: usize) -> Result<Outcome> {
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let target = ctx.target.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = 0u64;
            while !*stop.borrow() {
                let r = async {
                    let c = client::open(&target, 60).await?;
                    Ok(c.close().await?)
                }
                .await;
                match r {
                    Ok(()) => {
                        counters.calls.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        failures += 1;
                        counters.nacked.fetch_add(1, Relaxed);
                        if failures > 100 {
                            counters.error(&e);
                            return Err(e);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            Ok(TaskOut::default())
        }));
    }
    let (a, b) = window(ctx, &counters, |c| c.calls.load(Relaxed)).await?;
    let _ = stop_tx.send(true);
    let _ = finish(tasks).await;
    let mut out = outcome(ctx, &format!("churn-{workers}"), 0, "conn", &a, &b);
    out.extra
        .insert("failed".into(), json!(counters.nacked.load(Relaxed)));
    Ok(out)
}

/// Fresh broker: RSS (and CPU use) while idle.
pub async fn idle_rss(ctx: &Ctx) -> Result<Outcome> {
    let a = snap(ctx, 0)?;
    tokio::time::sleep(ctx.settle).await;
    let b = snap(ctx, 0)?;
    let mut out = outcome(ctx, "idle-rss", 0, "", &a, &b);
    out.rss_kib = Some(procfs::rss_kib(ctx.pid)?);
    out.extra
        .insert("threads".into(), json!(procfs::threads(ctx.pid)));
    Ok(out)
}

/// N idle connections with 60 s heartbeats (each answered by a holder task that also sends its own
/// heartbeats), opened `OPEN_CONCURRENCY` at a time within the open budget.
pub async fn idle_conns(ctx: &Ctx) -> Result<Outcome> {
    let n = ctx.idle_conns;
    let base_rss = procfs::rss_kib(ctx.pid)?;
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + ctx.open_budget;
    let a = snap(ctx, 0)?;
    let mut openers = Vec::new();
    for _ in 0..OPEN_CONCURRENCY {
        let target = ctx.target.clone();
        let next = next.clone();
        let counters = counters.clone();
        let stop = stop.clone();
        openers.push(tokio::spawn(async move {
            let mut holders = Vec::new();
            let mut failures = 0;
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Relaxed);
                if i >= n as u64 {
                    break;
                }
                match client::open(&target, IDLE_HEARTBEAT).await {
                    Ok(conn) => {
                        counters.calls.fetch_add(1, Relaxed);
                        holders.push(tokio::spawn(hold(conn, stop.clone())));
                    }
                    Err(e) => {
                        failures += 1;
                        counters.nacked.fetch_add(1, Relaxed);
                        if failures > 20 {
                            counters.error(&e);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            holders
        }));
    }
    let mut holders = Vec::new();
    for o in openers {
        holders.extend(o.await?);
    }
    let b = snap(ctx, counters.calls.load(Relaxed))?;
    let opened = b.count;
    tokio::time::sleep(ctx.settle).await;
    let rss = procfs::rss_kib(ctx.pid)?;
    let mut out = outcome(ctx, "idle-conns", 0, "conn", &a, &b);
    out.rss_kib = Some(rss);
    out.base_rss_kib = Some(base_rss);
    out.items = Some(opened);
    out.setup_secs = Some(out.secs);
    out.extra.insert("requested".into(), json!(n));
    out.extra
        .insert("failed".into(), json!(counters.nacked.load(Relaxed)));
    out.extra.insert(
        "kib_per_conn".into(),
        json!((rss.saturating_sub(base_rss)) as f64 / opened.max(1) as f64),
    );
    out.extra.insert(
        "client_rss_kib".into(),
        json!(procfs::rss_kib(std::process::id()).unwrap_or(0)),
    );
    if opened < n as u64 {
        out.extra.insert(
            "warning".into(),
            json!(format!(
                "opened {opened} of {n} within the {:?} budget",
                ctx.open_budget
            )),
        );
    }
    let _ = stop_tx.send(true);
    // The connections are dropped (TCP close) rather than closed one by one: the broker is stopped
    // after this group anyway.
    for h in holders {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    check(&counters).map(|()| out)
}

pub(super) async fn hold(mut conn: Conn, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(u64::from(IDLE_HEARTBEAT) / 2));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = conn.fill() => {
                if r.is_err() { return; }
                drop(conn.take_buffered()); // heartbeats only
            }
            _ = tick.tick() => {
                let mut hb = BytesMut::new();
                encode_heartbeat(&mut hb);
                if conn.write(&hb).await.is_err() { return; }
            }
        }
    }
}

/// N queues, each bound to one topic exchange, declared over 16 channels in lock-step (one
/// synchronous method outstanding per channel).
pub async fn queues(ctx: &Ctx) -> Result<Outcome> {
    const CHANNELS: u16 = 16;
    let n = ctx.queues;
    let base_rss = procfs::rss_kib(ctx.pid)?;
    let mut conn = connect(ctx).await?;
    for ch in 1..=CHANNELS {
        conn.open_channel(ch).await?;
    }
    let ex = format!("bench-queues-{}", ctx.uniq);
    conn.declare_exchange(1, &ex, "topic").await?;
    let a = snap(ctx, 0)?;
    let mut i = 0usize;
    while i < n {
        let batch: Vec<(u16, usize)> = (1..=CHANNELS)
            .zip(i..n.min(i + CHANNELS as usize))
            .collect();
        for step in 0..2 {
            let mut out = BytesMut::new();
            for &(ch, q) in &batch {
                let name = format!("bench-q-{q}-{}", ctx.uniq);
                let m = if step == 0 {
                    client::queue_declare(&name)
                } else {
                    client::queue_bind(&name, &ex, &format!("svc.{q}.*"))
                };
                warren_protocol::method::encode_method(&mut out, ch, &m);
            }
            conn.write(&out).await?;
            let mut replies = 0;
            while replies < batch.len() {
                let f = conn
                    .next_frame()
                    .await
                    .context("queue declare/bind reply")?;
                if f.kind == warren_protocol::frame::FrameKind::Method {
                    let m = warren_protocol::method::decode_method(&f.payload)
                        .map_err(|e| anyhow!("{e}"))?;
                    match m {
                        amq_protocol::protocol::AMQPClass::Queue(_) => replies += 1,
                        other => bail!("unexpected {other:?} while declaring queues"),
                    }
                }
            }
        }
        i += batch.len();
    }
    let b = snap(ctx, n as u64)?;
    tokio::time::sleep(ctx.settle).await;
    let mut out = outcome(ctx, "queues", 0, "queue", &a, &b);
    out.rss_kib = Some(procfs::rss_kib(ctx.pid)?);
    out.base_rss_kib = Some(base_rss);
    out.items = Some(n as u64);
    out.setup_secs = Some(out.secs);
    out.extra.insert(
        "kib_per_queue".into(),
        json!(out.rss_kib.unwrap_or(0).saturating_sub(base_rss) as f64 / n.max(1) as f64),
    );
    let _ = conn.close().await;
    Ok(out)
}
