//! Queue length limits, priorities and consumer selection as in RabbitMQ 3.13: x-max-length and
//! x-max-length-bytes (drop-head, dead-lettered as maxlen; reject-publish nacks and keeps the old
//! messages; reject-publish-dlx dead-letters the refused one), priority queues (x-max-priority),
//! consumer priorities (x-priority) and single active consumer. Expectations are those of
//! tests/python/test_queue_features.py.

use std::time::Duration;

use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicQosArguments,
};
use amqprs::BasicProperties;
use warren_tests::client::bodies;
use warren_tests::features::{
    boolean, first_death, header_map, int, table, text, with_priority, Confirm, ExpectedDeath,
};
use warren_tests::{TestBroker, TestChannel, Timely};

async fn publish_all(pch: &TestChannel, queue: &str, messages: &[&str]) {
    for m in messages {
        pch.publish_acked("", queue, BasicProperties::default(), m.as_bytes())
            .await;
    }
}

fn dlx_to(dlq: &str) -> [(&'static str, amqprs::FieldValue); 2] {
    [
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text(dlq)),
    ]
}

#[tokio::test]
async fn max_length_drops_the_head() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with("q", table([("x-max-length", int(2))]))
        .await;
    publish_all(&pch, "q", &["0", "1", "2", "3", "4"]).await;
    assert_eq!(ch.message_count("q").await, 2);
    assert_eq!(bodies(&ch.drain("q").await), ["3", "4"]);
}

#[tokio::test]
async fn max_length_dead_letters_the_dropped_head_as_maxlen() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("dlq").await;
    let [x, k] = dlx_to("dlq");
    ch.declare_queue_with("q", table([("x-max-length", int(1)), x, k]))
        .await;
    publish_all(&pch, "q", &["0", "1", "2"]).await;
    let got = vec![ch.get_one("dlq", true).await, ch.get_one("dlq", true).await];
    assert_eq!(bodies(&got), ["0", "1"]);
    let deaths = got[0].deaths();
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    deaths[0].check(ExpectedDeath {
        count: 1,
        reason: "maxlen",
        queue: "q",
        exchange: "",
        routing_keys: &["q"],
        original_expiration: None,
    });
    assert_eq!(
        got[0].other_headers(),
        header_map(first_death("q", "maxlen", ""))
    );
    assert_eq!(bodies(&ch.drain("q").await), ["2"]);
}

#[tokio::test]
async fn max_length_bytes_drops_the_head() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with("q", table([("x-max-length-bytes", int(10))]))
        .await;
    publish_all(&pch, "q", &["aaaa", "bbbb", "cccc", "dd"]).await;
    assert_eq!(bodies(&ch.drain("q").await), ["bbbb", "cccc", "dd"]);
}

#[tokio::test]
async fn max_length_bytes_dead_letters_as_maxlen() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("dlq").await;
    let [x, k] = dlx_to("dlq");
    ch.declare_queue_with("q", table([("x-max-length-bytes", int(6)), x, k]))
        .await;
    publish_all(&pch, "q", &["111", "222", "333"]).await;
    let d = ch.get_one("dlq", true).await;
    assert_eq!(d.body, b"111");
    assert_eq!(d.deaths()[0].reason.as_deref(), Some("maxlen"));
    assert_eq!(bodies(&ch.drain("q").await), ["222", "333"]);
}

#[tokio::test]
async fn reject_publish_nacks_and_keeps_the_old_messages() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with(
        "q",
        table([
            ("x-max-length", int(2)),
            ("x-overflow", text("reject-publish")),
        ]),
    )
    .await;
    publish_all(&pch, "q", &["1", "2"]).await;
    assert_eq!(
        pch.publish_confirmed("", "q", BasicProperties::default(), b"3")
            .await,
        Confirm::Nack
    );
    assert_eq!(bodies(&ch.drain("q").await), ["1", "2"]);
    // room again
    publish_all(&pch, "q", &["4"]).await;
    assert_eq!(bodies(&ch.drain("q").await), ["4"]);
}

