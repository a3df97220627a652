//! Connection negotiation (spec 2.2.4): protocol header, start/start-ok with SASL EXTERNAL, tune,
//! open, the limits that apply before and after tune-ok, and heartbeats.

use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use warren_protocol::constants::PROTOCOL_HEADER;
use warren_protocol::frame::FrameKind;
use warren_protocol::method::encode_method;
use warren_tests::raw::{frame_type, queue_declare, NO_PROPERTIES};
use warren_tests::{CloseInfo, Identity, RawClient, TestBroker, Tuning};

const LOGIN_REFUSED: &str = "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.";

#[tokio::test]
async fn wrong_protocol_header_gets_ours_back_then_close() {
    let broker = TestBroker::start().await;
    for header in [
        &b"GET / HT"[..],
        b"AMQP\x00\x00\x08\x00",
        b"AMQP\x00\x01\x00\x00",
        b"AMQP\x00\x00\x09\x02",
    ] {
        let mut raw = broker.raw().await;
        raw.send(header).await;
        assert_eq!(
            raw.read_until_closed().await,
            PROTOCOL_HEADER.to_vec(),
            "answer to header {header:?}"
        );
    }
}

#[tokio::test]
async fn protocol_header_split_across_writes_is_accepted() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(b"AMQ").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.send(b"P\x00\x00").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    raw.send(b"\x09\x01").await;
    match raw.expect_method(0).await {
        AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
        other => panic!("expected connection.start, got {other:?}"),
    }
}

#[tokio::test]
async fn connection_start_offers_only_external_and_capabilities() {
    let broker = TestBroker::start().await;
    let start = broker.raw().await.start().await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    assert_eq!(start.mechanisms.as_bytes(), b"EXTERNAL");
    assert!(
        String::from_utf8_lossy(start.locales.as_bytes())
            .split(' ')
            .any(|l| l == "en_US"),
        "locales {:?}",
        start.locales
    );
    let props = start.server_properties.inner();
    for key in ["product", "version", "platform", "copyright", "information"] {
        assert!(
            matches!(props.get(key), Some(AMQPValue::LongString(_))),
            "server property {key} missing or not a longstr: {props:?}"
        );
    }
    let Some(AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
        panic!("no capabilities table in {props:?}");
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap}"
        );
    }
}

#[tokio::test]
async fn tune_proposes_rabbitmq_defaults() {
    let broker = TestBroker::start().await;
    let handshake = broker.raw().await.handshake().await;
    let t = handshake.tune;
    assert_eq!(
        (t.channel_max, t.frame_max, t.heartbeat),
        (2047, 131_072, 60)
    );

    let client = broker.connect().await;
    assert_eq!(client.conn.channel_max(), 2047);
    assert_eq!(client.conn.frame_max(), 131_072);
    client.close().await;
}

async fn refused_login(broker: &TestBroker, identity: Identity) -> CloseInfo {
    let mut raw = RawClient::connect(broker, identity)
        .await
        .expect("TLS accepts a certificate from the broker's CA");
    raw.start().await;
    raw.send_start_ok(true).await;
    let close = raw.expect_connection_close().await;
    raw.expect_eof().await;
    close
}

#[tokio::test]
async fn unknown_user_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let close = refused_login(&broker, Identity::Cert(broker.client_cert("nobody"))).await;
    assert_eq!(close, CloseInfo::new(403, LOGIN_REFUSED, 0, 0));

    let (cert, key) = broker.write_pem("nobody", &broker.client_cert("nobody"));
    assert!(broker.connect_as(&cert, &key, None).await.is_err());
}

#[tokio::test]
async fn certificate_without_cn_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let close = refused_login(&broker, Identity::Cert(broker.client_cert_without_cn())).await;
    assert_eq!(close, CloseInfo::new(403, LOGIN_REFUSED, 0, 0));
}

#[tokio::test]
async fn frame_over_4096_octets_before_tune_ok_is_a_frame_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.start().await;
    let mut props = FieldTable::default();
    props.insert(
        "padding".into(),
        AMQPValue::LongString(LongString::from("x".repeat(5000))),
    );
    let start_ok = connection::StartOk {
        client_properties: props,
        mechanism: "EXTERNAL".into(),
        response: LongString::from(""),
        locale: "en_US".into(),
    };
    let mut out = BytesMut::new();
    encode_method(
        &mut out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
    );
    let payload = out.len() - 8;
    assert!(payload > 4096);
    let _ = raw.try_send(&out).await;
    let close = raw.expect_connection_close().await;
    assert_eq!(
        close,
        CloseInfo::new(
            501,
            &format!("FRAME_ERROR - type 1, all octets = <<>>: {{frame_too_large,{payload},4088}}"),
            0,
            0
        )
    );
}

