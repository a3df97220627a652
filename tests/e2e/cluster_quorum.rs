//! Quorum queues on a cluster (issue 13 point 4): the node leading a queue's shard hosts the queue
//! and journals it through the shard, so a publisher's confirm means a majority has the message;
//! a publish on another node is forwarded to the host, in order; when the host stops, the shard's
//! new leader hosts the queue with every confirmed message not yet taken, and publishes on any
//! node reach it.

use std::sync::Arc;
use std::time::Duration;

use amqprs::channel::QueueDeclareArguments;
use amqprs::BasicProperties;
use warren_broker::cluster::quorum::ShardGroup;
use warren_broker::meta::records::message_queue;
use warren_tests::cluster::{
    agreed_leader, host_of, hosts, isolate, node_id, stop_node, three_nodes, LinkCluster, SETTLE,
};
use warren_tests::features::{table, text};
use warren_tests::{TestBroker, TestChannel};

const QUEUE: &str = "jobs";

/// Declares quorum queue `QUEUE` (with `extra` arguments) once the nodes `all` agree on a metadata
/// leader, and returns its host and a node that does not host it.
async fn quorum_queue<'a, const N: usize>(
    all: &[&'a TestBroker],
    extra: [(&str, amqprs::FieldValue); N],
) -> (&'a TestBroker, &'a TestBroker) {
    agreed_leader(all).await;
    declare_quorum(all[0], QUEUE, extra).await;
    let host = host_of(all, QUEUE).await;
    let other = all.iter().copied().find(|b| !hosts(b, QUEUE)).unwrap();
    (host, other)
}

/// `b`'s member of the queue's shard group.
fn queue_shard(b: &TestBroker) -> &Arc<ShardGroup> {
    b.server
        .broker
        .cluster()
        .unwrap()
        .shard(&message_queue("/", QUEUE))
}

/// The messages `b`'s replica holds of the queue.
fn replica_len(b: &TestBroker) -> usize {
    let record = message_queue("/", QUEUE);
    queue_shard(b).machine.messages(&record).0.len()
}

/// Waits until `b`'s replica of the queue's shard holds `n` messages of it.
async fn wait_for_replica(b: &TestBroker, n: usize) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let held = replica_len(b);
        if held == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} holds {held} messages, not {n}",
            node_id(b),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Declares quorum queue `name` on `b`, with `extra` arguments.
async fn declare_quorum<const N: usize>(
    b: &TestBroker,
    name: &str,
    extra: [(&str, amqprs::FieldValue); N],
) {
    let c = b.connect().await;
    let ch = c.channel().await;
    let mut arguments = table([("x-queue-type", text("quorum"))]);
    for (key, value) in extra {
        arguments.insert(key.try_into().unwrap(), value);
    }
    let mut args = QueueDeclareArguments::durable_client_named(name);
    args.arguments(arguments);
    ch.declare(args).await;
    c.close().await;
}

async fn publish_all(ch: &TestChannel, prefix: &str, n: usize) {
    for i in 0..n {
        ch.publish_acked(
            "",
            QUEUE,
            BasicProperties::default(),
            format!("{prefix}-{i}").as_bytes(),
        )
        .await;
    }
}

/// Publishes `n` messages (`prefix-i`) without waiting on confirming channel `ch`, then reads its
/// confirms until each delivery tag has one: whether it was acked, by tag.
async fn publish_unconfirmed(
    ch: &TestChannel,
    prefix: &str,
    n: u64,
) -> std::collections::BTreeMap<u64, bool> {
    publish_only(ch, prefix, 0..n).await;
    confirms(ch, n).await
}

/// Publishes `prefix-i` for each i of `range` on `ch`, reading no confirm.
async fn publish_only(ch: &TestChannel, prefix: &str, range: std::ops::Range<u64>) {
    for i in range {
        let body = format!("{prefix}-{i}");
        ch.publish_with(
            "",
            QUEUE,
            BasicProperties::default(),
            body.as_bytes(),
            false,
        )
        .await;
    }
}

/// Reads confirming channel `ch`'s confirms until each of its first `n` delivery tags has one:
/// whether it was acked, by tag (a multiple confirm covers every tag up to its own not confirmed
/// before).
async fn confirms(ch: &TestChannel, n: u64) -> std::collections::BTreeMap<u64, bool> {
    use warren_tests::client::ChannelEvent;
    let mut acked = std::collections::BTreeMap::new();
    while acked.len() < n as usize {
        let (tag, multiple, ack) = match ch.next_event().await {
            ChannelEvent::Ack { tag, multiple } => (tag, multiple, true),
            ChannelEvent::Nack { tag, multiple } => (tag, multiple, false),
            other => panic!("expected a confirm, got {other:?}"),
        };
        let first = if multiple { 1 } else { tag };
        for t in first..=tag {
            acked.entry(t).or_insert(ack);
        }
    }
    acked
}

/// The tags of `outcome` that were nacked.
fn nacked(outcome: &std::collections::BTreeMap<u64, bool>) -> Vec<u64> {
    outcome
        .iter()
        .filter(|(_, ack)| !**ack)
        .map(|(t, _)| *t)
        .collect()
}

