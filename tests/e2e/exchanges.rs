//! Exchange features as in RabbitMQ 3.13: alternate exchanges (unroutable messages go there, and a
//! mandatory publish they take is not returned), internal exchanges (publishing refused, reachable
//! through bindings and as an alternate exchange), auto-delete exchanges (deleted with their last
//! binding, also when the bound queue goes) and exchange-to-exchange bindings, cycles included.
//! Expectations are those of tests/python/test_channel_features.py.

use std::time::Duration;

use amqprs::channel::{
    ExchangeBindArguments, ExchangeDeclareArguments, ExchangeDeleteArguments,
    ExchangeUnbindArguments, QueueBindArguments, QueueDeleteArguments, QueueUnbindArguments,
};
use amqprs::{BasicProperties, FieldTable};
use tokio::time::Instant;
use warren_tests::client::bodies;
use warren_tests::features::{header_map, int, table, text, with_headers, Confirm};
use warren_tests::{ChannelEvent, Client, CloseInfo, TestBroker, TestChannel, Timely, TIMEOUT};

async fn declare_x(ch: &TestChannel, name: &str, kind: &str, arguments: FieldTable) {
    let mut args = ExchangeDeclareArguments::new(name, kind);
    args.arguments(arguments);
    declare_x_with(ch, args).await;
}

async fn declare_x_with(ch: &TestChannel, args: ExchangeDeclareArguments) {
    let what = format!("{args:?}");
    if let Err(e) = ch.exchange_declare(args).timely().await {
        ch.fail(&what, e).await;
    }
}

fn auto_delete(name: &str, kind: &str) -> ExchangeDeclareArguments {
    let mut args = ExchangeDeclareArguments::new(name, kind);
    args.auto_delete(true);
    args
}

async fn bind(ch: &TestChannel, queue: &str, exchange: &str, key: &str) {
    ch.queue_bind(QueueBindArguments::new(queue, exchange, key))
        .timely()
        .await
        .expect("queue.bind");
}

async fn unbind(ch: &TestChannel, queue: &str, exchange: &str, key: &str) {
    ch.queue_unbind(QueueUnbindArguments::new(queue, exchange, key))
        .timely()
        .await
        .expect("queue.unbind");
}

async fn bind_x(ch: &TestChannel, destination: &str, source: &str, key: &str) {
    ch.exchange_bind(ExchangeBindArguments::new(destination, source, key))
        .timely()
        .await
        .expect("exchange.bind");
}

async fn unbind_x(ch: &TestChannel, destination: &str, source: &str, key: &str) {
    ch.exchange_unbind(ExchangeUnbindArguments::new(destination, source, key))
        .timely()
        .await
        .expect("exchange.unbind");
}

/// Whether `exchange` exists (a passive declare on a fresh channel of `client`).
async fn exchange_exists(client: &Client, exchange: &str) -> bool {
    let ch = client.channel().await;
    let mut args = ExchangeDeclareArguments::new(exchange, "direct");
    args.passive(true);
    match ch.exchange_declare(args).timely().await {
        Ok(()) => true,
        Err(_) => {
            assert_eq!(
                ch.expect_close().await,
                CloseInfo::new(
                    404,
                    &format!("NOT_FOUND - no exchange '{exchange}' in vhost '/'"),
                    40,
                    10
                )
            );
            false
        }
    }
}

#[tokio::test]
async fn alternate_exchange_takes_unroutable_messages() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    declare_x(&ch, "ae", "fanout", FieldTable::new()).await;
    ch.declare_queue("aq").await;
    bind(&ch, "aq", "ae", "").await;
    declare_x(
        &ch,
        "main",
        "direct",
        table([("alternate-exchange", text("ae"))]),
    )
    .await;
    ch.declare_queue("q").await;
    bind(&ch, "q", "main", "k").await;
    assert_eq!(
        pch.publish_confirmed_with("main", "k", BasicProperties::default(), b"routed", true)
            .await,
        Confirm::Ack
    );
    // not returned: the alternate exchange routed it
    assert_eq!(
        pch.publish_confirmed_with(
            "main",
            "other",
            with_headers(table([("h", int(1))])),
            b"unroutable",
            true
        )
        .await,
        Confirm::Ack
    );
    pch.assert_no_event().await;
    assert_eq!(bodies(&ch.drain("q").await), ["routed"]);
    let got = ch.drain("aq").await;
    assert_eq!(
        got.iter()
            .map(|d| (d.exchange.as_str(), d.routing_key.as_str(), d.text()))
            .collect::<Vec<_>>(),
        [("main", "other", "unroutable".to_string())]
    );
    assert_eq!(got[0].other_headers(), header_map([("h", int(1))]));
}

