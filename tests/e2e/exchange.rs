//! Exchanges: declare (passive, redeclare, reserved names), delete, the four routing types,
//! exchange-to-exchange bindings, and RabbitMQ's reply texts for each refusal.

use amqprs::channel::{
    ExchangeBindArguments, ExchangeDeclareArguments, ExchangeDeleteArguments,
    ExchangeUnbindArguments, QueueBindArguments, QueueUnbindArguments,
};
use amqprs::{BasicProperties, FieldTable, FieldValue};
use warren_tests::client::bodies;
use warren_tests::{Client, CloseInfo, TestBroker, TestChannel, Timely};

fn declare(name: &str, kind: &str) -> ExchangeDeclareArguments {
    ExchangeDeclareArguments::new(name, kind)
}

fn table(pairs: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in pairs {
        t.insert((*k).try_into().unwrap(), FieldValue::from(*v));
    }
    t
}

async fn bind(ch: &TestChannel, queue: &str, exchange: &str, key: &str) {
    ch.queue_bind(QueueBindArguments::new(queue, exchange, key))
        .timely()
        .await
        .expect("queue.bind");
}

async fn bind_x(ch: &TestChannel, destination: &str, source: &str, key: &str) {
    ch.exchange_bind(ExchangeBindArguments::new(destination, source, key))
        .timely()
        .await
        .expect("exchange.bind");
}

/// Runs an operation the broker must refuse with channel.close, and returns that close.
/// Opens a channel, declares `queues` and returns it with the connection.
async fn setup(broker: &TestBroker, queues: &[&str]) -> (Client, TestChannel) {
    let client = broker.connect().await;
    let ch = client.channel().await;
    for q in queues {
        ch.declare_queue(q).await;
    }
    (client, ch)
}

#[tokio::test]
async fn direct_exchange_routes_on_exact_key() {
    let broker = TestBroker::start().await;
    let (_c, ch) = setup(&broker, &["d1", "d2"]).await;
    ch.exchange_declare(declare("x-direct", "direct"))
        .timely()
        .await
        .unwrap();
    bind(&ch, "d1", "x-direct", "k1").await;
    bind(&ch, "d2", "x-direct", "k2").await;
    bind(&ch, "d2", "x-direct", "k1").await;
    ch.publish("x-direct", "k1", b"one").await;
    ch.publish("x-direct", "k2", b"two").await;
    ch.publish("x-direct", "K1", b"none").await;
    assert_eq!(bodies(&ch.drain("d1").await), ["one"]);
    assert_eq!(bodies(&ch.drain("d2").await), ["one", "two"]);
}

#[tokio::test]
async fn fanout_exchange_ignores_the_key() {
    let broker = TestBroker::start().await;
    let (_c, ch) = setup(&broker, &["f1", "f2"]).await;
    ch.exchange_declare(declare("x-fanout", "fanout"))
        .timely()
        .await
        .unwrap();
    bind(&ch, "f1", "x-fanout", "").await;
    bind(&ch, "f2", "x-fanout", "whatever").await;
    ch.publish("x-fanout", "any.key", b"m").await;
    assert_eq!(bodies(&ch.drain("f1").await), ["m"]);
    assert_eq!(bodies(&ch.drain("f2").await), ["m"]);
}

#[tokio::test]
async fn topic_exchange_matches_words_and_wildcards() {
    let broker = TestBroker::start().await;
    let (_c, ch) = setup(&broker, &["t-star", "t-hash", "t-tail", "t-exact"]).await;
    ch.exchange_declare(declare("x-topic", "topic"))
        .timely()
        .await
        .unwrap();
    bind(&ch, "t-star", "x-topic", "a.*.c").await;
    bind(&ch, "t-hash", "x-topic", "a.#").await;
    bind(&ch, "t-tail", "x-topic", "#.z").await;
    bind(&ch, "t-exact", "x-topic", "a.b").await;
    for key in ["a.b.c", "a", "x.y.z", "a.b.c.d", "a.b", "b.c", "z"] {
        ch.publish("x-topic", key, key.as_bytes()).await;
    }
    assert_eq!(bodies(&ch.drain("t-star").await), ["a.b.c"]);
    assert_eq!(
        bodies(&ch.drain("t-hash").await),
        ["a.b.c", "a", "a.b.c.d", "a.b"]
    );
    assert_eq!(bodies(&ch.drain("t-tail").await), ["x.y.z", "z"]);
    assert_eq!(bodies(&ch.drain("t-exact").await), ["a.b"]);
}

