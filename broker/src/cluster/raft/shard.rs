//! A queue shard group (HA.md §1.3: a fixed number of groups, set at bootstrap, every node a
//! voter): the replicated messages of every quorum queue hashed to it. Its state machine is a
//! [`Replica`]: for each queue, the messages its leader's live queue journaled and has not yet
//! removed, by id — what a durable queue keeps in the local log, kept by a majority instead. A
//! node that takes over a shard's leadership restores its queues from its replica, as a single
//! node restores a durable queue from its log at start-up.
//!
//! The replica lives in memory; only its snapshots are written (`raft/<group>/sm/snapshot`). A
//! restarted node loads the latest snapshot and openraft applies the committed entries after it
//! again from the log (the log store keeps the committed index), so nothing else needs writing
//! per entry.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;

use super::codec::{decode, encode, DecodeError, Reader, Writer};
use super::log_store::{check_writes, snapshot_key, snapshot_record, write_durable, RecordWriter};
use super::{Answer, LogId, QueueOp, Sender, StoredMembership, Types};

pub type ShardRaft = openraft::Raft<Types, ShardMachine>;

/// The shard group (1..=shards) a quorum queue belongs to, from its record name (vhost and queue):
/// FNV-1a, so every node and every version computes the same.
pub fn shard_of(queue: &str, shards: u16) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in queue.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    1 + (hash % u64::from(shards.max(1))) as u32
}

/// The shard group (1..=shards) of a quorum queue whose record placed it in `placed` (None for a
/// queue recorded before placement, and for a number outside the shards): that, or [`shard_of`].
pub fn placed_shard(placed: Option<u32>, queue: &str, shards: u16) -> u32 {
    match placed {
        Some(n) if (1..=u32::from(shards)).contains(&n) => n,
        _ => shard_of(queue, shards),
    }
}

/// The first word of a replica's snapshot since it carries the counts of returns (before, the first
/// word was the next id, which never comes near it).
const SNAPSHOT_WITH_RETURNS: u64 = u64::MAX - 1;
/// The first word of a replica's snapshot since it also carries what each sender's forwarded
/// publishes it has applied (after the counts of returns).
const SNAPSHOT_WITH_SENT: u64 = u64::MAX - 2;

/// The messages of a shard's quorum queues, as applied so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replica {
    queues: BTreeMap<String, BTreeMap<u64, Bytes>>,
    /// The counts of returns of the messages that came back after a delivery (by queue and id).
    returns: BTreeMap<String, BTreeMap<u64, u64>>,
    /// Above every message id applied (a new leader's live queues number from here).
    next_id: u64,
    /// The forwarded publishes applied, by sending node: what a new host checks a resend against.
    sent: BTreeMap<u64, SentBy>,
}

/// The forwarded publishes of one node's current run that a shard has applied: those at or above
/// the lowest its sender may still send again (`floor`); every one below it is settled there.
#[derive(Debug, Clone, Default, PartialEq)]
struct SentBy {
    incarnation: u64,
    floor: u64,
    seqs: std::collections::BTreeSet<u64>,
}

impl Replica {
    pub fn apply(&mut self, op: &QueueOp) {
        match op {
            QueueOp::Enqueue { queue, id, payload } => {
                self.next_id = self.next_id.max(id.saturating_add(1));
                self.queues
                    .entry(queue.clone())
                    .or_default()
                    .insert(*id, payload.clone());
            }
            QueueOp::Remove { queue, id } => {
                if let Some(messages) = self.queues.get_mut(queue) {
                    messages.remove(id);
                    if messages.is_empty() {
                        self.queues.remove(queue);
                    }
                }
                if let Some(counts) = self.returns.get_mut(queue) {
                    counts.remove(id);
                    if counts.is_empty() {
                        self.returns.remove(queue);
                    }
                }
            }
            QueueOp::Drop { queue } => {
                self.queues.remove(queue);
                self.returns.remove(queue);
            }
            QueueOp::Returned { queue, id } => {
                if self.queues.get(queue).is_some_and(|m| m.contains_key(id)) {
                    *self
                        .returns
                        .entry(queue.clone())
                        .or_default()
                        .entry(*id)
                        .or_default() += 1;
                }
            }
            QueueOp::Sent { from, seq, floor } => {
                let by = self.sent.entry(from.node).or_default();
                if from.incarnation < by.incarnation {
                    // A late entry of the node's previous run: nothing of that run is resent.
                    return;
                }
                if from.incarnation > by.incarnation {
                    *by = SentBy {
                        incarnation: from.incarnation,
                        ..SentBy::default()
                    };
                }
                if *floor > by.floor {
                    by.floor = *floor;
                    // Floors rise by a few at a time: dropping from the front costs less than
                    // splitting the set.
                    while by.seqs.first().is_some_and(|s| s < floor) {
                        by.seqs.pop_first();
                    }
                }
                if *seq >= by.floor {
                    by.seqs.insert(*seq);
                }
            }
        }
    }