#[tokio::test]
async fn reject_publish_without_confirms_drops_the_new_message() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue_with(
        "q",
        table([
            ("x-max-length", int(1)),
            ("x-overflow", text("reject-publish")),
        ]),
    )
    .await;
    ch.publish("", "q", b"kept").await;
    ch.publish("", "q", b"dropped").await;
    ch.assert_no_event().await;
    assert_eq!(bodies(&ch.drain("q").await), ["kept"]);
}

#[tokio::test]
async fn reject_publish_dlx_dead_letters_the_refused_message() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("dlq").await;
    let [x, k] = dlx_to("dlq");
    ch.declare_queue_with(
        "q",
        table([
            ("x-max-length", int(1)),
            ("x-overflow", text("reject-publish-dlx")),
            x,
            k,
        ]),
    )
    .await;
    publish_all(&pch, "q", &["old"]).await;
    assert_eq!(
        pch.publish_confirmed("", "q", BasicProperties::default(), b"new")
            .await,
        Confirm::Nack
    );
    let d = ch.get_one("dlq", true).await;
    assert_eq!(d.body, b"new");
    let deaths = d.deaths();
    assert_eq!(deaths.len(), 1, "{deaths:?}");
    deaths[0].check(ExpectedDeath {
        count: 1,
        reason: "maxlen",
        queue: "q",
        exchange: "",
        routing_keys: &["q"],
        original_expiration: None,
    });
    assert_eq!(
        d.other_headers(),
        header_map(first_death("q", "maxlen", ""))
    );
    assert_eq!(bodies(&ch.drain("q").await), ["old"]);
}

#[tokio::test]
async fn priority_queue_delivers_higher_first_fifo_within_and_caps_at_the_maximum() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with("q", table([("x-max-priority", int(5))]))
        .await;
    // priorities above the maximum count as the maximum; no priority is 0
    let published: [(&str, Option<u8>); 8] = [
        ("a", Some(1)),
        ("b", None),
        ("c", Some(5)),
        ("d", Some(9)),
        ("e", Some(3)),
        ("f", Some(5)),
        ("g", Some(0)),
        ("h", Some(200)),
    ];
    for (body, prio) in published {
        let props = prio.map(with_priority).unwrap_or_default();
        pch.publish_acked("", "q", props, body.as_bytes()).await;
    }
    let got = ch.drain("q").await;
    assert_eq!(bodies(&got), ["c", "d", "f", "h", "e", "a", "b", "g"]);
    // the property is delivered as published
    assert_eq!(
        got.iter()
            .map(|d| d.properties.priority())
            .collect::<Vec<_>>(),
        [
            Some(5),
            Some(9),
            Some(5),
            Some(200),
            Some(3),
            Some(1),
            None,
            Some(0)
        ]
    );
}

