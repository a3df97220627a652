//! The journal of every quorum queue on this node: each write goes to its queue's shard (or, for
//! a queue another node hosts, an acknowledgement goes to that node as a settle).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use warren_storage::log::record::Record;
use warren_storage::store::Completion;

use super::shard::{failed, ShardGroup};
use crate::cluster::raft::shard::{placed_shard, shard_of};
use crate::cluster::raft::QueueOp;
use crate::queue::sink::Journal;

/// The journal of every quorum queue on this node: each write goes to its queue's shard. Made
/// before the cluster starts (vhosts restore their queues first); until the shards are attached,
/// and for a shard this node does not lead, a write fails (a publisher gets basic.nack).
#[derive(Default)]
pub struct ShardJournal {
    shards: OnceLock<Vec<Arc<ShardGroup>>>,
    /// Consumers of queues this node does not host, and other nodes' of queues it hosts.
    pub subscriptions: super::subscribe::Subscriptions,
    /// This node's consumers of streams other nodes hold.
    pub streams: super::StreamReads,
    /// Message ids for every shard this node leads: above each shard's replica when it took over.
    pub(super) next_id: AtomicU64,
    /// How a change this node decides itself reaches the metadata group (set when it starts).
    proposer: OnceLock<Propose>,
    /// Where messages for queues hosted elsewhere leave, and how long their answer may take.
    pub(super) forwarder: OnceLock<(Arc<super::Forwarder>, std::time::Duration)>,
    /// This node's id (set when the cluster starts).
    pub(super) node: OnceLock<u64>,
    /// The shard group each of this node's quorum queues (by record name) was placed in, as its
    /// record says; a queue recorded before placement is in the group its name hashes to.
    placements: dashmap::DashMap<String, u32>,
    /// The publishes other nodes forwarded that this node is storing now (sent.rs).
    pub(super) storing: super::sent::Storing,
    /// The next number this node expects from each sender of publishes into a shard (order.rs).
    pub(super) arrivals: super::order::Arrivals,
}

impl std::fmt::Debug for ShardJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardJournal")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

/// How this node proposes a metadata change it decides itself (an unused queue's deletion).
pub(crate) type Propose = Box<dyn Fn(crate::meta::MetaCommand) + Send + Sync>;

/// A queue found unused is deleted through the metadata group, by the node that holds it only
/// (its live queue alone knows whether it is in use: other nodes' consumers are subscribed there).
impl crate::queue::sink::MetaProposer for ShardJournal {
    fn propose_deletion(&self, vhost: &str, queue: &crate::queue::Queue) {
        if !self.holds(queue) {
            return;
        }
        if let Some(propose) = self.proposer.get() {
            let (vhost, queue_name) = (vhost.into(), queue.name().clone());
            propose(match queue.spec.home {
                Some(home) => crate::meta::MetaCommand::RetireQueue {
                    vhost,
                    queue: queue_name,
                    home,
                },
                None => crate::meta::MetaCommand::DeleteQueue {
                    vhost,
                    queue: queue_name,
                },
            });
        }
    }
}

impl ShardJournal {
    pub(crate) fn set_proposer(&self, propose: Propose) {
        let _ = self.proposer.set(propose);
    }

    pub(crate) fn attach(
        &self,
        shards: Vec<Arc<ShardGroup>>,
        forwarder: Arc<super::Forwarder>,
        timeout: std::time::Duration,
    ) {
        if let Some(shard) = shards.first() {
            let _ = self.node.set(shard.node_id());
        }
        let _ = self.shards.set(shards);
        let _ = self.forwarder.set((forwarder, timeout));
    }

    /// Whether this node holds the live `queue`: a quorum queue whose shard it leads, a classic
    /// queue whose home it is.
    pub fn holds(&self, queue: &crate::queue::Queue) -> bool {
        match (queue.spec.home, queue.record_name()) {
            (Some(home), _) => self.node.get() == Some(&home.node),
            (None, Some(record)) if queue.args.quorum => self.hosts(record),
            _ => false,
        }
    }

    /// Sends a message for classic queue `queue` of `vhost`, whose home is `node`, there; `done`
    /// (a publisher's confirm) gets the home's answer.
    pub(crate) fn send_home(
        &self,
        node: u64,
        names: (&str, &str),
        message: &crate::message::Message,
        done: Option<Completion>,
    ) {
        match self.forwarder.get() {
            Some((forwarder, timeout)) => forwarder.publish(
                (super::target::Target::home(node), *timeout),
                names,
                message,
                done,
            ),
            None => super::shard::failed(done, "this node has not joined its cluster yet"),
        }
    }

