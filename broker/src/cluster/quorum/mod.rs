//! Quorum queues on a cluster node (HA.md §5.3, with the departure docs/ARCHITECTURE.md records):
//! the node that leads a queue's shard group hosts the queue — its live `Queue`, with every feature
//! of a single node's — and the shard is the queue's journal. What the queue would write to the
//! local log (`Enqueue`, `Remove`, `DropQueue`) is proposed to the shard instead, in the order the
//! queue wrote it, and a publisher's confirm waits until a majority has the entry on disk and this
//! node has applied it.
//!
//! Hosting follows leadership. A node that becomes a shard's leader first commits a blank entry
//! (so every entry of earlier terms is applied to its replica), then restores each of the shard's
//! queues from the replica, as a single node restores durable queues from its log. Its writes carry
//! that leadership (openraft's conditional write), so a write queued under an earlier leadership of
//! this node is refused rather than appended later. A node that stops leading drops its copies'
//! messages without a record (`Queue::unstage`: what was handed out is void) and ends the other
//! nodes' subscriptions; its own consumers stay and, like every other node's, are fed through a
//! subscription at the shard's new leader, which carries on from its replica (subscribe.rs). A
//! consumer sees a failover as redeliveries, as with RabbitMQ's quorum queues.
//!
//! A classic queue of a cluster is held the same way by a fixed node, its home (cluster/home.rs):
//! the other nodes' copies forward publishes there ([`Forwarder`], [`CopiesJournal`]) and
//! subscribe their consumers there, with the same code; only nothing is journaled to a shard (a
//! durable classic queue's messages are in its home's own log).

mod forward;
mod get;
mod holder;
mod hosting;
mod journal;
mod lanes;
mod order;
mod receive;
mod remote;
mod resend;
mod sent;
mod shard;
mod sink;
mod stream;
mod subscribe;
mod subscriber;
mod target;

pub(crate) use forward::Forwarder;
pub(crate) use get::{Got, How, RemoteGot};
pub use holder::QuorumHolder;
pub(crate) use hosting::{follow, host};
pub use journal::{CopiesJournal, ShardJournal};
pub(crate) use receive::QuorumServer;
pub(crate) use remote::Counts;
pub(crate) use shard::propose_writes;
pub use shard::{Epoch, ShardGroup};
pub use stream::StreamReads;
pub use subscribe::Subscriptions;
