//! Per-publisher flow control: a connection that keeps publishing into a queue that is *behind* (a
//! ready backlog past [`BEHIND`] messages) is paused — its socket is not read, as under the memory
//! alarm but without connection.blocked — once its backlog growth passes a bound, while other traffic
//! is moving through the broker. Why: the broker serves its connections in turn on few cores, and a
//! runaway publisher's messages cost more than most (each one is paged to a spill file), so without a
//! bound it takes half the broker from everyone else (benches/README.md, "The runaway row").
//!
//! The accounting is RabbitMQ's credit flow (credit_flow.erl) per (connection, queue), with credit
//! coming back from two sources: every message that leaves the queue (delivered, dropped, expired,
//! purged) returns one, and time returns [`GROWTH_PER_SEC`] per second, so a queue nobody consumes
//! still grows — at a bounded rate — and never blocks its publisher for long. A pause lasts until
//! [`RESUME`] credit is back, until nobody else has moved a message for [`CONTENTION_WINDOW`] (then
//! there is nobody to protect: a lone publisher pages as fast as it likes), or [`MAX_PAUSE`] at most.
//! The publish path costs two relaxed atomic loads per routed queue; the rest is per read burst.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A queue is behind when this many messages are ready (in memory or paged).
pub const BEHIND: u64 = 16_384;
/// Credit a publisher has per behind queue when it starts, and at most.
pub const BURST: i64 = 2_048;
/// Backlog growth allowed per (connection, queue) per second beyond what the queue moves out.
pub const GROWTH_PER_SEC: f64 = 2_000.0;
/// A paused connection is read again once its credit is back to this.
pub const RESUME: i64 = 256;
/// Another connection moved a message this recently: the broker is shared, so pauses apply.
pub const CONTENTION_WINDOW: Duration = Duration::from_millis(100);
/// The longest a connection stays unread for flow control (then it reads one burst at least).
pub const MAX_PAUSE: Duration = Duration::from_millis(200);
/// How often a paused connection looks at its credit again.
pub const POLL: Duration = Duration::from_millis(5);

/// A queue's message counters, read without its lock: ready = arrived − departed.
#[derive(Debug, Default)]
pub struct QueueFlow {
    arrived: AtomicU64,
    departed: AtomicU64,
}

impl QueueFlow {
    pub fn arrive(&self, n: u64) {
        self.arrived.fetch_add(n, Relaxed);
    }

    pub fn depart(&self, n: u64) {
        self.departed.fetch_add(n, Relaxed);
    }

    pub fn departed(&self) -> u64 {
        self.departed.load(Relaxed)
    }

    /// Ready messages (approximate while other threads change the queue).
    pub fn backlog(&self) -> u64 {
        self.arrived.load(Relaxed).saturating_sub(self.departed())
    }

    pub fn behind(&self) -> bool {
        self.backlog() > BEHIND
    }
}

/// Broker-wide: when a message last moved through a queue that is not behind (a publish into it, or
/// a delivery from any queue). Stored as milliseconds since `epoch`.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn mark(&self, now: Instant) {
        self.last_ms.store(self.ms(now).max(1), Relaxed);
    }

    /// Some message moved within [`CONTENTION_WINDOW`] of `now`.
    pub fn contended(&self, now: Instant) -> bool {
        let last = self.last_ms.load(Relaxed);
        last != 0 && self.ms(now).saturating_sub(last) <= CONTENTION_WINDOW.as_millis() as u64
    }
}

#[derive(Debug)]
struct Credit {
    queue: Arc<QueueFlow>,
    credit: i64,
    /// The queue's departed count when credit was last returned.
    departed: u64,
    refilled: Instant,
}

impl Credit {
    /// Returns what the queue moved out and what time allows since the last refill.
    fn refill(&mut self, now: Instant) {
        let departed = self.queue.departed();
        let moved = departed.saturating_sub(self.departed);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        let by_time = (elapsed * GROWTH_PER_SEC) as i64;
        self.departed = departed;
        // Time is only counted in whole messages, so short intervals do not round it away.
        if by_time > 0 || moved > 0 {
            self.refilled = now;
        }
        let back = i64::try_from(moved)
            .unwrap_or(i64::MAX)
            .saturating_add(by_time);
        self.credit = self.credit.saturating_add(back).min(BURST);
    }
}

/// One connection's credit with the behind queues it publishes to, owned by its task (no lock).
#[derive(Debug, Default)]
pub struct PublisherFlow {
    credits: Vec<Credit>,
    /// Published into a queue that is not behind since the last [`PublisherFlow::end_burst`].
    moved: bool,
}

impl PublisherFlow {
    /// A message of this connection entered `queue` (the hot path).
    pub fn published(&mut self, queue: &Arc<QueueFlow>, now: impl FnOnce() -> Instant) {
        if !queue.behind() {
            self.moved = true;
            return;
        }
        match self
            .credits
            .iter_mut()
            .find(|c| Arc::ptr_eq(&c.queue, queue))
        {
            Some(c) => c.credit -= 1,
            None => self.credits.push(Credit {
                queue: queue.clone(),
                credit: BURST - 1,
                departed: queue.departed(),
                refilled: now(),
            }),
        }
    }

