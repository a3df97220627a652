//! Where a queue's effects on its clients go: deliveries and consumer cancellations (a trait the
//! queue defines and the connection layer implements: its outbox), and the completion of a durable
//! write a publisher's confirm waits for. So queues know nothing of connections or channels. A
//! replicated queue's remote consumers will be another implementation (HA.md: `RemoteSink`).

use std::fmt;
use std::sync::Arc;

use warren_storage::store::Completion;

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

/// A publish whose confirm (or tx.commit) waits for the durable writes of the queues it entered:
/// each queue that stores the message takes one completion, called once its record is on disk.
pub trait WaitsForWrites: Send + Sync {
    fn hold(&self) -> Completion;
}

/// What a queue asks of whoever holds it (its vhost), after its lock is released: republish dead
/// letters through its dead-letter exchange, and delete it once `x-expires` found it unused. The
/// vhost implements it, so queues never import the vhost.
pub trait QueueOwner: Send + Sync {
    fn dead_letter(&self, queue: &Arc<Queue>, letters: super::dead_letter::DeadLetters);
    fn expire(&self, queue: &Arc<Queue>);
}
