//! A queue: ready messages in order, its consumers, and the dispatch loop that pushes to them.
//!
//! Each queue has its own lock and shares none with other queues (DESIGN: "a queue never needs a lock
//! shared with other queues"). Ready messages are kept sorted by their enqueue sequence number, so a
//! requeued message goes back to its original place (RabbitMQ requeues in original order).

pub mod consumer;

use std::collections::VecDeque;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;

use crate::connection::outbound::Outbound;
use crate::message::Message;
use consumer::{ConnectionId, Consumer};

/// A message in a queue, with its position and whether it was delivered before.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}

/// Declaration properties, compared on redeclare (RabbitMQ's equivalence check).
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Entry>,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    next_seq: u64,
    deleted: bool,
    /// Auto-delete queues are deleted when their last consumer goes, but only once they had one.
    had_consumer: bool,
}

#[derive(Debug)]
pub struct Queue {
    pub spec: QueueSpec,
    pub vhost: String,
    state: Mutex<State>,
}

/// What removing a consumer left behind.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsumerRemoval {
    NotFound,
    Removed,
    /// The last consumer of an auto-delete queue went: the caller deletes the queue.
    RemovedLastOfAutoDelete,
}

impl Queue {
    pub fn new(vhost: &str, spec: QueueSpec) -> Arc<Self> {
        Arc::new(Queue {
            spec,
            vhost: vhost.to_string(),
            state: Mutex::new(State::default()),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Appends a message and pushes what consumers can take. False if the queue was deleted meanwhile.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> bool {
        let mut st = self.state.lock();
        if st.deleted {
            return false;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(Entry {
            seq,
            message,
            redelivered: false,
        });
        self.dispatch_locked(&mut st);
        true
    }

    /// Puts delivered-but-unsettled messages back in their original positions, flagged redelivered.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = Entry>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        for mut entry in entries {
            entry.redelivered = true;
            let at = st.ready.partition_point(|e| e.seq < entry.seq);
            st.ready.insert(at, entry);
        }
        self.dispatch_locked(&mut st);
    }

    /// Puts back a message that was pushed to a consumer but never reached the client, unchanged.
    pub fn return_undelivered(self: &Arc<Self>, entry: Entry) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let at = st.ready.partition_point(|e| e.seq < entry.seq);
        st.ready.insert(at, entry);
        self.dispatch_locked(&mut st);
    }

    /// Takes the head message for basic.get, with the count of messages left.
    pub fn get(&self) -> Option<(Entry, u32)> {
        let mut st = self.state.lock();
        let entry = st.ready.pop_front()?;
        Some((entry, st.ready.len() as u32))
    }

    /// Pushes ready messages to consumers with credit (after an ack, qos change or flow resume).
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut State) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let n = st.consumers.len();
            let Some(idx) = (0..n)
                .map(|i| (st.next_consumer + i) % n)
                .find(|&i| st.consumers[i].try_take_credit())
            else {
                return;
            };
            let Some(entry) = st.ready.pop_front() else {
                return;
            };
            let consumer = st.consumers[idx].clone();
            st.next_consumer = idx + 1;
            if let Err(failed) = consumer.outbox.send(Outbound::Deliver {
                consumer: consumer.clone(),
                queue: self.clone(),
                entry,
            }) {
                // The connection is gone; its cleanup will also remove the consumer.
                consumer.release_credit(1);
                if let Outbound::Deliver { entry, .. } = failed.0 {
                    st.ready.push_front(entry);
                }
                st.consumers.remove(idx);
            }
        }
    }

    /// Registers a consumer unless exclusivity forbids it (an exclusive consumer wants the queue alone,
    /// and nobody joins a queue that has one). Returns false when refused.
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> bool {
        let mut st = self.state.lock();
        if st.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !st.consumers.is_empty())
        {
            return false;
        }
        st.consumers.push(consumer);
        st.had_consumer = true;
        self.dispatch_locked(&mut st);
        true
    }

    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> ConsumerRemoval {
        let mut st = self.state.lock();
        let Some(idx) = st.consumers.iter().position(|c| Arc::ptr_eq(c, consumer)) else {
            return ConsumerRemoval::NotFound;
        };
        st.consumers.remove(idx);
        if st.consumers.is_empty() && self.spec.auto_delete && st.had_consumer && !st.deleted {
            ConsumerRemoval::RemovedLastOfAutoDelete
        } else {
            ConsumerRemoval::Removed
        }
    }

    pub fn has_exclusive_consumer(&self) -> bool {
        self.state.lock().consumers.iter().any(|c| c.exclusive)
    }

    pub fn message_count(&self) -> u32 {
        self.state.lock().ready.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    /// Drops every ready message (queue.purge); unacked deliveries are not touched, as in RabbitMQ.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let n = st.ready.len() as u32;
        st.ready.clear();
        n
    }

    /// Marks the queue deleted, returning its ready count and the consumers to notify.
    pub fn mark_deleted(&self) -> (u32, Vec<Arc<Consumer>>) {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.ready.len() as u32;
        st.ready.clear();
        (n, std::mem::take(&mut st.consumers))
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }
}