#[tokio::test]
async fn headers_exchange_matches_all_or_any() {
    let broker = TestBroker::start().await;
    let (_c, ch) = setup(&broker, &["h-all", "h-any"]).await;
    ch.exchange_declare(declare("x-headers", "headers"))
        .timely()
        .await
        .unwrap();
    let mut all = QueueBindArguments::new("h-all", "x-headers", "");
    all.arguments(table(&[("x-match", "all"), ("a", "1"), ("b", "two")]));
    ch.queue_bind(all).timely().await.unwrap();
    let mut any = QueueBindArguments::new("h-any", "x-headers", "");
    any.arguments(table(&[("x-match", "any"), ("a", "1"), ("b", "two")]));
    ch.queue_bind(any).timely().await.unwrap();

    for (body, headers) in [
        ("a-only", table(&[("a", "1")])),
        ("both", table(&[("a", "1"), ("b", "two"), ("c", "extra")])),
        ("wrong-value", table(&[("a", "2")])),
        ("none", FieldTable::new()),
    ] {
        let props = BasicProperties::default().with_headers(headers).finish();
        ch.publish_with("x-headers", "ignored", props, body.as_bytes(), false)
            .await;
    }
    assert_eq!(bodies(&ch.drain("h-all").await), ["both"]);
    assert_eq!(bodies(&ch.drain("h-any").await), ["a-only", "both"]);
}

#[tokio::test]
async fn predeclared_amq_exchanges_exist() {
    let broker = TestBroker::start().await;
    let (_c, ch) = setup(&broker, &["pre-q"]).await;
    for (name, kind) in [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ] {
        let mut passive = declare(name, kind);
        passive.passive(true);
        ch.exchange_declare(passive)
            .timely()
            .await
            .unwrap_or_else(|e| panic!("{name} is not predeclared: {e}"));
        // Redeclaring with the same properties (durable) is allowed despite the reserved prefix.
        let mut same = declare(name, kind);
        same.durable(true);
        ch.exchange_declare(same)
            .timely()
            .await
            .unwrap_or_else(|e| panic!("redeclaring {name}: {e}"));
    }
    bind(&ch, "pre-q", "amq.topic", "nova.*").await;
    ch.publish("amq.topic", "nova.compute", b"rpc").await;
    assert_eq!(bodies(&ch.drain("pre-q").await), ["rpc"]);
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_is_404() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let mut passive = declare("nope", "direct");
    passive.passive(true);
    let r = ch.exchange_declare(passive).timely().await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(404, "NOT_FOUND - no exchange 'nope' in vhost '/'", 40, 10)
    );
    // A soft error closes only the channel.
    client.channel().await.declare_queue("still-fine").await;
}

#[tokio::test]
async fn redeclare_with_different_properties_is_406() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.exchange_declare(declare("x", "direct"))
        .timely()
        .await
        .unwrap();
    ch.exchange_declare(declare("x", "direct"))
        .timely()
        .await
        .expect("an equivalent redeclare is fine");

    let ch = client.channel().await;
    let r = ch.exchange_declare(declare("x", "fanout")).timely().await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'",
            40,
            10
        )
    );

    let ch = client.channel().await;
    let mut durable = declare("x", "direct");
    durable.durable(true);
    let r = ch.exchange_declare(durable).timely().await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'x' in vhost '/': received 'true' but current is 'false'",
            40,
            10
        )
    );
}

#[tokio::test]
async fn amq_prefix_is_reserved() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let r = ch
        .exchange_declare(declare("amq.foo", "direct"))
        .timely()
        .await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
            40,
            10
        )
    );

    let ch = client.channel().await;
    let r = ch
        .exchange_delete(ExchangeDeleteArguments::new("amq.direct"))
        .timely()
        .await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed",
            40,
            20
        )
    );
}

