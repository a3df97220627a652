//! Publishes forwarded to the node that holds a queue (a quorum queue's host, a classic queue's
//! home). A quorum queue's publish is numbered (sent.rs) and, when its host fails or changes
//! before answering, sent again to the shard's next host within the publish's time, as RabbitMQ's
//! channel resends to a quorum queue's new leader: the publisher sees a later confirm, not a
//! basic.nack, and the message is stored once.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use warren_storage::store::Completion;

use super::lanes::{leader_where, Forward, Lanes, Outlet};
use super::receive::{
    decode_outcomes, encode_batch, encode_publish, finish_publish, outcomes,
    publish_without_number, QuorumServer, Refusal,
};
use super::sent::{Numbered, Sequences};
use super::shard::{failed, ShardGroup};
use super::target::{ShardMetrics, Target};
use crate::cluster::link::Links;
use crate::cluster::raft::rpc;
use crate::message::Message;

/// Forwarded publishes in flight to one peer at most; the rest wait here, in publish order. The
/// peer's link serves a bounded number of requests at once, and Raft's and the subscriptions'
/// requests must always find room beside a publisher's window of a thousand.
const FORWARDS_IN_FLIGHT: usize = 512;

/// Consecutive publishes for one shard sent in one request at most (`PUBLISH_BATCH`), and the
/// bytes after which a request takes no more: one request, one task and one answer for a burst
/// instead of one each per message.
const FORWARD_BATCH: usize = 128;
const FORWARD_BATCH_BYTES: usize = 256 * 1024;

/// Publishes on their way to the nodes holding their queues: one ordered queue per peer, drained
/// by one task that keeps at most [`FORWARDS_IN_FLIGHT`] of them unanswered.
pub struct Forwarder {
    links: Arc<Links>,
    peers: parking_lot::Mutex<HashMap<u64, mpsc::UnboundedSender<Forward>>>,
    /// The numbers of this node's publishes into quorum queues.
    sequences: Arc<Sequences>,
    /// This node's own server: a resend whose shard this node now hosts is published here.
    here: Weak<QuorumServer>,
    /// Keeps each shard's publishes in number order across a change of host (lanes.rs).
    lanes: Lanes,
}

impl Forwarder {
    /// The node links the publishes leave through.
    pub fn links(&self) -> &Arc<Links> {
        &self.links
    }

    /// The forwarder of node `node`, whose server (for the shards it comes to host) is `here`.
    pub fn new(links: Arc<Links>, node: u64, here: Weak<QuorumServer>) -> Arc<Self> {
        Arc::new(Forwarder {
            links,
            peers: Default::default(),
            sequences: Arc::new(Sequences::new(node)),
            here,
            lanes: Lanes::default(),
        })
    }

    /// Whether a publish of shard `group`, which this node hosts, may go into its queue here now
    /// (lanes.rs).
    pub(crate) fn in_order_here(&self, group: u32) -> bool {
        self.lanes.in_order_here(group, self.node())
    }

    /// Sends a message published on this node to the node that holds its queue, in publish
    /// order; `done` (the publisher's confirm) is called with that node's answer: ok once the
    /// message is stored as the queue stores it (a quorum queue: by a majority), an error
    /// (basic.nack) when the node refuses it or, within `timeout`, no node stores it (a quorum
    /// queue's publish goes to the shard's next host when its host fails or changes).
    pub fn publish(
        self: &Arc<Self>,
        (target, timeout): (Target, Duration),
        names: (&str, &str),
        message: &Message,
        done: Option<Completion>,
    ) {
        let body = publish_without_number(names, &message.stored_form());
        let deadline = Instant::now() + timeout;
        let Some(shard) = target.metrics else {
            let forward = Forward {
                group: target.group,
                seq: None,
                body: finish_publish(body, None),
                done,
                shard: None,
                deadline,
            };
            return match target.node {
                Some(node) => self.send(node, vec![forward]),
                None => failed(forward.done, "the queue's home is not known"),
            };
        };
        // A quorum queue's: numbered, and after every earlier one of its shard (with no host
        // now, it waits for the next one).
        let group = target.group;
        self.lanes.send_in_order(self, target.node, group, || {
            let number = self.sequences.number(group);
            Forward {
                group,
                seq: Some(number.seq),
                body: finish_publish(body, Some(&number)),
                done: Some(self.settling(group, number.seq, done)),
                shard: Some(shard),
                deadline,
            }
        });
    }

