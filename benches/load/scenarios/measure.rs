//! Measurement: counters shared by a scenario's tasks, snapshots of the broker's CPU, the measured
//! window, latency quantiles, and joining the tasks.

use super::*;

pub(super) fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

pub(super) fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) published: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) confirmed: AtomicU64,
    pub(super) nacked: AtomicU64,
    pub(super) calls: AtomicU64,
    pub(super) errors: AtomicU64,
    /// Latency samples are kept only while this is set (the measured window).
    pub(super) recording: AtomicBool,
    /// Wakes a publisher waiting for confirms or for its consumers.
    pub(super) progress: Notify,
    pub(super) first_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    pub(super) fn error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{e:#}"));
        }
    }

    /// Passes `r` on, counting its error if it is one.
    pub(super) fn noted<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.error(e);
        }
        r
    }
}

pub(super) struct Snap {
    pub(super) t: Instant,
    pub(super) broker: f64,
    pub(super) client: f64,
    pub(super) count: u64,
}

pub(super) fn snap(ctx: &Ctx, count: u64) -> Result<Snap> {
    Ok(Snap {
        t: Instant::now(),
        broker: ctx
            .pids
            .iter()
            .map(|p| procfs::cpu_secs(*p))
            .sum::<Result<f64>>()?,
        client: procfs::self_cpu_secs(),
        count,
    })
}

pub(super) fn outcome(
    ctx: &Ctx,
    scenario: &str,
    body: usize,
    unit: &str,
    a: &Snap,
    b: &Snap,
) -> Outcome {
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
pub(super) fn quantiles(mut samples: Vec<u64>) -> Option<[f64; 4]> {
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
pub(super) fn percentiles(out: &mut Outcome, samples: Vec<u64>) {
    let n = samples.len();
    if let Some([p50, p99, p999, max]) = quantiles(samples) {
        (out.p50_us, out.p99_us, out.p999_us, out.max_us) =
            (Some(p50), Some(p99), Some(p999), Some(max));
        out.extra.insert("samples".into(), json!(n));
    }
}

/// The publisher confirm latency percentiles of a row.
pub(super) fn confirm_percentiles(out: &mut Outcome, samples: Micros) {
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
pub(super) struct Micros {
    pub(super) chunks: Vec<Vec<u32>>,
}

impl Micros {
    const CHUNK: usize = 1 << 16;

    pub(super) fn push_ns(&mut self, ns: u64) {
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

    pub(super) fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    pub(super) fn append(&mut self, other: Micros) {
        self.chunks.extend(other.chunks);
    }

    pub(super) fn into_ns(self) -> Vec<u64> {
        let mut ns = Vec::with_capacity(self.len());
        for c in self.chunks {
            ns.extend(c.into_iter().map(|us| u64::from(us) * 1000));
        }
        ns
    }
}

/// Warm-up, then the measured window; `count` reads the operation counter.
pub(super) async fn window(
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

pub(super) fn check(counters: &Counters) -> Result<()> {
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
pub(super) async fn finish(tasks: Vec<JoinHandle<Result<TaskOut>>>) -> Samples {
    let (samples, conns) = join(tasks).await;
    close_all(conns).await;
    samples
}

/// Every task's samples, merged.
#[derive(Default)]
pub(super) struct Samples {
    /// Delivery latency or call round trip, ns.
    pub(super) latency: Vec<u64>,
    /// Publisher confirm latency.
    pub(super) confirm: Micros,
}

/// Waits (bounded) for tasks; returns their samples and (still open) connections.
pub(super) async fn join(tasks: Vec<JoinHandle<Result<TaskOut>>>) -> (Samples, Vec<Conn>) {
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
pub(super) async fn close_all(conns: Vec<Conn>) {
    let closes: Vec<_> = conns.into_iter().map(|c| tokio::spawn(c.close())).collect();
    for c in closes {
        let _ = tokio::time::timeout(Duration::from_secs(6), c).await;
    }
}

#[derive(Default)]
pub(super) struct TaskOut {
    pub(super) conn: Option<Conn>,
    /// Delivery latency or call round trip (ns), inside the window.
    pub(super) samples: Vec<u64>,
    /// Publisher confirm latency, inside the window.
    pub(super) confirm_samples: Micros,
}

pub(super) async fn connect(ctx: &Ctx) -> Result<Conn> {
    client::open(&ctx.target, 60).await
}

pub(super) async fn channel(ctx: &Ctx) -> Result<Conn> {
    let mut c = connect(ctx).await?;
    c.open_channel(1).await?;
    Ok(c)
}

pub(super) fn body(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}
