//! Consumers: prefetch, acks, latency samples.

use super::*;

/// A consumer on its own connection: deliveries are counted (and acked, one basic.ack per delivery,
/// written once per read burst); with `latency`, the timestamp in the body gives a sample.
pub(super) async fn start_consumer(
    ctx: &Ctx,
    queue: &str,
    manual_ack: bool,
    latency: bool,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<TaskOut>>> {
    let mut conn = channel(ctx).await?;
    if manual_ack {
        conn.qos(1, ctx.prefetch).await?;
    }
    conn.consume(1, queue, "bench", !manual_ack).await?;
    Ok(tokio::spawn(async move {
        let mut asm = client::Assembler::default();
        let mut out = BytesMut::new();
        let mut samples = Vec::new();
        let r: Result<()> = async {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    r = conn.fill() => r?,
                }
                let mut n = 0;
                while let Some(ev) = conn.try_event(&mut asm)? {
                    if let Event::Deliver(d) = ev {
                        n += 1;
                        if manual_ack {
                            encode_ack(&mut out, d.channel, d.tag, false);
                        }
                        if latency && d.body_head.len() >= 8 && counters.recording.load(Relaxed) {
                            let mut ts = [0u8; 8];
                            ts.copy_from_slice(&d.body_head[..8]);
                            samples.push(now_ns().saturating_sub(u64::from_be_bytes(ts)));
                        }
                    }
                }
                if !out.is_empty() {
                    conn.write(&out).await?;
                    out.clear();
                }
                if n > 0 {
                    counters.delivered.fetch_add(n, Relaxed);
                    counters.progress.notify_one();
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
    }))
}
