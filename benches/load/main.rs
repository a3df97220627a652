//! `warren-load`: the load generator of `benches/load.sh`.
//!
//! `warren-load run` drives one broker (already started, pinned to core 0 by the script) through the
//! chosen scenarios and appends one JSON line per scenario to `--out`; run it pinned to core 1
//! (`taskset -c 1`). It runs on a single-threaded tokio runtime, so it uses exactly one core.
//! `warren-load echo-server` is the broker stand-in of the floor rows (`floor-rpc`, `floor-latency`):
//! a minimal TLS echo server, started by the script on core 0 like the brokers.
//! `warren-load report` turns the Warren, RabbitMQ and floor result files into the Markdown table and
//! the JSON line of `benches/results/`.

mod client;
mod echo;
mod procfs;
mod report;
mod scenarios;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::scenarios::{Ctx, Outcome};

#[derive(Parser)]
#[command(about = "Warren's load benchmark client (see benches/README.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios against one broker (or, for the floor-* scenarios, against `echo-server`).
    Run(RunArgs),
    /// The minimal TLS echo server the floor rows measure (no broker).
    EchoServer(echo::EchoArgs),
    /// Build the Markdown table and the JSON run record from the results of both brokers.
    Report(report::ReportArgs),
    /// List the scenario names.
    List,
}

