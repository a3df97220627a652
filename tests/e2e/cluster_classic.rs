//! Classic queues on a cluster (issue 13 point 5): a classic queue lives on its home node (the
//! node its declaring client was connected to), as in RabbitMQ. Every node knows it and routes to
//! it: publishes on other nodes are forwarded to the home and confirmed with its answer, consumers
//! on other nodes take from it; an exclusive queue is locked to its connection on every node and
//! goes with it; a transient queue whose home is lost is removed so a client can declare it again
//! on another node, and a durable one answers RabbitMQ's 404 until its home is back.

use std::time::Duration;

use amqprs::channel::{BasicCancelArguments, QueueBindArguments, QueueDeclareArguments};
use amqprs::BasicProperties;
use warren_tests::cluster::{
    agreed_leader, agreed_leader_other_than, node_id, three_nodes, LinkCluster, SETTLE,
};
use warren_tests::{TestBroker, TestChannel, Timely};

/// The home node `b` has for `queue`, once it knows the queue (None while it does not).
fn home_on(b: &TestBroker, queue: &str) -> Option<u64> {
    let q = b.server.broker.vhost("/")?.find_queue(queue)?;
    q.spec.home.map(|h| h.node)
}

/// Waits until every broker says `queue`'s home is `home` (None: the queue is gone everywhere).
pub(crate) async fn wait_for_home(
    brokers: &[&TestBroker],
    queue: &str,
    home: Option<u64>,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen: Vec<Option<u64>> = brokers.iter().map(|b| home_on(b, queue)).collect();
        if seen.iter().all(|h| *h == home) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {queue}: homes {seen:?}, wanted {home:?} everywhere"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publish_all(ch: &TestChannel, queue: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let props = BasicProperties::default().with_delivery_mode(2).finish();
        ch.publish_acked("", queue, props, format!("{prefix}-{i}").as_bytes())
            .await;
    }
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

async fn ack(ch: &TestChannel, tag: u64) {
    ch.basic_ack(amqprs::channel::BasicAckArguments::new(tag, false))
        .timely()
        .await
        .expect("basic.ack");
}

