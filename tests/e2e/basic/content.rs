//! Message content end to end: properties and headers (by value and byte for byte), bodies split
//! at frame_max and reassembled, empty bodies, and the publish-time checks on content.

use amq_protocol::protocol::{basic, AMQPClass};
use amqprs::{BasicProperties, FieldTable, FieldValue};
use bytes::{BufMut, BytesMut};
use warren_protocol::frame::FrameKind;
use warren_tests::raw::{basic_consume, queue_declare, NO_PROPERTIES};
use warren_tests::{CloseInfo, TestBroker};

fn sv(v: &str) -> FieldValue {
    FieldValue::from(v)
}

#[tokio::test]
async fn properties_and_headers_reach_the_consumer() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("props-q").await;
    let mut nested = FieldTable::new();
    nested.insert("inner".try_into().unwrap(), sv("value"));
    let mut headers = FieldTable::new();
    headers.insert("str".try_into().unwrap(), sv("text"));
    headers.insert("int".try_into().unwrap(), FieldValue::I(-42));
    headers.insert("long".try_into().unwrap(), FieldValue::l(1 << 40));
    headers.insert("bool".try_into().unwrap(), FieldValue::t(true));
    headers.insert("table".try_into().unwrap(), FieldValue::F(nested));
    let props = BasicProperties::default()
        .with_content_type("application/json")
        .with_content_encoding("utf-8")
        .with_headers(headers.clone())
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr-1")
        .with_reply_to("reply-q")
        .with_expiration("60000")
        .with_message_id("msg-1")
        .with_timestamp(1_700_000_000)
        .with_message_type("rpc")
        .with_user_id("admin")
        .with_app_id("nova")
        .with_cluster_id("c1")
        .finish();
    let (_, mut consumer) = ch.consume("props-q", "", false).await;
    ch.publish_with("", "props-q", props, br#"{"k":1}"#, false)
        .await;
    let d = consumer.recv().await;
    let p = &d.properties;
    assert_eq!(d.body, br#"{"k":1}"#);
    assert_eq!(
        p.content_type().map(String::as_str),
        Some("application/json")
    );
    assert_eq!(p.content_encoding().map(String::as_str), Some("utf-8"));
    // Every header arrives, and nothing else (the consumer did not ask for the publisher).
    assert_eq!(p.headers(), Some(&headers));
    assert_eq!(p.delivery_mode(), Some(2));
    assert_eq!(p.priority(), Some(5));
    assert_eq!(p.correlation_id().map(String::as_str), Some("corr-1"));
    assert_eq!(p.reply_to().map(String::as_str), Some("reply-q"));
    assert_eq!(p.expiration().map(String::as_str), Some("60000"));
    assert_eq!(p.message_id().map(String::as_str), Some("msg-1"));
    assert_eq!(p.timestamp(), Some(1_700_000_000));
    assert_eq!(p.message_type().map(String::as_str), Some("rpc"));
    assert_eq!(p.user_id().map(String::as_str), Some("admin"));
    assert_eq!(p.app_id().map(String::as_str), Some("nova"));
    assert_eq!(p.cluster_id().map(String::as_str), Some("c1"));
}

/// A field table built octet by octet: `(name, type tag, value octets)`.
fn raw_table(entries: &[(&str, u8, Vec<u8>)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    for (name, tag, value) in entries {
        body.put_u8(name.len() as u8);
        body.put_slice(name.as_bytes());
        body.put_u8(*tag);
        body.put_slice(value);
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn long_str(bytes: &[u8]) -> Vec<u8> {
    let mut v = (bytes.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

fn short_str(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

#[tokio::test]
async fn properties_are_forwarded_byte_for_byte() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.call(1, queue_declare("bytes-q")).await;
    raw.call(1, basic_consume("bytes-q", "raw", true)).await;

    let mut array = vec![b'S'];
    array.extend(long_str(b"a"));
    array.extend([b'I', 0, 0, 0, 7]);
    // Keys in no particular order, every RabbitMQ field type, a non-UTF-8 long string, and a forged
    // publisher header that the broker must remove.
    let forged = ("x-warren-publisher", b'S', long_str(b"mallory"));
    let kept = [
        ("zeta", b'S', long_str(&[0xff, 0xfe, b'x'])),
        ("alpha", b'I', (-5i32).to_be_bytes().to_vec()),
        ("flag", b't', vec![1]),
        ("big", b'l', (-(1i64 << 50)).to_be_bytes().to_vec()),
        ("nested", b'F', raw_table(&[("k", b'S', long_str(b"v"))])),
        ("list", b'A', long_str(&array)),
        ("bytes", b'x', long_str(&[0, 1, 2])),
        ("ts", b'T', 1_700_000_000u64.to_be_bytes().to_vec()),
        ("dbl", b'd', 2.5f64.to_be_bytes().to_vec()),
        ("flt", b'f', 1.25f32.to_be_bytes().to_vec()),
        ("dec", b'D', vec![2, 0, 0, 0x30, 0x39]),
        ("i8", b'b', vec![0x80]),
        ("u8", b'B', vec![0xff]),
        ("i16", b's', (-2i16).to_be_bytes().to_vec()),
        ("u16", b'u', 65_535u16.to_be_bytes().to_vec()),
        ("u32", b'i', 4_000_000_000u32.to_be_bytes().to_vec()),
        ("void", b'V', vec![]),
    ];
    let mut sent = kept[..3].to_vec();
    sent.push(forged);
    sent.extend_from_slice(&kept[3..]);
    let unforged = kept.to_vec();
    let properties = |headers: Vec<u8>| {
        let mut props = 0xFFFCu16.to_be_bytes().to_vec();
        props.extend(short_str("application/octet-stream"));
        props.extend(short_str("identity"));
        props.extend(&headers);
        props.extend([2, 9]);
        props.extend(short_str("corr"));
        props.extend(short_str("reply"));
        props.extend(short_str("60000"));
        props.extend(short_str("mid"));
        props.extend(1_700_000_001u64.to_be_bytes());
        props.extend(short_str("type"));
        props.extend(short_str("admin"));
        props.extend(short_str("app"));
        props.extend(short_str("cluster"));
        props
    };
    let props = properties(raw_table(&sent));
    // Every byte as sent, except the forged entry, which is gone.
    let expected = properties(raw_table(&unforged));

    raw.publish(1, "", "bytes-q", false, &props, b"payload")
        .await;
    let msg = raw.expect_message(1).await;
    let d = msg.deliver();
    assert_eq!(
        (
            d.consumer_tag.as_str(),
            d.redelivered,
            d.exchange.as_str(),
            d.routing_key.as_str()
        ),
        ("raw", false, "", "bytes-q")
    );
    assert_eq!(
        &msg.properties[..],
        &expected[..],
        "properties changed in transit"
    );
    assert_eq!(msg.body, b"payload");
}

#[tokio::test]
async fn body_larger_than_frame_max_is_split_and_reassembled() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("big-q").await;
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    ch.publish("", "big-q", &body).await;
    let got = ch.get("big-q", true).await.expect("the large message");
    assert!(got.body == body, "1 MB body altered in transit");

    // On the wire, the broker splits what it sends at frame_max too.
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.publish(1, "", "big-q", false, NO_PROPERTIES, &body[..300_000])
        .await;
    raw.call(1, basic_consume("big-q", "c", true)).await;
    let msg = raw.expect_message(1).await;
    assert!(
        msg.body == body[..300_000],
        "300 kB body altered in transit"
    );
    assert!(
        msg.body_frames.iter().all(|&n| n <= 131_072 - 8),
        "body frames over frame_max: {:?}",
        msg.body_frames
    );
    assert_eq!(msg.body_frames.len(), 3);
}

#[tokio::test]
async fn empty_body_has_no_body_frame() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.call(1, queue_declare("empty-q")).await;
    raw.call(1, basic_consume("empty-q", "c", true)).await;
    raw.publish(1, "", "empty-q", false, NO_PROPERTIES, b"")
        .await;
    raw.publish(1, "", "empty-q", false, NO_PROPERTIES, b"next")
        .await;
    let first = raw.expect_message(1).await;
    assert_eq!((first.body_size, first.body_frames.len()), (0, 0));
    // The next frame starts the next delivery: no empty body frame in between.
    let next = raw.next_frame().await;
    assert_eq!(next.kind, FrameKind::Method, "got {next:?}");
    let method = warren_protocol::method::decode_method(&next.payload).unwrap();
    let second = raw.expect_content(1, method).await;
    assert_eq!(second.body, b"next");

    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("empty-q2").await;
    ch.publish("", "empty-q2", b"").await;
    let got = ch.get("empty-q2", true).await.expect("the empty message");
    assert!(got.body.is_empty());
}

#[tokio::test]
async fn user_id_must_match_the_authenticated_user() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("uid-q").await;
    let props = BasicProperties::default().with_user_id("bob").finish();
    ch.publish_with("", "uid-q", props, b"spoofed", false).await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'admin'",
            60,
            40
        )
    );
}

#[tokio::test]
async fn message_over_max_message_size_is_406() {
    let broker = TestBroker::start_with(|c| c.limits.max_message_size = 1024).await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("max-q").await;
    ch.publish("", "max-q", &[0u8; 1024]).await;
    ch.publish("", "max-q", &[0u8; 2000]).await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - message size 2000 is larger than configured max size 1024",
            60,
            40
        )
    );
    let ch = client.channel().await;
    assert_eq!(
        ch.drain("max-q").await.len(),
        1,
        "the message at the limit was kept"
    );
}

#[tokio::test]
async fn immediate_publish_is_not_implemented() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    )
    .await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
    );
}
