//! A queue: ready messages in delivery order, its consumers, and the dispatch loop that pushes to them,
//! with RabbitMQ's queue features: message TTL, queue expiry, length limits, priorities, dead-lettering,
//! delivery limits, consumer priorities and single active consumer.
//!
//! Each queue has its own lock and shares none with other queues (DESIGN: "a queue never needs a lock
//! shared with other queues"). Ready messages are kept sorted by (priority descending, enqueue sequence),
//! so a requeued message goes back to its original place (RabbitMQ requeues in original order).
//! Messages leaving for the dead-letter exchange are collected under the lock and republished after it
//! is released, because a dead-letter route may lead back to the same queue.

pub mod arguments;
pub mod consumer;
pub mod counters;
pub mod dead_letter;
pub mod paging;
pub mod ready;
pub mod sink;

use std::cmp::Reverse;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;

use crate::ids::ConnectionId;
use crate::message::Message;
use crate::time::Now;
use arguments::{Overflow, QueueArguments};
use consumer::Consumer;
use consumer::Delivery;
use dead_letter::{DeadLetters, Reason};
use paging::Paging;
use ready::Ready;
use warren_storage::log::record::Record;

/// A message in a queue, with its position, priority, deadline and delivery history.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Effective priority (0 unless the queue has `x-max-priority`).
    pub priority: u8,
    /// When the message expires (queue TTL or per-message expiration, whichever is sooner).
    pub expires_at: Option<Instant>,
    /// How many times the message came back to the queue after a delivery (for `x-delivery-limit`).
    pub returns: u64,
    /// The message's id in the command log, when this queue stored it.
    pub store_id: Option<u64>,
}

impl Entry {
    fn order(&self) -> (Reverse<u8>, u64) {
        (Reverse(self.priority), self.seq)
    }

    /// Past its deadline at `now`. Strict, so a TTL of 0 still reaches a consumer ready at the very
    /// instant of the publish (RabbitMQ's semantics for `expiration: 0`), and nothing later.
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t < now)
    }
}

/// Declaration properties, compared on redeclare (RabbitMQ's equivalence check).
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The user who declared it: a fixed `x-dead-letter-routing-key` routes on this user's behalf.
    /// None for queues stored before it was recorded (their dead letters go on the publisher's).
    pub declared_by: Option<Arc<str>>,
}

#[derive(Debug)]
struct State {
    ready: Ready,
    /// Ordered by consumer priority (highest first), then registration.
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    next_seq: u64,
    deleted: bool,
    /// Auto-delete queues are deleted when their last consumer goes, but only once they had one.
    had_consumer: bool,
    /// Last basic.get, redeclare, or consumer change: `x-expires` counts from here.
    last_used: Instant,
    /// Whether the TTL task is running for this queue.
    /// The head deadline a timer is set for (None: no timer).
    ttl_armed: Option<Instant>,
}

#[derive(Debug)]
pub struct Queue {
    pub spec: QueueSpec,
    pub args: QueueArguments,
    /// The vhost that holds it (republishes its dead letters, deletes it when it expires).
    pub owner: Weak<dyn sink::QueueOwner>,
    /// Set for durable queues: where persistent messages are stored, and under which name.
    durability: Option<(Arc<dyn sink::Journal>, String)>,
    state: Mutex<State>,
    /// Wakes the TTL task when a message with an earlier deadline reaches the head.
    /// Wakes the queue at its head's TTL deadline and for its x-expires check.
    timers: Arc<dyn sink::QueueTimers>,
    /// The ready counters publishers' flow control reads without the lock (shared with `ready`).
    flow: Arc<counters::ReadyCounters>,
}

/// What removing a consumer left behind.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsumerRemoval {
    NotFound,
    Removed,
    /// The last consumer of an auto-delete queue went: the caller deletes the queue.
    RemovedLastOfAutoDelete,
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
#[derive(Debug, PartialEq, Eq)]
pub enum ConsumeRefused {
    ExclusiveUse,
}

