//! Where a publish forwarded from this node goes: a quorum queue's host (the leader of its shard,
//! whose change of leadership voids the forward) or a classic queue's home.

use super::shard::ShardGroup;

/// The node a forwarded publish goes to, and for a quorum queue its shard.
pub(crate) struct Target {
    pub node: u64,
    pub group: u32,
    pub metrics: Option<ShardMetrics>,
}

impl Target {
    /// A quorum queue's host: the leader of its shard, when that is another node.
    pub fn host(shard: &ShardGroup) -> Result<Target, &'static str> {
        let me = shard.node_id();
        let node = shard
            .leader()
            .filter(|l| *l != me)
            .ok_or("the queue's shard has no leader on another node now")?;
        Ok(Target {
            node,
            group: shard.group,
            metrics: Some(shard.raft.metrics()),
        })
    }

    /// A classic queue's home node.
    pub fn home(node: u64) -> Target {
        Target {
            node,
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
