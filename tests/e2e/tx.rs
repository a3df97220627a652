//! Transactions as in RabbitMQ 3.13: publishes invisible until tx.commit, tx.rollback discards them,
//! acks and rejects take effect on commit, rolled-back or uncommitted acks leave the deliveries
//! unacked (they come back redelivered when the channel closes), and the refusals: switching between
//! tx and confirm mode, commit or rollback on a channel that is not transactional. Expectations are
//! those of tests/python/test_channel_features.py.

use std::time::Duration;

use amqprs::channel::{BasicAckArguments, BasicRejectArguments, ConfirmSelectArguments};
use amqprs::BasicProperties;
use warren_tests::client::bodies;
use warren_tests::{Client, CloseInfo, Delivery, TestBroker, TestChannel, Timely};

async fn setup(broker: &TestBroker) -> (Client, TestChannel) {
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    (client, ch)
}

async fn tx_channel(client: &Client) -> TestChannel {
    let tx = client.channel().await;
    tx.tx_select().timely().await.expect("tx.select-ok");
    tx
}

async fn commit(tx: &TestChannel) {
    if let Err(e) = tx.tx_commit().timely().await {
        tx.fail("tx.commit", e).await;
    }
}

async fn rollback(tx: &TestChannel) {
    if let Err(e) = tx.tx_rollback().timely().await {
        tx.fail("tx.rollback", e).await;
    }
}

async fn ack(ch: &TestChannel, tag: u64, multiple: bool) {
    ch.basic_ack(BasicAckArguments::new(tag, multiple))
        .timely()
        .await
        .expect("basic.ack written");
}

async fn close(ch: TestChannel) {
    ch.ch.close().timely().await.expect("channel.close-ok");
}

fn seen(got: &[Delivery]) -> Vec<(String, bool)> {
    got.iter().map(|d| (d.text(), d.redelivered)).collect()
}

/// Two messages in q, fetched unacked on a new transactional channel; returns it and the tags.
async fn two_unacked(client: &Client, ch: &TestChannel) -> (TestChannel, Vec<u64>) {
    let pch = client.channel().await;
    pch.select_confirms().await;
    pch.publish_acked("", "q", BasicProperties::default(), b"a")
        .await;
    pch.publish_acked("", "q", BasicProperties::default(), b"b")
        .await;
    assert_eq!(ch.message_count("q").await, 2);
    let tx = tx_channel(client).await;
    let mut tags = Vec::new();
    for _ in 0..2 {
        tags.push(tx.get("q", false).await.expect("a message").tag);
    }
    (tx, tags)
}

#[tokio::test]
async fn publishes_are_invisible_until_commit() {
    let broker = TestBroker::start().await;
    let (client, ch) = setup(&broker).await;
    let tx = tx_channel(&client).await;
    tx.publish("", "q", b"1").await;
    tx.publish("", "q", b"2").await;
    // the publishes have reached the broker
    tx.message_count("q").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ch.message_count("q").await, 0);
    assert!(ch.get("q", true).await.is_none());
    commit(&tx).await;
    assert_eq!(bodies(&ch.drain("q").await), ["1", "2"]);
}

#[tokio::test]
async fn rollback_discards_publishes_and_the_channel_stays_transactional() {
    let broker = TestBroker::start().await;
    let (client, ch) = setup(&broker).await;
    let tx = tx_channel(&client).await;
    tx.publish("", "q", b"rolled back").await;
    rollback(&tx).await;
    // nothing left to commit
    commit(&tx).await;
    assert!(ch.get("q", true).await.is_none());
    tx.publish("", "q", b"committed").await;
    tx.message_count("q").await;
    assert!(ch.get("q", true).await.is_none());
    commit(&tx).await;
    assert_eq!(bodies(&ch.drain("q").await), ["committed"]);
}

#[tokio::test]
async fn uncommitted_publishes_are_dropped_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let (client, ch) = setup(&broker).await;
    let tx = tx_channel(&client).await;
    tx.publish("", "q", b"never").await;
    close(tx).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ch.get("q", true).await.is_none());
}

#[tokio::test]
async fn acks_take_effect_on_commit() {
    let broker = TestBroker::start().await;
    let (client, ch) = setup(&broker).await;
    let (tx, tags) = two_unacked(&client, &ch).await;
    ack(&tx, tags[0], false).await;
    ack(&tx, tags[1], false).await;
    commit(&tx).await;
    close(tx).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ch.get("q", true).await.is_none());
}

