//! A queue: ready messages in delivery order, its consumers, and the dispatch loop that pushes to them,
//! with RabbitMQ's queue features: message TTL, queue expiry, length limits, priorities, dead-lettering,
//! delivery limits, consumer priorities and single active consumer.
//!
//! What a queue holds and how it changes is a deterministic state machine (state.rs, with the
//! commands and effects of command.rs); [`Queue`] is its live form on this node: it applies commands
//! under the queue's own lock and performs their effects — pushes to consumers and `Enqueue` records
//! while the lock is held (so a consumer sees messages in queue order and a message's record precedes
//! its removal), `Remove` records, dead letters and expiry after it is released (a dead-letter route
//! may lead back to the same queue). Each queue's lock is its own (DESIGN: "a queue never needs a
//! lock shared with other queues").

pub mod arguments;
pub mod command;
pub mod consumer;
pub mod counters;
pub mod dead_letter;
mod entry;
pub mod paging;
mod ready;
pub mod sink;
pub mod state;
pub mod stream;
pub mod stream_copy;
pub mod stream_read;

use std::sync::{Arc, Weak};
use std::time::Instant;

use amq_protocol::types::FieldTable;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::ids::{ConnectionId, QueueName};
use crate::message::Message;
use crate::time::Now;
use arguments::QueueArguments;
use consumer::{Consumer, Delivery};
use dead_letter::DeadLetters;
use paging::Paging;
use state::{QueueState, Settings};
use warren_storage::log::record::Record;

pub use command::{Command, ConsumeRefused, ConsumerRemoval, Effect, Enqueued, Outcome, Wake};
pub use entry::Entry;

/// Declaration properties, compared on redeclare (RabbitMQ's equivalence check).
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: QueueName,
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The user who declared it: a fixed `x-dead-letter-routing-key` routes on this user's behalf.
    /// None for queues stored before it was recorded (their dead letters go on the publisher's).
    pub declared_by: Option<Arc<str>>,
    /// A cluster's classic queue: the node it lives on (None on a single node, and for quorum
    /// queues, which live wherever their shard's leader is).
    pub home: Option<crate::meta::QueueHome>,
    /// A cluster's quorum queue: the shard group its declaration placed it in (None elsewhere, and
    /// for quorum queues recorded before placement: the hash of their name picks their shard).
    pub shard: Option<u32>,
}

/// The state and the effects of the command being applied (kept for their capacity).
#[derive(Debug)]
struct Locked {
    state: QueueState<Arc<Consumer>>,
    fx: Vec<Effect<Arc<Consumer>>>,
}

impl Locked {
    fn apply(&mut self, command: Command<Arc<Consumer>>, now: Now) -> Outcome {
        self.state.apply(command, now, &mut self.fx)
    }
}

/// Effects that wait until the queue's lock is released.
#[derive(Default)]
struct After {
    /// Log ids of messages that left the queue.
    forget: Vec<u64>,
    dead: DeadLetters,
    expired: bool,
    cancelled: Vec<Arc<Consumer>>,
}

/// The `Enqueue` record a publish writes if the queue keeps the message, and the confirm that waits.
struct Stored<'a> {
    payload: Bytes,
    confirm: Option<&'a dyn sink::WaitsForWrites>,
}

#[derive(Debug)]
pub struct Queue {
    pub spec: QueueSpec,
    pub args: QueueArguments,
    /// The vhost that holds it (republishes its dead letters, deletes it when it expires).
    pub owner: Weak<dyn sink::QueueOwner>,
    /// Set for durable queues: where persistent messages are stored, and under which name.
    durability: Option<(Arc<dyn sink::Journal>, String)>,
    locked: Mutex<Locked>,
    /// Wakes the queue at its head's TTL deadline and for its x-expires check.
    timers: Arc<dyn sink::QueueTimers>,
    /// The ready counters publishers' flow control reads without the lock (shared with the state).
    flow: Arc<counters::ReadyCounters>,
    /// Entries with a lower sequence were handed out before the ready messages were last dropped
    /// as another node's (`unstage`: a replicated queue whose host changed): settling,
    /// requeueing or rejecting them changes nothing, since the host holds those messages now.
    floor: std::sync::atomic::AtomicU64,
    /// A stream queue's log and readers (its consumers are also attached to the state, which
    /// counts them and holds nothing else).
    stream: Option<stream::StreamQueue>,
    /// A cluster node's copy of a stream another node holds: where its consumers read.
    remote_stream: Option<Arc<dyn stream_copy::RemoteStream>>,
    /// The policies that apply to it and the arguments it acts on with them (`args` are its own).
    applied: Mutex<Applied>,
    /// A stream's retention timer is running (one chain of wakes at a time).
    retention_timer: std::sync::atomic::AtomicBool,
    /// Deliveries and gets not settled yet (acked, rejected or put back): the unacknowledged
    /// messages `list_queues` and the metrics show.
    handed_out: std::sync::atomic::AtomicU64,
}

