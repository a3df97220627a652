//! Property tests of the queue state machine. A driver plays a random session against a queue the
//! way the live queue does (mod.rs): it applies commands, performs their effects (deliveries to
//! consumers with credit, failed pushes to vanished connections, timers that fire, acks, requeues,
//! rejects, basic.get, purges, expiry, deletion) and logs every command with its time. Then:
//! - the log replayed on a fresh state gives the same state and the same effects (with the live run
//!   paging its ready list to spill files and the replay keeping everything in memory);
//! - a snapshot taken part-way, plus the rest of the log, gives what the full replay gives;
//! - no message is lost or duplicated on the way (every accepted message is ready, delivered and
//!   unsettled, settled, dead-lettered, purged, or dropped with its deleted queue).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::message::memory::MemoryAccount;
use crate::queue::arguments::Overflow;

/// A consumer as the tests name it.
#[derive(Debug, Clone)]
struct Client {
    id: u8,
    priority: i64,
    exclusive: bool,
}

impl ConsumerHandle for Client {
    fn is(&self, other: &Self) -> bool {
        self.id == other.id
    }
    fn priority(&self) -> i64 {
        self.priority
    }
    fn exclusive(&self) -> bool {
        self.exclusive
    }
}

#[derive(Debug, Clone)]
enum Op {
    Publish {
        size: u16,
        priority: u8,
        ttl_ms: Option<u16>,
        persistent: bool,
    },
    Consume {
        id: u8,
        priority: i64,
        exclusive: bool,
        prefetch: u8,
    },
    Cancel {
        id: u8,
    },
    /// The consumer's connection is gone: pushes to it fail from now on.
    Vanish {
        id: u8,
    },
    /// The consumer's channel closes: it leaves, its unacked messages come back.
    Close {
        id: u8,
    },
    Ack {
        id: u8,
        n: u8,
    },
    Requeue {
        id: u8,
        n: u8,
    },
    Reject {
        id: u8,
        n: u8,
    },
    Get {
        ack: bool,
    },
    SettleGot,
    Purge,
    Touch,
    Advance {
        ms: u16,
    },
    Fire,
    Delete,
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..4u8;
    prop_oneof![
        8 => (1..200u16, 0..6u8, proptest::option::weighted(0.3, 0..40u16), any::<bool>()).prop_map(
            |(size, priority, ttl_ms, persistent)| Op::Publish { size, priority, ttl_ms, persistent }
        ),
        2 => (id.clone(), -1..2i64, proptest::bool::weighted(0.1), 1..4u8).prop_map(
            |(id, priority, exclusive, prefetch)| Op::Consume { id, priority, exclusive, prefetch }
        ),
        1 => id.clone().prop_map(|id| Op::Cancel { id }),
        1 => id.clone().prop_map(|id| Op::Vanish { id }),
        1 => id.clone().prop_map(|id| Op::Close { id }),
        4 => (id.clone(), 1..4u8).prop_map(|(id, n)| Op::Ack { id, n }),
        2 => (id.clone(), 1..4u8).prop_map(|(id, n)| Op::Requeue { id, n }),
        1 => (id, 1..3u8).prop_map(|(id, n)| Op::Reject { id, n }),
        2 => any::<bool>().prop_map(|ack| Op::Get { ack }),
        1 => Just(Op::SettleGot),
        1 => Just(Op::Purge),
        1 => prop_oneof![9 => Just(Op::Touch), 1 => Just(Op::Delete)],
        3 => (1..30u16).prop_map(|ms| Op::Advance { ms }),
        2 => Just(Op::Fire),
    ]
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        (
            proptest::option::weighted(0.3, 0..6u64),
            proptest::option::weighted(0.2, 0..600u64),
            prop_oneof![
                Just(Overflow::DropHead),
                Just(Overflow::RejectPublish),
                Just(Overflow::RejectPublishDlx)
            ],
            proptest::option::weighted(0.3, 0..50u64),
        ),
        (
            proptest::option::weighted(0.3, 0..4u8),
            proptest::option::weighted(0.3, 0..3u64),
            proptest::bool::weighted(0.2),
            proptest::option::weighted(0.2, 5..100u64),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (max_length, max_length_bytes, overflow, message_ttl_ms),
                (max_priority, delivery_limit, single_active_consumer, expires_ms, auto_delete),
            )| Settings {
                args: QueueArguments {
                    max_length,
                    max_length_bytes,
                    overflow,
                    message_ttl_ms,
                    max_priority,
                    delivery_limit,
                    single_active_consumer,
                    expires_ms,
                    ..Default::default()
                },
                auto_delete,
                stores: true,
                delivers_committed: false,
            },
        )
}