#[tokio::test]
async fn unknown_vhost_is_refused_with_530() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.negotiate(&Tuning {
        vhost: "nope".into(),
        ..Tuning::default()
    })
    .await;
    let close = raw.expect_connection_close().await;
    assert_eq!(
        close,
        CloseInfo::new(530, "NOT_ALLOWED - vhost nope not found", 10, 40)
    );
}

#[tokio::test]
async fn frame_over_negotiated_frame_max_is_a_frame_error() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake_with(Tuning {
        frame_max: Some(8192),
        ..Tuning::default()
    })
    .await;
    raw.open_channel(1).await;
    // A method frame announcing 9000 octets: over 8192 - 8 (RabbitMQ reports frame_max - 8).
    let mut frame = vec![frame_type::FRAME_METHOD, 0, 1];
    frame.extend_from_slice(&9000u32.to_be_bytes());
    frame.extend_from_slice(&[0u8; 9000]);
    frame.push(0xCE);
    let _ = raw.try_send(&frame).await;
    let close = raw.expect_connection_close().await;
    assert_eq!(
        close,
        CloseInfo::new(
            501,
            "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,9000,8184}",
            0,
            0
        )
    );
}

#[tokio::test]
async fn frames_up_to_negotiated_frame_max_are_accepted_and_sent() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake_with(Tuning {
        frame_max: Some(4096),
        ..Tuning::default()
    })
    .await;
    raw.open_channel(1).await;
    raw.call(1, queue_declare("x")).await;
    // Body frames of 4088 octets are exactly frame_max with the 8 octets of frame overhead.
    let body: Vec<u8> = (0..4088 * 2 + 5).map(|i| (i % 251) as u8).collect();
    raw.publish(1, "", "x", false, NO_PROPERTIES, &body).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "x".into(),
            no_ack: true,
        })),
    )
    .await;
    let got = raw.expect_message(1).await;
    assert!(
        matches!(got.method, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))),
        "{:?}",
        got.method
    );
    assert_eq!(got.body, body);
    assert_eq!(
        got.body_frames,
        vec![4088, 4088, 5],
        "split at the client's frame_max"
    );
}

#[tokio::test]
async fn broker_sends_heartbeats_and_drops_a_silent_client() {
    let broker = TestBroker::start_with(|c| c.limits.heartbeat = 1).await;
    let mut raw = broker.raw().await;
    let handshake = raw
        .handshake_with(Tuning {
            heartbeat: 1,
            ..Tuning::default()
        })
        .await;
    assert_eq!(handshake.tune.heartbeat, 1);
    let silent_since = Instant::now();
    let mut heartbeats = 0;
    loop {
        match raw.read_frame_within(Duration::from_secs(5)).await {
            Ok(Some(f)) if f.kind == FrameKind::Heartbeat => {
                assert_eq!(f.channel, 0);
                heartbeats += 1;
            }
            Ok(Some(f)) => panic!("unexpected frame {f:?}"),
            Ok(None) => break,
            Err(()) => panic!("a client silent for 5 s with a 1 s heartbeat is still connected"),
        }
    }
    let silent_for = silent_since.elapsed();
    assert!(heartbeats >= 2, "{heartbeats} heartbeats in {silent_for:?}");
    assert!(
        silent_for >= Duration::from_millis(1900) && silent_for <= Duration::from_millis(3500),
        "disconnected after {silent_for:?} of silence; expected about two 1 s intervals"
    );
}

#[tokio::test]
async fn client_heartbeats_keep_the_connection_alive() {
    let broker = TestBroker::start_with(|c| c.limits.heartbeat = 1).await;
    let mut raw = broker.raw().await;
    raw.handshake_with(Tuning {
        heartbeat: 1,
        ..Tuning::default()
    })
    .await;
    let until = Instant::now() + Duration::from_millis(3000);
    while Instant::now() < until {
        raw.send(&[frame_type::FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0xCE])
            .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    raw.open_channel(1).await;
    assert!(raw.heartbeats_seen >= 1, "the broker sent no heartbeat");
}

#[tokio::test]
async fn client_close_gets_close_ok() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.close().await;
}

#[tokio::test]
async fn shutdown_closes_connections_with_320() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let mut client = broker.connect().await;
    let forced = CloseInfo::new(
        320,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
        0,
        0,
    );
    let (_, raw_close, amqprs_close) = tokio::join!(
        broker.stop(),
        raw.expect_connection_close(),
        client.expect_close()
    );
    assert_eq!(raw_close, forced);
    assert_eq!(amqprs_close, forced);
    raw.expect_eof().await;
}
