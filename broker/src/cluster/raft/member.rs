//! A node's member of any of its Raft groups as the other nodes reach it over the node links
//! (network.rs's `GroupServer` hands it the requests for its group), and the changes of a group's
//! members its leader makes (`brokerctl cluster add_node` / `remove_node`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use openraft::errors::ClientWriteError;
use openraft::storage::RaftStateMachine;
use openraft::ChangeMembers;

use super::codec::{decode, encode};
use super::network::{bad_request, GroupMember};
use super::rpc::{self, MembersChange, Proposed};
use super::Types;
use crate::cluster::link::Links;

/// How a member that is not the leader refuses a forwarded proposal.
pub const NOT_LEADER: &str = "not the leader";

/// This node's member of a group, as the other nodes reach it: Raft's messages, leadership
/// transfers, and proposals forwarded to it as the leader.
pub struct Member<SM: RaftStateMachine<Types, SnapshotData = Vec<u8>>> {
    pub raft: openraft::Raft<Types, SM>,
    /// How long a forwarded proposal may wait for its commit here.
    pub timeout: Duration,
    /// Which nodes were removed from the cluster (a membership change refuses to add them).
    pub links: Arc<Links>,
}

impl<SM: RaftStateMachine<Types, SnapshotData = Vec<u8>>> GroupMember for Member<SM> {
    fn serve(&self, kind: u8, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        let raft = self.raft.clone();
        let timeout = self.timeout;
        let links = self.links.clone();
        Box::pin(async move {
            let out = match kind {
                rpc::APPEND => {
                    let request =
                        decode(&body, |r| r.append_request(Some(&body))).map_err(bad_request)?;
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
                rpc::MEMBERS => {
                    let change = decode(&body, |r| r.members_change()).map_err(bad_request)?;
                    // A final refusal is an answer (the asking node stops there); any other is
                    // an error it may try again after.
                    match change_members(&raft, &links, &change, timeout * 8).await {
                        Ok(()) => encode(|w| w.bool(false)),
                        Err(Refusal::Final(why)) => encode(|w| {
                            w.bool(true);
                            w.bytes(why.as_bytes());
                        }),
                        Err(Refusal::NotNow(why)) => return Err(why),
                    }
                }
                rpc::VIEW => encode(|w| w.members_view(&links.members())),
                other => return Err(format!("unknown request kind {other}")),
            };
            Ok(Bytes::from(out))
        })
    }
}

/// Why a membership change was not made.
#[derive(Debug)]
pub enum Refusal {
    /// It never will be (a removed node id is never added again): asking again is pointless.
    Final(String),
    /// Not now (this node does not lead, a node has not caught up in time): it may be asked again.
    NotNow(String),
}

impl From<String> for Refusal {
    fn from(why: String) -> Self {
        Refusal::NotNow(why)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Final(why) | Refusal::NotNow(why) => f.write_str(why),
        }
    }
}

/// What the group's leader answered to a forwarded `MEMBERS` request: done, or a final refusal.
pub fn members_answer(answer: &[u8]) -> Result<(), Refusal> {
    let refused = decode(answer, |r| {
        Ok(if r.bool()? {
            Some(String::from_utf8_lossy(r.bytes()?).into_owned())
        } else {
            None
        })
    })
    .map_err(|e| Refusal::NotNow(format!("an answer that does not decode: {e}")))?;
    refused.map_or(Ok(()), |why| Err(Refusal::Final(why)))
}

/// Makes `change` to the group `raft` leads (an error says when it does not lead): a node is added
/// as a learner, which this waits to catch up (within `timeout`), then made a voter; a node is
/// removed entirely. A change already made is not made again, so a retried one is harmless. A node
/// the metadata group recorded as removed is never added again: the leader checks, as the node
/// asking it may not have applied the removal yet.
pub async fn change_members<SM>(
    raft: &openraft::Raft<Types, SM>,
    links: &Links,
    change: &MembersChange,
    timeout: Duration,
) -> Result<(), Refusal>
where
    SM: RaftStateMachine<Types, SnapshotData = Vec<u8>>,
{
    use openraft::async_runtime::WatchReceiver;
    let metrics = raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    let refusal =
        |e: openraft::errors::RaftError<Types, ClientWriteError<Types>>| match e.api_error() {
            Some(ClientWriteError::ForwardToLeader(_)) => format!("{NOT_LEADER}: {e}"),
            _ => e.to_string(),
        };
    let within = |what: &'static str| format!("{what} did not finish within {timeout:?}");
    match change {
        MembersChange::Add { id, name, addr } => {
            if links.was_removed(*id) {
                return Err(Refusal::Final(removed_refusal(*id)));
            }
            if membership.voter_ids().any(|v| v == *id) {
                return Ok(());
            }
            let node = super::node(*addr, name);
            let added = tokio::time::timeout(timeout, raft.add_learner(*id, node, false))
                .await
                .map_err(|_| within("adding the new node as a learner"))?
                .map_err(refusal)?;
            // openraft's blocking add_learner counts a learner within 5000 entries of the leader
            // as caught up, even one that never answered: a node that is not running would
            // become a voter the cluster needs for its majority. It must have acknowledged the
            // log up to its own addition.
            let at = added.log_id.index;
            raft.wait(Some(timeout))
                .metrics(
                    |m| {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(id).cloned().flatten())
                            .is_some_and(|matched| matched.index >= at)
                    },
                    "the new node caught up",
                )
                .await
                .map_err(|e| {
                    format!("node {id} did not catch up (is it running with join = true?): {e}")
                })?;
            let voters = ChangeMembers::AddVoterIds(BTreeSet::from([*id]));
            tokio::time::timeout(timeout, raft.change_membership(voters, false))
                .await
                .map_err(|_| within("making the new node a voter"))?
                .map_err(refusal)?;
        }
        MembersChange::Remove { id } => {
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            if voters.contains(id) {
                if voters.len() == 1 {
                    return Err(format!("node {id} is the group's only voter").into());
                }
                let change = ChangeMembers::RemoveVoters(BTreeSet::from([*id]));
                tokio::time::timeout(timeout, raft.change_membership(change, false))
                    .await
                    .map_err(|_| within("the removal"))?
                    .map_err(refusal)?;
            } else if membership.get_node(id).is_some() {
                let change = ChangeMembers::RemoveNodes(BTreeSet::from([*id]));
                tokio::time::timeout(timeout, raft.change_membership(change, false))
                    .await
                    .map_err(|_| within("the removal"))?
                    .map_err(refusal)?;
            }
        }
    }
    Ok(())
}

/// Why node `id` cannot be added: it was removed, and node ids are never reused.
pub fn removed_refusal(id: u64) -> String {
    format!(
        "node id {id} was removed from this cluster: node ids are never reused, give the new \
         node a new one"
    )
}
