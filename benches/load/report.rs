//! The report: Warren and RabbitMQ side by side, ratios, and the targets of the load benchmark.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
pub struct ReportArgs {
    /// Warren's results (JSON lines from `warren-load run`).
    #[arg(long)]
    warren: PathBuf,
    /// RabbitMQ's results.
    #[arg(long)]
    rabbitmq: PathBuf,
    /// The floor rows' results (`warren-load run --broker floor` against `echo-server`), if any.
    #[arg(long)]
    floor: Option<PathBuf>,
    /// A JSON object describing the run (date, versions, machine), written by load.sh.
    #[arg(long)]
    meta: PathBuf,
    /// Markdown file to write.
    #[arg(long)]
    md: PathBuf,
    /// JSON-lines file the run record is appended to.
    #[arg(long)]
    jsonl: PathBuf,
}

type Row = serde_json::Map<String, Value>;

fn load(path: &PathBuf) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Value::Object(m) =
            serde_json::from_str(line).with_context(|| path.display().to_string())?
        {
            rows.push(m);
        }
    }
    Ok(rows)
}

fn key(r: &Row) -> (String, u64) {
    (
        r.get("scenario")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        r.get("body").and_then(Value::as_u64).unwrap_or(0),
    )
}

fn num(r: Option<&Row>, k: &str) -> Option<f64> {
    let r = r?;
    if r.get("extra").and_then(|e| e.get("error")).is_some() {
        return None;
    }
    r.get(k).and_then(Value::as_f64).or_else(|| {
        r.get("extra")
            .and_then(|e| e.get(k))
            .and_then(Value::as_f64)
    })
}

fn f(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => {
            let s = format!("{v:.digits$}");
            group(&s)
        }
        _ => "—".into(),
    }
}

