//! Queues: declare (named, server-named, passive, redeclare), exclusivity, purge, delete with its
//! conditions, and the lifetimes of exclusive and auto-delete queues.

use amqprs::channel::{
    BasicCancelArguments, QueueBindArguments, QueueDeclareArguments, QueueDeleteArguments,
    QueuePurgeArguments, QueueUnbindArguments,
};
use warren_tests::client::bodies;
use warren_tests::{Client, CloseInfo, TestBroker, Timely};

const LOCKED: &str = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";

fn passive(name: &str) -> QueueDeclareArguments {
    let mut args = QueueDeclareArguments::new(name);
    args.passive(true);
    args
}

/// A passive declare on a fresh channel of `client`: Ok(counts) or the channel.close.
async fn probe(client: &Client, name: &str) -> Result<(u32, u32), CloseInfo> {
    let ch = client.channel().await;
    match ch.queue_declare(passive(name)).timely().await {
        Ok(Some((_, messages, consumers))) => Ok((messages, consumers)),
        Ok(None) => panic!("declare-ok expected"),
        Err(_) => Err(ch.expect_close().await),
    }
}

fn not_found(name: &str) -> CloseInfo {
    CloseInfo::new(
        404,
        &format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
        50,
        10,
    )
}

#[tokio::test]
async fn declare_reports_messages_and_consumers() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    assert_eq!(ch.declare_queue("q1").await, ("q1".to_string(), 0, 0));
    ch.publish("", "q1", b"a").await;
    ch.publish("", "q1", b"b").await;
    assert_eq!(ch.declare_queue("q1").await, ("q1".to_string(), 2, 0));
    let consumer_ch = client.channel().await;
    consumer_ch.declare_queue("q2").await;
    let _consumer = consumer_ch.consume("q2", "", false).await;
    assert_eq!(probe(&client, "q2").await, Ok((0, 1)));
    assert_eq!(probe(&client, "q1").await, Ok((2, 0)));
}

#[tokio::test]
async fn server_named_queues_get_amq_gen_names() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let (a, _, _) = ch.declare_queue("").await;
    let (b, _, _) = ch.declare_queue("").await;
    for name in [&a, &b] {
        assert!(
            name.starts_with("amq.gen-") && name.len() > "amq.gen-".len() + 10,
            "server-generated name {name:?}"
        );
    }
    assert_ne!(a, b);
    ch.publish("", &b, b"to the generated queue").await;
    // An empty queue name means the queue declared last on this channel.
    let got = ch
        .get("", true)
        .await
        .expect("a message in the last declared queue");
    assert_eq!(got.body, b"to the generated queue");
}

#[tokio::test]
async fn empty_name_without_a_previous_declare_is_404() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let r = ch
        .queue_bind(QueueBindArguments::new("", "amq.direct", "k"))
        .timely()
        .await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(404, "NOT_FOUND - no previously declared queue", 50, 20)
    );
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    assert_eq!(probe(&client, "nope").await, Err(not_found("nope")));
}

#[tokio::test]
async fn redeclare_with_different_flags_is_406() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    let mut ad = QueueDeclareArguments::new("q-ad");
    ad.auto_delete(true);
    ch.queue_declare(ad).timely().await.unwrap();

    let ch = client.channel().await;
    let mut durable = QueueDeclareArguments::new("q");
    durable.durable(true);
    let r = ch.queue_declare(durable).timely().await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'",
            50,
            10
        )
    );

    let ch = client.channel().await;
    let r = ch
        .queue_declare(QueueDeclareArguments::new("q-ad"))
        .timely()
        .await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue 'q-ad' in vhost '/': received 'false' but current is 'true'",
            50,
            10
        )
    );
}

#[tokio::test]
async fn amq_prefix_is_reserved_for_queues() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let r = ch
        .queue_declare(QueueDeclareArguments::new("amq.foo"))
        .timely()
        .await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'",
            50,
            10
        )
    );
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection() {
    let broker = TestBroker::start().await;
    let owner = broker.connect().await;
    let other = broker.connect().await;
    let ch = owner.channel().await;
    let mut excl = QueueDeclareArguments::new("excl");
    excl.exclusive(true);
    ch.queue_declare(excl.clone()).timely().await.unwrap();
    ch.publish("", "excl", b"owned").await;

    assert_eq!(
        probe(&other, "excl").await,
        Err(CloseInfo::new(405, LOCKED, 50, 10))
    );
    let o = other.channel().await;
    let r = o.queue_declare(excl).timely().await;
    assert_eq!(o.refused(r).await, CloseInfo::new(405, LOCKED, 50, 10));
    let o = other.channel().await;
    let r = o
        .basic_consume_rx(amqprs::channel::BasicConsumeArguments::new("excl", ""))
        .timely()
        .await;
    assert_eq!(
        o.refused(r.map(|(tag, _)| tag)).await,
        CloseInfo::new(405, LOCKED, 60, 20)
    );
    let o = other.channel().await;
    let r = o
        .queue_purge(QueuePurgeArguments::new("excl"))
        .timely()
        .await;
    assert_eq!(o.refused(r).await, CloseInfo::new(405, LOCKED, 50, 30));
    let o = other.channel().await;
    let r = o
        .queue_delete(QueueDeleteArguments::new("excl"))
        .timely()
        .await;
    assert_eq!(o.refused(r).await, CloseInfo::new(405, LOCKED, 50, 40));
    // The owner still has its queue and its message.
    assert_eq!(probe(&owner, "excl").await, Ok((1, 0)));
}

