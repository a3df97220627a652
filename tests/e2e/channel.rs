//! Channels: open, close, flow, and the channel-level protocol violations RabbitMQ treats as
//! connection errors (504 CHANNEL_ERROR, 505 UNEXPECTED_FRAME).

use amq_protocol::protocol::{channel, queue, AMQPClass};
use warren_tests::raw::{
    basic_publish, channel_close, channel_open, content_header_payload, frame_type, queue_declare,
    NO_PROPERTIES,
};
use warren_tests::{CloseInfo, TestBroker, Tuning, QUIET};

#[tokio::test]
async fn open_use_and_close_channels() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let a = client.channel().await;
    let b = client.channel().await;
    assert_ne!(a.channel_id(), b.channel_id());
    a.declare_queue("ch-q").await;
    b.publish("", "ch-q", b"hello").await;
    let got = a.get("ch-q", true).await.expect("message");
    assert_eq!(got.body, b"hello");
    a.ch.close().await.expect("channel.close-ok");
    b.ch.close().await.expect("channel.close-ok");
    // The connection is still usable.
    let c = client.channel().await;
    c.declare_queue("ch-q").await;
    client.close().await;
}

#[tokio::test]
async fn channel_number_can_be_reused_after_close() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    for _ in 0..3 {
        raw.open_channel(1).await;
        match raw.call(1, warren_tests::raw::channel_close()).await {
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {}
            other => panic!("expected channel.close-ok, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn flow_pauses_and_resumes_deliveries() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let consumer_ch = client.channel().await;
    let publisher = client.channel().await;
    consumer_ch.declare_queue("flow-q").await;
    let (_, mut consumer) = consumer_ch.consume("flow-q", "", false).await;

    assert!(!consumer_ch.flow(false).await.expect("flow-ok"));
    publisher.publish("", "flow-q", b"held").await;
    consumer.assert_quiet(QUIET).await;

    assert!(consumer_ch.flow(true).await.expect("flow-ok"));
    assert_eq!(consumer.recv().await.body, b"held");
}

#[tokio::test]
async fn method_on_unopened_channel_is_a_channel_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.send_method(3, queue_declare("q")).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10)
    );
    raw.expect_eof().await;
}

#[tokio::test]
async fn close_on_unopened_channel_is_a_channel_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.send_method(2, warren_tests::raw::channel_close()).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(504, "CHANNEL_ERROR - expected 'channel.open'", 20, 40)
    );
}

#[tokio::test]
async fn second_channel_open_is_a_channel_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(1, channel_open()).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)
    );
}

/// RabbitMQ counts open channels against channel_max, whatever their numbers.
#[tokio::test]
async fn channel_max_limits_how_many_channels_are_open_not_their_numbers() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake_with(Tuning {
        channel_max: Some(3),
        ..Tuning::default()
    })
    .await;
    raw.open_channel(1).await;
    raw.open_channel(65535).await;
    raw.open_channel(40000).await;
    // Closing one frees a slot for any number.
    raw.send_method(40000, channel_close()).await;
    raw.expect_method(40000).await;
    raw.open_channel(1000).await;
    raw.send_method(2, channel_open()).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            530,
            "NOT_ALLOWED - number of channels opened (3) has reached the negotiated channel_max (3)",
            0,
            0
        )
    );
}

/// The server closes a channel (a denied publish) while the client closes it too: both closes get a
/// close-ok, the client's late close-ok is absorbed, and the connection carries on (PROBE F6).
#[tokio::test]
async fn crossed_channel_closes_are_a_normal_close() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(1, basic_publish("no-such-exchange", "k", false))
        .await;
    raw.send_method(1, channel_close()).await;
    // The server's close (404), then its close-ok for ours.
    let close = raw.expect_method(1).await;
    assert!(
        matches!(&close, AMQPClass::Channel(channel::AMQPMethod::Close(c)) if c.reply_code == 404),
        "{close:?}"
    );
    let ok = raw.expect_method(1).await;
    assert!(
        matches!(ok, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))),
        "{ok:?}"
    );
    // The client acknowledges the server's close late; nothing more happens.
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    raw.open_channel(1).await;
    raw.open_channel(2).await;
    raw.call(2, queue_declare("still-open")).await;
}

#[tokio::test]
async fn body_frame_without_publish_is_unexpected() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_frame(frame_type::FRAME_BODY, 1, b"stray").await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0
        )
    );
}

#[tokio::test]
async fn header_frame_without_publish_is_unexpected() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_frame(
        frame_type::FRAME_HEADER,
        1,
        &content_header_payload(0, NO_PROPERTIES),
    )
    .await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
            0,
            0
        )
    );
}

#[tokio::test]
async fn method_where_content_header_expected_is_unexpected() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(1, basic_publish("", "q", false)).await;
    raw.send_method(1, queue_declare("q")).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            60,
            40
        )
    );
}

#[tokio::test]
async fn method_where_content_body_expected_is_unexpected() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(1, basic_publish("", "q", false)).await;
    raw.send_frame(
        frame_type::FRAME_HEADER,
        1,
        &content_header_payload(10, NO_PROPERTIES),
    )
    .await;
    raw.send_frame(frame_type::FRAME_BODY, 1, b"12345").await;
    raw.send_method(1, queue_declare("q")).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            505,
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
            60,
            40
        )
    );
}

#[tokio::test]
async fn content_header_for_another_class_is_unexpected() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(1, basic_publish("", "q", false)).await;
    let mut header = content_header_payload(0, NO_PROPERTIES);
    header[..2].copy_from_slice(&50u16.to_be_bytes());
    raw.send_frame(frame_type::FRAME_HEADER, 1, &header).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            505,
            "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
            60,
            40
        )
    );
}

#[tokio::test]
async fn heartbeat_on_a_channel_is_unexpected() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_frame(frame_type::FRAME_HEARTBEAT, 1, &[]).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(505, "UNEXPECTED_FRAME - type 8, all octets = <<>>", 0, 0)
    );
}

#[tokio::test]
async fn content_on_channel_zero_is_unexpected() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.send_frame(frame_type::FRAME_BODY, 0, b"hello").await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            505,
            "UNEXPECTED_FRAME - type 3, all octets = <<\"hello\">>",
            0,
            0
        )
    );
}

#[tokio::test]
async fn channel_method_on_channel_zero_is_a_channel_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.send_method(0, queue_declare("q")).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            50,
            10
        )
    );
}

#[tokio::test]
async fn closed_channel_ignores_methods_until_close_ok() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "missing".into(),
            passive: true,
            ..Default::default()
        })),
    )
    .await;
    // Before close-ok: both a method and a complete publish must be ignored without a reply.
    let close = match raw.expect_method(1).await {
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => c,
        other => panic!("expected channel.close, got {other:?}"),
    };
    assert_eq!(close.reply_code, 404);
    raw.send_method(1, queue_declare("ignored")).await;
    raw.publish(1, "", "ignored", true, NO_PROPERTIES, b"dropped")
        .await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    )
    .await;
    raw.open_channel(1).await;
    // Nothing was declared while the channel was closing.
    raw.send_method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "ignored".into(),
            passive: true,
            ..Default::default()
        })),
    )
    .await;
    // The next frame is this close: no declare-ok or basic.return leaked from the closing channel.
    let close = raw.expect_channel_close(1).await;
    assert_eq!(
        close,
        CloseInfo::new(404, "NOT_FOUND - no queue 'ignored' in vhost '/'", 50, 10)
    );
}
