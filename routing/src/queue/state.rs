//! A queue as a deterministic state machine: its ready messages, its consumers and its timers'
//! bookkeeping, changed only by [`QueueState::apply`], which takes a [`Command`] and the time, takes
//! no lock, reads no clock and performs nothing: what should happen outside the queue (a delivery, a
//! log record, a dead letter, a timer, a cancellation) comes back as [`Effect`] values for the caller.
//!
//! The live queue (mod.rs) applies commands under its lock and performs their effects; recovery
//! applies `Restore`; a replicated queue's followers will apply the commands its leader logged. One
//! exception to "no I/O", deliberately: a long ready list is kept partly in spill files (paging.rs),
//! which is how this node stores the list, not what it holds — the same commands give the same list
//! whether or not a node pages, and [`QueueState::snapshot`] reads it whole either way.
//!
//! Consumer credit (prefetch, channel.flow, the no-ack write budget) is shared with channels and
//! other queues, so it is not part of a queue's state: the caller asks [`QueueState::pick`] which
//! consumer is next, takes that consumer's credit, and names it in `Checkout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::arguments::{Overflow, QueueArguments};
use super::command::{Command, ConsumeRefused, ConsumerRemoval, Effect, Enqueued, Outcome, Wake};
use super::dead_letter::Reason;
use super::entry::Entry;
use super::paging::Paging;
use super::ready::Ready;
use crate::message::Message;
use crate::time::Now;

/// What a queue's state needs to know of a consumer: who it is, its priority, and whether it wants
/// the queue alone. The broker's `Arc<Consumer>` is one; a replica's record of a remote consumer
/// will be another.
pub trait ConsumerHandle: Clone + std::fmt::Debug {
    /// The same registration (identity, not equal fields).
    fn is(&self, other: &Self) -> bool;
    fn priority(&self) -> i64;
    fn exclusive(&self) -> bool;
}

/// The declaration facts a queue's behaviour depends on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub args: QueueArguments,
    pub auto_delete: bool,
    /// Persistent messages are stored in the log (a durable queue).
    pub stores: bool,
    /// A stored message is handed out only once its record is committed (`Command::Committed`): a
    /// replicated queue's host, as RabbitMQ's quorum queue delivers only what its log applied.
    pub delivers_committed: bool,
}

#[derive(Debug)]
pub struct QueueState<C> {
    settings: Settings,
    ready: Ready,
    /// Ordered by consumer priority (highest first), then registration.
    consumers: Vec<C>,
    next_consumer: usize,
    next_seq: u64,
    deleted: bool,
    /// Auto-delete queues are deleted when their last consumer goes, but only once they had one.
    had_consumer: bool,
    /// Last basic.get, redeclare, or consumer change: `x-expires` counts from here.
    last_used: Instant,
    /// The head deadline a timer is set for (None: no timer).
    ttl_armed: Option<Instant>,
    /// The store ids of enqueued messages whose records are not committed yet, in the order they
    /// were written (increasing), with `delivers_committed`: none of these is handed out, and
    /// since a log commits in order, neither is anything behind the first of them.
    uncommitted: std::collections::VecDeque<u64>,
}

/// A queue's whole state as values: what a replica is sent instead of the commands before it.
/// Which of its messages wait for their commit is not part of it: that is the host's own
/// knowledge of its log, and a replica's messages are all committed.
#[derive(Debug, Clone)]
pub struct Snapshot<C> {
    /// Ready messages in delivery order.
    pub ready: Vec<Entry>,
    pub consumers: Vec<C>,
    pub next_consumer: usize,
    pub next_seq: u64,
    pub deleted: bool,
    pub had_consumer: bool,
    pub last_used: Instant,
    pub ttl_armed: Option<Instant>,
}

impl<C: ConsumerHandle> QueueState<C> {
    /// An empty queue declared at `now`; with `paging`, its ready list pages past its budget. Its
    /// first effect, when it has `x-expires`, is the timer for the first check.
    pub fn new(
        settings: Settings,
        paging: Option<Arc<Paging>>,
        now: Now,
        fx: &mut Vec<Effect<C>>,
    ) -> Self {
        let state = Self::empty(settings, paging, now.instant);
        if let Some(ms) = state.settings.args.expires_ms {
            let after = Duration::from_millis(ms);
            fx.push(Effect::WakeAt {
                wake: Wake::Expiry(after),
                at: now.instant + after,
            });
        }
        state
    }

