//! Message scenarios: publish-only (own client and amqprs), pubsub rows (one queue, fanout, topic,
//! confirms, persistent).

use super::*;
use amq_protocol::types::{AMQPValue, FieldTable};

pub(super) fn transient_spec(ctx: &Ctx, exchange: &str, keys: Vec<String>, size: usize) -> PubSpec {
    PubSpec {
        exchange: exchange.to_string(),
        keys,
        props: Props::default().to_bytes(),
        body: body(size),
        confirms: false,
        window: CONFIRM_WINDOW,
        inflight_cap: ctx.inflight_cap,
        fanout: 1,
        rate: None,
        max_msgs: None,
    }
}

/// Publish-only to one queue. The window ends when the publisher stops (duration or message cap)
/// *and* the broker holds every message (passive declare), so buffered bytes are not counted as done.
pub async fn publish_only(ctx: &Ctx, size: usize, amqprs: bool) -> Result<Outcome> {
    let name = if amqprs { "amqprs-publish" } else { "publish" };
    let q = format!("bench-{name}-{size}-{}", ctx.uniq);
    let mut control = channel(ctx).await?;
    control.declare_queue(1, queue_opts(&q)).await?;
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    // Bounded memory: at most ~1 GiB of bodies (or 4 M messages) in the queue.
    let max_msgs: u64 = if size >= 512 { 1_000_000 } else { 4_000_000 };
    // Messages are counted by the broker (a passive queue.declare every 20 ms), and the publisher stays
    // at most `ahead` messages in front of that count: a broker can read far more than it enqueues
    // (RabbitMQ's TLS connection process takes in a million publishes in half a second and then needs
    // tens of seconds to enqueue them), and neither the count nor the memory should depend on that.
    let ahead: u64 = if size >= 512 { 50_000 } else { 200_000 };
    // The publisher's connection stays open until the broker has enqueued everything: closing it
    // earlier could make a broker drop publishes it has read but not yet processed.
    let release = Arc::new(Notify::new());
    let mut amqprs_task = None;
    let tasks = if amqprs {
        amqprs_task = Some(
            start_amqprs_publisher(
                ctx,
                &q,
                size,
                ahead,
                counters.clone(),
                stop.clone(),
                release.clone(),
            )
            .await?,
        );
        Vec::new()
    } else {
        let mut spec = transient_spec(ctx, "", vec![q.clone()], size);
        spec.inflight_cap = Some(ahead);
        spec.max_msgs = Some(max_msgs);
        let done = Arc::new(Notify::new());
        vec![start_publisher(ctx, spec, counters.clone(), stop.clone(), done).await?]
    };
    let poll_every = Duration::from_millis(20);
    let warmup_end = Instant::now() + ctx.warmup;
    while Instant::now() < warmup_end {
        tokio::time::sleep(poll_every).await;
        poll_count(&mut control, &q, &counters).await?;
        check(&counters)?;
    }
    let at_start = poll_count(&mut control, &q, &counters).await?;
    let a = snap(ctx, at_start)?;
    let published_at_start = counters.published.load(Relaxed);
    let window_end = Instant::now() + ctx.duration;
    while Instant::now() < window_end && counters.published.load(Relaxed) < max_msgs {
        tokio::time::sleep(poll_every).await;
        poll_count(&mut control, &q, &counters).await?;
    }
    let _ = stop_tx.send(true);
    let (_, conns) = join(tasks).await;
    // Let the amqprs task notice the stop (it checks between publishes).
    tokio::time::sleep(Duration::from_millis(50)).await;
    check(&counters)?;
    let total = counters.published.load(Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut in_queue = 0;
    while Instant::now() < deadline {
        in_queue = poll_count(&mut control, &q, &counters).await?;
        if in_queue >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = snap(ctx, in_queue)?;
    close_all(conns).await;
    release.notify_one();
    if let Some(t) = amqprs_task {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    let mut out = outcome(ctx, name, size, "msg", &a, &b);
    out.extra.insert("published_total".into(), json!(total));
    out.extra
        .insert("in_queue_at_start".into(), json!(at_start));
    out.extra
        .insert("published_at_start".into(), json!(published_at_start));
    out.extra.insert("in_queue".into(), json!(in_queue));
    out.extra
        .insert("rss_kib_at_end".into(), json!(procfs::rss_kib(ctx.pid)?));
    if in_queue < total {
        out.extra.insert(
            "warning".into(),
            json!("broker did not report every published message within 60 s"),
        );
    }
    control.delete_queue(1, &q).await?;
    control.close().await?;
    Ok(out)
}

/// The broker's message count of `q`, published to the publisher as its progress.
pub(super) async fn poll_count(control: &mut Conn, q: &str, counters: &Counters) -> Result<u64> {
    let n = u64::from(control.queue_count(1, q).await?);
    counters.delivered.store(n, Relaxed);
    counters.progress.notify_one();
    Ok(n)
}

/// amqprs 2.1 publishing as fast as `basic_publish` returns: one frame batch, one TLS record and one
/// write per message (how it is built) — the calibration row showing why the load generator has its
/// own client.
pub(super) async fn start_amqprs_publisher(
    ctx: &Ctx,
    queue: &str,
    size: usize,
    ahead: u64,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    release: Arc<Notify>,
) -> Result<JoinHandle<Result<TaskOut>>> {
    use amqprs::channel::BasicPublishArguments;
    use amqprs::connection::{Connection, OpenConnectionArguments};
    use amqprs::security::SecurityCredentials;
    use amqprs::tls::TlsAdaptor;
    let tls = TlsAdaptor::with_client_auth(
        Some(&ctx.tls_dir.join("ca.pem")),
        &ctx.tls_dir.join("admin.pem"),
        &ctx.tls_dir.join("admin.key"),
        "localhost".to_string(),
    )
    .map_err(|e| anyhow!("amqprs TLS adaptor: {e}"))?;
    let mut args = OpenConnectionArguments::new("127.0.0.1", ctx.port, "", "");
    args.credentials(SecurityCredentials::new_external())
        .virtual_host("/")
        .tls_adaptor(tls);
    let conn = Connection::open(&args)
        .await
        .map_err(|e| anyhow!("amqprs open: {e}"))?;
    let ch = conn
        .open_channel(None)
        .await
        .map_err(|e| anyhow!("amqprs channel: {e}"))?;
    let queue = queue.to_string();
    let body = body(size);
    Ok(tokio::spawn(async move {
        let args = BasicPublishArguments::new("", &queue);
        let r: Result<()> = async {
            let mut n = 0u64;
            while !*stop.borrow() {
                ch.basic_publish(
                    amqprs::BasicProperties::default(),
                    body.clone(),
                    args.clone(),
                )
                .await
                .map_err(|e| anyhow!("amqprs publish: {e}"))?;
                n += 1;
                if n.is_multiple_of(64) {
                    let published = counters.published.fetch_add(64, Relaxed) + 64;
                    tokio::task::yield_now().await;
                    while published > counters.delivered.load(Relaxed) + ahead && !*stop.borrow() {
                        tokio::select! {
                            _ = stop.changed() => {}
                            _ = counters.progress.notified() => {}
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                }
            }
            counters.published.fetch_add(n % 64, Relaxed);
            Ok(())
        }
        .await;
        let r = counters.noted(r);
        let _ = tokio::time::timeout(Duration::from_secs(120), release.notified()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), ch.close()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
        r.map(|()| TaskOut::default())
    }))
}

/// Queues, consumers and a publisher; `scenario` picks the shape.
pub async fn pubsub(ctx: &Ctx, scenario: &str, size: usize) -> Result<Outcome> {
    let tag = format!("{scenario}-{size}-{}", ctx.uniq);
    let mut control = channel(ctx).await?;
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    let mut manual_ack = false;
    let mut latency = false;
    let mut paced = false;
    // Consumers per queue (a stream's each read every message).
    let mut readers = 1;
    let spec = match scenario {
        "pubsub" => {
            let q = format!("bench-{tag}");
            control.declare_queue(1, queue_opts(&q)).await?;
            queues.push(q.clone());
            transient_spec(ctx, "", vec![q], size)
        }
        "confirms" | "persistent" | "persistent-w1" | "quorum" | "quorum-w1" | "quorum-paced"
        | "stream" => {
            let q = format!("bench-{tag}");
            let persistent = scenario != "confirms";
            let mut arguments = FieldTable::default();
            for kind in ["quorum", "stream"] {
                if scenario.starts_with(kind) {
                    arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
                }
            }
            control
                .declare_queue_with(
                    1,
                    QueueOpts {
                        name: &q,
                        durable: persistent,
                        ..QueueOpts::default()
                    },
                    arguments,
                )
                .await?;
            queues.push(q.clone());
            manual_ack = true;
            let mut spec = transient_spec(ctx, "", vec![q], size);
            spec.confirms = true;
            if scenario == "stream" {
                // Three independent readers from `next` (each consumer starts before the publisher),
                // as oslo's stream fanout has one per service instance.
                readers = 3;
                spec.fanout = 3;
            }
            if scenario.ends_with("-w1") {
                spec.window = 1;
            }
            if scenario.ends_with("-paced") {
                // Window 1000 at an offered load every broker here sustains: the confirm latency
                // is then the broker's, not the time a full window waits in line (Little's law).
                spec.rate = Some(PACED_RATE);
                spec.inflight_cap = None;
                paced = true;
            }
            if persistent {
                spec.props = Props {
                    delivery_mode: Some(2),
                    ..Props::default()
                }
                .to_bytes();
            }
            spec
        }
        "fanout" => {
            let ex = format!("bench-{tag}");
            control.declare_exchange(1, &ex, "fanout").await?;
            exchanges.push(ex.clone());
            for i in 0..10 {
                let q = format!("bench-{tag}-{i}");
                control.declare_queue(1, queue_opts(&q)).await?;
                control.bind(1, &q, &ex, "").await?;
                queues.push(q);
            }
            let mut spec = transient_spec(ctx, &ex, vec!["all".into()], size);
            spec.fanout = 10;
            spec
        }
        "topic" => {
            // 10 queues x 100 bindings = 1,000 bindings, half `*` and half `#` patterns; every
            // routing key matches exactly one binding.
            let ex = format!("bench-{tag}");
            control.declare_exchange(1, &ex, "topic").await?;
            exchanges.push(ex.clone());
            let mut keys = Vec::new();
            for i in 0..10 {
                let q = format!("bench-{tag}-{i}");
                control.declare_queue(1, queue_opts(&q)).await?;
                for j in 0..100 {
                    let pattern = if j % 2 == 0 {
                        format!("svc{i}.host{j}.*")
                    } else {
                        format!("svc{i}.host{j}.#")
                    };
                    control.bind(1, &q, &ex, &pattern).await?;
                    keys.push(format!("svc{i}.host{j}.info"));
                }
                queues.push(q);
            }
            // Interleave so consecutive publishes go to different queues.
            let mut mixed = Vec::with_capacity(keys.len());
            for j in 0..100 {
                for i in 0..10 {
                    mixed.push(keys[i * 100 + j].clone());
                }
            }
            transient_spec(ctx, &ex, mixed, size)
        }
        "latency" => {
            let q = format!("bench-{tag}");
            control.declare_queue(1, queue_opts(&q)).await?;
            queues.push(q.clone());
            latency = true;
            let mut spec = transient_spec(ctx, "", vec![q], size.max(8));
            spec.rate = Some(LATENCY_RATE);
            spec.inflight_cap = None;
            spec
        }
        other => bail!("unknown scenario {other}"),
    };
    let mut tasks = Vec::new();
    for q in &queues {
        for _ in 0..readers {
            tasks.push(
                start_consumer(ctx, q, manual_ack, latency, counters.clone(), stop.clone()).await?,
            );
        }
    }
    let done = Arc::new(Notify::new());
    tasks.push(start_publisher(ctx, spec, counters.clone(), stop.clone(), done).await?);
    let (a, b) = window(ctx, &counters, |c| c.delivered.load(Relaxed)).await?;
    let _ = stop_tx.send(true);
    let samples = finish(tasks).await;
    let mut out = outcome(ctx, scenario, size, "msg", &a, &b);
    percentiles(&mut out, samples.latency);
    confirm_percentiles(&mut out, samples.confirm);
    out.extra
        .insert("published".into(), json!(counters.published.load(Relaxed)));
    out.extra
        .insert("delivered".into(), json!(counters.delivered.load(Relaxed)));
    if manual_ack {
        out.extra
            .insert("confirmed".into(), json!(counters.confirmed.load(Relaxed)));
        out.extra
            .insert("nacked".into(), json!(counters.nacked.load(Relaxed)));
    }
    if latency {
        out.extra.insert("rate_target".into(), json!(LATENCY_RATE));
    }
    if paced {
        out.extra.insert("rate_target".into(), json!(PACED_RATE));
    }
    for q in &queues {
        control.delete_queue(1, q).await?;
    }
    for ex in &exchanges {
        control.delete_exchange(1, ex).await?;
    }
    control.close().await?;
    Ok(out)
}
