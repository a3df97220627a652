//! `warren --dev --cluster N`: the configurations of an N-node development cluster on 127.0.0.1,
//! all from the one dev CA under `DATA_DIR/tls`: node `i` serves AMQP on the given port + i − 1 and
//! its node links on that port + 20000, keeps its data in `DATA_DIR/n<i>`, and presents
//! `DATA_DIR/tls/nodes/n<i>.pem` to its peers. The binary writes each configuration to
//! `DATA_DIR/n<i>/warren.toml` and runs one `warren --config` process per node, so that a node can be
//! killed and restarted on its own, as in production.

mod supervise;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use supervise::run;

use crate::cluster::config::{ClusterConfig, ClusterTlsConfig, PeerConfig};
use crate::config::Config;
use crate::pki::DevPki;

/// The node links' port is the AMQP port plus this.
pub const LINK_PORT_OFFSET: u16 = 20_000;

/// One node of the development cluster.
#[derive(Debug, Clone)]
pub struct DevNode {
    pub id: u64,
    pub config: Config,
    /// Where the binary writes [`Self::config`] for the node's process.
    pub config_path: PathBuf,
}

/// The nodes of a `count`-node development cluster whose first node serves AMQP on `listen`. The
/// dev PKI under `data_dir/tls` must exist; the node certificates are issued here when missing.
pub fn nodes(data_dir: &Path, listen: SocketAddr, count: u64) -> anyhow::Result<Vec<DevNode>> {
    anyhow::ensure!(
        (1..=7).contains(&count),
        "--cluster takes 1 to 7 nodes (3 or 5 for a cluster that survives node loss)"
    );
    let pki = DevPki::in_dir(&data_dir.join("tls"));
    let addr = |id: u64, offset: u16| -> anyhow::Result<SocketAddr> {
        let port = u16::try_from(u64::from(listen.port()) + id - 1)
            .ok()
            .and_then(|p| p.checked_add(offset))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--listen port {} is too high for {count} nodes",
                    listen.port()
                )
            })?;
        Ok(SocketAddr::new(listen.ip(), port))
    };
    let mut peers = Vec::new();
    for id in 1..=count {
        peers.push(PeerConfig {
            id,
            name: format!("n{id}"),
            addr: addr(id, LINK_PORT_OFFSET)?,
        });
    }
    let mut nodes = Vec::new();
    let mut metrics_port = 15692;
    for peer in &peers {
        let dir = data_dir.join(&peer.name);
        let (cert, key) = pki.ensure_node(&peer.name)?;
        let mut config = Config::dev(&dir, addr(peer.id, 0)?);
        // Each node's Prometheus endpoint on the next free port from 15692 (a node process reads
        // its configuration file, so the port is chosen here).
        while metrics_port < 15792
            && std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, metrics_port)).is_err()
        {
            metrics_port += 1;
        }
        config.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], metrics_port)));
        metrics_port += 1;
        // Every node trusts and is served by the one dev PKI (the cluster's clients use one CA).
        config.tls = Config::dev(data_dir, listen).tls;
        config.cluster = Some(ClusterConfig {
            node_id: peer.id,
            cluster_name: "warren-dev".into(),
            listen: peer.addr,
            peers: peers.clone(),
            join: false,
            replicas: count.min(3) as u8,
            queue_shards: 4,
            change_timeout_ms: 15_000,
            disk_stall_timeout_ms: 5_000,
            balance_leaders: true,
            tls: ClusterTlsConfig {
                cert,
                key,
                ca_bundle: pki.ca_cert.clone(),
                crls: vec![pki.crl.clone()],
            },
        });
        config.validate()?;
        nodes.push(DevNode {
            id: peer.id,
            config_path: dir.join("warren.toml"),
            config,
        });
    }
    Ok(nodes)
}

/// The oslo.messaging `transport_url` naming every node (kombu fails over along the list).
pub fn transport_url(nodes: &[DevNode]) -> String {
    let hosts: Vec<String> = nodes
        .iter()
        .map(|n| format!("admin@localhost:{}", n.config.listen[0].port()))
        .collect();
    format!("rabbit://{}/", hosts.join(","))
}
