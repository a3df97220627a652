//! `runaway`: does one publisher that outruns its consumer slow down the rest of the broker?
//!
//! Queue B has a confirming publisher (window 1,000, at most `--inflight-cap` ahead of its consumer)
//! and an auto-ack consumer; its delivery rate is measured alone first, then again while queue A
//! takes a *runaway*: the same confirming publisher with no cap, into a consumer that acks at a fixed
//! tenth of B's solo rate (B's publisher is A's without the slow consumer, so B solo is A's solo rate
//! too). A's backlog grows for the whole second window, past the queue's memory budget into spill files
//! on Warren. The row's rate is B's alongside A; the target is B ≥ 80% of its solo rate.
//!
//! Transient messages: A's confirms then come as soon as a message is enqueued, so nothing but the
//! broker's CPU (and whatever flow control it has) holds A back — the worst case for a shared core.
//! With persistent messages every confirm waits for an fsync, which would hide the broker's behaviour
//! behind the disk's latency.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::BytesMut;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::{
    channel, check, close_all, join, outcome, snap, start_consumer, start_publisher,
    transient_spec, Counters, Ctx, Outcome, Pacer, TaskOut, CONFIRM_WINDOW,
};
use crate::client::{self, encode_ack, queue_opts, Event};
use crate::procfs;

/// A's consumer acks this fraction of B's solo rate.
const SLOW_FRACTION: f64 = 0.1;
/// Manual-ack prefetch of A's slow consumer (its rate is set by when it acks, not by this).
const SLOW_PREFETCH: u16 = 200;
/// How often the window samples RSS and A's depth.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

pub async fn runaway(ctx: &Ctx, size: usize) -> Result<Outcome> {
    let tag = format!("runaway-{size}-{}", ctx.uniq);
    let (qa, qb) = (format!("bench-{tag}-a"), format!("bench-{tag}-b"));
    let mut control = channel(ctx).await?;
    control.declare_queue(1, queue_opts(&qa)).await?;
    control.declare_queue(1, queue_opts(&qb)).await?;
    let (stop_tx, stop) = watch::channel(false);
    let result = run(ctx, size, &qa, &qb, &mut control, stop).await;
    let _ = stop_tx.send(true);
    let (tasks, out) = match result {
        Ok((tasks, out)) => (tasks, Ok(out)),
        Err((tasks, e)) => (tasks, Err(e)),
    };
    let (_, conns) = join(tasks).await;
    close_all(conns).await;
    // Deleting A drops its backlog (and Warren's spill files) before the next row.
    control.delete_queue(1, &qa).await?;
    control.delete_queue(1, &qb).await?;
    control.close().await?;
    out
}

type Tasks = Vec<JoinHandle<Result<TaskOut>>>;

