//! Acknowledgements: ack, nack and reject with multiple and requeue, unknown tags, basic.get,
//! basic.recover, and unacked messages coming back when their channel, connection or socket goes.

use std::time::Duration;

use amqprs::channel::QueueBindArguments;
use warren_tests::client::bodies;
use warren_tests::raw::basic_consume;
use warren_tests::{CloseInfo, TestBroker, Timely, QUIET};

use super::{ack, nack, publish_all, reject};

#[tokio::test]
async fn manual_ack_settles_and_unacked_messages_come_back() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("ack-q").await;
    let (_, mut consumer) = ch.consume("ack-q", "", true).await;
    publish_all(&ch, "ack-q", &["acked", "unacked"]).await;
    let got = consumer.recv_n(2).await;
    assert_eq!(bodies(&got), ["acked", "unacked"]);
    assert!(got.iter().all(|d| !d.redelivered));
    assert_eq!((got[0].tag, got[1].tag), (1, 2));
    ack(&ch, got[0].tag, false).await;
    ch.ch.close().await.unwrap();
    let ch = client.channel().await;
    let left = ch.drain("ack-q").await;
    assert_eq!(bodies(&left), ["unacked"]);
    assert!(left[0].redelivered);
}

#[tokio::test]
async fn nack_and_reject_requeue_in_original_order() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("nack-q").await;
    let (_, mut consumer) = ch.consume("nack-q", "", true).await;
    publish_all(&ch, "nack-q", &["m1", "m2", "m3", "m4", "m5"]).await;
    let first = consumer.recv_n(5).await;
    assert_eq!(
        first.iter().map(|d| d.tag).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );

    // nack multiple up to 3 with requeue: m1..m3 come back, redelivered, in their original order.
    nack(&ch, 3, true, true).await;
    let again = consumer.recv_n(3).await;
    assert_eq!(bodies(&again), ["m1", "m2", "m3"]);
    assert!(again.iter().all(|d| d.redelivered));
    assert_eq!(again.iter().map(|d| d.tag).collect::<Vec<_>>(), [6, 7, 8]);

    // reject with requeue: m4 comes back.
    reject(&ch, 4, true).await;
    let m4 = consumer.recv().await;
    assert_eq!(
        (m4.body.as_slice(), m4.redelivered, m4.tag),
        (&b"m4"[..], true, 9)
    );

    // reject and nack without requeue drop; ack multiple settles the rest.
    reject(&ch, 5, false).await;
    nack(&ch, 9, false, false).await;
    ack(&ch, 8, true).await;
    consumer.assert_quiet(QUIET).await;
    ch.ch.close().await.unwrap();
    let ch = client.channel().await;
    assert!(ch.drain("nack-q").await.is_empty());
}

#[tokio::test]
async fn requeued_message_goes_back_before_newer_ones() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("order-q").await;
    publish_all(&ch, "order-q", &["first", "second", "third"]).await;
    let first = ch.get("order-q", false).await.unwrap();
    assert_eq!(first.message_count, Some(2));
    reject(&ch, first.tag, true).await;
    let got = ch.drain("order-q").await;
    assert_eq!(bodies(&got), ["first", "second", "third"]);
    assert_eq!(
        got.iter().map(|d| d.redelivered).collect::<Vec<_>>(),
        [true, false, false]
    );
}

#[tokio::test]
async fn unknown_delivery_tag_is_406() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("tag-q").await;
    publish_all(&ch, "tag-q", &["1"]).await;
    let (_, mut consumer) = ch.consume("tag-q", "", true).await;
    assert_eq!(consumer.recv().await.tag, 1);
    ack(&ch, 7, false).await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(406, "PRECONDITION_FAILED - unknown delivery tag 7", 60, 80)
    );

    // Acking twice: the second ack names a tag that is no longer outstanding.
    let ch = client.channel().await;
    publish_all(&ch, "tag-q", &["2"]).await;
    let got = ch.get("tag-q", false).await.unwrap();
    ack(&ch, got.tag, false).await;
    ack(&ch, got.tag, false).await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(
            406,
            &format!("PRECONDITION_FAILED - unknown delivery tag {}", got.tag),
            60,
            80
        )
    );

    let ch = client.channel().await;
    nack(&ch, 3, false, true).await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(406, "PRECONDITION_FAILED - unknown delivery tag 3", 60, 120)
    );
    let ch = client.channel().await;
    reject(&ch, 4, true).await;
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(406, "PRECONDITION_FAILED - unknown delivery tag 4", 60, 90)
    );
    // multiple=true with nothing outstanding and tag 0 is fine.
    let ch = client.channel().await;
    ack(&ch, 0, true).await;
    ch.declare_queue("tag-q").await;
    ch.assert_no_event().await;
}

