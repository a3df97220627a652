//! Binary forms of Raft's values, written by Warren rather than derived: openraft's serde forms are
//! not a stable format across its versions (HA.md §1.5), and these end up on disk. Every value is
//! fixed-width big-endian integers and length-prefixed byte strings; a proposal's commands use the
//! metadata command codec (routing/src/meta/codec.rs). Decoding never panics and refuses trailing
//! or missing bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;

use openraft::entry::RaftEntry;
use openraft::vote::leader_id_adv::LeaderId;
use openraft::{EntryPayload, NodeInfo};

use super::{Entry, LogId, Membership, Proposal, QueueOp, StoredMembership, Vote};
use crate::meta::codec as meta_codec;

/// The first octet of every encoded entry: its format.
const ENTRY_FORMAT: u8 = 1;

const BLANK: u8 = 0;
const NORMAL: u8 = 1;
const MEMBERSHIP: u8 = 2;

const OP_ENQUEUE: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_DROP: u8 = 3;
const OP_RETURNED: u8 = 4;
const OP_SENT: u8 = 5;

/// Why bytes are not the value they should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable Raft value: {0}")]
pub struct DecodeError(pub String);

fn bad(what: impl Into<String>) -> DecodeError {
    DecodeError(what.into())
}

/// A normal entry's encoding ([`Writer::entry`]), kept with its proposal: the log store writes it
/// as the entry's record and AppendEntries carries it to each follower, where it arrives as a
/// slice of the received request and is written as it is. Without it each entry was encoded once
/// for the leader's log, once per follower, and once more by each follower's log (a fifth of a
/// follower's CPU at window 1000). It is used only for the entry whose log id it starts with, so
/// a proposal carried by another entry (a new leader's, after a truncation) is encoded afresh.
#[derive(Clone, Default)]
pub struct Encoded(Option<Bytes>);

impl Encoded {
    /// The encoding of `entry`, kept if it has one, made (and not kept) if not.
    pub fn entry(entry: &Entry) -> Bytes {
        if let Some(kept) = kept(entry) {
            return kept.clone();
        }
        let mut w = Writer(Vec::with_capacity(size_hint(entry)));
        w.entry(entry);
        // No spare capacity: the log keeps the value as long as the entry is unpurged.
        Bytes::from(w.0.into_boxed_slice())
    }

    /// About the size of `entry` encoded and length-prefixed (to size a buffer of several).
    pub fn len_hint(entry: &Entry) -> usize {
        8 + kept(entry).map_or_else(|| size_hint(entry), Bytes::len)
    }

    /// Keeps `bytes` as the encoding of the entry carrying `entry`'s proposal (nothing for a
    /// blank or membership entry).
    pub fn keep(entry: &mut Entry, bytes: Bytes) {
        if let EntryPayload::Normal(p) = &mut entry.payload {
            p.encoded = Encoded(Some(bytes));
        }
    }
}

/// The kept encoding of `entry`, if its proposal has one made for this entry (its log id).
fn kept(entry: &Entry) -> Option<&Bytes> {
    let EntryPayload::Normal(p) = &entry.payload else {
        return None;
    };
    let bytes = p.encoded.0.as_ref()?;
    // Its head, read as `Reader::entry` reads it: the format, the log id, a normal entry.
    let mut head = Reader(bytes);
    let made_for_it = head.u8().ok() == Some(ENTRY_FORMAT)
        && head.log_id().ok().as_ref() == Some(&entry.log_id)
        && head.u8().ok() == Some(NORMAL);
    made_for_it.then_some(bytes)
}

/// About the size of `entry` encoded, so that encoding it does not grow its buffer step by step.
fn size_hint(entry: &Entry) -> usize {
    let ops = match &entry.payload {
        EntryPayload::Normal(p) => p
            .ops
            .iter()
            .map(|op| match op {
                QueueOp::Enqueue { queue, payload, .. } => 25 + queue.len() + payload.len(),
                QueueOp::Sent { .. } => 33,
                QueueOp::Remove { queue, .. }
                | QueueOp::Returned { queue, .. }
                | QueueOp::Drop { queue } => 17 + queue.len(),
            })
            .sum(),
        _ => 0,
    };
    64 + ops
}