/// Thousands separators for the integer part.
fn group(s: &str) -> String {
    let (int, frac) = s.split_once('.').map_or((s, None), |(a, b)| (a, Some(b)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    match frac {
        Some(fr) => format!("{sign}{out}.{fr}"),
        None => format!("{sign}{out}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a > 0.0 => Some(a / b),
        _ => None,
    }
}

fn x(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 10.0 => format!("{v:.0}x"),
        Some(v) if v < 0.1 => format!("{v:.3}x"),
        Some(v) => format!("{v:.2}x"),
        None => "—".into(),
    }
}

fn body_label(b: u64) -> String {
    match b {
        0 => "".into(),
        1024 => "1 KiB".into(),
        n => format!("{n} B"),
    }
}

struct Target {
    what: String,
    met: Option<bool>,
    detail: String,
}

pub fn report(args: ReportArgs) -> Result<()> {
    let w = load(&args.warren)?;
    let r = load(&args.rabbitmq)?;
    let fl = match &args.floor {
        Some(p) => load(p)?,
        None => Vec::new(),
    };
    let meta: Value = std::fs::read_to_string(&args.meta)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(json!({}));
    let index = |rows: &Vec<Row>| -> BTreeMap<(String, u64), Row> {
        rows.iter()
            .filter(|r| key(r).0 != "_meta")
            .map(|r| (key(r), r.clone()))
            .collect()
    };
    let wi = index(&w);
    let ri = index(&r);
    let fi = index(&fl);
    let wmeta = w.iter().find(|r| key(r).0 == "_meta");
    let rmeta = r.iter().find(|r| key(r).0 == "_meta");
    // Scenario order as in SCENARIOS, sizes ascending.
    let mut keys: Vec<(String, u64)> = wi.keys().chain(ri.keys()).cloned().collect();
    keys.sort_by_key(|(s, b)| {
        (
            crate::SCENARIOS
                .iter()
                .position(|(n, _)| n == s)
                .unwrap_or(usize::MAX),
            *b,
        )
    });
    keys.dedup();

    let mut md = String::new();
    let mut targets: Vec<Target> = Vec::new();
    let _ = writeln!(
        md,
        "# Warren vs RabbitMQ load benchmark — {}\n",
        meta.get("date").and_then(Value::as_str).unwrap_or("")
    );
    let _ = writeln!(
        md,
        "Command: `{}`\n",
        meta.get("command").and_then(Value::as_str).unwrap_or("")
    );
    let _ = writeln!(
        md,
        "Warren {} ({}), RabbitMQ {} on Erlang {}; {} {}; loopback TLS with client certificates and SASL EXTERNAL, \
         client {} on core 1, broker on core 0. Warren: {} / {}; RabbitMQ: {} / {}. Window {} s after {} s warm-up per row.\n",
        meta.get("warren_commit").and_then(Value::as_str).unwrap_or("?"),
        meta.get("warren_build").and_then(Value::as_str).unwrap_or("release"),
        meta.get("rabbitmq_version").and_then(Value::as_str).unwrap_or("?"),
        meta.get("erlang_version").and_then(Value::as_str).unwrap_or("?"),
        meta.get("cpu").and_then(Value::as_str).unwrap_or("?"),
        meta.get("kernel").and_then(Value::as_str).unwrap_or(""),
        meta.get("client").and_then(Value::as_str).unwrap_or("warren-load"),
        wmeta.and_then(|m| m.get("tls_version")).and_then(Value::as_str).unwrap_or("?"),
        wmeta.and_then(|m| m.get("cipher")).and_then(Value::as_str).unwrap_or("?"),
        rmeta.and_then(|m| m.get("tls_version")).and_then(Value::as_str).unwrap_or("?"),
        rmeta.and_then(|m| m.get("cipher")).and_then(Value::as_str).unwrap_or("?"),
        wmeta.and_then(|m| m.get("duration")).and_then(Value::as_f64).unwrap_or(0.0),
        wmeta.and_then(|m| m.get("warmup")).and_then(Value::as_f64).unwrap_or(0.0),
    );

    // ---- throughput
    let throughput = [
        "publish",
        "pubsub",
        "confirms",
        "fanout",
        "topic",
        "persistent",
        "persistent-w1",
        "quorum",
        "quorum-w1",
        "stream",
        "rpc-1x1",
        "rpc-8x2",
        "amqprs-publish",
    ];
    let _ = writeln!(md, "## Throughput\n");
    let _ = writeln!(md, "Rate: deliveries/s to consumers (publishes/s for publish-only, calls/s for RPC). CPU: broker CPU time (user+system, whole process) per message/call over the window. Core %: broker / client core use (100% = one core busy).\n");
    let _ = writeln!(md, "| scenario | body | Warren /s | RabbitMQ /s | W÷R | Warren µs CPU/op | RabbitMQ µs CPU/op | R÷W | core % W (client) | core % R (client) | target: ≥3x rate or ≤1/5 CPU |");
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for k in keys.iter().filter(|k| throughput.contains(&k.0.as_str())) {
        let (wr, rr) = (wi.get(k), ri.get(k));
        let rate = ratio(num(wr, "rate"), num(rr, "rate"));
        let cpu = ratio(num(rr, "cpu_us_per_op"), num(wr, "cpu_us_per_op"));
        let calibration = k.0 == "amqprs-publish";
        let verdict = if calibration {
            "(calibration)".to_string()
        } else {
            let met = match (rate, cpu) {
                (None, None) => None,
                _ => Some(rate.unwrap_or(0.0) >= 3.0 || cpu.unwrap_or(0.0) >= 5.0),
            };
            let detail = format!("rate {} / CPU {}", x(rate), x(cpu));
            targets.push(Target {
                what: format!("{} {} throughput", k.0, body_label(k.1)),
                met,
                detail: detail.clone(),
            });
            format!("{} {detail}", mark(met))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} |",
            k.0,
            body_label(k.1),
            f(num(wr, "rate"), 0),
            f(num(rr, "rate"), 0),
            x(rate),
            f(num(wr, "cpu_us_per_op"), 2),
            f(num(rr, "cpu_us_per_op"), 2),
            x(cpu),
            f(num(wr, "broker_core_pct"), 0),
            f(num(wr, "client_core_pct"), 0),
            f(num(rr, "broker_core_pct"), 0),
            f(num(rr, "client_core_pct"), 0),
            verdict
        );
    }

    // ---- latency
    let _ = writeln!(md, "\n## Latency\n");
    let _ = writeln!(md, "`latency`: publish at a fixed 5,000 msg/s (paced in 1 ms ticks), auto-ack consumer, publish-to-delivery time. RPC: call round trip (request → server → reply). `… confirm`: publisher confirm latency during that throughput row (flat out, at most 1,000 unconfirmed): basic.publish written → the basic.ack covering it read, one sample per message (a multiple ack settles many).\n");
    let _ = writeln!(md, "| scenario | body | Warren p50 µs | RabbitMQ p50 µs | Warren p99 µs | RabbitMQ p99 µs | p99 W÷R | Warren p99.9 / max µs | RabbitMQ p99.9 / max µs | target: p99 ≤ 1/3 |");
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|---|");
    // (row, fields): delivery/call latency in `p50_us` …, confirm latency in `confirm_p50_us` ….
    let latency_rows = keys.iter().filter_map(|k| match k.0.as_str() {
        "latency" | "rpc-1x1" | "rpc-8x2" => Some((k, k.0.clone(), "")),
        "confirms" | "persistent" | "persistent-w1" | "quorum" | "quorum-w1" | "stream" => {
            Some((k, format!("{} confirm", k.0), "confirm_"))
        }
        _ => None,
    });
    for (k, label, field) in latency_rows {
        let (wr, rr) = (wi.get(k), ri.get(k));
        let v = |r: Option<&Row>, name: &str| num(r, &format!("{field}{name}"));
        let p99 = ratio(v(wr, "p99_us"), v(rr, "p99_us"));
        let verdict = if k.0 == "latency" {
            let met = p99.map(|v| v <= 1.0 / 3.0);
            targets.push(Target {
                what: format!("latency {} p99", body_label(k.1)),
                met,
                detail: format!("p99 W÷R {}", x(p99)),
            });
            mark(met).to_string()
        } else {
            "(info)".into()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} |",
            label,
            body_label(k.1),
            f(v(wr, "p50_us"), 0),
            f(v(rr, "p50_us"), 0),
            f(v(wr, "p99_us"), 0),
            f(v(rr, "p99_us"), 0),
            x(p99),
            f(v(wr, "p999_us"), 0),
            f(v(wr, "max_us"), 0),
            f(v(rr, "p999_us"), 0),
            f(v(rr, "max_us"), 0),
            verdict
        );
    }

    // ---- isolation
    if keys.iter().any(|k| k.0 == "runaway") {
        let _ = writeln!(md, "\n## Isolation (runaway publisher)\n");
        let _ = writeln!(md, "`runaway`: queue B (confirming publisher, auto-ack consumer) measured alone, then beside queue A, whose confirming publisher has no cap and whose consumer acks a tenth of B's solo rate. B ratio = B's rate beside A ÷ alone (target ≥ 0.80). A's backlog, paged count (Warren, from the admin socket), disk written and peak RSS are over the second window.\n");
        let _ = writeln!(md, "| broker | body | B alone /s | B beside A /s | B ratio | A publish /s | A consumed /s | A backlog | A paged | disk written MiB | peak RSS MiB | broker core % | target: B ≥ 0.8 of alone |");
        let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
        for k in keys.iter().filter(|k| k.0 == "runaway") {
            for (name, row) in [("Warren", wi.get(k)), ("RabbitMQ", ri.get(k))] {
                let Some(row) = row else { continue };
                let e = |f: &str| num(Some(row), f);
                let b_ratio = e("b_ratio");
                let met = b_ratio.map(|v| v >= 0.8);
                targets.push(Target {
                    what: format!(
                        "runaway {} {}: B within 20% of alone",
                        body_label(k.1),
                        name
                    ),
                    met,
                    detail: format!("B ratio {}", f(b_ratio, 2)),
                });
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    body_label(k.1),
                    f(e("b_solo_rate"), 0),
                    f(num(Some(row), "rate"), 0),
                    f(b_ratio, 2),
                    f(e("a_publish_rate"), 0),
                    f(e("a_consume_rate"), 0),
                    f(e("a_depth_end"), 0),
                    f(e("a_paged_end"), 0),
                    f(e("broker_disk_write_bytes").map(|b| b / 1048576.0), 0),
                    f(e("rss_kib_max").map(|v| v / 1024.0), 0),
                    f(num(Some(row), "broker_core_pct"), 0),
                    mark(met)
                );
            }
        }
    }

    // ---- churn
    let _ = writeln!(md, "\n## Connection churn\n");
    let _ = writeln!(md, "Each cycle: TCP connect, full TLS handshake with client certificate (no resumption), SASL EXTERNAL, connection.open, connection.close.\n");
    let _ = writeln!(md, "| scenario | Warren conn/s | RabbitMQ conn/s | W÷R | Warren µs CPU/conn | RabbitMQ µs CPU/conn | R÷W | core % W (client) | core % R (client) | target: ≥3x |");
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for k in keys.iter().filter(|k| k.0.starts_with("churn")) {
        let (wr, rr) = (wi.get(k), ri.get(k));
        let rate = ratio(num(wr, "rate"), num(rr, "rate"));
        let cpu = ratio(num(rr, "cpu_us_per_op"), num(wr, "cpu_us_per_op"));
        let met = rate.map(|v| v >= 3.0);
        targets.push(Target {
            what: format!("{} TLS churn", k.0),
            met,
            detail: format!("conn/s {} (CPU/conn {})", x(rate), x(cpu)),
        });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} |",
            k.0,
            f(num(wr, "rate"), 0),
            f(num(rr, "rate"), 0),
            x(rate),
            f(num(wr, "cpu_us_per_op"), 0),
            f(num(rr, "cpu_us_per_op"), 0),
            x(cpu),
            f(num(wr, "broker_core_pct"), 0),
            f(num(wr, "client_core_pct"), 0),
            f(num(rr, "broker_core_pct"), 0),
            f(num(rr, "client_core_pct"), 0),
            mark(met)
        );
    }

    // ---- memory
    let _ = writeln!(md, "\n## Memory\n");
    let _ = writeln!(md, "RSS of the broker process (VmRSS; for RabbitMQ the beam.smp process). Each memory row starts from a freshly started broker.\n");
    let _ = writeln!(md, "| row | Warren | RabbitMQ | W÷R | target |");
    let _ = writeln!(md, "|---|--:|--:|--:|---|");
    let mib = |r: Option<&Row>, k: &str| num(r, k).map(|v| v / 1024.0);
    if let Some(k) = keys.iter().find(|k| k.0 == "idle-rss") {
        let (wr, rr) = (wi.get(k), ri.get(k));
        let wv = mib(wr, "rss_kib");
        let met = wv.map(|v| v <= 20.0);
        targets.push(Target {
            what: "idle RSS ≤ 20 MiB".into(),
            met,
            detail: format!("Warren {} MiB", f(wv, 1)),
        });
        let _ = writeln!(
            md,
            "| idle RSS after start (MiB) | {} | {} | {} | {} ≤ 20 MiB |",
            f(wv, 1),
            f(mib(rr, "rss_kib"), 1),
            x(ratio(wv, mib(rr, "rss_kib"))),
            mark(met)
        );
        let _ = writeln!(
            md,
            "| idle CPU (% of a core) | {} | {} | | |",
            f(num(wr, "broker_core_pct"), 1),
            f(num(rr, "broker_core_pct"), 1)
        );
    }
    if let Some(k) = keys.iter().find(|k| k.0 == "idle-conns") {
        let (wr, rr) = (wi.get(k), ri.get(k));
        let (wv, rv) = (mib(wr, "rss_kib"), mib(rr, "rss_kib"));
        let (wn, rn) = (num(wr, "items"), num(rr, "items"));
        let r = ratio(wv, rv);
        let same_n = wn.is_some() && wn == rn;
        let met = r.map(|v| v <= 0.25 && same_n);
        targets.push(Target {
            what: format!("{} idle connections ≤ 1/4 of RabbitMQ's RSS", f(wn, 0)),
            met,
            detail: format!(
                "W÷R {}{}",
                x(r),
                if same_n {
                    ""
                } else {
                    " (different connection counts!)"
                }
            ),
        });
        let _ = writeln!(md, "| RSS with idle TLS connections (MiB; W {} / R {} conns) | {} | {} | {} | {} ≤ 0.25x |", f(wn, 0), f(rn, 0), f(wv, 1), f(rv, 1), x(r), mark(met));
        let _ = writeln!(
            md,
            "| … KiB per connection (above idle) | {} | {} | {} | |",
            f(num(wr, "kib_per_conn"), 1),
            f(num(rr, "kib_per_conn"), 1),
            x(ratio(num(wr, "kib_per_conn"), num(rr, "kib_per_conn")))
        );
        let _ = writeln!(
            md,
            "| … time to open them (s, 32 at a time) | {} | {} | {} | |",
            f(num(wr, "setup_secs"), 1),
            f(num(rr, "setup_secs"), 1),
            x(ratio(num(wr, "setup_secs"), num(rr, "setup_secs")))
        );
    }
    if let Some(k) = keys.iter().find(|k| k.0 == "queues") {
        let (wr, rr) = (wi.get(k), ri.get(k));
        let (wv, rv) = (mib(wr, "rss_kib"), mib(rr, "rss_kib"));
        let _ = writeln!(
            md,
            "| RSS with {} queues bound to a topic exchange (MiB) | {} | {} | {} | |",
            f(num(wr, "items"), 0),
            f(wv, 1),
            f(rv, 1),
            x(ratio(wv, rv))
        );
        let _ = writeln!(
            md,
            "| … time to declare and bind them (s) | {} | {} | {} | |",
            f(num(wr, "setup_secs"), 2),
            f(num(rr, "setup_secs"), 2),
            x(ratio(num(wr, "setup_secs"), num(rr, "setup_secs")))
        );
    }

    // ---- floor
    if !fi.is_empty() {
        floor_tables(&mut md, &fi, &wi, &ri);
    }

    // ---- errors
    let errors: Vec<String> = w
        .iter()
        .chain(r.iter())
        .chain(fl.iter())
        .filter_map(|row| {
            let e = row
                .get("extra")?
                .get("error")
                .or_else(|| row.get("extra")?.get("warning"))?;
            Some(format!(
                "- {} {} {}: {}",
                row.get("broker")?.as_str()?,
                key(row).0,
                body_label(key(row).1),
                e
            ))
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "\n## Errors and warnings\n\n{}", errors.join("\n"));
    }

    // ---- targets
    let _ = writeln!(md, "\n## Targets\n");
    let met = targets.iter().filter(|t| t.met == Some(true)).count();
    let _ = writeln!(md, "{met} of {} met.\n", targets.len());
    for t in &targets {
        let _ = writeln!(md, "- {} {}: {}", mark(t.met), t.what, t.detail);
    }

    std::fs::write(&args.md, &md).with_context(|| args.md.display().to_string())?;
    print!("{md}");
    let record = json!({
        "meta": meta,
        "warren": w,
        "rabbitmq": r,
        "floor": fl,
        "targets": targets.iter().map(|t| json!({"what": t.what, "met": t.met, "detail": t.detail})).collect::<Vec<_>>(),
    });
    let mut jl = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.jsonl)
        .with_context(|| args.jsonl.display().to_string())?;
    writeln!(jl, "{record}")?;
    Ok(())
}

