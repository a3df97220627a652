//! The scenarios. Each sets up fresh queues/exchanges (named with a per-run suffix), starts its load,
//! lets it warm up, then measures a window: operations counted by the client, broker CPU from
//! /proc/PID/stat, the client's own CPU (to show whether the client was the bottleneck), and latency
//! samples taken only inside the window. Every loop stops on the stop signal, and every wait is bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use warren_protocol::content::BasicProperties;

use crate::client::{
    self, put_ack, put_heartbeat, put_publish, queue_opts, Conn, Event, Props, QueueOpts, Target,
    BURST_BYTES,
};
use crate::procfs;

mod runaway;
pub use runaway::runaway;

/// Publisher confirm window.
const CONFIRM_WINDOW: u64 = 1_000;
/// Prefetch of manual-ack consumers.
const PREFETCH: u16 = 100;
/// Latency scenario rate (msg/s).
const LATENCY_RATE: f64 = 5_000.0;
/// Idle connections' heartbeat (seconds, asked in tune-ok).
const IDLE_HEARTBEAT: u16 = 60;
/// Concurrent handshakes while opening idle connections (Warren allows 64 unfinished per source IP).
const OPEN_CONCURRENCY: usize = 32;

pub struct Ctx {
    pub broker: String,
    pub target: Arc<Target>,
    pub pid: u32,
    pub port: u16,
    pub tls_dir: std::path::PathBuf,
    pub warmup: Duration,
    pub duration: Duration,
    pub uniq: String,
    pub idle_conns: usize,
    pub queues: usize,
    pub open_budget: Duration,
    pub settle: Duration,
    /// Messages a publisher may be ahead of its consumers in publish + consume scenarios (None: no
    /// limit, the queue grows when consumers are slower).
    pub inflight_cap: Option<u64>,
    /// Warren's admin socket, for figures only the broker knows (messages paged out).
    pub admin_socket: Option<std::path::PathBuf>,
    /// `runaway` diagnostics: keep A's publisher this many messages ahead of its consumer at most
    /// (None: the row as defined, no cap).
    pub runaway_ahead: Option<u64>,
}

/// One scenario's result: one JSON line.
#[derive(Serialize, Default, Debug)]
pub struct Outcome {
    pub broker: String,
    pub scenario: String,
    /// Body size in octets (0 when the scenario has no messages).
    pub body: usize,
    /// What `count` counts: "msg" (deliveries, or publishes for publish-only), "call", "conn".
    pub unit: String,
    pub count: u64,
    pub secs: f64,
    pub rate: f64,
    pub broker_cpu_s: f64,
    pub cpu_us_per_op: f64,
    pub broker_core_pct: f64,
    pub client_core_pct: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_us: Option<f64>,
    /// Publisher confirm latency (publish written → basic.ack read), scenarios with confirms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_p999_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_max_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_secs: Option<f64>,
    pub extra: Map<String, Value>,
}

// ---- shared machinery ----------------------------------------------------------------------------

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
    /// Latency samples are kept only while this is set (the measured window).
    recording: AtomicBool,
    /// Wakes a publisher waiting for confirms or for its consumers.
    progress: Notify,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    fn error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{e:#}"));
        }
    }

    /// Passes `r` on, counting its error if it is one.
    fn noted<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.error(e);
        }
        r
    }
}

struct Snap {
    t: Instant,
    broker: f64,
    client: f64,
    count: u64,
}

fn snap(ctx: &Ctx, count: u64) -> Result<Snap> {
    Ok(Snap {
        t: Instant::now(),
        broker: procfs::cpu_secs(ctx.pid)?,
        client: procfs::self_cpu_secs(),
        count,
    })
}

