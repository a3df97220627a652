//! Dead-lettering as in RabbitMQ 3.13: the x-death entries (count, reason, queue, time, exchange,
//! routing-keys, original-expiration) and x-first-death-* headers for each reason (expired,
//! rejected, maxlen, delivery_limit), counts that go up for the same queue and reason, the
//! dead-letter routing key, cycles (a cycle of expiries is dropped, one with a reject goes around),
//! and the CC/BCC headers. Expectations are those of tests/python/test_queue_features.py and
//! test_compat_arguments.py (x-delivery-limit, which Warren honours on classic queues too).

use std::time::Duration;

use amqprs::channel::{
    BasicNackArguments, BasicRejectArguments, ExchangeDeclareArguments, QueueBindArguments,
};
use amqprs::{BasicProperties, FieldTable};
use warren_tests::client::bodies;
use warren_tests::features::{
    first_death, header_map, int, table, text, texts, with_expiration, with_headers, ExpectedDeath,
};
use warren_tests::{Delivery, TestBroker, TestChannel, Timely};

async fn exchange(ch: &TestChannel, name: &str, kind: &str) {
    ch.exchange_declare(ExchangeDeclareArguments::new(name, kind))
        .timely()
        .await
        .expect("exchange.declare");
}

async fn bind(ch: &TestChannel, queue: &str, exchange: &str, key: &str) {
    ch.queue_bind(QueueBindArguments::new(queue, exchange, key))
        .timely()
        .await
        .expect("queue.bind");
}

async fn reject(ch: &TestChannel, d: &Delivery) {
    ch.basic_reject(BasicRejectArguments::new(d.tag, false))
        .timely()
        .await
        .expect("basic.reject");
}

async fn nack(ch: &TestChannel, tag: u64, multiple: bool, requeue: bool) {
    ch.basic_nack(BasicNackArguments::new(tag, multiple, requeue))
        .timely()
        .await
        .expect("basic.nack");
}

/// Dead-lettering to `dlq` through the default exchange.
fn dlx_to(dlq: &str) -> [(&'static str, amqprs::FieldValue); 2] {
    [
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(dlq)),
    ]
}

#[tokio::test]
async fn x_death_when_a_per_message_ttl_expires() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    exchange(&ch, "ex", "direct").await;
    exchange(&ch, "dlx", "fanout").await;
    ch.declare_queue("dlq").await;
    bind(&ch, "dlq", "dlx", "").await;
    ch.declare_queue_with("q", table([("x-dead-letter-exchange", text("dlx"))]))
        .await;
    bind(&ch, "q", "ex", "rk").await;
    let mut props = with_expiration("50");
    props
        .with_headers(table([("app", text("nova"))]))
        .with_message_id("m1");
    pch.publish_acked("ex", "rk", props, b"will expire").await;

    let d = ch.get_one("dlq", true).await;
    assert_eq!(d.body, b"will expire");
    // re-published with the original routing key
    assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("dlx", "rk"));
    // the per-message TTL is removed...
    assert_eq!(d.properties.expiration(), None);
    assert_eq!(d.properties.message_id().map(String::as_str), Some("m1"));
    let deaths = d.deaths();
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    deaths[0].check(ExpectedDeath {
        count: 1,
        reason: "expired",
        queue: "q",
        exchange: "ex",
        routing_keys: &["rk"],
        // ...and kept here
        original_expiration: Some("50"),
    });
    let [a, b, c] = first_death("q", "expired", "ex");
    assert_eq!(
        d.other_headers(),
        header_map([("app", text("nova")), a, b, c])
    );
}

