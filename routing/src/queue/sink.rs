//! What a queue asks of those around it, as traits it owns: a journal for its durable message
//! records (the local log), the completion of a durable write a publisher's confirm waits for (a
//! channel's pending confirm), dead letters and expiry for the vhost that holds it, and timers.
//! Deliveries go through the consumer's `DeliverySink` (consumer.rs). So queues know nothing of
//! connections, channels, vhosts or the runtime.

use std::sync::Arc;

use warren_storage::log::record::Record;
use warren_storage::store::Completion;

use super::{Queue, Wake};

/// A publish whose confirm (or tx.commit) waits for the durable writes of the queues it entered:
/// each queue that stores the message takes one completion, called once its record is on disk.
pub trait WaitsForWrites: Send + Sync {
    fn hold(&self) -> Completion;
}

/// What a queue asks of whoever holds it (its vhost), after its lock is released: republish dead
/// letters through its dead-letter exchange, and delete it once `x-expires` found it unused. The
/// vhost implements it, so queues never import the vhost.
pub trait QueueOwner: Send + Sync {
    fn dead_letter(
        &self,
        queue: &Arc<Queue>,
        letters: super::dead_letter::DeadLetters,
        now: crate::time::Now,
    );
    fn expire(&self, queue: &Arc<Queue>, now: crate::time::Now);
}

/// Where a durable queue writes its message records (`Enqueue`, `Remove`, `DropQueue`): the local
/// command log today (persist.rs `Durability`), a Raft log for a replicated queue. The queue writes
/// while it holds its lock, so a message's `Enqueue` always precedes its `Remove`.
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// A fresh message id (unique in the log, increasing).
    fn next_id(&self) -> u64;
    /// Appends `records`; `done` is called once they are durable (or failed).
    fn write(&self, records: Vec<Record>, done: Option<Completion>);

    /// Whether a queue may hand out a message written here only once its record is committed and
    /// applied (a quorum queue's shard: RabbitMQ's quorum queue delivers only what its log
    /// applied, so no consumer sees a message a failed leader never committed). Such a queue
    /// writes its messages with [`Journal::write_applied`].
    fn delivers_committed(&self) -> bool {
        false
    }

    /// [`Journal::write`], then `applied` with the time once the records are applied here; never
    /// when the write fails (nor for a copy resent elsewhere: the queue here does not hold it),
    /// and never before this returns (the queue calls it under its lock). Only a journal that
    /// `delivers_committed` is asked; for others it is `write`.
    fn write_applied(&self, records: Vec<Record>, done: Option<Completion>, _applied: Applied) {
        self.write(records, done);
    }

    /// The message of `queue` stored under `id` came back after a delivery. A single node's log
    /// keeps no count (nor does RabbitMQ's classic queue); a quorum queue's shard does.
    fn returned(&self, _queue: &str, _id: u64) {}

    /// The shard group a new quorum queue whose record name is `queue` goes to, as its
    /// `x-queue-leader-locator` (`locator`) asks: None where queues have no shards.
    fn place(&self, _queue: &str, _locator: Option<&str>) -> Option<u32> {
        None
    }

    /// Quorum queue `queue` (its record name) exists here, placed in shard group `shard`.
    fn placed(&self, _queue: &str, _shard: u32) {}

    /// Quorum queue `queue` (its record name) is gone from here.
    fn unplaced(&self, _queue: &str) {}

    /// A message the vhost itself publishes (a dead letter) into quorum queue `queue` of `vhost`,
    /// whose live copy another node hosts: sent there, and true; false when the copy here is the
    /// live one.
    fn forward(
        &self,
        _vhost: &str,
        _queue: &Queue,
        _message: &Arc<crate::message::Message>,
    ) -> bool {
        false
    }
}

/// What a queue is told once its records are applied (`Journal::write_applied`), with the time.
pub type Applied = Box<dyn FnOnce(crate::time::Now) + Send>;

/// How a cluster node's vhost asks the metadata group to delete a queue it found unused (expired
/// by `x-expires`, its exclusive owner closed, its last consumer gone): on every node, not only
/// here. The broker implements it, and does nothing on a node that does not hold the live queue
/// (only that node knows whether the queue is in use: other nodes' consumers are subscribed there).
pub trait MetaProposer: Send + Sync + std::fmt::Debug {
    fn propose_deletion(&self, vhost: &str, queue: &Queue);
}

/// Wakes a queue when time has passed: at its head message's TTL deadline, and for its x-expires
/// check. The broker implements it on its runtime (timers.rs), so a queue starts no task and reads
/// no clock to sleep.
pub trait QueueTimers: Send + Sync + std::fmt::Debug {
    /// Calls `queue.woken(wake, at)` at `at` (soon, if that has passed) unless the queue is gone
    /// by then. A queue asks again only for an earlier TTL deadline than the one it waits for.
    fn wake_at(&self, queue: &Arc<Queue>, wake: Wake, at: std::time::Instant);
}
