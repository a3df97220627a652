//! Spreads the shards' leaderships over the nodes: each shard has a preferred leader (its voters in
//! id order, shard `g` preferring the `(g - 1) mod n`-th), and a node leading a shard whose
//! preferred node is a voter, answering, and caught up hands it over (Kafka's preferred-leader
//! election). Without it the nodes started last win the first elections and the first node leads
//! nothing (measured: node 1 of `warren --dev --cluster 3` led no shard), so a quorum queue declared
//! there, which RabbitMQ's `client-local` locator places on the client's node, could not be
//! hosted there, and every publish and settle took a hop to another node (window-1000 throughput
//! half of what a local host gives, in benches/quorum.sh).
//!
//! Moving a leadership is a graceful transfer, so a check runs only every few seconds, and only
//! towards a node that acknowledged a heartbeat lately and holds the whole log (a paused or lagging
//! node is left alone: a transfer to a node that does not campaign stalls writes until an
//! election).

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::Instant as _;

use super::quorum::ShardGroup;

/// How often a node looks at the shards it leads.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// A node more entries behind than this is not handed anything.
const CAUGHT_UP_WITHIN: u64 = 256;

/// A node whose last heartbeat answer is older than this is not handed anything.
const ANSWERED_WITHIN: Duration = Duration::from_millis(500);

/// The node shard `group` prefers as its leader among `voters` (any order).
pub fn preferred(group: u32, voters: impl IntoIterator<Item = u64>) -> Option<u64> {
    let mut voters: Vec<u64> = voters.into_iter().collect();
    voters.sort_unstable();
    voters.dedup();
    let n = voters.len();
    (n > 0).then(|| voters[(group as usize).saturating_sub(1) % n])
}

/// Whether this node is the preferred leader of `shard` (as its membership on this node says).
pub fn prefers_me(shard: &ShardGroup) -> bool {
    let m = shard.raft.metrics().borrow_watched().clone();
    preferred(shard.group, m.membership_config.membership().voter_ids()) == Some(m.id)
}

/// Where this node, leading `shard`, should hand its leadership now, if anywhere.
pub fn hand_to(shard: &ShardGroup) -> Option<u64> {
    let m = shard.raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(m.id) {
        return None;
    }
    let to = preferred(shard.group, m.membership_config.membership().voter_ids())?;
    if to == m.id {
        return None;
    }
    let answered = m
        .heartbeat
        .as_ref()
        .and_then(|h| h.get(&to).cloned().flatten())
        .is_some_and(|at| at.elapsed() <= ANSWERED_WITHIN);
    let matched = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&to).cloned().flatten())
        .map(|l| l.index);
    // Within a few entries of the end: a busy shard's log grows while its followers answer, and
    // openraft's transfer has the target wait for the leader's last entry before it campaigns.
    let caught_up = matched
        .zip(m.last_log_index)
        .is_some_and(|(matched, last)| matched + CAUGHT_UP_WITHIN >= last);
    (answered && caught_up).then_some(to)
}

/// Every [`INTERVAL`], hands each shard this node leads to its preferred node when that one is
/// ready (see [`hand_to`]); ends when `shards` (the cluster's, while it lives) gives None.
pub async fn run(shards: impl Fn() -> Option<Vec<Arc<ShardGroup>>>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shards) = shards() else {
            return;
        };
        for shard in &shards {
            let Some(to) = hand_to(shard) else { continue };
            tracing::info!(
                group = shard.group,
                to,
                "handing a shard to its preferred leader"
            );
            if let Err(e) = shard.raft.trigger().transfer_leader(to).await {
                tracing::warn!(group = shard.group, %e, "shard leadership not handed over");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::preferred;

    #[test]
    fn shards_prefer_the_voters_in_turn_whatever_their_order() {
        let voters = [3, 1, 2];
        let picks: Vec<Option<u64>> = (1..=4).map(|g| preferred(g, voters)).collect();
        assert_eq!(picks, vec![Some(1), Some(2), Some(3), Some(1)]);
        assert_eq!(preferred(2, [5, 9]), Some(9));
        assert_eq!(preferred(1, []), None);
    }
}