fn outcome(ctx: &Ctx, scenario: &str, body: usize, unit: &str, a: &Snap, b: &Snap) -> Outcome {
    let secs = (b.t - a.t).as_secs_f64();
    let count = b.count - a.count;
    let cpu = b.broker - a.broker;
    Outcome {
        broker: ctx.broker.clone(),
        scenario: scenario.to_string(),
        body,
        unit: unit.to_string(),
        count,
        secs,
        rate: count as f64 / secs,
        broker_cpu_s: cpu,
        cpu_us_per_op: if count > 0 {
            cpu * 1e6 / count as f64
        } else {
            0.0
        },
        broker_core_pct: 100.0 * cpu / secs,
        client_core_pct: 100.0 * (b.client - a.client) / secs,
        ..Outcome::default()
    }
}

/// p50, p99, p99.9 and max in µs of samples in ns (None without samples).
fn quantiles(mut samples: Vec<u64>) -> Option<[f64; 4]> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    Some([at(0.50), at(0.99), at(0.999), at(1.0)])
}

/// The latency percentiles of a row (delivery or call latency), from samples in ns.
fn percentiles(out: &mut Outcome, samples: Vec<u64>) {
    let n = samples.len();
    if let Some([p50, p99, p999, max]) = quantiles(samples) {
        (out.p50_us, out.p99_us, out.p999_us, out.max_us) =
            (Some(p50), Some(p99), Some(p999), Some(max));
        out.extra.insert("samples".into(), json!(n));
    }
}

/// The publisher confirm latency percentiles of a row.
fn confirm_percentiles(out: &mut Outcome, samples: Micros) {
    let n = samples.len();
    if let Some([p50, p99, p999, max]) = quantiles(samples.into_ns()) {
        (
            out.confirm_p50_us,
            out.confirm_p99_us,
            out.confirm_p999_us,
            out.confirm_max_us,
        ) = (Some(p50), Some(p99), Some(p999), Some(max));
        out.extra.insert("confirm_samples".into(), json!(n));
    }
}

/// Latency samples in whole µs, stored in fixed-size chunks: a push never moves what is already
/// stored, so the measured window has no reallocation pauses (a few million samples per row).
#[derive(Default)]
struct Micros {
    chunks: Vec<Vec<u32>>,
}

impl Micros {
    const CHUNK: usize = 1 << 16;

    fn push_ns(&mut self, ns: u64) {
        let us = u32::try_from(ns.saturating_add(500) / 1000).unwrap_or(u32::MAX);
        match self.chunks.last_mut() {
            Some(c) if c.len() < Self::CHUNK => c.push(us),
            _ => {
                let mut c = Vec::with_capacity(Self::CHUNK);
                c.push(us);
                self.chunks.push(c);
            }
        }
    }

    fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    fn append(&mut self, other: Micros) {
        self.chunks.extend(other.chunks);
    }

    fn into_ns(self) -> Vec<u64> {
        let mut ns = Vec::with_capacity(self.len());
        for c in self.chunks {
            ns.extend(c.into_iter().map(|us| u64::from(us) * 1000));
        }
        ns
    }
}

/// Warm-up, then the measured window; `count` reads the operation counter.
async fn window(
    ctx: &Ctx,
    counters: &Counters,
    count: impl Fn(&Counters) -> u64,
) -> Result<(Snap, Snap)> {
    tokio::time::sleep(ctx.warmup).await;
    check(counters)?;
    let a = snap(ctx, count(counters))?;
    counters.recording.store(true, Relaxed);
    tokio::time::sleep(ctx.duration).await;
    counters.recording.store(false, Relaxed);
    let b = snap(ctx, count(counters))?;
    check(counters)?;
    Ok((a, b))
}

fn check(counters: &Counters) -> Result<()> {
    if counters.errors.load(Relaxed) > 0 {
        let first = counters
            .first_error
            .lock()
            .map(|f| f.clone().unwrap_or_default())
            .unwrap_or_default();
        bail!("load task failed: {first}");
    }
    Ok(())
}

/// Waits (bounded) for tasks and closes the connections they hand back; returns their samples.
async fn finish(tasks: Vec<JoinHandle<Result<TaskOut>>>) -> Samples {
    let (samples, conns) = join(tasks).await;
    close_all(conns).await;
    samples
}