/// Equal always: a kept encoding is not part of a proposal's value.
impl PartialEq for Encoded {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(bytes) => write!(f, "Encoded({} octets)", bytes.len()),
            None => f.write_str("Encoded(none)"),
        }
    }
}

/// Appends values.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
    }
    pub fn log_id(&mut self, id: &LogId) {
        self.u64(id.leader_id.term);
        self.u64(id.leader_id.node_id);
        self.u64(id.index);
    }
    pub fn opt_log_id(&mut self, id: &Option<LogId>) {
        self.bool(id.is_some());
        if let Some(id) = id {
            self.log_id(id);
        }
    }
    pub fn vote(&mut self, vote: &Vote) {
        self.u64(vote.leader_id.term);
        self.u64(vote.leader_id.node_id);
        self.bool(vote.committed);
    }
    pub fn membership(&mut self, m: &Membership) {
        let configs = m.get_joint_config();
        self.u64(configs.len() as u64);
        for config in configs {
            self.u64(config.len() as u64);
            for id in config {
                self.u64(*id);
            }
        }
        let nodes: Vec<_> = m.nodes().collect();
        self.u64(nodes.len() as u64);
        for (id, node) in nodes {
            self.u64(*id);
            self.bytes(format!("{}\0{}", node.raft_addr, node.data).as_bytes());
        }
    }
    pub fn stored_membership(&mut self, m: &StoredMembership) {
        self.opt_log_id(m.log_id());
        self.membership(m.membership());
    }
    pub fn proposal(&mut self, p: &Proposal) {
        self.u64(p.origin);
        self.u64(p.commands.len() as u64);
        for command in &p.commands {
            self.bytes(&meta_codec::encode(command));
        }
        self.u64(p.ops.len() as u64);
        for op in p.ops.iter() {
            self.op(op);
        }
    }
    pub fn op(&mut self, op: &QueueOp) {
        match op {
            QueueOp::Enqueue { queue, id, payload } => {
                self.u8(OP_ENQUEUE);
                self.bytes(queue.as_bytes());
                self.u64(*id);
                self.bytes(payload);
            }
            QueueOp::Remove { queue, id } => {
                self.u8(OP_REMOVE);
                self.bytes(queue.as_bytes());
                self.u64(*id);
            }
            QueueOp::Drop { queue } => {
                self.u8(OP_DROP);
                self.bytes(queue.as_bytes());
            }
            QueueOp::Returned { queue, id } => {
                self.u8(OP_RETURNED);
                self.bytes(queue.as_bytes());
                self.u64(*id);
            }
            QueueOp::Sent { from, seq, floor } => {
                self.u8(OP_SENT);
                self.number(from, *seq, *floor);
            }
        }
    }
    /// A publish's number (its sender, sequence and floor): in a shard's `QueueOp::Sent` and in
    /// a forwarded publish alike.
    pub fn number(&mut self, from: &crate::cluster::raft::Sender, seq: u64, floor: u64) {
        self.u64(from.node);
        self.u64(from.incarnation);
        self.u64(seq);
        self.u64(floor);
    }
    pub fn entry(&mut self, e: &Entry) {
        if let Some(kept) = kept(e) {
            return self.0.extend_from_slice(kept);
        }
        self.u8(ENTRY_FORMAT);
        self.log_id(&e.log_id);
        match &e.payload {
            EntryPayload::Blank => self.u8(BLANK),
            EntryPayload::Normal(p) => {
                self.u8(NORMAL);
                self.proposal(p);
            }
            EntryPayload::Membership(m) => {
                self.u8(MEMBERSHIP);
                self.membership(m);
            }
        }
    }
}

