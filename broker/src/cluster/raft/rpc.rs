//! The calls a group's members make to each other over node links, and their binary forms: openraft's
//! append, vote, pre-vote and full-snapshot messages, and a proposal forwarded to the leader by a
//! node that is not. Each call is one link request (`kind` below) and one response.

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderError,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};

use bytes::Bytes;

use super::codec::{DecodeError, Encoded, Reader, Writer};
use super::{Answer, LogId, Proposal, Types, Vote};
use crate::cluster::config::PeerConfig;

pub const APPEND: u8 = 1;
pub const VOTE: u8 = 2;
pub const PRE_VOTE: u8 = 3;
pub const SNAPSHOT: u8 = 4;
pub const PROPOSE: u8 = 5;
pub const TRANSFER: u8 = 6;
// 7 was a single forwarded publish; every one now goes as PUBLISH_BATCH (7 is not reused).
/// Messages published on another node, for a queue this node holds (cluster/quorum/forward.rs):
/// in one request, for one shard; answered with each one's outcome.
pub const PUBLISH_BATCH: u8 = 21;
/// Subscriptions of another node's consumers to a quorum queue this node hosts, and what goes
/// with them (cluster/quorum/subscribe.rs).
pub const SUBSCRIBE: u8 = 8;
pub const SETTLE: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const DELIVER: u8 = 11;
pub const CANCELLED: u8 = 12;
/// What a node asks the node holding a queue about it (cluster/quorum/remote.rs).
pub const COUNT: u8 = 13;
pub const PURGE: u8 = 14;
/// A change of a group's members, run by its leader (cluster/raft/member.rs).
pub const MEMBERS: u8 = 15;
/// basic.get on a node that does not hold the queue, and the settlement of what it got
/// (cluster/quorum/get.rs).
pub const GET: u8 = 16;
pub const GOT: u8 = 17;
/// A member's view of the cluster's members, asked for by a node without a leader
/// (cluster/node.rs `learn_members`).
pub const VIEW: u8 = 18;
/// A consumer's read of a stream another node holds, and the wait for its tail
/// (cluster/quorum/stream.rs).
pub const STREAM_READ: u8 = 19;
pub const STREAM_TAIL: u8 = 20;

/// A group's snapshot as it travels: the vote of the leader sending it, its metadata and its data.
pub type Snapshot = SnapshotOf<Types, Vec<u8>>;

/// What a forwarded proposal gave: the answer and the index of its entry, so the node that forwarded
/// it can wait until it has applied that entry too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposed {
    pub answer: Answer,
    pub index: u64,
}

/// A change of a group's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembersChange {
    /// Node `id`, reached at `addr` under `name`, becomes a voter (a learner first, until it has
    /// caught up).
    Add {
        id: u64,
        name: String,
        addr: std::net::SocketAddr,
    },
    /// Node `id` leaves the group.
    Remove { id: u64 },
}

impl std::fmt::Display for MembersChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembersChange::Add { id, name, addr } => write!(f, "add node {id} ({name} at {addr})"),
            MembersChange::Remove { id } => write!(f, "remove node {id}"),
        }
    }
}