/// Consumes every message of the queue from `b` and checks that they are exactly `expected`,
/// each once and in that order (one channel's publishes keep their order across a failover, as
/// with RabbitMQ).
async fn drain_exactly(b: &TestBroker, expected: Vec<String>) {
    let c = b.connect().await;
    let ch = c.channel().await;
    let (_, mut consumer) = ch.consume(QUEUE, "drain", false).await;
    let got = bodies(&consumer.recv_n(expected.len()).await);
    consumer.assert_quiet(Duration::from_millis(300)).await;
    let mut sorted = got.clone();
    sorted.sort();
    let duplicates = sorted.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(duplicates, 0, "{duplicates} messages stored twice");
    let overtaken = got.iter().zip(&expected).position(|(g, e)| g != e);
    assert_eq!(
        overtaken.map(|i| (&expected[i], &got[i])),
        None,
        "(expected, got) where the order breaks first"
    );
    c.close().await;
}

/// The end of a run whose fault struck while publishes were in flight: `outcome` acks every one;
/// the fault struck before all were stored (each of `stored_then` below `sent`); every node of
/// `replicas` holds `expected`, which `drain_from` delivers each once, in publish order.
async fn acked_and_held_once(
    outcome: &std::collections::BTreeMap<u64, bool>,
    (stored_then, sent): (&[usize], usize),
    replicas: &[&TestBroker],
    drain_from: &TestBroker,
    expected: Vec<String>,
) {
    assert_eq!(nacked(outcome), [0u64; 0], "publishes nacked");
    assert!(
        stored_then.iter().all(|n| *n < sent),
        "all were stored before the fault: {stored_then:?} of {sent}"
    );
    for b in replicas {
        wait_for_replica(b, expected.len()).await;
    }
    drain_exactly(drain_from, expected).await;
}

fn bodies(deliveries: &[warren_tests::client::Delivery]) -> Vec<String> {
    warren_tests::client::bodies(deliveries)
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test]
async fn confirmed_messages_outlive_their_host_and_publishes_work_on_every_node() {
    let cluster = LinkCluster::new(3);
    let mut brokers = three_nodes(&cluster).await.map(Some);
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let (first, follower) = quorum_queue(&all, []).await;

    // Published on a node that does not host the queue (forwarded), then on its host: every
    // confirm is an ack, and every replica has the messages.
    let (fc, _, fch) = follower.connect_with_confirming_channel().await;
    publish_all(&fch, "f", 10).await;
    let (hc, hch, pch) = first.connect_with_confirming_channel().await;
    publish_all(&pch, "h", 10).await;
    for b in &all {
        wait_for_replica(b, 20).await;
    }
    // The host holds them in publish order; what is taken leaves every replica.
    let taken = hch.get_n(QUEUE, 5, Duration::from_secs(5)).await;
    assert_eq!(
        bodies(&taken[..5]),
        names("f", 0..5),
        "{:?}",
        bodies(&taken)
    );
    assert_eq!(taken.len(), 20, "get_n drains what is left");
    hc.close().await;
    fc.close().await;
    // (get_n drained all 20: publish 10 more to carry over.)
    for b in &all {
        wait_for_replica(b, 0).await;
    }
    let (fc, _, fch) = follower.connect_with_confirming_channel().await;
    publish_all(&fch, "g", 10).await;
    fc.close().await;
    for b in &all {
        wait_for_replica(b, 10).await;
    }

    // The host stops: the shard's new leader hosts the queue with all ten.
    let first_id = node_id(first);
    let left = stop_node(&mut brokers, first_id).await;
    let next = host_of(&left, QUEUE).await;
    let other = left.iter().copied().find(|b| !hosts(b, QUEUE)).unwrap();
    // A publish on the other survivor reaches the new host.
    let (oc, _, och) = other.connect_with_confirming_channel().await;
    publish_all(&och, "o", 2).await;
    oc.close().await;
    let (nc, nch, _) = next.connect_with_confirming_channel().await;
    let left_over = nch.get_n(QUEUE, 12, Duration::from_secs(10)).await;
    let mut expected = names("g", 0..10);
    expected.extend(names("o", 0..2));
    assert_eq!(bodies(&left_over), expected);
    // Restored messages may have been delivered before: they come flagged redelivered.
    assert!(left_over[..10].iter().all(|d| d.redelivered));
    assert!(left_over[10..].iter().all(|d| !d.redelivered));
    nc.close().await;
}

async fn ack(ch: &TestChannel, tag: u64) {
    use amqprs::channel::BasicAckArguments;
    use warren_tests::Timely;
    ch.basic_ack(BasicAckArguments::new(tag, false))
        .timely()
        .await
        .expect("basic.ack");
}

