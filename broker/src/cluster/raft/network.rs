//! A group's Raft messages over the node links: each openraft call becomes one link request to the
//! target node, tagged with the group, and the target hands it to its own member of that group
//! ([`GroupServer`]). A link that is down, full or slow is `Unreachable` to openraft, which then
//! backs off and retries; nothing here blocks a sender (the link's queue is bounded).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{NodeInfo, OptionalSend};

use super::codec::{decode, encode, DecodeError, Encoded};
use super::rpc::{self, Snapshot};
use super::{Types, Vote};
use crate::cluster::link::{CallError, Links};

/// Makes the clients a group's member uses to reach the others.
#[derive(Clone)]
pub struct Network {
    pub links: Arc<Links>,
    pub group: u32,
}

/// One member's client for one other member.
pub struct PeerClient {
    links: Arc<Links>,
    group: u32,
    target: u64,
}

impl RaftNetworkFactory<Types> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, _node: &NodeInfo) -> PeerClient {
        PeerClient {
            links: self.links.clone(),
            group: self.group,
            target,
        }
    }
}

fn unreachable(e: impl std::error::Error + 'static) -> Unreachable<Types> {
    Unreachable::new(&e)
}

/// How long an append carrying entries may wait for its answer. openraft gives a replication
/// stream's appends the heartbeat's timeout (187.5 ms here), and a follower that answers later —
/// busy writing a large batch, on a loaded machine — is taken for unreachable and backed off from
/// for up to a second, which stalled commits under load (the quorum benchmark's 1 s confirms). A
/// follower that is really gone loses its link, which fails the call at once; heartbeats keep
/// their own short timeout (openraft's).
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

impl PeerClient {
    async fn call(
        &self,
        kind: u8,
        body: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Bytes, Unreachable<Types>> {
        let timeout = match kind {
            rpc::APPEND => option.soft_ttl().max(APPEND_TIMEOUT),
            _ => option.soft_ttl(),
        };
        self.links
            .call(self.target, self.group, kind, Bytes::from(body), timeout)
            .await
            .map_err(unreachable)
    }
}

impl RaftNetworkV2<Types> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<Types>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<Types>, RPCError<Types>> {
        let body = encode(|w| {
            w.0.reserve(64 + request.entries.iter().map(Encoded::len_hint).sum::<usize>());
            w.append_request(&request)
        });
        let answer = self.call(rpc::APPEND, body, &option).await?;
        decode(&answer, |r| r.append_response()).map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    async fn vote(
        &mut self,
        request: VoteRequest<Types>,
        option: RPCOption,
    ) -> Result<VoteResponse<Types>, RPCError<Types>> {
        let body = encode(|w| w.vote_request(&request));
        let answer = self.call(rpc::VOTE, body, &option).await?;
        decode(&answer, |r| r.vote_response()).map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    async fn pre_vote(
        &mut self,
        request: VoteRequest<Types>,
        option: RPCOption,
    ) -> Result<VoteResponse<Types>, RPCError<Types>> {
        let body = encode(|w| w.vote_request(&request));
        let answer = self.call(rpc::PRE_VOTE, body, &option).await?;
        decode(&answer, |r| r.vote_response()).map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest<Types>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<Types>, RPCError<Types>> {
        let body = encode(|w| w.transfer_request(&request));
        let answer = self.call(rpc::TRANSFER, body, &option).await?;
        decode(&answer, |r| r.transfer_response())
            .map_err(|e| RPCError::Unreachable(unreachable(e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<Types>, StreamingError<Types>> {
        let body = encode(|w| w.snapshot(&vote, &snapshot));
        let answer = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            answer = self.call(rpc::SNAPSHOT, body, &option) => answer?,
        };
        decode(&answer, |r| r.snapshot_response())
            .map_err(|e| StreamingError::Unreachable(unreachable(e)))
    }
}

/// What a node's member of a group answers to the others.
pub trait GroupMember: Send + Sync + 'static {
    fn serve(&self, kind: u8, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>>;
}

/// Serves the link requests of every group on this node, each to its member.
pub struct GroupServer {
    pub members: Vec<Arc<dyn GroupMember>>,
}

impl crate::cluster::link::RequestHandler for GroupServer {
    fn handle(
        &self,
        _from: u64,
        group: u32,
        kind: u8,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        match self.members.get(group as usize) {
            Some(member) => member.serve(kind, body),
            None => Box::pin(async move { Err(format!("no Raft group {group} on this node")) }),
        }
    }
}

/// Decoding errors of a request become the answer's error text.
pub fn bad_request(e: DecodeError) -> String {
    format!("bad request: {e}")
}

/// A call error as the text a proposer reports.
pub fn call_failed(e: CallError) -> String {
    e.to_string()
}
