//! Streams on a cluster (issue 14: "a stream lives on one node at first, as a classic queue
//! does"): its log is on its home, the node whose client declared it; publishes on any node are
//! appended there and confirmed once on its disk; a consumer on any node reads it there from the
//! offset it asks for, with the home's offsets in `x-stream-offset`, as its prefetch allows, and
//! gets what is appended later without asking again. A consumer elsewhere carries on where it was
//! when the home comes back after a restart; deleting the stream on any node cancels every node's
//! consumers and removes its files.

use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::AMQPValue;
use std::time::Duration;
use warren_tests::cluster::{agreed_leader, three_nodes, LinkCluster, SETTLE};
use warren_tests::raw::{basic_ack, basic_qos, queue_delete};
use warren_tests::{RawClient, TestBroker};

use crate::cluster_classic::wait_for_home;
use crate::streams::{consume, numbered, publish, read, stream, stream_files, text};

/// The next delivery on `ch` of `raw`: (body, x-stream-offset, delivery tag).
async fn next(raw: &mut RawClient, ch: u16) -> (String, i64, u64) {
    let m = raw.expect_message(ch).await;
    let props = warren_protocol::content::BasicProperties::parse(&m.properties).expect("props");
    let offset = match props
        .headers_table()
        .expect("headers")
        .inner()
        .get("x-stream-offset")
    {
        Some(AMQPValue::LongLongInt(o)) => *o,
        other => panic!("x-stream-offset header: {other:?}"),
    };
    let tag = m.deliver().delivery_tag;
    (String::from_utf8(m.body).unwrap(), offset, tag)
}

async fn subscribe(raw: &mut RawClient, ch: u16, queue: &str, prefetch: u16, offset: AMQPValue) {
    raw.open_channel(ch).await;
    raw.call(ch, basic_qos(prefetch)).await;
    match raw
        .call(ch, consume(queue, false, &[("x-stream-offset", offset)]))
        .await
    {
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => {}
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
}

fn message_count(b: &TestBroker, queue: &str) -> u32 {
    b.queue(queue).expect("the queue").message_count()
}

#[tokio::test]
async fn a_stream_lives_on_its_home_and_every_node_appends_to_it_and_reads_it() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    let all = [&b1, &b2, &b3];
    agreed_leader(&all).await;
    let mut r1 = b1.raw_open().await;
    assert_eq!(stream(&mut r1, "fanout", &[]).await, 0);
    wait_for_home(&all, "fanout", Some(1), SETTLE).await;

    // Node 2 publishes: each confirm is the home's (appended and on its disk), and only the home
    // has the stream's files.
    let mut r2 = b2.raw_open().await;
    publish(&mut r2, "fanout", &numbered("m", 10)).await;
    assert_eq!(message_count(&b1, "fanout"), 10);
    assert!(stream_files(&b1) > 0);
    assert_eq!((stream_files(&b2), stream_files(&b3)), (0, 0));
    // A declare on another node answers the home's count.
    assert_eq!(stream(&mut r2, "fanout", &[]).await, 10);

    // Node 3 reads it from the start, from an offset and from the last record: the home's
    // offsets, whatever node reads.
    let mut r3 = b3.raw_open().await;
    let all_ten: Vec<(String, i64)> = numbered("m", 10).into_iter().zip(0..10).collect();
    assert_eq!(
        read(&mut r3, 1, "fanout", 10, Some(text("first"))).await,
        all_ten
    );
    assert_eq!(
        read(&mut r3, 2, "fanout", 3, Some(AMQPValue::LongLongInt(7))).await,
        all_ten[7..]
    );
    assert_eq!(
        read(&mut r3, 3, "fanout", 1, Some(text("last"))).await,
        all_ten[9..]
    );
    // (Those consumers go with their connection.)
    drop(r3);
    let mut r3 = b3.raw_open().await;

    // A consumer on node 3 from `next` and one on node 2 from the start with prefetch 3: what
    // node 1 appends next reaches the first without it asking again, and the second gets no more
    // than its prefetch until it acks.
    subscribe(&mut r3, 4, "fanout", 10, text("next")).await;
    subscribe(&mut r2, 5, "fanout", 3, text("first")).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next(&mut r2, 5).await);
    }
    assert_eq!(
        got.iter()
            .map(|(b, o, _)| (b.clone(), *o))
            .collect::<Vec<_>>(),
        all_ten[..3]
    );
    assert!(
        r2.read_frame_within(Duration::from_millis(500))
            .await
            .is_err(),
        "nothing past the prefetch"
    );
    r2.send_method(5, basic_ack(got[2].2, true)).await;
    for i in 3..6 {
        assert_eq!(next(&mut r2, 5).await.1, i);
    }
    // (Node 3's consumer is caught up now; what comes next is appended after it started.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&mut r1, "fanout", &numbered("late", 3)).await;
    for i in 0..3 {
        let (body, offset, _) = next(&mut r3, 4).await;
        assert_eq!((body, offset), (format!("late{i}"), 10 + i));
    }
    // The stream's type on every node (its counts are the home's).
    let listed = b1.brokerctl(&["list_queues"]).await.ok();
    assert!(listed.contains("fanout\tstream\t13\t"), "{listed}");
    let listed = b3.brokerctl(&["list_queues"]).await.ok();
    assert!(listed.contains("fanout\tstream\t"), "{listed}");
}