    /// Whether forwarded publish `seq` of `from` is applied already (or below what its sender
    /// may still send, so settled).
    pub fn was_sent(&self, from: &Sender, seq: u64) -> bool {
        self.sent.get(&from.node).is_some_and(|by| {
            by.incarnation == from.incarnation && (seq < by.floor || by.seqs.contains(&seq))
        })
    }

    /// The messages `queue` holds, in id order (stored form).
    pub fn messages(&self, queue: &str) -> Vec<(u64, Bytes)> {
        self.queues
            .get(queue)
            .map(|m| m.iter().map(|(id, p)| (*id, p.clone())).collect())
            .unwrap_or_default()
    }

    /// How often message `id` of `queue` came back after a delivery.
    pub fn returns(&self, queue: &str, id: u64) -> u64 {
        self.returns
            .get(queue)
            .and_then(|counts| counts.get(&id))
            .copied()
            .unwrap_or(0)
    }

    /// How many messages the replica holds, over all its queues.
    pub fn len(&self) -> usize {
        self.queues.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    fn write(&self, w: &mut Writer) {
        w.u64(SNAPSHOT_WITH_SENT);
        w.u64(self.next_id);
        w.u64(self.queues.len() as u64);
        for (queue, messages) in &self.queues {
            w.bytes(queue.as_bytes());
            w.u64(messages.len() as u64);
            for (id, payload) in messages {
                w.u64(*id);
                w.bytes(payload);
            }
        }
        w.u64(self.returns.len() as u64);
        for (queue, counts) in &self.returns {
            w.bytes(queue.as_bytes());
            w.u64(counts.len() as u64);
            for (id, n) in counts {
                w.u64(*id);
                w.u64(*n);
            }
        }
        w.u64(self.sent.len() as u64);
        for (node, by) in &self.sent {
            w.u64(*node);
            w.u64(by.incarnation);
            w.u64(by.floor);
            w.u64(by.seqs.len() as u64);
            for seq in &by.seqs {
                w.u64(*seq);
            }
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Replica, DecodeError> {
        // Snapshots written before the counts of returns were kept start with the next id, and
        // end after the messages.
        let first = r.u64()?;
        let with_sent = first == SNAPSHOT_WITH_SENT;
        let with_returns = with_sent || first == SNAPSHOT_WITH_RETURNS;
        let next_id = if with_returns { r.u64()? } else { first };
        let mut queues = BTreeMap::new();
        for _ in 0..r.count(16)? {
            let queue = r.string()?;
            let mut messages = BTreeMap::new();
            for _ in 0..r.count(16)? {
                let id = r.u64()?;
                messages.insert(id, Bytes::copy_from_slice(r.bytes()?));
            }
            queues.insert(queue, messages);
        }
        let mut returns = BTreeMap::new();
        if with_returns {
            for _ in 0..r.count(16)? {
                let queue = r.string()?;
                let mut counts = BTreeMap::new();
                for _ in 0..r.count(16)? {
                    counts.insert(r.u64()?, r.u64()?);
                }
                returns.insert(queue, counts);
            }
        }
        let mut sent = BTreeMap::new();
        if with_sent {
            for _ in 0..r.count(32)? {
                let node = r.u64()?;
                let (incarnation, floor) = (r.u64()?, r.u64()?);
                let seqs = (0..r.count(8)?)
                    .map(|_| r.u64())
                    .collect::<Result<_, _>>()?;
                sent.insert(
                    node,
                    SentBy {
                        incarnation,
                        floor,
                        seqs,
                    },
                );
            }
        }
        Ok(Replica {
            queues,
            returns,
            next_id,
            sent,
        })
    }
}

/// The state machine's state: the replica, what it has applied, and its latest snapshot.
#[derive(Default)]
struct Applied {
    replica: Replica,
    last: Option<LogId>,
    membership: StoredMembership,
    snapshot: Option<(SnapshotMetaOf<Types>, Vec<u8>)>,
}

/// A shard group's state machine on this node.
#[derive(Clone)]
pub struct ShardMachine {
    group: u32,
    writer: Arc<dyn RecordWriter>,
    applied: Arc<Mutex<Applied>>,
}

impl ShardMachine {
    /// The state machine of shard `group` as this node's latest snapshot of it left it.
    pub fn recover(
        group: u32,
        writer: Arc<dyn RecordWriter>,
        recovered: &BTreeMap<String, Bytes>,
    ) -> Result<ShardMachine, DecodeError> {
        let mut applied = Applied::default();
        if let Some(bytes) = recovered.get(&snapshot_key(group)) {
            let (meta, data) = decode(bytes, |r| r.snapshot_body())?;
            applied.replica = decode(&data, Replica::read)?;
            applied.last = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            applied.snapshot = Some((meta, data));
        }
        Ok(ShardMachine {
            group,
            writer,
            applied: Arc::new(Mutex::new(applied)),
        })
    }

    /// A copy of what the replica holds of `queue`, and the id its new messages number from.
    pub fn messages(&self, queue: &str) -> (Vec<(u64, Bytes)>, u64) {
        let applied = self.applied.lock();
        (applied.replica.messages(queue), applied.replica.next_id())
    }

    /// How often each of `ids` of `queue` came back after a delivery, in their order.
    pub fn returns(&self, queue: &str, ids: impl Iterator<Item = u64>) -> Vec<u64> {
        let applied = self.applied.lock();
        ids.map(|id| applied.replica.returns(queue, id)).collect()
    }

    /// Whether forwarded publish `seq` of `from` is applied here already.
    pub fn was_sent(&self, from: &Sender, seq: u64) -> bool {
        self.applied.lock().replica.was_sent(from, seq)
    }

    /// The id new messages of the shard number from (above every id the replica has applied).
    pub fn next_id(&self) -> u64 {
        self.applied.lock().replica.next_id()
    }

    /// How many messages the replica holds, and the last log index applied to it.
    pub fn summary(&self) -> (usize, Option<u64>) {
        let applied = self.applied.lock();
        (applied.replica.len(), applied.last.map(|id| id.index))
    }
}

impl RaftSnapshotBuilder<Types> for ShardMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<Types, Vec<u8>>, io::Error> {
        check_writes(&*self.writer)?;
        let (meta, data) = {
            let mut applied = self.applied.lock();
            let data = encode(|w| applied.replica.write(w));
            let meta = SnapshotMetaOf::<Types> {
                last_log_id: applied.last,
                last_membership: applied.membership.clone(),
            };
            applied.snapshot = Some((meta.clone(), data.clone()));
            (meta, data)
        };
        // Durable before openraft may purge the entries it replaces.
        write_durable(
            &*self.writer,
            vec![snapshot_record(self.group, &meta, &data)],
        )
        .await?;
        Ok(SnapshotOf::<Types, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<Types> for ShardMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.applied.lock();
        Ok((applied.last, applied.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: futures_util::Stream<Item = Result<EntryResponder<Types>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut applied = self.applied.lock();
                match entry.payload {
                    EntryPayload::Normal(proposal) => {
                        for op in proposal.ops.iter() {
                            applied.replica.apply(op);
                        }
                    }
                    EntryPayload::Membership(m) => {
                        applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    }
                    EntryPayload::Blank => {}
                }
                applied.last = Some(entry.log_id);
            }
            if let Some(responder) = responder {
                responder.send(Answer(Ok(())));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<Types>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let replica = decode(&snapshot, Replica::read).map_err(io::Error::other)?;
        // Durable first: after a crash the node restarts from this snapshot.
        write_durable(
            &*self.writer,
            vec![snapshot_record(self.group, meta, &snapshot)],
        )
        .await?;
        let mut applied = self.applied.lock();
        applied.replica = replica;
        applied.last = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        applied.snapshot = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<Types, Vec<u8>>>, io::Error> {
        Ok(self
            .applied
            .lock()
            .snapshot
            .clone()
            .map(|(meta, snapshot)| SnapshotOf::<Types, Vec<u8>> { meta, snapshot }))
    }
}

#[cfg(test)]
mod tests;