    fn empty(settings: Settings, paging: Option<Arc<Paging>>, now: Instant) -> Self {
        let args = &settings.args;
        let ready = Ready::new(paging.map(|p| {
            let budget = p.budget(
                args.lazy,
                args.max_in_memory_bytes,
                args.max_in_memory_length,
            );
            (p, budget)
        }));
        QueueState {
            settings,
            ready,
            consumers: Vec::new(),
            next_consumer: 0,
            next_seq: 0,
            deleted: false,
            had_consumer: false,
            last_used: now,
            ttl_armed: None,
            uncommitted: std::collections::VecDeque::new(),
        }
    }

    /// Changes the state as `command` says, at `now`; appends what the caller must do to `fx`.
    /// Inlined: the live queue applies one known command at a time on its hot paths, so the
    /// compiler can reduce each call to that command's arm.
    #[inline]
    pub fn apply(&mut self, command: Command<C>, now: Now, fx: &mut Vec<Effect<C>>) -> Outcome {
        let at = now.instant;
        match command {
            Command::Enqueue { message, store_id } => {
                Outcome::Enqueued(self.enqueue(message, store_id, at, fx))
            }
            Command::Restore {
                id,
                message,
                redelivered,
                returns,
            } => {
                self.restore(id, message, (redelivered, returns), now);
                Outcome::Done
            }
            Command::Checkout { consumer } => {
                self.checkout(consumer, at, fx);
                Outcome::Done
            }
            Command::Expire => {
                self.expire_head(at, fx);
                self.arm_ttl(fx);
                Outcome::Done
            }
            Command::Trim => {
                self.trim(fx);
                self.expire_head(at, fx);
                self.arm_ttl(fx);
                Outcome::Done
            }
            Command::Reconfigure { args } => {
                let expiry = args
                    .expires_ms
                    .filter(|ms| Some(*ms) != self.settings.args.expires_ms);
                self.ready.rebudget(
                    args.lazy,
                    args.max_in_memory_bytes,
                    args.max_in_memory_length,
                );
                self.settings.args = args;
                if let Some(ms) = expiry {
                    let after = Duration::from_millis(ms);
                    fx.push(Effect::WakeAt {
                        wake: Wake::Expiry(after),
                        at: at + after,
                    });
                }
                self.trim(fx);
                self.expire_head(at, fx);
                self.arm_ttl(fx);
                Outcome::Done
            }
            Command::Get => {
                self.last_used = at;
                self.expire_head(at, fx);
                let got = self.pop_committed().map(|e| (e, self.ready.len_u32()));
                self.arm_ttl(fx);
                Outcome::Got(got)
            }
            Command::Return { entry } => {
                if !self.deleted {
                    self.ready.insert(entry);
                }
                Outcome::Done
            }
            Command::Requeue { mut entry } => {
                if !self.deleted {
                    entry.redelivered = true;
                    entry.returns += 1;
                    let limit = self.settings.args.delivery_limit;
                    if limit.is_some_and(|limit| entry.returns > limit) {
                        fx.push(Effect::DeadLetter {
                            entry,
                            reason: Reason::DeliveryLimit,
                        });
                    } else {
                        if let Some(id) = entry.store_id {
                            fx.push(Effect::Returned { id });
                        }
                        self.ready.insert(entry);
                    }
                }
                Outcome::Done
            }
            Command::Reject { entry } => {
                fx.push(Effect::DeadLetter {
                    entry,
                    reason: Reason::Rejected,
                });
                Outcome::Done
            }
            Command::Settle { entry } => {
                Self::settled(&entry, fx);
                Outcome::Done
            }
            Command::Attach { consumer } => Outcome::Attached(self.attach(consumer, at)),
            Command::Detach { consumer } => Outcome::Detached(self.detach(&consumer, at)),
            Command::Touch => {
                self.last_used = at;
                Outcome::Done
            }
            Command::Committed { id } => {
                while self.uncommitted.front().is_some_and(|&first| first <= id) {
                    self.uncommitted.pop_front();
                }
                Outcome::Done
            }
            Command::Purge => {
                self.uncommitted.clear();
                let count = self.ready.len_u32();
                let (entries, paged_ids) = self.ready.clear(self.settings.stores);
                // In id order: which entries were paged is this node's business, not the effects'.
                let mut ids: Vec<u64> = entries.iter().filter_map(|e| e.store_id).collect();
                ids.extend(paged_ids);
                ids.sort_unstable();
                fx.extend(ids.into_iter().map(|id| Effect::Forget { id }));
                Outcome::Count(count)
            }
            Command::Delete => {
                self.deleted = true;
                self.uncommitted.clear();
                let count = self.ready.len_u32();
                self.ready.clear(false);
                let consumers = std::mem::take(&mut self.consumers);
                fx.extend(
                    consumers
                        .into_iter()
                        .map(|consumer| Effect::Cancelled { consumer }),
                );
                Outcome::Count(count)
            }
            Command::Woken { wake, at: set_for } => {
                self.woken(wake, set_for, at, fx);
                Outcome::Done
            }
        }
    }

