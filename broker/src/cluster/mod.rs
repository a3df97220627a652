//! Warren as a cluster node (opt-in with `[cluster]`; HA.md is the design, docs/cluster.md what
//! an operator sees): the configuration, the node links (mutual TLS 1.3, node certificates only),
//! the Raft groups over them (raft: the metadata group and the queue shards), quorum queues hosted
//! by their shard's leader and classic queues by their home node (quorum: forwarding and
//! subscriptions for both; home: what follows from a home node), adding and removing nodes
//! (members), and `warren --dev --cluster`.

pub mod balance;
pub mod config;
pub mod dev;
pub mod home;
pub mod link;
pub mod members;
pub mod node;
pub mod quorum;
pub mod raft;