#[tokio::test]
async fn default_exchange_cannot_be_declared_deleted_or_bound() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let text = "ACCESS_REFUSED - operation not permitted on the default exchange";

    let ch = client.channel().await;
    let r = ch.exchange_declare(declare("", "direct")).timely().await;
    assert_eq!(ch.refused(r).await, CloseInfo::new(403, text, 40, 10));

    let ch = client.channel().await;
    let r = ch
        .exchange_delete(ExchangeDeleteArguments::new(""))
        .timely()
        .await;
    assert_eq!(ch.refused(r).await, CloseInfo::new(403, text, 40, 20));

    let ch = client.channel().await;
    ch.declare_queue("dq").await;
    let r = ch
        .queue_bind(QueueBindArguments::new("dq", "", "dq"))
        .timely()
        .await;
    assert_eq!(ch.refused(r).await, CloseInfo::new(403, text, 50, 20));

    let ch = client.channel().await;
    let r = ch
        .exchange_bind(ExchangeBindArguments::new("amq.fanout", "", "k"))
        .timely()
        .await;
    assert_eq!(ch.refused(r).await, CloseInfo::new(403, text, 40, 30));

    // Publishing through the default exchange is what it is for.
    let ch = client.channel().await;
    ch.publish("", "dq", b"direct to queue").await;
    assert_eq!(bodies(&ch.drain("dq").await), ["direct to queue"]);
}

#[tokio::test]
async fn unknown_exchange_type_is_406() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let expected = CloseInfo::new(
        406,
        "PRECONDITION_FAILED - unknown exchange type 'foo'",
        40,
        10,
    );
    let ch = client.channel().await;
    let r = ch.exchange_declare(declare("x-foo", "foo")).timely().await;
    assert_eq!(ch.refused(r).await, expected);

    // The type is checked before equivalence, so an existing exchange gives the same answer.
    let ch = client.channel().await;
    ch.exchange_declare(declare("x-existing", "direct"))
        .timely()
        .await
        .unwrap();
    let r = ch
        .exchange_declare(declare("x-existing", "foo"))
        .timely()
        .await;
    assert_eq!(ch.refused(r).await, expected);
}

#[tokio::test]
async fn delete_and_if_unused() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("del-q").await;
    ch.exchange_declare(declare("x-del", "fanout"))
        .timely()
        .await
        .unwrap();
    bind(&ch, "del-q", "x-del", "").await;

    let mut if_unused = ExchangeDeleteArguments::new("x-del");
    if_unused.if_unused(true);
    let r = ch.exchange_delete(if_unused.clone()).timely().await;
    assert_eq!(
        ch.refused(r).await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - exchange 'x-del' in vhost '/' in use",
            40,
            20
        )
    );

    let ch = client.channel().await;
    ch.queue_unbind(QueueUnbindArguments::new("del-q", "x-del", ""))
        .timely()
        .await
        .unwrap();
    ch.exchange_delete(if_unused).timely().await.unwrap();
    let mut passive = declare("x-del", "fanout");
    passive.passive(true);
    let r = ch.exchange_declare(passive).timely().await;
    assert_eq!(ch.refused(r).await.code, 404);

    // Deleting what does not exist succeeds.
    let ch = client.channel().await;
    ch.exchange_delete(ExchangeDeleteArguments::new("never-existed"))
        .timely()
        .await
        .expect("delete of a missing exchange is ok");
}

#[tokio::test]
async fn delete_if_unused_only_counts_bindings_from_the_exchange() {
    // RabbitMQ's if-unused looks at bindings whose source is the exchange (rabbit_db_exchange
    // conditional_delete: has_for_source); being the destination of another exchange's binding
    // does not make it "in use".
    let broker = TestBroker::start().await;
    let (_c, ch) = setup(&broker, &[]).await;
    ch.exchange_declare(declare("x-src", "fanout"))
        .timely()
        .await
        .unwrap();
    ch.exchange_declare(declare("x-dst", "fanout"))
        .timely()
        .await
        .unwrap();
    bind_x(&ch, "x-dst", "x-src", "").await;
    let mut if_unused = ExchangeDeleteArguments::new("x-dst");
    if_unused.if_unused(true);
    if ch.exchange_delete(if_unused).timely().await.is_err() {
        let close = ch.expect_close().await;
        panic!("x-dst has no bindings of its own, yet delete if-unused was refused: {close:?}");
    }
}