/// Reads values back, refusing anything short.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(bad(format!(
                "{n} more octets needed, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(bad(format!("boolean octet {other}"))),
        }
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| bad("length"))?;
        self.take(n)
    }
    /// A count of items, each at least `min` octets: a count the remaining bytes cannot hold is
    /// refused before anything is allocated for it.
    pub fn count(&mut self, min: usize) -> Result<usize, DecodeError> {
        let n = self.u64()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min) <= self.0.len() => Ok(n),
            _ => Err(bad(format!(
                "a count of {n} with {} octets left",
                self.0.len()
            ))),
        }
    }
    pub fn log_id(&mut self) -> Result<LogId, DecodeError> {
        let term = self.u64()?;
        let node_id = self.u64()?;
        let index = self.u64()?;
        Ok(LogId::new(LeaderId { term, node_id }, index))
    }
    pub fn opt_log_id(&mut self) -> Result<Option<LogId>, DecodeError> {
        Ok(match self.bool()? {
            true => Some(self.log_id()?),
            false => None,
        })
    }
    pub fn vote(&mut self) -> Result<Vote, DecodeError> {
        let term = self.u64()?;
        let node = self.u64()?;
        Ok(match self.bool()? {
            true => Vote::new_committed(term, node),
            false => Vote::new(term, node),
        })
    }
    pub fn membership(&mut self) -> Result<Membership, DecodeError> {
        let mut configs = Vec::new();
        for _ in 0..self.count(8)? {
            let mut config = BTreeSet::new();
            for _ in 0..self.count(8)? {
                config.insert(self.u64()?);
            }
            configs.push(config);
        }
        let mut nodes = BTreeMap::new();
        for _ in 0..self.count(16)? {
            let id = self.u64()?;
            // Its address, then after a NUL its name (memberships written before names were kept
            // have none: the configured peer of that id names it).
            let text = std::str::from_utf8(self.bytes()?).map_err(|_| bad("node address"))?;
            let (addr, name) = text.split_once('\0').unwrap_or((text, ""));
            nodes.insert(id, NodeInfo::new(addr, name));
        }
        Membership::new(configs, nodes).map_err(|e| bad(e.to_string()))
    }
    pub fn stored_membership(&mut self) -> Result<StoredMembership, DecodeError> {
        let log_id = self.opt_log_id()?;
        Ok(StoredMembership::new(log_id, self.membership()?))
    }
    pub fn proposal(&mut self) -> Result<Proposal, DecodeError> {
        let origin = self.u64()?;
        let mut commands = Vec::new();
        for _ in 0..self.count(8)? {
            let command = meta_codec::decode(self.bytes()?).map_err(|e| bad(e.to_string()))?;
            commands.push(command);
        }
        let mut ops = Vec::new();
        for _ in 0..self.count(9)? {
            ops.push(self.op()?);
        }
        Ok(Proposal {
            origin,
            commands,
            ops: ops.into(),
            encoded: Encoded::default(),
        })
    }
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("a name is not UTF-8"))
    }
    pub fn op(&mut self) -> Result<QueueOp, DecodeError> {
        Ok(match self.u8()? {
            OP_ENQUEUE => QueueOp::Enqueue {
                queue: self.string()?,
                id: self.u64()?,
                payload: bytes::Bytes::copy_from_slice(self.bytes()?),
            },
            OP_REMOVE => QueueOp::Remove {
                queue: self.string()?,
                id: self.u64()?,
            },
            OP_DROP => QueueOp::Drop {
                queue: self.string()?,
            },
            OP_RETURNED => QueueOp::Returned {
                queue: self.string()?,
                id: self.u64()?,
            },
            OP_SENT => {
                let (from, seq, floor) = self.number()?;
                QueueOp::Sent { from, seq, floor }
            }
            other => return Err(bad(format!("queue operation {other}"))),
        })
    }
    /// What [`Writer::number`] wrote: sender, sequence, floor.
    pub fn number(&mut self) -> Result<(crate::cluster::raft::Sender, u64, u64), DecodeError> {
        let from = crate::cluster::raft::Sender {
            node: self.u64()?,
            incarnation: self.u64()?,
        };
        Ok((from, self.u64()?, self.u64()?))
    }
    pub fn entry(&mut self) -> Result<Entry, DecodeError> {
        let format = self.u8()?;
        if format != ENTRY_FORMAT {
            return Err(bad(format!("entry format {format}")));
        }
        let log_id = self.log_id()?;
        Ok(match self.u8()? {
            BLANK => Entry::new_blank(log_id),
            NORMAL => Entry::new_normal(log_id, self.proposal()?),
            MEMBERSHIP => Entry::new_membership(log_id, self.membership()?),
            other => return Err(bad(format!("entry payload kind {other}"))),
        })
    }
    /// Nothing may follow a value.
    pub fn end(&self) -> Result<(), DecodeError> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(bad(format!("{} trailing octets", self.0.len()))),
        }
    }
}

