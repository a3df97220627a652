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
use warren_protocol::frame::encode_heartbeat;

use crate::client::{
    self, encode_ack, encode_publish, queue_opts, Conn, Event, Props, QueueOpts, Target,
    BURST_BYTES,
};
use crate::procfs;

mod runaway;
pub use runaway::runaway;

mod connections;
mod consumer;
mod floor;
mod measure;
mod publisher;
mod rpc;
mod throughput;
pub use connections::{churn, idle_conns, idle_rss, queues};
use consumer::*;
pub use floor::{floor_latency, floor_rpc};
use measure::*;
use publisher::*;
pub use rpc::rpc;
use throughput::*;
pub use throughput::{publish_only, pubsub};

/// Publisher confirm window.
const CONFIRM_WINDOW: u64 = 1_000;
/// Prefetch of manual-ack consumers.
const PREFETCH: u16 = 100;
/// Latency scenario rate (msg/s).
const LATENCY_RATE: f64 = 5_000.0;
/// The `quorum-paced` offered load: below what a three-node RabbitMQ quorum queue confirms on this
/// machine (3,400–6,900 msg/s measured), so neither broker's window fills.
const PACED_RATE: f64 = 2_000.0;
/// Idle connections' heartbeat (seconds, asked in tune-ok).
const IDLE_HEARTBEAT: u16 = 60;
/// Concurrent handshakes while opening idle connections (Warren allows 64 unfinished per source IP).
const OPEN_CONCURRENCY: usize = 32;

pub struct Ctx {
    pub broker: String,
    pub target: Arc<Target>,
    pub pid: u32,
    /// Every broker process (a cluster's nodes): their CPU is summed.
    pub pids: Vec<u32>,
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
    /// The acking consumers' prefetch (`--prefetch`, default [`PREFETCH`]).
    pub prefetch: u16,
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
