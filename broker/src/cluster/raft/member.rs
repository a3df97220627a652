//! A node's member of any of its Raft groups as the other nodes reach it over the node links
//! (network.rs's `GroupServer` hands it the requests for its group).

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use openraft::errors::ClientWriteError;
use openraft::storage::RaftStateMachine;

use super::codec::{decode, encode};
use super::network::{bad_request, GroupMember};
use super::rpc::{self, Proposed};
use super::Types;

/// How a member that is not the leader refuses a forwarded proposal.
pub const NOT_LEADER: &str = "not the leader";

/// This node's member of a group, as the other nodes reach it: Raft's messages, leadership
/// transfers, and proposals forwarded to it as the leader.
pub struct Member<SM: RaftStateMachine<Types, SnapshotData = Vec<u8>>> {
    pub raft: openraft::Raft<Types, SM>,
    /// How long a forwarded proposal may wait for its commit here.
    pub timeout: Duration,
}

impl<SM: RaftStateMachine<Types, SnapshotData = Vec<u8>>> GroupMember for Member<SM> {
    fn serve(&self, kind: u8, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let raft = self.raft.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let out = match kind {
                rpc::APPEND => {
                    let request = decode(&body, |r| r.append_request()).map_err(bad_request)?;
                    let response = raft
                        .append_entries(request)
                        .await
                        .map_err(|e| e.to_string())?;
                    encode(|w| w.append_response(&response))
                }
                rpc::VOTE | rpc::PRE_VOTE => {
                    let request = decode(&body, |r| r.vote_request()).map_err(bad_request)?;
                    let response = match kind {
                        rpc::VOTE => raft.vote(request).await,
                        _ => raft.pre_vote(request).await,
                    }
                    .map_err(|e| e.to_string())?;
                    encode(|w| w.vote_response(&response))
                }
                rpc::SNAPSHOT => {
                    let (vote, snapshot) = decode(&body, |r| r.snapshot()).map_err(bad_request)?;
                    let response = raft
                        .install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| e.to_string())?;
                    encode(|w| w.vote(&response.vote))
                }
                rpc::TRANSFER => {
                    let request = decode(&body, |r| r.transfer_request()).map_err(bad_request)?;
                    let response = raft
                        .handle_transfer_leader(request)
                        .await
                        .map_err(|e| e.to_string())?;
                    encode(|w| w.transfer_response(&response))
                }
                rpc::PROPOSE => {
                    let proposal = decode(&body, |r| r.proposal()).map_err(bad_request)?;
                    let written = tokio::time::timeout(timeout, raft.client_write(proposal))
                        .await
                        .map_err(|_| "no majority committed it in time".to_string())?
                        .map_err(|e| match e.api_error() {
                            Some(ClientWriteError::ForwardToLeader(_)) => {
                                format!("{NOT_LEADER}: {e}")
                            }
                            _ => e.to_string(),
                        })?;
                    encode(|w| {
                        w.proposed(&Proposed {
                            answer: written.data,
                            index: written.log_id.index,
                        })
                    })
                }
                other => return Err(format!("unknown request kind {other}")),
            };
            Ok(Bytes::from(out))
        })
    }
}