/// Every task's samples, merged.
#[derive(Default)]
struct Samples {
    /// Delivery latency or call round trip, ns.
    latency: Vec<u64>,
    /// Publisher confirm latency.
    confirm: Micros,
}

/// Waits (bounded) for tasks; returns their samples and (still open) connections.
async fn join(tasks: Vec<JoinHandle<Result<TaskOut>>>) -> (Samples, Vec<Conn>) {
    let mut samples = Samples::default();
    let mut conns = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Ok(out))) => {
                samples.latency.extend(out.samples);
                samples.confirm.append(out.confirm_samples);
                conns.extend(out.conn);
            }
            Ok(Ok(Err(e))) => eprintln!("    task ended with: {e:#}"),
            Ok(Err(e)) => eprintln!("    task panicked: {e}"),
            Err(_) => eprintln!("    task did not stop within 10 s"),
        }
    }
    (samples, conns)
}

/// connection.close on every connection at once (each bounded).
async fn close_all(conns: Vec<Conn>) {
    let closes: Vec<_> = conns.into_iter().map(|c| tokio::spawn(c.close())).collect();
    for c in closes {
        let _ = tokio::time::timeout(Duration::from_secs(6), c).await;
    }
}

#[derive(Default)]
struct TaskOut {
    conn: Option<Conn>,
    /// Delivery latency or call round trip (ns), inside the window.
    samples: Vec<u64>,
    /// Publisher confirm latency, inside the window.
    confirm_samples: Micros,
}

async fn connect(ctx: &Ctx) -> Result<Conn> {
    Conn::open(&ctx.target, 60).await
}

async fn channel(ctx: &Ctx) -> Result<Conn> {
    let mut c = connect(ctx).await?;
    c.open_channel(1).await?;
    Ok(c)
}