#[derive(Debug, Default)]
struct Account(AtomicU64);

impl MemoryAccount for Account {
    fn charge(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }
    fn release(&self, bytes: u64) {
        self.0.fetch_sub(bytes, Ordering::Relaxed);
    }
    fn used(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn high_watermark(&self) -> u64 {
        1 << 40
    }
}

/// An effect as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Deliver(u8, u64),
    Refund(u8),
    Store(u64),
    Forget(u64),
    Returned(u64),
    Dead(u64, &'static str),
    WakeAt(Wake, Instant),
    Expired,
    Cancelled(u8),
}

fn seen(effect: &Effect<Client>) -> Seen {
    match effect {
        Effect::Deliver { consumer, entry } => Seen::Deliver(consumer.id, entry.seq),
        Effect::Refund { consumer } => Seen::Refund(consumer.id),
        Effect::Store { id } => Seen::Store(*id),
        Effect::Forget { id } => Seen::Forget(*id),
        Effect::Returned { id } => Seen::Returned(*id),
        Effect::DeadLetter { entry, reason } => Seen::Dead(entry.seq, reason.as_str()),
        Effect::WakeAt { wake, at } => Seen::WakeAt(*wake, *at),
        Effect::Expired => Seen::Expired,
        Effect::Cancelled { consumer } => Seen::Cancelled(consumer.id),
    }
}

/// A ready entry as the tests compare it: seq, priority, redelivered, returns, log id, deadline, body.
type EntryView = (u64, u8, bool, u64, Option<u64>, Option<Instant>, Bytes);

/// A state as the tests compare it: its snapshot, with messages by their bodies.
#[derive(Debug, PartialEq, Eq)]
struct View {
    ready: Vec<EntryView>,
    consumers: Vec<u8>,
    next_consumer: usize,
    next_seq: u64,
    deleted: bool,
    had_consumer: bool,
    last_used: Instant,
    ttl_armed: Option<Instant>,
}

fn view(state: &mut QueueState<Client>) -> View {
    let s = state.snapshot();
    View {
        ready: s
            .ready
            .iter()
            .map(|e| {
                let body = e.message.body.clone();
                let at = e.expires_at;
                (
                    e.seq,
                    e.priority,
                    e.redelivered,
                    e.returns,
                    e.store_id,
                    at,
                    body,
                )
            })
            .collect(),
        consumers: s.consumers.iter().map(|c| c.id).collect(),
        next_consumer: s.next_consumer,
        next_seq: s.next_seq,
        deleted: s.deleted,
        had_consumer: s.had_consumer,
        last_used: s.last_used,
        ttl_armed: s.ttl_armed,
    }
}

#[derive(Debug, Default)]
struct Side {
    credit: u8,
    attached: Option<Client>,
    gone: bool,
    unacked: Vec<Entry>,
}

/// Where every accepted message is.
#[derive(Debug, Default)]
struct Tally {
    accepted: u64,
    settled: u64,
    dead: u64,
    purged: u64,
    dropped: u64,
}

/// The live side: a queue driven as mod.rs drives it, logging what it applies.
struct Live {
    state: QueueState<Client>,
    log: Vec<(Command<Client>, Now)>,
    /// The effects of each logged command.
    effects: Vec<Vec<Seen>>,
    initial: Vec<Seen>,
    clients: BTreeMap<u8, Side>,
    got: Vec<Entry>,
    timers: Vec<(Wake, Instant)>,
    now: Now,
    next_store_id: u64,
    published: u64,
    tally: Tally,
}

fn message(
    n: u64,
    size: u16,
    priority: u8,
    ttl_ms: Option<u16>,
    persistent: bool,
    wall_ms: u64,
) -> Arc<Message> {
    let mut body = format!("m{n}-").into_bytes();
    body.resize(usize::from(size).max(body.len()), b'.');
    Arc::new(Message {
        exchange: "x".into(),
        routing_key: "k".into(),
        publisher: Arc::from("nova"),
        properties: Bytes::from_static(&[0x00, 0x00]),
        body: Bytes::from(body),
        priority,
        expiration_ms: ttl_ms.map(u64::from),
        charge: None,
        persistent,
        published_at_ms: wall_ms,
        stored: std::sync::OnceLock::new(),
    })
}

impl Live {
    fn new(settings: Settings, paging: Option<Arc<Paging>>, now: Now) -> Self {
        let mut fx = Vec::new();
        let state = QueueState::new(settings, paging, now, &mut fx);
        let mut live = Live {
            state,
            log: Vec::new(),
            effects: Vec::new(),
            initial: fx.iter().map(seen).collect(),
            clients: BTreeMap::new(),
            got: Vec::new(),
            timers: Vec::new(),
            now,
            next_store_id: 1,
            published: 0,
            tally: Tally::default(),
        };
        live.perform_all(fx);
        live
    }

