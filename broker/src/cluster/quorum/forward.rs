//! Publishes forwarded to the node that holds a queue (a quorum queue's host, a classic queue's
//! home), and the node-link requests of this node's groups (Raft's, forwarded publishes,
//! subscriptions).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use warren_storage::store::Completion;

use super::holder::{QuorumHolder, NOT_HOSTING};
use super::journal::ShardJournal;
use super::shard::failed;
use super::target::{ShardMetrics, Target};
use crate::cluster::link::Links;
use crate::cluster::raft::codec::{decode, encode};
use crate::cluster::raft::network::bad_request;
use crate::cluster::raft::rpc;
use crate::message::Message;
use crate::queue::Enqueued;

/// Forwarded publishes in flight to one peer at most; the rest wait here, in publish order. The
/// peer's link serves a bounded number of requests at once, and Raft's and the subscriptions'
/// requests must always find room beside a publisher's window of a thousand.
const FORWARDS_IN_FLIGHT: usize = 512;

/// Consecutive publishes for one shard sent in one request at most (`PUBLISH_BATCH`), and the
/// bytes after which a request takes no more: one request, one task and one answer for a burst
/// instead of one each per message.
const FORWARD_BATCH: usize = 128;
const FORWARD_BATCH_BYTES: usize = 256 * 1024;

/// Publishes on their way to the nodes hosting their quorum queues: one ordered queue per peer,
/// drained by one task that keeps at most [`FORWARDS_IN_FLIGHT`] of them unanswered.
pub struct Forwarder {
    links: Arc<Links>,
    peers: parking_lot::Mutex<HashMap<u64, mpsc::UnboundedSender<Forward>>>,
}

/// One publish to forward.
struct Forward {
    group: u32,
    body: Bytes,
    done: Option<Completion>,
    /// A quorum queue's shard: its publishes fail once another node leads it.
    metrics: Option<ShardMetrics>,
    timeout: Duration,
}

impl Forwarder {
    /// The node links the publishes leave through.
    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    pub fn new(links: Arc<Links>) -> Self {
        Forwarder {
            links,
            peers: Default::default(),
        }
    }

    /// Sends a message published on this node to the node that holds its queue, in publish
    /// order; `done` (the publisher's confirm) is called with that node's answer: ok once the
    /// message is stored as the queue stores it (a quorum queue: by a majority), an error
    /// (basic.nack) when the link fails, the node refuses it, or, for a quorum queue, another node
    /// leads the shard before the host answers.
    pub fn publish(
        &self,
        (target, timeout): (Target, Duration),
        (vhost, queue): (&str, &str),
        message: &Message,
        done: Option<Completion>,
    ) {
        let leader = target.node;
        let body = Bytes::from(encode(|w| {
            w.bytes(vhost.as_bytes());
            w.bytes(queue.as_bytes());
            w.bytes(&message.stored_form());
        }));
        let forward = Forward {
            group: target.group,
            body,
            done,
            metrics: target.metrics,
            timeout,
        };
        let mut peers = self.peers.lock();
        let queue = peers.entry(leader).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(forward_to(self.links.clone(), leader, rx));
            tx
        });
        if let Err(unsent) = queue.send(forward) {
            failed(unsent.0.done, "this node is stopping");
        }
    }
}

