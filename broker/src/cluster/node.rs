//! A running cluster node: its links to the other nodes, its member of the metadata group and of
//! every queue shard group, started in HA.md's order — the node links first (so peers can reach
//! this node before any group needs them), then the groups, recovered from this node's log, then
//! (by the caller) AMQP.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use openraft::errors::{InitializeError, RaftError};
use serde_json::{json, Value};

use super::config::{ClusterConfig, PeerConfig};
use super::link::Links;
use super::quorum::{QuorumHolder, ShardGroup, ShardJournal};
use super::raft::log_store::{LogStore, RecordWriter};
use super::raft::member::Member;
use super::raft::meta::{DefinitionsHolder, MetaGroup, MetaMachine, MetaRaft};
use super::raft::network::GroupMember;
use super::raft::network::{GroupServer, Network};
use super::raft::shard::{ShardMachine, ShardRaft};

/// Raft timing for a loaded two-core machine (HA.md §1.5: heartbeat well under half the election
/// timeout, the election timeout far above an fdatasync).
fn raft_config(config: &ClusterConfig) -> anyhow::Result<openraft::Config> {
    Ok(openraft::Config {
        cluster_name: config.cluster_name.clone(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        enable_pre_vote: Some(true),
        // A restarted node is a follower until an election says otherwise, as in standard Raft.
        // With openraft's default it resumed as the leader of every group it led before a crash
        // (its committed vote on disk), with the others long since led by a new leader: in the
        // fault suite, two groups of a node killed while leading them never caught up again
        // after it stepped down (every answer between it and the new leader timed out, for
        // minutes), and meanwhile its hosting took the groups' queues over for nothing.
        enable_leader_restore: Some(false),
        install_snapshot_timeout: 30_000,
        // With proposals of at most about 1 MiB of messages (quorum/shard.rs), a catch-up request
        // carries at most some 64 MiB.
        max_payload_entries: 64,
        // Entries kept after a snapshot (for followers a little behind; one further behind is
        // sent the snapshot). openraft's 1,000 would keep up to 1 GiB of 1 MiB proposals in
        // memory; with the size-triggered snapshots below, 256 bounds what stays.
        max_in_snapshot_log_to_keep: KEEP_AFTER_SNAPSHOT,
        ..Default::default()
    }
    .validate()?)
}

/// Entries a group keeps after its snapshot.
const KEEP_AFTER_SNAPSHOT: u64 = 256;
/// Unpurged log bytes above which a shard takes a snapshot (and purges its log) without waiting
/// for openraft's 5,000 entries: entries are held in memory until purged, and at 20,000 msg/s of
/// 1 KiB they passed 200 MiB per node before the count was reached — memory, and a stall of
/// 100-300 ms on every node when the purge finally freed it all at once (benches/quorum.sh's
/// paced row after its window-1000 row: confirm p99 203 ms). Measured on the 3-node bench: 256 MiB
/// still stalled 217 ms, 64 MiB p99 8-18 ms, 32 MiB 4-5 ms with the most throughput at window
/// 1000, 16 MiB no better.
const SNAPSHOT_BYTES: u64 = 32 << 20;

/// Takes a snapshot of shard `raft` whenever its unpurged log holds more than [`SNAPSHOT_BYTES`]
/// and enough entries were applied since the last one for the purge to free something; ends when
/// the group stops.
async fn snapshot_by_size(raft: ShardRaft, log: LogStore) {
    use openraft::async_runtime::WatchReceiver;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if log.unpurged_bytes() < SNAPSHOT_BYTES {
            continue;
        }
        let (applied, snapshot) = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        let Some(applied) = applied else {
            continue;
        };
        if applied < snapshot.map_or(0, |s| s + 1) + 2 * KEEP_AFTER_SNAPSHOT {
            continue;
        }
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        // It builds and purges meanwhile.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// This node in its cluster.
pub struct Cluster {
    pub links: Arc<Links>,
    pub meta: MetaGroup,
    /// The queue shard groups, shard `n` at `n - 1` (`[cluster] queue_shards` of them).
    pub shards: Vec<Arc<ShardGroup>>,
    /// Every quorum queue's journal here, which knows the shard each was placed in.
    journal: Arc<ShardJournal>,
}

/// Starts a group's Raft on this node and initializes it with the configured voters the first
/// time (the same set on every node, which is safe in Raft; a node with a log of its own was
/// initialized before and resumes). A node that joins a running cluster (`join`) does not: the
/// group's leader adds it (`brokerctl cluster add_node`), and it learns the membership from it.
async fn start_raft<SM>(
    config: &ClusterConfig,
    group: u32,
    links: &Arc<Links>,
    log: LogStore,
    machine: SM,
) -> anyhow::Result<openraft::Raft<super::raft::Types, SM>>
where
    SM: openraft::storage::RaftStateMachine<super::raft::Types, SnapshotData = Vec<u8>>,
{
    let network = Network {
        links: links.clone(),
        group,
    };
    let raft = openraft::Raft::new(
        config.node_id,
        Arc::new(raft_config(config)?),
        network,
        log,
        machine,
    )
    .await?;
    if !config.join && !raft.is_initialized().await? {
        let voters: BTreeMap<u64, openraft::NodeInfo> = config
            .peers
            .iter()
            .map(|p| (p.id, super::raft::node(p.addr, &p.name)))
            .collect();
        match raft.initialize(voters).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(anyhow::anyhow!("initializing Raft group {group}: {e}")),
        }
    }
    Ok(raft)
}

/// The disk watchdog (HA.md HA7): a node whose log has not completed a write for `limit` steps
/// down from every group it leads, and again whenever it is elected while the stall lasts. A
/// leader on a stalled disk could still commit through its followers, but it applies nothing of
/// its own log, its pending writes pile up in memory, and its administrative writes hang; a
/// healthy node serves the cluster better. Only this node's pids and groups are touched.
async fn watch_disk(
    cluster: std::sync::Weak<Cluster>,
    writer: Arc<dyn RecordWriter>,
    limit: std::time::Duration,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled = false;
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        match writer.stalled_for() {
            Some(stall) if stall >= limit => {
                if !stalled {
                    tracing::error!(
                        stalled_ms = stall.as_millis() as u64,
                        "the disk has not completed a write: handing over the leadership of \
                         every group this node leads"
                    );
                    stalled = true;
                }
                cluster.step_down().await;
            }
            _ if stalled => {
                tracing::warn!("the disk completes writes again");
                stalled = false;
            }
            _ => {}
        }
    }
}