fn body(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

// ---- publisher -----------------------------------------------------------------------------------

#[derive(Clone)]
struct PubSpec {
    exchange: String,
    keys: Vec<String>,
    props: Vec<u8>,
    body: Vec<u8>,
    confirms: bool,
    /// Stay at most this many messages ahead of the consumers (deliveries / fanout).
    inflight_cap: Option<u64>,
    fanout: u64,
    /// Paced publishing (msg/s), timestamps in the first 8 body octets.
    rate: Option<f64>,
    max_msgs: Option<u64>,
}

/// Tracks which publish sequence numbers are confirmed (acks may be single or multiple) and when each
/// was sent. Shared by a publisher's writer (`sent`) and reader (`settle`) tasks.
struct ConfirmTracker {
    /// Sequence number of `pending[0]` (the channel's first publish is 1).
    base: u64,
    /// Per sequence number from `base` on: when it was sent (`now_ns`), and whether it is settled.
    pending: VecDeque<(u64, bool)>,
}

impl ConfirmTracker {
    fn new() -> Self {
        ConfirmTracker {
            base: 1,
            pending: VecDeque::with_capacity(2 * CONFIRM_WINDOW as usize),
        }
    }

    /// The next `n` sequence numbers are being written now (`at`).
    fn sent(&mut self, n: u64, at: u64) {
        self.pending
            .extend(std::iter::repeat_n((at, false), n as usize));
    }

    /// Marks `tag` (or, with `multiple`, every tag up to it) settled; returns how many were newly
    /// settled. With `sample` (the time the ack was read), each of them adds its latency.
    fn settle(
        &mut self,
        tag: u64,
        multiple: bool,
        mut sample: Option<(u64, &mut Micros)>,
    ) -> Result<u64> {
        if tag < self.base {
            return Ok(0);
        }
        let idx = (tag - self.base) as usize;
        if idx >= self.pending.len() {
            bail!("broker confirmed sequence number {tag}, which was not published");
        }
        let from = if multiple { 0 } else { idx };
        let mut n = 0;
        for (sent, settled) in self.pending.range_mut(from..=idx) {
            if !*settled {
                *settled = true;
                n += 1;
                if let Some((now, samples)) = sample.as_mut() {
                    samples.push_ns(now.saturating_sub(*sent));
                }
            }
        }
        while self.pending.front().is_some_and(|p| p.1) {
            self.pending.pop_front();
            self.base += 1;
        }
        Ok(n)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts a publisher on its own connection; its reader half runs as a second task (confirms,
/// heartbeats, a close from the broker).
async fn start_publisher(
    ctx: &Ctx,
    spec: PubSpec,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
    done: Arc<Notify>,
) -> Result<JoinHandle<Result<TaskOut>>> {
    let mut conn = channel(ctx).await?;
    if spec.confirms {
        conn.confirm_select(1).await?;
    }
    let (mut reader, mut writer) = conn.split();
    let rc = counters.clone();
    let mut rstop = stop.clone();
    let confirms = spec.confirms;
    let tracker = Arc::new(Mutex::new(ConfirmTracker::new()));
    let rtracker = tracker.clone();
    let read_task = tokio::spawn(async move {
        // Confirm latency: each publish's send time to the time the read holding its basic.ack
        // returned; every message a multiple ack settles is one sample. Nacks give no sample.
        let mut confirm_samples = Micros::default();
        let r: Result<()> = async {
            loop {
                tokio::select! {
                    biased;
                    _ = rstop.changed() => break,
                    r = reader.fill() => r?,
                }
                let now = now_ns();
                let record = confirms && rc.recording.load(Relaxed);
                while let Some(ev) = reader.try_event()? {
                    match ev {
                        Event::Ack { tag, multiple } if confirms => {
                            let sample = record.then_some((now, &mut confirm_samples));
                            let n = lock(&rtracker).settle(tag, multiple, sample)?;
                            rc.confirmed.fetch_add(n, Relaxed);
                            rc.progress.notify_one();
                        }
                        Event::Nack { tag, multiple } if confirms => {
                            let n = lock(&rtracker).settle(tag, multiple, None)?;
                            rc.confirmed.fetch_add(n, Relaxed);
                            rc.nacked.fetch_add(n, Relaxed);
                            rc.progress.notify_one();
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        }
        .await;
        rc.noted(r).map(|()| (reader, confirm_samples))
    });
    let pc = counters;
    let mut pstop = stop;
    let task = tokio::spawn(async move {
        let r: Result<()> = async {
            let mut buf = BytesMut::with_capacity(BURST_BYTES + 4096);
            let pacer = spec.rate.map(Pacer::new);
            let mut key = 0usize;
            let mut body = spec.body.clone();
            loop {
                if *pstop.borrow() {
                    break;
                }
                let published = pc.published.load(Relaxed);
                let mut allowed = u64::MAX;
                if let Some(max) = spec.max_msgs {
                    if published >= max {
                        done.notify_one();
                        break;
                    }
                    allowed = max - published;
                }
                if spec.confirms {
                    let outstanding = published - pc.confirmed.load(Relaxed);
                    allowed = allowed.min(CONFIRM_WINDOW.saturating_sub(outstanding));
                }
                if let Some(cap) = spec.inflight_cap {
                    let ahead =
                        published.saturating_sub(pc.delivered.load(Relaxed) / spec.fanout.max(1));
                    allowed = allowed.min(cap.saturating_sub(ahead));
                }
                if let Some(pacer) = &pacer {
                    let due = pacer.due(published);
                    if due == 0 {
                        if !Pacer::pause(&mut pstop).await {
                            break;
                        }
                        continue;
                    }
                    allowed = allowed.min(due);
                }
                if allowed == 0 {
                    tokio::select! {
                        _ = pstop.changed() => break,
                        _ = pc.progress.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
                let mut n = 0u64;
                while n < allowed && buf.len() < BURST_BYTES {
                    if spec.rate.is_some() && body.len() >= 8 {
                        body[..8].copy_from_slice(&now_ns().to_be_bytes());
                    }
                    put_publish(
                        &mut buf,
                        writer.frame_max,
                        1,
                        &spec.exchange,
                        &spec.keys[key],
                        &spec.props,
                        &body,
                    );
                    key = (key + 1) % spec.keys.len();
                    n += 1;
                }
                if spec.confirms {
                    // Registered before the write, so no ack can arrive for an unknown number.
                    lock(&tracker).sent(n, now_ns());
                }
                writer.write(&buf).await?;
                buf.clear();
                pc.published.fetch_add(n, Relaxed);
                tokio::task::yield_now().await;
            }
            Ok(())
        }
        .await;
        pc.noted(r)?;
        // The reader stops on the stop signal; the connection is then closed whole.
        let (reader, confirm_samples) = read_task.await??;
        Ok(TaskOut {
            conn: Some(Conn::unsplit(reader, writer)),
            samples: Vec::new(),
            confirm_samples,
        })
    });
    Ok(task)
}

/// Fixed-rate pacing, shared by the `latency` publisher and the `floor-latency` sender: messages are
/// due at `rate` per second since the sender started; when none is due the sender sleeps 500 µs
/// (tokio's timer rounds that up to its 1 ms tick), so in practice everything that fell due during a
/// tick goes out as one burst (one write, one TLS record) — about 5 messages per tick at 5,000 msg/s.
struct Pacer {
    start: Instant,
    rate: f64,
}

impl Pacer {
    fn new(rate: f64) -> Self {
        Pacer {
            start: Instant::now(),
            rate,
        }
    }

    /// How many messages are due now, `sent` having been sent so far.
    fn due(&self, sent: u64) -> u64 {
        ((self.start.elapsed().as_secs_f64() * self.rate) as u64).saturating_sub(sent)
    }

    /// Nothing due: waits for the next tick; false when stopped.
    async fn pause(stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = stop.changed() => false,
            _ = tokio::time::sleep(Duration::from_micros(500)) => true,
        }
    }
}

// ---- consumer ------------------------------------------------------------------------------------

/// A consumer on its own connection: deliveries are counted (and acked, one basic.ack per delivery,
/// written once per read burst); with `latency`, the timestamp in the body gives a sample.
async fn start_consumer(
    ctx: &Ctx,
    queue: &str,
    manual_ack: bool,
    latency: bool,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<TaskOut>>> {
    let mut conn = channel(ctx).await?;
    if manual_ack {
        conn.qos(1, PREFETCH).await?;
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
                            put_ack(&mut out, d.channel, d.tag, false);
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

// ---- message scenarios ---------------------------------------------------------------------------

fn transient_spec(ctx: &Ctx, exchange: &str, keys: Vec<String>, size: usize) -> PubSpec {
    PubSpec {
        exchange: exchange.to_string(),
        keys,
        props: Props::default().to_bytes(),
        body: body(size),
        confirms: false,
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
async fn poll_count(control: &mut Conn, q: &str, counters: &Counters) -> Result<u64> {
    let n = u64::from(control.queue_count(1, q).await?);
    counters.delivered.store(n, Relaxed);
    counters.progress.notify_one();
    Ok(n)
}

/// amqprs 2.1 publishing as fast as `basic_publish` returns: one frame batch, one TLS record and one
/// write per message (how it is built) — the calibration row showing why the load generator has its
/// own client.
async fn start_amqprs_publisher(
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
                if n % 64 == 0 {
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
    let spec = match scenario {
        "pubsub" => {
            let q = format!("bench-{tag}");
            control.declare_queue(1, queue_opts(&q)).await?;
            queues.push(q.clone());
            transient_spec(ctx, "", vec![q], size)
        }
        "confirms" | "persistent" => {
            let q = format!("bench-{tag}");
            let persistent = scenario == "persistent";
            control
                .declare_queue(
                    1,
                    QueueOpts {
                        name: &q,
                        durable: persistent,
                        ..QueueOpts::default()
                    },
                )
                .await?;
            queues.push(q.clone());
            manual_ack = true;
            let mut spec = transient_spec(ctx, "", vec![q], size);
            spec.confirms = true;
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
        tasks.push(
            start_consumer(ctx, q, manual_ack, latency, counters.clone(), stop.clone()).await?,
        );
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
    for q in &queues {
        control.delete_queue(1, q).await?;
    }
    for ex in &exchanges {
        control.delete_exchange(1, ex).await?;
    }
    control.close().await?;
    Ok(out)
}

// ---- RPC -----------------------------------------------------------------------------------------

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
                            put_publish(
                                &mut out,
                                conn.frame_max,
                                1,
                                "",
                                std::str::from_utf8(reply_to)?,
                                &reply_props,
                                &payload,
                            );
                            put_ack(&mut out, d.channel, d.tag, false);
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
                    put_publish(
                        &mut out,
                        conn.frame_max,
                        1,
                        "",
                        &request_q,
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

// ---- floor: TLS echo, no broker -------------------------------------------------------------------
//
// What the machine itself costs: the same client, TLS settings and cores, against
// `warren-load echo-server` (benches/load/echo.rs) instead of a broker. A message is a u32 length
// (big-endian) and its body; the server writes back every read unchanged.

/// Largest echo frame the client accepts (anything bigger means the stream is out of step).
const ECHO_MAX: usize = 1 << 20;

/// Appends one echo frame.
fn put_echo(out: &mut BytesMut, body: &[u8]) {
    out.put_u32(body.len() as u32);
    out.put_slice(body);
}

/// The next complete echo frame's body, if the buffer holds one.
fn take_echo(rbuf: &mut BytesMut) -> Result<Option<Bytes>> {
    if rbuf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([rbuf[0], rbuf[1], rbuf[2], rbuf[3]]) as usize;
    if len > ECHO_MAX {
        bail!("echo frame of {len} octets: the stream is out of step");
    }
    if rbuf.len() < 4 + len {
        return Ok(None);
    }
    rbuf.advance(4);
    Ok(Some(rbuf.split_to(len).freeze()))
}

/// `floor-rpc`: one TLS connection to the echo server, one message of `size` octets outstanding,
/// ping-pong as the `rpc-1x1` caller does (write, then read until the answer is in). Counts round
/// trips; CPU is the echo server's; latency is the round trip. A call through a broker is two such
/// hops (caller → broker → server, server → broker → caller).
pub async fn floor_rpc(ctx: &Ctx, size: usize) -> Result<Outcome> {
    let counters = Arc::new(Counters::default());
    let (stop_tx, mut stop) = watch::channel(false);
    let mut stream = ctx.target.connect_tls().await?;
    let mut payload = body(size);
    let c = counters.clone();
    let task = tokio::spawn(async move {
        let mut rbuf = BytesMut::with_capacity(4096);
        let mut out = BytesMut::with_capacity(size + 4);
        let mut samples = Vec::new();
        let r: Result<()> = async {
            let mut n = 0u64;
            'calls: while !*stop.borrow() {
                n += 1;
                if payload.len() >= 8 {
                    payload[..8].copy_from_slice(&n.to_be_bytes());
                }
                put_echo(&mut out, &payload);
                let t0 = Instant::now();
                stream.write_all(&out).await?;
                stream.flush().await?;
                out.clear();
                loop {
                    if let Some(echo) = take_echo(&mut rbuf)? {
                        if echo.len() != payload.len()
                            || (echo.len() >= 8 && echo[..8] != payload[..8])
                        {
                            bail!("echo {n} came back altered");
                        }
                        c.calls.fetch_add(1, Relaxed);
                        if c.recording.load(Relaxed) {
                            samples.push(t0.elapsed().as_nanos() as u64);
                        }
                        continue 'calls;
                    }
                    tokio::select! {
                        biased;
                        _ = stop.changed() => break 'calls,
                        r = client::fill(&mut stream, &mut rbuf) => r?,
                    }
                }
            }
            Ok(())
        }
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        match r {
            Ok(()) => Ok(TaskOut {
                samples,
                ..TaskOut::default()
            }),
            Err(e) => {
                c.error(&e);
                Err(e)
            }
        }
    });
    let (a, b) = window(ctx, &counters, |c| c.calls.load(Relaxed)).await?;
    let _ = stop_tx.send(true);
    let samples = finish(vec![task]).await;
    let mut out = outcome(ctx, "floor-rpc", size, "round-trip", &a, &b);
    percentiles(&mut out, samples.latency);
    Ok(out)
}

/// `floor-latency`: the `latency` publisher's pacing and bursts (5,000 msg/s, see [`Pacer`]), each
/// body stamped in its first 8 octets, over one TLS connection to the echo server; a reader task on
/// the same connection takes a sample per echoed message (send → echo read).
pub async fn floor_latency(ctx: &Ctx, size: usize) -> Result<Outcome> {
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let stream = ctx.target.connect_tls().await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let rc = counters.clone();
    let mut rstop = stop.clone();
    let read_task = tokio::spawn(async move {
        let mut rbuf = BytesMut::with_capacity(64 * 1024);
        let mut samples = Vec::new();
        let r: Result<()> = async {
            loop {
                tokio::select! {
                    biased;
                    _ = rstop.changed() => break,
                    r = client::fill(&mut rd, &mut rbuf) => r?,
                }
                let mut n = 0;
                while let Some(echo) = take_echo(&mut rbuf)? {
                    n += 1;
                    if echo.len() >= 8 && rc.recording.load(Relaxed) {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&echo[..8]);
                        samples.push(now_ns().saturating_sub(u64::from_be_bytes(ts)));
                    }
                }
                if n > 0 {
                    rc.delivered.fetch_add(n, Relaxed);
                }
            }
            Ok(())
        }
        .await;
        rc.noted(r).map(|()| (rd, samples))
    });
    let pc = counters.clone();
    let mut pstop = stop;
    let mut body = body(size.max(8));
    let task = tokio::spawn(async move {
        let r: Result<()> = async {
            let mut buf = BytesMut::with_capacity(BURST_BYTES + 4096);
            let pacer = Pacer::new(LATENCY_RATE);
            loop {
                if *pstop.borrow() {
                    break;
                }
                let published = pc.published.load(Relaxed);
                let due = pacer.due(published);
                if due == 0 {
                    if !Pacer::pause(&mut pstop).await {
                        break;
                    }
                    continue;
                }
                let mut n = 0u64;
                while n < due && buf.len() < BURST_BYTES {
                    body[..8].copy_from_slice(&now_ns().to_be_bytes());
                    put_echo(&mut buf, &body);
                    n += 1;
                }
                wr.write_all(&buf).await?;
                wr.flush().await?;
                buf.clear();
                pc.published.fetch_add(n, Relaxed);
                tokio::task::yield_now().await;
            }
            Ok(())
        }
        .await;
        pc.noted(r)?;
        let (rd, samples) = read_task.await??;
        let mut stream = rd.unsplit(wr);
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        Ok(TaskOut {
            samples,
            ..TaskOut::default()
        })
    });
    let (a, b) = window(ctx, &counters, |c| c.delivered.load(Relaxed)).await?;
    let _ = stop_tx.send(true);
    let samples = finish(vec![task]).await;
    let mut out = outcome(ctx, "floor-latency", size, "msg", &a, &b);
    percentiles(&mut out, samples.latency);
    out.extra
        .insert("published".into(), json!(counters.published.load(Relaxed)));
    out.extra
        .insert("delivered".into(), json!(counters.delivered.load(Relaxed)));
    out.extra.insert("rate_target".into(), json!(LATENCY_RATE));
    Ok(out)
}

// ---- connections ---------------------------------------------------------------------------------

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
                    let c = Conn::open(&target, 60).await?;
                    c.close().await
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
                match Conn::open(&target, IDLE_HEARTBEAT).await {
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

async fn hold(mut conn: Conn, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(u64::from(IDLE_HEARTBEAT) / 2));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = conn.fill() => {
                if r.is_err() { return; }
                conn.rbuf.clear(); // heartbeats only
            }
            _ = tick.tick() => {
                let mut hb = BytesMut::new();
                put_heartbeat(&mut hb);
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
                let f = tokio::time::timeout(client::REPLY_TIMEOUT, conn.read_frame())
                    .await
                    .context("queue declare/bind reply")??;
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