#[tokio::test]
async fn consumers_on_any_node_take_messages_and_keep_consuming_across_a_failover() {
    let cluster = LinkCluster::new(3);
    let mut brokers = three_nodes(&cluster).await.map(Some);
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    agreed_leader(&all).await;
    declare_quorum(all[0], QUEUE, []).await;
    let first = host_of(&all, QUEUE).await;
    let first_id = node_id(first);
    let followers: Vec<&TestBroker> = all.iter().copied().filter(|b| !hosts(b, QUEUE)).collect();
    let (consuming, publishing) = (followers[0], followers[1]);

    // A consumer on a node that does not host the queue gets what is published on the third
    // node, in order; its acks settle the messages at the host (every replica drops them).
    let cc = consuming.connect().await;
    let cch = cc.channel().await;
    cch.basic_qos(amqprs::channel::BasicQosArguments::new(0, 10, false))
        .await
        .expect("basic.qos");
    let (_, mut consumer) = cch.consume(QUEUE, "remote", true).await;
    let (pc, _, pch) = publishing.connect_with_confirming_channel().await;
    publish_all(&pch, "p", 20).await;
    let mut got = Vec::new();
    for _ in 0..20 {
        let d = consumer.recv().await;
        ack(&cch, d.tag).await;
        got.push(d);
    }
    assert_eq!(bodies(&got), names("p", 0..20));
    assert!(got.iter().all(|d| !d.redelivered));
    for b in &all {
        wait_for_replica(b, 0).await;
    }

    // Ten more; the consumer takes five without acknowledging them, then the host stops. The
    // consumer keeps its subscription (no cancel) and gets all ten from the new host, the five it
    // held flagged redelivered.
    publish_all(&pch, "q", 10).await;
    pc.close().await;
    let held = consumer.recv_n(5).await;
    assert_eq!(bodies(&held), names("q", 0..5));
    let left = stop_node(&mut brokers, first_id).await;
    host_of(&left, QUEUE).await;
    // The consumer acknowledges everything it gets from now on (what it held before the
    // failover too: those acks are void, the new host redelivers them).
    for d in &held {
        ack(&cch, d.tag).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while seen.len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {seen:?} came back"
        );
        let d = consumer.recv().await;
        ack(&cch, d.tag).await;
        seen.insert(bodies(std::slice::from_ref(&d))[0].clone());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), names("q", 0..10));
    // Deliveries of before the failover that were already on their way come first, so some
    // messages come twice (at least once, as RabbitMQ): the consumer takes and acknowledges
    // until the queue is empty everywhere.
    let deadline = tokio::time::Instant::now() + SETTLE;
    while left.iter().any(|b| replica_len(b) > 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue never emptied"
        );
        // (An ack on its way settles the last ones: look again after a short wait.)
        if let Ok(d) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            ack(&cch, d.tag).await;
        }
    }
    for b in &left {
        wait_for_replica(b, 0).await;
    }
    cc.close().await;
}

#[tokio::test]
async fn a_node_that_does_not_host_the_queue_answers_its_hosts_counts_and_purges_there() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    let all = [&b1, &b2, &b3];
    let (_, follower) = quorum_queue(&all, []).await;
    let (fc, _, fch) = follower.connect_with_confirming_channel().await;
    publish_all(&fch, "c", 5).await;
    assert_eq!(follower.queue(QUEUE).unwrap().message_count(), 0);
    let mut passive = QueueDeclareArguments::durable_client_named(QUEUE);
    passive.passive(true);
    let (_, count, _) = fch.declare(passive).await;
    assert_eq!(count, 5);
    let purged = fch
        .queue_purge(amqprs::channel::QueuePurgeArguments::new(QUEUE))
        .await
        .expect("queue.purge");
    assert_eq!(purged, Some(5));
    for b in all {
        wait_for_replica(b, 0).await;
    }
    // queue.delete-ok counts what the host held.
    publish_all(&fch, "d", 3).await;
    let deleted = fch
        .queue_delete(amqprs::channel::QueueDeleteArguments::new(QUEUE))
        .await
        .expect("queue.delete");
    assert_eq!(deleted, Some(3));
    fc.close().await;
}

#[tokio::test]
async fn an_unused_quorum_queue_expires_on_every_node_and_one_consumed_elsewhere_does_not() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    agreed_leader(&all).await;
    for name in ["gone", "kept"] {
        let expires = [("x-expires", warren_tests::features::int(1500))];
        declare_quorum(all[0], name, expires).await;
    }
    // "kept" is consumed on a node that does not host it: its host counts that consumer.
    let hosted_kept = |b: &TestBroker| hosts(b, "kept");
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !all.iter().any(|b| hosted_kept(b)) {
        assert!(tokio::time::Instant::now() < deadline, "kept is not hosted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elsewhere = all.iter().copied().find(|b| !hosted_kept(b)).unwrap();
    let cc = elsewhere.connect().await;
    let cch = cc.channel().await;
    let (_, _consumer) = cch.consume("kept", "elsewhere", true).await;

    let deadline = tokio::time::Instant::now() + SETTLE;
    while all.iter().any(|b| b.queue("gone").is_some()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the unused queue did not expire everywhere"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for b in &all {
        assert!(b.queue("kept").is_some(), "node {} lost kept", node_id(b));
    }
    cc.close().await;
}

#[tokio::test]
async fn a_window_of_forwarded_publishes_beyond_the_links_request_limit_is_acked_in_full() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (_, follower) = quorum_queue(&all, []).await;
    // A publisher with 1,500 unconfirmed publishes on a node that does not host the queue: every
    // one is forwarded, more at once than a link serves, and every one is acked (they wait their
    // turn on this node rather than being refused).
    const N: u64 = 1_500;
    let (fc, _, fch) = follower.connect_with_confirming_channel().await;
    let acked = publish_unconfirmed(&fch, "w", N).await;
    assert_eq!(nacked(&acked), [0u64; 0], "publishes nacked");
    for b in &all {
        wait_for_replica(b, N as usize).await;
    }
    fc.close().await;
}

