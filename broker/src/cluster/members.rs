//! Adding a node to a running cluster and removing one (`brokerctl cluster add_node` /
//! `remove_node`, HA.md §5.1): a membership change of every group, each made by the group's leader
//! wherever it is (this node asks it over the node link, or makes it itself). A node is added to
//! the metadata group first, so every node's links know it before a queue shard needs it, then to
//! every shard — in each group as a learner until it has caught up, then as a voter. A node is
//! removed from the shards first and from the metadata group last, which also cuts it off from
//! every node's links. Node ids are never reused: a replaced node joins with a new id.
//!
//! Each group's change is idempotent, so an interrupted `add_node` or `remove_node` (a leader lost
//! midway) is finished by running it again.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::node::Cluster;
use super::raft::member::{change_members, members_answer, removed_refusal, Refusal};
use super::raft::rpc::{self, MembersChange};
use super::raft::{codec, Types};

/// Between two tries of a group's change whose leader was unknown or moved.
const RETRY: Duration = Duration::from_millis(300);
/// How often a node looks whether it has a metadata leader it is linked to.
const LEARN_TICK: Duration = Duration::from_secs(1);
/// How long a node goes without one before it asks the members it reaches for their view.
const LEADERLESS: Duration = Duration::from_secs(3);

impl Cluster {
    /// A node that was down while the membership changed restarts with a log and configured peers
    /// that may not name the metadata group's leader now (a node added meanwhile): it refuses that
    /// node's links and hears from no leader. So whenever this node has gone [`LEADERLESS`] without a
    /// leader it is linked to, it asks each member it is linked to for its view of the members and
    /// takes in the nodes it did not know (`Links::learn`); they are authenticated members of the
    /// same cluster, as trusted as the log they would send it. Runs until the cluster stops.
    pub(super) async fn learn_members(cluster: std::sync::Weak<Cluster>) {
        use openraft::async_runtime::WatchReceiver;
        let mut leaderless_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(LEARN_TICK).await;
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let me = cluster.meta.node_id;
            let leader = cluster.meta.raft.metrics().borrow_watched().current_leader;
            if leader.is_some_and(|l| l == me || cluster.links.connected(l)) {
                leaderless_since = None;
                continue;
            }
            if leaderless_since.get_or_insert_with(Instant::now).elapsed() < LEADERLESS {
                continue;
            }
            leaderless_since = None;
            let linked: Vec<u64> = cluster
                .links
                .member_ids()
                .into_iter()
                .filter(|id| *id != me && cluster.links.connected(*id))
                .collect();
            for peer in linked {
                let answer = cluster
                    .links
                    .call(peer, 0, rpc::VIEW, Bytes::new(), LEARN_TICK * 2)
                    .await;
                match answer.map(|a| codec::decode(&a, |r| r.members_view())) {
                    Ok(Ok(view)) => cluster.links.learn(view),
                    Ok(Err(e)) => tracing::warn!(peer, %e, "a member's view does not decode"),
                    Err(e) => tracing::debug!(peer, %e, "a member's view not had"),
                }
            }
        }
    }

    /// Completes once this node is a voter of the metadata group (a node started with
    /// `join = true` is not until it has been added; a removed one never again).
    pub async fn until_member(&self) {
        let me = self.meta.node_id;
        let _ = self
            .meta
            .raft
            .wait(None)
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|id| id == me)
                },
                "this node is a member",
            )
            .await;
    }

    /// Adds node `id`, known as `name` (its node certificate's CN) at node-link address `addr`,
    /// to every group. The node must be running with `join = true`.
    pub async fn add_node(
        &self,
        id: u64,
        name: &str,
        addr: std::net::SocketAddr,
    ) -> Result<(), String> {
        if name.is_empty() {
            return Err("a node needs a name (its node certificate's CN)".into());
        }
        if self.links.was_removed(id) {
            return Err(removed_refusal(id));
        }
        for other in self.links.members() {
            if other.id == id && (other.name != name || other.addr != addr) {
                return Err(format!(
                    "node id {id} is already a member ({} at {}): node ids are never reused, \
                     give the new node a new one",
                    other.name, other.addr
                ));
            }
            if other.id != id && other.name == name {
                return Err(format!("node {} is already called {name:?}", other.id));
            }
            if other.id != id && other.addr == addr {
                return Err(format!("node {} is already at {addr}", other.id));
            }
        }
        let change = MembersChange::Add {
            id,
            name: name.to_string(),
            addr,
        };
        self.change_everywhere(&change, false).await
    }

    /// Removes node `id` from every group; its links are closed and refused from then on, and the
    /// metadata group's leader deletes the classic queues that lived on it (RabbitMQ's
    /// forget_cluster_node). Run it on another node.
    pub async fn remove_node(&self, id: u64) -> Result<(), String> {
        if id == self.meta.node_id {
            return Err(format!(
                "node {id} is this node: run remove_node on another node of the cluster"
            ));
        }
        if !self.links.member_ids().contains(&id) && !self.links.was_removed(id) {
            return Err(format!("node {id} is not a member of the cluster"));
        }
        self.change_everywhere(&MembersChange::Remove { id }, true)
            .await?;
        // Recorded, so that no node admits it again (whatever its configured peers say, after a
        // restart too) and its id is never given to another node.
        self.meta
            .propose(vec![crate::meta::MetaCommand::RemovedNode { id }])
            .await
            .map_err(|why| {
                format!(
                    "node {id} was removed, but its removal was not recorded: {why} (run it again)"
                )
            })
    }

    /// Makes `change` in every group: the metadata group first, or last when `meta_last`.
    async fn change_everywhere(
        &self,
        change: &MembersChange,
        meta_last: bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + self.meta.timeout * 8;
        if !meta_last {
            self.change_group(super::raft::meta::GROUP, &self.meta.raft, change, deadline)
                .await?;
        }
        for shard in &self.shards {
            self.change_group(shard.group, &shard.raft, change, deadline)
                .await?;
        }
        if meta_last {
            self.change_group(super::raft::meta::GROUP, &self.meta.raft, change, deadline)
                .await?;
        }
        tracing::info!(%change, "the cluster's membership changed");
        Ok(())
    }

    /// Has the leader of group `group` (whose member here is `raft`) make `change`, trying again
    /// while the group has no leader or its leader moves, until `deadline`.
    async fn change_group<SM>(
        &self,
        group: u32,
        raft: &openraft::Raft<Types, SM>,
        change: &MembersChange,
        deadline: Instant,
    ) -> Result<(), String>
    where
        SM: openraft::storage::RaftStateMachine<Types, SnapshotData = Vec<u8>>,
    {
        use openraft::async_runtime::WatchReceiver;
        let body = Bytes::from(codec::encode(|w| w.members_change(change)));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let leader = raft.metrics().borrow_watched().current_leader;
            let tried = match leader {
                Some(leader) if leader == self.meta.node_id => {
                    change_members(raft, &self.links, change, left).await
                }
                Some(leader) => match self
                    .links
                    .call(leader, group, rpc::MEMBERS, body.clone(), left)
                    .await
                {
                    Ok(answer) => members_answer(&answer),
                    Err(e) => Err(Refusal::NotNow(e.to_string())),
                },
                None => Err(Refusal::NotNow("the group has no leader".into())),
            };
            match tried {
                Ok(()) => return Ok(()),
                Err(Refusal::Final(why)) => return Err(why),
                Err(why) if Instant::now() + RETRY >= deadline => {
                    return Err(format!(
                        "group {group}: {change} was not made: {why} (run it again to finish \
                         the change)"
                    ))
                }
                Err(why) => {
                    tracing::info!(group, %change, %why, "membership change tried again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}