/// The longest a stream with an age limit goes without a retention check.
const STREAM_RETENTION_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// What policies made of a queue's arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub policy: Option<String>,
    pub operator_policy: Option<String>,
    pub args: Arc<QueueArguments>,
}

/// Where a queue keeps what it holds beyond memory.
#[derive(Debug, Default)]
pub struct Storage {
    /// Set for durable queues: where persistent messages are stored, and under which name.
    pub durability: Option<(Arc<dyn sink::Journal>, String)>,
    /// Where its backlog pages past its memory budget.
    pub paging: Option<Arc<Paging>>,
    /// A stream queue's log.
    pub stream: Option<stream::StreamQueue>,
    /// A copy of a stream another cluster node holds: where its consumers read it.
    pub remote_stream: Option<Arc<dyn stream_copy::RemoteStream>>,
}

impl Queue {
    pub fn new(
        owner: Weak<dyn sink::QueueOwner>,
        spec: QueueSpec,
        args: QueueArguments,
        storage: Storage,
        timers: Arc<dyn sink::QueueTimers>,
        now: Now,
    ) -> Arc<Self> {
        let Storage {
            durability,
            paging,
            stream,
            remote_stream,
        } = storage;
        let args_for_applied = args.clone();
        let settings = Settings {
            args: args.clone(),
            auto_delete: spec.auto_delete,
            stores: durability.is_some(),
            delivers_committed: durability
                .as_ref()
                .is_some_and(|(journal, _)| journal.delivers_committed()),
        };
        let mut fx = Vec::new();
        let state = QueueState::new(settings, paging, now, &mut fx);
        let queue = Arc::new(Queue {
            flow: state.flow().clone(),
            spec,
            args,
            owner,
            durability,
            locked: Mutex::new(Locked { state, fx }),
            timers,
            floor: std::sync::atomic::AtomicU64::new(0),
            stream,
            remote_stream,
            applied: Mutex::new(Applied {
                policy: None,
                operator_policy: None,
                args: Arc::new(args_for_applied),
            }),
            retention_timer: std::sync::atomic::AtomicBool::new(false),
            handed_out: std::sync::atomic::AtomicU64::new(0),
        });
        // Its first timer (x-expires), asked for when the state was made.
        queue.under_lock(now, |l, after| queue.perform(l, after, now, None));
        queue.arm_stream_retention(now);
        queue
    }

    /// The name its messages are journaled under (vhost and queue), when it journals them.
    pub fn record_name(&self) -> Option<&str> {
        self.durability.as_ref().map(|(_, name)| name.as_str())
    }

    pub fn name(&self) -> &QueueName {
        &self.spec.name
    }

    /// Whether its record is a cluster's metadata group's (a quorum queue, or a classic queue
    /// with a home node) rather than a single node's.
    /// The arguments it acts on: its own with its policies applied.
    pub fn live_args(&self) -> Arc<QueueArguments> {
        self.applied.lock().args.clone()
    }

    /// The policies that apply to it and what they made of its arguments.
    pub fn applied(&self) -> Applied {
        self.applied.lock().clone()
    }

    /// Makes `applied` (computed by its vhost from its policies) the arguments it acts on.
    pub fn apply_policies(self: &Arc<Self>, applied: Applied, now: Now) {
        {
            let mut current = self.applied.lock();
            if *current == applied {
                return;
            }
            *current = applied.clone();
        }
        if let Some(stream) = &self.stream {
            stream.set_limits(
                warren_storage::stream::Retention {
                    max_age_ms: applied.args.max_age_ms,
                    max_bytes: applied.args.max_length_bytes,
                },
                applied.args.stream_max_segment_bytes,
            );
            self.arm_stream_retention(now);
            return;
        }
        let args = (*applied.args).clone();
        self.apply_and_dispatch(Command::Reconfigure { args }, now);
    }