/// Waits until `b`'s replica holds at least `n` of the queue's messages.
async fn wait_stored(b: &TestBroker, n: usize) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while replica_len(b) < n {
        assert!(tokio::time::Instant::now() < deadline, "{n} not stored");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Publishes forwarded to a host that stops while storing them go to the shard's next host (as
/// RabbitMQ's channel resends to a quorum queue's new leader): the publisher gets an ack for every
/// one, none a basic.nack, and each is stored once, whether the old host stored it or not.
#[tokio::test]
async fn forwarded_publishes_whose_host_stops_are_stored_once_by_the_next_host() {
    let cluster = LinkCluster::new(3);
    let mut brokers = three_nodes(&cluster).await.map(Some);
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let (host, follower) = quorum_queue(&all, []).await;
    let host_id = node_id(host);
    let (fc, _, fch) = follower.connect_with_confirming_channel().await;
    const N: u64 = 5_000;
    publish_only(&fch, "a", 0..N).await;
    wait_stored(host, 100).await;
    let stored_when_stopped = replica_len(host);
    let left = stop_node(&mut brokers, host_id).await;
    publish_only(&fch, "b", 0..N).await;
    let outcome = confirms(&fch, 2 * N).await;
    fc.close().await;
    let next = host_of(&left, QUEUE).await;
    let mut expected = names("a", 0..N as usize);
    expected.extend(names("b", 0..N as usize));
    let stopped = [stored_when_stopped];
    acked_and_held_once(&outcome, (&stopped, N as usize), &left, next, expected).await;
}

/// Asks `from` (the queue's host) to hand its shard's leadership to `to`; its answer may be lost
/// in the move.
async fn transfer_shard(from: &TestBroker, to: &TestBroker) {
    let group = queue_shard(from).name();
    let to = node_id(to).to_string();
    let asked = [
        "cluster",
        "transfer-leadership",
        "--group",
        &group,
        "--to",
        &to,
    ];
    from.brokerctl(&asked).await.ok();
}

/// The shard's leadership moves twice while a node that does not host the queue has publishes
/// in flight to it, the second time to that node itself: every publish is acked and stored once.
#[tokio::test]
async fn forwarded_publishes_follow_the_shards_leadership_and_are_stored_once() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (host, follower) = quorum_queue(&all, []).await;
    let third = all
        .iter()
        .copied()
        .find(|b| node_id(b) != node_id(host) && node_id(b) != node_id(follower))
        .unwrap();
    let (fc, _, fch) = follower.connect_with_confirming_channel().await;
    const N: u64 = 5_000;
    let mut published = Vec::new();
    let mut stored_then = Vec::new();
    for (round, (prefix, from, to)) in [("a", host, third), ("b", third, follower)]
        .into_iter()
        .enumerate()
    {
        publish_only(&fch, prefix, 0..N).await;
        published.extend(names(prefix, 0..N as usize));
        wait_stored(from, round * N as usize + 100).await;
        stored_then.push(replica_len(from) - round * N as usize);
        transfer_shard(from, to).await;
    }
    publish_only(&fch, "c", 0..N).await;
    published.extend(names("c", 0..N as usize));
    let outcome = confirms(&fch, 3 * N).await;
    fc.close().await;
    assert_eq!(node_id(host_of(&all, QUEUE).await), node_id(follower));
    acked_and_held_once(
        &outcome,
        (&stored_then, N as usize),
        &all,
        follower,
        published,
    )
    .await;
}

/// The shard's leadership moves away from the host while its own clients' publishes are being
/// stored there: they go to the new host instead of getting basic.nack, and each is stored once
/// (the old host had stored some of them when it let the leadership go).
#[tokio::test]
async fn publishes_on_the_host_follow_the_leadership_when_it_moves_and_are_stored_once() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (host, other) = quorum_queue(&all, []).await;
    let (hc, _, hch) = host.connect_with_confirming_channel().await;
    const N: u64 = 5_000;
    publish_only(&hch, "h", 0..N).await;
    wait_stored(host, 100).await;
    let stored_when_moved = replica_len(host);
    transfer_shard(host, other).await;
    let outcome = confirms(&hch, N).await;
    hc.close().await;
    let moved = [stored_when_moved];
    let expected = names("h", 0..N as usize);
    acked_and_held_once(&outcome, (&moved, N as usize), &all, other, expected).await;
}

/// The link between a publishing node and the queue's host goes down while the host is storing
/// that node's publishes and comes back a second later: the host stored some whose answers were
/// lost, and when they come again it answers them as stored instead of storing them twice. Every
/// publish is acked, each message held once.
#[tokio::test]
async fn a_forwarded_publish_sent_again_after_its_answer_was_lost_is_stored_once() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (host, follower) = quorum_queue(&all, []).await;
    let (fc, _, fch) = follower.connect_with_confirming_channel().await;
    const N: u64 = 5_000;
    publish_only(&fch, "l", 0..N).await;
    wait_stored(host, 100).await;
    cut(host, follower, true);
    let stored_when_cut = replica_len(host);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cut(host, follower, false);
    let outcome = confirms(&fch, N).await;
    fc.close().await;
    let cut_then = [stored_when_cut];
    let expected = names("l", 0..N as usize);
    acked_and_held_once(&outcome, (&cut_then, N as usize), &all, host, expected).await;
}

#[tokio::test]
async fn a_burst_of_forwarded_publishes_gets_each_its_own_outcome() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (_, follower) = quorum_queue(
        &all,
        [
            ("x-max-length", amqprs::FieldValue::l(10)),
            ("x-overflow", text("reject-publish")),
        ],
    )
    .await;
    // 50 publishes written at once on a node that does not host the queue travel to the host
    // together (forward.rs batches them); the host takes the first 10 and refuses the rest, and
    // each publisher confirm says which: acks for 1..=10, nacks for 11..=50, none lost or mixed.
    const N: u64 = 50;
    let (fc, _, fch) = follower.connect_with_confirming_channel().await;
    let outcome = publish_unconfirmed(&fch, "b", N).await;
    let acked: Vec<u64> = outcome
        .iter()
        .filter(|(_, a)| **a)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(acked, (1..=10).collect::<Vec<_>>(), "{outcome:?}");
    for b in &all {
        wait_for_replica(b, 10).await;
    }
    fc.close().await;
}