impl Writer {
    pub fn append_request(&mut self, r: &AppendEntriesRequest<Types>) {
        self.vote(&r.vote);
        self.opt_log_id(&r.prev_log_id);
        self.opt_log_id(&r.leader_commit);
        self.u64(r.entries.len() as u64);
        for entry in &r.entries {
            // Each entry length-prefixed, written in place (kept encodings copied as they are).
            let at = self.0.len();
            self.u64(0);
            self.entry(entry);
            let len = (self.0.len() - at - 8) as u64;
            self.0[at..at + 8].copy_from_slice(&len.to_be_bytes());
        }
    }
    pub fn append_response(&mut self, r: &AppendEntriesResponse<Types>) {
        match r {
            AppendEntriesResponse::Success => self.u8(0),
            AppendEntriesResponse::PartialSuccess(id) => {
                self.u8(1);
                self.opt_log_id(id);
            }
            AppendEntriesResponse::Conflict => self.u8(2),
            AppendEntriesResponse::HigherVote(vote) => {
                self.u8(3);
                self.vote(vote);
            }
        }
    }
    pub fn vote_request(&mut self, r: &VoteRequest<Types>) {
        self.vote(&r.vote);
        self.opt_log_id(&r.last_log_id);
        self.bool(r.leadership_transfer);
    }
    pub fn vote_response(&mut self, r: &VoteResponse<Types>) {
        self.vote(&r.vote);
        self.bool(r.vote_granted);
        self.opt_log_id(&r.last_log_id);
    }
    pub fn snapshot(&mut self, vote: &Vote, snapshot: &Snapshot) {
        self.vote(vote);
        self.snapshot_body(&snapshot.meta, &snapshot.snapshot);
    }
    /// A snapshot's metadata and data: as sent after the vote, and as a node stores its own.
    pub fn snapshot_body(&mut self, meta: &SnapshotMetaOf<Types>, data: &[u8]) {
        self.opt_log_id(&meta.last_log_id);
        self.stored_membership(&meta.last_membership);
        self.bytes(data);
    }
    /// A node as membership calls name it: id, name and node-link address.
    fn node(&mut self, id: u64, name: &str, addr: &std::net::SocketAddr) {
        self.u64(id);
        self.bytes(name.as_bytes());
        self.bytes(addr.to_string().as_bytes());
    }
    pub fn members_view(&mut self, members: &[PeerConfig]) {
        self.u64(members.len() as u64);
        for p in members {
            self.node(p.id, &p.name, &p.addr);
        }
    }
    pub fn members_change(&mut self, c: &MembersChange) {
        match c {
            MembersChange::Add { id, name, addr } => {
                self.u8(1);
                self.node(*id, name, addr);
            }
            MembersChange::Remove { id } => {
                self.u8(2);
                self.u64(*id);
            }
        }
    }
    pub fn transfer_request(&mut self, r: &TransferLeaderRequest<Types>) {
        self.vote(r.from_leader());
        self.u64(*r.to_node_id());
        self.opt_log_id(&r.last_log_id().copied());
    }
    pub fn transfer_response(&mut self, r: &TransferLeaderResponse<Types>) {
        match r {
            Ok(()) => self.u8(0),
            Err(TransferLeaderError::VoteChanged { expected, actual }) => {
                self.u8(1);
                self.vote(expected);
                self.vote(actual);
            }
            Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
                self.u8(2);
                self.opt_log_id(expected);
                self.opt_log_id(actual);
            }
        }
    }
    pub fn proposed(&mut self, p: &Proposed) {
        self.u64(p.index);
        match &p.answer.0 {
            Ok(()) => self.u8(0),
            Err(why) => {
                self.u8(1);
                self.bytes(why.as_bytes());
            }
        }
    }
}