    fn apply(&mut self, command: Command<Client>) -> Outcome {
        self.log.push((command.clone(), self.now));
        let mut fx = Vec::new();
        let outcome = self.state.apply(command, self.now, &mut fx);
        self.effects.push(fx.iter().map(seen).collect());
        self.perform_all(fx);
        outcome
    }

    fn perform_all(&mut self, fx: Vec<Effect<Client>>) {
        for effect in fx {
            match effect {
                Effect::Deliver { consumer, entry } => {
                    let id = consumer.id;
                    let side = self.clients.entry(id).or_default();
                    if side.gone {
                        // As mod.rs does when a push finds its connection gone.
                        side.credit += 1;
                        self.apply(Command::Return { entry });
                        self.apply(Command::Detach { consumer });
                        self.clients.entry(id).or_default().attached = None;
                    } else {
                        side.unacked.push(entry);
                    }
                }
                Effect::Refund { consumer } => {
                    self.clients.entry(consumer.id).or_default().credit += 1
                }
                Effect::Store { .. } | Effect::Forget { .. } | Effect::Returned { .. } => {}
                Effect::DeadLetter { .. } => self.tally.dead += 1,
                Effect::WakeAt { wake, at } => self.timers.push((wake, at)),
                Effect::Expired => {
                    if let Outcome::Count(n) = self.apply(Command::Delete) {
                        self.tally.dropped += u64::from(n);
                    }
                }
                Effect::Cancelled { consumer } => {
                    self.clients.entry(consumer.id).or_default().attached = None;
                }
            }
        }
    }

    /// What the live queue does after a change: hand out to consumers with credit, then rest.
    fn dispatch(&mut self) {
        self.hand_out();
        self.apply(Command::Expire);
    }

    fn hand_out(&mut self) {
        while self.state.can_dispatch() {
            let clients = &mut self.clients;
            let picked = self.state.pick(|c| {
                let side = clients.entry(c.id).or_default();
                let has = side.credit > 0;
                side.credit -= u8::from(has);
                has
            });
            let Some(consumer) = picked.cloned() else {
                break;
            };
            self.apply(Command::Checkout { consumer });
        }
    }

    fn take(&mut self, id: u8, n: u8) -> Vec<Entry> {
        let side = self.clients.entry(id).or_default();
        let n = usize::from(n).min(side.unacked.len());
        side.credit += n as u8;
        side.unacked.drain(..n).collect()
    }

