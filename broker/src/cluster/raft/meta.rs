//! The metadata group (group 0, every node a voter): vhosts, users, permissions and topic
//! permissions change through it, so `brokerctl` on any node changes the whole cluster, and every
//! node applies the same commands in the same order to its own definitions — the same apply as a
//! single node's admin change (`Broker::apply_definitions`: records written durably, then the
//! running users and vhosts, and connections a deletion ends). Routing and permission checks stay
//! local and lock-free.
//!
//! The state machine's own progress (the last applied log id, the membership) and its latest
//! snapshot are records beside the group's log (`raft/0/sm/...`), written after the commands'
//! records, so a restarted node resumes from where its definitions are. A snapshot is the
//! definitions and the replicated topology as commands; installing one turns this node's into it
//! (`meta::definitions::replacing`, `Vhost::reconcile`).
//!
//! Exchanges, queues (quorum queues, and classic queues with their home node) and every binding go
//! through the group too (routing's vhost/replicated.rs).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use openraft::errors::ClientWriteError;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;
use warren_storage::definitions::Definitions;
use warren_storage::log::record::Record;

use super::codec::{decode, encode, DecodeError};
use super::log_store::{check_writes, snapshot_key, snapshot_record, write_durable, RecordWriter};
use super::member::NOT_LEADER;
use super::rpc;
use super::{Answer, LogId, Proposal, StoredMembership, Types};
use crate::cluster::link::{CallError, Links};
use crate::meta::MetaCommand;

/// The metadata group's number on node links.
pub const GROUP: u32 = 0;

pub type MetaRaft = openraft::Raft<Types, MetaMachine>;

/// What the metadata group changes on this node: its definitions and replicated topology. The
/// broker implements it with the apply of a single node's admin change and the vhosts' apply of
/// replicated topology.
pub trait DefinitionsHolder: Send + Sync + 'static {
    /// The definitions and the replicated topology, as the commands that build them.
    fn snapshot(&self) -> Vec<MetaCommand>;
    /// Writes `commands` durably and makes them take effect, or refuses them (changing nothing)
    /// with the reason (the inner error). The outer error is a failed write: nothing was applied,
    /// and the entry must not count as applied.
    fn apply_definitions(&self, commands: &[MetaCommand]) -> io::Result<Result<(), String>>;
    /// Turns this node's definitions and replicated topology into those `commands` build (a
    /// snapshot's).
    fn install(&self, commands: Vec<MetaCommand>) -> io::Result<Result<(), String>>;
}

fn applied_key() -> String {
    format!("{}{GROUP}/sm/applied", super::log_store::KEY_PREFIX)
}

#[derive(Default)]
struct Applied {
    last: Option<LogId>,
    membership: StoredMembership,
    snapshot: Option<(SnapshotMetaOf<Types>, Vec<u8>)>,
}

/// The metadata group's state machine: this node's definitions.
#[derive(Clone)]
pub struct MetaMachine {
    holder: Weak<dyn DefinitionsHolder>,
    writer: Arc<dyn RecordWriter>,
    /// Held while an entry is applied or a snapshot taken, so a snapshot's definitions are exactly
    /// those of its last applied id.
    applied: Arc<Mutex<Applied>>,
}

impl MetaMachine {
    /// The state machine as this node's records left it.
    pub fn recover(
        holder: Weak<dyn DefinitionsHolder>,
        writer: Arc<dyn RecordWriter>,
        recovered: &BTreeMap<String, Bytes>,
    ) -> Result<MetaMachine, DecodeError> {
        let mut applied = Applied::default();
        if let Some(bytes) = recovered.get(&applied_key()) {
            (applied.last, applied.membership) =
                decode(bytes, |r| Ok((r.opt_log_id()?, r.stored_membership()?)))?;
        }
        if let Some(bytes) = recovered.get(&snapshot_key(GROUP)) {
            applied.snapshot = Some(decode(bytes, |r| r.snapshot_body())?);
        }
        Ok(MetaMachine {
            holder,
            writer,
            applied: Arc::new(Mutex::new(applied)),
        })
    }