    /// What settling a delivered `entry` asks for: its record leaves the log. It changes nothing
    /// else of a local queue, whose checked-out messages are their channel's to know, so the live
    /// queue performs it without the queue's lock (an ack is as hot as a publish); `apply(Settle)` is
    /// this too. A replicated queue will keep its checked-out set in its state and settle under it.
    pub fn settled(entry: &Entry, fx: &mut Vec<Effect<C>>) {
        if let Some(id) = entry.store_id {
            fx.push(Effect::Forget { id });
        }
    }

    fn enqueue(
        &mut self,
        message: Arc<Message>,
        store_id: Option<u64>,
        now: Instant,
        fx: &mut Vec<Effect<C>>,
    ) -> Enqueued {
        if self.deleted {
            return Enqueued::Gone;
        }
        let overflow = self.settings.args.overflow;
        if overflow != Overflow::DropHead && self.over_limit(1, message.body_size()) {
            if overflow == Overflow::RejectPublishDlx {
                let entry = self.entry(message, now);
                fx.push(Effect::DeadLetter {
                    entry,
                    reason: Reason::Maxlen,
                });
            }
            return Enqueued::Rejected;
        }
        let mut entry = self.entry(message, now);
        if let Some(id) = store_id {
            entry.store_id = Some(id);
            fx.push(Effect::Store { id });
            if self.settings.delivers_committed {
                self.uncommitted.push_back(id);
            }
        }
        self.ready.push(entry);
        Enqueued::Yes
    }

