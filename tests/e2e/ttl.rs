//! Message TTLs and queue expiry as in RabbitMQ 3.13: the per-message `expiration` and the queue's
//! x-message-ttl (the smaller wins), expired messages never delivered (basic.get or consumer),
//! expiration "0" delivered only to a consumer ready for it, RabbitMQ's texts for invalid
//! expirations, and x-expires (an unused queue goes, a consumed one stays; deleting a consumed
//! queue sends basic.cancel). Expectations are those of tests/python/test_queue_features.py.

use std::time::Duration;

use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicQosArguments, QueueDeleteArguments,
};
use amqprs::BasicProperties;
use tokio::time::Instant;
use warren_tests::client::bodies;
use warren_tests::features::{int, table, with_expiration, Confirm};
use warren_tests::{ChannelEvent, CloseInfo, TestBroker, TestChannel, Timely, TIMEOUT};

async fn ttl_queue(ch: &TestChannel, name: &str, ttl: i32) {
    ch.declare_queue_with(name, table([("x-message-ttl", int(ttl))]))
        .await;
}

#[tokio::test]
async fn per_message_expiration() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    pch.publish_acked("", "q", with_expiration("50"), b"short")
        .await;
    pch.publish_acked("", "q", with_expiration("60000"), b"long")
        .await;
    pch.publish_acked("", "q", BasicProperties::default(), b"forever")
        .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let got = ch.drain("q").await;
    assert_eq!(bodies(&got), ["long", "forever"]);
    assert_eq!(
        got.iter()
            .map(|d| d.properties.expiration().cloned())
            .collect::<Vec<_>>(),
        [Some("60000".to_string()), None]
    );
}

#[tokio::test]
async fn queue_message_ttl_drops_old_messages() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ttl_queue(&ch, "q", 300).await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    pch.publish_acked("", "q", BasicProperties::default(), b"a")
        .await;
    pch.publish_acked("", "q", BasicProperties::default(), b"b")
        .await;
    assert_eq!(ch.message_count("q").await, 2);
    let deadline = Instant::now() + TIMEOUT;
    while ch.message_count("q").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the queue TTL did not drop the messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ch.get("q", true).await.is_none());
    pch.publish_acked("", "q", BasicProperties::default(), b"fresh")
        .await;
    assert_eq!(bodies(&ch.drain("q").await), ["fresh"]);
}

#[tokio::test]
async fn smaller_of_queue_and_message_ttl_wins() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    // message TTL smaller than the queue's
    ttl_queue(&ch, "long-queue-ttl", 60000).await;
    // queue TTL smaller than the message's
    ttl_queue(&ch, "short-queue-ttl", 50).await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    for q in ["long-queue-ttl", "short-queue-ttl"] {
        let expiration = if q == "long-queue-ttl" { "50" } else { "60000" };
        pch.publish_acked("", q, with_expiration(expiration), b"dies")
            .await;
        pch.publish_acked("", q, with_expiration("60000"), b"lives")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(bodies(&ch.drain("long-queue-ttl").await), ["lives"]);
    assert!(ch.drain("short-queue-ttl").await.is_empty());
}

#[tokio::test]
async fn expired_messages_are_never_delivered_to_a_consumer() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    pch.publish_acked("", "q", with_expiration("60000"), b"first")
        .await;
    pch.publish_acked("", "q", with_expiration("100"), b"expires")
        .await;
    pch.publish_acked("", "q", BasicProperties::default(), b"last")
        .await;
    let cch = client.channel().await;
    cch.basic_qos(BasicQosArguments::new(0, 1, false))
        .timely()
        .await
        .unwrap();
    let (_, mut consumer) = cch.consume("q", "c", true).await;
    let first = consumer.recv().await;
    assert_eq!(first.body, b"first");
    // "expires" expires while the consumer is busy with "first".
    tokio::time::sleep(Duration::from_millis(300)).await;
    cch.basic_ack(BasicAckArguments::new(first.tag, false))
        .timely()
        .await
        .unwrap();
    assert_eq!(consumer.recv().await.body, b"last");
    consumer.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn expiration_zero_reaches_only_a_consumer_ready_for_it() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    // nobody waits: gone at once
    pch.publish_acked("", "q", with_expiration("0"), b"nobody waits")
        .await;
    assert!(ch.get("q", true).await.is_none());

    // a consumer waits: delivered, with the property as published
    let cch = client.channel().await;
    let (_, mut consumer) = cch.consume("q", "c", false).await;
    pch.publish_acked("", "q", with_expiration("0"), b"consumer waits")
        .await;
    let got = consumer.recv().await;
    assert_eq!(got.body, b"consumer waits");
    assert_eq!(got.properties.expiration().map(String::as_str), Some("0"));
    consumer.assert_quiet(Duration::from_millis(100)).await;

    // a consumer whose prefetch window is full is not ready: the message expires instead of waiting
    ch.declare_queue("busy").await;
    let bch = client.channel().await;
    bch.basic_qos(BasicQosArguments::new(0, 1, false))
        .timely()
        .await
        .unwrap();
    let (_, mut busy) = bch.consume("busy", "busy", true).await;
    pch.publish_acked("", "busy", BasicProperties::default(), b"holds the window")
        .await;
    let held = busy.recv().await;
    pch.publish_acked("", "busy", with_expiration("0"), b"no room")
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    bch.basic_ack(BasicAckArguments::new(held.tag, false))
        .timely()
        .await
        .unwrap();
    busy.assert_quiet(Duration::from_millis(200)).await;
    assert_eq!(ch.message_count("busy").await, 0);
}

