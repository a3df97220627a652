//! Consumers: no-ack and manual-ack consumption, consumer tags, round robin, cancel (by the client
//! and by the server when the queue goes), exclusive consumers, and basic.qos prefetch.

use std::time::Duration;

use amq_protocol::protocol::{queue, AMQPClass};
use amqprs::channel::{BasicCancelArguments, BasicConsumeArguments, QueueDeleteArguments};
use warren_tests::client::bodies;
use warren_tests::raw::{basic_consume, queue_declare};
use warren_tests::{ChannelEvent, CloseInfo, TestBroker, Timely, Tuning, QUIET};

use super::{ack, publish_all, qos};

#[tokio::test]
async fn no_ack_consumer_leaves_nothing_behind() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("noack-q").await;
    let (_, mut consumer) = ch.consume("noack-q", "", false).await;
    publish_all(&ch, "noack-q", &["1", "2", "3"]).await;
    assert_eq!(bodies(&consumer.recv_n(3).await), ["1", "2", "3"]);
    ch.ch.close().await.unwrap();
    let ch = client.channel().await;
    assert_eq!(ch.declare_queue("noack-q").await.1, 0);
}

/// A no-ack consumer that joins a queue holding more messages than its connection may have in
/// flight to the socket (2,048) gets all of them: the queue goes on pushing as the connection
/// writes them, with nothing else (no publish, no ack) to wake it.
#[tokio::test]
async fn a_no_ack_consumer_drains_a_backlog_larger_than_its_write_budget() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("backlog-q").await;
    let bodies_sent: Vec<String> = (0..5_000).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = bodies_sent.iter().map(String::as_str).collect();
    publish_all(&ch, "backlog-q", &refs).await;
    let (_, mut consumer) = ch.consume("backlog-q", "", false).await;
    assert_eq!(bodies(&consumer.recv_n(5_000).await), bodies_sent);
    consumer.assert_quiet(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn client_and_server_consumer_tags() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("tag-q").await;
    let (tag, mut consumer) = ch.consume("tag-q", "my-tag", false).await;
    assert_eq!(tag, "my-tag");
    ch.publish("", "tag-q", b"x").await;
    assert_eq!(consumer.recv().await.consumer_tag, "my-tag");
    ch.basic_cancel(BasicCancelArguments::new("my-tag"))
        .timely()
        .await
        .unwrap();

    let (tag, mut consumer) = ch.consume("tag-q", "", false).await;
    assert!(
        tag.starts_with("amq.ctag-") && tag.len() > "amq.ctag-".len() + 10,
        "server-generated tag {tag:?}"
    );
    ch.publish("", "tag-q", b"y").await;
    assert_eq!(consumer.recv().await.consumer_tag, tag);
}

#[tokio::test]
async fn consumers_share_a_queue_round_robin() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("rr-q").await;
    let (_, mut a) = ch.consume("rr-q", "a", false).await;
    let (_, mut b) = ch.consume("rr-q", "b", false).await;
    publish_all(&ch, "rr-q", &["1", "2", "3", "4"]).await;
    assert_eq!(bodies(&a.recv_n(2).await), ["1", "3"]);
    assert_eq!(bodies(&b.recv_n(2).await), ["2", "4"]);
}

#[tokio::test]
async fn cancel_stops_deliveries() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("cancel-q").await;
    let (tag, mut consumer) = ch.consume("cancel-q", "", false).await;
    let cancelled = ch
        .basic_cancel(BasicCancelArguments::new(&tag))
        .timely()
        .await
        .unwrap();
    assert_eq!(cancelled, tag);
    ch.publish("", "cancel-q", b"kept").await;
    consumer.assert_ended(QUIET).await;
    assert_eq!(bodies(&ch.drain("cancel-q").await), ["kept"]);
    // Cancelling an unknown tag is not an error.
    ch.basic_cancel(BasicCancelArguments::new("no-such-tag"))
        .timely()
        .await
        .expect("cancel-ok for an unknown tag");
}

#[tokio::test]
async fn exclusive_consumers_are_refused_with_403() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    ch.declare_queue("q2").await;
    let _plain = ch.consume("q", "plain", false).await;

    let other = client.channel().await;
    let mut args = BasicConsumeArguments::new("q", "excl");
    args.exclusive(true);
    let r = other.basic_consume_rx(args).timely().await;
    assert!(r.is_err());
    assert_eq!(
        other.expect_close().await,
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use",
            60,
            20
        )
    );

    let mut args = BasicConsumeArguments::new("q2", "excl");
    args.exclusive(true);
    let _excl = ch.consume_with(args).await;
    let other = client.channel().await;
    let r = other
        .basic_consume_rx(BasicConsumeArguments::new("q2", "late"))
        .timely()
        .await;
    assert!(r.is_err());
    assert_eq!(
        other.expect_close().await,
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - queue 'q2' in vhost '/' in exclusive use",
            60,
            20
        )
    );
}

