//! Messages other tasks send to a connection task: deliveries pushed by queues and server-initiated
//! consumer cancellations (through the queues' [`DeliverySink`], which the outbox implements),
//! confirms after durable writes, and forced closes. The connection owns channel state, so it alone
//! assigns delivery tags.

use std::sync::Arc;

use crate::error::AmqpError;
use tokio::sync::mpsc::UnboundedSender;

use crate::queue::consumer::Consumer;
use crate::queue::consumer::{Delivery, DeliverySink};

#[derive(Debug)]
pub(crate) enum Outbound {
    /// A queue hands a message to one of this connection's consumers (its credit already taken).
    Deliver(Delivery),
    /// The consumed queue was deleted: tell the client with basic.cancel (consumer_cancel_notify).
    Cancelled {
        channel: u16,
        consumer: Arc<Consumer>,
    },
    /// The durable writes of publish `seq` on channel `channel` (that incarnation of it) are done.
    Confirmed {
        channel: u16,
        incarnation: u64,
        seq: u64,
        ok: bool,
    },
    /// The durable writes of a tx.commit on `channel` are done: commit-ok (or an error) goes out.
    Committed {
        channel: u16,
        incarnation: u64,
        ok: bool,
    },
    /// An operator closes the connection (its user or vhost was deleted): connection.close with this.
    ForceClose(AmqpError),
    /// `rabbitmqctl list_channels` asks what its open channels are (channel/mod.rs `report`).
    Report(tokio::sync::oneshot::Sender<Vec<serde_json::Value>>),
}

/// A connection's outbox, where its consumers' queues deliver.
#[derive(Debug, Clone)]
pub(crate) struct Outbox(pub UnboundedSender<Outbound>);

impl DeliverySink for Outbox {
    fn deliver(&self, delivery: Delivery) -> Result<(), Delivery> {
        match self.0.send(Outbound::Deliver(delivery)) {
            Ok(()) => Ok(()),
            // The connection is gone: what was sent comes back.
            Err(failed) => match failed.0 {
                Outbound::Deliver(delivery) => Err(delivery),
                _ => Ok(()),
            },
        }
    }

    fn cancelled(&self, consumer: Arc<Consumer>) {
        let _ = self.0.send(Outbound::Cancelled {
            channel: consumer.id.channel.0,
            consumer,
        });
    }
}
