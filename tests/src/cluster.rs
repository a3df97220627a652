//! Node links under test: a cluster's worth of node configurations on 127.0.0.1 (free ports, node
//! certificates from a fresh CA, key files 0600), nodes started in-process, and a raw TLS dialler
//! that presents any certificate, offers any ALPN and sends any hello, for the refusals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use warren_broker::cluster::config::{ClusterConfig, ClusterTlsConfig, PeerConfig};
use warren_broker::cluster::link::{Links, PeerStatus};
use warren_broker::pki::{write_pair, CertificateAuthority, Pem, Validity};
use warren_wire_client::{client_config, ClientCert};

use serde_json::{json, Value};

use crate::{TestBroker, TIMEOUT};

/// The node-link protocol name (ALPN).
pub const LINK_ALPN: &[u8] = b"warren-cluster/1";

/// Configurations for nodes 1..=n sharing one CA.
pub struct LinkCluster {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub peers: Vec<PeerConfig>,
}

impl LinkCluster {
    /// Nodes `n1`..`n<count>` on free ports of 127.0.0.1, each with a node certificate for
    /// 127.0.0.1.
    pub fn new(count: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = CertificateAuthority::create("Warren node CA").expect("CA");
        std::fs::write(dir.path().join("ca.pem"), &ca.pem.cert).expect("CA file");
        let peers: Vec<PeerConfig> = (1..=count)
            .map(|id| PeerConfig {
                id,
                name: format!("n{id}"),
                addr: free_port(),
            })
            .collect();
        let cluster = LinkCluster { dir, ca, peers };
        for peer in &cluster.peers {
            let pem = cluster.node_cert(&peer.name, &["127.0.0.1"]);
            cluster.write(&peer.name, &pem);
        }
        cluster
    }

    /// A node certificate from the cluster's CA.
    pub fn node_cert(&self, name: &str, hosts: &[&str]) -> Pem {
        self.ca
            .issue_node(name, hosts, Validity::days(1))
            .expect("node certificate")
    }