#[tokio::test]
async fn consumer_tag_reuse_closes_the_connection() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.call(1, queue_declare("reuse-q")).await;
    raw.call(1, basic_consume("reuse-q", "ctag", false)).await;
    raw.send_method(1, basic_consume("reuse-q", "ctag", false))
        .await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(
            530,
            "NOT_ALLOWED - attempt to reuse consumer tag 'ctag'",
            60,
            20
        )
    );
}

#[tokio::test]
async fn per_consumer_prefetch_bounds_unacked_deliveries() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("pf-q").await;
    qos(&ch, 2, false).await;
    let (_, mut consumer) = ch.consume("pf-q", "", true).await;
    publish_all(&ch, "pf-q", &["1", "2", "3", "4", "5"]).await;
    let first = consumer.recv_n(2).await;
    assert_eq!(bodies(&first), ["1", "2"]);
    consumer.assert_quiet(QUIET).await;
    ack(&ch, first[0].tag, false).await;
    assert_eq!(bodies(&[consumer.recv().await]), ["3"]);
    consumer.assert_quiet(QUIET).await;
    // A second consumer created after the qos gets its own prefetch of 2.
    ch.declare_queue("pf-q2").await;
    let (_, mut second) = ch.consume("pf-q2", "", true).await;
    publish_all(&ch, "pf-q2", &["a", "b", "c"]).await;
    assert_eq!(bodies(&second.recv_n(2).await), ["a", "b"]);
    second.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_channel() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("g1").await;
    ch.declare_queue("g2").await;
    qos(&ch, 3, true).await;
    let (_, mut c1) = ch.consume("g1", "", true).await;
    let (_, mut c2) = ch.consume("g2", "", true).await;
    publish_all(&ch, "g1", &["1a", "1b", "1c"]).await;
    publish_all(&ch, "g2", &["2a", "2b", "2c"]).await;
    let mut got = c1.recv_n(3).await;
    c1.assert_quiet(QUIET).await;
    c2.assert_quiet(Duration::from_millis(50)).await;
    assert_eq!(bodies(&got), ["1a", "1b", "1c"]);
    // Acking everything frees the channel's credit for the other consumer.
    ack(&ch, 0, true).await;
    got = c2.recv_n(3).await;
    assert_eq!(bodies(&got), ["2a", "2b", "2c"]);
}

#[tokio::test]
async fn qos_prefetch_size_is_not_implemented() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    // amq-protocol has no prefetch-size field, so the frame is written by hand: size 1000, count 0.
    let mut payload = vec![0, 60, 0, 10];
    payload.extend(1000u32.to_be_bytes());
    payload.extend([0, 0, 0]);
    raw.send_frame(warren_tests::raw::frame_type::FRAME_METHOD, 1, &payload)
        .await;
    assert_eq!(
        raw.expect_connection_close().await,
        CloseInfo::new(540, "NOT_IMPLEMENTED - prefetch_size!=0 (1000)", 60, 10)
    );
}

#[tokio::test]
async fn deleting_a_consumed_queue_cancels_its_consumers() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let consumer_ch = client.channel().await;
    consumer_ch.declare_queue("doomed").await;
    let (tag, _consumer) = consumer_ch.consume("doomed", "watcher", false).await;
    let admin = client.channel().await;
    admin
        .queue_delete(QueueDeleteArguments::new("doomed"))
        .timely()
        .await
        .unwrap();
    match consumer_ch.next_event().await {
        ChannelEvent::Cancelled(cancelled) => assert_eq!(cancelled, tag),
        other => panic!("expected basic.cancel, got {other:?}"),
    }
    // The channel stays open.
    consumer_ch.declare_queue("after-cancel").await;
}

#[tokio::test]
async fn no_basic_cancel_without_the_consumer_cancel_notify_capability() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.handshake_with(Tuning {
        capabilities: false,
        ..Tuning::default()
    })
    .await;
    raw.open_channel(1).await;
    raw.call(1, queue_declare("doomed")).await;
    raw.call(1, basic_consume("doomed", "c", false)).await;
    let deleted = raw
        .call(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                queue: "doomed".into(),
                ..Default::default()
            })),
        )
        .await;
    assert!(
        matches!(deleted, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))),
        "{deleted:?}"
    );
    match raw.read_frame_within(QUIET).await {
        Err(()) => {}
        Ok(frame) => panic!("a client without consumer_cancel_notify received {frame:?}"),
    }
}