#[tokio::test]
async fn x_death_when_the_queue_ttl_expires() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("dlq").await;
    let [x, k] = dlx_to("dlq");
    ch.declare_queue_with("q", table([("x-message-ttl", int(50)), x, k]))
        .await;
    pch.publish_acked("", "q", BasicProperties::default(), b"will expire")
        .await;
    let d = ch.get_one("dlq", true).await;
    assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("", "dlq"));
    let deaths = d.deaths();
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    deaths[0].check(ExpectedDeath {
        count: 1,
        reason: "expired",
        queue: "q",
        exchange: "",
        routing_keys: &["q"],
        original_expiration: None,
    });
    assert_eq!(
        d.other_headers(),
        header_map(first_death("q", "expired", ""))
    );
}

async fn dead_letter_on_reject(with_nack: bool) {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("dlq").await;
    ch.declare_queue_with("q", table(dlx_to("dlq"))).await;
    bind(&ch, "q", "amq.direct", "orig").await;
    pch.publish_acked(
        "amq.direct",
        "orig",
        with_headers(table([("k", text("v"))])),
        b"unwanted",
    )
    .await;
    let m = ch.get_one("q", false).await;
    if with_nack {
        nack(&ch, m.tag, false, false).await;
    } else {
        reject(&ch, &m).await;
    }
    let d = ch.get_one("dlq", true).await;
    assert_eq!(d.body, b"unwanted");
    // x-dead-letter-routing-key replaces the key
    assert_eq!((d.exchange.as_str(), d.routing_key.as_str()), ("", "dlq"));
    let deaths = d.deaths();
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    deaths[0].check(ExpectedDeath {
        count: 1,
        reason: "rejected",
        queue: "q",
        exchange: "amq.direct",
        routing_keys: &["orig"],
        original_expiration: None,
    });
    let [a, b, c] = first_death("q", "rejected", "amq.direct");
    assert_eq!(d.other_headers(), header_map([("k", text("v")), a, b, c]));
    assert!(ch.get("q", true).await.is_none());
}

#[tokio::test]
async fn x_death_when_rejected() {
    dead_letter_on_reject(false).await;
}

#[tokio::test]
async fn x_death_when_nacked() {
    dead_letter_on_reject(true).await;
}

#[tokio::test]
async fn nack_multiple_dead_letters_each_in_order() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("dlq").await;
    ch.declare_queue_with("q", table(dlx_to("dlq"))).await;
    for i in 0..3 {
        pch.publish_acked(
            "",
            "q",
            BasicProperties::default(),
            format!("{i}").as_bytes(),
        )
        .await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = ch.get_one("q", false).await.tag;
    }
    nack(&ch, last, true, false).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(ch.get_one("dlq", true).await);
    }
    assert_eq!(bodies(&got), ["0", "1", "2"]);
}

#[tokio::test]
async fn requeue_does_not_dead_letter() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("dlq").await;
    ch.declare_queue_with("q", table(dlx_to("dlq"))).await;
    pch.publish_acked("", "q", BasicProperties::default(), b"again")
        .await;
    let m = ch.get_one("q", false).await;
    ch.basic_reject(BasicRejectArguments::new(m.tag, true))
        .timely()
        .await
        .unwrap();
    let d = ch.get_one("q", true).await;
    assert_eq!((d.body.as_slice(), d.redelivered), (&b"again"[..], true));
    assert!(d.deaths().is_empty());
    assert_eq!(d.other_headers(), header_map([]));
    assert!(ch.get("dlq", true).await.is_none());
}

#[tokio::test]
async fn dead_letter_exchange_with_the_original_routing_key() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    exchange(&ch, "dlx", "direct").await;
    for (q, k) in [("dlq-a", "a"), ("dlq-b", "b")] {
        ch.declare_queue(q).await;
        bind(&ch, q, "dlx", k).await;
    }
    ch.declare_queue_with("q", table([("x-dead-letter-exchange", text("dlx"))]))
        .await;
    bind(&ch, "q", "amq.direct", "a").await;
    bind(&ch, "q", "amq.direct", "b").await;
    pch.publish_acked("amq.direct", "b", BasicProperties::default(), b"to b")
        .await;
    let m = ch.get_one("q", false).await;
    reject(&ch, &m).await;
    let d = ch.get_one("dlq-b", true).await;
    assert_eq!(
        (
            d.exchange.as_str(),
            d.routing_key.as_str(),
            d.body.as_slice()
        ),
        ("dlx", "b", &b"to b"[..])
    );
    assert!(ch.get("dlq-a", true).await.is_none());
}