    /// A stream with `x-max-age` checks its retention at least every [`STREAM_RETENTION_CHECK`]
    /// (and at most as often as its age limit), so an idle stream's old segments go too.
    fn arm_stream_retention(self: &Arc<Self>, now: Now) {
        let Some(age) = self
            .live_args()
            .max_age_ms
            .filter(|_| self.stream.is_some())
        else {
            return;
        };
        if self
            .retention_timer
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let period = STREAM_RETENTION_CHECK.min(std::time::Duration::from_millis(age.max(100)));
        self.timers.wake_at(self, Wake::Ttl, now.instant + period);
    }

    /// A stream queue (`x-queue-type: stream`).
    pub fn stream(&self) -> Option<&stream::StreamQueue> {
        self.stream.as_ref()
    }

    pub fn is_replicated(&self) -> bool {
        self.args.quorum || self.spec.home.is_some()
    }

    /// Arrival and departure counters, read without the lock (per-publisher flow control).
    pub fn flow(&self) -> &Arc<counters::ReadyCounters> {
        &self.flow
    }

    /// Enqueues a message, pushes what consumers can take, and applies length limits. A persistent
    /// message in a durable queue is stored; `confirm` (if any) then waits for that write.
    pub fn publish(
        self: &Arc<Self>,
        message: Arc<Message>,
        confirm: Option<&dyn sink::WaitsForWrites>,
        now: Now,
    ) -> Enqueued {
        if let Some(stream) = &self.stream {
            // A deleted stream has no log: its append refuses.
            if !stream.append(&message, confirm, now.wall_ms as i64) {
                return Enqueued::Gone;
            }
            stream.dispatch(self);
            return Enqueued::Yes;
        }
        let stored = match &self.durability {
            // A quorum queue keeps every message (RabbitMQ's quorum queues treat all as persistent).
            Some(_) if message.persistent || self.args.quorum => Some(Stored {
                payload: message.stored_form(),
                confirm,
            }),
            _ => None,
        };
        self.under_lock(now, |l, after| {
            let store_id = match (&stored, &self.durability) {
                (Some(_), Some((journal, _))) => Some(journal.next_id()),
                _ => None,
            };
            let outcome = l.apply(Command::Enqueue { message, store_id }, now);
            // The record is written while the queue is locked, so it precedes any removal of it.
            self.perform(l, after, now, stored);
            let enqueued = match outcome {
                Outcome::Enqueued(e) => e,
                _ => Enqueued::Gone,
            };
            if enqueued == Enqueued::Yes {
                // Deliver first, then drop what is over the limits (RabbitMQ's order), then rest.
                self.hand_out(l, after, now);
                l.apply(Command::Trim, now);
                self.perform(l, after, now, None);
            }
            enqueued
        })
    }

    /// Runs `change` under the queue's lock (it applies commands and performs their effects), then
    /// performs what waited for the lock's release.
    fn under_lock<R>(
        self: &Arc<Self>,
        now: Now,
        change: impl FnOnce(&mut Locked, &mut After) -> R,
    ) -> R {
        let mut after = After::default();
        let result = change(&mut self.locked.lock(), &mut after);
        self.finish(after, now);
        result
    }

    /// The records of the messages stored under ids up to `id` are committed: a queue that
    /// `delivers_committed` hands them out now.
    fn committed(self: &Arc<Self>, id: u64, now: Now) {
        self.apply_and_dispatch(Command::Committed { id }, now);
    }

    /// Applies `command` and what follows any change of the ready list (a dispatch).
    fn apply_and_dispatch(self: &Arc<Self>, command: Command<Arc<Consumer>>, now: Now) -> Outcome {
        self.under_lock(now, |l, after| {
            let outcome = l.apply(command, now);
            self.perform(l, after, now, None);
            self.dispatch_locked(l, after, now);
            outcome
        })
    }

    /// Applies one command whose effects need no dispatch after it.
    fn apply_alone(self: &Arc<Self>, command: Command<Arc<Consumer>>, now: Now) -> Outcome {
        self.under_lock(now, |l, after| {
            let outcome = l.apply(command, now);
            self.perform(l, after, now, None);
            outcome
        })
    }

