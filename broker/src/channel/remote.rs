//! A queue that another cluster node holds (a quorum queue's host, a classic queue's home): the
//! channel asks that node what only it knows — the counts of queue.declare-ok, queue.purge, the
//! head message for a basic.get (cluster/quorum/get.rs) — parking the connection meanwhile as for
//! a replicated change (channel/replicated.rs: no other frame is handled, so AMQP's order holds),
//! and answers when the method runs again.

use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use parking_lot::Mutex;
use warren_protocol::method::encode_get_ok;

use super::unacked::Delivered;
use super::Channel;
use crate::cluster::quorum::{Counts, Got};
use crate::connection::session::{Session, Waiting};
use crate::error::{AmqpError, AmqpResult};
use crate::queue::Queue;

/// What the holder answered.
#[derive(Debug)]
pub(super) enum Asked {
    Counts(Result<Counts, String>),
    Purged(Result<u32, String>),
    Got(Result<Option<Got>, String>),
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Got")
            .field("redelivered", &self.redelivered)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
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

    /// The holder's answer to this channel's basic.get, when the method runs again after it.
    pub(super) fn got_elsewhere(&self) -> Option<Result<Option<Got>, String>> {
        match self.asked.lock().take() {
            Some(Asked::Got(answer)) => Some(answer),
            _ => None,
        }
    }

    /// Asks the node holding `q` for its head message, for basic.get `g` (this node's copy had
    /// none); false when this node holds it (the answer is basic.get-empty).
    pub(super) fn get_elsewhere(&self, s: &mut Session, q: &Arc<Queue>, g: &basic::Get) -> bool {
        let Some(node) = s.broker.shard_journal.holder_of(q) else {
            return false;
        };
        let holder: Arc<dyn crate::cluster::quorum::QuorumHolder> = s.broker.clone();
        let asking = s.broker.shard_journal.ask_get(
            node,
            (s.vhost.name.as_str(), q.name().as_str()),
            g.no_ack,
            holder,
        );
        self.ask(
            s,
            AMQPClass::Basic(basic::AMQPMethod::Get(g.clone())),
            (60, 70),
            async move { Asked::Got(asking.await) },
        );
        true
    }

    /// Answers basic.get with what the holder of `q` (this node's copy) handed over: get-ok, the
    /// message kept unacked here unless `no_ack`, and settled at the holder; get-empty when it had
    /// none or could not answer (a quorum queue's failover: the client asks again).
    pub(super) fn answer_got(
        &mut self,
        s: &mut Session,
        q: Arc<Queue>,
        no_ack: bool,
        answer: Result<Option<Got>, String>,
    ) {
        let got = match answer {
            Ok(Some(got)) => got,
            Ok(None) => return send_get_empty(s, self.id),
            Err(why) => {
                tracing::debug!(queue = %q.name(), %why, "the queue's node gave no message");
                return send_get_empty(s, self.id);
            }
        };
        let tag = self.next_tag();
        let m = &got.message;
        encode_get_ok(
            &mut s.out,
            self.id,
            tag.0,
            got.redelivered,
            m.exchange.as_bytes(),
            m.routing_key.as_bytes(),
            got.count,
        );
        let count = q
            .args
            .quorum
            .then_some(crate::connection::session::Stamp::DeliveryCount(
                got.returns,
            ));
        s.send_delivery_content(self.id, m, super::basic::wants_publisher(s, &q), count);
        if !no_ack {
            self.unacked.push(Delivered {
                tag,
                queue: q,
                entry: crate::queue::Entry {
                    seq: 0,
                    message: got.message.clone(),
                    redelivered: got.redelivered,
                    priority: 0,
                    expires_at: None,
                    returns: got.returns,
                    store_id: None,
                },
                consumer: None,
                remote: got.settle,
            });
        }
    }
}

fn send_get_empty(s: &mut Session, channel: u16) {
    s.send(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
    );
}
