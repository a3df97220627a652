//! Quorum queues on a cluster node (HA.md §5.3, with the departure docs/ARCHITECTURE.md records):
//! the node that leads a queue's shard group hosts the queue — its live `Queue`, with every feature
//! of a single node's — and the shard is the queue's journal. What the queue would write to the
//! local log (`Enqueue`, `Remove`, `DropQueue`) is proposed to the shard instead, in the order the
//! queue wrote it, and a publisher's confirm waits until a majority has the entry on disk and this
//! node has applied it.
//!
//! Hosting follows leadership. A node that becomes a shard's leader first commits a blank entry
//! (so every entry of earlier terms is applied to its replica), then restores each of the shard's
//! queues from the replica, as a single node restores durable queues from its log. Its writes carry
//! that leadership (openraft's conditional write), so a write queued under an earlier leadership of
//! this node is refused rather than appended later. A node that stops leading empties its copies
//! (`Queue::vacate`: ready messages go, consumers are told with basic.cancel, what was handed out is
//! void) and the shard's new leader carries on from its replica.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use openraft::impls::ProgressResponder;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use warren_storage::log::record::Record;
use warren_storage::store::Completion;

use super::link::Links;
use super::raft::codec::{decode, encode};
use super::raft::network::bad_request;
use super::raft::rpc;
use super::raft::shard::shard_of;
use super::raft::{Proposal, QueueOp, Types};
use crate::message::Message;
use crate::queue::sink::{Journal, WaitsForWrites};
use crate::queue::{Enqueued, Queue};

/// The leadership a node hosts a shard's queues under.
pub type Epoch = openraft::type_config::alias::CommittedLeaderIdOf<Types>;

/// Writes taken into one proposal at most.
const BATCH: usize = 512;

/// This node's member of a queue shard group.
pub struct ShardGroup {
    pub group: u32,
    /// How many shards the cluster has.
    pub shards: u16,
    pub raft: super::raft::shard::ShardRaft,
    pub machine: super::raft::shard::ShardMachine,
    pub(crate) node_id: u64,
    /// The leadership this node hosts the shard's quorum queues under (quorum.rs), if it does.
    pub(crate) epoch: parking_lot::Mutex<Option<Epoch>>,
    /// The queues restored under the current leadership (held while restoring, so a queue is
    /// restored once: by the take-over, or when its declaration is applied after it).
    pub(crate) hosted: parking_lot::Mutex<HashSet<String>>,
    /// The journal writes of the hosted queues, proposed in order (quorum.rs).
    pub(crate) writes: tokio::sync::mpsc::UnboundedSender<Write>,
}

impl ShardGroup {
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The leadership this node hosts the shard's queues under (None: it does not host them).
    pub fn epoch(&self) -> Option<Epoch> {
        *self.epoch.lock()
    }

    pub(crate) fn set_epoch(&self, epoch: Option<Epoch>) {
        *self.epoch.lock() = epoch;
    }

    /// Appends `ops` to the shard's log with this node as its leader; done once a majority has
    /// them on disk and this node has applied them.
    pub async fn write(&self, ops: Vec<QueueOp>) -> Result<(), String> {
        let proposal = Proposal {
            origin: self.node_id,
            commands: Vec::new(),
            ops,
        };
        self.raft
            .client_write(proposal)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn metrics(&self) -> openraft::RaftMetrics<super::raft::Types> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn leads(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    /// The shard's leader as this node knows it.
    pub fn leader(&self) -> Option<u64> {
        self.metrics().current_leader
    }

    /// The group as this node sees it, with the messages its replica holds.
    pub fn status(&self) -> Value {
        let (messages, _) = self.machine.summary();
        let mut status = super::raft::group_status(&self.metrics());
        status["group"] = json!(format!("shard-{}", self.group));
        status["messages"] = json!(messages);
        status
    }
}

/// What the hosting of quorum queues needs from the broker.
pub trait QuorumHolder: Send + Sync + 'static {
    /// Every quorum queue of every vhost, with its record name.
    fn quorum_queues(&self) -> Vec<(String, Arc<Queue>)>;
    /// A message as a queue holds it, from its stored form.
    fn message(&self, payload: &Bytes) -> Option<Arc<Message>>;
    /// Publishes a message forwarded by another node into quorum queue `queue` of `vhost`.
    fn publish(
        &self,
        vhost: &str,
        queue: &str,
        message: Arc<Message>,
        confirm: &dyn WaitsForWrites,
    ) -> Enqueued;
}

/// A journal write waiting for its proposal.
pub(crate) struct Write {
    ops: Vec<QueueOp>,
    done: Option<Completion>,
    epoch: Epoch,
}

/// The journal of every quorum queue on this node: each write goes to its queue's shard. Made
/// before the cluster starts (vhosts restore their queues first); until the shards are attached,
/// and for a shard this node does not lead, a write fails (a publisher gets basic.nack).
#[derive(Default)]
pub struct ShardJournal {
    shards: OnceLock<Vec<Arc<ShardGroup>>>,
    /// Message ids for every shard this node leads: above each shard's replica when it took over.
    next_id: AtomicU64,
}

impl std::fmt::Debug for ShardJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardJournal")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

fn failed(done: Option<Completion>, why: &str) {
    if let Some(done) = done {
        done(Err(io::Error::other(why.to_string())));
    }
}

impl ShardJournal {
    pub(crate) fn attach(&self, shards: Vec<Arc<ShardGroup>>) {
        let _ = self.shards.set(shards);
    }

