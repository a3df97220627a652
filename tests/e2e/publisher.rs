//! The provable publisher: every delivered message carries `x-warren-publisher` = the publisher's
//! authenticated identity, whatever the client put there, and a `user_id` property that names anyone
//! else is refused with 406, as in RabbitMQ.

use amq_protocol::protocol::basic::{parse_properties, AMQPProperties};
use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable as RawTable, LongString};
use amqprs::{BasicProperties, FieldTable, FieldValue};
use warren_tests::raw::{basic_get, encode_properties, queue_declare, queue_declare_with};
use warren_tests::users::full_access;
use warren_tests::{CloseInfo, TestBroker};

const PUBLISHER: &str = "x-warren-publisher";

fn headers(entries: &[(&str, FieldValue)]) -> FieldTable {
    let mut table = FieldTable::new();
    for (key, value) in entries {
        table.insert((*key).try_into().expect("a header name"), value.clone());
    }
    table
}

#[tokio::test]
async fn every_delivery_carries_the_authenticated_publisher() {
    let broker = TestBroker::start_with(|c| c.users.push(full_access("bob"))).await;
    let admin = broker.connect().await;
    let admin_ch = admin.channel().await;
    admin_ch.declare_queue("inbox").await;
    let bob = broker.connect_user("bob").await;
    let bob_ch = bob.channel().await;

    let (_, mut consumer) = admin_ch.consume("inbox", "c", false).await;
    admin_ch.publish("", "inbox", b"from admin").await;
    bob_ch.publish("", "inbox", b"from bob").await;
    let got = consumer.recv_n(2).await;
    let seen: Vec<_> = got
        .iter()
        .map(|d| (d.body.clone(), d.header(PUBLISHER)))
        .collect();
    assert!(
        seen.contains(&(b"from admin".to_vec(), Some("admin".to_string())))
            && seen.contains(&(b"from bob".to_vec(), Some("bob".to_string()))),
        "{seen:?}"
    );

    // basic.get and a trip through an exchange show the same stamp.
    bob_ch.declare_queue("got").await;
    bob_ch
        .queue_bind(amqprs::channel::QueueBindArguments::new(
            "got",
            "amq.fanout",
            "",
        ))
        .await
        .expect("bind");
    admin_ch.publish("amq.fanout", "", b"fanned out").await;
    let got = bob_ch.get("got", true).await.expect("a message");
    assert_eq!(got.header(PUBLISHER).as_deref(), Some("admin"));
    bob.close().await;
    admin.close().await;
}

#[tokio::test]
async fn a_publisher_header_from_the_client_is_replaced() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("forged").await;
    for forged in [FieldValue::from("eve"), FieldValue::I(7)] {
        let mut properties = BasicProperties::default();
        properties
            .with_headers(headers(&[
                (PUBLISHER, forged.clone()),
                ("x-trace", FieldValue::from("kept")),
            ]))
            .with_content_type("text/plain")
            .with_message_id("m-1");
        ch.publish_with("", "forged", properties, b"body", false)
            .await;
        let got = ch.get("forged", true).await.expect("a message");
        assert_eq!(
            got.header(PUBLISHER).as_deref(),
            Some("admin"),
            "forged {forged:?}"
        );
        assert_eq!(got.header("x-trace").as_deref(), Some("kept"));
        assert_eq!(
            got.properties.content_type().map(String::as_str),
            Some("text/plain")
        );
        assert_eq!(got.properties.message_id().map(String::as_str), Some("m-1"));
        assert_eq!(got.body, b"body");
    }
    client.close().await;
}

#[tokio::test]
async fn a_forged_publisher_header_appears_once_on_the_wire() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.attempt(queue_declare("wire")).await.expect("declare");
    let mut forged = RawTable::default();
    forged.insert(
        PUBLISHER.into(),
        AMQPValue::LongString(LongString::from("eve")),
    );
    forged.insert(
        "x-trace".into(),
        AMQPValue::LongString(LongString::from("kept")),
    );
    let properties = encode_properties(&AMQPProperties::default().with_headers(forged));
    raw.attempt_publish("", "wire", &properties, b"x")
        .await
        .expect("publish");

    raw.open_channel(1).await;
    raw.send_method(1, basic_get("wire", true)).await;
    let message = raw.expect_message(1).await;
    let occurrences = message
        .properties
        .windows(PUBLISHER.len())
        .filter(|w| *w == PUBLISHER.as_bytes())
        .count();
    assert_eq!(occurrences, 1, "properties {:?}", message.properties);
    let (_, decoded) = parse_properties(&message.properties[..]).expect("properties decode");
    let headers = decoded.headers().as_ref().expect("headers");
    assert_eq!(
        headers.inner().get(PUBLISHER),
        Some(&AMQPValue::LongString(LongString::from("admin")))
    );
    assert_eq!(
        headers.inner().get("x-trace"),
        Some(&AMQPValue::LongString(LongString::from("kept")))
    );
}

