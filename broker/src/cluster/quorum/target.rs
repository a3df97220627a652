//! Where a publish forwarded from this node goes: a quorum queue's host (the leader of its shard,
//! whose change of leadership voids the forward) or a classic queue's home.

use super::shard::ShardGroup;

/// The node a forwarded publish goes to, and for a quorum queue its shard.
pub(crate) struct Target {
    /// None: a quorum queue whose shard has no leader now, or whose leader is this node but does
    /// not host its queues yet (the publish waits for the shard's next host).
    pub node: Option<u64>,
    pub group: u32,
    pub metrics: Option<ShardMetrics>,
}

impl Target {
    /// A quorum queue's host: the leader of its shard, when that is another node.
    pub fn host(shard: &ShardGroup) -> Target {
        let me = shard.node_id();
        Target {
            node: shard.leader().filter(|l| *l != me),
            group: shard.group,
            metrics: Some(shard.raft.metrics()),
        }
    }

    /// A classic queue's home node.
    pub fn home(node: u64) -> Target {
        Target {
            node: Some(node),
            group: 0,
            metrics: None,
        }
    }
}

/// A shard's Raft metrics, watched for a change of leader.
pub(crate) type ShardMetrics = openraft::type_config::alias::WatchReceiverOf<
    crate::cluster::raft::Types,
    openraft::RaftMetrics<crate::cluster::raft::Types>,
>;
