//! Consumers and the credit that bounds what a queue may push to them (basic.qos, channel.flow).
//!
//! A queue hands a message to a consumer only after taking one unit of credit, so the number of messages
//! between a queue and a client is bounded by prefetch (ack mode) or by the connection's write budget
//! (no-ack mode), never by the speed of the client's socket.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use super::{Entry, Queue};
use crate::ids::ConsumerId;

/// A counter with an optional ceiling (0 = unlimited), shared between queues and a connection.
#[derive(Debug, Default)]
pub struct Limit {
    limit: AtomicU32,
    used: AtomicU32,
}

impl Limit {
    pub fn new(limit: u32) -> Self {
        Limit {
            limit: AtomicU32::new(limit),
            used: AtomicU32::new(0),
        }
    }

    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Release);
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }

    /// Takes one unit if the ceiling allows it.
    pub(crate) fn try_take(&self) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (limit == 0 || used < limit).then_some(used + 1)
            })
            .is_ok()
    }

    /// Gives back `n` units (saturating: a release never underflows).
    pub fn release(&self, n: u32) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    pub fn used(&self) -> u32 {
        self.used.load(Ordering::Acquire)
    }
}

/// Credit shared by all consumers of one channel: the global prefetch and channel.flow.
#[derive(Debug)]
pub struct ChannelCredit {
    pub global: Limit,
    pub flow_active: AtomicBool,
}

impl Default for ChannelCredit {
    fn default() -> Self {
        ChannelCredit {
            global: Limit::new(0),
            flow_active: AtomicBool::new(true),
        }
    }
}

/// A message a queue hands to one of its consumers; one unit of the consumer's credit is taken.
#[derive(Debug)]
pub struct Delivery {
    pub consumer: Arc<Consumer>,
    pub queue: Arc<Queue>,
    pub entry: Entry,
}

/// Where a consumer's deliveries go: its connection's outbox (connection/outbound.rs); a replicated
/// queue's remote consumers will be another implementation (HA.md: `RemoteSink`).
pub trait DeliverySink: Send + Sync + fmt::Debug {
    /// Hands `delivery` to the consumer's connection, or gives it back when that is gone.
    fn deliver(&self, delivery: Delivery) -> Result<(), Delivery>;
    /// The consumed queue was deleted: the consumer's client is told (basic.cancel, when it asked
    /// for consumer_cancel_notify).
    fn cancelled(&self, consumer: Arc<Consumer>);
}

/// A basic.consume registration, shared by the queue (to push) and the channel (to cancel and credit).
#[derive(Debug)]
pub struct Consumer {
    /// Its node, connection, channel and tag.
    pub id: ConsumerId,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Deliveries carry the publisher's identity in the `x-warren-publisher` header (asked for by the
    /// consumer, its queue or its vhost's configuration).
    pub publisher_header: bool,
    /// Consumer priority (`x-priority`): higher priorities get messages first.
    pub priority: i64,
    /// Per-consumer prefetch (basic.qos with global=false before the consume).
    pub prefetch: Limit,
    pub channel_credit: Arc<ChannelCredit>,
    /// The connection's budget of no-ack deliveries not yet written to its socket.
    pub write_budget: Arc<Limit>,
    /// Where its deliveries and a server-side cancel go (its connection).
    pub sink: Arc<dyn DeliverySink>,
}

impl Consumer {
    /// Takes the credit one delivery needs; false if the consumer must wait.
    pub fn try_take_credit(&self) -> bool {
        if !self.channel_credit.flow_active.load(Ordering::Acquire) {
            return false;
        }
        if self.no_ack {
            return self.write_budget.try_take();
        }
        if !self.prefetch.try_take() {
            return false;
        }
        if !self.channel_credit.global.try_take() {
            self.prefetch.release(1);
            return false;
        }
        true
    }

    /// How many messages it may hold unacknowledged: its prefetch, its channel's global prefetch
    /// when lower, `unlimited` when neither limits it (or it acknowledges nothing).
    pub fn capacity(&self, unlimited: u32) -> u32 {
        if self.no_ack {
            return unlimited;
        }
        [self.prefetch.limit(), self.channel_credit.global.limit()]
            .into_iter()
            .filter(|l| *l > 0)
            .min()
            .unwrap_or(unlimited)
    }

    /// Returns the credit of `n` deliveries (acked, rejected, requeued, or written for no-ack).
    pub fn release_credit(&self, n: u32) {
        if self.no_ack {
            self.write_budget.release(n);
        } else {
            self.prefetch.release(n);
            self.channel_credit.global.release(n);
        }
    }
}

/// A registration is itself: two consumers with equal fields are still two.
impl super::state::ConsumerHandle for Arc<Consumer> {
    fn is(&self, other: &Self) -> bool {
        Arc::ptr_eq(self, other)
    }
    fn priority(&self) -> i64 {
        self.priority
    }
    fn exclusive(&self) -> bool {
        self.exclusive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_take_up_to_the_ceiling_and_release_saturates() {
        let l = Limit::new(2);
        assert!(l.try_take() && l.try_take() && !l.try_take());
        l.release(5);
        assert_eq!(l.used(), 0);
        let unlimited = Limit::new(0);
        assert!((0..1000).all(|_| unlimited.try_take()));
    }
}
