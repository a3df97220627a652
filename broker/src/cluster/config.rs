//! The `[cluster]` section of `warren.toml`: who this node is, who its peers are, and the TLS
//! material of the node links. Without the section Warren is a single node, exactly as before.
//!
//! Node ids are never reused (HA.md §1.5): a replaced node joins with a new id. The peer list seeds
//! the cluster: the nodes that start it must be given the same list (they make it the first
//! membership of every group); after that the groups' membership is the truth (`brokerctl cluster
//! add_node` / `remove_node` change it), and the list only tells a node where to find the others
//! before it has a membership of its own. A node that joins a running cluster says `join = true`
//! and waits to be added. The cluster id, derived from the cluster's name, is checked on every
//! link, so nodes of two clusters never talk.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id: one of `peers`, never reused for another node.
    pub node_id: u64,
    /// The cluster's name, part of the cluster id every link checks.
    pub cluster_name: String,
    /// Where the node-link listener binds (TLS 1.3, node certificates only).
    pub listen: SocketAddr,
    /// Every node of the cluster, this one included: the first membership of a new cluster, and
    /// where a node finds the others until it has a membership of its own.
    pub peers: Vec<PeerConfig>,
    /// This node joins a cluster that is running: it does not start the groups with `peers` as
    /// their members, and waits for `brokerctl cluster add_node` on a member to add it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// Replicas of each quorum queue (a majority of them confirms a message).
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    /// Queue shard groups, fixed when the cluster is first started.
    #[serde(default = "default_queue_shards")]
    pub queue_shards: u16,
    /// How long an administrative change waits for a majority before it is reported as not made.
    #[serde(default = "default_change_timeout_ms")]
    pub change_timeout_ms: u64,
    /// A node whose disk has not completed a write for this long hands the leadership of every
    /// group it leads to another node (a stalled disk must not hold the cluster's writes hostage).
    #[serde(default = "default_disk_stall_timeout_ms")]
    pub disk_stall_timeout_ms: u64,
    /// Hand each shard's leadership to its preferred node (the voters in turn) once that node is
    /// up and caught up, so that every node hosts quorum queues (cluster::balance). Off, shards
    /// stay where elections put them until `brokerctl cluster transfer-leadership` moves them.
    #[serde(default = "default_balance_leaders")]
    pub balance_leaders: bool,
    pub tls: ClusterTlsConfig,
}

/// One node of `[cluster] peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    /// The CN of its node certificate.
    pub name: String,
    /// Its node-link address: dialled from this node's `listen` address, and the name its
    /// certificate's subject alternative names must match.
    pub addr: SocketAddr,
}

/// `[cluster.tls]`: a node-only CA is recommended, so that no user certificate chains to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// PEM node certificate chain (`brokerctl ca issue --node`): used to accept and to dial.
    pub cert: PathBuf,
    /// Its private key: mode 0600 or stricter, owned by the broker's user.
    pub key: PathBuf,
    /// PEM bundle of the CA(s) node certificates must chain to.
    pub ca_bundle: PathBuf,
    /// PEM CRLs checked for peers' certificates, both ways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crls: Vec<PathBuf>,
}

fn default_replicas() -> u8 {
    3
}

fn default_queue_shards() -> u16 {
    16
}

fn default_change_timeout_ms() -> u64 {
    15_000
}

fn default_disk_stall_timeout_ms() -> u64 {
    5_000
}

fn default_balance_leaders() -> bool {
    true
}

