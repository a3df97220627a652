//! Per-publisher flow control: a connection that keeps publishing into a queue that is *behind* (a
//! ready backlog past [`BEHIND`] messages) is paused — its socket is not read, as under the memory
//! alarm but without connection.blocked — once its backlog growth passes a bound, while other traffic
//! is moving through the broker. Why: the broker serves its connections in turn on few cores, and a
//! runaway publisher's messages cost more than most (each one is paged to a spill file), so without a
//! bound it takes half the broker from everyone else (benches/README.md, "The runaway row").
//!
//! The accounting is RabbitMQ's credit flow (credit_flow.erl) per (connection, queue), with credit
//! coming back from two sources: every message that leaves the queue (delivered, dropped, expired,
//! purged) returns one, and time returns `growth_per_second`, so a queue nobody consumes still grows
//! — at a bounded rate — and never blocks its publisher for long. A pause lasts until an eighth of
//! the credit is back, until nobody else has moved a message for [`CONTENTION_WINDOW`] (then there
//! is nobody to protect: a lone publisher pages as fast as it likes), or `max_pause_ms` at most.
//! The thresholds are `[flow]` in warren.toml ([`FlowConfig`]). The publish path costs two relaxed
//! atomic loads per routed queue; the rest is per read burst.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use crate::queue::counters::ReadyCounters;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::config::FlowConfig;

/// Another connection moved a message this recently: the broker is shared, so pauses apply.
pub(crate) const CONTENTION_WINDOW: Duration = Duration::from_millis(100);
/// How often a paused connection looks at its credit again.
pub(crate) const POLL: Duration = Duration::from_millis(5);

/// [`FlowConfig`] in the units the accounting uses.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Off: nobody is ever paused (the counters still run).
    enabled: bool,
    /// A queue is behind when more than this many messages are ready (in memory or paged).
    behind: u64,
    /// Credit a publisher has per behind queue when it starts, and at most.
    burst: i64,
    /// A paused connection is read again once its credit is back to this.
    resume: i64,
    /// Backlog growth allowed per (connection, queue) per second beyond what the queue moves out.
    growth_per_sec: f64,
    /// The longest a connection stays unread for flow control (then it reads one burst at least).
    pub max_pause: Duration,
}

impl From<&FlowConfig> for Settings {
    fn from(c: &FlowConfig) -> Self {
        let burst = i64::from(c.credit);
        Settings {
            enabled: c.enabled,
            behind: c.behind_messages,
            burst,
            resume: (burst / 8).max(1),
            growth_per_sec: f64::from(c.growth_per_second),
            max_pause: Duration::from_millis(c.max_pause_ms),
        }
    }
}

impl Settings {
    /// More than `behind_messages` ready.
    fn is_behind(&self, queue: &ReadyCounters) -> bool {
        queue.backlog() > self.behind
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from(&FlowConfig::default())
    }
}

/// Broker-wide: the settings, and when a message last moved through a queue that is not behind (a
/// publish into it, or a delivery from any queue), stored as milliseconds since `epoch`.
#[derive(Debug)]
pub(crate) struct Activity {
    pub settings: Settings,
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new(Settings::default())
    }
}

impl Activity {
    pub fn new(settings: Settings) -> Self {
        Activity {
            settings,
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn mark(&self, now: Instant) {
        self.last_ms.store(self.ms(now).max(1), Relaxed);
    }

    /// Some message moved within [`CONTENTION_WINDOW`] of `now`.
    pub(crate) fn contended(&self, now: Instant) -> bool {
        let last = self.last_ms.load(Relaxed);
        last != 0 && self.ms(now).saturating_sub(last) <= CONTENTION_WINDOW.as_millis() as u64
    }
}

#[derive(Debug)]
struct Credit {
    queue: Arc<ReadyCounters>,
    credit: i64,
    /// The queue's departed count when credit was last returned.
    departed: u64,
    refilled: Instant,
}

impl Credit {
    /// The queue still exists (someone besides this entry holds its counters) and is behind.
    fn live_and_behind(&self, settings: &Settings) -> bool {
        Arc::strong_count(&self.queue) > 1 && settings.is_behind(&self.queue)
    }

    /// Returns what the queue moved out and what time allows since the last refill.
    fn refill(&mut self, settings: &Settings, now: Instant) {
        let departed = self.queue.departed();
        let moved = departed.saturating_sub(self.departed);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        let by_time = (elapsed * settings.growth_per_sec) as i64;
        self.departed = departed;
        // Time is only counted in whole messages, so short intervals do not round it away.
        if by_time > 0 || moved > 0 {
            self.refilled = now;
        }
        let back = i64::try_from(moved)
            .unwrap_or(i64::MAX)
            .saturating_add(by_time);
        self.credit = self.credit.saturating_add(back).min(settings.burst);
    }
}

/// One connection's credit with the behind queues it publishes to, owned by its task (no lock).
#[derive(Debug, Default)]
pub(crate) struct PublisherFlow {
    credits: Vec<Credit>,
    /// Published into a queue that is not behind since the last [`PublisherFlow::end_burst`].
    moved: bool,
}

impl PublisherFlow {
    /// A message of this connection entered `queue` (the hot path).
    pub fn published(&mut self, activity: &Activity, queue: &Arc<ReadyCounters>, now: Instant) {
        let settings = &activity.settings;
        if !settings.is_behind(queue) {
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
                credit: settings.burst - 1,
                departed: queue.departed(),
                refilled: now,
            }),
        }
    }