#[tokio::test]
async fn get_and_get_empty() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("get-q").await;
    ch.queue_bind(QueueBindArguments::new("get-q", "amq.direct", "get-key"))
        .timely()
        .await
        .unwrap();
    assert!(ch.get("get-q", true).await.is_none());
    ch.publish("amq.direct", "get-key", b"one").await;
    ch.publish("amq.direct", "get-key", b"two").await;
    let one = ch.get("get-q", false).await.unwrap();
    assert_eq!(one.body, b"one");
    assert_eq!(one.message_count, Some(1));
    assert_eq!(
        (
            one.exchange.as_str(),
            one.routing_key.as_str(),
            one.redelivered
        ),
        ("amq.direct", "get-key", false)
    );
    ack(&ch, one.tag, false).await;
    let two = ch.get("get-q", true).await.unwrap();
    assert_eq!(
        (two.body.as_slice(), two.message_count),
        (&b"two"[..], Some(0))
    );
    assert!(ch.get("get-q", true).await.is_none());
    ch.assert_no_event().await;
}

#[tokio::test]
async fn recover_redelivers_unacked_messages() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("rec-q").await;
    let (_, mut consumer) = ch.consume("rec-q", "", true).await;
    publish_all(&ch, "rec-q", &["a", "b"]).await;
    let first = consumer.recv_n(2).await;
    assert!(first.iter().all(|d| !d.redelivered));
    ch.basic_recover(true).timely().await.expect("recover-ok");
    let again = consumer.recv_n(2).await;
    assert_eq!(bodies(&again), ["a", "b"]);
    assert!(again.iter().all(|d| d.redelivered));
    assert!(again.iter().all(|d| d.tag > 2), "new delivery tags");
    ack(&ch, 0, true).await;
    consumer.assert_quiet(QUIET).await;
}

#[tokio::test]
async fn unacked_messages_return_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("ret-ch-q").await;
    publish_all(&ch, "ret-ch-q", &["1", "2", "3", "4"]).await;
    let consumer_ch = client.channel().await;
    let (_, mut consumer) = consumer_ch.consume("ret-ch-q", "", true).await;
    let got = consumer.recv_n(4).await;
    ack(&consumer_ch, got[1].tag, false).await;
    consumer_ch.ch.close().await.unwrap();
    let back = ch.drain("ret-ch-q").await;
    assert_eq!(bodies(&back), ["1", "3", "4"]);
    assert!(back.iter().all(|d| d.redelivered));
}

#[tokio::test]
async fn unacked_messages_return_when_the_connection_closes() {
    let broker = TestBroker::start().await;
    let observer = broker.connect().await;
    let ch = observer.channel().await;
    ch.declare_queue("ret-conn-q").await;
    publish_all(&ch, "ret-conn-q", &["1", "2", "3"]).await;
    let consumer_conn = broker.connect().await;
    let consumer_ch = consumer_conn.channel().await;
    let (_, mut consumer) = consumer_ch.consume("ret-conn-q", "", true).await;
    consumer.recv_n(3).await;
    consumer_conn.close().await;
    drop(consumer_ch);
    let back = ch.drain("ret-conn-q").await;
    assert_eq!(bodies(&back), ["1", "2", "3"]);
    assert!(back.iter().all(|d| d.redelivered));
}

#[tokio::test]
async fn unacked_messages_return_when_the_socket_drops() {
    let broker = TestBroker::start().await;
    let observer = broker.connect().await;
    let ch = observer.channel().await;
    ch.declare_queue("ret-drop-q").await;
    publish_all(&ch, "ret-drop-q", &["1", "2"]).await;
    let mut raw = broker.raw_open().await;
    raw.open_channel(1).await;
    raw.call(1, basic_consume("ret-drop-q", "c", false)).await;
    raw.expect_message(1).await;
    raw.expect_message(1).await;
    drop(raw); // no connection.close: the TCP connection just goes away
    let mut back = Vec::new();
    for _ in 0..100 {
        back = ch.drain("ret-drop-q").await;
        if !back.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bodies(&back), ["1", "2"]);
    assert!(back.iter().all(|d| d.redelivered));
}