#[tokio::test]
async fn a_dead_letter_into_a_quorum_queue_hosted_elsewhere_reaches_its_host() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (_, follower) = quorum_queue(&all, []).await;
    // A classic queue on a node that does not host the quorum queue dead-letters expired messages
    // into it: they reach the host (and so every replica), not only this node's copy.
    let (fc, _, fch) = follower.connect_with_confirming_channel().await;
    let mut args = QueueDeclareArguments::new("delay");
    args.arguments(table([
        ("x-message-ttl", warren_tests::features::int(50)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(QUEUE)),
    ]));
    fch.declare(args).await;
    for i in 0..3 {
        fch.publish_acked(
            "",
            "delay",
            BasicProperties::default(),
            format!("late-{i}").as_bytes(),
        )
        .await;
    }
    for b in &all {
        wait_for_replica(b, 3).await;
    }
    let (hc, hch, _) = host_of(&all, QUEUE)
        .await
        .connect_with_confirming_channel()
        .await;
    let got = hch.get_n(QUEUE, 3, Duration::from_secs(5)).await;
    assert_eq!(bodies(&got), names("late", 0..3));
    hc.close().await;
    fc.close().await;
}

/// Starts node `id` of `cluster` with room for messages of `max_message` bytes.
async fn start_node_for(cluster: &LinkCluster, id: u64, max_message: u64) -> TestBroker {
    let config = cluster.config(id);
    TestBroker::start_with(move |c| {
        c.cluster = Some(config);
        c.limits.max_message_size = max_message;
    })
    .await
}

/// A body of `len` bytes that says which message it is everywhere in it.
fn big_body(tag: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| tag.wrapping_add((i % 251) as u8))
        .collect()
}

#[tokio::test]
async fn messages_and_snapshots_larger_than_a_link_frame_are_replicated_and_caught_up() {
    const MIB: usize = 1024 * 1024;
    let cluster = LinkCluster::new(3);
    let mut brokers = Vec::new();
    for id in 1..=3 {
        brokers.push(Some(start_node_for(&cluster, id, 40 * MIB as u64).await));
    }
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    agreed_leader(&all).await;
    declare_quorum(all[0], QUEUE, []).await;
    let first_id = node_id(host_of(&all, QUEUE).await);
    let followers: Vec<u64> = all
        .iter()
        .filter(|b| !hosts(b, QUEUE))
        .map(|b| node_id(b))
        .collect();
    let (lagging_id, publishing_id) = (followers[0], followers[1]);
    let publishing = all[(publishing_id - 1) as usize];

    // Two messages larger than a node link's frame, published on a node that does not host the
    // queue: forwarded to the host and replicated in parts, confirmed.
    let (pc, _, pch) = publishing.connect_with_confirming_channel().await;
    for tag in [1u8, 2] {
        let props = BasicProperties::default().with_delivery_mode(2).finish();
        pch.publish_acked("", QUEUE, props, &big_body(tag, 20 * MIB))
            .await;
    }
    for b in &all {
        wait_for_replica(b, 2).await;
    }

    // A follower stops; 20 MiB more arrive, and the host's shard snapshots and purges its log, so
    // the follower can only catch up from a snapshot larger than a frame.
    pc.close().await;
    let stopped = brokers[(lagging_id - 1) as usize]
        .take()
        .unwrap()
        .stop_keeping_data()
        .await;
    let first = brokers[(first_id - 1) as usize].as_ref().unwrap();
    let (hc, _, hch) = first.connect_with_confirming_channel().await;
    for i in 0..20u8 {
        let props = BasicProperties::default().with_delivery_mode(2).finish();
        hch.publish_acked("", QUEUE, props, &big_body(10 + i, MIB))
            .await;
    }
    hc.close().await;
    let shard = queue_shard(first).clone();
    shard.raft.trigger().snapshot().await.expect("snapshot");
    let built = shard
        .raft
        .wait(Some(SETTLE))
        .metrics(|m| m.snapshot.is_some(), "snapshot built")
        .await
        .expect("a snapshot");
    let upto = built.snapshot.unwrap().index;
    shard.raft.trigger().purge_log(upto).await.expect("purge");
    shard
        .raft
        .wait(Some(SETTLE))
        .metrics(|m| m.purged.map(|p| p.index) >= Some(upto), "purged")
        .await
        .expect("purged");

    let back = stopped.start().await;
    wait_for_replica(&back, 22).await;

    // Everything comes out intact, on the node that caught up.
    let bc = back.connect().await;
    let bch = bc.channel().await;
    let (_, mut consumer) = bch.consume(QUEUE, "all", false).await;
    let got = consumer.recv_n(22).await;
    let sizes: Vec<usize> = got.iter().map(|d| d.body.len()).collect();
    let mut expected = vec![20 * MIB, 20 * MIB];
    expected.extend(std::iter::repeat_n(MIB, 20));
    assert_eq!(sizes, expected);
    assert_eq!(got[0].body, big_body(1, 20 * MIB));
    assert_eq!(got[21].body, big_body(29, MIB));
    bc.close().await;
}

/// A delivery's `x-delivery-count` header.
fn delivery_count(d: &warren_tests::client::Delivery) -> Option<i64> {
    let key: amqprs::FieldName = "x-delivery-count".try_into().unwrap();
    match d.properties.headers()?.get(&key)? {
        amqprs::FieldValue::l(n) => Some(*n),
        amqprs::FieldValue::I(n) => Some(i64::from(*n)),
        amqprs::FieldValue::i(n) => Some(i64::from(*n)),
        amqprs::FieldValue::s(n) => Some(i64::from(*n)),
        amqprs::FieldValue::b(n) => Some(i64::from(*n)),
        other => panic!("x-delivery-count of type {other:?}"),
    }
}