    /// The number of a publish into shard `group` that this node stores as the shard's host.
    pub(crate) fn number_here(&self, group: u32) -> Numbered {
        let number = self.sequences.number(group);
        self.lanes.storing_here(group, self.node());
        number
    }

    /// `done`, after which publish `seq` of shard `group` is settled (never sent again),
    /// whatever its answer.
    fn settling(&self, group: u32, seq: u64, done: Option<Completion>) -> Completion {
        let sequences = self.sequences.clone();
        Box::new(move |result| {
            sequences.settled(group, seq);
            if let Some(done) = done {
                done(result);
            }
        })
    }

    /// The confirm of publish `number` (a message of `payload` into the queue whose record name
    /// is `record`) that this node stores as the host of `shard`: when the write fails, the
    /// publish goes to the shard's next host, within `timeout`, as a forwarded one would. (Built
    /// for every publish a host stores: what a resend needs is worked out only when one is.)
    pub(crate) fn resend_on_failure(
        self: &Arc<Self>,
        (shard, timeout): (&Arc<ShardGroup>, Duration),
        number: Numbered,
        (record, payload): (&str, Bytes),
        done: Completion,
    ) -> Completion {
        let forwarder = Arc::downgrade(self);
        let deadline = Instant::now() + timeout;
        let (shard, record) = (shard.clone(), record.to_string());
        Box::new(move |result| {
            let Some(forwarder) = forwarder.upgrade() else {
                return done(result);
            };
            let names = match &result {
                Err(_) if Instant::now() < deadline => {
                    crate::meta::records::split_message_queue(&record)
                }
                _ => None,
            };
            let me = forwarder.node();
            let (Err(e), Some((vhost, queue))) = (&result, names) else {
                forwarder.sequences.settled(shard.group, number.seq);
                let answered = (me, String::new());
                forwarder
                    .lanes
                    .answered(&forwarder, shard.group, 1, Vec::new(), answered);
                return done(result);
            };
            let why = e.to_string();
            let forward = Forward {
                group: shard.group,
                seq: Some(number.seq),
                body: encode_publish((&vhost, &queue), &payload, Some(&number)),
                done: Some(forwarder.settling(shard.group, number.seq, Some(done))),
                shard: Some(shard.raft.metrics()),
                deadline,
            };
            forwarder
                .lanes
                .answered(&forwarder, shard.group, 1, vec![forward], (me, why));
        })
    }

    /// Queues `forwards` (in order) for node `node`.
    fn send(self: &Arc<Self>, node: u64, forwards: Vec<Forward>) {
        for unsent in self.queue(node, forwards) {
            failed(unsent.done, "this node is stopping");
        }
    }

    /// Publishes `forwards` (one shard's, in order) into the queues this node now hosts.
    fn publish_here(self: &Arc<Self>, forwards: Vec<Forward>) {
        let Some(server) = self.here.upgrade() else {
            let outcomes =
                vec![Err(Refusal::Final("this node is stopping".into())); forwards.len()];
            return self.settle(self.node(), forwards, outcomes);
        };
        let floor = self.floor(&forwards);
        let answers: Vec<_> = forwards
            .iter()
            .map(|f| server.publish(floor, &f.body))
            .collect();
        let forwarder = self.clone();
        tokio::spawn(async move {
            let outcomes = outcomes(answers).await;
            let me = forwarder.node();
            forwarder.settle(me, forwards, outcomes);
        });
    }

    /// The floor that goes with `forwards` (one shard's): this node's lowest unsettled number in
    /// their shard (order.rs), 0 for a classic queue's.
    fn floor(&self, forwards: &[Forward]) -> u64 {
        match forwards.first() {
            Some(f) if f.seq.is_some() => self.sequences.floor(f.group),
            _ => 0,
        }
    }

