//! Stream queues (`x-queue-type: stream`, oslo.messaging's `rabbit_stream_fanout`): reading from
//! any offset with the offset in every delivery, independent readers, nothing removed by acks,
//! messages and offsets kept across a restart, retention by size in whole segments, files removed
//! with the queue, and RabbitMQ 3.10's refusals with their codes and texts (the same expectations as
//! tests/python/test_streams.py, which also runs against RabbitMQ).

use amq_protocol::protocol::{basic, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use warren_protocol::content::BasicProperties;
use warren_tests::raw::{basic_ack, basic_qos, queue_delete, NO_PROPERTIES};
use warren_tests::{CloseInfo, RawClient, TestBroker};

pub(crate) fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn declare(
    name: &str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    args: &[(&str, AMQPValue)],
) -> AMQPClass {
    let mut all = vec![("x-queue-type", text("stream"))];
    all.extend(args.iter().cloned());
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        durable,
        exclusive,
        auto_delete,
        arguments: table(&all),
        ..Default::default()
    }))
}

pub(crate) fn consume(queue: &str, no_ack: bool, args: &[(&str, AMQPValue)]) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: queue.into(),
        consumer_tag: "".into(),
        no_ack,
        arguments: table(args),
        ..Default::default()
    }))
}

/// Declares stream `name` (durable, with `args`); its message count.
pub(crate) async fn stream(raw: &mut RawClient, name: &str, args: &[(&str, AMQPValue)]) -> u32 {
    match raw.attempt(declare(name, true, false, false, args)).await {
        Ok(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => ok.message_count,
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

/// Publishes `bodies` to `queue` on a confirming channel and waits for every confirm.
pub(crate) async fn publish(raw: &mut RawClient, queue: &str, bodies: &[String]) {
    for b in bodies {
        raw.attempt_publish("", queue, NO_PROPERTIES, b.as_bytes())
            .await
            .expect("the publish is confirmed");
    }
}

/// Consumes `n` messages from `queue` on channel `ch` (prefetch `n`) from `offset`; (body, offset).
pub(crate) async fn read(
    raw: &mut RawClient,
    ch: u16,
    queue: &str,
    n: usize,
    offset: Option<AMQPValue>,
) -> Vec<(String, i64)> {
    raw.open_channel(ch).await;
    raw.call(ch, basic_qos(n as u16)).await;
    let args: Vec<(&str, AMQPValue)> = offset.into_iter().map(|o| ("x-stream-offset", o)).collect();
    match raw.call(ch, consume(queue, false, &args)).await {
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => {}
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
    let mut out = Vec::new();
    let mut last_tag = 0;
    for _ in 0..n {
        let m = raw.expect_message(ch).await;
        last_tag = m.deliver().delivery_tag;
        let props = BasicProperties::parse(&m.properties).expect("properties");
        let headers = props.headers_table().expect("headers");
        let offset = match headers.inner().get("x-stream-offset") {
            Some(AMQPValue::LongLongInt(o)) => *o,
            other => panic!("x-stream-offset header: {other:?}"),
        };
        out.push((String::from_utf8(m.body).unwrap(), offset));
    }
    raw.send_method(ch, basic_ack(last_tag, true)).await;
    out
}

pub(crate) fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

pub(crate) fn stream_files(broker: &TestBroker) -> usize {
    walk(&broker.path("streams"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_stream_is_read_from_any_offset_and_acks_remove_nothing() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    assert_eq!(stream(&mut raw, "s", &[]).await, 0);
    publish(&mut raw, "s", &numbered("m", 10)).await;
    let all = read(&mut raw, 1, "s", 10, Some(text("first"))).await;
    assert_eq!(
        all,
        numbered("m", 10).into_iter().zip(0..10).collect::<Vec<_>>()
    );
    // From an offset (oslo resumes after the last offset it saw), again after the acks above.
    let from7 = read(&mut raw, 2, "s", 3, Some(AMQPValue::LongLongInt(7))).await;
    assert_eq!(from7, all[7..]);
    // "last": the newest record.
    assert_eq!(
        read(&mut raw, 3, "s", 1, Some(text("last"))).await,
        all[9..]
    );
    // The declare-ok counts the messages kept, acked or not; brokerctl shows the type (deployment
    // prechecks read it).
    assert_eq!(stream(&mut raw, "s", &[]).await, 10);
    assert_eq!(
        broker.brokerctl(&["list_queues"]).await.ok(),
        "name\ttype\tmessages\tconsumers\tdurable\texclusive\tauto_delete\tpolicy\ns\tstream\t10\t3\ttrue\tfalse\tfalse\t\n"
    );
}

#[tokio::test]
async fn a_consumer_reads_only_what_comes_after_by_default_and_from_a_time() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    stream(&mut raw, "s", &[]).await;
    publish(&mut raw, "s", &["old".into()]).await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    raw.open_channel(1).await;
    raw.call(1, basic_qos(5)).await;
    raw.call(1, consume("s", false, &[])).await;
    let mut publisher = broker.raw_open().await;
    publish(&mut publisher, "s", &["new".into()]).await;
    let m = raw.expect_message(1).await;
    assert_eq!(m.body, b"new");
    // A timestamp (seconds) starts at the first message published at or after it; an interval
    // back from now reads both.
    let got = read(&mut raw, 2, "s", 1, Some(AMQPValue::Timestamp(since + 1))).await;
    assert_eq!(got, vec![("new".to_string(), 1)]);
    let got = read(&mut raw, 3, "s", 2, Some(text("10m"))).await;
    assert_eq!(got, vec![("old".to_string(), 0), ("new".to_string(), 1)]);
}

#[tokio::test]
async fn prefetch_bounds_what_a_stream_consumer_is_sent() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    stream(&mut raw, "s", &[]).await;
    publish(&mut raw, "s", &numbered("m", 20)).await;
    raw.open_channel(1).await;
    raw.call(1, basic_qos(3)).await;
    raw.call(
        1,
        consume("s", false, &[("x-stream-offset", text("first"))]),
    )
    .await;
    for i in 0..3 {
        assert_eq!(raw.expect_message(1).await.body, format!("m{i}").as_bytes());
    }
    assert!(
        raw.read_frame_within(std::time::Duration::from_millis(300))
            .await
            .is_err(),
        "nothing past the prefetch"
    );
    raw.send_method(1, basic_ack(3, true)).await;
    for i in 3..6 {
        assert_eq!(raw.expect_message(1).await.body, format!("m{i}").as_bytes());
    }
}

#[tokio::test]
async fn a_stream_keeps_its_messages_and_offsets_across_a_restart() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    stream(&mut raw, "s", &[("x-max-age", text("7D"))]).await;
    publish(&mut raw, "s", &numbered("m", 5)).await;
    drop(raw);
    let broker = broker.restart().await;
    let mut raw = broker.raw_open().await;
    assert_eq!(stream(&mut raw, "s", &[("x-max-age", text("7D"))]).await, 5);
    publish(&mut raw, "s", &["after".into()]).await;
    let got = read(&mut raw, 1, "s", 6, Some(text("first"))).await;
    assert_eq!(
        got[..5],
        numbered("m", 5).into_iter().zip(0..5).collect::<Vec<_>>()[..]
    );
    assert_eq!(got[5], ("after".to_string(), 5));
}

#[tokio::test]
async fn retention_by_size_drops_whole_old_segments_and_readers_start_at_what_is_kept() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let limits = [
        ("x-max-length-bytes", AMQPValue::LongInt(20_000)),
        ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(5_000)),
    ];
    stream(&mut raw, "s", &limits).await;
    let body = "x".repeat(500);
    publish(&mut raw, "s", &vec![body; 200]).await;
    let kept = stream(&mut raw, "s", &limits).await;
    assert!((20..60).contains(&kept), "{kept} messages kept");
    assert!(
        stream_files(&broker) <= 6,
        "{} files",
        stream_files(&broker)
    );
    let first = read(&mut raw, 1, "s", 1, Some(text("first"))).await;
    assert_eq!(first[0].1, 200 - i64::from(kept));
}

#[tokio::test]
async fn deleting_a_stream_cancels_its_consumers_and_removes_its_files() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    stream(&mut raw, "s", &[]).await;
    publish(&mut raw, "s", &numbered("m", 3)).await;
    assert!(stream_files(&broker) > 0);
    raw.attempt(queue_delete("s")).await.expect("delete-ok");
    assert_eq!(stream_files(&broker), 0);
    // Declared again: a new, empty stream.
    assert_eq!(stream(&mut raw, "s", &[]).await, 0);
}