#[derive(Parser)]
struct RunArgs {
    /// Name recorded with the results (warren, rabbitmq; floor for the echo server).
    #[arg(long)]
    broker: String,
    #[arg(long)]
    port: u16,
    /// The broker's (or echo server's) process id (CPU and RSS are read from /proc/PID); for a
    /// cluster, every node's, comma-separated: CPU is their sum, RSS and threads the first's.
    #[arg(long, value_delimiter = ',', required = true)]
    pid: Vec<u32>,
    /// The cores every broker process is pinned to before each run (`taskset -acp` list).
    #[arg(long, default_value = "0")]
    broker_cpus: String,
    /// Directory with ca.pem, admin.pem, admin.key.
    #[arg(long)]
    tls_dir: PathBuf,
    /// Comma-separated scenarios, in order (see `warren-load list`).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Body sizes for the message scenarios.
    #[arg(long, value_delimiter = ',', default_value = "16,1024")]
    sizes: Vec<usize>,
    /// Measured window per scenario (seconds).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up before each window (seconds).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Idle connections to open in `idle-conns`.
    #[arg(long, default_value_t = 10_000)]
    idle_conns: usize,
    /// Queues to declare in `queues`.
    #[arg(long, default_value_t = 10_000)]
    queues: usize,
    /// Time allowed for opening the idle connections (seconds).
    #[arg(long, default_value_t = 60.0)]
    open_budget: f64,
    /// Pause before reading RSS (seconds).
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Messages a publisher may be ahead of its consumers in publish + consume scenarios (0: no
    /// limit; for diagnostics — queues then grow when consumers are slower).
    #[arg(long, default_value_t = 10_000)]
    inflight_cap: u64,
    /// Pause between scenarios (seconds).
    #[arg(long, default_value_t = 1.0)]
    gap: f64,
    /// Warren's admin socket (the `runaway` row reads messages paged out from it).
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Diagnostics for `runaway`: keep the runaway publisher at most N messages ahead of its slow
    /// consumer (what ideal flow control would do); 0, the default, is the row as defined.
    #[arg(long, default_value_t = 0)]
    runaway_ahead: u64,
    /// Prefetch (basic.qos) of the acking consumers of the publish + consume scenarios.
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// File the JSON lines are appended to.
    #[arg(long)]
    out: PathBuf,
}

/// Every scenario, in the order `load.sh` runs them.
pub const SCENARIOS: &[(&str, &str)] = &[
    ("idle-rss", "RSS of the fresh broker, idle"),
    (
        "idle-conns",
        "RSS with N idle TLS connections (60 s heartbeats), and the time to open them",
    ),
    (
        "queues",
        "RSS with N queues each bound to a topic exchange, and the time to declare them",
    ),
    ("publish", "publish-only to one queue"),
    ("pubsub", "publish + consume, auto-ack"),
    (
        "confirms",
        "publisher confirms (window 1000) + manual ack, prefetch 100",
    ),
    ("fanout", "fanout exchange to 10 queues, 10 consumers"),
    (
        "topic",
        "topic exchange, 1,000 bindings over 10 queues, 10 consumers",
    ),
    (
        "persistent",
        "delivery_mode 2 into a durable queue, confirms (window 1000) + manual ack",
    ),
    (
        "persistent-w1",
        "delivery_mode 2 into a durable queue, confirms (window 1) + manual ack",
    ),
    (
        "quorum",
        "delivery_mode 2 into a quorum queue, confirms (window 1000) + manual ack",
    ),
    (
        "quorum-w1",
        "delivery_mode 2 into a quorum queue, confirms (window 1) + manual ack",
    ),
    (
        "quorum-paced",
        "delivery_mode 2 into a quorum queue, confirms (window 1000) at 2,000 msg/s + manual ack",
    ),
    (
        "stream",
        "delivery_mode 2 into a stream, confirms (window 1000), 3 consumers each reading every message (prefetch 100, manual ack)",
    ),
    (
        "runaway",
        "isolation: a publisher/consumer pair alone, then beside a confirming publisher 10x faster than its consumer",
    ),
    ("rpc-1x1", "oslo-style RPC, 1 client, 1 server"),
    ("rpc-8x2", "oslo-style RPC, 8 clients, 2 servers"),
    ("latency", "end-to-end latency at 5,000 msg/s"),
    (
        "churn-1",
        "connection churn, 1 worker (TLS, EXTERNAL, open, close)",
    ),
    ("churn-4", "connection churn, 4 workers"),
    (
        "amqprs-publish",
        "calibration: publish-only with amqprs 2.1 (16 B)",
    ),
    (
        "floor-rpc",
        "floor, no broker: TLS echo ping-pong, one message outstanding",
    ),
    (
        "floor-latency",
        "floor, no broker: TLS echo at 5,000 msg/s, paced as latency",
    ),
];

/// Scenarios run against `warren-load echo-server` instead of a broker.
pub fn is_floor(scenario: &str) -> bool {
    scenario.starts_with("floor-")
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::EchoServer(args) => echo::echo_server(args),
        Cmd::Report(args) => report::report(args),
        Cmd::List => {
            for (name, what) in SCENARIOS {
                println!("{name:16} {what}");
            }
            Ok(())
        }
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    for s in &args.scenarios {
        if !SCENARIOS.iter().any(|(n, _)| n == s) {
            bail!("unknown scenario {s:?} (see `warren-load list`)");
        }
    }
    let floor = args.scenarios.iter().filter(|s| is_floor(s)).count();
    if floor > 0 && floor < args.scenarios.len() {
        bail!("the floor-* scenarios run against `warren-load echo-server`, not with broker scenarios");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> Result<()> {
    let target = Arc::new(client::Target::new(args.port, &args.tls_dir)?);
    let ctx = Ctx {
        broker: args.broker.clone(),
        target: target.clone(),
        pid: args.pid[0],
        pids: args.pid.clone(),
        port: args.port,
        tls_dir: args.tls_dir.clone(),
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        uniq: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() % 1_000_000)
                .unwrap_or(0)
        ),
        idle_conns: args.idle_conns,
        queues: args.queues,
        open_budget: Duration::from_secs_f64(args.open_budget),
        settle: Duration::from_secs_f64(args.settle),
        inflight_cap: (args.inflight_cap > 0).then_some(args.inflight_cap),
        admin_socket: args.admin_socket.clone(),
        runaway_ahead: (args.runaway_ahead > 0).then_some(args.runaway_ahead),
        prefetch: args.prefetch,
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| args.out.display().to_string())?;
    // What the connection negotiated, for the record.
    let (tls_version, cipher) = if args.scenarios.iter().any(|s| is_floor(s)) {
        let mut probe = target.connect_tls().await.context("first connection")?;
        let info = client::tls_info(&probe);
        let _ = tokio::time::timeout(Duration::from_secs(1), probe.shutdown()).await;
        info
    } else {
        let probe = client::open(&target, 60)
            .await
            .context("first connection")?;
        let info = client::tls_info(probe.stream());
        probe.close().await?;
        info
    };
    let meta = json!({
        "broker": args.broker, "scenario": "_meta", "tls_version": tls_version, "cipher": cipher,
        "broker_threads": procfs::threads(args.pid[0]), "loadavg_at_start": procfs::loadavg(),
        "duration": args.duration, "warmup": args.warmup,
    });
    writeln!(out, "{meta}")?;
    eprintln!("  [{}] {tls_version} {cipher}", args.broker);
    let mut first = true;
    for name in &args.scenarios {
        let sizes: Vec<usize> = match name.as_str() {
            "publish" | "pubsub" | "confirms" | "fanout" | "topic" | "persistent"
            | "persistent-w1" | "quorum" | "quorum-w1" | "quorum-paced" | "stream" | "rpc-1x1"
            | "rpc-8x2" | "latency" | "floor-rpc" | "floor-latency" => args.sizes.clone(),
            "amqprs-publish" => vec![16],
            // One size: the row runs two windows, and its question is about backlogs, not bodies.
            "runaway" => vec![1024],
            _ => vec![0],
        };
        for size in sizes {
            if !first {
                tokio::time::sleep(Duration::from_secs_f64(args.gap)).await;
            }
            first = false;
            // Re-apply the pinning: every thread of the broker on its cores.
            for pid in &args.pid {
                procfs::pin(*pid, &args.broker_cpus)?;
            }
            let load = procfs::loadavg();
            let r = tokio::time::timeout(
                2 * (ctx.warmup + ctx.duration) + ctx.open_budget + Duration::from_secs(240),
                run_one(&ctx, name, size),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("scenario timed out")));
            let o = match r {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("  [{}] {name} {size}: FAILED: {e:#}", args.broker);
                    let mut o = Outcome {
                        broker: args.broker.clone(),
                        scenario: name.clone(),
                        body: size,
                        ..Outcome::default()
                    };
                    o.extra.insert("error".into(), json!(format!("{e:#}")));
                    o
                }
            };
            let mut o = o;
            o.extra.insert("loadavg_before".into(), json!(load));
            summary(&o);
            writeln!(out, "{}", serde_json::to_string(&o)?)?;
            out.flush()?;
        }
    }
    Ok(())
}