/// The floor rows (TLS echo, no broker), then the brokers' `rpc-1x1` and `latency` rows against them.
fn floor_tables(
    md: &mut String,
    fi: &BTreeMap<(String, u64), Row>,
    wi: &BTreeMap<(String, u64), Row>,
    ri: &BTreeMap<(String, u64), Row>,
) {
    let _ = writeln!(md, "\n## Floor (TLS echo, no broker)\n");
    let _ = writeln!(md, "What the machine costs without a broker: `warren-load echo-server` (tokio with one worker thread, rustls with the same certificates, client-certificate verification and TLS versions as the brokers; it writes back every read at once) on core 0 like the brokers, the same client on core 1. `floor-rpc`: one connection, one message of the body size outstanding, ping-pong; rate in round trips/s, CPU is the echo server's per round trip, latency the round trip. `floor-latency`: paced as `latency` (5,000 msg/s in 1 ms ticks, one burst per tick), send → echo read. Nothing here is Warren or RabbitMQ.\n");
    let _ = writeln!(md, "| row | body | rate /s | echo µs CPU/op | core % echo (client) | p50 µs | p99 µs | p99.9 / max µs |");
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|");
    let mut floor_keys: Vec<&(String, u64)> = fi.keys().collect();
    floor_keys.sort_by_key(|(s, b)| {
        (
            crate::SCENARIOS
                .iter()
                .position(|(n, _)| n == s)
                .unwrap_or(usize::MAX),
            *b,
        )
    });
    for k in floor_keys {
        let row = &fi[k];
        let what = match k.0.as_str() {
            "floor-rpc" => "floor-rpc (round trips)",
            "floor-latency" => "floor-latency (msg)",
            other => other,
        };
        let r = Some(row);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} ({}) | {} | {} | {} / {} |",
            what,
            body_label(k.1),
            f(num(r, "rate"), 0),
            f(num(r, "cpu_us_per_op"), 2),
            f(num(r, "broker_core_pct"), 0),
            f(num(r, "client_core_pct"), 0),
            f(num(r, "p50_us"), 0),
            f(num(r, "p99_us"), 0),
            f(num(r, "p999_us"), 0),
            f(num(r, "max_us"), 0),
        );
    }

    // Brokers against the floor: an RPC call is two echo round trips (caller → broker → server,
    // server → broker → caller); a `latency` message is one hop, as a `floor-latency` message.
    let _ = writeln!(md, "\n### Brokers against the floor\n");
    let _ = writeln!(md, "An RPC call through a broker is two hops (caller → broker → server, server → broker → caller), so its floor is two echo round trips: twice the echo CPU and round-trip time, half the round-trip rate (the doubled p99 is an approximation: it is not the p99 of a sum). A `latency` message is one hop, as a `floor-latency` message. − floor: how far above the floor the broker is; ÷ floor: as a multiple.\n");
    let _ = writeln!(md, "| row | body | floor | Warren | W − floor | W ÷ floor | RabbitMQ | R − floor | R ÷ floor |");
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|--:|--:|--:|");
    let sizes: Vec<u64> = {
        let mut s: Vec<u64> = fi.keys().map(|k| k.1).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    // (label, broker scenario, broker field, floor scenario, floor field, floor multiplier, digits)
    let rows: [(&str, &str, &str, &str, &str, f64, usize); 8] = [
        (
            "rpc-1x1 µs CPU/call (floor: 2 round trips)",
            "rpc-1x1",
            "cpu_us_per_op",
            "floor-rpc",
            "cpu_us_per_op",
            2.0,
            1,
        ),
        (
            "rpc-1x1 calls/s (floor: round trips/s ÷ 2)",
            "rpc-1x1",
            "rate",
            "floor-rpc",
            "rate",
            0.5,
            0,
        ),
        (
            "rpc-1x1 call p50 µs (floor: 2 × RTT p50)",
            "rpc-1x1",
            "p50_us",
            "floor-rpc",
            "p50_us",
            2.0,
            0,
        ),
        (
            "rpc-1x1 call p99 µs (floor: 2 × RTT p99)",
            "rpc-1x1",
            "p99_us",
            "floor-rpc",
            "p99_us",
            2.0,
            0,
        ),
        (
            "latency µs CPU/msg (floor: echo CPU/msg)",
            "latency",
            "cpu_us_per_op",
            "floor-latency",
            "cpu_us_per_op",
            1.0,
            1,
        ),
        (
            "latency p50 µs",
            "latency",
            "p50_us",
            "floor-latency",
            "p50_us",
            1.0,
            0,
        ),
        (
            "latency p99 µs",
            "latency",
            "p99_us",
            "floor-latency",
            "p99_us",
            1.0,
            0,
        ),
        (
            "latency p99.9 µs",
            "latency",
            "p999_us",
            "floor-latency",
            "p999_us",
            1.0,
            0,
        ),
    ];
    for size in sizes {
        for (label, scenario, field, floor_scenario, floor_field, times, digits) in rows {
            let fk = (floor_scenario.to_string(), size);
            if !fi.contains_key(&fk) {
                continue;
            }
            let bk = (scenario.to_string(), size);
            let floor = num(fi.get(&fk), floor_field).map(|v| v * times);
            let (wv, rv) = (num(wi.get(&bk), field), num(ri.get(&bk), field));
            let minus = |v: Option<f64>| match (v, floor) {
                (Some(v), Some(fv)) => Some(v - fv),
                _ => None,
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                label,
                body_label(size),
                f(floor, digits),
                f(wv, digits),
                f(minus(wv), digits),
                x(ratio(wv, floor)),
                f(rv, digits),
                f(minus(rv), digits),
                x(ratio(rv, floor)),
            );
        }
    }
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "✅",
        Some(false) => "❌",
        None => "—",
    }
}
