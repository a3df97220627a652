//! This node's member of a queue shard group, and the writer that proposes the journal writes of
//! the queues it hosts to it, in order and under the leadership it hosts them with.

use std::collections::HashSet;
use std::io;

use openraft::impls::ProgressResponder;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use warren_storage::store::Completion;

use crate::cluster::raft::{Proposal, QueueOp, Types};

/// The leadership a node hosts a shard's queues under.
pub type Epoch = openraft::type_config::alias::CommittedLeaderIdOf<Types>;

/// Writes taken into one proposal at most.
const BATCH: usize = 512;
/// Message bytes after which a proposal takes no more writes: an entry stays well inside a link
/// frame, so a lagging follower's catch-up (up to `max_payload_entries` entries per request) is a
/// few frames, not a joined request of hundreds of megabytes.
const BATCH_BYTES: usize = 1024 * 1024;

/// The queues a node restored under its current leadership of a shard, and where that
/// leadership's own message ids start.
#[derive(Default)]
pub(crate) struct Hosted {
    pub(crate) queues: HashSet<String>,
    /// The replica's next message id when this node took the shard over: every message of an
    /// earlier host is below it, every one this node stores at or above it.
    pub(crate) first_id: u64,
}

/// How long settles (a consumer's acks, returns) with nothing else to propose wait for a write
/// that cannot (a publish), to share its entry. A consumer's ack and the next publish reach the
/// host together (it sent the confirm and the delivery together); proposed one after the other
/// they are two rounds of appends and fsyncs on every node, the publish's waiting for the
/// settle's. Nothing waits on a settle: a settle held when this node stops leading is a
/// redelivery after the failover, as one not yet committed is.
const SETTLE_HOLD: std::time::Duration = std::time::Duration::from_millis(2);

/// This node's member of a queue shard group.
pub struct ShardGroup {
    pub group: u32,
    /// How many shards the cluster has.
    pub shards: u16,
    pub raft: crate::cluster::raft::shard::ShardRaft,
    pub machine: crate::cluster::raft::shard::ShardMachine,
    pub(crate) node_id: u64,
    /// The leadership this node hosts the shard's quorum queues under (hosting.rs), if it does.
    pub(crate) epoch: parking_lot::Mutex<Option<Epoch>>,
    /// The queues restored under the current leadership (held while restoring, so a queue is
    /// restored once: by the take-over, or when its declaration is applied after it).
    pub(crate) hosted: parking_lot::Mutex<Hosted>,
    /// The journal writes of the hosted queues, proposed in order (below).
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
            ops: ops.into(),
            ..Default::default()
        };
        self.raft
            .client_write(proposal)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The group's Raft metrics on this node (vote, leader, log and applied index).
    pub fn metrics(&self) -> openraft::RaftMetrics<crate::cluster::raft::Types> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn leads(&self) -> bool {
        self.leader() == Some(self.node_id)
    }

    /// The shard's leader as this node knows it.
    pub fn leader(&self) -> Option<u64> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.server_metrics().borrow_watched().current_leader
    }

    /// The group's name in `cluster status` and `transfer-leadership --group`.
    pub fn name(&self) -> String {
        format!("shard-{}", self.group)
    }

    /// The group as this node sees it, with the messages its replica holds.
    pub fn status(&self) -> Value {
        let (messages, _) = self.machine.summary();
        let mut status = crate::cluster::raft::group_status(&self.metrics());
        status["group"] = json!(self.name());
        status["messages"] = json!(messages);
        // A new leader hosts the shard's queues once its first entry is applied; until then
        // publishes on it are refused.
        status["hosting"] = json!(self.epoch().is_some());
        status
    }
}

/// A journal write waiting for its proposal.
pub(crate) struct Write {
    ops: Vec<QueueOp>,
    done: Option<Completion>,
    epoch: Epoch,
}

impl Write {
    /// Whether its proposal may wait: nobody waits on it, and it only settles messages.
    fn can_wait(&self) -> bool {
        self.done.is_none()
            && self
                .ops
                .iter()
                .all(|op| matches!(op, QueueOp::Remove { .. } | QueueOp::Returned { .. }))
    }

    /// The message bytes it carries.
    fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                QueueOp::Enqueue { payload, .. } => payload.len(),
                _ => 0,
            })
            .sum()
    }
}

pub(crate) fn failed(done: Option<Completion>, why: &str) {
    if let Some(done) = done {
        done(Err(io::Error::other(why.to_string())));
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
    raft: crate::cluster::raft::shard::ShardRaft,
    node_id: u64,
    mut writes: mpsc::UnboundedReceiver<Write>,
) {
    let mut pending: Vec<Write> = Vec::new();
    while let Some(first) = writes.recv().await {
        let mut bytes = first.bytes();
        // Whether every write gathered so far may wait (for a publish to share their entry).
        let mut can_wait = first.can_wait();
        pending.push(first);
        let hold = tokio::time::Instant::now() + SETTLE_HOLD;
        while pending.len() < BATCH && bytes < BATCH_BYTES {
            let more = match writes.try_recv() {
                Ok(more) => more,
                Err(mpsc::error::TryRecvError::Empty) if can_wait => {
                    match tokio::time::timeout_at(hold, writes.recv()).await {
                        Ok(Some(more)) => more,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            bytes += more.bytes();
            can_wait &= more.can_wait();
            pending.push(more);
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

async fn propose(raft: &crate::cluster::raft::shard::ShardRaft, node_id: u64, batch: Vec<Write>) {
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
        ops: ops.into(),
        ..Default::default()
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