#[tokio::test]
async fn a_classic_queue_lives_on_its_home_and_every_node_publishes_to_it_and_consumes_from_it() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    let all = [&b1, &b2, &b3];
    agreed_leader(&all).await;
    let c1 = b1.connect().await;
    let ch1 = c1.channel().await;
    ch1.declare(QueueDeclareArguments::durable_client_named("compute"))
        .await;
    wait_for_home(&all, "compute", Some(1), SETTLE).await;

    // Node 2 redeclares it (an equivalent declaration: no change), binds it, and publishes to it
    // through the binding and the default exchange: each confirm is the home's answer, and the
    // messages are in the home's queue, not in node 2's copy.
    let (c2, _, pch2) = b2.connect_with_confirming_channel().await;
    let (_, count, _) = pch2
        .declare(QueueDeclareArguments::durable_client_named("compute"))
        .await;
    assert_eq!(count, 0);
    pch2.queue_bind(QueueBindArguments::new(
        "compute",
        "amq.direct",
        "compute.1",
    ))
    .timely()
    .await
    .expect("queue.bind");
    let props = BasicProperties::default().with_delivery_mode(2).finish();
    pch2.publish_acked("amq.direct", "compute.1", props, b"bound-0")
        .await;
    publish_all(&pch2, "compute", "p2", 5).await;
    assert_eq!(b1.queue("compute").unwrap().message_count(), 6);
    assert_eq!(b2.queue("compute").unwrap().message_count(), 0);
    // A declare on another node answers the home's counts (its copy holds none of them).
    let (_, count, _) = pch2
        .declare(QueueDeclareArguments::durable_client_named("compute"))
        .await;
    assert_eq!(count, 6);
    // basic.get there takes the head message at the home, where it stays unacked until node 2
    // settles it: requeued, it is back at the head.
    let got = pch2
        .get("compute", false)
        .await
        .expect("a message from the home");
    assert_eq!(
        (got.body.as_slice(), got.message_count),
        (&b"bound-0"[..], Some(5))
    );
    assert_eq!(b1.queue("compute").unwrap().message_count(), 5);
    pch2.basic_reject(amqprs::channel::BasicRejectArguments::new(got.tag, true))
        .timely()
        .await
        .expect("basic.reject");
    let deadline = tokio::time::Instant::now() + SETTLE;
    while b1.queue("compute").unwrap().message_count() != 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not requeued at the home"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A consumer on node 3 takes them (in order) from the home; its acks settle them there.
    let c3 = b3.connect().await;
    let ch3 = c3.channel().await;
    ch3.basic_qos(amqprs::channel::BasicQosArguments::new(0, 4, false))
        .await
        .expect("basic.qos");
    let (tag, mut consumer) = ch3.consume("compute", "remote", true).await;
    let mut expected = vec!["bound-0".to_string()];
    expected.extend(names("p2", 0..5));
    let mut got = Vec::new();
    for _ in 0..6 {
        let d = consumer.recv().await;
        ack(&ch3, d.tag).await;
        got.push(d);
    }
    assert_eq!(warren_tests::client::bodies(&got), expected);
    let deadline = tokio::time::Instant::now() + SETTLE;
    while b1.queue("compute").unwrap().message_count() > 0
        || b1.queue("compute").unwrap().consumer_count() != 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled at the home"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Published on the home itself, taken on node 3 too.
    let (hc, _, hch) = b1.connect_with_confirming_channel().await;
    publish_all(&hch, "compute", "h", 3).await;
    let got = consumer.recv_n(3).await;
    assert_eq!(warren_tests::client::bodies(&got), names("h", 0..3));
    for d in &got {
        ack(&ch3, d.tag).await;
    }
    ch3.basic_cancel(BasicCancelArguments::new(&tag))
        .timely()
        .await
        .expect("basic.cancel");
    hc.close().await;
    // A purge on another node purges the home's queue (once node 3's subscription has ended,
    // so that the home keeps what is published).
    let deadline = tokio::time::Instant::now() + SETTLE;
    while b1.queue("compute").unwrap().consumer_count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_all(&pch2, "compute", "x", 2).await;
    let purged = pch2
        .queue_purge(amqprs::channel::QueuePurgeArguments::new("compute"))
        .timely()
        .await
        .expect("queue.purge");
    assert_eq!(purged, Some(2));
    assert_eq!(b1.queue("compute").unwrap().message_count(), 0);

    // The bindings are every node's: deleting the queue on node 3 removes it and them everywhere.
    for b in all {
        let bound = b
            .server
            .broker
            .vhost("/")
            .unwrap()
            .exchange("amq.direct")
            .unwrap()
            .binding_count();
        assert_eq!(bound, 1, "node {}", node_id(b));
    }
    ch3.queue_delete(amqprs::channel::QueueDeleteArguments::new("compute"))
        .timely()
        .await
        .expect("queue.delete");
    wait_for_home(&all, "compute", None, SETTLE).await;
    c3.close().await;
    c2.close().await;
    c1.close().await;
}

#[tokio::test]
async fn an_exclusive_queue_is_locked_on_every_node_answers_through_it_and_goes_with_its_connection(
) {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    let all = [&b1, &b2, &b3];
    agreed_leader(&all).await;

    // An RPC client on node 1: a server-named exclusive reply queue, consumed there.
    let c1 = b1.connect().await;
    let ch1 = c1.channel().await;
    let (reply, _, _) = ch1
        .declare(QueueDeclareArguments::exclusive_server_named())
        .await;
    assert!(reply.starts_with("amq.gen-"), "{reply}");
    wait_for_home(&all, &reply, Some(1), SETTLE).await;
    let (_, mut replies) = ch1.consume(&reply, "replies", false).await;

    // Another connection, on node 2, cannot declare, consume or purge it (RabbitMQ's 405) ...
    let (c2, ch2, pch2) = b2.connect_with_confirming_channel().await;
    let mut passive = QueueDeclareArguments::new(&reply);
    passive.passive(true);
    let refused = ch2.try_declare(passive).await.expect_err("locked");
    assert_eq!(refused.code, 405, "{refused:?}");
    assert_eq!(
        refused.text,
        format!("RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{reply}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.")
    );
    // ... but an RPC server there answers through it.
    pch2.publish_acked("", &reply, BasicProperties::default(), b"answer")
        .await;
    let d = replies.recv().await;
    assert_eq!(warren_tests::client::bodies(&[d]), ["answer"]);
    c2.close().await;

    // The connection closes: the queue goes on every node.
    c1.close().await;
    wait_for_home(&all, &reply, None, SETTLE).await;
    drop(ch2);
}

