//! Runs the development cluster's node processes: one `warren --config DATA_DIR/n<i>/warren.toml`
//! each, in the foreground. A node that exits (killed to watch failover, or failed) is reported and
//! not restarted: restarting it is the developer's move, with the command printed. Ctrl-C or
//! SIGTERM stops every node with SIGTERM (their graceful shutdown), then SIGKILL after 15 seconds.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rustix::process::{kill_process, Pid, Signal};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use super::{nodes, transport_url, DevNode};

/// Writes each node's configuration, starts the nodes, and waits for `shutdown`.
pub async fn run(
    data_dir: &Path,
    listen: SocketAddr,
    count: u64,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let nodes = nodes(data_dir, listen, count)?;
    let exe = std::env::current_exe().context("finding the warren binary")?;
    let mut children = Vec::new();
    for node in &nodes {
        crate::broker::create_private_dir(&node.config.data_dir)
            .with_context(|| format!("creating {}", node.config.data_dir.display()))?;
        std::fs::write(&node.config_path, toml::to_string_pretty(&node.config)?)
            .with_context(|| format!("writing {}", node.config_path.display()))?;
        let child = Command::new(&exe)
            .arg("--config")
            .arg(&node.config_path)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node n{}", node.id))?;
        children.push((node.id, child));
    }
    print_cluster(&exe, &nodes, &children);
    let mut running = JoinSet::new();
    let mut pids = Vec::new();
    for (id, mut child) in children {
        pids.push((id, child.id()));
        running.spawn(async move { (id, child.wait().await, child) });
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(Ok((id, status, _))) = running.join_next(), if !running.is_empty() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                println!("warren --dev --cluster: node n{id} exited ({status}); it is not restarted");
                // Its pid may be reused by another process: it is never signalled.
                pids.retain(|(node, _)| *node != id);
            }
        }
    }
    println!("warren --dev --cluster: stopping the nodes");
    for (_, pid) in &pids {
        if let Some(pid) = pid.and_then(|p| Pid::from_raw(p as i32)) {
            let _ = kill_process(pid, Signal::TERM);
        }
    }
    let drain = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .is_err()
    {
        // Dropping the children (kill_on_drop) kills whatever is left.
        running.abort_all();
    }
    Ok(())
}

fn print_cluster(exe: &Path, nodes: &[DevNode], children: &[(u64, Child)]) {
    println!(
        "Warren development cluster: {} nodes on 127.0.0.1, one CA, user 'admin'.",
        nodes.len()
    );
    println!();
    println!("    node  pid      amqp   links  admin socket");
    for (node, (_, child)) in nodes.iter().zip(children) {
        let link = node
            .config
            .cluster
            .as_ref()
            .map(|c| c.listen.port())
            .unwrap_or_default();
        println!(
            "    n{:<3}  {:<7}  {:<5}  {:<5}  {}",
            node.id,
            child.id().map(|p| p.to_string()).unwrap_or_default(),
            node.config.listen[0].port(),
            link,
            node.config.admin_socket().display()
        );
    }
    println!();
    let Some(first) = nodes.first() else { return };
    let tls_dir = first
        .config
        .tls
        .ca_bundle
        .parent()
        .unwrap_or(Path::new("."));
    let pki = crate::pki::DevPki::in_dir(tls_dir);
    println!("OpenStack (oslo.messaging), in each service's configuration:");
    println!();
    println!("    [DEFAULT]");
    println!("    transport_url = {}", transport_url(nodes));
    println!();
    println!("    [oslo_messaging_rabbit]");
    println!("    ssl = True");
    println!("    ssl_ca_file = {}", pki.ca_cert.display());
    println!("    ssl_cert_file = {}", pki.admin_cert.display());
    println!("    ssl_key_file = {}", pki.admin_key.display());
    println!("    rabbit_login_method = EXTERNAL");
    println!();
    println!("Watch failover: kill -9 a node's pid; restart it with");
    println!(
        "    {} --config {}",
        exe.display(),
        first.config_path.display()
    );
    println!("(its own configuration; see brokerctl --socket <admin socket> cluster status). Ctrl-C stops every node.");
}