/// Encodes one value with `write`.
pub fn encode(write: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer::default();
    write(&mut w);
    w.0
}

/// Decodes one whole value with `read` (trailing bytes refused).
pub fn decode<T>(
    bytes: &[u8],
    read: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut r = Reader(bytes);
    let value = read(&mut r)?;
    r.end()?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaCommand;
    use std::sync::Arc;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(
            LeaderId {
                term,
                node_id: node,
            },
            index,
        )
    }

    fn entries() -> Vec<Entry> {
        let members: BTreeMap<u64, NodeInfo> = (1..=3)
            .map(|i| {
                (
                    i,
                    NodeInfo::new(format!("127.0.0.1{i}:25672"), format!("n{i}")),
                )
            })
            .collect();
        vec![
            Entry::new_blank(log_id(1, 1, 1)),
            Entry::new_normal(
                log_id(2, 3, 2),
                Proposal {
                    origin: 3,
                    commands: vec![
                        MetaCommand::AddVhost { vhost: "/".into() },
                        MetaCommand::AddUser {
                            user: "nova".into(),
                            tags: vec!["monitoring".into()],
                        },
                    ],
                    ops: Arc::from([]),
                    ..Default::default()
                },
            ),
            Entry::new_normal(
                log_id(2, 1, 3),
                Proposal {
                    origin: 1,
                    commands: vec![],
                    ops: Arc::from([
                        QueueOp::Enqueue {
                            queue: "/\ncompute".into(),
                            id: 7,
                            payload: bytes::Bytes::from_static(b"\x00body"),
                        },
                        QueueOp::Remove {
                            queue: "/\ncompute".into(),
                            id: 7,
                        },
                        QueueOp::Drop {
                            queue: "/\nreply".into(),
                        },
                        QueueOp::Returned {
                            queue: "/\ncompute".into(),
                            id: 8,
                        },
                        QueueOp::Sent {
                            from: crate::cluster::raft::Sender {
                                node: 2,
                                incarnation: 1_765_000_000_000_000_000,
                            },
                            seq: 41,
                            floor: 39,
                        },
                    ]),
                    ..Default::default()
                },
            ),
            Entry::new_membership(
                log_id(2, 3, 3),
                Membership::new(vec![[1, 2].into(), [1, 2, 3].into()], members).unwrap(),
            ),
        ]
    }

    #[test]
    fn entries_votes_and_memberships_round_trip() {
        for entry in entries() {
            let bytes = encode(|w| w.entry(&entry));
            assert_eq!(decode(&bytes, |r| r.entry()).unwrap(), entry);
        }
        for vote in [Vote::new(3, 2), Vote::new_committed(4, 1)] {
            assert_eq!(
                decode(&encode(|w| w.vote(&vote)), |r| r.vote()).unwrap(),
                vote
            );
        }
        for id in [None, Some(log_id(7, 2, 99))] {
            assert_eq!(
                decode(&encode(|w| w.opt_log_id(&id)), |r| r.opt_log_id()).unwrap(),
                id
            );
        }
    }

    #[test]
    fn a_membership_written_before_names_were_kept_reads_with_empty_names() {
        let mut w = Writer::default();
        w.u64(1);
        w.u64(1);
        w.u64(1);
        w.u64(1);
        w.u64(1);
        w.bytes(b"127.0.0.11:25672");
        let m = decode(&w.0, |r| r.membership()).unwrap();
        let node = m.get_node(&1).unwrap();
        assert_eq!(
            (node.raft_addr.as_str(), node.data.as_str()),
            ("127.0.0.11:25672", "")
        );
    }

    #[test]
    fn every_cut_or_lengthened_entry_is_refused() {
        for entry in entries() {
            let bytes = encode(|w| w.entry(&entry));
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut], |r| r.entry()).is_err(),
                    "cut at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode(&longer, |r| r.entry()).is_err());
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut bytes = encode(|w| w.log_id(&log_id(1, 1, 1)));
        bytes.insert(0, ENTRY_FORMAT);
        bytes.push(MEMBERSHIP);
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(decode(&bytes, |r| r.entry()).is_err());
    }
}