#[tokio::test]
async fn priority_queue_to_a_consumer() {
    let broker = TestBroker::start().await;
    let (client, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with("q", table([("x-max-priority", int(10))]))
        .await;
    for (i, prio) in [0u8, 10, 5, 10, 0].into_iter().enumerate() {
        pch.publish_acked("", "q", with_priority(prio), format!("{i}").as_bytes())
            .await;
    }
    let cch = client.channel().await;
    let (_, mut consumer) = cch.consume("q", "c", false).await;
    assert_eq!(bodies(&consumer.recv_n(5).await), ["1", "3", "2", "0", "4"]);
}

#[tokio::test]
async fn a_queue_without_max_priority_ignores_priorities() {
    let broker = TestBroker::start().await;
    let (_c, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("q").await;
    for (i, prio) in [0u8, 9, 5].into_iter().enumerate() {
        pch.publish_acked("", "q", with_priority(prio), format!("{i}").as_bytes())
            .await;
    }
    assert_eq!(bodies(&ch.drain("q").await), ["0", "1", "2"]);
}

#[tokio::test]
async fn consumer_priority_prefers_the_higher_consumer_while_it_has_room() {
    let broker = TestBroker::start().await;
    let (client, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue("q").await;
    let low = client.channel().await;
    low.basic_qos(BasicQosArguments::new(0, 10, false))
        .timely()
        .await
        .unwrap();
    let high = client.channel().await;
    high.basic_qos(BasicQosArguments::new(0, 2, false))
        .timely()
        .await
        .unwrap();
    // the low-priority consumer is registered first
    let (_, mut low_c) = low.consume("q", "low", true).await;
    let mut args = BasicConsumeArguments::new("q", "high");
    args.manual_ack(true);
    args.arguments = table([("x-priority", int(10))]);
    let (_, mut high_c) = high.consume_with(args).await;
    publish_all(&pch, "q", &["0", "1", "2", "3", "4"]).await;
    let high_got = high_c.recv_n(2).await;
    assert_eq!(bodies(&high_got), ["0", "1"]);
    assert_eq!(bodies(&low_c.recv_n(3).await), ["2", "3", "4"]);
    high_c.assert_quiet(Duration::from_millis(100)).await;
    // once it has room again it is first again
    high.basic_ack(BasicAckArguments::new(high_got[1].tag, true))
        .timely()
        .await
        .unwrap();
    publish_all(&pch, "q", &["5"]).await;
    assert_eq!(high_c.recv().await.body, b"5");
    low_c.assert_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn single_active_consumer_gets_everything_until_it_cancels() {
    let broker = TestBroker::start().await;
    let (client, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with("q", table([("x-single-active-consumer", boolean(true))]))
        .await;
    let first_ch = client.channel().await;
    let second_ch = client.channel().await;
    let (first_tag, mut first) = first_ch.consume("q", "first", false).await;
    let (_, mut second) = second_ch.consume("q", "second", false).await;
    let mut passive = amqprs::channel::QueueDeclareArguments::new("q");
    passive.passive(true);
    assert_eq!(ch.declare(passive).await.2, 2, "consumer count");
    publish_all(&pch, "q", &["0", "1", "2", "3"]).await;
    assert_eq!(bodies(&first.recv_n(4).await), ["0", "1", "2", "3"]);
    second.assert_quiet(Duration::from_millis(150)).await;
    // after it cancels, the next one gets the rest
    first_ch
        .basic_cancel(BasicCancelArguments::new(&first_tag))
        .timely()
        .await
        .unwrap();
    publish_all(&pch, "q", &["4", "5", "6"]).await;
    assert_eq!(bodies(&second.recv_n(3).await), ["4", "5", "6"]);
    second.assert_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn single_active_consumer_hands_over_unacked_messages_when_its_channel_closes() {
    let broker = TestBroker::start().await;
    let (client, ch, pch) = broker.connect_with_confirming_channel().await;
    ch.declare_queue_with("q", table([("x-single-active-consumer", boolean(true))]))
        .await;
    let first_ch = client.channel().await;
    first_ch
        .basic_qos(BasicQosArguments::new(0, 2, false))
        .timely()
        .await
        .unwrap();
    let second_ch = client.channel().await;
    let (_, mut first) = first_ch.consume("q", "first", true).await;
    let (_, mut second) = second_ch.consume("q", "second", false).await;
    publish_all(&pch, "q", &["0", "1", "2", "3", "4"]).await;
    // the active consumer's prefetch is full: the other one still waits
    assert_eq!(bodies(&first.recv_n(2).await), ["0", "1"]);
    first.assert_quiet(Duration::from_millis(150)).await;
    second.assert_quiet(Duration::from_millis(50)).await;
    first_ch
        .ch
        .close()
        .timely()
        .await
        .expect("channel.close-ok");
    let got = second.recv_n(5).await;
    assert_eq!(bodies(&got), ["0", "1", "2", "3", "4"]);
    assert_eq!(
        got.iter().map(|d| d.redelivered).collect::<Vec<_>>(),
        [true, true, false, false, false]
    );
}
