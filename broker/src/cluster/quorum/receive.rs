//! The node-link requests of this node's groups: publishes other nodes forward into the queues it
//! holds (each stored at most once however often it arrives, sent.rs), the subscriptions of their
//! consumers, and every Raft request (to its group's member).

use std::io;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::oneshot;
use warren_storage::store::Completion;

use super::holder::{QuorumHolder, NOT_HOSTING};
use super::journal::ShardJournal;
use super::sent::{Arrival, Numbered};
use crate::cluster::raft::codec::{decode, encode, DecodeError, Reader, Writer};
use crate::cluster::raft::network::bad_request;
use crate::cluster::raft::rpc;
use crate::queue::Enqueued;

/// Why a forwarded publish was not stored, as its sender acts on it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// Not stored here now (not hosting, the leadership lost while storing, the node stopping):
    /// the sender may send it again to the queue's host.
    Again(String),
    /// Not to be sent again (the queue refused it, or the request was malformed).
    Final(String),
}

impl Refusal {
    pub fn why(&self) -> &str {
        match self {
            Refusal::Again(why) | Refusal::Final(why) => why,
        }
    }
}

/// An outcome's octet on the wire: stored, refused for now, refused for good.
const STORED: u8 = 0;
const AGAIN: u8 = 1;
const FINAL: u8 = 2;

/// One forwarded publish as it travels: the queue's vhost and name, the message's stored form,
/// and for a quorum queue its number.
pub(crate) fn encode_publish(
    names: (&str, &str),
    stored: &[u8],
    number: Option<&Numbered>,
) -> Bytes {
    finish_publish(publish_without_number(names, stored), number)
}

/// A forwarded publish but its number ([`finish_publish`] adds it): what can be encoded before
/// the number is taken.
pub(crate) fn publish_without_number((vhost, queue): (&str, &str), stored: &[u8]) -> Writer {
    let mut w = Writer(Vec::with_capacity(
        vhost.len() + queue.len() + stored.len() + 64,
    ));
    w.bytes(vhost.as_bytes());
    w.bytes(queue.as_bytes());
    w.bytes(stored);
    w
}

/// A forwarded publish from [`publish_without_number`] with its number (or none).
pub(crate) fn finish_publish(mut w: Writer, number: Option<&Numbered>) -> Bytes {
    match number {
        None => w.u8(0),
        Some(n) => {
            w.u8(1);
            w.number(&n.from, n.seq, n.floor);
        }
    }
    Bytes::from(w.0)
}

/// A request of forwarded publishes (`bodies`, each as [`encode_publish`] made it, in order) from
/// a sender whose lowest unsettled number in their shard is `floor`.
pub(crate) fn encode_batch<'a>(
    floor: u64,
    bodies: impl ExactSizeIterator<Item = &'a Bytes>,
) -> Bytes {
    Bytes::from(encode(|w| {
        w.u64(floor);
        w.u64(bodies.len() as u64);
        for body in bodies {
            w.bytes(body);
        }
    }))
}

fn read_number(r: &mut Reader<'_>) -> Result<Option<Numbered>, DecodeError> {
    if !r.bool()? {
        return Ok(None);
    }
    let (from, seq, floor) = r.number()?;
    Ok(Some(Numbered { from, seq, floor }))
}