#[tokio::test]
async fn alternate_exchanges_chain() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    declare_x(&ch, "ae2", "fanout", FieldTable::new()).await;
    declare_x(
        &ch,
        "ae1",
        "direct",
        table([("alternate-exchange", text("ae2"))]),
    )
    .await;
    declare_x(
        &ch,
        "main",
        "direct",
        table([("alternate-exchange", text("ae1"))]),
    )
    .await;
    ch.declare_queue("q1").await;
    ch.declare_queue("q2").await;
    bind(&ch, "q1", "ae1", "k1").await;
    bind(&ch, "q2", "ae2", "").await;
    for (key, body) in [("k1", "to ae1"), ("zz", "to ae2")] {
        assert_eq!(
            pch.publish_confirmed_with(
                "main",
                key,
                BasicProperties::default(),
                body.as_bytes(),
                true
            )
            .await,
            Confirm::Ack
        );
    }
    assert_eq!(bodies(&ch.drain("q1").await), ["to ae1"]);
    assert_eq!(bodies(&ch.drain("q2").await), ["to ae2"]);
}

#[tokio::test]
async fn a_missing_alternate_exchange_returns_a_mandatory_message() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    declare_x(
        &ch,
        "main",
        "direct",
        table([("alternate-exchange", text("missing"))]),
    )
    .await;
    pch.publish_with("main", "x", BasicProperties::default(), b"lost", true)
        .await;
    match pch.next_event().await {
        ChannelEvent::Returned {
            code,
            text,
            exchange,
            routing_key,
            body,
        } => assert_eq!(
            (
                code,
                text.as_str(),
                exchange.as_str(),
                routing_key.as_str(),
                body.as_slice()
            ),
            (312, "NO_ROUTE", "main", "x", &b"lost"[..])
        ),
        other => panic!("expected basic.return, got {other:?}"),
    }
    assert!(matches!(pch.next_event().await, ChannelEvent::Ack { .. }));
}

#[tokio::test]
async fn a_mandatory_message_its_alternate_exchange_cannot_route_either_is_returned() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    declare_x(&ch, "ae", "direct", FieldTable::new()).await;
    declare_x(
        &ch,
        "main",
        "direct",
        table([("alternate-exchange", text("ae"))]),
    )
    .await;
    pch.publish_with("main", "nowhere", BasicProperties::default(), b"lost", true)
        .await;
    match pch.next_event().await {
        ChannelEvent::Returned {
            code,
            text,
            exchange,
            routing_key,
            ..
        } => assert_eq!(
            (code, text.as_str(), exchange.as_str(), routing_key.as_str()),
            (312, "NO_ROUTE", "main", "nowhere")
        ),
        other => panic!("expected basic.return, got {other:?}"),
    }
    assert!(matches!(pch.next_event().await, ChannelEvent::Ack { .. }));
}