    fn requeue(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if self.state.is_deleted() {
                self.tally.dropped += 1;
            }
            self.apply(Command::Requeue { entry });
        }
        self.dispatch();
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Publish {
                size,
                priority,
                ttl_ms,
                persistent,
            } => {
                self.published += 1;
                let message = message(
                    self.published,
                    size,
                    priority,
                    ttl_ms,
                    persistent,
                    self.now.wall_ms,
                );
                let store_id = persistent.then(|| {
                    self.next_store_id += 1;
                    self.next_store_id
                });
                let dead_before = self.tally.dead;
                match self.apply(Command::Enqueue { message, store_id }) {
                    Outcome::Enqueued(Enqueued::Yes) => {
                        self.tally.accepted += 1;
                        self.hand_out();
                        self.apply(Command::Trim);
                    }
                    // A refused publish dead-letters (reject-publish-dlx) a message never accepted.
                    _ => self.tally.dead = dead_before,
                }
            }
            Op::Consume {
                id,
                priority,
                exclusive,
                prefetch,
            } => {
                if self
                    .clients
                    .get(&id)
                    .is_some_and(|s| s.attached.is_some() || s.gone)
                {
                    return;
                }
                let consumer = Client {
                    id,
                    priority,
                    exclusive,
                };
                let side = self.clients.entry(id).or_default();
                side.credit = prefetch.saturating_sub(side.unacked.len() as u8);
                if let Outcome::Attached(Ok(())) = self.apply(Command::Attach {
                    consumer: consumer.clone(),
                }) {
                    self.clients.entry(id).or_default().attached = Some(consumer);
                    self.dispatch();
                }
            }
            Op::Cancel { id } => {
                if let Some(consumer) = self.clients.get_mut(&id).and_then(|s| s.attached.take()) {
                    self.apply(Command::Detach { consumer });
                }
            }
            Op::Vanish { id } => self.clients.entry(id).or_default().gone = true,
            Op::Close { id } => {
                if let Some(consumer) = self.clients.get_mut(&id).and_then(|s| s.attached.take()) {
                    self.apply(Command::Detach { consumer });
                }
                let entries = self.take(id, u8::MAX);
                self.requeue(entries);
            }
            Op::Ack { id, n } => {
                for entry in self.take(id, n) {
                    self.tally.settled += 1;
                    self.apply(Command::Settle { entry });
                }
                self.dispatch();
            }
            Op::Requeue { id, n } => {
                let entries = self.take(id, n);
                self.requeue(entries);
            }
            Op::Reject { id, n } => {
                for entry in self.take(id, n) {
                    self.apply(Command::Reject { entry });
                }
                self.dispatch();
            }
            Op::Get { ack } => {
                if let Outcome::Got(Some((entry, _))) = self.apply(Command::Get) {
                    if ack {
                        self.got.push(entry);
                    } else {
                        self.tally.settled += 1;
                        self.apply(Command::Settle { entry });
                    }
                }
            }
            Op::SettleGot => {
                for entry in std::mem::take(&mut self.got) {
                    self.tally.settled += 1;
                    self.apply(Command::Settle { entry });
                }
            }
            Op::Purge => {
                if let Outcome::Count(n) = self.apply(Command::Purge) {
                    self.tally.purged += u64::from(n);
                }
            }
            Op::Touch => {
                self.apply(Command::Touch);
            }
            Op::Advance { ms } => {
                self.now.instant += Duration::from_millis(u64::from(ms));
                self.now.wall_ms += u64::from(ms);
            }
            Op::Fire => {
                let now = self.now.instant;
                let (due, later) = std::mem::take(&mut self.timers)
                    .into_iter()
                    .partition(|(_, at)| *at <= now);
                self.timers = later;
                for (wake, at) in due {
                    self.apply(Command::Woken { wake, at });
                    if wake == Wake::Ttl {
                        self.dispatch();
                    }
                }
            }
            Op::Delete => {
                if let Outcome::Count(n) = self.apply(Command::Delete) {
                    self.tally.dropped += u64::from(n);
                }
            }
        }
    }

    /// No message lost or counted twice.
    fn check_conservation(&mut self) -> Result<(), TestCaseError> {
        let unacked: u64 = self.clients.values().map(|s| s.unacked.len() as u64).sum();
        let held = u64::from(self.state.ready_len()) + unacked + self.got.len() as u64;
        let t = &self.tally;
        prop_assert_eq!(
            t.accepted,
            held + t.settled + t.dead + t.purged + t.dropped,
            "{:?}, ready {}, unacked {}",
            t,
            self.state.ready_len(),
            unacked
        );
        let mut seqs: Vec<u64> = self
            .clients
            .values()
            .flat_map(|s| s.unacked.iter().map(|e| e.seq))
            .collect();
        seqs.extend(self.state.snapshot().ready.iter().map(|e| e.seq));
        let n = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        prop_assert_eq!(
            n,
            seqs.len(),
            "a message is both ready and delivered, or delivered twice"
        );
        Ok(())
    }
}