impl Queue {
    pub fn new(
        owner: Weak<dyn sink::QueueOwner>,
        spec: QueueSpec,
        args: QueueArguments,
        durability: Option<(Arc<dyn sink::Journal>, String)>,
        paging: Option<Arc<Paging>>,
        timers: Arc<dyn sink::QueueTimers>,
        now: Now,
    ) -> Arc<Self> {
        let ready = Ready::new(paging.map(|p| {
            let budget = p.budget(
                args.lazy,
                args.max_in_memory_bytes,
                args.max_in_memory_length,
            );
            (p, budget)
        }));
        let flow = ready.flow().clone();
        let queue = Arc::new(Queue {
            flow,
            spec,
            args,
            owner,
            durability,
            state: Mutex::new(State {
                ready,
                consumers: Vec::new(),
                next_consumer: 0,
                next_seq: 0,
                deleted: false,
                had_consumer: false,
                last_used: now.instant,
                ttl_armed: None,
            }),
            timers,
        });
        if let Some(ms) = queue.args.expires_ms {
            let after = Duration::from_millis(ms);
            queue
                .timers
                .wake_at(&queue, Wake::Expiry(after), now.instant + after);
        }
        queue
    }

    pub fn name(&self) -> &str {
        &self.spec.name
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
        let stored = match &self.durability {
            Some((durability, _)) if message.persistent => {
                Some((durability, message.stored_form()))
            }
            _ => None,
        };
        let mut dead = DeadLetters::new();
        let outcome = {
            let mut st = self.state.lock();
            if st.deleted {
                return Enqueued::Gone;
            }
            let at = now.instant;
            let size = message.body_size();
            if self.args.overflow != Overflow::DropHead && self.over_limit(&st, 1, size) {
                if self.args.overflow == Overflow::RejectPublishDlx {
                    let entry = self.entry(&mut st, message, at);
                    dead.push((entry, Reason::Maxlen));
                }
                Enqueued::Rejected
            } else {
                let mut entry = self.entry(&mut st, message, at);
                if let (Some((durability, payload)), Some((_, name))) = (stored, &self.durability) {
                    // Written while the queue is locked, so the record precedes any removal of it.
                    let id = durability.next_id();
                    entry.store_id = Some(id);
                    let record = Record::Enqueue {
                        queue: name.clone(),
                        id,
                        payload,
                    };
                    durability.write(vec![record], confirm.map(|c| c.hold()));
                }
                let has_deadline = entry.expires_at.is_some();
                let head = st.ready.push(entry);
                self.dispatch_locked(&mut st, &mut dead, at);
                self.drop_head_over_limit(&mut st, &mut dead);
                if has_deadline && head {
                    self.arm_ttl(&mut st);
                }
                Enqueued::Yes
            }
        };
        self.dead_letter(dead, now);
        outcome
    }