#[tokio::test]
async fn a_reader_elsewhere_carries_on_after_its_home_restarts_and_a_delete_on_any_node_cancels_it()
{
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    let all = [&b1, &b2, &b3];
    agreed_leader(&all).await;
    let mut r1 = b1.raw_open().await;
    stream(&mut r1, "fanout", &[]).await;
    wait_for_home(&all, "fanout", Some(1), SETTLE).await;
    publish(&mut r1, "fanout", &numbered("m", 4)).await;
    drop(r1);

    let mut r3 = b3.raw_open().await;
    subscribe(&mut r3, 1, "fanout", 50, text("first")).await;
    for i in 0..4 {
        assert_eq!(next(&mut r3, 1).await.1, i);
    }
    // The home goes and comes back: node 3's consumer stays, and gets what is appended after,
    // once and in order, nothing of what it had again.
    let home = b1.stop_keeping_data().await;
    let b1 = home.start().await;
    let all = [&b1, &b2, &b3];
    agreed_leader(&all).await;
    let mut r2 = b2.raw_open().await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        // (Node 2 forwards to the home once its link to the home is back.)
        match r2
            .attempt_publish("", "fanout", warren_tests::raw::NO_PROPERTIES, b"after")
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e:?}");
                r2 = b2.raw_open().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let (body, offset, _) = next(&mut r3, 1).await;
    assert_eq!((body.as_str(), offset), ("after", 4));

    // Deleted on node 2: the home's files are gone, and node 3's consumer with it: declared
    // again (now with node 2 its home), the new stream's messages do not reach it.
    assert!(stream_files(&b1) > 0);
    r2.attempt(queue_delete("fanout")).await.expect("delete-ok");
    wait_for_home(&all, "fanout", None, SETTLE).await;
    assert_eq!(stream_files(&b1), 0);
    stream(&mut r2, "fanout", &[]).await;
    wait_for_home(&all, "fanout", Some(2), SETTLE).await;
    publish(&mut r2, "fanout", &numbered("new", 2)).await;
    match r3.expect_method(1).await {
        AMQPClass::Basic(basic::AMQPMethod::Cancel(_)) => {}
        other => panic!("expected basic.cancel, got {other:?}"),
    }
    let after = r3.read_frame_within(Duration::from_secs(1)).await;
    assert!(
        after.is_err(),
        "the deleted stream's consumer got {:?}",
        after.map(|f| f.map(|f| (f.kind, f.channel, f.payload.len())))
    );
    let mut r1 = b1.raw_open().await;
    let fresh = read(&mut r1, 1, "fanout", 2, Some(text("first"))).await;
    assert_eq!(
        fresh,
        vec![("new0".to_string(), 0), ("new1".to_string(), 1)]
    );
}