    /// Writes `<name>.pem` and `<name>.key` (0600) into the cluster's directory.
    pub fn write(&self, name: &str, pem: &Pem) {
        write_pair(
            &self.path(&format!("{name}.pem")),
            &self.path(&format!("{name}.key")),
            pem,
        )
        .expect("certificate files");
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Node `id`'s configuration (its certificate files are `n<id>.pem` / `n<id>.key`).
    pub fn config(&self, id: u64) -> ClusterConfig {
        let me = &self.peers[(id - 1) as usize];
        ClusterConfig {
            node_id: id,
            cluster_name: "test".into(),
            listen: me.addr,
            peers: self.peers.clone(),
            join: false,
            replicas: self.peers.len().min(3) as u8,
            queue_shards: 4,
            // Short, so a test of a cut-off minority need not wait 15 s.
            change_timeout_ms: 3_000,
            disk_stall_timeout_ms: 5_000,
            // Off, so that a test's leaders stay where it put them (cluster_shards turns it on).
            balance_leaders: false,
            tls: ClusterTlsConfig {
                cert: self.path(&format!("{}.pem", me.name)),
                key: self.path(&format!("{}.key", me.name)),
                ca_bundle: self.path("ca.pem"),
                crls: vec![],
            },
        }
    }

    /// Node `id`'s configuration in a cluster started by nodes 1..=`initial`: those list only
    /// each other, and a later node lists them all and joins (`join = true`).
    pub fn config_started_by(&self, id: u64, initial: usize) -> ClusterConfig {
        let mut config = self.config(id);
        if id as usize <= initial {
            config.peers.truncate(initial);
            config.replicas = initial.min(3) as u8;
        } else {
            config.join = true;
        }
        config
    }

    pub async fn start(&self, id: u64) -> Arc<Links> {
        Links::start(self.config(id))
            .await
            .expect("node links start")
    }

    /// A TLS connection to node `id`'s link port presenting `identity`, offering the node-link ALPN
    /// when `alpn`, and trusting the cluster's CA.
    pub async fn dial(
        &self,
        id: u64,
        identity: Option<&Pem>,
        alpn: bool,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let cert = identity.map(|pem| ClientCert {
            chain: pem.cert.as_bytes(),
            key: pem.key.as_bytes(),
        });
        let shared = client_config(&self.path("ca.pem"), cert, true).expect("TLS client config");
        let mut config = ClientConfig::clone(&shared);
        if alpn {
            config.alpn_protocols = vec![LINK_ALPN.to_vec()];
        }
        let addr = self.peers[(id - 1) as usize].addr;
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        tokio::time::timeout(
            TIMEOUT,
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS"))?
    }

    /// The hello node `id` sends (a dialler that claims to be node `id` of this cluster).
    pub fn hello(&self, id: u64) -> Vec<u8> {
        let cluster_id = self.config(1).cluster_id();
        let mut out = b"WRNL\x01".to_vec();
        out.extend_from_slice(&cluster_id.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&42u64.to_be_bytes());
        out
    }
}

/// A port nobody listens on right now, below Linux's ephemeral range (32768–60999) so that no
/// outgoing connection takes it between now and the node binding it (again, after a restart).
fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() % 600 * 20;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (offset + n) % 12_000;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// Waits (bounded by `limit`) until `links` reports the peer `id` as `connected`.
pub async fn wait_for_link(links: &Links, id: u64, connected: bool, limit: Duration) -> PeerStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let status = links
            .status()
            .into_iter()
            .find(|p| p.id == id)
            .expect("a configured peer");
        if status.connected == connected {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("peer {id} not connected={connected} within {limit:?}: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Long enough for an election and a commit on a loaded two-core machine.
pub const SETTLE: Duration = Duration::from_secs(20);

/// The cluster node id broker `b` runs as.
pub fn node_id(b: &TestBroker) -> u64 {
    b.config.cluster.as_ref().expect("a cluster node").node_id
}

/// Whether broker `b` hosts quorum queue `queue` of vhost `/` (leads its shard and holds it).
pub fn hosts(b: &TestBroker, queue: &str) -> bool {
    b.server
        .broker
        .shard_journal
        .hosts(&warren_broker::meta::records::message_queue("/", queue))
}

/// The broker (among `brokers`) that hosts quorum queue `queue` of vhost `/`, once exactly one
/// does.
pub async fn host_of<'a>(brokers: &[&'a TestBroker], queue: &str) -> &'a TestBroker {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let hosting: Vec<&TestBroker> = brokers
            .iter()
            .copied()
            .filter(|b| hosts(b, queue))
            .collect();
        if let [one] = hosting[..] {
            return one;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} nodes host {queue}",
            hosting.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops node `id` of `brokers` (node i at index i - 1; a stopped one is None), keeping its data
/// directory; returns the brokers still running.
pub async fn stop_node(brokers: &mut [Option<TestBroker>], id: u64) -> Vec<&TestBroker> {
    brokers[(id - 1) as usize]
        .take()
        .expect("a running node")
        .stop_keeping_data()
        .await;
    brokers.iter().flatten().collect()
}

pub async fn start_node(cluster: &LinkCluster, id: u64) -> TestBroker {
    let config = cluster.config(id);
    TestBroker::start_with(move |c| c.cluster = Some(config)).await
}

/// Nodes 1, 2 and 3 of `cluster`, started in order.
pub async fn three_nodes(cluster: &LinkCluster) -> [TestBroker; 3] {
    [
        start_node(cluster, 1).await,
        start_node(cluster, 2).await,
        start_node(cluster, 3).await,
    ]
}

pub async fn status(broker: &TestBroker) -> Value {
    broker
        .admin()
        .call(json!({"command": "cluster_status"}))
        .await
        .expect("cluster status")
}

/// Waits until every broker names the same metadata leader; returns its id.
pub async fn agreed_leader(brokers: &[&TestBroker]) -> u64 {
    agreed_leader_other_than(brokers, None).await
}

/// [`agreed_leader`], a leader other than `gone` (a node that was stopped).
pub async fn agreed_leader_other_than(brokers: &[&TestBroker], gone: Option<u64>) -> u64 {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let mut leaders = Vec::new();
        for b in brokers {
            leaders.push(status(b).await["groups"][0]["leader"].as_u64());
        }
        if let Some(Some(leader)) = leaders.first().copied() {
            if leaders.iter().all(|l| *l == Some(leader)) && Some(leader) != gone {
                return leader;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agreed leader within {SETTLE:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cuts broker `b`'s node off from every other node, as a firewall would.
pub fn isolate(b: &TestBroker, others: &[u64]) {
    b.server
        .broker
        .cluster()
        .expect("a cluster node")
        .links
        .cut_off(others);
}