#[tokio::test]
async fn basic_get_on_a_node_that_does_not_host_the_queue_takes_from_its_host() {
    use amqprs::channel::BasicRejectArguments;
    use warren_tests::Timely;
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (first, other) = quorum_queue(&all, []).await;
    let (c, ch, pch) = other.connect_with_confirming_channel().await;
    for body in ["a", "b", "c", "d"] {
        pch.publish_acked("", QUEUE, BasicProperties::default(), body.as_bytes())
            .await;
    }
    // Taken at the host, with its count of what is left and the delivery count.
    let a = ch.get(QUEUE, false).await.expect("a message from the host");
    assert_eq!(
        (a.body.as_slice(), a.redelivered, a.message_count),
        (&b"a"[..], false, Some(3))
    );
    assert_eq!(delivery_count(&a), Some(0));
    // Requeued there: the next get has it again, redelivered, counted.
    ch.basic_reject(BasicRejectArguments::new(a.tag, true))
        .timely()
        .await
        .unwrap();
    let a = ch.get(QUEUE, false).await.expect("the requeued message");
    assert_eq!((a.body.as_slice(), a.redelivered), (&b"a"[..], true));
    assert_eq!(delivery_count(&a), Some(1));
    ack(&ch, a.tag).await;
    // With no-ack it is settled at once.
    let b = ch.get(QUEUE, true).await.expect("b");
    assert_eq!(b.body, b"b");
    for b in &all {
        wait_for_replica(b, 2).await;
    }
    // What a closed channel had not settled goes back to the host.
    let c_got = ch.get(QUEUE, false).await.expect("c");
    assert_eq!(c_got.body, b"c");
    c.close().await;
    let (hc, hch, _) = first.connect_with_confirming_channel().await;
    let rest = hch.get_n(QUEUE, 2, Duration::from_secs(5)).await;
    assert_eq!(bodies(&rest), ["c", "d"]);
    assert!(rest[0].redelivered);
    hc.close().await;
    for b in &all {
        wait_for_replica(b, 0).await;
    }
    // An empty queue is basic.get-empty there too.
    let c = other.connect().await;
    let ch = c.channel().await;
    assert!(ch.get(QUEUE, false).await.is_none());
    c.close().await;
}

#[tokio::test]
async fn a_messages_delivery_count_survives_its_hosts_loss_and_the_limit_holds() {
    use amqprs::channel::BasicRejectArguments;
    use warren_tests::Timely;
    let cluster = LinkCluster::new(3);
    let mut brokers = three_nodes(&cluster).await.map(Some);
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    agreed_leader(&all).await;
    declare_quorum(all[0], "dead", []).await;
    declare_quorum(
        all[0],
        QUEUE,
        [
            ("x-delivery-limit", amqprs::FieldValue::l(2)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("dead")),
        ],
    )
    .await;
    let first = host_of(&all, QUEUE).await;
    let (c, ch, pch) = first.connect_with_confirming_channel().await;
    pch.publish_acked("", QUEUE, BasicProperties::default(), b"poison")
        .await;
    // Returned twice at its first host.
    for returned in 0..2 {
        let d = ch.get(QUEUE, false).await.expect("the message");
        assert_eq!(delivery_count(&d), Some(returned));
        ch.basic_reject(BasicRejectArguments::new(d.tag, true))
            .timely()
            .await
            .unwrap();
    }
    // Its count is in every replica before the host goes (the requeues are journaled).
    let deadline = tokio::time::Instant::now() + SETTLE;
    let record = message_queue("/", QUEUE);
    for b in &all {
        loop {
            let shard = queue_shard(b);
            let (held, _) = shard.machine.messages(&record);
            let counts = shard
                .machine
                .returns(&record, held.iter().map(|(id, _)| *id));
            if counts == [2] {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {}: {counts:?}",
                node_id(b)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    c.close().await;
    let first_id = node_id(first);
    let left = stop_node(&mut brokers, first_id).await;
    let next = host_of(&left, QUEUE).await;
    let other = left.iter().copied().find(|b| !hosts(b, QUEUE)).unwrap();
    // Dead-lettering is at most once (RabbitMQ's default): a dead letter into a queue whose shard
    // has a new leader that does not host it yet is dropped, so the test waits for its host too.
    host_of(&left, "dead").await;
    // The new host counts on: the third delivery says 2, on any node, and one more return is
    // over the limit: dead-lettered.
    let (c, ch, _) = other.connect_with_confirming_channel().await;
    let d = ch
        .get(QUEUE, false)
        .await
        .expect("the message at the new host");
    assert_eq!(
        (d.body.as_slice(), delivery_count(&d)),
        (&b"poison"[..], Some(2))
    );
    ch.basic_reject(BasicRejectArguments::new(d.tag, true))
        .timely()
        .await
        .unwrap();
    c.close().await;
    let (c, ch, _) = next.connect_with_confirming_channel().await;
    let dead = ch.get_n("dead", 1, Duration::from_secs(10)).await;
    assert_eq!(bodies(&dead), ["poison"]);
    assert!(ch.get(QUEUE, true).await.is_none());
    c.close().await;
}

/// A node that does not host a queue is handed up to 128 of its messages for its consumers, but
/// no more than 8 MiB of them: a consumer there that acknowledges nothing holds eight messages of
/// 1 MiB, and one more comes for each it acknowledges.
#[tokio::test]
async fn a_node_consuming_from_another_nodes_host_is_handed_at_most_eight_mib() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (host, other) = quorum_queue(&all, []).await;
    let (pc, _, pch) = host.connect_with_confirming_channel().await;
    let big = vec![7u8; 1024 * 1024];
    for _ in 0..12 {
        pch.publish_acked("", QUEUE, BasicProperties::default(), &big)
            .await;
    }
    pc.close().await;
    let c = other.connect().await;
    let ch = c.channel().await;
    let (_, mut consumer) = ch.consume(QUEUE, "elsewhere", true).await;
    let held = consumer.recv_n(8).await;
    consumer.assert_quiet(Duration::from_secs(2)).await;
    for d in &held[..3] {
        ack(&ch, d.tag).await;
    }
    consumer.recv_n(3).await;
    consumer.assert_quiet(Duration::from_secs(1)).await;
    c.close().await;
}

/// Waits until the host `b` has `n` of the queue's messages ready (not handed to any consumer),
/// and checks that it stays so for a second.
async fn ready_settles_at(b: &TestBroker, n: u32) {
    let ready = || b.queue(QUEUE).expect("the queue").message_count();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while ready() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} ready at the host, not {n}",
            ready()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ready(), n, "ready at the host a second later");
}

