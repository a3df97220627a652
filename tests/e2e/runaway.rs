//! Per-publisher flow control (broker/src/flow.rs) through real connections: a publisher that runs a
//! queue nobody consumes far behind is held to a bounded growth rate while an unrelated publisher and
//! consumer keep moving messages, and runs free — the queue accepting its whole backlog — once they
//! stop. (The load benchmark's `runaway` row measures the same on a release build.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use warren_broker::flow::FlowConfig;
use warren_tests::raw::{encode_publish, queue_declare, NO_PROPERTIES};
use warren_tests::TestBroker;

/// Messages the runaway publishes in all (a long backlog for a queue without consumers).
const RUNAWAY_TOTAL: u64 = 60_000;
const BATCH: u64 = 500;

fn ready(broker: &TestBroker, queue: &str) -> u64 {
    broker
        .queue(queue)
        .map_or(0, |q| u64::from(q.message_count()))
}

/// Polls (every 10 ms, for at most `limit`) until `ready(queue) >= n`; returns when it got there.
async fn wait_for(broker: &TestBroker, queue: &str, n: u64, limit: Duration) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready(broker, queue) >= n {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test]
async fn a_runaway_publisher_is_held_back_while_others_move_messages_and_its_queue_still_takes_the_backlog(
) {
    runaway_beside_a_pair(true).await;
}

/// The same with `[flow] enabled = false`: nothing holds the runaway back (the measurement above can
/// fail, and the setting is honoured).
#[tokio::test]
async fn with_flow_control_off_the_runaway_is_not_held_back() {
    runaway_beside_a_pair(false).await;
}

async fn runaway_beside_a_pair(enabled: bool) {
    let broker = TestBroker::start_with(|c| c.flow.enabled = enabled).await;
    let body = vec![b'r'; 100];
    let flow = FlowConfig::default();
    let (behind, credit) = (flow.behind_messages, u64::from(flow.credit));
    let growth = u64::from(flow.growth_per_second);

    // The unrelated pair: ~4,000 msg/s into `steady`, consumed as they come.
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("steady").await;
    let (_, mut consumer) = ch.consume("steady", "steady", false).await;
    let delivered = Arc::new(AtomicU64::new(0));
    let consuming = {
        let delivered = delivered.clone();
        tokio::spawn(async move {
            loop {
                consumer.recv().await;
                delivered.fetch_add(1, Relaxed);
            }
        })
    };
    let stop_pair = Arc::new(AtomicBool::new(false));
    let mut pair = broker.raw_open().await;
    pair.open_channel(1).await;
    let pair_task = {
        let (stop, body) = (stop_pair.clone(), body.clone());
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            while !stop.load(Relaxed) {
                for _ in 0..20 {
                    encode_publish(
                        &mut out,
                        pair.frame_max,
                        1,
                        ("", "steady", false),
                        NO_PROPERTIES,
                        &body,
                    );
                }
                pair.send(&out.split()).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            pair
        })
    };

    // The runaway: everything into `backlog`, which nobody consumes, as fast as it is read.
    let mut runaway = broker.raw_open().await;
    runaway.open_channel(1).await;
    runaway.call(1, queue_declare("backlog")).await;
    let runaway_task = tokio::spawn(async move {
        let mut out = BytesMut::new();
        for _ in 0..RUNAWAY_TOTAL / BATCH {
            for _ in 0..BATCH {
                encode_publish(
                    &mut out,
                    runaway.frame_max,
                    1,
                    ("", "backlog", false),
                    NO_PROPERTIES,
                    &body,
                );
            }
            runaway.send(&out.split()).await;
        }
        runaway
    });

    // Once `backlog` is behind and the runaway's credit is spent, it grows at GROWTH_PER_SEC.
    let behind = behind + credit + 2_000;
    assert!(
        wait_for(&broker, "backlog", behind, Duration::from_secs(30))
            .await
            .is_some(),
        "the runaway never got {behind} messages ahead ({} ready)",
        ready(&broker, "backlog")
    );
    let (c0, d0) = (ready(&broker, "backlog"), delivered.load(Relaxed));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c1, d1) = (ready(&broker, "backlog"), delivered.load(Relaxed));
    let held = c1 - c0;
    eprintln!(
        "flow enabled={enabled}: backlog grew {held} in 1 s, pair moved {}",
        d1 - d0
    );
    if !enabled {
        assert!(
            held > 2 * growth,
            "with flow control off the runaway's queue grew by only {held} in 1 s"
        );
        stop_pair.store(true, Relaxed);
        consuming.abort();
        return;
    }
    assert!(
        held <= 2 * growth,
        "behind and sharing the broker, the runaway's queue grew by {held} in 1 s (bound {growth}/s)"
    );
    assert!(
        d1 - d0 >= 1_000,
        "the unrelated pair moved only {} messages in that second",
        d1 - d0
    );

    // The pair stops: nobody left to protect, and the rest of the backlog goes in at full speed.
    // (Measured from the moment the pair stops: on a quick machine the rest of the backlog was
    // sometimes all in before a later reading, which then saw nothing left and a rate of 0.)
    stop_pair.store(true, Relaxed);
    let (c2, t2) = (ready(&broker, "backlog"), Instant::now());
    let pair = pair_task.await.expect("pair publisher");
    tokio::time::sleep(Duration::from_millis(300)).await;
    consuming.abort();
    let done = wait_for(&broker, "backlog", RUNAWAY_TOTAL, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| {
            panic!(
                "a queue without consumers took only {} of {RUNAWAY_TOTAL} messages",
                ready(&broker, "backlog")
            )
        });
    let free = (RUNAWAY_TOTAL - c2) as f64 / done.duration_since(t2).as_secs_f64().max(0.001);
    assert!(
        free >= 3.0 * held as f64,
        "alone, the runaway went in at {free:.0}/s: no faster than the {held}/s it was held to"
    );
    let runaway = runaway_task.await.expect("runaway publisher");
    drop((runaway, pair));
}
