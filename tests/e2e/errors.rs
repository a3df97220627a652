//! Broken clients: garbage, unknown frames and methods, truncated arguments. The broker answers with
//! connection.close, drops only that connection, and keeps serving everyone else, even under a flood.

use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{basic, channel, AMQPClass};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use warren_protocol::constants::PROTOCOL_HEADER;
use warren_protocol::method::encode_method;
use warren_tests::raw::{
    basic_publish, channel_open, content_header_payload, frame_type, NO_PROPERTIES,
};
use warren_tests::{CloseInfo, Identity, RawClient, TestBroker};

/// Asserts a separate, well-behaved client still gets full service.
async fn others_still_served(broker: &TestBroker) {
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("survivor").await;
    ch.publish("", "survivor", b"alive").await;
    let got = ch.get("survivor", true).await.expect("message round trip");
    assert_eq!(got.body, b"alive");
    client.close().await;
}

#[tokio::test]
async fn garbage_after_the_handshake_is_a_frame_error() {
    let broker = TestBroker::start().await;
    let bystander = broker.connect().await;
    let bystander_ch = bystander.channel().await;
    let mut raw = broker.raw_open().await;
    let _ = raw
        .try_send(b"this is not an AMQP frame, just some text\r\n")
        .await;
    let close = raw.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    assert!(close.text.starts_with("FRAME_ERROR - "), "{close:?}");
    raw.expect_eof().await;
    others_still_served(&broker).await;
    // A connection that was open all along is unaffected.
    bystander_ch.declare_queue("bystander").await;
}

#[tokio::test]
async fn unknown_frame_type_is_a_frame_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.send(&[4, 0, 1, 0, 0, 0, 2, 1, 2, 0xCE]).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            501,
            "FRAME_ERROR - type 4, all octets = <<1,2>>: unknown_frame",
            0,
            0
        )
    );
    others_still_served(&broker).await;
}

#[tokio::test]
async fn bad_frame_end_is_a_frame_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let mut frame = BytesMut::new();
    encode_method(&mut frame, 1, &channel_open());
    let last = frame.len() - 1;
    frame[last] = 0;
    raw.send(&frame).await;
    let close = raw.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    assert!(
        close.text.starts_with("FRAME_ERROR - type 1, ")
            && close.text.contains("invalid_frame_end_marker"),
        "{close:?}"
    );
    others_still_served(&broker).await;
}

#[tokio::test]
async fn unknown_method_closes_the_connection() {
    let broker = TestBroker::start().await;
    for (class_id, method_id) in [(60u16, 999u16), (61, 10)] {
        let mut raw = broker.raw_open().await;
        raw.open_channel(1).await;
        let mut payload = class_id.to_be_bytes().to_vec();
        payload.extend(method_id.to_be_bytes());
        payload.extend([0, 0, 0, 0]);
        raw.send_frame(frame_type::FRAME_METHOD, 1, &payload).await;
        let close = raw.expect_connection_close().await;
        assert_eq!(close.code, 540, "{close:?}");
        assert_eq!((close.class_id, close.method_id), (class_id, method_id));
        raw.expect_eof().await;
    }
    others_still_served(&broker).await;
}

#[tokio::test]
async fn truncated_method_arguments_are_a_frame_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    // queue.declare: ticket 0, then a queue name announced as 5 octets that never come.
    raw.send_frame(frame_type::FRAME_METHOD, 1, &[0, 50, 0, 10, 0, 0, 5])
        .await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(501, "FRAME_ERROR - cannot decode <<0,0,5>>", 50, 10)
    );
    others_still_served(&broker).await;
}

#[tokio::test]
async fn method_frame_shorter_than_its_ids_is_a_frame_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_frame(frame_type::FRAME_METHOD, 1, &[0, 50]).await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            501,
            "FRAME_ERROR - type 1, all octets = <<0,50>>: unknown_frame",
            0,
            0
        )
    );
    others_still_served(&broker).await;
}

#[tokio::test]
async fn server_only_method_from_the_client_is_command_invalid() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
    )
    .await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(503, "COMMAND_INVALID - unimplemented method", 20, 11)
    );

    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "fake".into(),
            delivery_tag: 1,
            redelivered: false,
            exchange: "".into(),
            routing_key: "q".into(),
        })),
    )
    .await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(503, "COMMAND_INVALID - unimplemented method", 60, 60)
    );
}

/// One misbehaving client; every step is bounded so the flood cannot hang the test.
async fn misbehave(broker: Arc<TestBroker>, kind: usize) {
    let broker_port = broker.port;
    let step = async {
        match kind % 7 {
            0 => {
                // Plain TCP garbage.
                if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", broker_port)).await {
                    let _ = tcp.write_all(b"\x16\x03\x01garbage garbage garbage").await;
                }
            }
            1 => {
                // Connect and vanish.
                let _ = TcpStream::connect(("127.0.0.1", broker_port)).await;
            }
            2 => {
                // TLS without a certificate.
                if let Ok(mut raw) = RawClient::connect(&broker, Identity::None).await {
                    let _ = raw.try_send(PROTOCOL_HEADER).await;
                }
            }
            3 => {
                // Wrong protocol header.
                if let Ok(mut raw) = RawClient::connect(&broker, Identity::Admin).await {
                    let _ = raw.try_send(b"HTTP/1.1 200 OK\r\n\r\n").await;
                }
            }
            4 => {
                // Header, then disappear mid-negotiation.
                if let Ok(mut raw) = RawClient::connect(&broker, Identity::Admin).await {
                    let _ = raw.try_send(PROTOCOL_HEADER).await;
                }
            }
            5 => {
                // Garbage after a complete handshake.
                if let Ok(mut raw) = RawClient::connect(&broker, Identity::Admin).await {
                    raw.handshake().await;
                    let _ = raw.try_send(&[0xFF; 64]).await;
                }
            }
            _ => {
                // A publish whose body never arrives, then the socket closes.
                if let Ok(mut raw) = RawClient::connect(&broker, Identity::Admin).await {
                    raw.handshake().await;
                    raw.open_channel(1).await;
                    let mut out = BytesMut::new();
                    encode_method(&mut out, 1, &basic_publish("", "flood", false));
                    let header = content_header_payload(1_000_000, NO_PROPERTIES);
                    warren_protocol::frame::encode_frame_with(
                        &mut out,
                        frame_type::FRAME_HEADER,
                        1,
                        |b| b.extend_from_slice(&header),
                    );
                    let _ = raw.try_send(&out).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), step).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_survives_a_flood_of_bad_clients() {
    let broker = Arc::new(TestBroker::start().await);
    let steady = broker.connect().await;
    let steady_ch = steady.channel().await;
    steady_ch.declare_queue("steady").await;

    let started = std::time::Instant::now();
    let mut flood = JoinSet::new();
    for kind in 0..140 {
        flood.spawn(misbehave(broker.clone(), kind));
    }
    while let Some(done) = flood.join_next().await {
        done.expect("a flood task panicked");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the flood took {:?}",
        started.elapsed()
    );

    // The connection that was open during the flood still works, and new ones are served.
    steady_ch.publish("", "steady", b"still here").await;
    let got = steady_ch.get("steady", true).await.expect("message");
    assert_eq!(got.body, b"still here");
    others_still_served(&broker).await;
}