#[tokio::test]
async fn a_missing_dead_letter_exchange_drops_the_message() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with("q", table([("x-dead-letter-exchange", text("missing"))]))
        .await;
    pch.publish_acked("", "q", BasicProperties::default(), b"nowhere to go")
        .await;
    let m = ch.get_one("q", false).await;
    reject(&ch, &m).await;
    ch.assert_no_event().await;
    assert!(ch.get("q", true).await.is_none());
}

#[tokio::test]
async fn delivery_limit_dead_letters_after_that_many_returns() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("dlq").await;
    let [x, k] = dlx_to("dlq");
    ch.declare_queue_with("q", table([("x-delivery-limit", int(2)), x, k]))
        .await;
    pch.publish_acked("", "q", BasicProperties::default(), b"poison")
        .await;
    for attempt in 1..=3 {
        let m = ch.get_one("q", false).await;
        assert_eq!(m.body, b"poison", "delivery {attempt}");
        nack(&ch, m.tag, false, true).await;
    }
    // The third return exceeds the limit of 2: the message is dead-lettered, not requeued.
    let d = ch.get_one("dlq", true).await;
    assert_eq!(d.body, b"poison");
    assert!(ch.get("q", true).await.is_none());
    let deaths = d.deaths();
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    assert_eq!(deaths[0].reason.as_deref(), Some("delivery_limit"));
    assert_eq!(deaths[0].queue.as_deref(), Some("q"));
    assert_eq!(
        d.header("x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
}

#[tokio::test]
async fn x_death_count_goes_up_around_a_reject_cycle() {
    // q1 and q2 dead-letter into each other; every hop is a reject, so the message may go around
    // again, and the (queue, reason) entry that comes back is counted up and moved to the front.
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with("q1", table(dlx_to("q2"))).await;
    ch.declare_queue_with("q2", table(dlx_to("q1"))).await;
    pch.publish_acked("", "q1", BasicProperties::default(), b"round and round")
        .await;
    for q in ["q1", "q2", "q1"] {
        let m = ch.get_one(q, false).await;
        nack(&ch, m.tag, false, false).await;
    }
    let d = ch.get_one("q2", true).await;
    assert_eq!(
        (
            d.body.as_slice(),
            d.exchange.as_str(),
            d.routing_key.as_str()
        ),
        (&b"round and round"[..], "", "q2")
    );
    let deaths = d.deaths();
    assert_eq!(deaths.len(), 2, "{deaths:?}");
    deaths[0].check(ExpectedDeath {
        count: 2,
        reason: "rejected",
        queue: "q1",
        exchange: "",
        routing_keys: &["q1"],
        original_expiration: None,
    });
    deaths[1].check(ExpectedDeath {
        count: 1,
        reason: "rejected",
        queue: "q2",
        exchange: "",
        routing_keys: &["q2"],
        original_expiration: None,
    });
    assert_eq!(
        d.other_headers(),
        header_map(first_death("q1", "rejected", ""))
    );
}

#[tokio::test]
async fn a_cycle_of_expiries_is_dropped() {
    // q1 --expired--> q2 --expired--> fanout to q1 and an observer: the copy for q1 would close a
    // cycle of expiries and is dropped (no endless loop); the observer, not in the cycle, gets one.
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    exchange(&ch, "fan", "fanout").await;
    ch.declare_queue("obs").await;
    let [x, k] = dlx_to("q2");
    ch.declare_queue_with("q1", table([("x-message-ttl", int(50)), x, k]))
        .await;
    ch.declare_queue_with(
        "q2",
        table([
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", text("fan")),
        ]),
    )
    .await;
    bind(&ch, "q1", "fan", "").await;
    bind(&ch, "obs", "fan", "").await;
    pch.publish_acked("", "q1", BasicProperties::default(), b"loop")
        .await;
    let d = ch.get_one("obs", true).await;
    assert_eq!(d.body, b"loop");
    assert_eq!(
        d.deaths().iter().map(|d| d.summary()).collect::<Vec<_>>(),
        [
            ("q2".to_string(), "expired".to_string(), 1),
            ("q1".to_string(), "expired".to_string(), 1)
        ]
    );
    // several TTLs: a looping message would show up again
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(ch.get("obs", true).await.is_none());
    assert_eq!(ch.message_count("q1").await, 0);
    assert_eq!(ch.message_count("q2").await, 0);
}

/// Properties no decoder reads (a content-type and a header key that are not UTF-8: RabbitMQ and
/// Warren forward them, amq-protocol refuses them) are dead-lettered byte for byte with `x-death`
/// spliced in, so the cycle of expiries above still ends. (They once went on unchanged, without
/// x-death, and so round the cycle for ever.)
#[tokio::test]
async fn undecodable_properties_are_dead_lettered_byte_for_byte_and_their_cycle_ends() {
    use warren_protocol::content::{header_entries, BasicProperties};
    use warren_tests::raw::{
        basic_get, exchange_declare, queue_bind, queue_declare, queue_declare_with,
    };
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.call(1, exchange_declare("fan", "fanout")).await;
    raw.call(1, queue_declare("obs")).await;
    let args = |ttl: i32, dlx: &str, key: Option<&str>| {
        let mut t = amq_protocol::types::FieldTable::default();
        t.insert(
            "x-message-ttl".into(),
            amq_protocol::types::AMQPValue::LongInt(ttl),
        );
        let text = |s: &str| amq_protocol::types::AMQPValue::LongString(s.into());
        t.insert("x-dead-letter-exchange".into(), text(dlx));
        if let Some(key) = key {
            t.insert("x-dead-letter-routing-key".into(), text(key));
        }
        t
    };
    raw.call(1, queue_declare_with("q1", false, args(20, "", Some("q2"))))
        .await;
    raw.call(1, queue_declare_with("q2", false, args(20, "fan", None)))
        .await;
    raw.call(1, queue_bind("q1", "fan", "")).await;
    raw.call(1, queue_bind("obs", "fan", "")).await;

    // content-type, headers, expiration
    let mut props = vec![0xA1, 0x00, 2, 0xff, 0xfe];
    let odd_entry = b"\x02\xc3\x28S\x00\x00\x00\x01v";
    props.extend_from_slice(&(odd_entry.len() as u32).to_be_bytes());
    props.extend_from_slice(odd_entry);
    props.extend_from_slice(b"\x0560000");
    raw.publish(1, "", "q1", false, &props, b"loop").await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = |q: &str| broker.queue(q).map_or(0, |q| q.message_count());
    assert_eq!(
        (count("obs"), count("q1"), count("q2")),
        (1, 0, 0),
        "one copy for the observer, nothing left going round"
    );
    raw.send_method(1, basic_get("obs", true)).await;
    let m = raw.expect_message(1).await;
    assert_eq!(m.body, b"loop");
    let p = BasicProperties::parse(&m.properties).expect("properties");
    assert_eq!(
        p.content_type,
        Some(&b"\xff\xfe"[..]),
        "content-type as published"
    );
    assert_eq!(
        p.expiration, None,
        "the per-message TTL is dropped, as RabbitMQ does"
    );
    let headers = p.headers.expect("headers");
    assert!(
        headers.starts_with(odd_entry),
        "the odd entry first, as published: {headers:?}"
    );
    let deaths = header_entries(&m.properties, &["x-death"]).expect("entries");
    let Some(amq_protocol::types::AMQPValue::FieldArray(deaths)) = deaths.inner().get("x-death")
    else {
        panic!("no x-death: {deaths:?}")
    };
    assert_eq!(deaths.as_slice().len(), 2, "{deaths:?}");
}

#[tokio::test]
async fn a_cycle_with_a_reject_goes_around_again() {
    // q1 --rejected--> q2 --expired--> q1: the cycle contains a reject, so the message comes back.
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with("q1", table(dlx_to("q2"))).await;
    let [x, k] = dlx_to("q1");
    ch.declare_queue_with("q2", table([("x-message-ttl", int(50)), x, k]))
        .await;
    pch.publish_acked("", "q1", with_expiration("60000"), b"again and again")
        .await;
    for _ in 0..2 {
        let m = ch.get_one("q1", false).await;
        reject(&ch, &m).await;
    }
    let d = ch.get_one("q1", true).await;
    assert_eq!(d.body, b"again and again");
    assert_eq!(d.properties.expiration(), None);
    let deaths = d.deaths();
    assert_eq!(deaths.len(), 2, "{deaths:?}");
    deaths[0].check(ExpectedDeath {
        count: 2,
        reason: "expired",
        queue: "q2",
        exchange: "",
        routing_keys: &["q2"],
        original_expiration: None,
    });
    deaths[1].check(ExpectedDeath {
        count: 2,
        reason: "rejected",
        queue: "q1",
        exchange: "",
        routing_keys: &["q1"],
        original_expiration: Some("60000"),
    });
    assert_eq!(
        d.other_headers(),
        header_map(first_death("q1", "rejected", ""))
    );
}

fn cc_headers(cc: &[&str], bcc: &[&str]) -> FieldTable {
    let mut h = FieldTable::new();
    if !cc.is_empty() {
        h.insert("CC".try_into().unwrap(), texts(cc));
    }
    if !bcc.is_empty() {
        h.insert("BCC".try_into().unwrap(), texts(bcc));
    }
    h
}

#[tokio::test]
async fn cc_routes_and_is_kept_bcc_routes_and_is_removed() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    for (q, k) in [("qa", "k1"), ("qb", "k2"), ("qc", "k3")] {
        ch.declare_queue(q).await;
        bind(&ch, q, "amq.direct", k).await;
    }
    pch.publish_acked(
        "amq.direct",
        "k1",
        with_headers(cc_headers(&["k2"], &["k3"])),
        b"cc",
    )
    .await;
    for q in ["qa", "qb", "qc"] {
        let got = ch.drain(q).await;
        assert_eq!(bodies(&got), ["cc"], "{q}");
        // delivered with its original routing key, CC kept, BCC removed
        assert_eq!(got[0].routing_key, "k1", "{q}");
        assert_eq!(
            got[0].other_headers(),
            header_map([("CC", texts(&["k2"]))]),
            "{q}"
        );
    }
}

