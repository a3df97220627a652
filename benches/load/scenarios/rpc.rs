//! RPC: clients calling servers through reply queues, as oslo.messaging does.

use super::*;

/// oslo.messaging-style RPC: `servers` consumers share a request queue (manual ack, prefetch 100) and
/// answer each request on the caller's reply queue with its correlation id; `clients` callers each
/// have an exclusive reply queue and one call outstanding.
pub async fn rpc(ctx: &Ctx, clients: usize, servers: usize, size: usize) -> Result<Outcome> {
    let scenario = format!("rpc-{clients}x{servers}");
    let tag = format!("{scenario}-{size}-{}", ctx.uniq);
    let request_q = format!("bench-{tag}-requests");
    let mut control = channel(ctx).await?;
    control.declare_queue(1, queue_opts(&request_q)).await?;
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let payload = body(size);
    let mut tasks = Vec::new();
    for _ in 0..servers {
        let mut conn = channel(ctx).await?;
        conn.qos(1, PREFETCH).await?;
        conn.consume(1, &request_q, "server", false).await?;
        let mut stop = stop.clone();
        let counters = counters.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut asm = client::Assembler::default();
            let mut out = BytesMut::new();
            let r: Result<()> = async {
                loop {
                    tokio::select! {
                        biased;
                        _ = stop.changed() => break,
                        r = conn.fill() => r?,
                    }
                    while let Some(ev) = conn.try_event(&mut asm)? {
                        if let Event::Deliver(d) = ev {
                            let props = BasicProperties::parse(&d.props)
                                .map_err(|e| anyhow!("request properties: {e}"))?;
                            let reply_to = props.reply_to.unwrap_or_default();
                            let reply_props = Props {
                                content_type: Some(b"application/json"),
                                correlation_id: props.correlation_id,
                                ..Props::default()
                            }
                            .to_bytes();
                            encode_publish(
                                &mut out,
                                conn.frame_max,
                                1,
                                ("", std::str::from_utf8(reply_to)?, false),
                                &reply_props,
                                &payload,
                            );
                            encode_ack(&mut out, d.channel, d.tag, false);
                        }
                    }
                    if !out.is_empty() {
                        conn.write(&out).await?;
                        out.clear();
                    }
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => Ok(TaskOut {
                    conn: Some(conn),
                    ..TaskOut::default()
                }),
                Err(e) => {
                    counters.error(&e);
                    Err(e)
                }
            }
        }));
    }
    let mut client_tasks = Vec::new();
    for i in 0..clients {
        let mut conn = channel(ctx).await?;
        let reply_q = format!("bench-{tag}-reply-{i}");
        conn.declare_queue(
            1,
            QueueOpts {
                name: &reply_q,
                exclusive: true,
                auto_delete: true,
                ..QueueOpts::default()
            },
        )
        .await?;
        conn.consume(1, &reply_q, "caller", true).await?;
        let mut stop = stop.clone();
        let counters = counters.clone();
        let payload = payload.clone();
        let request_q = request_q.clone();
        client_tasks.push(tokio::spawn(async move {
            let mut asm = client::Assembler::default();
            let mut out = BytesMut::new();
            let mut samples = Vec::new();
            let r: Result<()> = async {
                let mut n = 0u64;
                'calls: while !*stop.borrow() {
                    n += 1;
                    let corr = format!("{i}-{n}");
                    let props = Props {
                        content_type: Some(b"application/json"),
                        correlation_id: Some(corr.as_bytes()),
                        reply_to: Some(reply_q.as_bytes()),
                        ..Props::default()
                    }
                    .to_bytes();
                    encode_publish(
                        &mut out,
                        conn.frame_max,
                        1,
                        ("", &request_q, false),
                        &props,
                        &payload,
                    );
                    let t0 = Instant::now();
                    conn.write(&out).await?;
                    out.clear();
                    loop {
                        while let Some(ev) = conn.try_event(&mut asm)? {
                            if let Event::Deliver(d) = ev {
                                let p = BasicProperties::parse(&d.props)
                                    .map_err(|e| anyhow!("reply properties: {e}"))?;
                                if p.correlation_id == Some(corr.as_bytes()) {
                                    counters.calls.fetch_add(1, Relaxed);
                                    if counters.recording.load(Relaxed) {
                                        samples.push(t0.elapsed().as_nanos() as u64);
                                    }
                                    continue 'calls;
                                }
                            }
                        }
                        tokio::select! {
                            biased;
                            _ = stop.changed() => break 'calls,
                            r = conn.fill() => r?,
                        }
                    }
                }
                Ok(())
            }
            .await;
            match r {
                Ok(()) => Ok(TaskOut {
                    conn: Some(conn),
                    samples,
                    ..TaskOut::default()
                }),
                Err(e) => {
                    counters.error(&e);
                    Err(e)
                }
            }
        }));
    }
    let (a, b) = window(ctx, &counters, |c| c.calls.load(Relaxed)).await?;
    let _ = stop_tx.send(true);
    let samples = finish(client_tasks).await;
    let _ = finish(tasks).await;
    let mut out = outcome(ctx, &scenario, size, "call", &a, &b);
    percentiles(&mut out, samples.latency);
    control.delete_queue(1, &request_q).await?;
    control.close().await?;
    Ok(out)
}