impl Reader<'_> {
    /// An AppendEntries request read from `source` (when given, the bytes this reader reads):
    /// each entry keeps its encoding as a slice of `source`, so the log store writes it without
    /// encoding it again (`codec::Encoded`).
    pub fn append_request(
        &mut self,
        source: Option<&Bytes>,
    ) -> Result<AppendEntriesRequest<Types>, DecodeError> {
        let vote = self.vote()?;
        let prev_log_id = self.opt_log_id()?;
        let leader_commit = self.opt_log_id()?;
        let count = self.u64()?;
        let mut entries = Vec::new();
        for _ in 0..count {
            let bytes = self.bytes()?;
            let mut one = Reader(bytes);
            let mut entry = one.entry()?;
            one.end()?;
            if let Some(source) = source {
                Encoded::keep(&mut entry, source.slice_ref(bytes));
            }
            entries.push(entry);
        }
        Ok(AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        })
    }
    pub fn append_response(&mut self) -> Result<AppendEntriesResponse<Types>, DecodeError> {
        Ok(match self.u8()? {
            0 => AppendEntriesResponse::Success,
            1 => AppendEntriesResponse::PartialSuccess(self.opt_log_id()?),
            2 => AppendEntriesResponse::Conflict,
            3 => AppendEntriesResponse::HigherVote(self.vote()?),
            other => return Err(DecodeError(format!("append response {other}"))),
        })
    }
    pub fn vote_request(&mut self) -> Result<VoteRequest<Types>, DecodeError> {
        let vote = self.vote()?;
        let last_log_id = self.opt_log_id()?;
        let mut request = VoteRequest::new(vote, last_log_id);
        request.leadership_transfer = self.bool()?;
        Ok(request)
    }
    pub fn vote_response(&mut self) -> Result<VoteResponse<Types>, DecodeError> {
        let vote = self.vote()?;
        let granted = self.bool()?;
        let last_log_id: Option<LogId> = self.opt_log_id()?;
        Ok(VoteResponse::new(vote, last_log_id, granted))
    }
    pub fn snapshot(&mut self) -> Result<(Vote, Snapshot), DecodeError> {
        let vote = self.vote()?;
        let (meta, snapshot) = self.snapshot_body()?;
        Ok((vote, Snapshot { meta, snapshot }))
    }
    pub fn snapshot_body(&mut self) -> Result<(SnapshotMetaOf<Types>, Vec<u8>), DecodeError> {
        let last_log_id = self.opt_log_id()?;
        let last_membership = self.stored_membership()?;
        let meta = SnapshotMetaOf::<Types> {
            last_log_id,
            last_membership,
        };
        Ok((meta, self.bytes()?.to_vec()))
    }
    pub fn snapshot_response(&mut self) -> Result<SnapshotResponse<Types>, DecodeError> {
        Ok(SnapshotResponse::new(self.vote()?))
    }
    /// A node as membership calls name it (`Writer::node`).
    fn node(&mut self) -> Result<PeerConfig, DecodeError> {
        Ok(PeerConfig {
            id: self.u64()?,
            name: self.string()?,
            addr: self
                .string()?
                .parse()
                .map_err(|_| DecodeError("a node address".into()))?,
        })
    }
    pub fn members_view(&mut self) -> Result<Vec<PeerConfig>, DecodeError> {
        let count = self.u64()?;
        let mut view = Vec::new();
        for _ in 0..count {
            view.push(self.node()?);
        }
        Ok(view)
    }
    pub fn members_change(&mut self) -> Result<MembersChange, DecodeError> {
        Ok(match self.u8()? {
            1 => {
                let PeerConfig { id, name, addr } = self.node()?;
                MembersChange::Add { id, name, addr }
            }
            2 => MembersChange::Remove { id: self.u64()? },
            other => return Err(DecodeError(format!("membership change {other}"))),
        })
    }
    pub fn transfer_request(&mut self) -> Result<TransferLeaderRequest<Types>, DecodeError> {
        let from = self.vote()?;
        let to = self.u64()?;
        let last_log_id = self.opt_log_id()?;
        Ok(TransferLeaderRequest::new(from, to, last_log_id))
    }
    pub fn transfer_response(&mut self) -> Result<TransferLeaderResponse<Types>, DecodeError> {
        Ok(match self.u8()? {
            0 => Ok(()),
            1 => Err(TransferLeaderError::VoteChanged {
                expected: self.vote()?,
                actual: self.vote()?,
            }),
            2 => Err(TransferLeaderError::LogNotFlushed {
                expected: self.opt_log_id()?,
                actual: self.opt_log_id()?,
            }),
            other => return Err(DecodeError(format!("transfer response {other}"))),
        })
    }
    pub fn proposed(&mut self) -> Result<Proposed, DecodeError> {
        let index = self.u64()?;
        let answer = match self.u8()? {
            0 => Ok(()),
            1 => Err(String::from_utf8_lossy(self.bytes()?).into_owned()),
            other => return Err(DecodeError(format!("proposal answer {other}"))),
        };
        Ok(Proposed {
            answer: Answer(answer),
            index,
        })
    }
}