    /// The shard of the queue whose record name is `queue`.
    pub fn shard(&self, queue: &str) -> Option<&Arc<ShardGroup>> {
        let shards = self.shards.get()?;
        let n = shard_of(queue, shards.len() as u16);
        shards.get((n - 1) as usize)
    }

    /// Whether this node hosts the queue whose record name is `queue` (leads its shard).
    pub fn hosts(&self, queue: &str) -> bool {
        self.shard(queue).is_some_and(|s| s.epoch().is_some())
    }
}

impl Journal for ShardJournal {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        let mut ops = Vec::with_capacity(records.len());
        let mut queue = None;
        for record in records {
            let op = match record {
                Record::Enqueue { queue, id, payload } => QueueOp::Enqueue { queue, id, payload },
                Record::Remove { queue, id } => QueueOp::Remove { queue, id },
                Record::DropQueue { queue } => QueueOp::Drop { queue },
                other => {
                    tracing::error!(record = ?other, "not a queue record: not written to a shard");
                    continue;
                }
            };
            queue.get_or_insert_with(|| op_queue(&op).to_string());
            ops.push(op);
        }
        let Some(queue) = queue else {
            if let Some(done) = done {
                done(Ok(()));
            }
            return;
        };
        let Some(shard) = self.shard(&queue) else {
            return failed(done, "this node has not joined its cluster yet");
        };
        shard.submit(ops, done);
    }
}

fn op_queue(op: &QueueOp) -> &str {
    match op {
        QueueOp::Enqueue { queue, .. }
        | QueueOp::Remove { queue, .. }
        | QueueOp::Drop { queue } => queue,
    }
}

impl ShardGroup {
    /// Queues `ops` for the shard under the leadership this node hosts it with.
    pub(crate) fn submit(&self, ops: Vec<QueueOp>, done: Option<Completion>) {
        let Some(epoch) = self.epoch() else {
            return failed(done, "this node does not lead the queue's shard");
        };
        if let Err(mpsc::error::SendError(write)) = self.writes.send(Write { ops, done, epoch }) {
            failed(write.done, "the shard has stopped");
        }
    }
}

/// Proposes queued writes in order, a batch of those under the same leadership per entry; each
/// write's completion is called once its entry is applied here (or refused).
pub(crate) async fn propose_writes(
    raft: super::raft::shard::ShardRaft,
    node_id: u64,
    mut writes: mpsc::UnboundedReceiver<Write>,
) {
    let mut pending: Vec<Write> = Vec::new();
    while let Some(first) = writes.recv().await {
        pending.push(first);
        while pending.len() < BATCH {
            match writes.try_recv() {
                Ok(more) => pending.push(more),
                Err(_) => break,
            }
        }
        let mut batch = Vec::new();
        for write in pending.drain(..) {
            if batch
                .first()
                .is_some_and(|w: &Write| w.epoch != write.epoch)
            {
                propose(&raft, node_id, std::mem::take(&mut batch)).await;
            }
            batch.push(write);
        }
        propose(&raft, node_id, batch).await;
    }
}

