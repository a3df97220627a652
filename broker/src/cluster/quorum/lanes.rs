//! A shard's publishes from this node reach its host in the order they were numbered, also when
//! the host changes under them, as RabbitMQ's channel keeps its order when it resends to a quorum
//! queue's new leader (rabbit_fifo holds an enqueuer to its sequence).
//!
//! Normally every publish of a shard goes to the one host, through one ordered link queue (or into
//! the queue here, when this node hosts), so order comes for free. It can break only where the
//! host changes: a publish not stored by the old host is sent again, and later publishes must
//! not overtake it by going to the new host first. So each shard has a lane: while publishes sent
//! to one node are unanswered, a publish for another node waits (held, with any that come back
//! to be sent again), and once every sent one has its answer the held ones go to the shard's next
//! host in number order; publishes arriving meanwhile follow them to the same node. A lane only
//! ever holds publishes around a change of host; the steady state costs a counter.
//!
//! What the sender cannot see (a new host taking a burst's later requests after refusing its
//! first ones) the host catches: it refuses a publish that overtook an earlier one (order.rs),
//! and that one comes back here like any other refused for now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use warren_storage::store::Completion;

use super::shard::failed;
use super::target::ShardMetrics;

/// How long a publish whose host failed waits before it goes to the same node again (one that
/// was not hosting yet, or whose link dropped); to another leader it goes at once.
const RESEND_PAUSE: Duration = Duration::from_millis(100);

/// One publish to forward.
pub(super) struct Forward {
    pub group: u32,
    /// A quorum queue's publish: its number in the shard's sequence from this node.
    pub seq: Option<u64>,
    pub body: Bytes,
    pub done: Option<Completion>,
    /// A quorum queue's shard, watched for its leader: its publishes fail over to the next one.
    pub shard: Option<ShardMetrics>,
    /// After this the publish is not sent again, and its publisher gets basic.nack.
    pub deadline: Instant,
}

impl Forward {
    /// Whether it may be sent again now.
    pub fn may_resend(&self) -> bool {
        self.shard.is_some() && Instant::now() < self.deadline
    }
}

/// Where a lane's publishes go: this node's forwarder.
pub(super) trait Outlet: Send + Sync + 'static {
    /// This node's id.
    fn node(&self) -> u64;
    fn lanes(&self) -> &Lanes;
    /// Sends `batch` (one shard's, in order) to `node`, or into this node's queues when it is
    /// this node; their answers come back through [`Lanes::answered`].
    fn dispatch(self: &Arc<Self>, node: u64, batch: Vec<Forward>);
    /// Queues `batch` for another node, `node`, as [`Outlet::dispatch`] does, but without calling
    /// anything back (it runs under the lanes' lock); gives back what it could not queue.
    fn queue(self: &Arc<Self>, node: u64, batch: Vec<Forward>) -> Vec<Forward>;
}

/// Every shard's lane on this node.
#[derive(Default)]
pub(super) struct Lanes(parking_lot::Mutex<HashMap<u32, Lane>>);

#[derive(Default)]
struct Lane {
    /// The node the unanswered publishes went to (this node for those it stores as host).
    to: Option<u64>,
    unanswered: usize,
    /// Publishes waiting for every sent one's answer, then sent in number order.
    held: Vec<Forward>,
    /// A node that did not store some of them (the next go elsewhere first), and why.
    failed_at: Option<(u64, String)>,
    /// A task is sending the held publishes (those coming meanwhile wait for it too).
    draining: bool,
    /// Told when `unanswered` comes to 0.
    answered: Arc<Notify>,
}

impl Lane {
    fn open_to(&self, node: u64) -> bool {
        !self.draining && (self.unanswered == 0 || self.to == Some(node))
    }
}

impl Lanes {
    /// Sends a publish of shard `group`, numbered by `numbered`, to `node`, its shard's host,
    /// unless an earlier publish of the shard is on its way to another node (or there is no host
    /// now): then it is held. It is numbered and queued for its host under the lanes' lock, so
    /// publishes of channels on other threads reach the host in number order too, which the host
    /// holds them to (order.rs).
    pub fn send_in_order<O: Outlet>(
        &self,
        out: &Arc<O>,
        node: Option<u64>,
        group: u32,
        numbered: impl FnOnce() -> Forward,
    ) {
        let mut lanes = self.0.lock();
        let lane = lanes.entry(group).or_default();
        let forward = numbered();
        match node {
            Some(node) if lane.open_to(node) => {
                lane.to = Some(node);
                lane.unanswered += 1;
                if node == out.node() {
                    drop(lanes);
                    return out.dispatch(node, vec![forward]);
                }
                let unsent = out.queue(node, vec![forward]);
                drop(lanes);
                for forward in unsent {
                    failed(forward.done, "this node is stopping");
                }
            }
            _ => {
                lane.held.push(forward);
                start_draining(out, lane, group);
            }
        }
    }