/// Applies `log` to `state`, returning each command's effects.
fn replay(state: &mut QueueState<Client>, log: &[(Command<Client>, Now)]) -> Vec<Vec<Seen>> {
    log.iter()
        .map(|(command, now)| {
            let mut fx = Vec::new();
            state.apply(command.clone(), *now, &mut fx);
            fx.iter().map(seen).collect()
        })
        .collect()
}

fn start() -> (Instant, Now) {
    let epoch = Instant::now();
    // Later than the paging epoch by more than any test's clock moves back (restored ages).
    let now = Now {
        instant: epoch + Duration::from_secs(3600),
        wall_ms: 1_700_000_000_000,
    };
    (epoch, now)
}

proptest! {
    // 192 cases in every test run; PROPTEST_CASES=N for a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(192),
        ..ProptestConfig::default()
    })]

    #[test]
    fn replay_equals_the_live_run_and_a_snapshot_plus_replay_equals_a_full_replay(
        settings in settings(),
        recovered in proptest::collection::vec((1..100u16, 0..4u8, proptest::option::weighted(0.3, 0..2000u16)), 0..4),
        ops in proptest::collection::vec(op(), 1..80),
        paged in any::<bool>(),
        cut in 0.0..1.0f64,
    ) {
        let (epoch, now) = start();
        let dir = tempfile::tempdir().unwrap();
        let paging = paged.then(|| {
            Paging::new(&dir.path().join("spill"), 400, Arc::new(Account::default()), 0.5, epoch).unwrap()
        });
        let mut live = Live::new(settings.clone(), paging, now);
        // Recovery: messages from the log, published up to two seconds ago.
        for (i, (size, priority, ttl)) in recovered.into_iter().enumerate() {
            let wall = now.wall_ms - 1000 + i as u64 * 300;
            let message = message(1000 + i as u64, size, priority, ttl, true, wall);
            live.tally.accepted += 1;
            live.apply(Command::Restore {
                id: 1000 + i as u64,
                message,
                redelivered: true,
                returns: 0,
            });
        }
        live.dispatch();
        for op in ops {
            live.run(op);
            live.check_conservation()?;
        }

        // Replay, without paging.
        let mut fx = Vec::new();
        let mut replayed = QueueState::new(settings.clone(), None, now, &mut fx);
        prop_assert_eq!(fx.iter().map(seen).collect::<Vec<_>>(), live.initial.clone());
        let effects = replay(&mut replayed, &live.log);
        prop_assert_eq!(&effects, &live.effects);
        let full = view(&mut replayed);
        prop_assert_eq!(&view(&mut live.state), &full);

        // A snapshot after the first `k` commands, then the rest.
        let k = (live.log.len() as f64 * cut) as usize;
        let mut first = QueueState::new(settings.clone(), None, now, &mut Vec::new());
        replay(&mut first, &live.log[..k]);
        let snapshot = first.snapshot();
        let mut resumed = QueueState::from_snapshot(settings, None, snapshot);
        let tail = replay(&mut resumed, &live.log[k..]);
        prop_assert_eq!(&tail[..], &live.effects[k..]);
        prop_assert_eq!(view(&mut resumed), full);
    }
}

/// A durable queue (handing out only committed messages, or not) with consumer 1 of `prefetch`,
/// after three persistent messages were published to it.
fn consumer_and_three_published(delivers_committed: bool, prefetch: u8) -> Live {
    let (_, now) = start();
    let settings = Settings {
        args: QueueArguments::default(),
        auto_delete: false,
        stores: true,
        delivers_committed,
    };
    let mut live = Live::new(settings, None, now);
    live.run(Op::Consume {
        id: 1,
        priority: 0,
        exclusive: false,
        prefetch,
    });
    for size in [10, 20, 30] {
        live.run(Op::Publish {
            size,
            priority: 0,
            ttl_ms: None,
            persistent: true,
        });
    }
    live
}

