//! Topic write permissions hold on every path into a topic exchange (PROBE F2), not only on the
//! publisher's own routing key: an alternate exchange, a dead-letter exchange (with or without a fixed
//! `x-dead-letter-routing-key`), an exchange-to-exchange binding and CC/BCC keys. alice is confined to
//! `^alice\.` on amq.topic; bob's queue is bound there with `bob.#`. Every route alice builds towards
//! it must deliver her `alice.*` keys (so the path works) and drop her `bob.*` keys, auditing each.

use std::time::Duration;

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use warren_broker::config::UserConfig;
use warren_tests::raw::{
    encode_properties, exchange_bind, exchange_declare, exchange_declare_with, queue_bind,
    queue_declare, queue_declare_with, NO_PROPERTIES,
};
use warren_tests::users::{topic, user};
use warren_tests::{RawClient, TestBroker};

use super::{granted, login, refused, QUEUE_DECLARE};

fn confined(name: &str) -> UserConfig {
    let own = format!("^{name}\\.");
    let objects = format!("^({name}\\..*|amq\\.topic)$");
    let mut u = user(name, &[("/", &own, &objects, &objects)]);
    u.topic_permissions = vec![topic("/", "amq.topic", &own, &own)];
    u
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.audit.path = c.data_dir.join("audit.jsonl").display().to_string();
        c.users.push(confined("alice"));
        c.users.push(confined("bob"));
    })
    .await
}

/// alice logged in, her queue `alice.sink` bound to amq.topic with `alice.#`.
async fn alice_with_her_sink(broker: &TestBroker) -> RawClient {
    let mut alice = login(broker, "alice", "/").await;
    granted(
        "alice.sink",
        alice.attempt(queue_declare("alice.sink")).await,
    );
    granted(
        "bind alice.#",
        alice
            .attempt(queue_bind("alice.sink", "amq.topic", "alice.#"))
            .await,
    );
    alice
}

/// The bodies in `queue` (drained by admin), waiting until `expected` arrived or 3 s passed.
async fn bodies(broker: &TestBroker, queue: &str, expected: usize) -> Vec<String> {
    let client = broker.connect().await;
    let ch = client.channel().await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        got.extend(
            ch.drain(queue)
                .await
                .into_iter()
                .map(|d| String::from_utf8_lossy(&d.body).into_owned()),
        );
        if got.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything that would still arrive after the expected ones.
    tokio::time::sleep(Duration::from_millis(100)).await;
    got.extend(
        ch.drain(queue)
            .await
            .into_iter()
            .map(|d| String::from_utf8_lossy(&d.body).into_owned()),
    );
    client.close().await;
    got.sort();
    got
}