#[tokio::test]
async fn a_queue_reached_by_key_and_bcc_gets_one_copy_without_bcc() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("q").await;
    bind(&ch, "q", "amq.direct", "k1").await;
    bind(&ch, "q", "amq.direct", "k3").await;
    pch.publish_acked(
        "amq.direct",
        "k1",
        with_headers(cc_headers(&["k2"], &["k3"])),
        b"cc",
    )
    .await;
    let d = ch.get_one("q", true).await;
    assert_eq!(d.other_headers(), header_map([("CC", texts(&["k2"]))]));
    // routed to k1 and k3, delivered once
    assert!(ch.get("q", true).await.is_none());
}

/// Publishes with CC to a queue bound under both keys, rejects it, and returns the dead letter.
async fn dead_letter_with_cc(broker: &TestBroker, dlrk: Option<&str>) -> Delivery {
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    exchange(&ch, "dlx", "direct").await;
    ch.declare_queue("dlq").await;
    bind(&ch, "dlq", "dlx", dlrk.unwrap_or("k1")).await;
    let mut args = table([("x-dead-letter-exchange", text("dlx"))]);
    if let Some(k) = dlrk {
        args.insert("x-dead-letter-routing-key".try_into().unwrap(), text(k));
    }
    ch.declare_queue_with("q", args).await;
    bind(&ch, "q", "amq.direct", "k1").await;
    bind(&ch, "q", "amq.direct", "k2").await;
    pch.publish_acked(
        "amq.direct",
        "k1",
        with_headers(cc_headers(&["k2"], &[])),
        b"cc",
    )
    .await;
    let m = ch.get_one("q", false).await;
    reject(&ch, &m).await;
    // routed once, dead-lettered once
    assert!(ch.get("q", true).await.is_none());
    let d = ch.get_one("dlq", true).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(ch.get("dlq", true).await.is_none());
    d
}