async fn run_one(ctx: &Ctx, name: &str, size: usize) -> Result<Outcome> {
    match name {
        "idle-rss" => scenarios::idle_rss(ctx).await,
        "idle-conns" => scenarios::idle_conns(ctx).await,
        "queues" => scenarios::queues(ctx).await,
        "publish" => scenarios::publish_only(ctx, size, false).await,
        "amqprs-publish" => scenarios::publish_only(ctx, size, true).await,
        "pubsub" | "confirms" | "fanout" | "topic" | "persistent" | "persistent-w1" | "quorum"
        | "quorum-w1" | "quorum-paced" | "stream" | "latency" => {
            scenarios::pubsub(ctx, name, size).await
        }
        "runaway" => scenarios::runaway(ctx, size).await,
        "rpc-1x1" => scenarios::rpc(ctx, 1, 1, size).await,
        "rpc-8x2" => scenarios::rpc(ctx, 8, 2, size).await,
        "churn-1" => scenarios::churn(ctx, 1).await,
        "churn-4" => scenarios::churn(ctx, 4).await,
        "floor-rpc" => scenarios::floor_rpc(ctx, size).await,
        "floor-latency" => scenarios::floor_latency(ctx, size).await,
        other => bail!("unknown scenario {other}"),
    }
}

fn summary(o: &Outcome) {
    if o.extra.contains_key("error") {
        return;
    }
    let server = if o.broker == "floor" {
        "echo"
    } else {
        "broker"
    };
    let mut line = format!(
        "  [{}] {:<15} {:>5} B  {:>10.0} {}/s  {:>7.2} µs CPU/{}  {server} {:>3.0}%  client {:>3.0}%",
        o.broker,
        o.scenario,
        o.body,
        o.rate,
        o.unit,
        o.cpu_us_per_op,
        o.unit,
        o.broker_core_pct,
        o.client_core_pct
    );
    if let (Some(p50), Some(p99)) = (o.p50_us, o.p99_us) {
        line += &format!("  p50 {p50:.0} µs p99 {p99:.0} µs");
    }
    if let (Some(p50), Some(p99)) = (o.confirm_p50_us, o.confirm_p99_us) {
        line += &format!("  confirm p50 {p50:.0} µs p99 {p99:.0} µs");
    }
    if let Some(rss) = o.rss_kib {
        line += &format!("  RSS {:.1} MiB", rss as f64 / 1024.0);
    }
    if let Some(n) = o.items {
        line += &format!("  ({n} in {:.1} s)", o.setup_secs.unwrap_or(0.0));
    }
    if let Some(w) = o.extra.get("warning") {
        line += &format!("  WARNING: {w}");
    }
    eprintln!("{line}");
}