    /// Calls each publish's confirm with its outcome from node `from`, or sends it again.
    fn settle(
        self: &Arc<Self>,
        from: u64,
        forwards: Vec<Forward>,
        outcomes: Vec<Result<(), Refusal>>,
    ) {
        let group = forwards.first().map_or(0, |f| f.group);
        let numbered = forwards.iter().filter(|f| f.seq.is_some()).count();
        let mut again = Vec::new();
        let mut last_why = String::new();
        for (forward, outcome) in forwards.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    if let Some(done) = forward.done {
                        done(Ok(()));
                    }
                }
                Err(Refusal::Again(why)) if forward.seq.is_some() && forward.may_resend() => {
                    last_why = why;
                    again.push(forward);
                }
                Err(refusal) => failed(forward.done, refusal.why()),
            }
        }
        if numbered > 0 {
            self.lanes
                .answered(self, group, numbered, again, (from, last_why));
        }
    }
}

impl Outlet for Forwarder {
    fn node(&self) -> u64 {
        self.sequences.from.node
    }

    fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    fn dispatch(self: &Arc<Self>, node: u64, batch: Vec<Forward>) {
        if node == self.node() {
            self.publish_here(batch);
        } else {
            self.send(node, batch);
        }
    }

    fn queue(self: &Arc<Self>, node: u64, batch: Vec<Forward>) -> Vec<Forward> {
        let mut peers = self.peers.lock();
        let queue = peers.entry(node).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(forward_to(Arc::downgrade(self), node, rx));
            tx
        });
        let mut unsent = Vec::new();
        for forward in batch {
            if let Err(mpsc::error::SendError(forward)) = queue.send(forward) {
                unsent.push(forward);
            }
        }
        unsent
    }
}

/// Drains one peer's queue of forwarded publishes in order, [`FORWARDS_IN_FLIGHT`] at a time,
/// consecutive ones for the same shard together (up to [`FORWARD_BATCH`]).
async fn forward_to(
    forwarder: Weak<Forwarder>,
    peer: u64,
    mut queue: mpsc::UnboundedReceiver<Forward>,
) {
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
        let Some(forwarder) = forwarder.upgrade() else {
            return batch
                .into_iter()
                .for_each(|f| failed(f.done, "this node is stopping"));
        };
        send_batch(&forwarder, peer, batch, permit);
    }
}

/// Sends `batch` (one shard's publishes, in order) to `peer` as one request; each publisher's
/// confirm gets its message's outcome, or the publishes go to the next host.
fn send_batch(
    forwarder: &Arc<Forwarder>,
    peer: u64,
    mut batch: Vec<Forward>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let now = Instant::now();
    let timeout = batch
        .iter()
        .map(|f| f.deadline.saturating_duration_since(now))
        .max()
        .unwrap_or_default();
    let mut shard = batch[0].shard.clone();
    let body = encode_batch(forwarder.floor(&batch), batch.iter().map(|f| &f.body));
    let call = forwarder
        .links
        .start_call(peer, batch[0].group, rpc::PUBLISH_BATCH, body);
    let forwarder = forwarder.clone();
    tokio::spawn(async move {
        // A host that stops leading (paused, cut off) may never answer: its publishes go to the
        // shard's new host as soon as this node sees one (stored there at most once).
        let answer = match call {
            Ok(call) => tokio::select! {
                answer = call.answer(timeout) => answer.map_err(|e| e.to_string()),
                () = leader_changed(shard.as_mut(), peer) => {
                    Err("the queue's host changed before it answered".to_string())
                }
            },
            Err(e) => Err(e.to_string()),
        };
        drop(permit);
        let outcomes = answer
            .and_then(|body| decode_outcomes(&body, batch.len()))
            .unwrap_or_else(|why| vec![Err(Refusal::Again(why)); batch.len()]);
        forwarder.settle(peer, std::mem::take(&mut batch), outcomes);
    });
}

/// Done when the shard's metrics name a leader other than `leader` (never, if they stop or there
/// is no shard).
async fn leader_changed(metrics: Option<&mut ShardMetrics>, leader: u64) {
    match metrics {
        Some(metrics) => {
            leader_where(metrics, |l| l != leader).await;
        }
        None => std::future::pending().await,
    }
}