async fn propose(raft: &super::raft::shard::ShardRaft, node_id: u64, batch: Vec<Write>) {
    let Some(epoch) = batch.first().map(|w| w.epoch) else {
        return;
    };
    let mut ops = Vec::new();
    let mut done = Vec::new();
    for write in batch {
        ops.extend(write.ops);
        done.extend(write.done);
    }
    let proposal = Proposal {
        origin: node_id,
        commands: Vec::new(),
        ops,
    };
    let (responder, answer) = ProgressResponder::complete_only();
    let sent = raft
        .write(proposal)
        .with_leader(epoch)
        .responder(responder)
        .await;
    if let Err(e) = sent {
        let why = format!("the shard stopped: {e}");
        return done
            .into_iter()
            .for_each(|d| d(Err(io::Error::other(why.clone()))));
    }
    tokio::spawn(async move {
        let result = match answer.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("not written to the shard: {e}")),
            Err(_) => Err("the shard stopped before answering".to_string()),
        };
        for d in done {
            d(result.clone().map_err(io::Error::other));
        }
    });
}

/// Follows the shard's leadership on this node: takes its queues over when it becomes the
/// leader, gives them up when it stops being one. The broker is held only while its queues are
/// changed, never across a wait, so a stopping broker is never kept alive by this task.
pub(crate) async fn host(
    shard: Arc<ShardGroup>,
    journal: Arc<ShardJournal>,
    holder: Weak<dyn QuorumHolder>,
) {
    let mut metrics = shard.raft.metrics();
    loop {
        let leading = {
            let m = metrics.borrow_watched();
            m.current_leader == Some(shard.node_id()) && m.state.is_leader()
        };
        let epoch = shard
            .raft
            .as_leader()
            .ok()
            .map(|l| l.to_committed_leader_id());
        let hosted = shard.epoch();
        if hosted.is_some() && (!leading || epoch != hosted) {
            let Some(holder) = holder.upgrade() else {
                return;
            };
            give_up(&shard, &*holder);
        }
        if let (true, None, Some(epoch)) = (leading, shard.epoch(), epoch) {
            // Applied when it returns, so the replica holds every entry of earlier leaders.
            match shard.raft.write_blank().await {
                Err(openraft::errors::RaftError::Fatal(_)) => return,
                Err(e) => {
                    tracing::debug!(group = shard.group, %e, "not hosting the shard's queues yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Ok(_) => {
                    let Some(holder) = holder.upgrade() else {
                        return;
                    };
                    if let Err(why) = take_over(&shard, &journal, &*holder, epoch) {
                        tracing::debug!(group = shard.group, %why, "not hosting the shard's queues yet");
                    }
                }
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The shard's quorum queues on this node.
fn queues_of(shard: &ShardGroup, holder: &dyn QuorumHolder) -> Vec<(String, Arc<Queue>)> {
    let shards = shard.shards;
    holder
        .quorum_queues()
        .into_iter()
        .filter(|(name, _)| shard_of(name, shards) == shard.group)
        .collect()
}

/// Hosts the shard's queues under `epoch`, once a blank entry of it is applied.
fn take_over(
    shard: &Arc<ShardGroup>,
    journal: &ShardJournal,
    holder: &dyn QuorumHolder,
    epoch: Epoch,
) -> Result<(), String> {
    let still = shard
        .raft
        .as_leader()
        .ok()
        .map(|l| l.to_committed_leader_id());
    if still.as_ref() != Some(&epoch) {
        return Err("the leadership changed while taking over".into());
    }
    let queues = queues_of(shard, holder);
    let (_, next_id) = shard.machine.queue_names();
    journal.next_id.fetch_max(next_id, Ordering::AcqRel);
    let mut hosted = shard.hosted.lock();
    hosted.clear();
    shard.set_epoch(Some(epoch));
    let mut restored = 0;
    for (name, queue) in &queues {
        if hosted.insert(name.clone()) {
            restored += restore(shard, holder, name, queue);
        }
    }
    drop(hosted);
    tracing::info!(
        group = shard.group,
        queues = queues.len(),
        messages = restored,
        "leading the shard: its quorum queues are hosted here"
    );
    Ok(())
}

/// Puts the replica's messages of `queue` (record name `name`) into its live copy; how many.
fn restore(shard: &ShardGroup, holder: &dyn QuorumHolder, name: &str, queue: &Arc<Queue>) -> usize {
    let (stored, _) = shard.machine.messages(name);
    let mut batch = Vec::with_capacity(stored.len());
    for (id, payload) in stored {
        match holder.message(&payload) {
            Some(message) => batch.push((id, message)),
            None => {
                tracing::error!(queue = %name, id, "a replicated message does not decode; skipped")
            }
        }
    }
    let n = batch.len();
    queue.restore(batch, crate::time::Now::read());
    n
}

fn give_up(shard: &ShardGroup, holder: &dyn QuorumHolder) {
    let mut hosted = shard.hosted.lock();
    hosted.clear();
    shard.set_epoch(None);
    drop(hosted);
    let now = crate::time::Now::read();
    for (_, queue) in queues_of(shard, holder) {
        for consumer in queue.vacate(now) {
            consumer.sink.cancelled(consumer.clone());
        }
    }
    tracing::info!(
        group = shard.group,
        "no longer leading the shard: its quorum queues are given up here"
    );
}

impl ShardJournal {
    /// A quorum queue this node now has (its declaration was applied here): when this node hosts
    /// its shard and has not restored it yet (the declaration was applied after the take-over),
    /// the replica's messages go into it.
    pub fn adopt(&self, holder: &dyn QuorumHolder, queue: &Arc<Queue>) {
        let Some(name) = queue.record_name() else {
            return;
        };
        let Some(shard) = self.shard(name) else {
            return;
        };
        let mut hosted = shard.hosted.lock();
        if shard.epoch().is_some() && hosted.insert(name.to_string()) {
            restore(shard, holder, name, queue);
        }
    }

    /// A quorum queue deleted (its deletion was applied here): the node hosting its shard drops
    /// its messages from the replica.
    pub fn forget(&self, name: &str) {
        let Some(shard) = self.shard(name) else {
            return;
        };
        let mut hosted = shard.hosted.lock();
        if shard.epoch().is_some() {
            hosted.remove(name);
            shard.submit(
                vec![QueueOp::Drop {
                    queue: name.to_string(),
                }],
                None,
            );
        }
    }
}

/// Sends a message published on this node to the node that hosts its quorum queue (the shard's
/// leader), in publish order; `done` (the publisher's confirm) is called with the host's answer:
/// ok once a majority has the message, an error (basic.nack) when there is no leader to send it
/// to, the link fails, or the host refuses it.
pub fn forward_publish(
    (links, shard, timeout): (&Arc<Links>, &ShardGroup, Duration),
    (vhost, queue): (&str, &str),
    message: &Message,
    done: Option<Completion>,
) {
    let me = shard.node_id();
    let Some(leader) = shard.leader().filter(|l| *l != me) else {
        return failed(done, "the queue's shard has no leader on another node now");
    };
    let body = Bytes::from(encode(|w| {
        w.bytes(vhost.as_bytes());
        w.bytes(queue.as_bytes());
        w.bytes(&message.stored_form());
    }));
    match links.start_call(leader, shard.group, rpc::PUBLISH, body) {
        Err(e) => failed(done, &e.to_string()),
        Ok(call) => {
            tokio::spawn(async move {
                let answer = call.answer(timeout).await;
                if let Some(done) = done {
                    done(answer.map(|_| ()).map_err(io::Error::other));
                }
            });
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
    pub groups: super::raft::network::GroupServer,
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
        let record = crate::meta::records::message_queue(&vhost, &queue);
        if !self.journal.hosts(&record) {
            return Err(format!("{NOT_HOSTING}: queue '{queue}' in vhost '{vhost}'"));
        }
        let holder = self.holder.upgrade().ok_or("the broker has stopped")?;
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

/// How a node that does not host a queue refuses a publish forwarded to it.
const NOT_HOSTING: &str = "this node does not host the queue";

impl crate::cluster::link::RequestHandler for QuorumServer {
    fn handle(
        &self,
        from: u64,
        group: u32,
        kind: u8,
        body: Bytes,
    ) -> futures_util::future::BoxFuture<'static, Result<Bytes, String>> {
        if kind != rpc::PUBLISH {
            return self.groups.handle(from, group, kind, body);
        }
        let answer = self.publish(&body);
        Box::pin(async move {
            match answer?.await {
                Ok(Ok(())) => Ok(Bytes::new()),
                Ok(Err(e)) => Err(format!("not stored: {e}")),
                Err(_) => Err("the queue stopped before answering".into()),
            }
        })
    }
}
