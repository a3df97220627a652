//! A message as a queue holds it: its place in the ready order, its priority, its deadline and its
//! delivery history.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Instant;

use crate::message::Message;

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
    /// The ready order: priority descending, then enqueue sequence.
    pub(crate) fn order(&self) -> (Reverse<u8>, u64) {
        (Reverse(self.priority), self.seq)
    }

    /// Past its deadline at `now`. Strict, so a TTL of 0 still reaches a consumer ready at the very
    /// instant of the publish (RabbitMQ's semantics for `expiration: 0`), and nothing later.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t < now)
    }
}