#[tokio::test]
async fn publish_to_a_missing_exchange_is_404() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.publish("nope", "k", b"lost").await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(404, "NOT_FOUND - no exchange 'nope' in vhost '/'", 60, 40)
    );
}

#[tokio::test]
async fn internal_exchange_refuses_publishes_but_routes_bindings() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("int-q").await;
    let mut internal = declare("x-internal", "fanout");
    internal.internal(true);
    ch.exchange_declare(internal).timely().await.unwrap();
    ch.exchange_declare(declare("x-front", "fanout"))
        .timely()
        .await
        .unwrap();
    bind_x(&ch, "x-internal", "x-front", "").await;
    bind(&ch, "int-q", "x-internal", "").await;
    ch.publish("x-front", "", b"via front").await;
    assert_eq!(bodies(&ch.drain("int-q").await), ["via front"]);

    ch.publish("x-internal", "", b"direct").await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'x-internal' in vhost '/'",
            60,
            40
        )
    );
}

#[tokio::test]
async fn exchange_to_exchange_diamond_delivers_once() {
    let broker = TestBroker::start().await;
    let (_c, ch) = setup(&broker, &["diamond-q"]).await;
    for x in ["top", "left", "right"] {
        ch.exchange_declare(declare(x, "fanout"))
            .timely()
            .await
            .unwrap();
    }
    ch.exchange_declare(declare("bottom", "direct"))
        .timely()
        .await
        .unwrap();
    bind_x(&ch, "left", "top", "").await;
    bind_x(&ch, "right", "top", "").await;
    bind_x(&ch, "bottom", "left", "").await;
    bind_x(&ch, "bottom", "right", "").await;
    bind(&ch, "diamond-q", "bottom", "k").await;
    bind(&ch, "diamond-q", "left", "").await;
    ch.publish("top", "k", b"once").await;
    ch.publish("top", "other", b"via left only").await;
    assert_eq!(
        bodies(&ch.drain("diamond-q").await),
        ["once", "via left only"]
    );
}

#[tokio::test]
async fn exchange_to_exchange_cycle_terminates() {
    let broker = TestBroker::start().await;
    let (_c, ch) = setup(&broker, &["cycle-q"]).await;
    for x in ["ring-a", "ring-b", "ring-c"] {
        ch.exchange_declare(declare(x, "topic"))
            .timely()
            .await
            .unwrap();
    }
    bind_x(&ch, "ring-b", "ring-a", "#").await;
    bind_x(&ch, "ring-c", "ring-b", "#").await;
    bind_x(&ch, "ring-a", "ring-c", "#").await;
    bind(&ch, "cycle-q", "ring-b", "#").await;
    for x in ["ring-a", "ring-b", "ring-c"] {
        ch.publish(x, "k", x.as_bytes()).await;
    }
    assert_eq!(
        bodies(&ch.drain("cycle-q").await),
        ["ring-a", "ring-b", "ring-c"]
    );
}

#[tokio::test]
async fn exchange_unbind_stops_routing() {
    let broker = TestBroker::start().await;
    let (_c, ch) = setup(&broker, &["unbind-q"]).await;
    ch.exchange_declare(declare("u-src", "direct"))
        .timely()
        .await
        .unwrap();
    ch.exchange_declare(declare("u-dst", "fanout"))
        .timely()
        .await
        .unwrap();
    bind_x(&ch, "u-dst", "u-src", "k").await;
    bind(&ch, "unbind-q", "u-dst", "").await;
    ch.publish("u-src", "k", b"before").await;
    ch.exchange_unbind(ExchangeUnbindArguments::new("u-dst", "u-src", "k"))
        .timely()
        .await
        .unwrap();
    ch.publish("u-src", "k", b"after").await;
    assert_eq!(bodies(&ch.drain("unbind-q").await), ["before"]);
}