/// Drains one peer's queue of forwarded publishes in order, [`FORWARDS_IN_FLIGHT`] at a time,
/// consecutive ones for the same shard together (up to [`FORWARD_BATCH`]).
async fn forward_to(links: Arc<Links>, leader: u64, mut queue: mpsc::UnboundedReceiver<Forward>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT));
    let mut next: Option<Forward> = None;
    loop {
        let first = match next.take() {
            Some(forward) => forward,
            None => match queue.recv().await {
                Some(forward) => forward,
                None => return,
            },
        };
        let mut bytes = first.body.len();
        let mut batch = vec![first];
        while batch.len() < FORWARD_BATCH && bytes < FORWARD_BATCH_BYTES {
            match queue.try_recv() {
                Ok(more) if more.group == batch[0].group => {
                    bytes += more.body.len();
                    batch.push(more);
                }
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let Ok(permit) = permits.clone().acquire_many_owned(batch.len() as u32).await else {
            return;
        };
        send_batch(&links, leader, batch, permit);
    }
}

/// Sends `batch` (one shard's publishes, in order) as one request; each publisher's confirm gets
/// its message's outcome, or all of them the request's failure.
fn send_batch(
    links: &Arc<Links>,
    leader: u64,
    mut batch: Vec<Forward>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let group = batch[0].group;
    let timeout = batch.iter().map(|f| f.timeout).max().unwrap_or_default();
    let mut metrics = batch[0].metrics.take();
    let (kind, body) = match batch.len() {
        1 => (rpc::PUBLISH, batch[0].body.clone()),
        n => (
            rpc::PUBLISH_BATCH,
            Bytes::from(encode(|w| {
                w.u64(n as u64);
                for forward in &batch {
                    w.bytes(&forward.body);
                }
            })),
        ),
    };
    let dones: Vec<Option<Completion>> = batch.into_iter().map(|f| f.done).collect();
    let call = match links.start_call(leader, group, kind, body) {
        Ok(call) => call,
        Err(e) => {
            let why = e.to_string();
            return dones.into_iter().for_each(|done| failed(done, &why));
        }
    };
    tokio::spawn(async move {
        // A host that stops leading (paused, cut off) may never answer: its publishes get
        // basic.nack as soon as this node sees another leader, so the client sends them again to
        // the new host (a message the old one did commit comes twice, never 0 times).
        let answer = tokio::select! {
            answer = call.answer(timeout) => answer.map_err(|e| e.to_string()),
            () = leader_changed(metrics.as_mut(), leader) => {
                Err("the queue's host changed before it answered".to_string())
            }
        };
        drop(permit);
        let outcomes = answer.and_then(|body| match kind {
            rpc::PUBLISH => Ok(vec![Ok(())]),
            _ => decode_outcomes(&body, dones.len()),
        });
        match outcomes {
            Ok(outcomes) => {
                for (done, outcome) in dones.into_iter().zip(outcomes) {
                    if let Some(done) = done {
                        done(outcome.map_err(io::Error::other));
                    }
                }
            }
            Err(why) => dones.into_iter().for_each(|done| failed(done, &why)),
        }
    });
}

/// A batch's answer: each message's outcome, in order (`expected` of them).
fn decode_outcomes(body: &Bytes, expected: usize) -> Result<Vec<Result<(), String>>, String> {
    decode(body, |r| {
        let n = r.count(1)?;
        let mut outcomes = Vec::with_capacity(n);
        for _ in 0..n {
            outcomes.push(match r.u8()? {
                0 => Ok(()),
                _ => Err(r.string()?),
            });
        }
        Ok(outcomes)
    })
    .map_err(|e| format!("the queue's host answered a batch of publishes badly: {e}"))
    .and_then(|outcomes| match outcomes.len() == expected {
        true => Ok(outcomes),
        false => Err(format!(
            "the queue's host answered {} of {expected} publishes",
            outcomes.len()
        )),
    })
}

/// Done when the shard's metrics name a leader other than `leader` (never, if they stop or there
/// is no shard).
async fn leader_changed(metrics: Option<&mut ShardMetrics>, leader: u64) {
    use openraft::async_runtime::WatchReceiver;
    let Some(metrics) = metrics else {
        return std::future::pending().await;
    };
    loop {
        let current = metrics.borrow_watched().current_leader;
        if current.is_some() && current != Some(leader) {
            return;
        }
        if metrics.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// A forwarded publish's confirm: the queue takes its completion if it stores the message.
struct Forwarded(parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<io::Result<()>>>>);

impl crate::queue::sink::WaitsForWrites for Forwarded {
    fn hold(&self) -> Completion {
        let reply = self.0.lock().take();
        Box::new(move |result| {
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        })
    }
}

/// Serves the node-link requests of this node's groups: forwarded publishes into the quorum
/// queues it hosts, and every Raft request (to its group's member).
pub(crate) struct QuorumServer {
    pub groups: crate::cluster::raft::network::GroupServer,
    pub journal: Arc<ShardJournal>,
    pub holder: Weak<dyn QuorumHolder>,
}

impl QuorumServer {
    /// Publishes a forwarded message into the queue now (in the order requests arrive); the
    /// answer waits for the shard.
    fn publish(
        &self,
        body: &Bytes,
    ) -> Result<tokio::sync::oneshot::Receiver<io::Result<()>>, String> {
        let (vhost, queue, payload) = decode(body, |r| {
            Ok((r.string()?, r.string()?, Bytes::copy_from_slice(r.bytes()?)))
        })
        .map_err(bad_request)?;
        let holder = self.holder.upgrade().ok_or("the broker has stopped")?;
        if !holder
            .queue(&vhost, &queue)
            .is_some_and(|q| self.journal.holds(&q))
        {
            return Err(format!("{NOT_HOSTING}: queue '{queue}' in vhost '{vhost}'"));
        }
        let message = holder
            .message(&payload)
            .ok_or("the forwarded message does not decode")?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let waits = Forwarded(parking_lot::Mutex::new(Some(reply)));
        match holder.publish(&vhost, &queue, message, &waits) {
            Enqueued::Yes | Enqueued::Gone => {
                // Not stored (the queue went meanwhile): nothing to wait for.
                if let Some(reply) = waits.0.lock().take() {
                    let _ = reply.send(Ok(()));
                }
                Ok(answer)
            }
            Enqueued::Rejected => Err(format!(
                "queue '{queue}' in vhost '{vhost}' refused the message (x-overflow reject-publish)"
            )),
        }
    }
}

impl crate::cluster::link::RequestHandler for QuorumServer {
    fn handle(
        &self,
        from: u64,
        group: u32,
        kind: u8,
        body: Bytes,
    ) -> futures_util::future::BoxFuture<'static, Result<Bytes, String>> {
        let subs = &self.journal.subscriptions;
        let done = |result: Result<(), String>| -> futures_util::future::BoxFuture<'static, Result<Bytes, String>> {
            Box::pin(async move { result.map(|()| Bytes::new()) })
        };
        let holder = || {
            self.holder
                .upgrade()
                .ok_or_else(|| "the broker has stopped".to_string())
        };
        match kind {
            rpc::PUBLISH | rpc::PUBLISH_BATCH => {}
            rpc::SUBSCRIBE => {
                let answer = holder().and_then(|h| {
                    subs.subscribe(from, group, &body, |q| self.journal.holds(q), &*h)
                });
                return Box::pin(async move { answer });
            }
            rpc::SETTLE => return done(subs.settle(from, &body)),
            rpc::UNSUBSCRIBE => return done(subs.unsubscribe(from, &body)),
            rpc::DELIVER => {
                let answer = holder().and_then(|h| subs.subscriber.deliver(from, &body, &*h));
                return Box::pin(async move { answer });
            }
            rpc::CANCELLED => {
                return done(holder().and_then(|h| subs.subscriber.cancelled(from, &body, &*h)))
            }
            rpc::GET => {
                let answer = holder()
                    .and_then(|h| subs.gets.get(from, |q| self.journal.holds(q), &*h, &body));
                return Box::pin(async move { answer });
            }
            rpc::GOT => return done(subs.gets.settle(from, &body)),
            rpc::STREAM_READ => {
                let answer = holder().and_then(|h| {
                    super::stream::answer_read(&*h, |q| self.journal.holds(q), &body)
                });
                return Box::pin(async move { answer });
            }
            rpc::STREAM_TAIL => {
                return match holder() {
                    Ok(h) => super::stream::answer_tail(&*h, |q| self.journal.holds(q), &body),
                    Err(e) => Box::pin(async move { Err(e) }),
                }
            }
            rpc::COUNT | rpc::PURGE => {
                let answer =
                    holder().and_then(|h| super::remote::answer(&self.journal, &*h, kind, &body));
                return Box::pin(async move { answer });
            }
            _ => return self.groups.handle(from, group, kind, body),
        }
        if kind == rpc::PUBLISH_BATCH {
            return self.publish_batch(&body);
        }
        let answer = self.publish(&body);
        Box::pin(async move { outcome(answer).await.map(|()| Bytes::new()) })
    }
}

/// What a forwarded publish came to: stored as its queue stores messages, or why not.
async fn outcome(
    answer: Result<tokio::sync::oneshot::Receiver<io::Result<()>>, String>,
) -> Result<(), String> {
    match answer?.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("not stored: {e}")),
        Err(_) => Err("the queue stopped before answering".into()),
    }
}

impl QuorumServer {
    /// A batch of forwarded publishes: each published now, in order, as `PUBLISH` would; the
    /// answer lists each one's outcome once all are known.
    fn publish_batch(
        &self,
        body: &Bytes,
    ) -> futures_util::future::BoxFuture<'static, Result<Bytes, String>> {
        let bodies = decode(body, |r| {
            let n = r.count(8)?;
            (0..n)
                .map(|_| Ok(body.slice_ref(r.bytes()?)))
                .collect::<Result<Vec<_>, _>>()
        });
        let answers: Vec<_> = match bodies {
            Ok(bodies) => bodies.iter().map(|b| self.publish(b)).collect(),
            Err(e) => {
                let e = bad_request(e);
                return Box::pin(async move { Err(e) });
            }
        };
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(answers.len());
            for answer in answers {
                outcomes.push(outcome(answer).await);
            }
            Ok(Bytes::from(encode(|w| {
                w.u64(outcomes.len() as u64);
                for outcome in &outcomes {
                    match outcome {
                        Ok(()) => w.u8(0),
                        Err(why) => {
                            w.u8(1);
                            w.bytes(why.as_bytes());
                        }
                    }
                }
            })))
        })
    }
}
