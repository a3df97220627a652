//! Health checks and status (kolla-ansible's container health check: `rabbitmq-diagnostics -q
//! ping`, `status`, `check_running`, `check_local_alarms`, `check_port_connectivity`,
//! `check_virtual_hosts`; openstack-helm's `rabbitmqctl ping`; openstack-ansible's `status
//! --formatter json`), and waiting for a starting broker (`wait`, `await_startup`).

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{output, Ctx, Fail, RABBITMQ_COMPAT};

/// Runs `verb` if it is one of these; None if not.
pub fn run(ctx: &Ctx, verb: &str) -> Option<Result<(), Fail>> {
    Some(match verb {
        "ping" => ping(ctx),
        "status" => status(ctx),
        "check_running" => check_running(ctx),
        "check_local_alarms" | "check_alarms" => alarms(ctx, verb == "check_local_alarms"),
        "check_port_connectivity" => ports(ctx),
        "check_virtual_hosts" => status_of(ctx).map(|_| {
            output::banner(&ctx.line, "Checking if all vhosts are running ...");
            say!("Node {} reported all vhosts as running", ctx.node())
        }),
        "await_startup" => await_startup(ctx, None),
        "wait" => wait(ctx),
        _ => return None,
    })
}

fn status_of(ctx: &Ctx) -> Result<Map<String, Value>, Fail> {
    match ctx.call(json!({"command": "status"}))? {
        Value::Object(m) => Ok(m),
        other => Err(Fail::data(format!("unexpected status answer: {other}"))),
    }
}

fn check_running(ctx: &Ctx) -> Result<(), Fail> {
    match status_of(ctx)?.get("serving") {
        Some(Value::Bool(false)) => Err(Fail::unavailable(format!(
            "RabbitMQ on node {} is not running or has not fully booted yet (stopped with stop_app)",
            ctx.node()
        ))),
        _ => {
            say!("RabbitMQ on node {} is fully booted and running", ctx.node());
            Ok(())
        }
    }
}

fn ping(ctx: &Ctx) -> Result<(), Fail> {
    output::banner(
        &ctx.line,
        &format!(
            "Will ping {}. This only checks if the OS process is running and registered with epmd. Timeout: 60000 ms.",
            ctx.node()
        ),
    );
    status_of(ctx)?;
    say!("Ping succeeded");
    Ok(())
}

/// The AMQP listeners' addresses the broker's status names.
fn listeners(status: &Map<String, Value>) -> Vec<String> {
    status
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

/// The alarms in force: RabbitMQ's resource alarm names.
fn alarms_in(status: &Map<String, Value>) -> Vec<&'static str> {
    let mut out = Vec::new();
    if status.get("memory_alarm") == Some(&json!(true)) {
        out.push("memory");
    }
    if status.get("disk_alarm") == Some(&json!(true)) {
        out.push("disk");
    }
    out
}

fn status(ctx: &Ctx) -> Result<(), Fail> {
    let s = status_of(ctx)?;
    let listeners: Vec<Value> = listeners(&s)
        .iter()
        .map(|addr| {
            let (interface, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
            json!({"node": ctx.node(), "protocol": "amqp/ssl",
                   "interface": interface.trim_matches(|c| c == '[' || c == ']'),
                   "port": port.parse::<u64>().unwrap_or(0),
                   "purpose": "AMQP 0-9-1 and AMQP 1.0 over TLS"})
        })
        .collect();
    let uptime = s.get("uptime_ms").and_then(Value::as_u64).unwrap_or(0) / 1000;
    let mut out = Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_string(), v);
    };
    put("pid", s.get("pid").cloned().unwrap_or(Value::Null));
    put("product_name", json!("Warren"));
    put(
        "product_version",
        s.get("version").cloned().unwrap_or(Value::Null),
    );
    put("rabbitmq_version", json!(RABBITMQ_COMPAT));
    put("os", json!(std::env::consts::OS));
    put("uptime", json!(uptime));
    put("is_under_maintenance", json!(false));
    put(
        "data_directory",
        s.get("data_dir").cloned().unwrap_or(Value::Null),
    );
    put("listeners", Value::Array(listeners));
    put("alarms", json!(alarms_in(&s)));
    put(
        "vm_memory_high_watermark_limit",
        s.get("memory_limit").cloned().unwrap_or(Value::Null),
    );
    put(
        "memory",
        json!({"total": {"rss": s.get("rss_bytes").cloned().unwrap_or(Value::Null)},
                         "messages": s.get("memory_used").cloned().unwrap_or(Value::Null)}),
    );
    put(
        "disk_free",
        s.get("disk_free").cloned().unwrap_or(Value::Null),
    );
    put("active_plugins", json!([]));
    put("enabled_plugin_file", Value::Null);
    put(
        "totals",
        json!({"connection_count": s.get("connections").cloned().unwrap_or(json!(0)),
                          "virtual_host_count": s.get("vhosts").and_then(Value::as_array).map_or(0, Vec::len)}),
    );
    output::banner(&ctx.line, &format!("Status of node {} ...", ctx.node()));
    output::object(&ctx.line, &out);
    Ok(())
}

