//! The provable publisher, without changing what clients sent: the broker records every message's
//! authenticated publisher beside it and writes it into the `x-warren-publisher` header only for
//! consumers that ask (a consume argument, a queue argument, or the vhost's configuration). A header
//! of that name from a client is always removed, so it can never be forged; every other byte is
//! delivered as published, to consumers, basic.get and basic.return alike. A `user_id` property that
//! names anyone else is refused with 406, as in RabbitMQ.

use amq_protocol::protocol::basic::{parse_properties, AMQPProperties};
use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable as RawTable, LongString};
use amqprs::channel::BasicConsumeArguments;
use amqprs::{BasicProperties, FieldTable, FieldValue};
use warren_tests::raw::{
    basic_get, confirm_select, encode_properties, queue_declare, queue_declare_with,
};
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

fn asks_for_publisher() -> RawTable {
    let mut args = RawTable::default();
    args.insert(PUBLISHER.into(), AMQPValue::Boolean(true));
    args
}

/// The headers of a raw message's properties.
fn raw_headers(properties: &[u8]) -> RawTable {
    let (_, decoded) = parse_properties(properties).expect("properties decode");
    decoded.headers().clone().expect("headers")
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Properties with a few fields and headers in an order and with types a re-encoder would not keep.
fn unusual_properties() -> Vec<u8> {
    let mut headers = RawTable::default();
    headers.insert("z-last".into(), AMQPValue::ShortShortInt(-3));
    headers.insert("a-first".into(), text("kept"));
    encode_properties(
        &AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers)
            .with_message_id("m-1".into())
            .with_app_id("nova".into()),
    )
}

#[tokio::test]
async fn by_default_every_byte_is_delivered_as_published() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.attempt(queue_declare("exact")).await.expect("declare");
    let sent = unusual_properties();
    for _ in 0..2 {
        raw.attempt_publish("", "exact", &sent, b"x")
            .await
            .expect("publish");
    }
    raw.open_channel(1).await;
    raw.send_method(1, basic_get("exact", true)).await;
    let got = raw.expect_message(1).await;
    assert_eq!(got.properties[..], sent[..], "basic.get");
    raw.send_method(1, warren_tests::raw::basic_consume("exact", "c", true))
        .await;
    raw.expect_method(1).await; // consume-ok
    let delivered = raw.expect_message(1).await;
    assert_eq!(delivered.properties[..], sent[..], "basic.deliver");

    // basic.return gives back what was sent, too.
    raw.open_channel(2).await;
    raw.call(2, confirm_select()).await;
    raw.publish(2, "amq.direct", "nowhere", true, &sent, b"lost")
        .await;
    let returned = raw.expect_message(2).await;
    assert!(
        matches!(
            returned.method,
            AMQPClass::Basic(basic::AMQPMethod::Return(_))
        ),
        "{:?}",
        returned.method
    );
    assert_eq!(returned.properties[..], sent[..], "basic.return");
}

#[tokio::test]
async fn a_client_sent_publisher_header_is_removed_and_never_delivered() {
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
        assert_eq!(got.header(PUBLISHER), None, "forged {forged:?}");
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
async fn a_consumer_that_asks_gets_the_authenticated_publisher() {
    let broker = TestBroker::start_with(|c| c.users.push(full_access("bob"))).await;
    let admin = broker.connect().await;
    let admin_ch = admin.channel().await;
    admin_ch.declare_queue("inbox").await;
    let bob = broker.connect_user("bob").await;
    let bob_ch = bob.channel().await;

    let mut args = BasicConsumeArguments::new("inbox", "asks");
    args.arguments(headers(&[(PUBLISHER, FieldValue::t(true))]));
    let (_, mut asking) = admin_ch.consume_with(args).await;
    admin_ch.publish("", "inbox", b"from admin").await;
    let mut forged = BasicProperties::default();
    forged.with_headers(headers(&[(PUBLISHER, FieldValue::from("admin"))]));
    bob_ch
        .publish_with("", "inbox", forged, b"from bob", false)
        .await;
    let got = asking.recv_n(2).await;
    let seen: Vec<_> = got
        .iter()
        .map(|d| (d.body.clone(), d.header(PUBLISHER)))
        .collect();
    assert!(
        seen.contains(&(b"from admin".to_vec(), Some("admin".to_string())))
            && seen.contains(&(b"from bob".to_vec(), Some("bob".to_string()))),
        "{seen:?}"
    );
    bob.close().await;
    admin.close().await;
}

#[tokio::test]
async fn a_forged_publisher_header_appears_once_on_the_wire_for_a_queue_that_asks() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.attempt(queue_declare_with("wire", false, asks_for_publisher()))
        .await
        .expect("declare");
    let mut forged = RawTable::default();
    forged.insert(PUBLISHER.into(), text("eve"));
    forged.insert("x-trace".into(), text("kept"));
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
    let headers = raw_headers(&message.properties);
    assert_eq!(headers.inner().get(PUBLISHER), Some(&text("admin")));
    assert_eq!(headers.inner().get("x-trace"), Some(&text("kept")));
}