    /// A delivery left through this connection: traffic others would see slowed.
    pub fn delivered(&mut self) {
        self.moved = true;
    }

    /// After a burst of input or output: tells `activity` if messages moved through healthy queues.
    pub fn end_burst(&mut self, activity: &Activity, now: Instant) {
        if std::mem::take(&mut self.moved) {
            activity.mark(now);
        }
    }

    /// Whether the connection should stop reading now: some behind queue's credit is spent while
    /// other traffic moves. Credit is returned first; queues no longer behind are forgotten. Debt run
    /// up while nobody else moved messages is forgiven: it harmed nobody, and repaying it later would
    /// pause a publisher for as long as it had been alone.
    pub fn should_pause(&mut self, activity: &Activity, now: Instant) -> bool {
        if self.credits.is_empty() {
            return false;
        }
        self.credits.retain(|c| c.queue.behind());
        let contended = activity.contended(now);
        let mut spent = false;
        for c in &mut self.credits {
            c.refill(now);
            if !contended {
                c.credit = c.credit.max(0);
            }
            spent |= c.credit <= 0;
        }
        spent && contended
    }

    /// Whether a paused connection may read again.
    pub fn may_resume(&mut self, activity: &Activity, now: Instant) -> bool {
        self.credits.retain(|c| c.queue.behind());
        let mut ready = true;
        for c in &mut self.credits {
            c.refill(now);
            ready &= c.credit >= RESUME;
        }
        ready || !activity.contended(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind_queue() -> Arc<QueueFlow> {
        let q = Arc::new(QueueFlow::default());
        q.arrive(2 * BEHIND);
        q
    }

    #[test]
    fn a_queue_that_keeps_up_costs_no_credit() {
        let q = Arc::new(QueueFlow::default());
        q.arrive(BEHIND);
        let activity = Activity::default();
        let mut flow = PublisherFlow::default();
        let now = Instant::now();
        activity.mark(now);
        for _ in 0..10 * BURST {
            flow.published(&q, || now);
        }
        assert!(flow.credits.is_empty());
        assert!(!flow.should_pause(&activity, now));
    }

    #[test]
    fn spent_credit_pauses_only_while_others_move_messages() {
        let q = behind_queue();
        let activity = Activity::default();
        let mut flow = PublisherFlow::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            flow.published(&q, || t0);
        }
        assert!(
            !flow.should_pause(&activity, t0),
            "nobody else moves messages: a lone publisher is never paused"
        );
        assert_eq!(flow.credits[0].credit, 0, "its debt is forgiven");
        flow.published(&q, || t0);
        activity.mark(t0);
        assert!(flow.should_pause(&activity, t0));
        // Others go quiet: the pause ends, credit or not.
        let later = t0 + CONTENTION_WINDOW + Duration::from_millis(5);
        assert!(flow.may_resume(&activity, later));
    }

    #[test]
    fn credit_comes_back_with_departures_and_with_time() {
        let q = behind_queue();
        let activity = Activity::default();
        let mut flow = PublisherFlow::default();
        let t0 = Instant::now();
        for _ in 0..BURST + 100 {
            flow.published(&q, || t0);
        }
        activity.mark(t0);
        assert!(flow.should_pause(&activity, t0));
        assert_eq!(flow.credits[0].credit, -100);
        // A consumer takes messages: one credit each.
        q.depart(100 + RESUME as u64 - 1);
        assert!(!flow.may_resume(&activity, t0), "one short of RESUME");
        q.depart(1);
        assert!(flow.may_resume(&activity, t0));
        assert_eq!(flow.credits[0].credit, RESUME);
        // Time alone: GROWTH_PER_SEC a second, never more than BURST.
        for _ in 0..RESUME {
            flow.published(&q, || t0);
        }
        assert!(!flow.may_resume(&activity, t0));
        let wait = 1.5 * RESUME as f64 / GROWTH_PER_SEC;
        let t1 = t0 + Duration::from_secs_f64(wait);
        activity.mark(t1);
        assert!(flow.may_resume(&activity, t1));
        assert_eq!(flow.credits[0].credit, (wait * GROWTH_PER_SEC) as i64);
        let t2 = t1 + Duration::from_secs(10);
        flow.may_resume(&activity, t2);
        assert_eq!(flow.credits[0].credit, BURST);
    }

    #[test]
    fn a_queue_that_catches_up_is_forgotten() {
        let q = behind_queue();
        let activity = Activity::default();
        let mut flow = PublisherFlow::default();
        let t0 = Instant::now();
        for _ in 0..2 * BURST {
            flow.published(&q, || t0);
        }
        activity.mark(t0);
        assert!(flow.should_pause(&activity, t0));
        q.depart(BEHIND);
        assert!(flow.may_resume(&activity, t0));
        assert!(
            flow.credits.is_empty(),
            "backlog back to BEHIND: not behind"
        );
    }
}
