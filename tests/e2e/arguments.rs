//! Queue and consumer arguments as RabbitMQ 3.13 treats them: validation on declare (406 with
//! RabbitMQ's exact texts, and no queue left behind), equivalence on redeclare (an existing queue is
//! compared before the new arguments are validated), queue types (classic = none, quorum kept;
//! streams are tests/e2e/streams.rs), the OpenStack arguments Warren accepts on purpose, and the
//! consumer arguments x-priority and x-cancel-on-ha-failover. Expectations are those of
//! tests/python/test_queue_features.py and test_compat_arguments.py.

use amq_protocol::protocol::{queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable as RawTable, LongString};
use amqprs::channel::{BasicCancelArguments, BasicConsumeArguments, QueueDeclareArguments};
use amqprs::BasicProperties;
use warren_tests::features::{boolean, int, table, text};
use warren_tests::raw::{queue_declare_with, queue_delete};
use warren_tests::{CloseInfo, RawClient, TestBroker, Timely};

/// Values as pika encodes them: a small int is a signed 32-bit `I`, a str a long string.
fn i(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn raw_table(entries: &[(&str, AMQPValue)]) -> RawTable {
    let mut t = RawTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn precondition(text: String) -> CloseInfo {
    CloseInfo {
        code: 406,
        text,
        class_id: 50,
        method_id: 10,
    }
}

/// A declare on a fresh channel: Ok(()) for declare-ok, or the channel.close.
async fn declare(
    raw: &mut RawClient,
    name: &str,
    args: &[(&str, AMQPValue)],
) -> Result<(), CloseInfo> {
    declare_flags(raw, name, false, args).await
}

async fn declare_flags(
    raw: &mut RawClient,
    name: &str,
    durable: bool,
    args: &[(&str, AMQPValue)],
) -> Result<(), CloseInfo> {
    let method = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        durable,
        arguments: raw_table(args),
        ..Default::default()
    }));
    match raw.attempt(method).await? {
        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)) => Ok(()),
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

async fn exists(raw: &mut RawClient, name: &str) -> bool {
    match raw
        .attempt(queue_declare_with(name, true, RawTable::default()))
        .await
    {
        Ok(_) => true,
        Err(close) => {
            assert_eq!(
                close,
                CloseInfo::new(
                    404,
                    &format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
                    50,
                    10
                )
            );
            false
        }
    }
}