fn precondition(text: String) -> CloseInfo {
    CloseInfo {
        code: 406,
        text: format!("PRECONDITION_FAILED - {text}"),
        class_id: 50,
        method_id: 10,
    }
}

#[tokio::test]
async fn declares_are_refused_with_rabbitmqs_texts() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let q = "queue 'r' in vhost '/'";
    for (durable, exclusive, auto_delete, what) in [
        (true, true, false, "exclusive-owner"),
        (true, false, true, "auto-delete"),
        (false, false, false, "non-durable"),
    ] {
        let close = raw
            .attempt(declare("r", durable, exclusive, auto_delete, &[]))
            .await
            .unwrap_err();
        assert_eq!(
            close,
            precondition(format!("invalid property '{what}' for {q}"))
        );
    }
    for (arg, value, text_) in [
        (
            "x-message-ttl",
            AMQPValue::LongInt(5),
            format!("invalid arg 'x-message-ttl' for {q} of queue type rabbit_stream_queue"),
        ),
        (
            "x-max-age",
            text("10x"),
            format!("invalid arg 'x-max-age' for {q}: invalid_max_age"),
        ),
        (
            "x-max-length-bytes",
            AMQPValue::LongInt(-1),
            format!("invalid arg 'x-max-length-bytes' for {q}: {{value_negative,-1}}"),
        ),
        (
            "x-stream-max-segment-size-bytes",
            AMQPValue::LongLongInt(3_000_000_001),
            "Exceeded max value for x-stream-max-segment-size-bytes".into(),
        ),
    ] {
        let close = raw
            .attempt(declare("r", true, false, false, &[(arg, value)]))
            .await
            .unwrap_err();
        assert_eq!(close, precondition(text_));
    }
    assert_eq!(
        stream_files(&broker),
        0,
        "nothing left of the refused declares"
    );
}