    fn entry(&mut self, message: Arc<Message>, now: Instant) -> Entry {
        let seq = self.next_seq;
        self.next_seq += 1;
        let args = &self.settings.args;
        let ttl = match (args.message_ttl_ms, message.expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let priority = args.max_priority.map_or(0, |max| message.priority.min(max));
        Entry {
            seq,
            message,
            redelivered: false,
            priority,
            expires_at: ttl.map(|ms| now + Duration::from_millis(ms)),
            returns: 0,
            store_id: None,
        }
    }

    /// In id order, flagged redelivered (it may have been delivered before the crash), its TTL
    /// deadline counted from its publish time.
    fn restore(
        &mut self,
        id: u64,
        message: Arc<Message>,
        (redelivered, returns): (bool, u64),
        now: Now,
    ) {
        let age = Duration::from_millis(now.wall_ms.saturating_sub(message.published_at_ms));
        let mut entry = self.entry(message, now.instant);
        entry.redelivered = redelivered;
        entry.returns = returns;
        entry.store_id = Some(id);
        entry.expires_at = entry
            .expires_at
            .map(|t| t.checked_sub(age).unwrap_or(now.instant));
        self.ready.push(entry);
    }

    /// Whether adding `count` messages of `bytes` would pass `x-max-length` / `x-max-length-bytes`.
    fn over_limit(&self, count: u64, bytes: u64) -> bool {
        let args = &self.settings.args;
        args.max_length
            .is_some_and(|max| self.ready.len() + count > max)
            || args
                .max_length_bytes
                .is_some_and(|max| self.ready.bytes() + bytes > max)
    }

    fn trim(&mut self, fx: &mut Vec<Effect<C>>) {
        if self.settings.args.overflow != Overflow::DropHead {
            return;
        }
        while !self.ready.is_empty() && self.over_limit(0, 0) {
            if let Some(entry) = self.ready.pop_front() {
                fx.push(Effect::DeadLetter {
                    entry,
                    reason: Reason::Maxlen,
                });
            }
        }
    }

    /// Removes expired messages from the head (RabbitMQ expires messages when they reach the head).
    fn expire_head(&mut self, now: Instant, fx: &mut Vec<Effect<C>>) {
        while self.ready.front().is_some_and(|e| e.expired(now)) {
            if let Some(entry) = self.ready.pop_front() {
                fx.push(Effect::DeadLetter {
                    entry,
                    reason: Reason::Expired,
                });
            }
        }
    }

    fn checkout(&mut self, consumer: C, now: Instant, fx: &mut Vec<Effect<C>>) {
        self.expire_head(now, fx);
        // Not a consumer of this queue (a command out of order) gets nothing, like an empty queue.
        let idx = self.consumers.iter().position(|c| c.is(&consumer));
        match idx.and_then(|idx| Some((idx, self.pop_committed()?))) {
            Some((idx, entry)) => {
                self.next_consumer = idx + 1;
                fx.push(Effect::Deliver { consumer, entry });
            }
            None => fx.push(Effect::Refund { consumer }),
        }
    }

    /// Registers a consumer unless exclusivity forbids it (an exclusive consumer wants the queue alone,
    /// and nobody joins a queue that has one).
    fn attach(&mut self, consumer: C, now: Instant) -> Result<(), ConsumeRefused> {
        if self.consumers.iter().any(|c| c.exclusive())
            || (consumer.exclusive() && !self.consumers.is_empty())
        {
            return Err(ConsumeRefused::ExclusiveUse);
        }
        let priority = consumer.priority();
        let at = self.consumers.partition_point(|c| c.priority() >= priority);
        self.consumers.insert(at, consumer);
        self.had_consumer = true;
        self.last_used = now;
        Ok(())
    }

    fn detach(&mut self, consumer: &C, now: Instant) -> ConsumerRemoval {
        let Some(idx) = self.consumers.iter().position(|c| c.is(consumer)) else {
            return ConsumerRemoval::NotFound;
        };
        self.consumers.remove(idx);
        self.last_used = now;
        let last = self.consumers.is_empty() && self.had_consumer && !self.deleted;
        if last && self.settings.auto_delete {
            ConsumerRemoval::RemovedLastOfAutoDelete
        } else {
            ConsumerRemoval::Removed
        }
    }

    /// Asks for a timer at the head's TTL deadline unless one is set for that time or earlier.
    fn arm_ttl(&mut self, fx: &mut Vec<Effect<C>>) {
        let Some(deadline) = self.ready.front().and_then(|e| e.expires_at) else {
            return;
        };
        if self.ttl_armed.is_some_and(|armed| armed <= deadline) {
            return;
        }
        self.ttl_armed = Some(deadline);
        fx.push(Effect::WakeAt {
            wake: Wake::Ttl,
            at: deadline,
        });
    }

    /// A timer set for `set_for` went off at `now`. For the TTL, the caller then dispatches (which
    /// expires what is due and asks for the next timer); `x-expires` deletes the queue if it found
    /// it unused, else asks for the next check.
    fn woken(&mut self, wake: Wake, set_for: Instant, now: Instant, fx: &mut Vec<Effect<C>>) {
        if self.deleted {
            return;
        }
        match wake {
            Wake::Ttl => {
                // A timer set for a later deadline than the one now armed is stale: what is due
                // expires all the same, but the armed one stays.
                if self.ttl_armed == Some(set_for) {
                    self.ttl_armed = None;
                }
            }
            Wake::Expiry(after) => {
                let unused = now.saturating_duration_since(self.last_used);
                if self.consumers.is_empty() && unused >= after {
                    fx.push(Effect::Expired);
                } else {
                    fx.push(Effect::WakeAt {
                        wake,
                        at: self.last_used + after,
                    });
                }
            }
        }
    }

    /// The consumer the next message goes to: the highest consumer priority for which `take_credit`
    /// succeeds, round-robin within a priority; with single active consumer, only the first
    /// registered one. Changes nothing here (the `Checkout` naming it does).
    pub fn pick(&self, mut take_credit: impl FnMut(&C) -> bool) -> Option<&C> {
        if self.settings.args.single_active_consumer {
            return self.consumers.first().filter(|c| take_credit(c));
        }
        let consumers = &self.consumers;
        let n = consumers.len();
        let mut start = 0;
        while start < n {
            let priority = consumers[start].priority();
            let end = start
                + consumers[start..]
                    .iter()
                    .take_while(|c| c.priority() == priority)
                    .count();
            let len = end - start;
            let first = if (start..end).contains(&self.next_consumer) {
                self.next_consumer - start
            } else {
                0
            };
            for i in 0..len {
                let c = &consumers[start + (first + i) % len];
                if take_credit(c) {
                    return Some(c);
                }
            }
            start = end;
        }
        None
    }

    /// Whether a dispatch could hand anything out (a committed head and consumers both).
    pub fn can_dispatch(&mut self) -> bool {
        !self.consumers.is_empty() && self.head_committed()
    }

    /// Whether there is a head and its record is committed (or needs no commit). Messages enqueued
    /// here carry increasing ids and are committed in that order; whatever else is ready (restored,
    /// returned, staged) was committed before any of them was written.
    fn head_committed(&mut self) -> bool {
        let first = self.uncommitted.front().copied();
        self.ready
            .front()
            .is_some_and(|head| first.is_none_or(|first| head.store_id.is_none_or(|id| id < first)))
    }

    /// Takes the head, unless it waits for its commit.
    fn pop_committed(&mut self) -> Option<Entry> {
        if !self.head_committed() {
            return None;
        }
        self.ready.pop_front()
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    pub fn ready_len(&self) -> u32 {
        self.ready.len_u32()
    }

    /// Ready messages held in spill files rather than memory.
    /// Bytes of the ready messages' bodies and properties.
    pub fn ready_bytes(&self) -> u64 {
        self.ready.bytes()
    }

    pub fn paged(&self) -> u64 {
        self.ready.paged()
    }

    /// The sequence the next enqueued or restored message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn consumer_count(&self) -> u32 {
        self.consumers.len() as u32
    }

    /// Its consumers, highest priority first.
    pub fn consumers(&self) -> &[C] {
        &self.consumers
    }

    /// An auto-delete queue whose consumers have all left (it is deleted when one notices).
    pub fn abandoned(&self) -> bool {
        self.settings.auto_delete && self.had_consumer && self.consumers.is_empty() && !self.deleted
    }

    /// The ready counters flow control reads without the queue's lock.
    pub fn flow(&self) -> &Arc<super::counters::ReadyCounters> {
        self.ready.flow()
    }

    /// The whole state as values (paged messages are read back for it and stay paged).
    pub fn snapshot(&mut self) -> Snapshot<C> {
        Snapshot {
            ready: self.ready.entries(),
            consumers: self.consumers.clone(),
            next_consumer: self.next_consumer,
            next_seq: self.next_seq,
            deleted: self.deleted,
            had_consumer: self.had_consumer,
            last_used: self.last_used,
            ttl_armed: self.ttl_armed,
        }
    }

    /// The state a snapshot describes; applying the commands after it gives what applying every
    /// command from the start gives.
    pub fn from_snapshot(
        settings: Settings,
        paging: Option<Arc<Paging>>,
        snapshot: Snapshot<C>,
    ) -> Self {
        let mut state = Self::empty(settings, paging, snapshot.last_used);
        for entry in snapshot.ready {
            state.ready.push(entry);
        }
        state.consumers = snapshot.consumers;
        state.next_consumer = snapshot.next_consumer;
        state.next_seq = snapshot.next_seq;
        state.deleted = snapshot.deleted;
        state.had_consumer = snapshot.had_consumer;
        state.ttl_armed = snapshot.ttl_armed;
        state
    }
}

#[cfg(test)]
mod tests;