    fn holder(&self) -> io::Result<Arc<dyn DefinitionsHolder>> {
        self.holder
            .upgrade()
            .ok_or_else(|| io::Error::other("the broker has stopped"))
    }

    /// The record of the state machine's progress.
    fn progress_record(applied: &Applied) -> Record {
        Record::Put {
            key: applied_key(),
            value: Bytes::from(encode(|w| {
                w.opt_log_id(&applied.last);
                w.stored_membership(&applied.membership);
            })),
        }
    }

    /// Applies one entry (blocking: the definitions' records are written durably).
    fn apply_one(
        &self,
        holder: &dyn DefinitionsHolder,
        log_id: LogId,
        payload: EntryPayload<Proposal, u64, openraft::NodeInfo>,
    ) -> io::Result<Answer> {
        let mut applied = self.applied.lock();
        let answer = match payload {
            // A failed write stops the group on this node (openraft's storage error): the entry is
            // applied again after a restart, never skipped.
            EntryPayload::Normal(proposal) => Answer(holder.apply_definitions(&proposal.commands)?),
            EntryPayload::Membership(m) => {
                applied.membership = StoredMembership::new(Some(log_id), m);
                Answer(Ok(()))
            }
            EntryPayload::Blank => Answer(Ok(())),
        };
        applied.last = Some(log_id);
        self.writer
            .write(vec![Self::progress_record(&applied)], None);
        Ok(answer)
    }
}

/// The snapshot data: the definitions and topology as the commands that build them.
fn snapshot_data(commands: Vec<MetaCommand>) -> Vec<u8> {
    encode(|w| {
        w.proposal(&Proposal {
            origin: 0,
            commands,
            ops: Arc::from([]),
            ..Default::default()
        })
    })
}

fn commands_of(data: &[u8]) -> Result<Vec<MetaCommand>, String> {
    let proposal = decode(data, |r| r.proposal()).map_err(|e| e.to_string())?;
    Ok(proposal.commands)
}

/// The definitions the definition commands among `commands` build.
pub fn definitions_of(commands: &[MetaCommand]) -> Result<Definitions, String> {
    let mut defs = Definitions::default();
    for command in commands.iter().filter(|c| c.vhost().is_none()) {
        crate::meta::definitions::apply(&mut defs, command)?;
    }
    Ok(defs)
}

