//! A queue that another cluster node holds (a quorum queue's host, a classic queue's home): the
//! channel asks that node what only it knows — the counts of queue.declare-ok, queue.purge —
//! parking the connection meanwhile as for a replicated change (channel/replicated.rs: no other
//! frame is handled, so AMQP's order holds), and answers when the method runs again.

use std::sync::Arc;

use amq_protocol::protocol::AMQPClass;
use parking_lot::Mutex;

use super::Channel;
use crate::cluster::quorum::Counts;
use crate::connection::session::{Session, Waiting};
use crate::error::{AmqpError, AmqpResult};
use crate::queue::Queue;

/// What the holder answered.
#[derive(Debug)]
pub(super) enum Asked {
    Counts(Result<Counts, String>),
    Purged(Result<u32, String>),
}

/// Where the answer waits for the method's next run.
pub(super) type Slot = Arc<Mutex<Option<Asked>>>;

impl Channel {
    /// Parks the connection until `asking` has put its answer in the slot; `again` is the method
    /// (class and method ids `ids`), run again then.
    fn ask(
        &self,
        s: &mut Session,
        again: AMQPClass,
        ids: (u16, u16),
        asking: impl std::future::Future<Output = Asked> + Send + 'static,
    ) {
        let slot = self.asked.clone();
        s.waiting = Some(Waiting {
            channel: self.id,
            method: again,
            ids,
            done: Box::pin(async move {
                let answer = asking.await;
                *slot.lock() = Some(answer);
                Ok(())
            }),
        });
    }

    /// `q`'s message and consumer counts for a declare-ok: its own, or its holder's; None when the
    /// holder has been asked (the method runs again with the answer). A holder that cannot answer
    /// (it is changing: a quorum queue's failover) leaves this node's own counts.
    pub(super) fn counts(
        &mut self,
        s: &mut Session,
        q: &Queue,
        again: AMQPClass,
    ) -> Option<Counts> {
        let own = Counts {
            messages: q.message_count(),
            consumers: q.consumer_count(),
        };
        let Some(node) = s.broker.shard_journal.holder_of(q) else {
            return Some(own);
        };
        match self.asked.lock().take() {
            Some(Asked::Counts(Ok(counts))) => return Some(counts),
            Some(Asked::Counts(Err(why))) => {
                tracing::debug!(queue = %q.name(), node, %why, "the queue's node gave no counts");
                return Some(own);
            }
            _ => {}
        }
        let asking = s
            .broker
            .shard_journal
            .ask_counts(node, (s.vhost.name.as_str(), q.name().as_str()));
        self.ask(
            s,
            again,
            (50, 10),
            async move { Asked::Counts(asking.await) },
        );
        None
    }

    /// Purges `q`: here, or at its holder; Ok(None) when the holder has been asked (the method
    /// runs again with the answer). A holder that cannot purge it is a 541 (the client may retry
    /// on another node).
    pub(super) fn purge(
        &mut self,
        s: &mut Session,
        q: &Arc<Queue>,
        again: AMQPClass,
    ) -> AmqpResult<Option<u32>> {
        let Some(node) = s.broker.shard_journal.holder_of(q) else {
            return Ok(Some(q.purge(crate::time::Now::read())));
        };
        match self.asked.lock().take() {
            Some(Asked::Purged(Ok(n))) => return Ok(Some(n)),
            Some(Asked::Purged(Err(why))) => {
                return Err(AmqpError::internal(format!(
                    "the node holding {} did not purge it: {why}",
                    q.name()
                )))
            }
            _ => {}
        }
        let asking = s
            .broker
            .shard_journal
            .ask_purge(node, (s.vhost.name.as_str(), q.name().as_str()));
        self.ask(
            s,
            again,
            (50, 30),
            async move { Asked::Purged(asking.await) },
        );
        Ok(None)
    }
}