#[tokio::test]
async fn a_vhost_configured_for_it_stamps_every_delivery() {
    let broker = TestBroker::start_with(|c| c.publisher_header.vhosts = vec!["/".into()]).await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("all").await;
    ch.publish("", "all", b"one").await;
    let got = ch.get("all", true).await.expect("a message");
    assert_eq!(got.header(PUBLISHER).as_deref(), Some("admin"));
    let (_, mut consumer) = ch.consume("all", "c", false).await;
    ch.publish("", "all", b"two").await;
    assert_eq!(
        consumer.recv().await.header(PUBLISHER).as_deref(),
        Some("admin")
    );
    client.close().await;
}

#[tokio::test]
async fn the_argument_must_be_a_boolean() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let mut args = RawTable::default();
    args.insert(PUBLISHER.into(), text("yes"));
    let close = raw
        .attempt(queue_declare_with("q", false, args))
        .await
        .expect_err("a string is refused");
    assert_eq!(
        close,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - invalid arg 'x-warren-publisher' for queue 'q' in vhost '/': {unacceptable_type,longstr}",
            50,
            10
        )
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

#[tokio::test]
async fn the_publisher_survives_dead_lettering_transactions_and_a_restart() {
    let broker = TestBroker::start_with(|c| c.users.push(full_access("bob"))).await;
    let mut admin = broker.raw_open().await;
    let mut dead_args = asks_for_publisher();
    dead_args.insert("x-queue-type".into(), text("classic"));
    admin
        .attempt(queue_declare_with("dead", false, dead_args))
        .await
        .expect("declare");
    let mut arguments = RawTable::default();
    arguments.insert("x-dead-letter-exchange".into(), text(""));
    arguments.insert("x-dead-letter-routing-key".into(), text("dead"));
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
    assert!(
        !got.properties
            .windows(PUBLISHER.len())
            .any(|w| w == PUBLISHER.as_bytes()),
        "the work queue does not ask for the publisher"
    );
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
        Some(&text("bob")),
        "dead-lettering keeps the original publisher: {headers:?}"
    );
    assert!(headers.inner().contains_key("x-death"), "{headers:?}");

    // A transactional publish keeps its publisher, and is delivered at commit.
    bob_ch.tx_select().await.expect("tx.select");
    bob_ch.publish("", "dead", b"in a transaction").await;
    bob_ch.tx_commit().await.expect("tx.commit");
    admin.send_method(1, basic_get("dead", true)).await;
    let committed = admin.expect_message(1).await;
    assert_eq!(committed.body, b"in a transaction");
    assert_eq!(
        raw_headers(&committed.properties).inner().get(PUBLISHER),
        Some(&text("bob"))
    );
    bob.close().await;
    drop(admin);

    // Stored with the message: a persistent message still names bob after a restart.
    let mut durable = asks_for_publisher();
    durable.insert("x-queue-type".into(), text("classic"));
    let mut setup = broker.raw_open().await;
    let mut declare = queue_declare_with("kept", false, durable);
    if let AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Declare(d)) = &mut declare {
        d.durable = true;
    }
    setup.attempt(declare).await.expect("declare durable");
    drop(setup);
    let bob = broker.connect_user("bob").await;
    let bob_ch = bob.channel().await;
    let mut persistent = BasicProperties::default();
    persistent.with_persistence(true);
    bob_ch
        .publish_with("", "kept", persistent, b"stored", false)
        .await;
    bob.close().await;
    let broker = broker.restart().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let got = ch.get("kept", true).await.expect("recovered");
    assert_eq!(got.body, b"stored");
    assert_eq!(got.header(PUBLISHER).as_deref(), Some("bob"));
    client.close().await;
}