#[tokio::test]
async fn invalid_queue_arguments_are_refused_with_rabbitmq_texts() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let cases: Vec<(&str, AMQPValue, &str)> = vec![
        // check_non_neg_int_arg's type error is this quoted string
        (
            "x-message-ttl",
            s("abc"),
            "\"expected integer, got longstr\"",
        ),
        ("x-message-ttl", i(-1), "{value_negative,-1}"),
        ("x-expires", i(0), "{value_zero,0}"),
        ("x-expires", i(-5), "{value_negative,-5}"),
        ("x-max-length", i(-1), "{value_negative,-1}"),
        ("x-max-length", s("x"), "\"expected integer, got longstr\""),
        ("x-max-length-bytes", i(-3), "{value_negative,-3}"),
        ("x-max-priority", i(300), "{max_value_exceeded,300}"),
        ("x-max-priority", i(256), "{max_value_exceeded,256}"),
        ("x-max-priority", i(-1), "{value_negative,-1}"),
        ("x-overflow", s("bogus"), "invalid_overflow"),
        (
            "x-dead-letter-routing-key",
            s("k"),
            "routing_key_but_no_dlx_defined",
        ),
        (
            "x-queue-type",
            s("bogus"),
            "\"unsupported queue type 'bogus'\"",
        ),
        (
            "x-queue-mode",
            s("bogus"),
            "\"unsupported queue mode 'bogus'\"",
        ),
        ("x-queue-mode", i(1), "{unacceptable_type,signedint}"),
        (
            "x-single-active-consumer",
            s("yes"),
            "{unacceptable_type,longstr}",
        ),
    ];
    let mut wrong = Vec::new();
    for (n, (arg, value, reason)) in cases.into_iter().enumerate() {
        let q = format!("q{n}");
        let expected = precondition(format!(
            "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/': {reason}"
        ));
        let got = declare(&mut raw, &q, &[(arg, value.clone())]).await;
        if got != Err(expected.clone()) {
            wrong.push(format!(
                "{arg}={value:?}: expected {expected:?}, got {got:?}"
            ));
        }
        if exists(&mut raw, &q).await {
            wrong.push(format!("{arg}={value:?}: the refused queue {q} exists"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn dead_letter_exchange_of_the_wrong_type_is_refused() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    assert_eq!(
        declare(&mut raw, "q", &[("x-dead-letter-exchange", i(5))]).await,
        Err(precondition(
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"
                .to_string()
        ))
    );
    assert!(!exists(&mut raw, "q").await);
}

#[tokio::test]
async fn largest_max_priority_and_unknown_arguments_are_accepted() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    assert_eq!(
        declare(&mut raw, "prio", &[("x-max-priority", i(255))]).await,
        Ok(())
    );
    let unknown = [
        ("x-foo", s("a")),
        ("x-bar", i(1)),
        ("x-warren-nonsense", AMQPValue::Boolean(true)),
    ];
    assert_eq!(declare(&mut raw, "odd", &unknown).await, Ok(()));
    // Unknown arguments are not part of the equivalence check either.
    assert_eq!(declare(&mut raw, "odd", &[("x-foo", s("b"))]).await, Ok(()));
    assert_eq!(declare(&mut raw, "odd", &[]).await, Ok(()));

    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.select_confirms().await;
    ch.publish_acked("", "odd", BasicProperties::default(), b"works")
        .await;
    assert_eq!(ch.get_one("odd", true).await.body, b"works");
}

fn inequivalent(arg: &str, q: &str, detail: &str) -> CloseInfo {
    precondition(format!(
        "PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{q}' in vhost '/': {detail}"
    ))
}

#[tokio::test]
async fn redeclare_with_different_arguments_is_406_and_changes_nothing() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    type Args = Vec<(&'static str, AMQPValue)>;
    let cases: Vec<(Args, Args, &str, &str)> = vec![
        (
            vec![("x-max-length", i(10))],
            vec![("x-max-length", i(20))],
            "x-max-length",
            "received '20' but current is '10'",
        ),
        (
            vec![],
            vec![("x-max-length", i(10))],
            "x-max-length",
            "received the value '10' of type 'signedint' but current is none",
        ),
        (
            vec![("x-message-ttl", i(1000))],
            vec![("x-message-ttl", i(2000))],
            "x-message-ttl",
            "received '2000' but current is '1000'",
        ),
        (
            vec![("x-message-ttl", i(1000))],
            vec![],
            "x-message-ttl",
            "received none but current is the value '1000' of type 'signedint'",
        ),
        (
            vec![],
            vec![("x-message-ttl", i(1000))],
            "x-message-ttl",
            "received the value '1000' of type 'signedint' but current is none",
        ),
        // The existing queue is compared before the new arguments are validated: a string is a
        // different value, and an invalid value is just a different one.
        (
            vec![("x-message-ttl", i(1000))],
            vec![("x-message-ttl", s("1000"))],
            "x-message-ttl",
            "received '1000' but current is '1000'",
        ),
        (
            vec![("x-max-length", i(10))],
            vec![("x-max-length", i(-1))],
            "x-max-length",
            "received '-1' but current is '10'",
        ),
        (
            vec![("x-dead-letter-exchange", s("a"))],
            vec![("x-dead-letter-exchange", s("b"))],
            "x-dead-letter-exchange",
            "received 'b' but current is 'a'",
        ),
        (
            vec![("x-dead-letter-exchange", s("a"))],
            vec![],
            "x-dead-letter-exchange",
            "received none but current is the value 'a' of type 'longstr'",
        ),
        (
            vec![],
            vec![("x-dead-letter-exchange", s("b"))],
            "x-dead-letter-exchange",
            "received the value 'b' of type 'longstr' but current is none",
        ),
        (
            vec![("x-expires", i(10000))],
            vec![("x-expires", i(20000))],
            "x-expires",
            "received '20000' but current is '10000'",
        ),
        (
            vec![("x-max-priority", i(5))],
            vec![],
            "x-max-priority",
            "received none but current is the value '5' of type 'signedint'",
        ),
    ];
    let mut wrong = Vec::new();
    for (n, (first, second, arg, detail)) in cases.into_iter().enumerate() {
        let q = format!("q{n}");
        if let Err(close) = declare(&mut raw, &q, &first).await {
            wrong.push(format!(
                "{q} {first:?}: first declare refused with {close:?}"
            ));
            continue;
        }
        let expected = inequivalent(arg, &q, detail);
        let got = declare(&mut raw, &q, &second).await;
        if got != Err(expected.clone()) {
            wrong.push(format!(
                "{q} {first:?} then {second:?}: expected {expected:?}, got {got:?}"
            ));
        }
        // The queue is unchanged: the first declaration still holds.
        if let Err(close) = declare(&mut raw, &q, &first).await {
            wrong.push(format!("{q} {first:?}: redeclare refused with {close:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn equivalent_redeclares_are_accepted() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let both = [("x-message-ttl", i(1000)), ("x-max-length", i(3))];
    assert_eq!(declare(&mut raw, "q", &both).await, Ok(()));
    let reversed = [("x-max-length", i(3)), ("x-message-ttl", i(1000))];
    assert_eq!(declare(&mut raw, "q", &reversed).await, Ok(()));
    // Integers of another width are the same value (RabbitMQ compares integer type classes).
    let wide = [
        ("x-max-length", AMQPValue::LongLongInt(3)),
        ("x-message-ttl", AMQPValue::LongLongInt(1000)),
    ];
    assert_eq!(declare(&mut raw, "q", &wide).await, Ok(()));
    // x-queue-type classic is the same as no type at all, both ways.
    let classic = [("x-queue-type", s("classic"))];
    assert_eq!(declare(&mut raw, "a", &classic).await, Ok(()));
    assert_eq!(declare(&mut raw, "a", &[]).await, Ok(()));
    assert_eq!(declare(&mut raw, "b", &[]).await, Ok(()));
    assert_eq!(declare(&mut raw, "b", &classic).await, Ok(()));
}

#[tokio::test]
async fn quorum_queues_are_accepted_and_keep_their_type() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let quorum = [("x-queue-type", s("quorum"))];
    assert_eq!(declare_flags(&mut raw, "qq", true, &quorum).await, Ok(()));
    assert_eq!(declare_flags(&mut raw, "qq", true, &quorum).await, Ok(()));

    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.select_confirms().await;
    let mut persistent = BasicProperties::default();
    persistent.with_delivery_mode(2);
    ch.publish_acked("", "qq", persistent, b"replicated").await;
    assert_eq!(ch.get_one("qq", true).await.body, b"replicated");

    assert_eq!(
        declare_flags(&mut raw, "qq", true, &[]).await,
        Err(inequivalent(
            "x-queue-type",
            "qq",
            "received none but current is the value 'quorum' of type 'longstr'"
        ))
    );
    let close = declare_flags(&mut raw, "qq", true, &[("x-queue-type", s("classic"))])
        .await
        .expect_err("a quorum queue redeclared as classic");
    assert_eq!((close.code, close.class_id, close.method_id), (406, 50, 10));
    assert!(
        close
            .text
            .starts_with("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'qq'"),
        "{close:?}"
    );

    assert_eq!(declare_flags(&mut raw, "cq", true, &[]).await, Ok(()));
    assert_eq!(
        declare_flags(&mut raw, "cq", true, &quorum).await,
        Err(inequivalent(
            "x-queue-type",
            "cq",
            "received the value 'quorum' of type 'longstr' but current is none"
        ))
    );
    match raw.attempt(queue_delete("qq")).await {
        Ok(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))) => {}
        other => panic!("expected queue.delete-ok, got {other:?}"),
    }
}

#[tokio::test]
async fn openstack_compatibility_arguments_are_accepted() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    let mut ha = QueueDeclareArguments::new("ha");
    ha.exclusive(true)
        .arguments(table([("x-ha-policy", text("all"))]));
    ch.declare(ha.clone()).await;
    ch.declare(ha).await; // an equivalent redeclare
    let mut memory = QueueDeclareArguments::new("mem");
    memory.exclusive(true).arguments(table([
        ("x-max-in-memory-length", int(10)),
        ("x-max-in-memory-bytes", int(1000)),
    ]));
    ch.declare(memory.clone()).await;
    ch.declare(memory).await;

    // The consumer argument x-cancel-on-ha-failover too.
    let mut args = BasicConsumeArguments::new("ha", "failover");
    args.arguments = table([("x-cancel-on-ha-failover", boolean(true))]);
    let (tag, _consumer) = ch.consume_with(args).await;
    ch.basic_cancel(BasicCancelArguments::new(&tag))
        .timely()
        .await
        .expect("basic.cancel-ok");
}

#[tokio::test]
async fn consumer_priority_must_be_an_integer() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    let mut ok = BasicConsumeArguments::new("q", "prio");
    ok.arguments = table([("x-priority", int(5))]);
    let _accepted = ch.consume_with(ok).await;

    let bad_ch = client.channel().await;
    let mut bad = BasicConsumeArguments::new("q", "bad");
    bad.arguments = table([("x-priority", text("high"))]);
    let r = bad_ch.basic_consume_rx(bad).timely().await;
    assert!(r.is_err(), "x-priority as a string was accepted");
    // rabbit_amqqueue:check_int_arg/2: {error, "expected integer, got ~tp"}, printed with ~p.
    assert_eq!(
        bad_ch.expect_close().await,
        CloseInfo::new(
            406,
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'q' in vhost '/': \"expected integer, got longstr\"",
            60,
            20
        )
    );
}