    /// Whether a publish of shard `group` that node `me` hosts may go into its queue there now:
    /// no earlier one is on its way to another node or held.
    pub fn in_order_here(&self, group: u32, me: u64) -> bool {
        self.0.lock().get(&group).is_none_or(|l| l.open_to(me))
    }

    /// A publish of shard `group` that node `me` stores as its host is on its way.
    pub fn storing_here(&self, group: u32, me: u64) {
        let mut lanes = self.0.lock();
        let lane = lanes.entry(group).or_default();
        if lane.unanswered == 0 {
            lane.to = Some(me);
        }
        lane.unanswered += 1;
    }

    /// `count` publishes of shard `group` sent to node `from` have their answers; `again` (with
    /// `why`) are those to send to the shard's next host.
    pub fn answered<O: Outlet>(
        &self,
        out: &Arc<O>,
        group: u32,
        count: usize,
        again: Vec<Forward>,
        (from, why): (u64, String),
    ) {
        let mut lanes = self.0.lock();
        let lane = lanes.entry(group).or_default();
        lane.unanswered = lane.unanswered.saturating_sub(count);
        if !again.is_empty() {
            lane.failed_at = Some((from, why));
            lane.held.extend(again);
            start_draining(out, lane, group);
        }
        if lane.unanswered == 0 {
            lane.answered.notify_one();
        }
    }

    /// Runs `f` on shard `group`'s lane.
    fn lane<T>(&self, group: u32, f: impl FnOnce(&mut Lane) -> T) -> T {
        f(self.0.lock().entry(group).or_default())
    }
}

fn start_draining<O: Outlet>(out: &Arc<O>, lane: &mut Lane, group: u32) {
    if !lane.draining {
        lane.draining = true;
        tokio::spawn(drain(out.clone(), group, lane.answered.clone()));
    }
}

/// Sends shard `group`'s held publishes once every sent one is answered: to the shard's next
/// host (another node first when one failed), in number order, then what comes meanwhile to the
/// same node, until the lane is empty. A publish whose deadline passes with no host gets
/// basic.nack.
async fn drain<O: Outlet>(out: Arc<O>, group: u32, answered: Arc<Notify>) {
    loop {
        while out.lanes().lane(group, |l| l.unanswered) > 0 {
            answered.notified().await;
        }
        let next = out.lanes().lane(group, |l| {
            let deadline = l.held.iter().map(|f| f.deadline).min()?;
            Some((l.failed_at.take(), l.held[0].shard.clone(), deadline))
        });
        let Some((failed_at, metrics, deadline)) = next else {
            return out.lanes().lane(group, |l| {
                l.draining = false;
                l.failed_at = None;
            });
        };
        let node = match metrics {
            Some(mut metrics) => tokio::time::timeout_at(deadline, async {
                match &failed_at {
                    Some((node, _)) => next_host(&mut metrics, *node).await,
                    None => leader_where(&mut metrics, |_| true).await,
                }
            })
            .await
            .ok(),
            None => None,
        };
        let Some(node) = node else {
            let why = failed_at.map_or_else(|| "the queue's shard has no host".into(), |f| f.1);
            let now = Instant::now();
            let expired = out.lanes().lane(group, |l| {
                let (expired, kept) = std::mem::take(&mut l.held)
                    .into_iter()
                    .partition(|f: &Forward| f.deadline <= now);
                l.held = kept;
                expired
            });
            for forward in expired {
                failed(forward.done, &format!("no node stored it: {why}"));
            }
            continue;
        };
        loop {
            let batch = out.lanes().lane(group, |l| {
                if l.failed_at.is_some() {
                    return None;
                }
                if l.held.is_empty() {
                    l.draining = false;
                    return Some(Vec::new());
                }
                let mut batch = std::mem::take(&mut l.held);
                batch.sort_by_key(|f| f.seq);
                l.to = Some(node);
                l.unanswered += batch.len();
                Some(batch)
            });
            match batch {
                // One failed again: wait for the rest, then to the next host.
                None => break,
                Some(batch) if batch.is_empty() => return,
                Some(batch) => out.dispatch(node, batch),
            }
            tokio::task::yield_now().await;
        }
    }
}

/// The node to send a shard's publishes to after node `failed` did not store them: the shard's
/// leader once it is another node, or, after [`RESEND_PAUSE`], whichever node leads it.
async fn next_host(shard: &mut ShardMetrics, failed: u64) -> u64 {
    match tokio::time::timeout(RESEND_PAUSE, leader_where(shard, |l| l != failed)).await {
        Ok(other) => other,
        Err(_) => leader_where(shard, |_| true).await,
    }
}