impl ClusterConfig {
    /// Refuses a configuration whose nodes could not agree (the reason, for the error message).
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster_name.is_empty() {
            return Err("cluster.cluster_name: must not be empty".into());
        }
        if self.peers.is_empty() {
            return Err("cluster.peers: list every node of the cluster, this one included".into());
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for peer in &self.peers {
            if !ids.insert(peer.id) {
                return Err(format!(
                    "cluster.peers: node id {} is listed twice",
                    peer.id
                ));
            }
            if peer.name.is_empty() || !names.insert(peer.name.as_str()) {
                return Err(format!(
                    "cluster.peers: node name {:?} is empty or listed twice",
                    peer.name
                ));
            }
            if !addrs.insert(peer.addr) {
                return Err(format!(
                    "cluster.peers: address {} is listed twice",
                    peer.addr
                ));
            }
        }
        let Some(me) = self.me() else {
            return Err(format!(
                "cluster.node_id: {} is not one of cluster.peers",
                self.node_id
            ));
        };
        if me.addr != self.listen {
            return Err(format!(
                "cluster.listen: {} differs from this node's address in cluster.peers ({})",
                self.listen, me.addr
            ));
        }
        if self.replicas == 0 || usize::from(self.replicas) > self.peers.len() {
            return Err(format!(
                "cluster.replicas: {} must be between 1 and the number of nodes ({})",
                self.replicas,
                self.peers.len()
            ));
        }
        if !(100..=600_000).contains(&self.change_timeout_ms) {
            return Err(format!(
                "cluster.change_timeout_ms: {} must be between 100 and 600000",
                self.change_timeout_ms
            ));
        }
        if !(500..=600_000).contains(&self.disk_stall_timeout_ms) {
            return Err(format!(
                "cluster.disk_stall_timeout_ms: {} must be between 500 and 600000",
                self.disk_stall_timeout_ms
            ));
        }
        if !(1..=1024).contains(&self.queue_shards) {
            return Err(format!(
                "cluster.queue_shards: {} must be between 1 and 1024",
                self.queue_shards
            ));
        }
        Ok(())
    }

    /// This node's entry in `peers`.
    pub fn me(&self) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.id == self.node_id)
    }

    /// The peer whose node certificate carries `name`.
    pub fn peer_named(&self, name: &str) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The other nodes.
    pub fn others(&self) -> impl Iterator<Item = &PeerConfig> {
        self.peers.iter().filter(move |p| p.id != self.node_id)
    }

    /// Names the cluster: its name, hashed. Two nodes link only when their ids agree, so a node
    /// configured for another cluster is refused. (The node list is not part of it: membership
    /// changes make the nodes' lists differ, and the groups' membership decides who is a node.)
    pub fn cluster_id(&self) -> u64 {
        fnv1a(format!("warren-cluster\0{}", self.cluster_name).as_bytes())
    }
}

/// 64-bit FNV-1a: a stable hash (the standard library's is not stable across versions). The cluster
/// id guards against misconfiguration, not attackers (the links are mutually authenticated).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_nodes() -> ClusterConfig {
        ClusterConfig {
            node_id: 1,
            cluster_name: "openstack".into(),
            listen: "127.0.0.11:25672".parse().unwrap(),
            peers: (1..=3)
                .map(|i| PeerConfig {
                    id: i,
                    name: format!("n{i}"),
                    addr: format!("127.0.0.1{i}:25672").parse().unwrap(),
                })
                .collect(),
            join: false,
            replicas: 3,
            queue_shards: 16,
            change_timeout_ms: 15_000,
            disk_stall_timeout_ms: 5_000,
            balance_leaders: true,
            tls: ClusterTlsConfig {
                cert: "node.pem".into(),
                key: "node.key".into(),
                ca_bundle: "ca.pem".into(),
                crls: vec![],
            },
        }
    }

    #[test]
    fn a_consistent_configuration_is_accepted() {
        assert_eq!(three_nodes().validate(), Ok(()));
    }

    #[test]
    fn inconsistent_configurations_are_refused_with_the_reason() {
        type Change = fn(&mut ClusterConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.node_id = 9, "not one of cluster.peers"),
            (|c| c.peers[1].id = 1, "listed twice"),
            (|c| c.peers[2].name = "n1".into(), "listed twice"),
            (|c| c.peers[2].addr = c.peers[1].addr, "listed twice"),
            (|c| c.listen = "127.0.0.11:1".parse().unwrap(), "differs"),
            (|c| c.replicas = 4, "cluster.replicas"),
            (|c| c.queue_shards = 0, "cluster.queue_shards"),
            (
                |c| c.disk_stall_timeout_ms = 10,
                "cluster.disk_stall_timeout_ms",
            ),
            (|c| c.cluster_name.clear(), "cluster_name"),
        ];
        for (change, expected) in cases {
            let mut config = three_nodes();
            change(&mut config);
            let error = config.validate().unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn the_cluster_id_depends_on_the_name_only() {
        let a = three_nodes();
        let mut other_node = a.clone();
        other_node.peers.reverse();
        other_node.node_id = 2;
        other_node.peers[0].addr = "127.0.0.14:25672".parse().unwrap();
        assert_eq!(a.cluster_id(), other_node.cluster_id());
        let mut renamed = a.clone();
        renamed.cluster_name = "other".into();
        assert_ne!(a.cluster_id(), renamed.cluster_id());
    }
}