/// A node that does not host a queue is handed what its consumers can hold, twice over and 8 more
/// (so that they take more while their acks are settled at the host), and no more: a consumer with
/// prefetch 5 there takes 18 of the host's ready messages, a second one with prefetch 10 widens
/// that to 38, and when they are gone the host has every message ready again.
#[tokio::test]
async fn a_node_consuming_from_another_nodes_host_is_handed_what_its_consumers_can_hold() {
    use amqprs::channel::BasicQosArguments;
    use warren_tests::Timely;
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (host, other) = quorum_queue(&all, []).await;
    let (pc, _, pch) = host.connect_with_confirming_channel().await;
    for i in 0..100 {
        pch.publish_acked(
            "",
            QUEUE,
            BasicProperties::default(),
            format!("m{i}").as_bytes(),
        )
        .await;
    }
    pc.close().await;
    ready_settles_at(host, 100).await;
    let c = other.connect().await;
    let mut consumers = Vec::new();
    for (prefetch, handed) in [(5, 18), (10, 38)] {
        let ch = c.channel().await;
        ch.basic_qos(BasicQosArguments::new(0, prefetch, false))
            .timely()
            .await
            .unwrap();
        let (_, mut consumer) = ch.consume(QUEUE, &format!("p{prefetch}"), true).await;
        consumer.recv_n(usize::from(prefetch)).await;
        ready_settles_at(host, 100 - handed).await;
        consumers.push((ch, consumer));
    }
    c.close().await;
    ready_settles_at(host, 100).await;
}

/// A node cut off from a queue's host for longer than the host waits for it (which takes back what
/// it handed that node) subscribes afresh once the link is back: its consumer gets what is
/// published then, and the message it held unacknowledged comes again.
#[tokio::test]
async fn a_node_cut_off_from_the_host_for_a_while_is_fed_again_when_the_link_is_back() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (host, other) = quorum_queue(&all, []).await;
    let c = other.connect().await;
    let ch = c.channel().await;
    let (_, mut consumer) = ch.consume(QUEUE, "elsewhere", true).await;
    let (pc, _, pch) = host.connect_with_confirming_channel().await;
    pch.publish_acked("", QUEUE, BasicProperties::default(), b"before")
        .await;
    let held = consumer.recv().await;
    assert_eq!(held.body, b"before");
    isolate(host, &[node_id(other)]);
    isolate(other, &[node_id(host)]);
    // Longer than the host waits for a subscribed node's link (5 s) and its sweep.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for b in [host, other] {
        b.server.broker.cluster().unwrap().links.heal();
    }
    pch.publish_acked("", QUEUE, BasicProperties::default(), b"after")
        .await;
    let mut again = bodies(&consumer.recv_n(2).await);
    again.sort();
    assert_eq!(again, ["after", "before"]);
    pc.close().await;
    c.close().await;
}

/// Cuts the links between `a` and `b` both ways (as a firewall would), or heals every cut of both.
fn cut(a: &TestBroker, b: &TestBroker, cut: bool) {
    for (x, y) in [(a, b), (b, a)] {
        if cut {
            isolate(x, &[node_id(y)]);
        } else {
            x.server.broker.cluster().unwrap().links.heal();
        }
    }
}