/// A batch's answer: each message's outcome, in order (`expected` of them).
pub(crate) fn decode_outcomes(
    body: &Bytes,
    expected: usize,
) -> Result<Vec<Result<(), Refusal>>, String> {
    decode(body, |r| {
        let n = r.count(1)?;
        let mut outcomes = Vec::with_capacity(n);
        for _ in 0..n {
            outcomes.push(match r.u8()? {
                STORED => Ok(()),
                AGAIN => Err(Refusal::Again(r.string()?)),
                _ => Err(Refusal::Final(r.string()?)),
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

/// A forwarded publish's confirm: the queue takes its completion if it stores the message, and
/// the resends of it that arrived meanwhile get the same answer.
struct Forwarded {
    reply: parking_lot::Mutex<Option<oneshot::Sender<io::Result<()>>>>,
    number: Option<(u32, Numbered)>,
    journal: Arc<ShardJournal>,
}

impl Forwarded {
    /// The publish's completion (None once the queue took it).
    fn completion(&self) -> Option<Completion> {
        let reply = self.reply.lock().take()?;
        let (number, journal) = (self.number, self.journal.clone());
        Some(Box::new(move |result| {
            if let Some((group, number)) = number {
                if result.is_err() {
                    journal.arrivals.lost(group, number.from, number.seq);
                }
                journal.storing.stored(group, &number, &result);
            }
            let _ = reply.send(result);
        }))
    }
}

impl crate::queue::sink::WaitsForWrites for Forwarded {
    fn hold(&self) -> Completion {
        self.completion().unwrap_or_else(|| Box::new(|_| {}))
    }
}

/// Serves the node-link requests of this node's groups: forwarded publishes into the queues it
/// holds, and every Raft request (to its group's member).
pub(crate) struct QuorumServer {
    pub groups: crate::cluster::raft::network::GroupServer,
    pub journal: Arc<ShardJournal>,
    pub holder: Weak<dyn QuorumHolder>,
}

/// A publish's answer to come: stored as its queue stores messages, or why not.
pub(crate) type Answer = Result<oneshot::Receiver<io::Result<()>>, Refusal>;

impl QuorumServer {
    /// Publishes a forwarded message (`body`, as [`encode_publish`] made it) into its queue now,
    /// in the order requests arrive, unless it is a resend of one stored or being stored, or a
    /// numbered one whose sender's earlier unsettled one (its `floor` or above) has not come
    /// (order.rs); the answer waits for the queue's journal.
    pub(crate) fn publish(&self, floor: u64, body: &Bytes) -> Answer {
        let (vhost, queue, payload, number) = decode(body, |r| {
            Ok((
                r.string()?,
                r.string()?,
                Bytes::copy_from_slice(r.bytes()?),
                read_number(r)?,
            ))
        })
        .map_err(|e| Refusal::Final(bad_request(e)))?;
        let holder = self
            .holder
            .upgrade()
            .ok_or_else(|| Refusal::Again("the broker has stopped".into()))?;
        let live = holder
            .queue(&vhost, &queue)
            .filter(|q| self.journal.holds(q))
            .ok_or_else(|| {
                Refusal::Again(format!("{NOT_HOSTING}: queue '{queue}' in vhost '{vhost}'"))
            })?;
        let message = holder
            .message(&payload)
            .ok_or_else(|| Refusal::Final("the forwarded message does not decode".into()))?;
        let (reply, answer) = oneshot::channel();
        // A quorum queue's numbered publish: stored at most once in its shard.
        let numbered = number.and_then(|n| {
            let record = live.record_name().filter(|_| live.args.quorum)?;
            Some((record.to_string(), self.journal.shard(record)?.clone(), n))
        });
        if let Some((_, shard, n)) = &numbered {
            let arrivals = &self.journal.arrivals;
            if let Err(expected) = arrivals.admit(shard.group, n.from, (n.seq, floor)) {
                return Err(Refusal::Again(format!(
                    "publish {} from node {} came before its publish {expected}",
                    n.seq, n.from.node
                )));
            }
            let applied = || shard.machine.was_sent(&n.from, n.seq);
            match self.journal.storing.arrive(shard.group, n, applied) {
                Arrival::Store => {}
                Arrival::Wait(copy) => return Ok(copy),
                Arrival::Stored => {
                    let _ = reply.send(Ok(()));
                    return Ok(answer);
                }
            }
        }
        let waits = Forwarded {
            reply: parking_lot::Mutex::new(Some(reply)),
            number: numbered.as_ref().map(|(_, shard, n)| (shard.group, *n)),
            journal: self.journal.clone(),
        };
        let enqueued = match &numbered {
            Some((record, _, n)) => super::sent::publishing(record, *n, || {
                holder.publish(&vhost, &queue, message, &waits)
            }),
            None => holder.publish(&vhost, &queue, message, &waits),
        };
        match enqueued {
            Enqueued::Yes | Enqueued::Gone => {
                // Not stored (the queue went meanwhile): nothing to wait for.
                if let Some(done) = waits.completion() {
                    done(Ok(()));
                }
                Ok(answer)
            }
            Enqueued::Rejected => {
                let why = format!(
                    "queue '{queue}' in vhost '{vhost}' refused the message (x-overflow reject-publish)"
                );
                if let Some(done) = waits.completion() {
                    done(Err(io::Error::other(why.clone())));
                }
                Err(Refusal::Final(why))
            }
        }
    }

    /// A batch of forwarded publishes (after its sender's floor, [`encode_batch`]): each
    /// published now, in order; the answer lists each one's outcome once all are known.
    fn publish_batch(
        &self,
        body: &Bytes,
    ) -> futures_util::future::BoxFuture<'static, Result<Bytes, String>> {
        let bodies = decode(body, |r| {
            let floor = r.u64()?;
            let n = r.count(8)?;
            let bodies = (0..n)
                .map(|_| Ok(body.slice_ref(r.bytes()?)))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((floor, bodies))
        });
        let answers: Vec<_> = match bodies {
            Ok((floor, bodies)) => bodies.iter().map(|b| self.publish(floor, b)).collect(),
            Err(e) => {
                let e = bad_request(e);
                return Box::pin(async move { Err(e) });
            }
        };
        Box::pin(async move {
            let outcomes = outcomes(answers).await;
            Ok(Bytes::from(encode(|w| {
                w.u64(outcomes.len() as u64);
                for outcome in &outcomes {
                    match outcome {
                        Ok(()) => w.u8(STORED),
                        Err(refusal) => {
                            w.u8(match refusal {
                                Refusal::Again(_) => AGAIN,
                                Refusal::Final(_) => FINAL,
                            });
                            w.bytes(refusal.why().as_bytes());
                        }
                    }
                }
            })))
        })
    }
}

/// What each of `answers` came to, in order.
pub(crate) async fn outcomes(answers: Vec<Answer>) -> Vec<Result<(), Refusal>> {
    let mut outcomes = Vec::with_capacity(answers.len());
    for answer in answers {
        outcomes.push(outcome(answer).await);
    }
    outcomes
}

/// What a forwarded publish came to. A write that failed is one its host could not make under its
/// leadership (lost, or the node stopping): the next host may store it.
async fn outcome(answer: Answer) -> Result<(), Refusal> {
    match answer?.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Refusal::Again(format!("not stored: {e}"))),
        Err(_) => Err(Refusal::Again("the queue stopped before answering".into())),
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
            rpc::PUBLISH_BATCH => self.publish_batch(&body),
            rpc::SUBSCRIBE => {
                let answer = holder().and_then(|h| {
                    subs.subscribe(from, group, &body, |q| self.journal.holds(q), &*h)
                });
                Box::pin(async move { answer })
            }
            rpc::SETTLE => done(subs.settle(from, &body)),
            rpc::UNSUBSCRIBE => done(subs.unsubscribe(from, &body)),
            rpc::DELIVER => {
                let answer = holder().and_then(|h| subs.subscriber.deliver(from, &body, &*h));
                Box::pin(async move { answer })
            }
            rpc::CANCELLED => {
                done(holder().and_then(|h| subs.subscriber.cancelled(from, &body, &*h)))
            }
            rpc::GET => {
                let answer = holder()
                    .and_then(|h| subs.gets.get(from, |q| self.journal.holds(q), &*h, &body));
                Box::pin(async move { answer })
            }
            rpc::GOT => done(subs.gets.settle(from, &body)),
            rpc::STREAM_READ => {
                let answer = holder().and_then(|h| {
                    super::stream::answer_read(&*h, |q| self.journal.holds(q), &body)
                });
                Box::pin(async move { answer })
            }
            rpc::STREAM_TAIL => match holder() {
                Ok(h) => super::stream::answer_tail(&*h, |q| self.journal.holds(q), &body),
                Err(e) => Box::pin(async move { Err(e) }),
            },
            rpc::COUNT | rpc::PURGE => {
                let answer =
                    holder().and_then(|h| super::remote::answer(&self.journal, &*h, kind, &body));
                Box::pin(async move { answer })
            }
            _ => self.groups.handle(from, group, kind, body),
        }
    }
}
