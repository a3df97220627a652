//! Publisher confirms: every publish on a confirming channel is acked exactly once, in order, and a
//! mandatory message that cannot be routed is returned BEFORE the ack that covers it (RabbitMQ's
//! ordering, which clients rely on to tell "returned" from "delivered").

use amq_protocol::protocol::{basic, confirm, AMQPClass};
use amqprs::channel::ConfirmSelectArguments;
use bytes::BytesMut;
use warren_tests::raw::{confirm_select, encode_publish, queue_declare, NO_PROPERTIES};
use warren_tests::{ChannelEvent, CloseInfo, RawClient, TestBroker, TestChannel, Timely};

async fn select(ch: &TestChannel) {
    ch.confirm_select(ConfirmSelectArguments::new(false))
        .timely()
        .await
        .expect("confirm.select-ok");
}

/// Reads acks until `last` is covered; returns every tag acked (expanding `multiple`).
async fn acked_through(ch: &TestChannel, last: u64) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut highest = 0;
    while highest < last {
        match ch.next_event().await {
            ChannelEvent::Ack { tag, multiple } => {
                assert!(tag > highest, "ack {tag} after {highest}: not increasing");
                if multiple {
                    acked.extend(highest + 1..=tag);
                } else {
                    acked.push(tag);
                }
                highest = tag;
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    acked
}

#[tokio::test]
async fn every_publish_is_acked_once_in_order() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("confirm-q").await;
    select(&ch).await;
    for i in 0..200u32 {
        ch.publish("", "confirm-q", &i.to_be_bytes()).await;
    }
    let acked = acked_through(&ch, 200).await;
    assert_eq!(acked, (1..=200).collect::<Vec<_>>());
    ch.assert_no_event().await;
    assert_eq!(ch.declare_queue("confirm-q").await.1, 200);
}

#[tokio::test]
async fn unroutable_publishes_are_acked_too() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    select(&ch).await;
    ch.publish("amq.direct", "nobody-listens", b"dropped").await;
    ch.publish("", "no-such-queue", b"dropped").await;
    assert_eq!(acked_through(&ch, 2).await, [1, 2]);
    ch.assert_no_event().await;
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_before_its_ack() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    select(&ch).await;
    ch.publish_with(
        "amq.direct",
        "nowhere",
        amqprs::BasicProperties::default(),
        b"bounce",
        true,
    )
    .await;
    match ch.next_event().await {
        ChannelEvent::Returned {
            code,
            text,
            exchange,
            routing_key,
            body,
        } => {
            assert_eq!(
                (code, text.as_str(), exchange.as_str(), routing_key.as_str()),
                (312, "NO_ROUTE", "amq.direct", "nowhere")
            );
            assert_eq!(body, b"bounce");
        }
        other => panic!("expected basic.return first, got {other:?}"),
    }
    assert_eq!(acked_through(&ch, 1).await, [1]);
}

async fn confirming_raw_channel(broker: &TestBroker) -> RawClient {
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    match raw.call(1, confirm_select()).await {
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }
    raw
}

#[tokio::test]
async fn return_precedes_ack_on_the_wire() {
    let broker = TestBroker::start().await;
    let mut raw = confirming_raw_channel(&broker).await;
    raw.publish(1, "", "no-such-queue", true, NO_PROPERTIES, b"back")
        .await;
    let returned = raw.expect_message(1).await;
    match &returned.method {
        AMQPClass::Basic(basic::AMQPMethod::Return(r)) => {
            assert_eq!(
                (
                    r.reply_code,
                    r.reply_text.as_str(),
                    r.exchange.as_str(),
                    r.routing_key.as_str()
                ),
                (312, "NO_ROUTE", "", "no-such-queue")
            );
        }
        other => panic!("expected basic.return before the ack, got {other:?}"),
    }
    assert_eq!(returned.body, b"back");
    match raw.expect_method(1).await {
        AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => assert_eq!(a.delivery_tag, 1),
        other => panic!("expected basic.ack, got {other:?}"),
    }
}

#[tokio::test]
async fn return_precedes_the_ack_covering_it_in_a_burst() {
    let broker = TestBroker::start().await;
    let mut raw = confirming_raw_channel(&broker).await;
    raw.call(1, queue_declare("burst-q")).await;
    // Three publishes in one write: routable, unroutable mandatory, routable.
    let mut out = BytesMut::new();
    for (key, mandatory) in [("burst-q", true), ("nowhere", true), ("burst-q", false)] {
        encode_publish(
            &mut out,
            raw.frame_max,
            1,
            ("", key, mandatory),
            NO_PROPERTIES,
            key.as_bytes(),
        );
    }
    raw.send(&out).await;
    let mut returned = false;
    let mut acked_through = 0;
    while acked_through < 3 {
        let (ch, method) = raw.next_method().await;
        assert_eq!(ch, 1);
        match method {
            AMQPClass::Basic(basic::AMQPMethod::Return(r)) => {
                assert!(
                    acked_through < 2,
                    "basic.return for publish 2 arrived after an ack covering it"
                );
                assert_eq!((r.reply_code, r.routing_key.as_str()), (312, "nowhere"));
                let content = raw
                    .expect_content(1, AMQPClass::Basic(basic::AMQPMethod::Return(r)))
                    .await;
                assert_eq!(content.body, b"nowhere");
                returned = true;
            }
            AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                assert!(a.delivery_tag > acked_through);
                assert!(
                    a.multiple || a.delivery_tag == acked_through + 1,
                    "ack {} skips tags after {acked_through} without multiple",
                    a.delivery_tag
                );
                acked_through = a.delivery_tag;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        returned,
        "the unroutable mandatory publish was not returned"
    );
}

#[tokio::test]
async fn publish_to_a_missing_exchange_closes_the_confirming_channel() {
    let broker = TestBroker::start().await;
    let mut raw = confirming_raw_channel(&broker).await;
    raw.call(1, queue_declare("q")).await;
    raw.publish(1, "", "q", false, NO_PROPERTIES, b"ok").await;
    match raw.expect_method(1).await {
        AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => assert_eq!(a.delivery_tag, 1),
        other => panic!("expected the ack for publish 1, got {other:?}"),
    }
    raw.publish(1, "nope", "q", false, NO_PROPERTIES, b"lost")
        .await;
    // No ack for the refused publish: the next frame is the channel.close.
    assert_eq!(
        raw.expect_channel_close(1).await,
        CloseInfo::new(404, "NOT_FOUND - no exchange 'nope' in vhost '/'", 60, 40)
    );
}