#[tokio::test]
async fn user_id_must_name_the_authenticated_user() {
    let broker = TestBroker::start_with(|c| c.users.push(full_access("bob"))).await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("ids").await;

    let mut own = BasicProperties::default();
    own.with_user_id("admin");
    ch.publish_with("", "ids", own, b"mine", false).await;
    let got = ch.get("ids", true).await.expect("a message");
    assert_eq!(got.properties.user_id().map(String::as_str), Some("admin"));
    assert_eq!(got.header(PUBLISHER).as_deref(), Some("admin"));

    let mut forged = BasicProperties::default();
    forged.with_user_id("eve");
    ch.publish_with("", "ids", forged, b"not mine", false).await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - user_id property set to 'eve' but authenticated user was 'admin'",
            60,
            40
        )
    );

    // bob cannot pass as admin either, and nothing forged reached the queue.
    let bob = broker.connect_user("bob").await;
    let bob_ch = bob.channel().await;
    let mut as_admin = BasicProperties::default();
    as_admin.with_user_id("admin");
    bob_ch
        .publish_with("", "ids", as_admin, b"impersonation", false)
        .await;
    assert_eq!(
        bob_ch.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - user_id property set to 'admin' but authenticated user was 'bob'",
            60,
            40
        )
    );
    let checker = broker.connect().await;
    let checker_ch = checker.channel().await;
    assert!(checker_ch.drain("ids").await.is_empty());
    checker.close().await;
}

/// The headers of a raw message's properties.
fn raw_headers(properties: &[u8]) -> RawTable {
    let (_, decoded) = parse_properties(properties).expect("properties decode");
    decoded.headers().clone().expect("headers")
}

#[tokio::test]
async fn the_stamp_survives_dead_lettering_and_transactions() {
    let broker = TestBroker::start_with(|c| c.users.push(full_access("bob"))).await;
    let mut admin = broker.raw_open().await;
    admin.attempt(queue_declare("dead")).await.expect("declare");
    let mut arguments = RawTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from("dead")),
    );
    admin
        .attempt(queue_declare_with("work", false, arguments))
        .await
        .expect("declare work");

    // bob publishes; admin rejects it into the dead-letter queue.
    let bob = broker.connect_user("bob").await;
    let bob_ch = bob.channel().await;
    bob_ch.publish("", "work", b"rejected").await;
    admin.open_channel(1).await;
    let got = loop {
        admin.send_method(1, basic_get("work", false)).await;
        match admin.expect_method(1).await {
            ok @ AMQPClass::Basic(basic::AMQPMethod::GetOk(_)) => {
                break admin.expect_content(1, ok).await
            }
            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            other => panic!("expected get-ok, got {other:?}"),
        }
    };
    let AMQPClass::Basic(basic::AMQPMethod::GetOk(get_ok)) = &got.method else {
        unreachable!("matched above")
    };
    admin
        .send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: get_ok.delivery_tag,
                requeue: false,
            })),
        )
        .await;
    admin.send_method(1, basic_get("dead", true)).await;
    let dead = admin.expect_message(1).await;
    assert!(
        matches!(dead.method, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))),
        "the rejected message is in the dead-letter queue: {:?}",
        dead.method
    );
    let headers = raw_headers(&dead.properties);
    assert_eq!(
        headers.inner().get(PUBLISHER),
        Some(&AMQPValue::LongString(LongString::from("bob"))),
        "dead-lettering keeps the original publisher: {headers:?}"
    );
    assert!(headers.inner().contains_key("x-death"), "{headers:?}");

    // A transactional publish is stamped too, and delivered at commit.
    bob_ch.tx_select().await.expect("tx.select");
    bob_ch.publish("", "dead", b"in a transaction").await;
    bob_ch.tx_commit().await.expect("tx.commit");
    admin.send_method(1, basic_get("dead", true)).await;
    let committed = admin.expect_message(1).await;
    assert_eq!(committed.body, b"in a transaction");
    assert_eq!(
        raw_headers(&committed.properties).inner().get(PUBLISHER),
        Some(&AMQPValue::LongString(LongString::from("bob")))
    );
    bob.close().await;
}