/// Both phases; hands back the tasks it started (to be stopped and joined) with the outcome or error.
async fn run(
    ctx: &Ctx,
    size: usize,
    qa: &str,
    qb: &str,
    control: &mut client::Conn,
    stop: watch::Receiver<bool>,
) -> std::result::Result<(Tasks, Outcome), (Tasks, anyhow::Error)> {
    let mut tasks = Vec::new();
    macro_rules! attempt {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err((tasks, e.into())),
            }
        };
    }
    // ---- phase 1: B alone
    let b = Arc::new(Counters::default());
    tasks.push(attempt!(
        start_consumer(ctx, qb, false, false, b.clone(), stop.clone()).await
    ));
    let mut spec_b = transient_spec(ctx, "", vec![qb.to_string()], size);
    spec_b.confirms = true;
    let done = Arc::new(Notify::new());
    tasks.push(attempt!(
        start_publisher(ctx, spec_b, b.clone(), stop.clone(), done.clone()).await
    ));
    tokio::time::sleep(ctx.warmup).await;
    attempt!(check(&b));
    let s0 = attempt!(snap(ctx, b.delivered.load(Relaxed)));
    tokio::time::sleep(ctx.duration).await;
    let s1 = attempt!(snap(ctx, b.delivered.load(Relaxed)));
    attempt!(check(&b));
    let solo = outcome(ctx, "runaway", size, "msg", &s0, &s1);

    // ---- phase 2: B alongside the runaway A
    let slow_rate = (solo.rate * SLOW_FRACTION).max(100.0);
    let a = Arc::new(Counters::default());
    tasks.push(attempt!(
        start_slow_consumer(ctx, qa, slow_rate, a.clone(), stop.clone()).await
    ));
    let mut spec_a = transient_spec(ctx, "", vec![qa.to_string()], size);
    spec_a.confirms = true;
    // Diagnostics only (`--runaway-ahead`): A kept this far ahead of its consumer, as ideal flow
    // control would keep it.
    spec_a.inflight_cap = ctx.runaway_ahead;
    tasks.push(attempt!(
        start_publisher(ctx, spec_a, a.clone(), stop.clone(), done).await
    ));
    tokio::time::sleep(ctx.warmup).await;
    attempt!(check(&a).and_then(|()| check(&b)));
    let io0 = procfs::io_write_bytes(ctx.pid);
    let a_pub0 = a.published.load(Relaxed);
    let a_del0 = a.delivered.load(Relaxed);
    let t0 = attempt!(snap(ctx, b.delivered.load(Relaxed)));
    let mut rss_max = 0u64;
    let mut depth_max = 0u32;
    let window_end = Instant::now() + ctx.duration;
    while Instant::now() < window_end {
        tokio::time::sleep(SAMPLE_EVERY.min(window_end.saturating_duration_since(Instant::now())))
            .await;
        rss_max = rss_max.max(procfs::rss_kib(ctx.pid).unwrap_or(0));
        depth_max = depth_max.max(attempt!(control.queue_count(1, qa).await));
    }
    let t1 = attempt!(snap(ctx, b.delivered.load(Relaxed)));
    let io1 = procfs::io_write_bytes(ctx.pid);
    attempt!(check(&a).and_then(|()| check(&b)));
    let secs = (t1.t - t0.t).as_secs_f64();
    let a_published = a.published.load(Relaxed) - a_pub0;
    let a_delivered = a.delivered.load(Relaxed) - a_del0;
    let depth = attempt!(control.queue_count(1, qa).await);
    let paged = match &ctx.admin_socket {
        Some(path) => paged_out(path, qa).await.ok(),
        None => None,
    };

    let mut out = outcome(ctx, "runaway", size, "msg", &t0, &t1);
    let ratio = if solo.rate > 0.0 {
        out.rate / solo.rate
    } else {
        0.0
    };
    let extra = &mut out.extra;
    extra.insert("b_solo_rate".into(), json!(solo.rate));
    extra.insert("b_solo_cpu_us_per_op".into(), json!(solo.cpu_us_per_op));
    extra.insert("b_solo_broker_core_pct".into(), json!(solo.broker_core_pct));
    extra.insert("b_solo_client_core_pct".into(), json!(solo.client_core_pct));
    extra.insert("a_ahead_cap".into(), json!(ctx.runaway_ahead));
    extra.insert("b_ratio".into(), json!(ratio));
    extra.insert("a_publish_rate".into(), json!(a_published as f64 / secs));
    extra.insert("a_consume_rate".into(), json!(a_delivered as f64 / secs));
    extra.insert("a_consume_rate_target".into(), json!(slow_rate));
    extra.insert("a_depth_end".into(), json!(depth));
    extra.insert("a_depth_max".into(), json!(depth_max));
    extra.insert("a_paged_end".into(), json!(paged));
    extra.insert("rss_kib_max".into(), json!(rss_max));
    extra.insert(
        "broker_disk_write_bytes".into(),
        json!(io0.zip(io1).map(|(x, y)| y.saturating_sub(x))),
    );
    extra.insert("a_confirm_window".into(), json!(CONFIRM_WINDOW));
    extra.insert("a_nacked".into(), json!(a.nacked.load(Relaxed)));
    out.rss_kib = Some(rss_max);
    Ok((tasks, out))
}

/// A manual-ack consumer that acks at `rate` per second (paced in ticks, like the `latency`
/// publisher); `counters.delivered` counts acks. Deliveries beyond the prefetch wait in the queue.
async fn start_slow_consumer(
    ctx: &Ctx,
    queue: &str,
    rate: f64,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<TaskOut>>> {
    let mut conn = channel(ctx).await?;
    conn.qos(1, SLOW_PREFETCH).await?;
    conn.consume(1, queue, "slow", false).await?;
    Ok(tokio::spawn(async move {
        let mut asm = client::Assembler::default();
        let mut out = BytesMut::new();
        let mut held = std::collections::VecDeque::new();
        let pacer = Pacer::new(rate);
        let mut acked = 0u64;
        let r: Result<()> = async {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    r = conn.fill() => r?,
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
                while let Some(ev) = conn.try_event(&mut asm)? {
                    if let Event::Deliver(d) = ev {
                        held.push_back((d.channel, d.tag));
                    }
                }
                let due = pacer.due(acked).min(held.len() as u64);
                for _ in 0..due {
                    if let Some((ch, tag)) = held.pop_front() {
                        encode_ack(&mut out, ch, tag, false);
                    }
                }
                if due > 0 {
                    acked += due;
                    counters.delivered.fetch_add(due, Relaxed);
                    conn.write(&out).await?;
                    out.clear();
                } else if held.is_empty() {
                    // Nothing to ack: do not let the pacer bank credit for a later burst.
                    acked += pacer.due(acked);
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
    }))
}

/// Warren only: the queue's `messages_paged_out` from the admin socket (`list_queues`).
async fn paged_out(socket: &std::path::Path, queue: &str) -> Result<u64> {
    let ask = async {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| socket.display().to_string())?;
        s.write_all(b"{\"command\":\"list_queues\",\"vhost\":\"/\"}\n")
            .await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        let v: Value = serde_json::from_str(&line)?;
        v["result"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == queue))
            .and_then(|r| r["messages_paged_out"].as_u64())
            .ok_or_else(|| anyhow!("queue {queue} not in list_queues: {line}"))
    };
    tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .map_err(|_| anyhow!("admin socket timed out"))?
}