impl RaftSnapshotBuilder<Types> for MetaMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<Types, Vec<u8>>, io::Error> {
        check_writes(&*self.writer)?;
        let holder = self.holder()?;
        let (meta, data) = {
            let mut applied = self.applied.lock();
            let data = snapshot_data(holder.snapshot());
            let meta = SnapshotMetaOf::<Types> {
                last_log_id: applied.last,
                last_membership: applied.membership.clone(),
            };
            applied.snapshot = Some((meta.clone(), data.clone()));
            (meta, data)
        };
        // Durable before openraft may purge the entries it replaces.
        write_durable(&*self.writer, vec![snapshot_record(GROUP, &meta, &data)]).await?;
        Ok(SnapshotOf::<Types, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<Types> for MetaMachine {
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
        let holder = self.holder()?;
        while let Some((entry, responder)) = entries.try_next().await? {
            check_writes(&*self.writer)?;
            let machine = self.clone();
            let holder = holder.clone();
            let answer = tokio::task::spawn_blocking(move || {
                machine.apply_one(&*holder, entry.log_id, entry.payload)
            })
            .await
            .map_err(io::Error::other)??;
            if let Some(responder) = responder {
                responder.send(answer);
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
        let target = commands_of(&snapshot).map_err(io::Error::other)?;
        definitions_of(&target).map_err(io::Error::other)?;
        let holder = self.holder()?;
        // The snapshot is durable before the definitions change: a crash between the two leaves a
        // snapshot newer than the progress, which openraft installs again at the restart.
        write_durable(&*self.writer, vec![snapshot_record(GROUP, meta, &snapshot)]).await?;
        let machine = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let mut applied = machine.applied.lock();
            holder.install(target)?.map_err(io::Error::other)?;
            applied.last = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            machine
                .writer
                .write(vec![Self::progress_record(&applied)], None);
            applied.snapshot = Some((meta, snapshot));
            Ok::<(), io::Error>(())
        })
        .await
        .map_err(io::Error::other)?
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

/// How this node changes definitions through the metadata group.
pub struct MetaGroup {
    pub raft: MetaRaft,
    pub links: Arc<Links>,
    pub node_id: u64,
    /// How long a change waits for the group (a leader, a majority) before it is reported as not
    /// made (`[cluster] change_timeout_ms`).
    pub timeout: Duration,
}

impl MetaGroup {
    /// Carries out `commands` on every node: written by the leader (this node, or the one it
    /// forwards to), committed by a majority, and applied here before it returns, so the change is
    /// visible on this node when brokerctl reports it done.
    pub async fn propose(&self, commands: Vec<MetaCommand>) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let proposal = Proposal {
            origin: self.node_id,
            commands,
            ops: Arc::from([]),
            ..Default::default()
        };
        let mut last_problem = String::from("no leader yet");
        while tokio::time::Instant::now() < deadline {
            let write = self.raft.client_write(proposal.clone());
            let written = match tokio::time::timeout_at(deadline, write).await {
                Ok(written) => written,
                // Written by this node as leader, but no majority committed it in time (this node
                // may be cut off from the others): it takes effect only if one still does.
                Err(_) => {
                    return Err(format!(
                        "the change was not confirmed: no majority of the metadata group answered within {:?}; it takes effect only if this node's entry is still committed (check with the list verbs on another node)",
                        self.timeout
                    ))
                }
            };
            match written {
                Ok(written) => return written.data.0,
                Err(e) => {
                    if let Some(ClientWriteError::LogEntryDiscarded(_)) = e.api_error() {
                        return Err(
                            "the metadata group's leader changed while the change was written: it may or may not have taken effect; check, and repeat it if not".into(),
                        );
                    }
                    let Some(forward) = e.forward_to_leader() else {
                        return Err(format!("the metadata group failed: {e}"));
                    };
                    match forward.leader_id {
                        Some(leader) if leader != self.node_id => {
                            match self.forward(leader, &proposal, deadline).await {
                                Ok(answer) => return answer.0,
                                Err(Forwarding::Retry(problem)) => last_problem = problem,
                                Err(Forwarding::Unknown(problem)) => {
                                    return Err(format!(
                                        "{problem}: the change may or may not have taken effect; check, and repeat it if not"
                                    ))
                                }
                            }
                        }
                        _ => last_problem = "no leader yet (an election is under way)".into(),
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "the change was not made: the metadata group answered nothing within {:?} ({last_problem}); is a majority of the cluster's nodes up and linked? (brokerctl cluster status)",
            self.timeout
        ))
    }

    /// Sends the proposal to the leader, then waits until this node has applied it too.
    async fn forward(
        &self,
        leader: u64,
        proposal: &Proposal,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, Forwarding> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let body = Bytes::from(rpc::encode_proposal(proposal));
        let answer = match self
            .links
            .call(leader, GROUP, rpc::PROPOSE, body, left)
            .await
        {
            Ok(answer) => answer,
            // Never sent, or refused before it was written: safe to send again.
            Err(e @ (CallError::NoLink(_) | CallError::Busy(_))) => {
                return Err(Forwarding::Retry(e.to_string()))
            }
            Err(CallError::Remote(_, why)) if why.starts_with(NOT_LEADER) => {
                return Err(Forwarding::Retry(why))
            }
            // Sent, and then no answer or an unknown one: the leader may have written it.
            Err(e) => return Err(Forwarding::Unknown(e.to_string())),
        };
        let proposed =
            decode(&answer, |r| r.proposed()).map_err(|e| Forwarding::Unknown(e.to_string()))?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(proposed.index), "the forwarded change")
            .await
            .map_err(|e| {
                Forwarding::Unknown(format!(
                    "the leader made the change, but this node has not applied it yet: {e}"
                ))
            })?;
        Ok(proposed.answer)
    }
}

/// Why a forwarded proposal got no answer.
enum Forwarding {
    /// It was not written (no link, or the node is not the leader): it may be sent again.
    Retry(String),
    /// It may have been written: sending it again could apply it twice.
    Unknown(String),
}