#[test]
fn a_consumer_gets_messages_in_order_and_acks_forget_stored_ones() {
    let mut live = consumer_and_three_published(false, 2);
    let delivered: Vec<u64> = live.clients[&1].unacked.iter().map(|e| e.seq).collect();
    assert_eq!(delivered, [0, 1], "prefetch 2 holds the third back");
    assert_eq!(live.state.ready_len(), 1);
    live.run(Op::Ack { id: 1, n: 1 });
    let acked = live
        .effects
        .iter()
        .flatten()
        .filter(|s| matches!(s, Seen::Forget(_)));
    assert_eq!(acked.count(), 1);
    assert_eq!(
        live.clients[&1].unacked.len(),
        2,
        "the third arrives after the ack"
    );
    assert_eq!(live.state.ready_len(), 0);
}

/// Found by the property test: a purge listed the log ids of paged messages after those in memory,
/// so its effects differed between a node that pages and one that does not. They are in id order.
#[test]
fn a_purge_forgets_in_id_order_whether_or_not_messages_were_paged() {
    let (epoch, now) = start();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        args: QueueArguments {
            max_priority: Some(3),
            ..Default::default()
        },
        auto_delete: false,
        stores: true,
        delivers_committed: false,
    };
    let paging = Paging::new(
        &dir.path().join("spill"),
        100,
        Arc::new(Account::default()),
        0.5,
        epoch,
    )
    .unwrap();
    let mut forgotten = Vec::new();
    for paging in [Some(paging), None] {
        let mut state =
            QueueState::<Client>::new(settings.clone(), paging.clone(), now, &mut Vec::new());
        for (id, priority) in [(10, 0), (5, 0), (7, 2)] {
            let message = message(id, 150, priority, None, true, now.wall_ms);
            let mut fx = Vec::new();
            state.apply(
                Command::Enqueue {
                    message,
                    store_id: Some(id),
                },
                now,
                &mut fx,
            );
        }
        assert_eq!(state.paged() > 0, paging.is_some());
        let mut fx = Vec::new();
        state.apply(Command::Purge, now, &mut fx);
        forgotten.push(fx.iter().map(seen).collect::<Vec<_>>());
    }
    assert_eq!(
        forgotten[0],
        [Seen::Forget(5), Seen::Forget(7), Seen::Forget(10)]
    );
    assert_eq!(forgotten[0], forgotten[1]);
}

/// A replicated queue's host hands a message out (to a consumer or basic.get) only once its record
/// is committed, in order; a commit of a later id covers the earlier ones (a log commits in order).
#[test]
fn a_queue_that_delivers_committed_holds_each_message_until_its_commit() {
    let mut live = consumer_and_three_published(true, 10);
    let stored: Vec<u64> = live
        .effects
        .iter()
        .flatten()
        .filter_map(|s| match s {
            Seen::Store(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(stored.len(), 3);
    assert!(live.clients[&1].unacked.is_empty(), "nothing is committed");
    assert!(matches!(live.apply(Command::Get), Outcome::Got(None)));

    live.apply(Command::Committed { id: stored[0] });
    live.dispatch();
    let delivered: Vec<u64> = live.clients[&1].unacked.iter().map(|e| e.seq).collect();
    assert_eq!(
        delivered,
        [0],
        "the first one's commit hands out the first only"
    );

    live.apply(Command::Committed { id: stored[2] });
    live.dispatch();
    let delivered: Vec<u64> = live.clients[&1].unacked.iter().map(|e| e.seq).collect();
    assert_eq!(
        delivered,
        [0, 1, 2],
        "the last one's commit covers the one before"
    );

    // A message back from its consumer was committed: it goes out again at once, ahead of a new
    // one still waiting for its commit.
    live.run(Op::Publish {
        size: 40,
        priority: 0,
        ttl_ms: None,
        persistent: true,
    });
    let back = live.take(1, 1);
    live.requeue(back);
    let delivered: Vec<u64> = live.clients[&1].unacked.iter().map(|e| e.seq).collect();
    assert_eq!(delivered, [1, 2, 0]);
    assert_eq!(live.state.ready_len(), 1, "the new one waits");
}