    /// Sends a message for quorum queue `queue` of `vhost` (record name `record`), which another
    /// node hosts, to that node; `done` (a publisher's confirm) gets the host's answer.
    pub(crate) fn send_to_host(
        &self,
        record: &str,
        names: (&str, &str),
        message: &crate::message::Message,
        done: Option<Completion>,
    ) {
        match (self.shard(record), self.forwarder.get()) {
            (Some(shard), Some((forwarder, timeout))) => forwarder.publish(
                (super::target::Target::host(shard), *timeout),
                names,
                message,
                done,
            ),
            _ => super::shard::failed(done, "this node has not joined its cluster yet"),
        }
    }

    /// A publisher's confirm of a message this node stores as its queue's host (`ops`: its
    /// enqueue): numbered like a forwarded publish, so that if the write fails (this node lost
    /// the shard's leadership) the publish goes to the shard's next host instead of failing, and
    /// is stored there once. Other writes keep `done` as it is.
    fn resendable(
        &self,
        shard: &Arc<ShardGroup>,
        queue: &str,
        ops: &mut Vec<QueueOp>,
        done: Completion,
    ) -> Completion {
        let (Some((forwarder, timeout)), [QueueOp::Enqueue { payload, .. }]) =
            (self.forwarder.get(), &ops[..])
        else {
            return done;
        };
        let payload = payload.clone();
        let number = forwarder.number_here(shard.group);
        ops.push(number.mark());
        forwarder.resend_on_failure((shard, *timeout), number, (queue, payload), done)
    }

    /// The shard of the queue whose record name is `queue`.
    pub fn shard(&self, queue: &str) -> Option<&Arc<ShardGroup>> {
        let shards = self.shards.get()?;
        shards.get((self.shard_number(queue, shards.len()) - 1) as usize)
    }

    /// The shard group (1..=`shards`) of the queue whose record name is `queue`: where its record
    /// placed it, or where its name hashes to.
    pub fn shard_number(&self, queue: &str, shards: usize) -> u32 {
        let placed = self.placements.get(queue).map(|p| *p);
        placed_shard(placed, queue, shards as u16)
    }

    /// Whether this node hosts the queue whose record name is `queue` (leads its shard).
    pub fn hosts(&self, queue: &str) -> bool {
        self.hosted_shard(queue).is_some()
    }

    /// The shard of the queue whose record name is `queue`, when this node hosts it.
    fn hosted_shard(&self, queue: &str) -> Option<&Arc<ShardGroup>> {
        self.shard(queue).filter(|s| s.epoch().is_some())
    }

    /// Whether a message published on this node into the queue whose record name is `queue` goes
    /// into the queue here: this node hosts it, and none of its shard's earlier publishes from
    /// here is still on its way to the previous host (lanes.rs).
    pub fn publishes_here(&self, queue: &str) -> bool {
        let Some(shard) = self.hosted_shard(queue) else {
            return false;
        };
        self.forwarder
            .get()
            .is_none_or(|(f, _)| f.in_order_here(shard.group))
    }
}

impl Journal for ShardJournal {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn forward(
        &self,
        vhost: &str,
        queue: &crate::queue::Queue,
        message: &Arc<crate::message::Message>,
    ) -> bool {
        match queue.record_name() {
            Some(record) if self.forwarder.get().is_some() && !self.publishes_here(record) => {
                self.send_to_host(record, (vhost, queue.name().as_str()), message, None);
                true
            }
            _ => false,
        }
    }

    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        self.write_to_shard(records, done, None);
    }

    fn delivers_committed(&self) -> bool {
        true
    }

    fn write_applied(
        &self,
        records: Vec<Record>,
        done: Option<Completion>,
        applied: crate::queue::sink::Applied,
    ) {
        self.write_to_shard(records, done, Some(applied));
    }

    /// `client-local` (RabbitMQ's default) places a new queue in a shard this node leads, so its
    /// publishers and consumers here need no hop to another node; spread over those shards by the
    /// name's hash. `balanced`, the others, and a node that leads no shard: the name's hash over
    /// every shard (the leaders of which are spread over the nodes).
    fn place(&self, queue: &str, locator: Option<&str>) -> Option<u32> {
        let shards = self.shards.get()?;
        let hashed = shard_of(queue, shards.len() as u16);
        // Led, whether or not it hosts their queues yet (it will once its first entry applies);
        // those it is the preferred leader of first, which cluster::balance does not move away.
        let led: Vec<&Arc<ShardGroup>> = shards.iter().filter(|s| s.leads()).collect();
        let kept: Vec<&Arc<ShardGroup>> = led
            .iter()
            .copied()
            .filter(|s| crate::cluster::balance::prefers_me(s))
            .collect();
        let led: Vec<u32> = if kept.is_empty() { led } else { kept }
            .iter()
            .map(|s| s.group)
            .collect();
        Some(match locator {
            None | Some("client-local") if !led.is_empty() => {
                led[(shard_of(queue, led.len() as u16) - 1) as usize]
            }
            _ => hashed,
        })
    }

    fn placed(&self, queue: &str, shard: u32) {
        self.placements.insert(queue.to_string(), shard);
    }

    fn unplaced(&self, queue: &str) {
        self.placements.remove(queue);
    }

    fn returned(&self, queue: &str, id: u64) {
        // Only the host's live queue counts; a copy's count is its own consumers' business.
        if let Some(shard) = self.hosted_shard(queue) {
            let op = QueueOp::Returned {
                queue: queue.to_string(),
                id,
            };
            shard.submit(vec![op], None);
        }
    }
}

