//! The cluster's Raft groups, on openraft (HA.md §1, §5): the types every group shares, the binary
//! forms its entries and messages take on disk and on node links (`codec`), and the log store that
//! keeps a group's entries, vote and progress in Warren's own command log (`log_store`), so one
//! group-commit fdatasync covers every group on a node and the local data.
//!
//! A group's application data is a [`Proposal`]: metadata commands (the metadata group) or
//! quorum-queue operations (a queue shard group) proposed together by one node.

pub mod codec;
pub mod log_store;
pub mod member;
pub mod meta;
pub mod network;
pub mod rpc;
pub mod shard;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::meta::MetaCommand;

/// What one node proposes to a group, applied together, in order, on every node: metadata
/// commands for the metadata group, queue operations for a shard group (each group ignores the
/// other kind). `origin` is the node that proposed them (for the log and for answering its client).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Proposal {
    pub origin: u64,
    pub commands: Vec<MetaCommand>,
    /// Shared: openraft clones an entry for each follower it replicates to and for applying it,
    /// and a shard's entry holds hundreds of operations at window 1000.
    pub ops: Arc<[QueueOp]>,
    /// The entry carrying this proposal as it was first encoded (by the leader's log store) or
    /// received (by a follower), kept so that the log and every follower's AppendEntries reuse
    /// those bytes instead of encoding the proposal again (see [`codec::Encoded`]). Not part of
    /// the proposal's value: equal proposals may differ in it.
    pub encoded: codec::Encoded,
}

/// A change to the messages of a quorum queue, as its leader's live queue journals it (routing's
/// `Journal`: the records a durable queue writes to the local log, replicated instead). `queue` is
/// the queue's record name (vhost and queue).
#[derive(Debug, Clone, PartialEq)]
pub enum QueueOp {
    /// A message entered the queue under `id` (its stored form).
    Enqueue {
        queue: String,
        id: u64,
        payload: Bytes,
    },
    /// A message left it (acknowledged, expired, dead-lettered).
    Remove { queue: String, id: u64 },
    /// Every message of it is gone (deleted or purged).
    Drop { queue: String },
    /// A message came back after a delivery (requeued, or its consumer went): its count of
    /// returns, which `x-delivery-limit` and `x-delivery-count` use, grows by one.
    Returned { queue: String, id: u64 },
    /// The enqueue before it in the same proposal is message `seq` a node forwarded to the
    /// queue's host (its [`Sender`]): a resend of it is answered as stored instead of stored
    /// twice. `floor` is the lowest of that sender's messages it may still send again (below
    /// it, the shard need remember none).
    Sent { from: Sender, seq: u64, floor: u64 },
}

/// A node, in one run of its process, as the sender of forwarded publishes: its sequence numbers
/// restart with the process, so the run (`incarnation`, its start time) tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sender {
    pub node: u64,
    pub incarnation: u64,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} command(s) and {} queue operation(s) from node {}",
            self.commands.len(),
            self.ops.len(),
            self.origin
        )
    }
}

/// What applying a proposal gave: `Err` with the reason the first refused command gives (as
/// brokerctl reports it); commands before it took effect, those after it did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer(pub Result<(), String>);

openraft::declare_raft_types!(
    /// The type configuration of Warren's Raft groups: node ids are `[cluster]` node ids, and a
    /// member is known by its node-link address and its name (its node certificate's CN), so the
    /// groups' membership is the list of nodes the links admit (see [`node`]).
    pub Types:
        D = Proposal,
        R = Answer,
        Node = openraft::NodeInfo,
);

/// A member as the groups' membership records it: `raft_addr` its node-link address, `data` its
/// name.
pub fn node(addr: std::net::SocketAddr, name: &str) -> openraft::NodeInfo {
    openraft::NodeInfo::new(addr, name)
}

/// Log ids, votes and entries of Warren's groups.
pub type LogId = openraft::type_config::alias::LogIdOf<Types>;
pub type Vote = openraft::type_config::alias::VoteOf<Types>;
pub type Entry = openraft::type_config::alias::EntryOf<Types>;
pub type Membership = openraft::Membership<u64, openraft::NodeInfo>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<Types>;

/// A group's state from its metrics, as `brokerctl cluster status` shows it.
pub fn group_status(m: &openraft::RaftMetrics<Types>) -> serde_json::Value {
    serde_json::json!({
        "state": format!("{:?}", m.state),
        "leader": m.current_leader,
        "term": m.current_term,
        "last_log_index": m.last_log_index,
        "applied_index": m.last_applied.map(|id| id.index),
        "snapshot_index": m.snapshot.map(|id| id.index),
        "purged_index": m.purged.map(|id| id.index),
        "voters": m.membership_config.membership().voter_ids().collect::<Vec<_>>(),
        "learners": m.membership_config.membership().learner_ids().collect::<Vec<_>>(),
    })
}