/// Messages a host could not hand a node whose link is down are not counted as delivered: the only
/// consumer is on that node, the link is down for 3 s while the host tries again and again, and
/// afterwards the consumer gets every message uncounted (none went over a delivery limit of 2).
#[tokio::test]
async fn messages_a_host_could_not_hand_over_are_not_counted_as_delivered() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    agreed_leader(&all).await;
    declare_quorum(all[0], "dead", []).await;
    let limited = [
        ("x-delivery-limit", amqprs::FieldValue::l(2)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("dead")),
    ];
    let (host, other) = quorum_queue(&all, limited).await;
    let c = other.connect().await;
    let ch = c.channel().await;
    let (_, mut consumer) = ch.consume(QUEUE, "elsewhere", true).await;
    // Subscribed before the cut (a message goes through).
    let (pc, _, pch) = host.connect_with_confirming_channel().await;
    pch.publish_acked("", QUEUE, BasicProperties::default(), b"first")
        .await;
    ack(&ch, consumer.recv().await.tag).await;
    // Its settle reaches the host before the cut.
    tokio::time::sleep(Duration::from_millis(500)).await;
    cut(host, other, true);
    for i in 0..5 {
        pch.publish_acked(
            "",
            QUEUE,
            BasicProperties::default(),
            format!("m{i}").as_bytes(),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    cut(host, other, false);
    let got = consumer.recv_n(5).await;
    assert_eq!(bodies(&got), ["m0", "m1", "m2", "m3", "m4"]);
    for d in &got {
        assert!(
            matches!(delivery_count(d), None | Some(0)),
            "{:?}: x-delivery-count {:?}",
            d.body,
            delivery_count(d)
        );
        ack(&ch, d.tag).await;
    }
    assert!(pch.get("dead", true).await.is_none());
    pc.close().await;
    c.close().await;
}

/// A node whose link to a queue's host was down a moment, and whose consumers then left, tells the
/// host once the link is back: what the host had handed it is ready there again (it would stay
/// handed out to a subscription the node no longer has).
#[tokio::test]
async fn a_subscription_dropped_while_the_link_was_down_is_ended_at_the_host_after() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (host, other) = quorum_queue(&all, []).await;
    let (pc, _, pch) = host.connect_with_confirming_channel().await;
    for i in 0..10 {
        pch.publish_acked(
            "",
            QUEUE,
            BasicProperties::default(),
            format!("m{i}").as_bytes(),
        )
        .await;
    }
    let c = other.connect().await;
    let ch = c.channel().await;
    let (_, mut consumer) = ch.consume(QUEUE, "elsewhere", true).await;
    consumer.recv_n(10).await;
    ready_settles_at(host, 0).await;
    // Down for less than the host waits before it gives a node up (5 s).
    cut(host, other, true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.close().await;
    cut(host, other, false);
    ready_settles_at(host, 10).await;
    pc.close().await;
}

/// A message reaches a consumer on its queue's host only once a majority has it, as RabbitMQ's
/// quorum queue delivers only what its log applied: while the host is cut off from both other
/// nodes its consumer gets nothing (a failed host could otherwise hand out a message it never
/// committed); once the links are back the message comes, once, and its confirm with it.
#[tokio::test]
async fn a_consumer_on_the_host_gets_a_message_only_once_a_majority_has_it() {
    use warren_tests::client::ChannelEvent;
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (host, _) = quorum_queue(&all, []).await;
    let c = host.connect().await;
    let ch = c.channel().await;
    let (_, mut consumer) = ch.consume(QUEUE, "here", true).await;
    let (pc, _, pch) = host.connect_with_confirming_channel().await;
    pch.publish_acked("", QUEUE, BasicProperties::default(), b"before")
        .await;
    ack(&ch, consumer.recv().await.tag).await;
    for b in all.iter().filter(|b| node_id(b) != node_id(host)) {
        cut(host, b, true);
    }
    publish_only(&pch, "cut", 0..1).await;
    consumer.assert_quiet(Duration::from_millis(800)).await;
    for b in &all {
        cut(host, b, false);
    }
    let got = consumer.recv().await;
    assert_eq!(got.body, b"cut-0");
    match pch.next_event().await {
        ChannelEvent::Ack { tag: 2, .. } => {}
        other => panic!("expected the ack of the second publish, got {other:?}"),
    }
    ack(&ch, got.tag).await;
    consumer.assert_quiet(Duration::from_millis(300)).await;
    pc.close().await;
    c.close().await;
}

/// The host's shard log: its last entry's index.
fn last_entry(host: &TestBroker) -> u64 {
    queue_shard(host).metrics().last_log_index.unwrap_or(0)
}

/// A consumer's ack and the next publish share one shard entry: a settle with nothing else to
/// propose waits a moment for a publish, so a consumer keeping up with a publisher at window 1
/// costs one round of appends and fsyncs per message, not two (the publish waiting for the
/// settle's). An ack with no publish after it still reaches every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumers_acks_share_the_entries_of_the_next_publishes() {
    const ROUNDS: u64 = 20;
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let (host, _) = quorum_queue(&all, []).await;
    let c = host.connect().await;
    let ch = c.channel().await;
    let (_, mut consumer) = ch.consume(QUEUE, "here", true).await;
    let (pc, _, pch) = host.connect_with_confirming_channel().await;
    pch.publish_acked("", QUEUE, BasicProperties::default(), b"m-0")
        .await;
    let mut got = consumer.recv().await;
    let before = last_entry(host);
    for i in 1..=ROUNDS {
        ack(&ch, got.tag).await;
        // The publish a moment after the ack (as a publisher's reply to its confirm comes), not
        // in the same wake of the host's shard writer.
        tokio::time::sleep(Duration::from_micros(300)).await;
        pch.publish_acked(
            "",
            QUEUE,
            BasicProperties::default(),
            format!("m-{i}").as_bytes(),
        )
        .await;
        got = consumer.recv().await;
        assert_eq!(got.body, format!("m-{i}").as_bytes());
    }
    let entries = last_entry(host) - before;
    // Two a round when each settle is an entry of its own; a loaded machine may miss a few.
    assert!(
        entries <= ROUNDS + ROUNDS / 2,
        "{entries} shard entries for {ROUNDS} acks and publishes"
    );
    ack(&ch, got.tag).await;
    for b in &all {
        wait_for_replica(b, 0).await;
    }
    pc.close().await;
    c.close().await;
}
