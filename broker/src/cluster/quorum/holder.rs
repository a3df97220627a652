//! What hosting quorum queues needs from the broker, and how a node that does not host a queue
//! says so.

use std::sync::Arc;

use bytes::Bytes;

use crate::message::Message;
use crate::queue::sink::WaitsForWrites;
use crate::queue::{Enqueued, Queue};

/// What the hosting of quorum queues needs from the broker.
pub trait QuorumHolder: Send + Sync + 'static {
    /// Every quorum queue of every vhost, with its record name.
    fn quorum_queues(&self) -> Vec<(String, Arc<Queue>)>;
    /// This node's copies of classic queues other nodes hold, with their record names.
    fn copies(&self) -> Vec<(String, Arc<Queue>)>;
    /// A message as a queue holds it, from its stored form.
    fn message(&self, payload: &Bytes) -> Option<Arc<Message>>;
    /// Quorum queue or cluster classic queue `queue` of `vhost`.
    fn queue(&self, vhost: &str, queue: &str) -> Option<Arc<Queue>>;
    /// Publishes a message forwarded by another node into queue `queue` of `vhost` (quorum or
    /// classic).
    fn publish(
        &self,
        vhost: &str,
        queue: &str,
        message: Arc<Message>,
        confirm: &dyn WaitsForWrites,
    ) -> Enqueued;
}

/// How a node that does not host a queue refuses a publish forwarded to it.
pub(crate) const NOT_HOSTING: &str = "this node does not host the queue";