/// A proposal as forwarded to the leader.
pub fn encode_proposal(p: &Proposal) -> Vec<u8> {
    super::codec::encode(|w| w.proposal(p))
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::vote::leader_id_adv::LeaderId;

    use super::*;
    use crate::cluster::raft::codec::{decode, encode};
    use crate::cluster::raft::{Entry, StoredMembership};

    fn log_id(index: u64) -> LogId {
        LogId::new(
            LeaderId {
                term: 3,
                node_id: 2,
            },
            index,
        )
    }

    #[test]
    fn raft_messages_round_trip() {
        let request = AppendEntriesRequest::<Types> {
            vote: Vote::new_committed(3, 2),
            prev_log_id: Some(log_id(4)),
            entries: vec![Entry::new_blank(log_id(5)), Entry::new_blank(log_id(6))],
            leader_commit: Some(log_id(4)),
        };
        let back = decode(&encode(|w| w.append_request(&request)), |r| {
            r.append_request(None)
        })
        .unwrap();
        assert_eq!(back.entries, request.entries);
        assert_eq!(
            (back.vote, back.prev_log_id, back.leader_commit),
            (request.vote, request.prev_log_id, request.leader_commit)
        );
        for response in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(5))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(4, 1)),
        ] {
            let back = decode(&encode(|w| w.append_response(&response)), |r| {
                r.append_response()
            })
            .unwrap();
            assert_eq!(back, response);
        }
        let mut vote = VoteRequest::<Types>::new(Vote::new(5, 3), Some(log_id(9)));
        vote.leadership_transfer = true;
        assert_eq!(
            decode(&encode(|w| w.vote_request(&vote)), |r| r.vote_request()).unwrap(),
            vote
        );
        let granted = VoteResponse::<Types>::new(Vote::new(5, 3), Some(log_id(9)), true);
        assert_eq!(
            decode(&encode(|w| w.vote_response(&granted)), |r| r
                .vote_response())
            .unwrap(),
            granted
        );
        let snapshot = Snapshot {
            meta: SnapshotMetaOf::<Types> {
                last_log_id: Some(log_id(9)),
                last_membership: StoredMembership::default(),
            },
            snapshot: b"definitions".to_vec(),
        };
        let (v, back) = decode(&encode(|w| w.snapshot(&Vote::new(5, 3), &snapshot)), |r| {
            r.snapshot()
        })
        .unwrap();
        assert_eq!(
            (v, back.meta, back.snapshot),
            (Vote::new(5, 3), snapshot.meta, snapshot.snapshot)
        );
        for change in [
            MembersChange::Add {
                id: 4,
                name: "rabbit4".into(),
                addr: "[::1]:25672".parse().unwrap(),
            },
            MembersChange::Remove { id: 1 },
        ] {
            let bytes = encode(|w| w.members_change(&change));
            assert_eq!(decode(&bytes, |r| r.members_change()).unwrap(), change);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut], |r| r.members_change()).is_err());
            }
        }
        let transfer =
            TransferLeaderRequest::<Types>::new(Vote::new_committed(5, 3), 2, Some(log_id(9)));
        assert_eq!(
            decode(&encode(|w| w.transfer_request(&transfer)), |r| r
                .transfer_request())
            .unwrap(),
            transfer
        );
        for response in [
            Ok(()),
            Err(TransferLeaderError::VoteChanged {
                expected: Vote::new(1, 1),
                actual: Vote::new(2, 2),
            }),
            Err(TransferLeaderError::LogNotFlushed {
                expected: Some(log_id(3)),
                actual: None,
            }),
        ] {
            assert_eq!(
                decode(&encode(|w| w.transfer_response(&response)), |r| r
                    .transfer_response())
                .unwrap(),
                response
            );
        }
        for proposed in [
            Proposed {
                answer: Answer(Ok(())),
                index: 12,
            },
            Proposed {
                answer: Answer(Err("no such user 'x'".into())),
                index: 13,
            },
        ] {
            assert_eq!(
                decode(&encode(|w| w.proposed(&proposed)), |r| r.proposed()).unwrap(),
                proposed
            );
        }
    }
}