#[tokio::test]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let broker = TestBroker::start().await;
    let owner = broker.connect().await;
    let other = broker.connect().await;
    let ch = owner.channel().await;
    let mut excl = QueueDeclareArguments::new("excl-gone");
    excl.exclusive(true);
    ch.queue_declare(excl).timely().await.unwrap();
    ch.publish("", "excl-gone", b"dropped with the queue").await;
    owner.close().await;
    assert_eq!(
        probe(&other, "excl-gone").await,
        Err(not_found("excl-gone"))
    );
    // The name is free again.
    let ch = other.channel().await;
    assert_eq!(ch.declare_queue("excl-gone").await.1, 0);
}

#[tokio::test]
async fn purge_drops_ready_messages_and_reports_them() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("purge-q").await;
    for body in [&b"1"[..], b"2", b"3"] {
        ch.publish("", "purge-q", body).await;
    }
    let purged = ch
        .queue_purge(QueuePurgeArguments::new("purge-q"))
        .timely()
        .await
        .unwrap();
    assert_eq!(purged, Some(3));
    assert!(ch.get("purge-q", true).await.is_none());
    let purged = ch
        .queue_purge(QueuePurgeArguments::new("purge-q"))
        .timely()
        .await
        .unwrap();
    assert_eq!(purged, Some(0));
}

#[tokio::test]
async fn delete_if_empty_and_if_unused() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    ch.publish("", "q", b"keeps it non-empty").await;
    let mut if_empty = QueueDeleteArguments::new("q");
    if_empty.if_empty(true);
    let r = ch.queue_delete(if_empty).timely().await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty",
            50,
            40
        )
    );

    let consumer_ch = client.channel().await;
    consumer_ch.declare_queue("busy").await;
    let _consumer = consumer_ch.consume("busy", "", false).await;
    let ch = client.channel().await;
    let mut if_unused = QueueDeleteArguments::new("busy");
    if_unused.if_unused(true);
    let r = ch.queue_delete(if_unused).timely().await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - queue 'busy' in vhost '/' in use",
            50,
            40
        )
    );

    // Unconditional delete reports the ready messages it dropped.
    let ch = client.channel().await;
    ch.publish("", "q", b"second").await;
    let deleted = ch
        .queue_delete(QueueDeleteArguments::new("q"))
        .timely()
        .await
        .unwrap();
    assert_eq!(deleted, Some(2));
    assert_eq!(probe(&client, "q").await, Err(not_found("q")));
}

#[tokio::test]
async fn delete_of_a_missing_queue_is_ok() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let deleted = ch
        .queue_delete(QueueDeleteArguments::new("never-declared"))
        .timely()
        .await
        .expect("queue.delete of a missing queue succeeds");
    assert_eq!(deleted, Some(0));
}

#[tokio::test]
async fn auto_delete_queue_goes_with_its_last_consumer() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let mut ad = QueueDeclareArguments::new("ad");
    ad.auto_delete(true);
    ch.queue_declare(ad).timely().await.unwrap();
    let (first, _c1) = ch.consume("ad", "first", false).await;
    let (second, _c2) = ch.consume("ad", "second", false).await;
    ch.basic_cancel(BasicCancelArguments::new(&first))
        .timely()
        .await
        .unwrap();
    assert_eq!(probe(&client, "ad").await, Ok((0, 1)));
    ch.basic_cancel(BasicCancelArguments::new(&second))
        .timely()
        .await
        .unwrap();
    assert_eq!(probe(&client, "ad").await, Err(not_found("ad")));
}

#[tokio::test]
async fn auto_delete_queue_without_consumers_stays() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let mut ad = QueueDeclareArguments::new("ad-idle");
    ad.auto_delete(true);
    ch.queue_declare(ad).timely().await.unwrap();
    ch.publish("", "ad-idle", b"waiting").await;
    assert_eq!(probe(&client, "ad-idle").await, Ok((1, 0)));
}

#[tokio::test]
async fn bind_reports_the_missing_end() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("bq").await;
    let r = ch
        .queue_bind(QueueBindArguments::new("nope", "amq.direct", "k"))
        .timely()
        .await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(404, "NOT_FOUND - no queue 'nope' in vhost '/'", 50, 20)
    );
    let ch = client.channel().await;
    let r = ch
        .queue_bind(QueueBindArguments::new("bq", "no-x", "k"))
        .timely()
        .await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(404, "NOT_FOUND - no exchange 'no-x' in vhost '/'", 50, 20)
    );
    // Both missing: the exchange (the source) is reported.
    let ch = client.channel().await;
    let r = ch
        .queue_bind(QueueBindArguments::new("nope", "no-x", "k"))
        .timely()
        .await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(404, "NOT_FOUND - no exchange 'no-x' in vhost '/'", 50, 20)
    );
}

#[tokio::test]
async fn unbind_stops_routing_and_unknown_unbind_is_ok() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("ub").await;
    ch.queue_bind(QueueBindArguments::new("ub", "amq.direct", "k"))
        .timely()
        .await
        .unwrap();
    ch.publish("amq.direct", "k", b"bound").await;
    ch.queue_unbind(QueueUnbindArguments::new("ub", "amq.direct", "k"))
        .timely()
        .await
        .unwrap();
    ch.publish("amq.direct", "k", b"unbound").await;
    assert_eq!(bodies(&ch.drain("ub").await), ["bound"]);
    ch.queue_unbind(QueueUnbindArguments::new("ub", "amq.direct", "never"))
        .timely()
        .await
        .expect("unbinding a binding that does not exist succeeds");
    ch.queue_unbind(QueueUnbindArguments::new("missing", "no-x", "k"))
        .timely()
        .await
        .expect("unbinding between missing objects succeeds");
}