#[tokio::test]
async fn invalid_expirations_are_refused_with_rabbitmq_texts() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    let mut wrong = Vec::new();
    for (expiration, reason) in [
        ("abc", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("", "no_integer"),
        ("1.5", "{leftover_string,\".5\"}"),
        (" 5", "no_integer"),
    ] {
        let pch = client.channel().await;
        pch.publish_with("", "q", with_expiration(expiration), b"x", false)
            .await;
        let expected = CloseInfo::new(
            406,
            &format!("PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}"),
            60,
            40,
        );
        let got = match tokio::time::timeout(Duration::from_secs(1), pch.next_event()).await {
            Ok(ChannelEvent::Closed(close)) => Some(close),
            Ok(other) => panic!("expected channel.close, got {other:?}"),
            Err(_) => None,
        };
        if got.as_ref() != Some(&expected) {
            wrong.push(format!(
                "expiration {expiration:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    assert_eq!(ch.message_count("q").await, 0);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Whether `queue` is gone, seen through a mandatory publish on the confirming channel `pch` (a
/// passive declare would count as a use of the queue and restart its x-expires timer; a publish
/// does not).
async fn queue_gone(pch: &TestChannel, queue: &str) -> bool {
    match pch
        .publish_confirmed_with("", queue, BasicProperties::default(), b"probe", true)
        .await
    {
        Confirm::ReturnedThenAck => true,
        Confirm::Ack => false,
        Confirm::Nack => panic!("probe publish nacked"),
    }
}

async fn wait_gone(pch: &TestChannel, queue: &str) -> Duration {
    let started = Instant::now();
    while !queue_gone(pch, queue).await {
        assert!(
            started.elapsed() < TIMEOUT,
            "queue {queue} did not expire within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    started.elapsed()
}

async fn assert_not_found(client: &warren_tests::Client, queue: &str) {
    let ch = client.channel().await;
    let mut passive = amqprs::channel::QueueDeclareArguments::new(queue);
    passive.passive(true);
    assert_eq!(
        ch.try_declare(passive).await,
        Err(CloseInfo::new(
            404,
            &format!("NOT_FOUND - no queue '{queue}' in vhost '/'"),
            50,
            10
        ))
    );
}

#[tokio::test]
async fn an_unused_queue_expires() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue_with("q", table([("x-expires", int(300))]))
        .await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    assert!(!queue_gone(&pch, "q").await);
    let waited = wait_gone(&pch, "q").await;
    assert!(
        waited > Duration::from_millis(200),
        "expired after {waited:?}"
    );
    assert_not_found(&client, "q").await;
}

#[tokio::test]
async fn a_consumed_queue_does_not_expire_until_its_consumer_goes() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue_with("consumed", table([("x-expires", int(200))]))
        .await;
    ch.declare_queue_with("idle", table([("x-expires", int(200))]))
        .await;
    let cch = client.channel().await;
    let (tag, _consumer) = cch.consume("consumed", "c", true).await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    wait_gone(&pch, "idle").await;
    assert_not_found(&client, "idle").await;
    // several TTLs later the consumed queue is still there, and its consumer was not cancelled
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!queue_gone(&pch, "consumed").await);
    cch.assert_no_event().await;
    cch.basic_cancel(BasicCancelArguments::new(&tag))
        .timely()
        .await
        .unwrap();
    wait_gone(&pch, "consumed").await;
    assert_not_found(&client, "consumed").await;
}

#[tokio::test]
async fn basic_get_keeps_an_expiring_queue_alive() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue_with("q", table([("x-expires", int(200))]))
        .await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    // a get every 60 ms for twice the x-expires period
    for _ in 0..7 {
        ch.get("q", true).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(!queue_gone(&pch, "q").await);
    wait_gone(&pch, "q").await;
}

#[tokio::test]
async fn a_redeclare_keeps_an_expiring_queue_alive() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue_with("q", table([("x-expires", int(200))]))
        .await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    for _ in 0..7 {
        ch.declare_queue_with("q", table([("x-expires", int(200))]))
            .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert!(!queue_gone(&pch, "q").await);
    wait_gone(&pch, "q").await;
}

#[tokio::test]
async fn deleting_a_consumed_queue_cancels_its_consumer() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    let (tag, _consumer) = ch.consume("q", "doomed", false).await;
    let other = broker.connect().await;
    let och = other.channel().await;
    och.queue_delete(QueueDeleteArguments::new("q"))
        .timely()
        .await
        .unwrap();
    match ch.next_event().await {
        ChannelEvent::Cancelled(cancelled) => assert_eq!(cancelled, tag),
        other => panic!("expected basic.cancel, got {other:?}"),
    }
    // the channel is still open and usable
    ch.declare_queue("after").await;
}