    /// A delivery left through this connection: traffic others would see slowed.
    pub fn delivered(&mut self) {
        self.moved = true;
    }

    /// After a burst of input or output: tells `activity` if messages moved through healthy queues.
    pub(crate) fn end_burst(&mut self, activity: &Activity, now: Instant) {
        if std::mem::take(&mut self.moved) {
            activity.mark(now);
        }
    }

    /// Whether the connection should stop reading now: some behind queue's credit is spent while
    /// other traffic moves. Credit is returned first; queues no longer behind are forgotten. Debt run
    /// up while nobody else moved messages is forgiven: it harmed nobody, and repaying it later would
    /// pause a publisher for as long as it had been alone.
    pub(crate) fn should_pause(&mut self, activity: &Activity, now: Instant) -> bool {
        let settings = &activity.settings;
        if self.credits.is_empty() || !settings.enabled {
            return false;
        }
        self.credits.retain(|c| c.live_and_behind(settings));
        let contended = activity.contended(now);
        let mut spent = false;
        for c in &mut self.credits {
            c.refill(settings, now);
            if !contended {
                c.credit = c.credit.max(0);
            }
            spent |= c.credit <= 0;
        }
        spent && contended
    }

    /// Whether a paused connection may read again.
    pub(crate) fn may_resume(&mut self, activity: &Activity, now: Instant) -> bool {
        let settings = &activity.settings;
        self.credits.retain(|c| c.live_and_behind(settings));
        let mut ready = true;
        for c in &mut self.credits {
            c.refill(settings, now);
            ready &= c.credit >= settings.resume;
        }
        ready || !activity.contended(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings {
        enabled: true,
        behind: 16_384,
        burst: 2_048,
        resume: 256,
        growth_per_sec: 2_000.0,
        max_pause: Duration::from_millis(200),
    };
    const BEHIND: u64 = S.behind;
    const BURST: i64 = S.burst;
    const RESUME: i64 = S.resume;
    const GROWTH_PER_SEC: f64 = S.growth_per_sec;

    fn activity() -> Activity {
        Activity::new(S)
    }

    fn behind_queue() -> Arc<ReadyCounters> {
        let q = Arc::new(ReadyCounters::default());
        q.arrive(2 * BEHIND);
        q
    }

    #[test]
    fn a_queue_that_keeps_up_costs_no_credit() {
        let q = Arc::new(ReadyCounters::default());
        q.arrive(BEHIND);
        let activity = activity();
        let mut flow = PublisherFlow::default();
        let now = Instant::now();
        activity.mark(now);
        for _ in 0..10 * BURST {
            flow.published(&activity, &q, now);
        }
        assert!(flow.credits.is_empty());
        assert!(!flow.should_pause(&activity, now));
    }

    #[test]
    fn spent_credit_pauses_only_while_others_move_messages() {
        let q = behind_queue();
        let activity = activity();
        let mut flow = PublisherFlow::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            flow.published(&activity, &q, t0);
        }
        assert!(
            !flow.should_pause(&activity, t0),
            "nobody else moves messages: a lone publisher is never paused"
        );
        assert_eq!(flow.credits[0].credit, 0, "its debt is forgiven");
        flow.published(&activity, &q, t0);
        activity.mark(t0);
        assert!(flow.should_pause(&activity, t0));
        // Others go quiet: the pause ends, credit or not.
        let later = t0 + CONTENTION_WINDOW + Duration::from_millis(5);
        assert!(flow.may_resume(&activity, later));
    }

    #[test]
    fn credit_comes_back_with_departures_and_with_time() {
        let q = behind_queue();
        let activity = activity();
        let mut flow = PublisherFlow::default();
        let t0 = Instant::now();
        for _ in 0..BURST + 100 {
            flow.published(&activity, &q, t0);
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
            flow.published(&activity, &q, t0);
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
    fn the_defaults_are_what_these_tests_and_the_docs_assume() {
        let d = Settings::default();
        assert_eq!(
            (
                d.enabled,
                d.behind,
                d.burst,
                d.resume,
                d.growth_per_sec,
                d.max_pause
            ),
            (
                S.enabled,
                S.behind,
                S.burst,
                S.resume,
                S.growth_per_sec,
                S.max_pause
            )
        );
    }

    #[test]
    fn off_never_pauses_and_a_deleted_queue_is_forgotten() {
        let q = behind_queue();
        let activity = Activity::new(Settings {
            enabled: false,
            ..S
        });
        let mut flow = PublisherFlow::default();
        let t0 = Instant::now();
        for _ in 0..2 * BURST {
            flow.published(&activity, &q, t0);
        }
        activity.mark(t0);
        assert!(!flow.should_pause(&activity, t0));
        let activity = Activity::new(S);
        activity.mark(t0);
        assert!(flow.should_pause(&activity, t0));
        drop(q);
        assert!(flow.may_resume(&activity, t0));
        assert!(flow.credits.is_empty(), "the queue is gone: its entry too");
    }

    #[test]
    fn a_queue_that_catches_up_is_forgotten() {
        let q = behind_queue();
        let activity = activity();
        let mut flow = PublisherFlow::default();
        let t0 = Instant::now();
        for _ in 0..2 * BURST {
            flow.published(&activity, &q, t0);
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