impl ShardJournal {
    /// Writes `records` to their queue's shard; `done` gets the answer, and `applied` (with
    /// [`Journal::write_applied`]) is told once this node applied them.
    fn write_to_shard(
        &self,
        records: Vec<Record>,
        done: Option<Completion>,
        applied: Option<crate::queue::sink::Applied>,
    ) {
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
            if let Some(name) = op_queue(&op) {
                queue.get_or_insert_with(|| name.to_string());
            }
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
        let done = match super::sent::take_mark(&queue, &ops) {
            // A publish another node forwarded: its number goes with it.
            Some(mark) => {
                ops.push(mark);
                done
            }
            None => done.map(|done| self.resendable(shard, &queue, &mut ops, done)),
        };
        if shard.epoch().is_none() && ops.iter().all(|op| matches!(op, QueueOp::Remove { .. })) {
            // This node's consumers settled messages staged from the queue's host.
            let ids = ops
                .iter()
                .filter_map(|op| match op {
                    QueueOp::Remove { id, .. } => Some(*id),
                    _ => None,
                })
                .collect();
            if self.subscriptions.subscriber.settle_at_host(&queue, ids) {
                if let Some(done) = done {
                    done(Ok(()));
                }
                return;
            }
        }
        let done = match applied {
            None => done,
            // The queue here hands the message out once this shard applied it (a resend to
            // another host on failure is that host's to deliver).
            Some(applied) => Some(Box::new(move |result: std::io::Result<()>| {
                let ok = result.is_ok();
                if let Some(done) = done {
                    done(result);
                }
                if ok {
                    applied(crate::time::Now::read());
                }
            }) as Completion),
        };
        shard.submit(ops, done);
    }
}

fn op_queue(op: &QueueOp) -> Option<&str> {
    match op {
        QueueOp::Enqueue { queue, .. }
        | QueueOp::Remove { queue, .. }
        | QueueOp::Drop { queue }
        | QueueOp::Returned { queue, .. } => Some(queue),
        QueueOp::Sent { .. } => None,
    }
}

/// The journal of this node's copies of classic queues other nodes hold (their home): a copy
/// holds only what its consumers were handed from the home, so an acknowledgement of it is a
/// settle sent there, and a dead letter into it goes there.
#[derive(Debug)]
pub struct CopiesJournal(pub Arc<ShardJournal>);

impl Journal for CopiesJournal {
    fn next_id(&self) -> u64 {
        self.0.next_id()
    }

    fn forward(
        &self,
        vhost: &str,
        queue: &crate::queue::Queue,
        message: &Arc<crate::message::Message>,
    ) -> bool {
        let Some(home) = queue.spec.home else {
            return false;
        };
        self.0
            .send_home(home.node, (vhost, queue.name().as_str()), message, None);
        true
    }

    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        let mut settles: Vec<(String, Vec<u64>)> = Vec::new();
        for record in records {
            match record {
                Record::Remove { queue, id } => match settles.iter_mut().find(|(q, _)| *q == queue)
                {
                    Some((_, ids)) => ids.push(id),
                    None => settles.push((queue, vec![id])),
                },
                // A copy deleted by the metadata group: the home drops the messages.
                Record::DropQueue { .. } => {}
                other => {
                    tracing::error!(record = ?other, "a copy of another node's queue stores nothing");
                }
            }
        }
        for (queue, ids) in settles {
            self.0.subscriptions.subscriber.settle_at_host(&queue, ids);
        }
        if let Some(done) = done {
            done(Ok(()));
        }
    }
}