#[tokio::test]
async fn no_hop_carries_a_confined_key_into_a_topic_exchange() {
    let broker = broker().await;
    let mut bob = login(&broker, "bob", "/").await;
    granted(
        "bob.private",
        bob.attempt(queue_declare("bob.private")).await,
    );
    granted(
        "bind bob.#",
        bob.attempt(queue_bind("bob.private", "amq.topic", "bob.#"))
            .await,
    );
    let mut alice = alice_with_her_sink(&broker).await;

    // 1. A dead-letter exchange without a fixed key: the original key is checked when it dead-letters.
    granted(
        "alice.x",
        alice.attempt(exchange_declare("alice.x", "topic")).await,
    );
    let expiring = table(&[
        ("x-dead-letter-exchange", text("amq.topic")),
        ("x-message-ttl", AMQPValue::LongInt(1)),
    ]);
    granted(
        "alice.d2",
        alice
            .attempt(queue_declare_with("alice.d2", false, expiring))
            .await,
    );
    granted(
        "bind alice.d2",
        alice.attempt(queue_bind("alice.d2", "alice.x", "#")).await,
    );
    for key in ["bob.secret2", "alice.dl2"] {
        alice
            .attempt_publish("alice.x", key, NO_PROPERTIES, key.as_bytes())
            .await
            .expect("publish to alice's own exchange");
    }

    // 2. An alternate exchange.
    let ae = table(&[("alternate-exchange", text("amq.topic"))]);
    granted(
        "alice.ae",
        alice
            .attempt(exchange_declare_with("alice.ae", "topic", false, ae))
            .await,
    );
    for key in ["bob.secret3", "alice.ae3"] {
        alice
            .attempt_publish("alice.ae", key, NO_PROPERTIES, key.as_bytes())
            .await
            .expect("publish to alice.ae");
    }

    // 3. An exchange-to-exchange binding into amq.topic.
    granted(
        "alice.fwd",
        alice.attempt(exchange_declare("alice.fwd", "topic")).await,
    );
    granted(
        "bind amq.topic <- alice.fwd",
        alice
            .attempt(exchange_bind("amq.topic", "alice.fwd", "#"))
            .await,
    );
    for key in ["bob.secret4", "alice.e2e4"] {
        alice
            .attempt_publish("alice.fwd", key, NO_PROPERTIES, key.as_bytes())
            .await
            .expect("publish to alice.fwd");
    }

    // 4. CC and BCC keys beside an allowed routing key.
    for (header, key) in [("CC", "bob.secret5"), ("BCC", "bob.secret6")] {
        let headers = table(&[(
            header,
            AMQPValue::FieldArray(FieldArray::from(vec![text(key)])),
        )]);
        let props = encode_properties(&AMQPProperties::default().with_headers(headers));
        alice
            .attempt_publish("amq.topic", "alice.cc", &props, key.as_bytes())
            .await
            .expect("alice.cc is alice's key");
    }

    assert_eq!(
        bodies(&broker, "alice.sink", 5).await,
        [
            "alice.ae3",
            "alice.dl2",
            "alice.e2e4",
            "bob.secret5",
            "bob.secret6"
        ],
        "alice's own keys take every route (the CC/BCC messages arrive by their alice.cc key)"
    );
    assert_eq!(
        bodies(&broker, "bob.private", 0).await,
        Vec::<String>::new(),
        "none of alice's bob.* keys reached bob's queue"
    );

    // Each dropped hop is in the audit log.
    let audit = std::fs::read_to_string(&broker.config.audit.path).expect("audit log");
    for key in [
        "bob.secret2",
        "bob.secret3",
        "bob.secret4",
        "bob.secret5",
        "bob.secret6",
    ] {
        let line = audit
            .lines()
            .find(|l| l.contains(&format!("topic '{key}'")))
            .unwrap_or_else(|| panic!("no audit line for {key}: {audit}"));
        assert!(
            line.contains("\"result\":\"denied\"") && line.contains("\"user\":\"alice\""),
            "{line}"
        );
    }
}

#[tokio::test]
async fn a_fixed_dead_letter_key_is_checked_for_the_declarer_at_declare() {
    let broker = broker().await;
    let mut alice = login(&broker, "alice", "/").await;
    let fixed = |key: &str| {
        table(&[
            ("x-dead-letter-exchange", text("amq.topic")),
            ("x-dead-letter-routing-key", text(key)),
            ("x-message-ttl", AMQPValue::LongInt(1)),
        ])
    };
    refused(
        alice
            .attempt(queue_declare_with("alice.d8", false, fixed("bob.secret")))
            .await,
        "write access to topic 'bob.secret' in exchange 'amq.topic' in vhost '/' refused for user 'alice'",
        QUEUE_DECLARE,
    );
    granted(
        "a key alice may write",
        alice
            .attempt(queue_declare_with("alice.d9", false, fixed("alice.dead")))
            .await,
    );
}

/// A fixed dead-letter key is checked again when it routes, on the declarer's behalf: narrowing the
/// declarer's topic permission after the declare takes effect (review of PROBE F2's fix).
#[tokio::test]
async fn a_fixed_dead_letter_key_follows_the_declarers_permission_as_it_changes() {
    let broker = broker().await;
    let mut alice = alice_with_her_sink(&broker).await;
    let args = table(&[
        ("x-dead-letter-exchange", text("amq.topic")),
        ("x-dead-letter-routing-key", text("alice.dead")),
        ("x-message-ttl", AMQPValue::LongInt(1)),
    ]);
    granted(
        "alice.d9",
        alice
            .attempt(queue_declare_with("alice.d9", false, args))
            .await,
    );
    // admin publishes into alice's queue; the dead letters go on alice's behalf.
    let admin = broker.connect().await;
    let ch = admin.channel().await;
    ch.publish("", "alice.d9", b"first").await;
    assert_eq!(bodies(&broker, "alice.sink", 1).await, ["first"]);
    broker
        .admin()
        .ok(
            serde_json::json!({"command": "set_topic_permissions", "vhost": "/", "user": "alice",
                               "exchange": "amq.topic", "write": "^nothing$", "read": "^alice\\."}),
        )
        .await;
    ch.publish("", "alice.d9", b"second").await;
    assert_eq!(
        bodies(&broker, "alice.sink", 0).await,
        Vec::<String>::new(),
        "alice may no longer write alice.dead: the dead letter is dropped"
    );
    admin.close().await;
}
