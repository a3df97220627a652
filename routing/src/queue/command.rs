//! The language of a queue's state machine (state.rs): the commands that change a queue, the effects
//! a command asks its caller to perform, and the answer it gives.
//!
//! Commands carry everything they depend on — the message, its log id, the consumer, the entries
//! coming back — and the time comes with them (`apply(command, now)`), so applying the same commands
//! at the same times to the same state gives the same state and the same effects: what the live path
//! does under the queue's lock, what recovery does, and what a replicated queue's followers will do
//! with the commands their leader logged. Credit is the caller's: it picks a consumer with credit
//! (`QueueState::pick`, state.rs) and names it in a `Checkout`.

use std::time::{Duration, Instant};

use super::dead_letter::Reason;
use super::entry::Entry;
use crate::message::Message;
use std::sync::Arc;

/// A change to a queue. `C` names a consumer (the broker's `Arc<Consumer>`).
#[derive(Debug, Clone)]
pub enum Command<C> {
    /// A publish; `store_id` is its id in the command log when the queue stores it.
    Enqueue {
        message: Arc<Message>,
        store_id: Option<u64>,
    },
    /// A message recovered from the log at start-up (flagged redelivered, its TTL counted from its
    /// publish time).
    /// A message put back with its log id: recovered (or restored by a new host), or staged on a
    /// node that does not host its replicated queue; `redelivered` as its delivery should say.
    Restore {
        id: u64,
        message: Arc<Message>,
        redelivered: bool,
        /// How often it came back after a delivery before (a replicated queue's count).
        returns: u64,
    },
    /// Hands the head to `consumer`, whose credit the caller has taken (expired heads go first;
    /// with nothing left, the credit comes back as `Effect::Refund`).
    Checkout { consumer: C },
    /// Expires what is due at the head and watches the new head's deadline: the end of a dispatch.
    Expire,
    /// The end of a publish's dispatch: drops heads while the queue is over its length limits
    /// (`x-overflow: drop-head`), then does what `Expire` does.
    Trim,
    /// Takes the head for basic.get.
    Get,
    /// A delivery that never reached its client goes back unchanged.
    Return { entry: Entry },
    /// A delivered message comes back (nack/reject with requeue, a closed channel), redelivered.
    Requeue { entry: Entry },
    /// A delivered message is rejected without requeue: dead-lettered.
    Reject { entry: Entry },
    /// A delivered message is acknowledged (or was delivered without ack): it leaves the log.
    Settle { entry: Entry },
    /// basic.consume.
    Attach { consumer: C },
    /// basic.cancel, or the consumer's channel closed.
    Detach { consumer: C },
    /// A redeclare: counts as use for `x-expires`.
    Touch,
    /// The records of the messages stored under ids up to `id` are committed: with
    /// `Settings::delivers_committed`, they may be handed out now.
    Committed { id: u64 },
    /// queue.purge: drops every ready message.
    Purge,
    /// queue.delete: the queue stops taking messages and its consumers are cancelled.
    Delete,
    /// A timer the queue asked for (`Effect::WakeAt`) went off.
    Woken { wake: Wake, at: Instant },
    /// Its arguments changed (a policy was set, changed or cleared): from now on it acts on
    /// `args`; messages over a lower length limit go as `Trim` drops them, a new `x-expires`
    /// starts its checks, and messages already queued keep their deadlines (as in RabbitMQ).
    Reconfigure {
        args: super::arguments::QueueArguments,
    },
}

/// What a command asks its caller to do, in order.
#[derive(Debug, Clone)]
pub enum Effect<C> {
    /// Push `entry` to `consumer`.
    Deliver { consumer: C, entry: Entry },
    /// A `Checkout` found nothing to hand out: give `consumer` its credit back.
    Refund { consumer: C },
    /// Write the `Enqueue` record of the message just enqueued under `id` (before anything else of
    /// it reaches the log).
    Store { id: u64 },
    /// Write a `Remove` record for `id`: the message left the queue.
    Forget { id: u64 },
    /// The message stored under `id` came back after a delivery (its count of returns grew): a
    /// replicated queue records it, so `x-delivery-limit` counts across a failover.
    Returned { id: u64 },
    /// Republish `entry` to the dead-letter exchange (it leaves the log too).
    DeadLetter { entry: Entry, reason: Reason },
    /// Apply `Woken { wake, at }` at `at`.
    WakeAt { wake: Wake, at: Instant },
    /// `x-expires` found the queue unused: delete it.
    Expired,
    /// The queue was deleted under `consumer`: tell its client.
    Cancelled { consumer: C },
}

/// A command's answer to its caller.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done,
    Enqueued(Enqueued),
    /// The head for basic.get, with the count of messages left.
    Got(Option<(Entry, u32)>),
    Attached(Result<(), ConsumeRefused>),
    Detached(ConsumerRemoval),
    /// Messages purged, or ready when deleted.
    Count(u32),
}

/// What a publish did to this queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Yes,
    /// Refused by `x-overflow = reject-publish(-dlx)`: the publisher's confirm is a nack.
    Rejected,
    /// The queue was deleted meanwhile.
    Gone,
}

/// Why a consumer cannot join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumeRefused {
    ExclusiveUse,
}

/// What removing a consumer left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerRemoval {
    NotFound,
    Removed,
    /// The last consumer of an auto-delete queue went: the caller deletes the queue.
    RemovedLastOfAutoDelete,
}

/// Why a queue's timer was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The head message's TTL deadline.
    Ttl,
    /// The x-expires check: the queue goes once unused for this long.
    Expiry(Duration),
}
