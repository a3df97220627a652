//! Messages other tasks send to a connection task: deliveries pushed by queues and server-initiated
//! consumer cancellations. The connection owns channel state, so it alone assigns delivery tags.

use std::sync::Arc;

use crate::error::AmqpError;
use crate::queue::consumer::Consumer;
use crate::queue::{Entry, Queue};

#[derive(Debug)]
pub enum Outbound {
    /// A queue hands `entry` to `consumer`; one unit of the consumer's credit is already taken.
    Deliver {
        consumer: Arc<Consumer>,
        queue: Arc<Queue>,
        entry: Entry,
    },
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
}
