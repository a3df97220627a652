//! Where a queue's deliveries and consumer cancellations go: a trait the queue defines and the
//! connection layer implements (its outbox), so that queues know nothing of connections. A
//! replicated queue's remote consumers will be another implementation (HA.md: `RemoteSink`).

use std::fmt;
use std::sync::Arc;

use super::consumer::Consumer;
use super::{Entry, Queue};

/// A message a queue hands to one of its consumers; one unit of the consumer's credit is taken.
#[derive(Debug)]
pub struct Delivery {
    pub consumer: Arc<Consumer>,
    pub queue: Arc<Queue>,
    pub entry: Entry,
}

pub trait DeliverySink: Send + Sync + fmt::Debug {
    /// Hands `delivery` to the consumer's connection, or gives it back when that is gone.
    fn deliver(&self, delivery: Delivery) -> Result<(), Delivery>;
    /// The consumed queue was deleted: the consumer's client is told (basic.cancel, when it asked
    /// for consumer_cancel_notify).
    fn cancelled(&self, consumer: Arc<Consumer>);
}