#[tokio::test]
async fn consumers_gets_and_nacks_are_refused_as_rabbitmq_refuses_them() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    stream(&mut raw, "s", &[]).await;
    publish(&mut raw, "s", &["m".into()]).await;
    let q = "queue 's' in vhost '/'";
    let consume_close = |text: String| CloseInfo {
        code: 406,
        text: format!("PRECONDITION_FAILED - {text}"),
        class_id: 60,
        method_id: 20,
    };
    // No prefetch.
    let close = raw.attempt(consume("s", false, &[])).await.unwrap_err();
    assert_eq!(
        close,
        consume_close(format!("consumer prefetch count is not set for '{q}'"))
    );
    // A bad offset, a consumer argument of another queue type (checked before the prefetch).
    let close = raw
        .attempt(consume("s", false, &[("x-stream-offset", text("10x"))]))
        .await
        .unwrap_err();
    assert_eq!(
        close,
        consume_close(format!(
            "invalid arg 'x-stream-offset' for {q}: {{invalid_stream_offset_arg,{{longstr,<<\"10x\">>}}}}"
        ))
    );
    let close = raw
        .attempt(consume(
            "s",
            false,
            &[("x-priority", AMQPValue::LongInt(1))],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        close,
        consume_close(format!(
            "invalid arg 'x-priority' for {q} of queue type rabbit_stream_queue"
        ))
    );
    // x-stream-offset on a classic queue.
    raw.attempt(AMQPClass::Queue(queue::AMQPMethod::Declare(
        queue::Declare {
            queue: "c".into(),
            ..Default::default()
        },
    )))
    .await
    .expect("declare-ok");
    let close = raw
        .attempt(consume("c", false, &[("x-stream-offset", text("first"))]))
        .await
        .unwrap_err();
    assert_eq!(
        close,
        consume_close("invalid arg 'x-stream-offset' for queue 'c' in vhost '/' of queue type rabbit_classic_queue".into())
    );
    // Connection errors (540): automatic acks, basic.get, global qos, nack.
    let not_implemented = |text: String, class_id, method_id| CloseInfo {
        code: 540,
        text: format!("NOT_IMPLEMENTED - {text}"),
        class_id,
        method_id,
    };
    let mut c = broker.raw_open().await;
    c.open_channel(1).await;
    c.call(1, basic_qos(10)).await;
    c.send_method(1, consume("s", true, &[])).await;
    assert_eq!(
        c.expect_connection_close().await,
        not_implemented(
            format!("automatic acknowledgement not supported by stream queues {q}"),
            60,
            20
        )
    );
    let mut c = broker.raw_open().await;
    c.open_channel(1).await;
    c.send_method(1, warren_tests::raw::basic_get("s", false))
        .await;
    assert_eq!(
        c.expect_connection_close().await,
        not_implemented(
            format!("basic.get not supported by stream queues {q}"),
            60,
            70
        )
    );
    let mut c = broker.raw_open().await;
    c.open_channel(1).await;
    c.call(1, basic_qos(10)).await;
    c.call(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: true,
        })),
    )
    .await;
    c.send_method(1, consume("s", false, &[])).await;
    assert_eq!(
        c.expect_connection_close().await,
        not_implemented(format!("{q} does not support global qos"), 60, 20)
    );
    let mut c = broker.raw_open().await;
    c.open_channel(1).await;
    c.call(1, basic_qos(10)).await;
    c.call(
        1,
        consume("s", false, &[("x-stream-offset", text("first"))]),
    )
    .await;
    let tag = c.expect_message(1).await.deliver().delivery_tag;
    c.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: tag,
            multiple: false,
            requeue: true,
        })),
    )
    .await;
    assert_eq!(
        c.expect_connection_close().await,
        not_implemented(
            format!("basic.nack and basic.reject not supported by stream queues {q}"),
            60,
            120
        )
    );
    // The stream still serves.
    assert_eq!(
        read(&mut raw, 1, "s", 1, Some(text("first"))).await,
        vec![("m".to_string(), 0)]
    );
}

#[tokio::test]
async fn an_idle_stream_drops_its_segments_past_their_age() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let limits = [
        ("x-max-age", text("1s")),
        ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(4096)),
    ];
    stream(&mut raw, "s", &limits).await;
    publish(&mut raw, "s", &vec!["x".repeat(500); 60]).await;
    assert_eq!(stream(&mut raw, "s", &limits).await, 60);
    // Nothing is published from now on: the retention timer alone removes the old segments.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let kept = stream(&mut raw, "s", &limits).await;
        if kept < 60 {
            assert!(kept <= 10, "{kept} kept: only the active segment's");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old segments were never removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