#[tokio::test]
async fn internal_exchange_refuses_publishes_but_is_reachable_by_binding_and_as_alternate() {
    let broker = TestBroker::start().await;
    let (client, ch, pch) = broker.connect_with_confirming_channel().await;
    declare_x(&ch, "src", "topic", FieldTable::new()).await;
    let mut internal = ExchangeDeclareArguments::new("internal", "direct");
    internal.internal(true);
    declare_x_with(&ch, internal).await;
    declare_x(
        &ch,
        "other",
        "direct",
        table([("alternate-exchange", text("internal"))]),
    )
    .await;
    bind_x(&ch, "internal", "src", "#").await;
    ch.declare_queue("q").await;
    bind(&ch, "q", "internal", "a.b").await;
    pch.publish_acked("src", "a.b", BasicProperties::default(), b"via binding")
        .await;
    pch.publish_acked(
        "other",
        "a.b",
        BasicProperties::default(),
        b"via alternate exchange",
    )
    .await;
    assert_eq!(
        bodies(&ch.drain("q").await),
        ["via binding", "via alternate exchange"]
    );

    let direct = client.channel().await;
    direct.publish("internal", "a.b", b"refused").await;
    assert_eq!(
        direct.expect_close().await,
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'internal' in vhost '/'",
            60,
            40
        )
    );
    assert!(ch.drain("q").await.is_empty());
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_queue_binding() {
    let broker = TestBroker::start().await;
    let (client, ch, _pch) = broker.connect_with_confirming_channel().await;
    declare_x_with(&ch, auto_delete("ad", "direct")).await;
    // never bound: stays
    assert!(exchange_exists(&client, "ad").await);
    ch.declare_queue("q1").await;
    ch.declare_queue("q2").await;
    bind(&ch, "q1", "ad", "k").await;
    bind(&ch, "q2", "ad", "k").await;
    unbind(&ch, "q1", "ad", "k").await;
    assert!(exchange_exists(&client, "ad").await);
    unbind(&ch, "q2", "ad", "k").await;
    assert!(!exchange_exists(&client, "ad").await);
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_bound_queue() {
    let broker = TestBroker::start().await;
    let (client, ch, _pch) = broker.connect_with_confirming_channel().await;
    declare_x_with(&ch, auto_delete("ad", "direct")).await;
    ch.declare_queue("q").await;
    bind(&ch, "q", "ad", "k1").await;
    bind(&ch, "q", "ad", "k2").await;
    ch.queue_delete(QueueDeleteArguments::new("q"))
        .timely()
        .await
        .unwrap();
    assert!(!exchange_exists(&client, "ad").await);
}

#[tokio::test]
async fn auto_delete_exchange_goes_when_its_exclusive_queue_goes() {
    let broker = TestBroker::start().await;
    let watcher = broker.connect().await;
    let other = broker.connect().await;
    let och = other.channel().await;
    declare_x_with(&och, auto_delete("ad", "direct")).await;
    let mut excl = amqprs::channel::QueueDeclareArguments::new("");
    excl.exclusive(true);
    let (q, _, _) = och.declare(excl).await;
    bind(&och, &q, "ad", "k").await;
    other.close().await;
    let deadline = Instant::now() + TIMEOUT;
    while exchange_exists(&watcher, "ad").await {
        assert!(
            Instant::now() < deadline,
            "auto-delete exchange still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn auto_delete_exchange_counts_only_bindings_where_it_is_the_source() {
    let broker = TestBroker::start().await;
    let (client, ch, _pch) = broker.connect_with_confirming_channel().await;
    declare_x(&ch, "other", "fanout", FieldTable::new()).await;
    // as the source: deleted with its last binding
    declare_x_with(&ch, auto_delete("ad", "direct")).await;
    bind_x(&ch, "other", "ad", "k").await;
    unbind_x(&ch, "other", "ad", "k").await;
    assert!(!exchange_exists(&client, "ad").await);
    // as the destination: a binding to it is not one of its bindings
    declare_x_with(&ch, auto_delete("ad", "direct")).await;
    bind_x(&ch, "ad", "other", "").await;
    unbind_x(&ch, "ad", "other", "").await;
    assert!(exchange_exists(&client, "ad").await);
    ch.exchange_delete(ExchangeDeleteArguments::new("ad"))
        .timely()
        .await
        .unwrap();
}

#[tokio::test]
async fn exchange_to_exchange_bindings_deliver_one_copy_per_queue() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    declare_x(&ch, "src", "topic", FieldTable::new()).await;
    declare_x(&ch, "dst", "direct", FieldTable::new()).await;
    bind_x(&ch, "dst", "src", "a.*").await;
    ch.declare_queue("qdst").await;
    bind(&ch, "qdst", "dst", "a.b").await;
    ch.declare_queue("qsrc").await;
    bind(&ch, "qsrc", "src", "#").await;
    // src -> dst -> qdst and src -> qsrc; src -> dst (no queue for a.c) and src -> qsrc; not to dst
    for (key, body) in [("a.b", "1"), ("a.c", "2"), ("b.b", "3")] {
        pch.publish_acked("src", key, BasicProperties::default(), body.as_bytes())
            .await;
    }
    assert_eq!(bodies(&ch.drain("qdst").await), ["1"]);
    assert_eq!(bodies(&ch.drain("qsrc").await), ["1", "2", "3"]);
    // a queue reached along two paths gets one copy
    bind(&ch, "qdst", "src", "a.b").await;
    pch.publish_acked("src", "a.b", BasicProperties::default(), b"once")
        .await;
    assert_eq!(bodies(&ch.drain("qdst").await), ["once"]);
    unbind_x(&ch, "dst", "src", "a.*").await;
    unbind(&ch, "qdst", "src", "a.b").await;
    pch.publish_acked("src", "a.b", BasicProperties::default(), b"4")
        .await;
    assert!(ch.drain("qdst").await.is_empty());
}

#[tokio::test]
async fn an_exchange_binding_cycle_delivers_once() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    declare_x_with(&ch, auto_delete("x1", "fanout")).await;
    declare_x_with(&ch, auto_delete("x2", "fanout")).await;
    bind_x(&ch, "x2", "x1", "").await;
    bind_x(&ch, "x1", "x2", "").await;
    ch.declare_queue("q1").await;
    ch.declare_queue("q2").await;
    bind(&ch, "q2", "x2", "").await;
    bind(&ch, "q1", "x1", "").await;
    pch.publish_acked("x1", "", BasicProperties::default(), b"cycle")
        .await;
    pch.publish_acked("x2", "", BasicProperties::default(), b"other way")
        .await;
    assert_eq!(bodies(&ch.drain("q2").await), ["cycle", "other way"]);
    assert_eq!(bodies(&ch.drain("q1").await), ["cycle", "other way"]);
}
