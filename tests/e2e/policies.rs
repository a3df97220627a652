//! Policies through `brokerctl set_policy` / `set_operator_policy` as RabbitMQ defines them: the
//! pattern an unanchored regular expression (OpenStack's `^(?!amq\.).*` included), the highest
//! priority applying, numeric keys taking the lowest of the queue's argument, the policy and the
//! operator policy, the queue's own argument winning for the others, applied at declare and to
//! queues that exist when policies change, RabbitMQ's validation texts, and kept across a restart.

use amq_protocol::protocol::{basic, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use serde_json::Value;
use warren_tests::raw::{basic_get, queue_declare, NO_PROPERTIES};
use warren_tests::{RawClient, TestBroker};

fn declare_with(name: &str, args: &[(&str, AMQPValue)]) -> AMQPClass {
    let mut t = FieldTable::default();
    for (k, v) in args {
        t.insert((*k).into(), v.clone());
    }
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        arguments: t,
        ..Default::default()
    }))
}

/// Publishes `n` messages to `queue` (confirmed).
async fn fill(raw: &mut RawClient, queue: &str, n: usize) {
    for i in 0..n {
        raw.attempt_publish("", queue, NO_PROPERTIES, format!("m{i}").as_bytes())
            .await
            .expect("confirmed");
    }
}