    /// Pushes ready messages to consumers with credit, then expires what is due and watches the
    /// head's deadline.
    fn dispatch_locked(self: &Arc<Self>, l: &mut Locked, after: &mut After, now: Now) {
        self.hand_out(l, after, now);
        self.rest(l, after, now);
    }

    /// While there are messages and a consumer with credit, checks one out to it and pushes it.
    fn hand_out(self: &Arc<Self>, l: &mut Locked, after: &mut After, now: Now) {
        while l.state.can_dispatch() {
            let Some(consumer) = l.state.pick(|c| c.try_take_credit()).cloned() else {
                return;
            };
            l.apply(Command::Checkout { consumer }, now);
            self.perform(l, after, now, None);
        }
    }

    /// The end of a dispatch: expires what is due at the head and sets the timer for the next one.
    fn rest(self: &Arc<Self>, l: &mut Locked, after: &mut After, now: Now) {
        l.apply(Command::Expire, now);
        self.perform(l, after, now, None);
    }

    /// Performs the effects of the commands just applied: what must happen under the lock now, the
    /// rest into `after`. Most commands on the hot paths have none: that costs one comparison.
    #[inline]
    fn perform(
        self: &Arc<Self>,
        l: &mut Locked,
        after: &mut After,
        now: Now,
        stored: Option<Stored<'_>>,
    ) {
        if !l.fx.is_empty() {
            self.perform_effects(l, after, now, stored);
        }
    }

    fn perform_effects(
        self: &Arc<Self>,
        l: &mut Locked,
        after: &mut After,
        now: Now,
        mut stored: Option<Stored<'_>>,
    ) {
        let Locked { state, fx } = l;
        for effect in fx.drain(..) {
            match effect {
                Effect::Deliver { consumer, entry } => {
                    let sink = consumer.sink.clone();
                    let delivery = Delivery {
                        consumer,
                        queue: self.clone(),
                        entry,
                    };
                    self.handed_over(1);
                    if let Err(back) = sink.deliver(delivery) {
                        self.taken_back(1);
                        // The connection is gone; its cleanup would remove the consumer too.
                        back.consumer.release_credit(1);
                        let mut none = Vec::new();
                        state.apply(Command::Return { entry: back.entry }, now, &mut none);
                        let consumer = back.consumer;
                        state.apply(Command::Detach { consumer }, now, &mut none);
                        debug_assert!(none.is_empty(), "Return and Detach have no effects");
                    }
                }
                Effect::Refund { consumer } => consumer.release_credit(1),
                Effect::Store { id } => {
                    if let (Some(s), Some((journal, name))) = (stored.take(), &self.durability) {
                        let record = Record::Enqueue {
                            queue: name.clone(),
                            id,
                            payload: s.payload,
                        };
                        let done = s.confirm.map(|c| c.hold());
                        if journal.delivers_committed() {
                            let queue = Arc::downgrade(self);
                            let applied = Box::new(move |now| {
                                if let Some(queue) = queue.upgrade() {
                                    queue.committed(id, now);
                                }
                            });
                            journal.write_applied(vec![record], done, applied);
                        } else {
                            journal.write(vec![record], done);
                        }
                    }
                }
                Effect::Forget { id } => after.forget.push(id),
                Effect::Returned { id } => {
                    if let Some((journal, name)) = &self.durability {
                        journal.returned(name, id);
                    }
                }
                Effect::DeadLetter { entry, reason } => {
                    after.forget.extend(entry.store_id);
                    after.dead.push((entry, reason));
                }
                Effect::WakeAt { wake, at } => self.timers.wake_at(self, wake, at),
                Effect::Expired => after.expired = true,
                Effect::Cancelled { consumer } => after.cancelled.push(consumer),
            }
        }
    }

    /// Performs what waited for the lock's release. Removals need no fsync: one lost in a crash
    /// brings the message back once more. Dead letters go to the owner to republish (dropped when
    /// the queue has no dead-letter exchange).
    fn finish(self: &Arc<Self>, after: After, now: Now) {
        self.forget_ids(after.forget);
        if !after.dead.is_empty() && self.live_args().dead_letter_exchange.is_some() {
            if let Some(owner) = self.owner.upgrade() {
                owner.dead_letter(self, after.dead, now);
            }
        }
        if after.expired {
            if let Some(owner) = self.owner.upgrade() {
                tracing::debug!(queue = %self.name(), "queue expired (x-expires)");
                owner.expire(self, now);
            }
        }
    }

