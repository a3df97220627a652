//! Hosting follows leadership: taking a shard's queues over when this node becomes its leader,
//! giving them up when it stops being one, and (as any node) keeping subscriptions at the hosts
//! of the queues this node has consumers of.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use super::holder::QuorumHolder;
use super::journal::ShardJournal;
use super::shard::{Epoch, ShardGroup};
use super::subscribe::{self as subs_mod};
use crate::cluster::link::Links;
use crate::cluster::raft::shard::placed_shard;
use crate::cluster::raft::QueueOp;
use crate::queue::Queue;

/// Follows the shard's leadership on this node: takes its queues over when it becomes the
/// leader, gives them up when it stops being one. The broker is held only while its queues are
/// changed, never across a wait, so a stopping broker is never kept alive by this task.
pub(crate) async fn host(
    shard: Arc<ShardGroup>,
    journal: Arc<ShardJournal>,
    holder: Weak<dyn QuorumHolder>,
) {
    // Server metrics change with the vote, the state and the leader only, not with every entry
    // as the group's full metrics do (this task would wake on each, on every node).
    let mut metrics = shard.raft.server_metrics();
    loop {
        let (leading, epoch) = leadership(&shard);
        let hosted = shard.epoch();
        if hosted.is_some() && (!leading || epoch != hosted) {
            let Some(holder) = holder.upgrade() else {
                return;
            };
            give_up(&shard, &journal, &*holder);
        }
        if let (true, None, Some(epoch)) = (leading, shard.epoch(), epoch) {
            // Applied when it returns, so the replica holds every entry of earlier leaders.
            match shard.raft.write_blank().await {
                Err(openraft::errors::RaftError::Fatal(_)) => return,
                Err(e) => {
                    tracing::debug!(group = shard.group, %e, "not hosting the shard's queues yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Ok(_) => {
                    let Some(holder) = holder.upgrade() else {
                        return;
                    };
                    if let Err(why) = take_over(&shard, &journal, &*holder, epoch) {
                        tracing::debug!(group = shard.group, %why, "not hosting the shard's queues yet");
                    }
                }
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Whether this node leads the shard, and the leadership it holds if its vote is committed: both
/// from one reading of its server metrics (`Raft::as_leader` reads the full metrics, which openraft
/// sends after these).
fn leadership(shard: &ShardGroup) -> (bool, Option<Epoch>) {
    use openraft::vote::RaftLeaderId;
    let metrics = shard.raft.server_metrics();
    let m = metrics.borrow_watched();
    let me = shard.node_id();
    let leading = m.current_leader == Some(me) && m.state.is_leader();
    let leader = m.vote.leader_id();
    let epoch = (m.vote.is_committed() && *leader.node_id() == me).then(|| leader.to_committed());
    (leading, epoch)
}

/// The shard's quorum queues on this node.
fn queues_of(shard: &ShardGroup, holder: &dyn QuorumHolder) -> Vec<(String, Arc<Queue>)> {
    let shards = shard.shards;
    holder
        .quorum_queues()
        .into_iter()
        .filter(|(name, queue)| placed_shard(queue.spec.shard, name, shards) == shard.group)
        .collect()
}

/// Hosts the shard's queues under `epoch`, once a blank entry of it is applied.
fn take_over(
    shard: &Arc<ShardGroup>,
    journal: &ShardJournal,
    holder: &dyn QuorumHolder,
    epoch: Epoch,
) -> Result<(), String> {
    if leadership(shard).1 != Some(epoch) {
        return Err("the leadership changed while taking over".into());
    }
    let queues = queues_of(shard, holder);
    let first_id = shard.machine.next_id();
    journal.next_id.fetch_max(first_id, Ordering::AcqRel);
    let mut hosted = shard.hosted.lock();
    hosted.queues.clear();
    hosted.first_id = first_id;
    let mut restored = 0;
    for (name, queue) in &queues {
        if hosted.queues.insert(name.clone()) {
            journal.subscriptions.subscriber.hosting(name);
            // What was staged here from the previous host is in the replica too.
            queue.unstage(crate::time::Now::read());
            restored += restore(shard, holder, (name, queue), u64::MAX);
        }
    }
    // Publishes go into the queues only once they hold the replica's messages: one taken in
    // before its queue's restore would be dropped with what was staged there (its entry committed
    // in the shard, but in no live queue), or restored a second time from the replica. Until now
    // they wait for this node to host, as from its election to its blank entry's apply.
    shard.set_epoch(Some(epoch));
    drop(hosted);
    tracing::info!(
        group = shard.group,
        queues = queues.len(),
        messages = restored,
        "leading the shard: its quorum queues are hosted here"
    );
    Ok(())
}

/// Puts the replica's messages of `queue` (record name `name`) whose ids are below `below` into
/// its live copy; how many.
fn restore(
    shard: &ShardGroup,
    holder: &dyn QuorumHolder,
    (name, queue): (&str, &Arc<Queue>),
    below: u64,
) -> usize {
    let (mut stored, _) = shard.machine.messages(name);
    stored.retain(|(id, _)| *id < below);
    let returns = shard
        .machine
        .returns(name, stored.iter().map(|(id, _)| *id));
    let mut batch = Vec::with_capacity(stored.len());
    for ((id, payload), returns) in stored.into_iter().zip(returns) {
        match holder.message(&payload) {
            Some(message) => batch.push((id, message, returns)),
            None => {
                tracing::error!(queue = %name, id, "a replicated message does not decode; skipped")
            }
        }
    }
    let n = batch.len();
    let now = crate::time::Now::read();
    queue.restore_counted(batch, now);
    // A new host counts x-expires from its take-over: the consumers of other nodes are only
    // subscribing to it now.
    queue.touch(now);
    n
}

fn give_up(shard: &ShardGroup, journal: &ShardJournal, holder: &dyn QuorumHolder) {
    let mut hosted = shard.hosted.lock();
    hosted.queues.clear();
    shard.set_epoch(None);
    drop(hosted);
    let now = crate::time::Now::read();
    for (name, queue) in queues_of(shard, holder) {
        // Other nodes' subscriptions end (they subscribe at the new host); this node's own
        // consumers stay, and take what it stages from the new host.
        journal.subscriptions.drop_hosted(&name);
        queue.unstage(now);
    }
    tracing::info!(
        group = shard.group,
        "no longer leading the shard: its quorum queues are given up here"
    );
}

impl ShardJournal {
    /// A quorum queue this node now has (its declaration was applied here): when this node hosts
    /// its shard and has not restored it yet (the declaration was applied after the take-over),
    /// the replica's messages of earlier hosts go into it. Publishes may have gone in already
    /// (the queue takes them from its creation while this node hosts the shard): they stay, and
    /// their copies in the replica (ids from the take-over on) are not restored a second time.
    pub fn adopt(&self, holder: &dyn QuorumHolder, queue: &Arc<Queue>) {
        let Some(name) = queue.record_name() else {
            return;
        };
        let Some(shard) = self.shard(name) else {
            return;
        };
        let mut hosted = shard.hosted.lock();
        if shard.epoch().is_some() && hosted.queues.insert(name.to_string()) {
            let first_id = hosted.first_id;
            restore(shard, holder, (name, queue), first_id);
        }
    }

    /// A quorum queue deleted (its deletion was applied here): the node hosting its shard drops
    /// its messages from the replica.
    pub fn forget(&self, name: &str) {
        let Some(shard) = self.shard(name) else {
            return;
        };
        let mut hosted = shard.hosted.lock();
        if shard.epoch().is_some() {
            hosted.queues.remove(name);
            shard.submit(
                vec![QueueOp::Drop {
                    queue: name.to_string(),
                }],
                None,
            );
        }
    }
}

/// Keeps this node subscribed at the host of every quorum queue it has consumers of and does not
/// host, and at the home of every classic queue of another node it has consumers of, and the
/// host's side clear of gone nodes.
pub(crate) async fn follow(
    journal: Arc<ShardJournal>,
    holder: Weak<dyn QuorumHolder>,
    links: Arc<Links>,
) {
    let subs = &journal.subscriptions;
    loop {
        tokio::time::sleep(subs_mod::TICK).await;
        subs.sweep(&links);
        let Some(holder_now) = holder.upgrade() else {
            return;
        };
        let queues = holder_now.quorum_queues();
        let copies = holder_now.copies();
        drop(holder_now);
        for (record, queue) in copies {
            let home = queue.spec.home.map(|h| h.node);
            let wanted = (queue.consumer_count() > 0).then_some(home).flatten();
            subs.subscriber
                .sync(&links, 0, &record, &queue, wanted)
                .await;
        }
        for (record, queue) in queues {
            if journal.hosts(&record) {
                continue;
            }
            let Some(shard) = journal.shard(&record) else {
                continue;
            };
            let host = shard.leader().filter(|h| *h != shard.node_id());
            let wanted = (queue.consumer_count() > 0).then_some(host).flatten();
            subs.subscriber
                .sync(&links, shard.group, &record, &queue, wanted)
                .await;
        }
    }
}