/// Keeps the links' members up with the metadata group's membership (voters and learners) as it
/// changes, until the group stops: the nodes of the latest membership, and the configured peers
/// except those this node saw removed. A membership without this node only adds nodes: it is
/// history a joining node replays (the cluster as it was before it joined: dropping the nodes
/// missing from it would cut the joining node off from the leader feeding it that history), or
/// the state after this node's own removal. The configured peers stay so that a node that was
/// down while the membership changed still reaches a new leader listed there (and one that is
/// not listed there is learned from a member that knows it: members.rs `learn_members`).
async fn watch_members(raft: MetaRaft, links: Arc<Links>) {
    use openraft::async_runtime::WatchReceiver;
    let me = links.config().node_id;
    let mut metrics = raft.metrics();
    let mut seen = None;
    let mut last_with_me: Option<std::collections::BTreeSet<u64>> = None;
    let mut removed = std::collections::BTreeSet::new();
    loop {
        let membership = metrics.borrow_watched().membership_config.clone();
        if seen != Some(*membership.log_id()) {
            seen = Some(*membership.log_id());
            let nodes: Vec<PeerConfig> = membership
                .membership()
                .nodes()
                .filter_map(|(id, node)| member(&links, *id, node))
                .collect();
            let ids: std::collections::BTreeSet<u64> = nodes.iter().map(|p| p.id).collect();
            let mut members = nodes;
            if ids.contains(&me) {
                if let Some(before) = last_with_me.replace(ids.clone()) {
                    removed.extend(before.difference(&ids));
                }
                removed.retain(|id| !ids.contains(id));
            } else {
                members.extend(links.members());
            }
            members.extend(
                links
                    .config()
                    .peers
                    .iter()
                    .filter(|p| !removed.contains(&p.id))
                    .cloned(),
            );
            let mut by_id = BTreeMap::new();
            for p in members {
                by_id.entry(p.id).or_insert(p);
            }
            links.set_members(by_id.into_values().collect());
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// A member of the membership as the links know nodes: its name is the one recorded with it, or
/// (memberships written before names were recorded) the configured peer's.
fn member(links: &Links, id: u64, node: &openraft::NodeInfo) -> Option<PeerConfig> {
    let configured = links.config().peers.iter().find(|p| p.id == id);
    let name = match node.data.as_str() {
        "" => configured?.name.clone(),
        name => name.to_string(),
    };
    let addr = node.raft_addr.parse().ok().or(configured.map(|p| p.addr))?;
    Some(PeerConfig { id, name, addr })
}

impl Cluster {
    /// Starts the links and the metadata group, whose records go to `writer` (the node's log) and
    /// whose entries change `holder`'s definitions. `raft_records` are the group's records the
    /// node's log recovered. Every node initializes the group with the same voters (the
    /// configured peers), which is safe in Raft; a node with a log of its own was initialized
    /// before and resumes.
    pub(crate) async fn start(
        links: Arc<Links>,
        writer: Arc<dyn RecordWriter>,
        holder: std::sync::Weak<dyn DefinitionsHolder>,
        raft_records: &BTreeMap<String, Bytes>,
        audit: Arc<crate::audit::AuditLog>,
        journal: Arc<ShardJournal>,
        quorum: std::sync::Weak<dyn QuorumHolder>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let config = &links.config().clone();
        links.set_audit(audit);
        let writer: Arc<dyn RecordWriter> = Arc::new(super::raft::log_store::FailFast::new(writer));
        let timeout = std::time::Duration::from_millis(config.change_timeout_ms);
        let group = super::raft::meta::GROUP;
        let log = LogStore::recover(group, writer.clone(), raft_records)?;
        let machine = MetaMachine::recover(holder, writer.clone(), raft_records)?;
        let raft: MetaRaft = start_raft(config, group, &links, log, machine).await?;
        let mut members: Vec<Arc<dyn GroupMember>> = vec![Arc::new(Member {
            raft: raft.clone(),
            timeout,
            links: links.clone(),
        })];
        let mut shards = Vec::new();
        for group in 1..=u32::from(config.queue_shards) {
            let log =
                LogStore::recover(group, writer.clone(), raft_records)?.committed_with_appends();
            let machine = ShardMachine::recover(group, writer.clone(), raft_records)?;
            let raft: ShardRaft =
                start_raft(config, group, &links, log.clone(), machine.clone()).await?;
            tokio::spawn(snapshot_by_size(raft.clone(), log));
            members.push(Arc::new(Member {
                raft: raft.clone(),
                timeout,
                links: links.clone(),
            }));
            let (writes, queued) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(super::quorum::propose_writes(
                raft.clone(),
                config.node_id,
                queued,
            ));
            shards.push(Arc::new(ShardGroup {
                group,
                shards: config.queue_shards,
                raft,
                machine,
                node_id: config.node_id,
                epoch: parking_lot::Mutex::new(None),
                hosted: Default::default(),
                writes,
            }));
        }
        let server = Arc::new(super::quorum::QuorumServer {
            groups: GroupServer { members },
            journal: journal.clone(),
            holder: quorum.clone(),
        });
        let forwarder =
            super::quorum::Forwarder::new(links.clone(), config.node_id, Arc::downgrade(&server));
        links.set_handler(server);
        journal.attach(shards.clone(), forwarder, timeout);
        journal.subscriptions.attach(links.clone());
        journal.streams.attach(links.clone(), quorum.clone());
        tokio::spawn(super::quorum::follow(
            journal.clone(),
            quorum.clone(),
            links.clone(),
        ));
        for shard in &shards {
            tokio::spawn(super::quorum::host(
                shard.clone(),
                journal.clone(),
                quorum.clone(),
            ));
        }
        let cluster = Arc::new(Cluster {
            shards,
            journal: journal.clone(),
            meta: MetaGroup {
                raft,
                links: links.clone(),
                node_id: config.node_id,
                timeout: std::time::Duration::from_millis(config.change_timeout_ms),
            },
            links,
        });
        tokio::spawn(watch_members(
            cluster.meta.raft.clone(),
            cluster.links.clone(),
        ));
        tokio::spawn(Cluster::learn_members(Arc::downgrade(&cluster)));
        if config.balance_leaders {
            let weak = Arc::downgrade(&cluster);
            tokio::spawn(super::balance::run(move || {
                weak.upgrade().map(|c| c.shards.clone())
            }));
        }
        tokio::spawn(watch_disk(
            Arc::downgrade(&cluster),
            writer,
            std::time::Duration::from_millis(config.disk_stall_timeout_ms),
        ));
        Ok(cluster)
    }

    /// Hands the leadership of every group this node leads to another node (before stopping, and
    /// for the disk watchdog).
    async fn step_down(&self) {
        self.hand_over_shards().await;
        if self.leads() {
            if let Err(why) = self.transfer_leadership(None, None).await {
                tracing::warn!(%why, "the metadata group's leadership was not handed over");
            }
        }
    }

    /// Stops the group and the links; a leader first hands its leadership to another node
    /// (HA.md §5.7), so the others need not wait out an election timeout.
    pub async fn stop(&self) {
        self.step_down().await;
        for shard in &self.shards {
            let _ = shard.raft.shutdown().await;
        }
        let _ = self.meta.raft.shutdown().await;
        self.links.shut_down().await;
    }

    /// Hands the leadership of every shard this node leads to the linked voter with the shortest
    /// round trip, and waits (at most 5 seconds) for them to move.
    async fn hand_over_shards(&self) {
        use openraft::async_runtime::WatchReceiver;
        let me = self.meta.node_id;
        let mut linked: Vec<(u64, u64)> = self
            .links
            .status()
            .into_iter()
            .filter(|p| p.connected)
            .map(|p| (p.rtt_us.unwrap_or(u64::MAX), p.id))
            .collect();
        linked.sort();
        let led: Vec<&Arc<ShardGroup>> = self.shards.iter().filter(|s| s.leads()).collect();
        for shard in &led {
            // The nearest linked voter of this shard (a linked node may be a learner still being
            // added, or a configured peer that is no member).
            let metrics = shard.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            let Some(to) = linked
                .iter()
                .map(|(_, id)| *id)
                .find(|id| membership.voter_ids().any(|v| v == *id))
            else {
                continue;
            };
            if let Err(e) = shard.raft.trigger().transfer_leader(to).await {
                tracing::warn!(group = shard.group, %e, "shard leadership not handed over");
            }
        }
        let within = Some(std::time::Duration::from_secs(5));
        for shard in led {
            let moved = shard
                .raft
                .wait(within)
                .metrics(
                    |m| m.current_leader.is_some() && m.current_leader != Some(me),
                    "shard leadership moved",
                )
                .await;
            if let Err(e) = moved {
                tracing::warn!(group = shard.group, %e, "stopping as a shard's leader");
            }
        }
    }

    fn metrics(&self) -> openraft::RaftMetrics<super::raft::Types> {
        use openraft::async_runtime::WatchReceiver;
        self.meta.raft.metrics().borrow_watched().clone()
    }

    pub(crate) fn leads(&self) -> bool {
        self.metrics().current_leader == Some(self.meta.node_id)
    }

    /// Hands this node's leadership of `group` (`metadata`, the default, or `shard-N`) to voter
    /// `to` (or the linked voter with the shortest round trip) and waits, at most 10 seconds, until
    /// another node leads it; returns the new leader. Moving shards' leaderships spreads the
    /// quorum queues' hosts over the nodes (a node leads none after the others won the first
    /// elections, say).
    pub async fn transfer_leadership(
        &self,
        to: Option<u64>,
        group: Option<&str>,
    ) -> Result<u64, String> {
        match group.unwrap_or("metadata") {
            "metadata" => transfer(&self.meta.raft, &self.links, to, "the metadata group").await,
            name => {
                let shard = self
                    .shards
                    .iter()
                    .find(|s| s.name() == name)
                    .ok_or_else(|| {
                        format!(
                            "no group {name:?}: the groups are metadata and shard-1 to shard-{}",
                            self.shards.len()
                        )
                    })?;
                transfer(&shard.raft, &self.links, to, &format!("group {name}")).await
            }
        }
    }

    /// Takes a snapshot of the metadata group on this node (its definitions as of the last applied
    /// entry) and purges the log up to it: what `brokerctl cluster snapshot` runs, and what a node
    /// whose log has grown long does. A member that is further behind than the purged log then
    /// catches up by installing the leader's snapshot. Returns the snapshot's index.
    pub async fn compact(&self) -> Result<u64, String> {
        let applied = self
            .metrics()
            .last_applied
            .ok_or("the metadata group has applied nothing yet")?;
        let raft = &self.meta.raft;
        raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
        let within = Some(std::time::Duration::from_secs(10));
        let built = raft
            .wait(within)
            .metrics(
                |m| m.snapshot.map(|s| s.index) >= Some(applied.index),
                "snapshot built",
            )
            .await
            .map_err(|e| format!("no snapshot within 10 s: {e}"))?;
        let upto = built.snapshot.map_or(applied.index, |s| s.index);
        raft.trigger()
            .purge_log(upto)
            .await
            .map_err(|e| e.to_string())?;
        raft.wait(within)
            .metrics(|m| m.purged.map(|p| p.index) >= Some(upto), "log purged")
            .await
            .map_err(|e| format!("the log was not purged within 10 s: {e}"))?;
        Ok(upto)
    }

    /// The metadata group's membership as this node knows it.
    pub fn meta_membership(&self) -> super::raft::Membership {
        self.metrics().membership_config.membership().clone()
    }

    /// The metadata group as this node sees it.
    pub fn meta_status(&self) -> Value {
        let mut status = super::raft::group_status(&self.metrics());
        status["group"] = json!("metadata");
        status
    }

    /// The shard group a quorum queue (its record name: vhost and queue) belongs to.
    pub fn shard(&self, queue: &str) -> &Arc<ShardGroup> {
        let n = self.journal.shard_number(queue, self.shards.len());
        &self.shards[(n - 1) as usize]
    }
}

/// [`Cluster::transfer_leadership`] for one group's Raft (`what` names it in errors).
async fn transfer<SM>(
    raft: &openraft::Raft<super::raft::Types, SM>,
    links: &Links,
    to: Option<u64>,
    what: &str,
) -> Result<u64, String>
where
    SM: openraft::storage::RaftStateMachine<super::raft::Types>,
{
    use openraft::async_runtime::WatchReceiver;
    let metrics = raft.metrics().borrow_watched().clone();
    let me = metrics.id;
    match metrics.current_leader {
        Some(leader) if leader == me => {}
        Some(leader) => {
            return Err(format!(
                "node {leader} leads {what}, not this node: run this there"
            ))
        }
        None => return Err(format!("{what} has no leader now")),
    }
    let voters: Vec<u64> = metrics
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != me)
        .collect();
    let target = match to {
        Some(id) if voters.contains(&id) => id,
        Some(id) => return Err(format!("node {id} is not a voter of {what}")),
        None => links
            .status()
            .into_iter()
            .filter(|p| p.connected && voters.contains(&p.id))
            .min_by_key(|p| p.rtt_us.unwrap_or(u64::MAX))
            .map(|p| p.id)
            .ok_or_else(|| format!("no other voter of {what} is linked to this node"))?,
    };
    raft.trigger()
        .transfer_leader(target)
        .await
        .map_err(|e| e.to_string())?;
    let moved = raft
        .wait(Some(std::time::Duration::from_secs(10)))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != Some(me),
            "leadership moved",
        )
        .await
        .map_err(|e| format!("the leadership did not move within 10 s: {e}"))?;
    Ok(moved.current_leader.unwrap_or(target))
}