/// Messages in `queue` (passive declare).
async fn count(raw: &mut RawClient, queue: &str) -> u32 {
    match raw
        .attempt(warren_tests::raw::queue_declare_with(
            queue,
            true,
            FieldTable::default(),
        ))
        .await
    {
        Ok(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => ok.message_count,
        other => panic!("passive declare of {queue}: {other:?}"),
    }
}

async fn policies_json(broker: &TestBroker, operator: bool) -> Value {
    let verb = if operator {
        "list_operator_policies"
    } else {
        "list_policies"
    };
    serde_json::from_str(&broker.brokerctl(&["--format", "json", verb]).await.ok()).unwrap()
}

fn queue_row(list: &Value, name: &str) -> Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

async fn queues(broker: &TestBroker) -> Value {
    serde_json::from_str(
        &broker
            .brokerctl(&["--format", "json", "list_queues"])
            .await
            .ok(),
    )
    .unwrap()
}

#[tokio::test]
async fn policies_are_set_listed_cleared_and_refused_with_rabbitmqs_texts() {
    let broker = TestBroker::start().await;
    broker
        .brokerctl(&[
            "set_policy",
            "--priority",
            "1",
            "--apply-to",
            "queues",
            "ttl",
            r"^(?!amq\.).*",
            r#"{"message-ttl":60000,"ha-mode":"all"}"#,
        ])
        .await
        .ok();
    assert_eq!(
        broker.brokerctl(&["list_policies"]).await.ok(),
        "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n/\tttl\t^(?!amq\\.).*\tqueues\t{\"ha-mode\":\"all\",\"message-ttl\":60000}\t1\n"
    );
    for (definition, text) in [
        (r#"{"message-ttl":-1}"#, "-1 is not a valid message TTL"),
        (r#"{"max-age":"10x"}"#, "<<\"10x\">> is not a valid max age"),
        (
            r#"{"foo":"bar"}"#,
            "[{<<\"foo\">>,<<\"bar\">>}] are not recognised policy settings",
        ),
        ("{}", "no policy provided"),
    ] {
        let out = broker
            .brokerctl(&["set_policy", "bad", ".*", definition])
            .await;
        assert!(!out.success, "{definition}");
        assert!(
            out.stderr.contains(&format!("Validation failed\n\n{text}")),
            "{definition}: {out:?}"
        );
    }
    let out = broker
        .brokerctl(&["set_policy", "bad", "(", r#"{"max-length":1}"#])
        .await;
    assert!(
        out.stderr.contains("is not a valid regular expression"),
        "{out:?}"
    );
    let out = broker
        .brokerctl(&[
            "set_policy",
            "--apply-to",
            "nothing",
            "bad",
            ".*",
            r#"{"max-length":1}"#,
        ])
        .await;
    assert!(
        out.stderr.contains("apply-to 'nothing' unrecognised"),
        "{out:?}"
    );
    let out = broker
        .brokerctl(&[
            "set_policy",
            "-p",
            "nowhere",
            "x",
            ".*",
            r#"{"max-length":1}"#,
        ])
        .await;
    assert!(out.stderr.contains("no such vhost 'nowhere'"), "{out:?}");
    let out = broker.brokerctl(&["set_policy", "x", ".*", "[1]"]).await;
    assert!(
        !out.success && out.stderr.contains("a policy definition is a JSON object"),
        "{out:?}"
    );
    // Operator policies take only limits.
    let out = broker
        .brokerctl(&[
            "set_operator_policy",
            "x",
            ".*",
            r#"{"dead-letter-exchange":"x"}"#,
        ])
        .await;
    assert!(
        out.stderr.contains("are not recognised policy settings"),
        "{out:?}"
    );
    broker
        .brokerctl(&["set_operator_policy", "cap", ".*", r#"{"max-length":100}"#])
        .await
        .ok();
    assert_eq!(policies_json(&broker, true).await[0]["name"], "cap");
    assert_eq!(
        policies_json(&broker, false)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    broker.brokerctl(&["clear_policy", "ttl"]).await.ok();
    assert_eq!(policies_json(&broker, false).await, serde_json::json!([]));
    let out = broker.brokerctl(&["clear_policy", "ttl"]).await;
    assert!(
        out.stderr.contains("no policy 'ttl' in vhost '/'"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_policy_applies_to_new_and_existing_queues_and_the_lowest_limit_wins() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.attempt(queue_declare("before"))
        .await
        .expect("declare-ok");
    raw.attempt(queue_declare("amq.skipped"))
        .await
        .expect_err("amq. names are reserved");
    // OpenStack's pattern: everything but amq.*; max-length 3 by policy.
    broker
        .brokerctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "limit",
            r"^(?!amq\.).*",
            r#"{"max-length":3}"#,
        ])
        .await
        .ok();
    fill(&mut raw, "before", 5).await;
    assert_eq!(
        count(&mut raw, "before").await,
        3,
        "applied to a queue that existed"
    );
    raw.attempt(queue_declare("after"))
        .await
        .expect("declare-ok");
    fill(&mut raw, "after", 5).await;
    assert_eq!(count(&mut raw, "after").await, 3, "applied at declare");
    // The queue's own lower argument wins; an operator policy lower still wins over both.
    raw.attempt(declare_with(
        "own",
        &[("x-max-length", AMQPValue::LongInt(2))],
    ))
    .await
    .expect("declare-ok");
    fill(&mut raw, "own", 5).await;
    assert_eq!(count(&mut raw, "own").await, 2);
    broker
        .brokerctl(&["set_operator_policy", "cap", ".*", r#"{"max-length":1}"#])
        .await
        .ok();
    assert_eq!(
        count(&mut raw, "after").await,
        1,
        "trimmed when the operator policy came"
    );
    let list = queues(&broker).await;
    assert_eq!(queue_row(&list, "after")["policy"], "limit");
    assert_eq!(queue_row(&list, "after")["operator_policy"], "cap");
    // Cleared: the queues are back to their own arguments.
    broker
        .brokerctl(&["clear_operator_policy", "cap"])
        .await
        .ok();
    broker.brokerctl(&["clear_policy", "limit"]).await.ok();
    fill(&mut raw, "after", 4).await;
    assert_eq!(count(&mut raw, "after").await, 5);
    assert_eq!(
        queue_row(&queues(&broker).await, "after")["policy"],
        Value::Null
    );
}

#[tokio::test]
async fn dead_lettering_and_ttl_by_policy_and_the_queues_own_exchange_wins() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    for q in ["dlq-policy", "dlq-own"] {
        raw.attempt(queue_declare(q)).await.expect("declare-ok");
    }
    broker
        .brokerctl(&["set_policy", "--priority", "5", "--apply-to", "queues", "dl", "^work", r#"{"message-ttl":50,"dead-letter-exchange":"","dead-letter-routing-key":"dlq-policy"}"#])
        .await
        .ok();
    // A lower-priority policy that would also match is not applied.
    broker
        .brokerctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "other",
            "^work",
            r#"{"max-length":1}"#,
        ])
        .await
        .ok();
    raw.attempt(queue_declare("work"))
        .await
        .expect("declare-ok");
    raw.attempt(declare_with(
        "work-own",
        &[
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString("dlq-own".into()),
            ),
        ],
    ))
    .await
    .expect("declare-ok");
    fill(&mut raw, "work", 2).await;
    fill(&mut raw, "work-own", 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (
        count(&mut raw, "dlq-policy").await,
        count(&mut raw, "dlq-own").await,
    ) != (2, 1)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "dead letters did not arrive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    match raw.attempt(basic_get("dlq-policy", true)).await {
        Ok(AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn policies_survive_a_restart_and_apply_to_recovered_queues() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let durable = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "kept".into(),
        durable: true,
        ..Default::default()
    }));
    raw.attempt(durable.clone()).await.expect("declare-ok");
    broker
        .brokerctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            "limit",
            "^kept$",
            r#"{"max-length":2}"#,
        ])
        .await
        .ok();
    drop(raw);
    let broker = broker.restart().await;
    assert_eq!(policies_json(&broker, false).await[0]["name"], "limit");
    assert_eq!(queue_row(&queues(&broker).await, "kept")["policy"], "limit");
    let mut raw = broker.raw_open().await;
    fill(&mut raw, "kept", 4).await;
    assert_eq!(count(&mut raw, "kept").await, 2);
}

#[tokio::test]
async fn an_alternate_exchange_by_policy_takes_what_an_exchange_cannot_route_and_its_own_argument_wins(
) {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    let exchange = |name: &str, kind: &str, args: &[(&str, AMQPValue)]| {
        let mut t = FieldTable::default();
        for (k, v) in args {
            t.insert((*k).into(), v.clone());
        }
        warren_tests::raw::exchange_declare_with(name, kind, false, t)
    };
    raw.attempt(exchange("ae", "fanout", &[]))
        .await
        .expect("declare-ok");
    raw.attempt(exchange("own-ae", "fanout", &[]))
        .await
        .expect("declare-ok");
    raw.attempt(exchange("orders", "direct", &[]))
        .await
        .expect("declare-ok");
    raw.attempt(exchange(
        "billing",
        "direct",
        &[("alternate-exchange", AMQPValue::LongString("own-ae".into()))],
    ))
    .await
    .expect("declare-ok");
    for (q, x) in [("unrouted", "ae"), ("own-unrouted", "own-ae")] {
        raw.attempt(queue_declare(q)).await.expect("declare-ok");
        raw.attempt(warren_tests::raw::queue_bind(q, x, ""))
            .await
            .expect("bind-ok");
    }
    broker
        .brokerctl(&[
            "set_policy",
            "--apply-to",
            "exchanges",
            "ae",
            "^(orders|billing)$",
            r#"{"alternate-exchange":"ae"}"#,
        ])
        .await
        .ok();
    for x in ["orders", "billing"] {
        raw.attempt_publish(x, "nobody", NO_PROPERTIES, b"lost?")
            .await
            .expect("confirmed");
    }
    assert_eq!(
        (
            count(&mut raw, "unrouted").await,
            count(&mut raw, "own-unrouted").await
        ),
        (1, 1)
    );
    // Cleared: unroutable again.
    broker.brokerctl(&["clear_policy", "ae"]).await.ok();
    raw.attempt_publish("orders", "nobody", NO_PROPERTIES, b"dropped")
        .await
        .expect("confirmed");
    assert_eq!(count(&mut raw, "unrouted").await, 1);
}

#[tokio::test]
async fn queue_mode_and_segment_size_by_policy_apply_to_existing_queues_from_then_on() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_open().await;
    raw.attempt(queue_declare("backlog"))
        .await
        .expect("declare-ok");
    let stream = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "fanout".into(),
        durable: true,
        arguments: {
            let mut t = FieldTable::default();
            t.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("stream".into()),
            );
            t
        },
        ..Default::default()
    }));
    raw.attempt(stream).await.expect("declare-ok");
    broker
        .brokerctl(&[
            "set_policy",
            "--apply-to",
            "classic_queues",
            "lazy",
            "^backlog$",
            r#"{"queue-mode":"lazy"}"#,
        ])
        .await
        .ok();
    broker
        .brokerctl(&[
            "set_policy",
            "--apply-to",
            "streams",
            "small",
            "^fanout$",
            r#"{"stream-max-segment-size-bytes":4096}"#,
        ])
        .await
        .ok();
    fill(&mut raw, "backlog", 10).await;
    let paged = queue_row(&queues(&broker).await, "backlog")["messages_paged_out"].clone();
    assert!(paged.as_u64().unwrap() >= 8, "paged out: {paged}");
    for i in 0..40 {
        raw.attempt_publish("", "fanout", NO_PROPERTIES, format!("{i:0>500}").as_bytes())
            .await
            .expect("confirmed");
    }
    let segments = std::fs::read_dir(broker.path("streams"))
        .unwrap()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).unwrap().count())
        .sum::<usize>();
    assert!(segments > 3, "{segments} segment files");
}
