//! Classic queues on a cluster live on one node, their home, as in RabbitMQ (routing's
//! vhost/replicated.rs has the records; cluster/quorum forwards publishes and subscribes consumers
//! there). This is what follows from a home: what a client of another node gets when the home is
//! down, and deleting the classic queues that are gone — by their home (an exclusive queue whose
//! connection closed, an auto-delete queue whose last consumer left, a transient queue of an
//! earlier run of the home) and by the metadata group's leader (a transient queue whose home has
//! been down for [`HOME_LOST_AFTER`], so oslo can declare its reply queue again on another node).
//! A durable classic queue stays while its home is down: using it gets RabbitMQ's 404 until the
//! home is back with its messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::error::AmqpError;
use crate::ids::ConnectionId;
use crate::meta::MetaCommand;
use crate::queue::Queue;
use crate::vhost::Vhost;

/// How long the home of a transient classic queue may be unlinked from the metadata group's
/// leader before the queue is deleted on every node.
pub const HOME_LOST_AFTER: Duration = Duration::from_secs(10);
/// How often the deletions are looked for.
const TICK: Duration = Duration::from_millis(500);
/// How long a proposed deletion is given before it is proposed again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

impl Broker {
    /// The node holding `queue` when it is another node's classic queue whose link to this node
    /// is down.
    fn unreachable_home(&self, vhost: &Vhost, queue: &Queue) -> Option<u64> {
        let home = queue.spec.home?;
        let cluster = self.cluster()?;
        (vhost.is_copy(queue) && !cluster.links.connected(home.node)).then_some(home.node)
    }

    /// Refuses the use of a classic queue whose home node this node cannot reach: RabbitMQ's 404
    /// for a durable one; a transient one is gone with its home (404, no such queue).
    pub(crate) fn check_home(&self, vhost: &Vhost, queue: &Queue) -> Result<(), AmqpError> {
        let Some(node) = self.unreachable_home(vhost, queue) else {
            return Ok(());
        };
        if !queue.spec.durable {
            return Err(vhost.no_queue(queue.name()));
        }
        let name = self
            .cluster()
            .and_then(|c| c.links.name_of(node))
            .unwrap_or_else(|| format!("node {node}"));
        Err(vhost.home_down(queue.name(), &name))
    }

    /// Whether a declaration of `queue` replaces it: a transient classic queue whose home this
    /// node cannot reach is gone with it (its deletion may just not have been made yet).
    pub(crate) fn home_lost(&self, vhost: &Vhost, queue: &Queue) -> bool {
        !queue.spec.durable && self.unreachable_home(vhost, queue).is_some()
    }

    /// The name of the node holding `queue` on a cluster (its home, or its shard's leader), as
    /// `list_queues` shows it (RabbitMQ's `node` column).
    pub(crate) fn queue_node(&self, queue: &Queue) -> Option<String> {
        let cluster = self.cluster()?;
        let node = self.shard_journal.holder(queue)?;
        cluster.links.name_of(node)
    }

    /// The shard group of quorum queue `queue` (`shard-N`) on a cluster node; None otherwise.
    pub(crate) fn queue_shard(&self, queue: &Queue) -> Option<String> {
        let cluster = self.cluster()?;
        let record = queue.record_name().filter(|_| queue.args.quorum)?;
        Some(cluster.shard(record).name())
    }

    /// Why classic queue `queue`, homed here or (for the metadata leader, which knows the `lost`
    /// nodes and the `members`) on a node down for long or removed from the cluster, is to be
    /// deleted.
    fn gone_because(
        &self,
        queue: &Queue,
        me: (u64, u64),
        lost: &[u64],
        members: Option<&HashSet<u64>>,
    ) -> Option<&'static str> {
        let home = queue.spec.home?;
        if home.node != me.0 {
            // As RabbitMQ's forget_cluster_node: the queues of a removed node go, durable ones
            // too (their messages went with the node).
            if members.is_some_and(|m| !m.contains(&home.node)) {
                return Some("its home node was removed from the cluster");
            }
            return (!home.durable && lost.contains(&home.node))
                .then_some("its home node has been down too long");
        }
        if !home.durable && home.run != me.1 {
            return Some("its home node restarted since it was declared");
        }
        if let Some(owner) = home.owner {
            if !self.connections.contains_key(&ConnectionId(owner)) {
                return Some("its exclusive owner's connection closed");
            }
        }
        queue
            .abandoned()
            .then_some("its last consumer left (auto-delete)")
    }
}

/// Deletes, through the metadata group, the classic queues that are gone (see the module's
/// doc), until the broker stops.
pub(crate) async fn tend(broker: Weak<Broker>) {
    let mut down_since: HashMap<u64, Instant> = HashMap::new();
    let mut proposed: HashMap<(String, String), Instant> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let (Some(cluster), Some(r)) = (broker.cluster().cloned(), broker.replication.as_ref())
        else {
            continue;
        };
        let now = Instant::now();
        for peer in cluster.links.status() {
            if peer.connected {
                down_since.remove(&peer.id);
            } else {
                down_since.entry(peer.id).or_insert(now);
            }
        }
        let members = cluster.leads().then(|| cluster.links.member_ids());
        let lost: Vec<u64> = if cluster.leads() {
            down_since
                .iter()
                .filter(|(_, since)| now.duration_since(**since) >= HOME_LOST_AFTER)
                .map(|(id, _)| *id)
                .collect()
        } else {
            Vec::new()
        };
        proposed.retain(|_, at| now.duration_since(*at) < RETRY_AFTER);
        let mut deletions = Vec::new();
        for vhost in broker.vhosts.iter() {
            for queue in vhost.queue_list() {
                let (Some(why), Some(home)) = (
                    broker.gone_because(&queue, (r.node, r.run), &lost, members.as_ref()),
                    queue.spec.home,
                ) else {
                    continue;
                };
                let key = (vhost.name.to_string(), queue.name().to_string());
                if proposed.contains_key(&key) {
                    continue;
                }
                tracing::info!(vhost = %key.0, queue = %key.1, why, "deleting a classic queue");
                proposed.insert(key, now);
                deletions.push(MetaCommand::RetireQueue {
                    vhost: vhost.name.clone(),
                    queue: queue.name().clone(),
                    home,
                });
            }
        }
        drop(broker);
        for command in deletions {
            let cluster: Arc<_> = cluster.clone();
            tokio::spawn(async move {
                if let Err(why) = cluster.meta.propose(vec![command.clone()]).await {
                    tracing::warn!(?command, %why, "a classic queue's deletion was not made; it is tried again");
                }
            });
        }
    }
}