#[tokio::test]
async fn x_death_routing_keys_include_cc() {
    let broker = TestBroker::start().await;
    let d = dead_letter_with_cc(&broker, None).await;
    d.deaths()[0].check(ExpectedDeath {
        count: 1,
        reason: "rejected",
        queue: "q",
        exchange: "amq.direct",
        routing_keys: &["k1", "k2"],
        original_expiration: None,
    });
    // re-published with its original routing key and CC
    assert_eq!(d.routing_key, "k1");
    assert_eq!(d.header_value("CC"), Some(&texts(&["k2"])));
}

#[tokio::test]
async fn a_dead_letter_routing_key_drops_cc() {
    let broker = TestBroker::start().await;
    let d = dead_letter_with_cc(&broker, Some("dl")).await;
    assert_eq!(d.routing_key, "dl");
    let deaths = d.deaths();
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    deaths[0].check(ExpectedDeath {
        count: 1,
        reason: "rejected",
        queue: "q",
        exchange: "amq.direct",
        routing_keys: &["k1", "k2"],
        original_expiration: None,
    });
    // no CC left
    assert_eq!(
        d.other_headers(),
        header_map(first_death("q", "rejected", "amq.direct"))
    );
}

/// A message whose properties no decoder reads (here a content type that is not UTF-8: Warren
/// forwards it as RabbitMQ does) is dead-lettered, not lost (issue 11 point 7: never drop data
/// because something failed to parse), its bytes kept and x-death spliced in after them.
#[tokio::test]
async fn a_dead_letter_with_a_content_type_no_decoder_reads_keeps_it_and_gains_x_death() {
    use amq_protocol::types::{AMQPValue, FieldTable as RawTable, LongString};
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.attempt(warren_tests::raw::queue_declare("dlq"))
        .await
        .expect("declare dlq");
    let mut args = RawTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from("dlq")),
    );
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(0));
    raw.attempt(warren_tests::raw::queue_declare_with("q", false, args))
        .await
        .expect("declare q");
    // content_type "\xff\xfe" (flags: bit 15), then nothing else.
    let properties = [0x80, 0x00, 2, 0xff, 0xfe];
    raw.attempt_publish("", "q", &properties, b"kept")
        .await
        .expect("publish");
    raw.open_channel(1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let got = loop {
        raw.send_method(1, warren_tests::raw::basic_get("dlq", true))
            .await;
        let method = raw.expect_method(1).await;
        if matches!(
            method,
            amq_protocol::protocol::AMQPClass::Basic(
                amq_protocol::protocol::basic::AMQPMethod::GetOk(_)
            )
        ) {
            break raw.expect_content(1, method).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(got.body, b"kept");
    // content-type and headers flags, the content type as published, then the headers table
    assert_eq!(&got.properties[..5], &[0xA0, 0x00, 2, 0xff, 0xfe]);
    let found = warren_protocol::content::header_entries(&got.properties, &["x-death"]);
    assert!(found.expect("headers").inner().contains_key("x-death"));
}
