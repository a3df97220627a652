//! Flow control and resource limits as in RabbitMQ 3.13, each on a broker started with the limit:
//! the memory alarm (connection.blocked to a publisher that advertises the capability, consumers
//! elsewhere drain, then connection.unblocked, nothing lost), max_message_size, the queue and
//! connection limits of a vhost, the per-channel consumer limit, and connection.update-secret.
//! Expectations are those of tests/python/test_flow_control.py and test_channel_features.py.

use std::time::Duration;

use amq_protocol::protocol::{connection, queue, AMQPClass};
use amq_protocol::types::AMQPValue;
use amqprs::channel::{
    BasicAckArguments, BasicQosArguments, QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::BasicProperties;
use tokio::time::Instant;
use warren_protocol::frame::FrameKind;
use warren_protocol::method::decode_method;
use warren_tests::features::Confirm;
use warren_tests::raw::{queue_declare, NO_PROPERTIES};
use warren_tests::{CloseInfo, RawClient, TestBroker, Timely, Tuning, TIMEOUT};

const WATERMARK: u64 = 100_000;
const BODY: usize = 10_000;
/// A bound on the publishes needed to cross the mark (about a dozen are).
const MAX_PUBLISHES: u32 = 200;

fn numbered(i: u32, size: usize) -> Vec<u8> {
    let mut body = i.to_be_bytes().to_vec();
    body.resize(size, b'.');
    body
}

fn number(body: &[u8]) -> u32 {
    u32::from_be_bytes(body[..4].try_into().expect("a numbered body"))
}

#[tokio::test]
async fn memory_alarm_blocks_the_publisher_until_a_consumer_drains() {
    let broker = TestBroker::start_with(|c| {
        c.limits.memory_high_watermark_bytes = Some(WATERMARK);
        // Keep the backlog in memory: this test is about the alarm, not about paging it away.
        c.limits.memory_paging_ratio = 2.0;
    })
    .await;
    let mut publisher = broker.raw().await;
    let handshake = publisher
        .handshake_with(Tuning {
            connection_blocked: true,
            ..Tuning::default()
        })
        .await;
    let caps = match handshake
        .start
        .server_properties
        .inner()
        .get("capabilities")
    {
        Some(AMQPValue::FieldTable(caps)) => caps.clone(),
        other => panic!("server capabilities: {other:?}"),
    };
    for cap in ["connection.blocked", "consumer_cancel_notify"] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap}"
        );
    }
    publisher.open_channel(1).await;
    match publisher.call(1, queue_declare("flow")).await {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)) => {}
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }

    // Publish with nobody consuming until the broker says blocked.
    let mut sent = 0;
    let reason = loop {
        assert!(
            sent < MAX_PUBLISHES,
            "no connection.blocked after {sent} messages of {BODY} bytes (mark {WATERMARK})"
        );
        publisher
            .publish(1, "", "flow", false, NO_PROPERTIES, &numbered(sent, BODY))
            .await;
        sent += 1;
        match publisher.read_frame_within(Duration::from_millis(10)).await {
            Err(()) => continue,
            Ok(None) => panic!("the broker closed the publishing connection"),
            Ok(Some(frame)) => {
                assert_eq!(
                    (frame.kind, frame.channel),
                    (FrameKind::Method, 0),
                    "{frame:?}"
                );
                match decode_method(&frame.payload).expect("a method") {
                    AMQPClass::Connection(connection::AMQPMethod::Blocked(b)) => {
                        break b.reason.as_str().to_string()
                    }
                    other => panic!("expected connection.blocked, got {other:?}"),
                }
            }
        }
    };
    assert_eq!(reason, "low on memory");
    // Not long before the mark (the broker also counts what a message holds besides its body).
    assert!(
        u64::from(sent) * BODY as u64 >= WATERMARK / 10 * 9,
        "blocked after only {sent} messages"
    );
    // Still blocked while nobody consumes.
    assert!(
        publisher
            .read_frame_within(Duration::from_millis(200))
            .await
            .is_err(),
        "a frame arrived while blocked"
    );

    // A consumer on another connection drains the queue; then the publisher is released.
    let consumer_conn = broker.connect().await;
    let cch = consumer_conn.channel().await;
    cch.basic_qos(BasicQosArguments::new(0, 50, false))
        .timely()
        .await
        .unwrap();
    let (_, mut consumer) = cch.consume("flow", "drain", true).await;
    let mut received = Vec::new();
    for _ in 0..sent {
        let d = consumer.recv().await;
        received.push(number(&d.body));
        cch.basic_ack(BasicAckArguments::new(d.tag, false))
            .timely()
            .await
            .unwrap();
    }
    assert_eq!(received, (0..sent).collect::<Vec<_>>());
    match publisher.next_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => {}
        other => panic!("expected connection.unblocked, got {other:?}"),
    }

    // The publisher can publish again, and nothing it published was lost.
    publisher
        .publish(1, "", "flow", false, NO_PROPERTIES, &numbered(sent, 16))
        .await;
    let d = consumer.recv().await;
    assert_eq!(number(&d.body), sent);
    consumer.assert_quiet(Duration::from_millis(100)).await;
    assert!(
        publisher
            .read_frame_within(Duration::from_millis(50))
            .await
            .is_err(),
        "unexpected frame to the publisher"
    );
}