/// The shard's leader once it is one that `wanted` accepts (never, if its metrics stop).
pub(super) async fn leader_where(shard: &mut ShardMetrics, wanted: impl Fn(u64) -> bool) -> u64 {
    use openraft::async_runtime::WatchReceiver;
    loop {
        if let Some(leader) = shard.borrow_watched().current_leader.filter(|l| wanted(*l)) {
            return leader;
        }
        if shard.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::raft::Types;
    use openraft::async_runtime::WatchSender;
    use openraft::type_config::alias::{WatchOf, WatchSenderOf};
    use openraft::RaftMetrics;

    type Metrics = WatchSenderOf<Types, RaftMetrics<Types>>;

    /// An outlet that records what went where and keeps it for the test to answer.
    struct Recorder {
        lanes: Lanes,
        sent: parking_lot::Mutex<Vec<(u64, Vec<Forward>)>>,
    }

    impl Outlet for Recorder {
        fn node(&self) -> u64 {
            1
        }
        fn lanes(&self) -> &Lanes {
            &self.lanes
        }
        fn dispatch(self: &Arc<Self>, node: u64, batch: Vec<Forward>) {
            self.sent.lock().push((node, batch));
        }
        fn queue(self: &Arc<Self>, node: u64, batch: Vec<Forward>) -> Vec<Forward> {
            self.dispatch(node, batch);
            Vec::new()
        }
    }

    impl Recorder {
        /// Where each dispatch went, with its sequence numbers.
        fn log(&self) -> Vec<(u64, Vec<u64>)> {
            let sent = self.sent.lock();
            let seqs = |b: &Vec<Forward>| b.iter().map(|f| f.seq.unwrap()).collect();
            sent.iter().map(|(n, b)| (*n, seqs(b))).collect()
        }

        /// Takes dispatch `i`'s publishes back (to answer them).
        fn take(&self, i: usize) -> Vec<Forward> {
            std::mem::take(&mut self.sent.lock()[i].1)
        }

        async fn wait_for(&self, dispatches: usize) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.sent.lock().len() < dispatches {
                assert!(Instant::now() < deadline, "dispatches: {:?}", self.log());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn leader(metrics: &Metrics, node: u64) {
        metrics.send_if_modified(|m| {
            m.current_leader = Some(node);
            true
        });
    }

    fn publish(seq: u64, metrics: &Metrics) -> Forward {
        Forward {
            group: 1,
            seq: Some(seq),
            body: Bytes::new(),
            done: None,
            shard: Some(metrics.subscribe()),
            deadline: Instant::now() + Duration::from_secs(10),
        }
    }

    #[test]
    fn publishes_numbered_on_several_threads_are_queued_for_their_host_in_number_order() {
        use openraft::async_runtime::watch::Watch;
        use std::sync::atomic::{AtomicU64, Ordering};
        let (metrics, _watching) = WatchOf::<Types>::channel(RaftMetrics::new_initial(1));
        let out = Arc::new(Recorder {
            lanes: Lanes::default(),
            sent: Default::default(),
        });
        let next = AtomicU64::new(0);
        std::thread::scope(|threads| {
            for _ in 0..4 {
                threads.spawn(|| {
                    for _ in 0..5_000 {
                        let number = || publish(next.fetch_add(1, Ordering::Relaxed), &metrics);
                        out.lanes.send_in_order(&out, Some(2), 1, number);
                    }
                });
            }
        });
        let queued: Vec<u64> = out.log().into_iter().flat_map(|(_, s)| s).collect();
        assert_eq!(queued.len(), 20_000);
        assert!(
            queued.windows(2).all(|w| w[0] < w[1]),
            "the host would refuse those after a gap (order.rs)"
        );
    }

    #[tokio::test]
    async fn publishes_for_a_new_host_wait_for_the_old_hosts_answers_and_go_after_its_resends() {
        use openraft::async_runtime::watch::Watch;
        let (metrics, _watching) = WatchOf::<Types>::channel(RaftMetrics::new_initial(1));
        leader(&metrics, 2);
        let out = Arc::new(Recorder {
            lanes: Lanes::default(),
            sent: Default::default(),
        });
        // Node 2 hosts: publishes go straight there, one after another.
        out.lanes
            .send_in_order(&out, Some(2), 1, || publish(0, &metrics));
        out.lanes
            .send_in_order(&out, Some(2), 1, || publish(1, &metrics));
        // Node 3 takes over: a publish for it waits while 0 and 1 are unanswered, and so does
        // this node's own one (it must not overtake them into a queue here either).
        leader(&metrics, 3);
        out.lanes
            .send_in_order(&out, Some(3), 1, || publish(2, &metrics));
        assert!(!out.lanes.in_order_here(1, 1));
        assert_eq!(out.log(), [(2, vec![0]), (2, vec![1])]);
        // 0 was stored; 1 was not and comes back: it goes to node 3 ahead of 2.
        out.take(0);
        out.lanes
            .answered(&out, 1, 1, Vec::new(), (2, String::new()));
        assert_eq!(out.log().len(), 2, "nothing is sent while 1 is unanswered");
        let again = out.take(1);
        out.lanes.answered(&out, 1, 1, again, (2, "lost".into()));
        out.wait_for(3).await;
        assert_eq!(out.log()[2], (3, vec![1, 2]));
        // The lane is open to node 3 again: the next publish goes straight after them.
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.lanes.lane(1, |l| l.draining) {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out.lanes
            .send_in_order(&out, Some(3), 1, || publish(3, &metrics));
        assert_eq!(out.log()[3], (3, vec![3]));
    }
}