#[tokio::test]
async fn uncommitted_acks_are_void_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let (client, ch) = setup(&broker).await;
    let (tx, tags) = two_unacked(&client, &ch).await;
    ack(&tx, tags[1], true).await;
    close(tx).await;
    let got = ch.get_n("q", 2, Duration::from_secs(1)).await;
    assert_eq!(
        seen(&got),
        [("a".to_string(), true), ("b".to_string(), true)]
    );
}

#[tokio::test]
async fn rollback_leaves_acked_deliveries_unacked() {
    let broker = TestBroker::start().await;
    let (client, ch) = setup(&broker).await;
    let (tx, tags) = two_unacked(&client, &ch).await;
    ack(&tx, tags[0], false).await;
    ack(&tx, tags[1], false).await;
    rollback(&tx).await;
    // still unacked: the delivery tags are valid, and an ack of one is committed
    ack(&tx, tags[0], false).await;
    commit(&tx).await;
    assert_eq!(ch.message_count("q").await, 0);
    // the other one comes back when the channel closes
    close(tx).await;
    let got = ch.get_n("q", 1, Duration::from_secs(1)).await;
    assert_eq!(seen(&got), [("b".to_string(), true)]);
}

#[tokio::test]
async fn reject_with_requeue_takes_effect_on_commit() {
    let broker = TestBroker::start().await;
    let (client, ch) = setup(&broker).await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    pch.publish_acked("", "q", BasicProperties::default(), b"x")
        .await;
    let tx = tx_channel(&client).await;
    let m = tx.get("q", false).await.expect("a message");
    tx.basic_reject(BasicRejectArguments::new(m.tag, true))
        .timely()
        .await
        .unwrap();
    tx.message_count("q").await;
    assert_eq!(ch.message_count("q").await, 0);
    commit(&tx).await;
    assert_eq!(seen(&ch.drain("q").await), [("x".to_string(), true)]);
}

#[tokio::test]
async fn commit_applies_publishes_and_acks_together() {
    let broker = TestBroker::start().await;
    let (client, ch) = setup(&broker).await;
    ch.declare_queue("dst").await;
    let pch = client.channel().await;
    pch.select_confirms().await;
    pch.publish_acked("", "q", BasicProperties::default(), b"work")
        .await;
    let tx = tx_channel(&client).await;
    let m = tx.get("q", false).await.expect("a message");
    tx.publish("", "dst", format!("{} done", m.text()).as_bytes())
        .await;
    ack(&tx, m.tag, false).await;
    commit(&tx).await;
    close(tx).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(ch.drain("q").await.is_empty());
    assert_eq!(bodies(&ch.drain("dst").await), ["work done"]);
}

#[tokio::test]
async fn select_twice_is_fine() {
    let broker = TestBroker::start().await;
    let (client, _ch) = setup(&broker).await;
    let tx = tx_channel(&client).await;
    tx.tx_select().timely().await.expect("second tx.select-ok");
    commit(&tx).await;
    rollback(&tx).await;
}

#[tokio::test]
async fn confirm_select_on_a_tx_channel_is_refused() {
    let broker = TestBroker::start().await;
    let (client, _ch) = setup(&broker).await;
    let tx = tx_channel(&client).await;
    let r = tx
        .confirm_select(ConfirmSelectArguments::new(false))
        .timely()
        .await;
    assert!(r.is_err(), "confirm.select on a tx channel was accepted");
    assert_eq!(
        tx.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
            85,
            10
        )
    );
}

#[tokio::test]
async fn tx_select_on_a_confirm_channel_is_refused() {
    let broker = TestBroker::start().await;
    let (client, _ch) = setup(&broker).await;
    let ch = client.channel().await;
    ch.select_confirms().await;
    let r = ch.tx_select().timely().await;
    assert!(r.is_err(), "tx.select on a confirm channel was accepted");
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
            90,
            10
        )
    );
}

#[tokio::test]
async fn commit_and_rollback_without_select_are_refused() {
    let broker = TestBroker::start().await;
    let (client, _ch) = setup(&broker).await;
    let ch = client.channel().await;
    let r = ch.tx_commit().timely().await;
    assert!(r.is_err(), "tx.commit without tx.select was accepted");
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - channel is not transactional",
            90,
            20
        )
    );
    let ch = client.channel().await;
    let r = ch.tx_rollback().timely().await;
    assert!(r.is_err(), "tx.rollback without tx.select was accepted");
    assert_eq!(
        ch.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - channel is not transactional",
            90,
            30
        )
    );
}