#[tokio::test]
async fn an_auto_delete_queue_goes_on_every_node_when_its_last_consumer_anywhere_leaves() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    let all = [&b1, &b2, &b3];
    agreed_leader(&all).await;
    let c1 = b1.connect().await;
    let ch1 = c1.channel().await;
    let mut args = QueueDeclareArguments::new("fanout_1");
    args.auto_delete(true);
    ch1.declare(args).await;
    wait_for_home(&all, "fanout_1", Some(1), SETTLE).await;
    // Consumed on node 2 only: while that consumer lasts the queue stays.
    let c2 = b2.connect().await;
    let ch2 = c2.channel().await;
    let (tag, _consumer) = ch2.consume("fanout_1", "c", true).await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    while b1.queue("fanout_1").unwrap().consumer_count() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_for_home(&all, "fanout_1", Some(1), SETTLE).await;
    ch2.basic_cancel(BasicCancelArguments::new(&tag))
        .timely()
        .await
        .expect("basic.cancel");
    wait_for_home(&all, "fanout_1", None, SETTLE).await;
    c2.close().await;
    c1.close().await;
}

#[tokio::test]
async fn a_lost_homes_transient_queue_is_declared_again_elsewhere_and_a_durable_one_waits_for_it() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    agreed_leader(&[&b1, &b2, &b3]).await;
    let (c1, _, pch1) = b1.connect_with_confirming_channel().await;
    pch1.declare(QueueDeclareArguments::new("reply_a")).await;
    pch1.declare(QueueDeclareArguments::new("reply_b")).await;
    pch1.declare(QueueDeclareArguments::durable_client_named("orders"))
        .await;
    publish_all(&pch1, "orders", "o", 3).await;
    wait_for_home(&[&b1, &b2, &b3], "orders", Some(1), SETTLE).await;
    drop(pch1);
    drop(c1);

    // The home stops.
    let stopped = b1.stop_keeping_data().await;
    let left = [&b2, &b3];
    agreed_leader_other_than(&left, Some(1)).await;

    // The durable queue answers RabbitMQ's 404 on the other nodes, for every use ...
    let c2 = b2.connect().await;
    let ch = c2.channel().await;
    let mut passive = QueueDeclareArguments::durable_client_named("orders");
    passive.passive(true);
    let refused = ch
        .try_declare(passive.clone())
        .await
        .expect_err("home down");
    assert_eq!(refused.code, 404, "{refused:?}");
    assert_eq!(
        refused.text,
        "NOT_FOUND - home node 'n1' of durable queue 'orders' in vhost '/' is down or inaccessible"
    );
    let ch = c2.channel().await;
    let consume = ch
        .basic_consume(
            amqprs::consumer::DefaultConsumer::new(false),
            amqprs::channel::BasicConsumeArguments::new("orders", "x"),
        )
        .timely()
        .await;
    let refused = ch.refused(consume).await;
    assert_eq!(refused.code, 404, "{refused:?}");

    // ... a transient one is declared again at once on another node (now its home) ...
    let (c3, _, pch3) = b3.connect_with_confirming_channel().await;
    pch3.declare(QueueDeclareArguments::new("reply_a")).await;
    wait_for_home(&left, "reply_a", Some(3), SETTLE).await;
    let ch2 = c2.channel().await;
    let (_, mut answers) = ch2.consume("reply_a", "a", true).await;
    pch3.publish_acked("", "reply_a", BasicProperties::default(), b"hello")
        .await;
    assert_eq!(
        warren_tests::client::bodies(&[answers.recv().await]),
        ["hello"]
    );
    // ... and one nobody declares again goes once its home has been down long enough.
    wait_for_home(
        &left,
        "reply_b",
        None,
        warren_broker::cluster::home::HOME_LOST_AFTER + SETTLE,
    )
    .await;

    // The home comes back with the durable queue's messages, which a consumer on node 2 takes;
    // the transient queues of its earlier run are gone.
    let b1 = stopped.start().await;
    let all = [&b1, &b2, &b3];
    wait_for_home(&all, "reply_b", None, SETTLE).await;
    wait_for_home(&all, "reply_a", Some(3), SETTLE).await;
    wait_for_home(&all, "orders", Some(1), SETTLE).await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    let got = loop {
        let ch = c2.channel().await;
        match ch.try_declare(passive.clone()).await {
            Ok(_) => {
                let (_, mut consumer) = ch.consume("orders", "o", true).await;
                break consumer.recv_n(3).await;
            }
            Err(refused) => {
                assert_eq!(refused.code, 404);
                assert!(tokio::time::Instant::now() < deadline, "{refused:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(warren_tests::client::bodies(&got), names("o", 0..3));
    c3.close().await;
    c2.close().await;
}