    fn forget_ids(&self, ids: Vec<u64>) {
        let Some((journal, name)) = &self.durability else {
            return;
        };
        if ids.is_empty() {
            return;
        }
        let records = ids
            .into_iter()
            .map(|id| Record::Remove {
                queue: name.clone(),
                id,
            })
            .collect();
        journal.write(records, None);
    }

    /// Acknowledged deliveries (or ones delivered without ack) leave the log: the effects of
    /// [`QueueState::settled`], performed without the queue's lock or the time (a no-ack consumer
    /// settles every delivery).
    pub fn settle<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) {
        let mut fx = Vec::new();
        let mut n = 0;
        for entry in entries {
            n += 1;
            if self.durability.is_some() && self.current(entry) {
                QueueState::settled(entry, &mut fx);
            }
        }
        self.taken_back(n);
        if fx.is_empty() {
            return;
        }
        let ids = fx.into_iter().filter_map(|effect| match effect {
            Effect::<Arc<Consumer>>::Forget { id } => Some(id),
            _ => None,
        });
        self.forget_ids(ids.collect());
    }

    /// Puts back messages recovered from the log at start-up: in id order, flagged redelivered (they
    /// may have been delivered before the crash), with TTL deadlines counted from their publish time.
    pub fn restore(self: &Arc<Self>, messages: Vec<(u64, Arc<Message>)>, now: Now) {
        self.restore_counted(messages.into_iter().map(|(id, m)| (id, m, 0)), now);
    }

    /// [`Queue::restore`] of messages with their counts of returns (a replicated queue's new
    /// host: `x-delivery-limit` and `x-delivery-count` carry on from the replica's counts).
    pub fn restore_counted(
        self: &Arc<Self>,
        messages: impl IntoIterator<Item = (u64, Arc<Message>, u64)>,
        now: Now,
    ) {
        self.under_lock(now, |l, after| {
            for (id, message, returns) in messages {
                l.apply(
                    Command::Restore {
                        id,
                        message,
                        redelivered: true,
                        returns,
                    },
                    now,
                );
            }
            self.perform(l, after, now, None);
            self.dispatch_locked(l, after, now);
        });
    }

    /// Puts delivered-but-unsettled messages back in their original positions, flagged redelivered;
    /// a message over its delivery limit is dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = Entry>, now: Now) {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.taken_back(entries.len());
        if self.args.stream {
            // Nothing leaves a stream when it is delivered, so nothing comes back.
            return;
        }
        self.under_lock(now, |l, after| {
            for entry in entries.into_iter().filter(|e| self.current(e)) {
                l.apply(Command::Requeue { entry }, now);
            }
            self.perform(l, after, now, None);
            self.dispatch_locked(l, after, now);
        });
    }

    /// Puts back messages that were pushed to a consumer but never reached the client, unchanged.
    pub fn return_undelivered(
        self: &Arc<Self>,
        entries: impl IntoIterator<Item = Entry>,
        now: Now,
    ) {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.taken_back(entries.len());
        if self.args.stream {
            return;
        }
        self.under_lock(now, |l, after| {
            for entry in entries.into_iter().filter(|e| self.current(e)) {
                l.apply(Command::Return { entry }, now);
            }
            self.perform(l, after, now, None);
            self.dispatch_locked(l, after, now);
        });
    }

    /// Messages rejected or nacked without requeue: dead-lettered if the queue has a DLX.
    pub fn reject(self: &Arc<Self>, entries: Vec<Entry>, now: Now) {
        self.taken_back(entries.len());
        if self.args.stream {
            return;
        }
        self.under_lock(now, |l, after| {
            for entry in entries.into_iter().filter(|e| self.current(e)) {
                l.apply(Command::Reject { entry }, now);
            }
            self.perform(l, after, now, None);
        });
    }

    /// Takes the head message for basic.get, with the count of messages left.
    pub fn get(self: &Arc<Self>, now: Now) -> Option<(Entry, u32)> {
        if self.args.stream {
            return None;
        }
        match self.apply_alone(Command::Get, now) {
            Outcome::Got(got) => {
                if got.is_some() {
                    self.handed_over(1);
                }
                got
            }
            _ => None,
        }
    }

    /// `n` of its messages were handed to consumers (a stream's readers count theirs here).
    pub fn handed_over(&self, n: u64) {
        self.handed_out
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// `n` handed-out messages were settled or put back.
    fn taken_back(&self, n: usize) {
        let _ = self.handed_out.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |v| Some(v.saturating_sub(n as u64)),
        );
    }

    /// Pushes ready messages to consumers with credit (after an ack, qos change or flow resume).
    pub fn dispatch(self: &Arc<Self>, now: Now) {
        if let Some(stream) = &self.stream {
            return stream.dispatch(self);
        }
        if let Some(remote) = &self.remote_stream {
            return remote.wake(self);
        }
        self.under_lock(now, |l, after| self.dispatch_locked(l, after, now));
    }

    /// Registers a consumer unless exclusivity forbids it (an exclusive consumer wants the queue alone,
    /// and nobody joins a queue that has one), and pushes it what it can take. A stream's consumer
    /// reads what is appended from now on (see [`Queue::add_stream_consumer`]).
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        now: Now,
    ) -> Result<(), ConsumeRefused> {
        self.add_stream_consumer(consumer, stream::StartAt::Next, now)
    }

    /// As [`Queue::add_consumer`]; a stream's consumer reads from `start` on.
    pub fn add_stream_consumer(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        start: stream::StartAt,
        now: Now,
    ) -> Result<(), ConsumeRefused> {
        if self.stream.is_some() || self.remote_stream.is_some() {
            // A stream's state only counts its consumers; its log (or its home) feeds them.
            let attached = match self.apply_alone(
                Command::Attach {
                    consumer: consumer.clone(),
                },
                now,
            ) {
                Outcome::Attached(a) => a,
                _ => Ok(()),
            };
            attached?;
            if let Some(stream) = &self.stream {
                if let Err(e) = stream.add_reader(consumer, start) {
                    tracing::error!(queue = %self.name(), error = %e, "a stream could not be read from the offset asked: its consumer gets nothing");
                }
                stream.dispatch(self);
            } else if let Some(remote) = &self.remote_stream {
                remote.read(self, consumer, start);
            }
            return Ok(());
        }
        self.under_lock(now, |l, after| {
            let attached = match l.apply(Command::Attach { consumer }, now) {
                Outcome::Attached(a) => a,
                _ => Ok(()),
            };
            self.perform(l, after, now, None);
            if attached.is_ok() {
                self.dispatch_locked(l, after, now);
            }
            attached
        })
    }

    pub fn remove_consumer(
        self: &Arc<Self>,
        consumer: &Arc<Consumer>,
        now: Now,
    ) -> ConsumerRemoval {
        if let Some(stream) = &self.stream {
            stream.remove_reader(consumer);
        }
        if let Some(remote) = &self.remote_stream {
            remote.stop(consumer);
        }
        let consumer = consumer.clone();
        match self.apply_alone(Command::Detach { consumer }, now) {
            Outcome::Detached(removal) => removal,
            _ => ConsumerRemoval::NotFound,
        }
    }

    /// A redeclare counts as use for `x-expires`.
    pub fn touch(&self, now: Now) {
        self.locked.lock().apply(Command::Touch, now);
    }

    pub fn message_count(&self) -> u32 {
        if let Some(stream) = &self.stream {
            return u32::try_from(stream.len()).unwrap_or(u32::MAX);
        }
        self.locked.lock().state.ready_len()
    }

    /// Ready messages held in spill files rather than memory.
    pub fn paged_count(&self) -> u64 {
        self.locked.lock().state.paged()
    }

    /// Bytes of what it holds ready (a stream: its files).
    pub fn ready_bytes(&self) -> u64 {
        if let Some(stream) = &self.stream {
            return stream.bytes();
        }
        self.locked.lock().state.ready_bytes()
    }

    /// Messages handed to consumers and gets and not settled yet.
    pub fn unacknowledged(&self) -> u64 {
        self.handed_out.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Its consumers now (a copy of the list).
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.locked.lock().state.consumers().to_vec()
    }

    pub fn consumer_count(&self) -> u32 {
        self.locked.lock().state.consumer_count()
    }

    /// How many messages its consumers may hold unacknowledged at once: each one's prefetch (its
    /// channel's global prefetch when that is lower), and `unlimited` for one with neither or in
    /// no-ack mode.
    pub fn consumer_capacity(&self, unlimited: u32) -> u64 {
        let locked = self.locked.lock();
        locked
            .state
            .consumers()
            .iter()
            .map(|c| u64::from(c.capacity(unlimited)))
            .sum()
    }

    /// An auto-delete queue whose consumers have all left.
    pub fn abandoned(&self) -> bool {
        self.locked.lock().state.abandoned()
    }

    /// Drops every ready message (queue.purge); unacked deliveries are not touched, as in RabbitMQ.
    pub fn purge(self: &Arc<Self>, now: Now) -> u32 {
        if self.args.stream {
            return 0;
        }
        match self.apply_alone(Command::Purge, now) {
            Outcome::Count(n) => n,
            _ => 0,
        }
    }

    /// Whether `entry` was handed out since the queue was last unstaged.
    fn current(&self, entry: &Entry) -> bool {
        entry.seq >= self.floor.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Drops the ready messages without a record of it (they are the shard's, not this copy's),
    /// and voids what was handed out before (see `floor`).
    fn drop_ready_unjournaled(&self, l: &mut Locked, now: Now) {
        l.apply(Command::Purge, now);
        l.fx.clear();
        self.floor
            .store(l.state.next_seq(), std::sync::atomic::Ordering::Release);
    }

    /// Puts messages of a replicated queue that another node hosts into this node's copy, in
    /// order, for this node's consumers (the broker's cluster/quorum/subscribe.rs); nothing is
    /// journaled: each one's id, redelivered flag and return count are the host's. Only if
    /// `current` (asked under the queue's lock, so no [`Queue::unstage`] comes between) says they
    /// still belong here; returns whether they were staged.
    pub fn stage(
        self: &Arc<Self>,
        staged: impl IntoIterator<Item = (u64, Arc<Message>, (bool, u64))>,
        current: impl FnOnce() -> bool,
        now: Now,
    ) -> bool {
        self.under_lock(now, |l, after| {
            if !current() {
                return false;
            }
            for (id, message, (redelivered, returns)) in staged {
                l.apply(
                    Command::Restore {
                        id,
                        message,
                        redelivered,
                        returns,
                    },
                    now,
                );
            }
            self.perform(l, after, now, None);
            self.dispatch_locked(l, after, now);
            true
        })
    }

    /// Drops the messages staged on this node (their host takes them back) and voids what was
    /// handed out of them, keeping the consumers.
    pub fn unstage(self: &Arc<Self>, now: Now) {
        self.under_lock(now, |l, _| self.drop_ready_unjournaled(l, now));
    }

    /// Marks the queue deleted, returning its ready count and the consumers to notify.
    pub(crate) fn mark_deleted(self: &Arc<Self>, now: Now) -> (u32, Vec<Arc<Consumer>>) {
        if let Some(stream) = &self.stream {
            let count = self.message_count();
            self.apply_alone(Command::Delete, now);
            return (count, stream.delete());
        }
        let (count, cancelled) = self.under_lock(now, |l, after| {
            let count = match l.apply(Command::Delete, now) {
                Outcome::Count(n) => n,
                _ => 0,
            };
            self.perform(l, after, now, None);
            (count, std::mem::take(&mut after.cancelled))
        });
        if let Some(remote) = &self.remote_stream {
            for consumer in &cancelled {
                remote.stop(consumer);
            }
        }
        (count, cancelled)
    }

    pub fn is_deleted(&self) -> bool {
        self.locked.lock().state.is_deleted()
    }

    /// A timer set by this queue for `at` went off (see [`QueueTimers`](sink::QueueTimers)), and it
    /// is `now`: expires what is due and sets the next TTL timer, or deletes the queue if x-expires
    /// finds it unused (else sets the next check).
    pub fn woken(self: &Arc<Self>, wake: Wake, at: Instant, now: Now) {
        if let Some(stream) = &self.stream {
            // A stream's only timer: retention by age, also while nothing is published.
            stream.retain(now.wall_ms as i64);
            self.retention_timer
                .store(false, std::sync::atomic::Ordering::Release);
            self.arm_stream_retention(now);
            return;
        }
        match wake {
            Wake::Ttl => {
                self.apply_and_dispatch(Command::Woken { wake, at }, now);
            }
            Wake::Expiry(_) => {
                self.apply_alone(Command::Woken { wake, at }, now);
            }
        }
    }
}