#[tokio::test]
async fn a_message_larger_than_max_message_size_is_refused() {
    let broker = TestBroker::start_with(|c| c.limits.max_message_size = 1000).await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("size").await;
    ch.select_confirms().await;
    // exactly the limit is fine
    assert_eq!(
        ch.publish_confirmed("", "size", BasicProperties::default(), &[b'x'; 1000])
            .await,
        Confirm::Ack
    );
    ch.publish_with("", "size", BasicProperties::default(), &[b'x'; 1001], false)
        .await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000",
            60,
            40
        )
    );
    let ch2 = client.channel().await;
    let got = ch2.drain("size").await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, [b'x'; 1000]);
}

#[tokio::test]
async fn the_queue_limit_of_a_vhost() {
    let broker = TestBroker::start_with(|c| c.limits.max_queues_per_vhost = Some(3)).await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    for q in ["lim0", "lim1", "lim2"] {
        ch.declare_queue(q).await;
    }
    // redeclaring an existing queue is not a new queue
    ch.declare_queue("lim0").await;
    assert_eq!(
        ch.try_declare(QueueDeclareArguments::new("extra")).await,
        Err(CloseInfo::new(
            406,
            "PRECONDITION_FAILED - cannot declare queue 'extra': queue limit in vhost '/' (3) is reached",
            50,
            10
        ))
    );
    // deleting one makes room again
    let ch = client.channel().await;
    ch.queue_delete(QueueDeleteArguments::new("lim0"))
        .timely()
        .await
        .unwrap();
    ch.declare_queue("extra").await;
}

#[tokio::test]
async fn the_connection_limit_of_a_vhost() {
    let broker = TestBroker::start_with(|c| c.limits.max_connections_per_vhost = Some(2)).await;
    let first = broker.connect().await;
    let second = broker.connect().await;
    let mut third = broker.raw().await;
    assert_eq!(
        third.try_handshake(&Tuning::default()).await.err(),
        Some(CloseInfo::new(
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'admin': connection limit (2) is reached",
            10,
            40
        ))
    );
    // the open ones are unaffected
    second.channel().await.declare_queue("still-open").await;
    // closing one frees a slot (connection tracking may lag a moment)
    first.close().await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut again = RawClient::connect(&broker, warren_tests::Identity::Admin)
            .await
            .expect("TLS handshake");
        match again.try_handshake(&Tuning::default()).await {
            Ok(_) => break,
            Err(close) => {
                assert_eq!(close.code, 530, "{close:?}");
                assert!(
                    Instant::now() < deadline,
                    "no slot after a close: {close:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn the_consumer_limit_of_a_channel() {
    let broker = TestBroker::start_with(|c| c.limits.max_consumers_per_channel = Some(2)).await;
    let mut client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("cons").await;
    let _c0 = ch.consume("cons", "c0", false).await;
    let _c1 = ch.consume("cons", "c1", false).await;
    // another channel has its own allowance
    let other = client.channel().await;
    let _o = other.consume("cons", "other", false).await;
    let mut args = amqprs::channel::BasicConsumeArguments::new("cons", "one-too-many");
    args.manual_ack(true);
    let r = ch.basic_consume_rx(args).timely().await;
    assert!(r.is_err(), "a third consumer on the channel was accepted");
    assert_eq!(
        client.expect_close().await,
        CloseInfo::new(
            530,
            "NOT_ALLOWED - reached maximum (2) of consumers per channel",
            60,
            20
        )
    );
}

#[tokio::test]
async fn update_secret_is_answered() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    client
        .conn
        .update_secret("a-new-token", "token rotation")
        .timely()
        .await
        .expect("connection.update-secret-ok");
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    ch.select_confirms().await;
    ch.publish_acked("", "q", BasicProperties::default(), b"still works")
        .await;
    assert_eq!(ch.get_one("q", true).await.body, b"still works");
}