fn alarms(ctx: &Ctx, local: bool) -> Result<(), Fail> {
    let s = status_of(ctx)?;
    let alarms = alarms_in(&s);
    output::banner(
        &ctx.line,
        &format!(
            "Asking node {} to report any {}alarms ...",
            ctx.node(),
            if local { "local " } else { "" }
        ),
    );
    if alarms.is_empty() {
        say!(
            "Node {} reported no {}",
            ctx.node(),
            if local {
                "local alarms"
            } else {
                "alarms, local or clusterwide"
            }
        );
        return Ok(());
    }
    let listed: Vec<String> = alarms
        .iter()
        .map(|a| format!("{a} resource limit alarm"))
        .collect();
    Err(Fail::unavailable(format!(
        "Node {} reported alarms: {}",
        ctx.node(),
        listed.join(", ")
    )))
}

fn ports(ctx: &Ctx) -> Result<(), Fail> {
    let listeners = listeners(&status_of(ctx)?);
    output::banner(
        &ctx.line,
        &format!(
            "Testing TCP connections to all active listeners on node {} ...",
            ctx.node()
        ),
    );
    let mut ports = Vec::new();
    for addr in &listeners {
        let target: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| Fail::data(format!("unreadable listener address {addr}")))?;
        // A wildcard listener is reached on loopback.
        let target = match target.ip().is_unspecified() {
            true if target.is_ipv4() => std::net::SocketAddr::from(([127, 0, 0, 1], target.port())),
            true => std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, target.port())),
            false => target,
        };
        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)).map_err(|e| {
            Fail::unavailable(format!(
                "Connection to ports of the following listeners on node {} failed: {addr}: {e}",
                ctx.node()
            ))
        })?;
        ports.push(target.port().to_string());
    }
    say!(
        "Successfully connected to ports {} on node {}.",
        ports.join(", "),
        ctx.node()
    );
    Ok(())
}

/// Waits until the broker answers, at most `-t`/`--timeout` seconds (RabbitMQ's default 300).
fn await_startup(ctx: &Ctx, until: Option<Instant>) -> Result<(), Fail> {
    let deadline = until
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(ctx.line.timeout.unwrap_or(300)));
    loop {
        match status_of(ctx) {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 69 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) if e.code == 69 => {
                return Err(Fail::timeout(format!(
                    "node {} did not start within the timeout: {}",
                    ctx.node(),
                    e.message
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

/// `wait PIDFILE`: until the pid file names a running process and the broker answers
/// (`--timeout`, default 10 s as RabbitMQ's).
fn wait(ctx: &Ctx) -> Result<(), Fail> {
    let Some(pidfile) = ctx.line.args().first() else {
        return Err(Fail::usage("not enough arguments: a pid file"));
    };
    let deadline = Instant::now() + Duration::from_secs(ctx.line.timeout.unwrap_or(10));
    output::banner(
        &ctx.line,
        &format!("Waiting for pid file '{pidfile}' to appear"),
    );
    let pid = loop {
        let pid = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        match pid {
            Some(pid) if std::path::Path::new(&format!("/proc/{pid}")).exists() => break pid,
            _ if Instant::now() >= deadline => {
                return Err(Fail::timeout(format!(
                    "pid file '{pidfile}' does not name a running process"
                )))
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    output::banner(&ctx.line, &format!("pid is {pid}"));
    await_startup(ctx, Some(deadline))
}
