//! Paging through real connections: queues past their memory budget (the broker's, or their own
//! `x-max-in-memory-length` / `x-queue-mode: lazy`) keep the backlog in spill files and still deliver
//! every message in order, expire and dead-letter paged messages at the head, and a purged durable
//! queue forgets its paged persistent messages in the log too. (tests/python/test_paging.py measures
//! the RSS of a broker process holding a 200 MB backlog.)

use std::time::Duration;

use amqprs::channel::{QueueDeclareArguments, QueuePurgeArguments};
use amqprs::BasicProperties;
use warren_tests::features::{int, table, text};
use warren_tests::{TestBroker, Timely};

fn paged(broker: &TestBroker, queue: &str) -> u64 {
    broker.queue(queue).map_or(0, |q| q.paged_count())
}

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("{i:06}:").into_bytes();
    b.resize(1000, b'a' + (i % 26) as u8);
    b
}

#[tokio::test]
async fn lazy_and_length_limited_queues_page_their_backlog_and_deliver_it_in_order() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue_with("lazy", table([("x-queue-mode", text("lazy"))]))
        .await;
    ch.declare_queue_with("short", table([("x-max-in-memory-length", int(5))]))
        .await;
    ch.declare_queue_with("plain", table([("x-queue-mode", text("default"))]))
        .await;
    for i in 0..300 {
        for q in ["lazy", "short", "plain"] {
            ch.publish("", q, &body(i)).await;
        }
    }
    assert_eq!(ch.message_count("lazy").await, 300);
    assert_eq!(
        paged(&broker, "lazy"),
        299,
        "a lazy queue keeps one message in memory"
    );
    assert_eq!(paged(&broker, "short"), 295);
    assert_eq!(
        paged(&broker, "plain"),
        0,
        "300 KB is well inside the default budget"
    );

    for q in ["lazy", "short", "plain"] {
        let (_, mut consumer) = ch.consume(q, &format!("c-{q}"), false).await;
        let got = consumer.recv_n(300).await;
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.body, body(i), "{q}: message {i}");
            assert!(!d.redelivered);
        }
        assert_eq!(paged(&broker, q), 0);
    }
}

#[tokio::test]
async fn paged_messages_expire_at_the_head_and_are_dead_lettered() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("dead").await;
    ch.declare_queue_with(
        "ttl-lazy",
        table([
            ("x-queue-mode", text("lazy")),
            ("x-message-ttl", int(300)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("dead")),
        ]),
    )
    .await;
    for i in 0..100 {
        ch.publish("", "ttl-lazy", &body(i)).await;
    }
    // (A passive declare on the same channel follows the publishes.)
    assert_eq!(ch.message_count("ttl-lazy").await, 100);
    assert!(paged(&broker, "ttl-lazy") >= 99);
    let got = ch.get_n("dead", 100, Duration::from_secs(10)).await;
    assert_eq!(
        got.len(),
        100,
        "every paged message expired and was dead-lettered"
    );
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.body, body(i));
    }
    assert_eq!(ch.message_count("ttl-lazy").await, 0);
    assert_eq!(paged(&broker, "ttl-lazy"), 0);
}

#[tokio::test]
async fn a_purged_durable_queue_forgets_its_paged_messages_across_a_restart() {
    let broker = TestBroker::start_with(|c| c.limits.queue_memory_budget_bytes = 16 << 10).await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.select_confirms().await;
    let mut persistent = BasicProperties::default();
    persistent.with_delivery_mode(2);
    for q in ["kept", "purged"] {
        let mut args = QueueDeclareArguments::new(q);
        args.durable(true);
        ch.declare(args).await;
        for i in 0..200 {
            ch.publish_acked("", q, persistent.clone(), &body(i)).await;
        }
        assert!(paged(&broker, q) > 150, "{q}: {} paged", paged(&broker, q));
    }
    let purged = ch
        .queue_purge(QueuePurgeArguments::new("purged"))
        .timely()
        .await
        .expect("purge-ok");
    assert_eq!(purged, Some(200));
    client.close().await;

    let broker = broker.restart().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    assert_eq!(
        ch.message_count("purged").await,
        0,
        "purged messages stay gone"
    );
    assert_eq!(ch.message_count("kept").await, 200);
    let (_, mut consumer) = ch.consume("kept", "c", false).await;
    for (i, d) in consumer.recv_n(200).await.iter().enumerate() {
        assert_eq!(d.body, body(i), "kept: message {i}");
        assert!(d.redelivered, "recovered messages are flagged redelivered");
    }
}

#[tokio::test]
async fn past_half_the_memory_mark_backlogs_are_paged_instead_of_raising_the_alarm() {
    let broker =
        TestBroker::start_with(|c| c.limits.memory_high_watermark_bytes = Some(200_000)).await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("backlog").await;
    for i in 0..1000 {
        ch.publish("", "backlog", &body(i)).await;
    }
    assert_eq!(
        ch.message_count("backlog").await,
        1000,
        "1 MB, five times the mark"
    );
    let alarms = &broker.server.broker.alarms;
    assert!(
        !alarms.in_alarm(),
        "message memory: {} bytes",
        alarms.used()
    );
    assert!(
        alarms.used() <= 120_000,
        "{} bytes in memory",
        alarms.used()
    );
    assert!(paged(&broker, "backlog") > 880);
    let (_, mut consumer) = ch.consume("backlog", "c", false).await;
    for (i, d) in consumer.recv_n(1000).await.iter().enumerate() {
        assert_eq!(d.body, body(i));
    }
}