    fn entry(&self, st: &mut State, message: Arc<Message>, now: Instant) -> Entry {
        let seq = st.next_seq;
        st.next_seq += 1;
        let ttl = match (self.args.message_ttl_ms, message.expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let priority = self
            .args
            .max_priority
            .map_or(0, |max| message.priority.min(max));
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

    /// Stored messages leave the log once they leave the queue (acked, expired, dropped, consumed
    /// without ack). Removals need no fsync: one lost in a crash brings the message back once more.
    /// Messages that left for the dead-letter exchange: forgotten by the log, then handed to the
    /// owner to republish (dropped when the queue has no dead-letter exchange).
    fn dead_letter(self: &Arc<Self>, letters: DeadLetters, now: Now) {
        if letters.is_empty() {
            return;
        }
        self.forget(letters.iter().map(|(e, _)| e));
        if self.args.dead_letter_exchange.is_none() {
            return;
        }
        if let Some(owner) = self.owner.upgrade() {
            owner.dead_letter(self, letters, now);
        }
    }

    pub fn forget<'a>(&self, entries: impl IntoIterator<Item = &'a Entry>) {
        self.forget_ids(entries.into_iter().filter_map(|e| e.store_id));
    }

    fn forget_ids(&self, ids: impl IntoIterator<Item = u64>) {
        let Some((durability, name)) = &self.durability else {
            return;
        };
        let records: Vec<Record> = ids
            .into_iter()
            .map(|id| Record::Remove {
                queue: name.clone(),
                id,
            })
            .collect();
        if !records.is_empty() {
            durability.write(records, None);
        }
    }

    /// Puts back messages recovered from the log at start-up: in id order, flagged redelivered (they
    /// may have been delivered before the crash), with TTL deadlines counted from their publish time.
    pub fn restore(self: &Arc<Self>, messages: Vec<(u64, Arc<Message>)>, now: Now) {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            let at = now.instant;
            for (id, message) in messages {
                let age =
                    Duration::from_millis(now.wall_ms.saturating_sub(message.published_at_ms));
                let mut entry = self.entry(&mut st, message, at);
                entry.redelivered = true;
                entry.store_id = Some(id);
                entry.expires_at = entry.expires_at.map(|t| t.checked_sub(age).unwrap_or(at));
                st.ready.push(entry);
            }
            self.dispatch_locked(&mut st, &mut dead, at);
        }
        self.dead_letter(dead, now);
    }

    /// Whether adding `count` messages of `bytes` would pass `x-max-length` / `x-max-length-bytes`.
    fn over_limit(&self, st: &State, count: u64, bytes: u64) -> bool {
        self.args
            .max_length
            .is_some_and(|max| st.ready.len() + count > max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| st.ready.bytes() + bytes > max)
    }

    fn drop_head_over_limit(&self, st: &mut State, dead: &mut DeadLetters) {
        if self.args.overflow != Overflow::DropHead {
            return;
        }
        while !st.ready.is_empty() && self.over_limit(st, 0, 0) {
            if let Some(e) = self.pop_front(st) {
                dead.push((e, Reason::Maxlen));
            }
        }
    }

    fn pop_front(&self, st: &mut State) -> Option<Entry> {
        st.ready.pop_front()
    }

    /// Removes expired messages from the head (RabbitMQ expires messages when they reach the head).
    fn expire_head(&self, st: &mut State, dead: &mut DeadLetters, now: Instant) {
        while st.ready.front().is_some_and(|e| e.expired(now)) {
            if let Some(e) = self.pop_front(st) {
                dead.push((e, Reason::Expired));
            }
        }
    }

    /// Puts delivered-but-unsettled messages back in their original positions, flagged redelivered;
    /// a message over its delivery limit is dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = Entry>, now: Now) {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return;
            }
            for mut entry in entries {
                entry.redelivered = true;
                entry.returns += 1;
                if self
                    .args
                    .delivery_limit
                    .is_some_and(|limit| entry.returns > limit)
                {
                    dead.push((entry, Reason::DeliveryLimit));
                    continue;
                }
                self.insert(&mut st, entry);
            }
            self.dispatch_locked(&mut st, &mut dead, now.instant);
        }
        self.dead_letter(dead, now);
    }

    /// Puts back a message that was pushed to a consumer but never reached the client, unchanged.
    pub fn return_undelivered(self: &Arc<Self>, entry: Entry, now: Now) {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return;
            }
            self.insert(&mut st, entry);
            self.dispatch_locked(&mut st, &mut dead, now.instant);
        }
        self.dead_letter(dead, now);
    }

    fn insert(self: &Arc<Self>, st: &mut State, entry: Entry) {
        let has_deadline = entry.expires_at.is_some();
        if st.ready.insert(entry) && has_deadline {
            self.arm_ttl(st);
        }
    }

    /// Messages rejected or nacked without requeue: dead-lettered if the queue has a DLX.
    pub fn reject(self: &Arc<Self>, entries: Vec<Entry>, now: Now) {
        self.dead_letter(
            entries.into_iter().map(|e| (e, Reason::Rejected)).collect(),
            now,
        );
    }

    /// Takes the head message for basic.get, with the count of messages left.
    pub fn get(self: &Arc<Self>, now: Now) -> Option<(Entry, u32)> {
        let mut dead = DeadLetters::new();
        let got = {
            let mut st = self.state.lock();
            st.last_used = now.instant;
            self.expire_head(&mut st, &mut dead, now.instant);
            let got = self.pop_front(&mut st).map(|e| (e, st.ready.len_u32()));
            self.arm_ttl(&mut st);
            got
        };
        self.dead_letter(dead, now);
        got
    }

    /// Pushes ready messages to consumers with credit (after an ack, qos change or flow resume).
    pub fn dispatch(self: &Arc<Self>, now: Now) {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            self.dispatch_locked(&mut st, &mut dead, now.instant);
        }
        self.dead_letter(dead, now);
    }

    /// Picks the consumer for the next message: the highest consumer priority with credit, round-robin
    /// within a priority; with single active consumer, only the first registered one.
    fn pick_consumer(&self, st: &mut State) -> Option<usize> {
        if self.args.single_active_consumer {
            return st
                .consumers
                .first()
                .filter(|c| c.try_take_credit())
                .map(|_| 0);
        }
        let n = st.consumers.len();
        let mut start = 0;
        while start < n {
            let priority = st.consumers[start].priority;
            let end = start
                + st.consumers[start..]
                    .iter()
                    .take_while(|c| c.priority == priority)
                    .count();
            let len = end - start;
            let first = if (start..end).contains(&st.next_consumer) {
                st.next_consumer - start
            } else {
                0
            };
            for i in 0..len {
                let idx = start + (first + i) % len;
                if st.consumers[idx].try_take_credit() {
                    return Some(idx);
                }
            }
            start = end;
        }
        None
    }

    /// Expires what is due at `now`, then pushes ready messages to consumers with credit.
    fn dispatch_locked(self: &Arc<Self>, st: &mut State, dead: &mut DeadLetters, now: Instant) {
        self.expire_head(st, dead, now);
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let Some(idx) = self.pick_consumer(st) else {
                return;
            };
            let Some(entry) = self.pop_front(st) else {
                st.consumers[idx].release_credit(1);
                return;
            };
            let consumer = st.consumers[idx].clone();
            st.next_consumer = idx + 1;
            let delivery = Delivery {
                consumer: consumer.clone(),
                queue: self.clone(),
                entry,
            };
            if let Err(back) = consumer.sink.deliver(delivery) {
                // The connection is gone; its cleanup would remove the consumer too.
                consumer.release_credit(1);
                st.ready.insert(back.entry);
                st.consumers.remove(idx);
            }
            self.expire_head(st, dead, now);
        }
        self.arm_ttl(st);
    }

    /// Registers a consumer unless exclusivity forbids it (an exclusive consumer wants the queue alone,
    /// and nobody joins a queue that has one).
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        now: Now,
    ) -> Result<(), ConsumeRefused> {
        let mut dead = DeadLetters::new();
        {
            let mut st = self.state.lock();
            if st.consumers.iter().any(|c| c.exclusive)
                || (consumer.exclusive && !st.consumers.is_empty())
            {
                return Err(ConsumeRefused::ExclusiveUse);
            }
            let at = st
                .consumers
                .partition_point(|c| c.priority >= consumer.priority);
            st.consumers.insert(at, consumer);
            st.had_consumer = true;
            st.last_used = now.instant;
            self.dispatch_locked(&mut st, &mut dead, now.instant);
        }
        self.dead_letter(dead, now);
        Ok(())
    }

    pub fn remove_consumer(&self, consumer: &Arc<Consumer>, now: Now) -> ConsumerRemoval {
        let mut st = self.state.lock();
        let Some(idx) = st.consumers.iter().position(|c| Arc::ptr_eq(c, consumer)) else {
            return ConsumerRemoval::NotFound;
        };
        st.consumers.remove(idx);
        st.last_used = now.instant;
        if st.consumers.is_empty() && self.spec.auto_delete && st.had_consumer && !st.deleted {
            ConsumerRemoval::RemovedLastOfAutoDelete
        } else {
            ConsumerRemoval::Removed
        }
    }

    /// A redeclare counts as use for `x-expires`.
    pub fn touch(&self, now: Now) {
        self.state.lock().last_used = now.instant;
    }

    pub fn message_count(&self) -> u32 {
        self.state.lock().ready.len_u32()
    }

    /// Ready messages held in spill files rather than memory.
    pub fn paged_count(&self) -> u64 {
        self.state.lock().ready.paged()
    }

    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    /// Drops every ready message (queue.purge); unacked deliveries are not touched, as in RabbitMQ.
    pub fn purge(&self) -> u32 {
        let (purged, paged_ids, count) = {
            let mut st = self.state.lock();
            let count = st.ready.len_u32();
            let (entries, ids) = st.ready.clear(self.durability.is_some());
            (entries, ids, count)
        };
        self.forget(&purged);
        self.forget_ids(paged_ids);
        count
    }

    /// Marks the queue deleted, returning its ready count and the consumers to notify.
    pub fn mark_deleted(&self) -> (u32, Vec<Arc<Consumer>>) {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.ready.len_u32();
        st.ready.clear(false);
        (n, std::mem::take(&mut st.consumers))
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }
    /// Sets a timer for the head's TTL deadline unless one is set for that time or earlier.
    fn arm_ttl(self: &Arc<Self>, st: &mut State) {
        let Some(deadline) = st.ready.front().and_then(|e| e.expires_at) else {
            return;
        };
        if st.ttl_armed.is_some_and(|armed| armed <= deadline) {
            return;
        }
        st.ttl_armed = Some(deadline);
        self.timers.wake_at(self, Wake::Ttl, deadline);
    }

    /// A timer set by this queue for `at` went off (see [`QueueTimers`](sink::QueueTimers)), and it
    /// is `now`: expires what is due and sets the next TTL timer, or deletes the queue if x-expires
    /// finds it unused (else sets the next check).
    pub fn woken(self: &Arc<Self>, wake: Wake, at: Instant, now: Now) {
        match wake {
            Wake::Ttl => {
                let mut dead = DeadLetters::new();
                {
                    let mut st = self.state.lock();
                    if st.deleted {
                        return;
                    }
                    // A timer set for a later deadline than the one now armed is stale: it expires
                    // what is due like any other, but the armed one stays.
                    if st.ttl_armed == Some(at) {
                        st.ttl_armed = None;
                    }
                    // Only the head expires (RabbitMQ): later deadlines wait until they reach it.
                    self.dispatch_locked(&mut st, &mut dead, now.instant);
                }
                self.dead_letter(dead, now);
            }
            Wake::Expiry(after) => {
                let next = {
                    let st = self.state.lock();
                    if st.deleted {
                        return;
                    }
                    let unused = now.instant.saturating_duration_since(st.last_used);
                    if st.consumers.is_empty() && unused >= after {
                        None
                    } else {
                        Some(st.last_used + after)
                    }
                };
                match next {
                    Some(next) => self.timers.wake_at(self, Wake::Expiry(after), next),
                    None => {
                        if let Some(owner) = self.owner.upgrade() {
                            tracing::debug!(queue = self.name(), "queue expired (x-expires)");
                            owner.expire(self);
                        }
                    }
                }
            }
        }
    }
}

/// Why a queue's timer was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The head message's TTL deadline.
    Ttl,
    /// The x-expires check: the queue goes once unused for this long.
    Expiry(Duration),
}
