//! Recovery never drops data silently (issue 11 point 7): a stored queue whose arguments today's
//! validation refuses (a rule tightened between versions) is restored with its messages, the refused
//! argument reported and not applied; a stored exchange of an unknown kind or a record that does not
//! parse is reported and left in the log; stored messages are never deleted because a record failed
//! to parse.

use std::path::Path;

use amq_protocol::types::{AMQPValue, FieldTable};
use amqprs::channel::QueueDeclareArguments;
use amqprs::BasicProperties;
use warren_broker::meta::legacy::{StoredExchange, StoredQueue};
use warren_broker::meta::records::{exchange_key, queue_key};
use warren_broker::meta::{codec, MetaCommand};
use warren_broker::persist::Durability;
use warren_tests::client::bodies;
use warren_tests::TestBroker;

/// Writes `key` = `value` as an earlier version stored definitions (JSON) into the log of the
/// (stopped) broker in `dir`.
fn store(dir: &Path, key: String, value: &impl serde::Serialize) {
    let (log, _) = Durability::open(dir).expect("open the log");
    let value = bytes::Bytes::from(serde_json::to_vec(value).expect("json"));
    log.write(
        vec![warren_storage::log::record::Record::Put { key, value }],
        None,
    );
    log.flush().expect("flush");
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// Declares the durable queue `name` and publishes `count` confirmed persistent messages to it,
/// `{prefix}0`, `{prefix}1`, ...
async fn durable_queue_with(broker: &TestBroker, name: &str, prefix: &str, count: usize) {
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.select_confirms().await;
    let mut args = QueueDeclareArguments::new(name);
    args.durable(true);
    ch.declare(args).await;
    let mut persistent = BasicProperties::default();
    persistent.with_delivery_mode(2);
    for i in 0..count {
        let body = format!("{prefix}{i}");
        ch.publish_acked("", name, persistent.clone(), body.as_bytes())
            .await;
    }
    client.close().await;
}

#[tokio::test]
async fn a_stored_queue_with_an_argument_now_refused_keeps_its_messages() {
    let broker = TestBroker::start().await;
    durable_queue_with(&broker, "kept", "m", 3).await;

    // As if an older version had stored the queue with an argument today's rules refuse
    // (x-max-priority above 255), beside a valid one; and an exchange of a kind it does not know.
    let broker = broker
        .restart_after(|dir| {
            let arguments = table(&[
                ("x-max-priority", AMQPValue::LongInt(1000)),
                ("x-message-ttl", AMQPValue::LongInt(3_600_000)),
            ]);
            store(
                dir,
                queue_key("/", "kept"),
                &StoredQueue {
                    auto_delete: false,
                    arguments,
                    declared_by: None,
                },
            );
            store(
                dir,
                exchange_key("/", "ring"),
                &StoredExchange {
                    kind: "x-consistent-hash".into(),
                    auto_delete: false,
                    internal: false,
                    arguments: FieldTable::default(),
                },
            );
            let (log, _) = Durability::open(dir).expect("open the log");
            log.write(
                vec![warren_storage::log::record::Record::Put {
                    key: "not json".into(),
                    value: bytes::Bytes::from_static(b"{"),
                }],
                None,
            );
            log.flush().expect("flush");
        })
        .await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    assert_eq!(ch.message_count("kept").await, 3, "the messages are kept");
    assert_eq!(bodies(&ch.drain("kept").await), ["m0", "m1", "m2"]);
    client.close().await;

    // Still there after one more restart: nothing was deleted from the log on the way.
    let broker = broker.restart().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    assert_eq!(
        ch.message_count("kept").await,
        0,
        "the queue is still restored"
    );
    client.close().await;
}

/// A definition record this version cannot read (a later version's command) is reported and left
/// in the log, and no stored message is dropped meanwhile, even of the queue it stood for: once the
/// record reads again, the queue comes back with its messages.
#[tokio::test]
async fn an_unreadable_command_record_loses_no_message() {
    let broker = TestBroker::start().await;
    durable_queue_with(&broker, "orphaned", "o", 2).await;

    let put = |dir: &Path, value: Vec<u8>| {
        let (log, _) = Durability::open(dir).expect("open the log");
        log.write(
            vec![warren_storage::log::record::Record::Put {
                key: queue_key("/", "orphaned"),
                value: bytes::Bytes::from(value),
            }],
            None,
        );
        log.flush().expect("flush");
    };
    // A command tag this version does not know, under the queue's key.
    let broker = broker
        .restart_after(|dir| put(dir, vec![codec::FORMAT, 250, 0, 0]))
        .await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    assert_eq!(
        ch.try_declare({
            let mut passive = QueueDeclareArguments::new("orphaned");
            passive.passive(true);
            passive
        })
        .await
        .unwrap_err()
        .code,
        404,
        "not restored while its record does not read"
    );
    client.close().await;

    let declare = MetaCommand::DeclareQueue {
        vhost: "/".into(),
        queue: "orphaned".into(),
        auto_delete: false,
        arguments: FieldTable::default(),
        declared_by: None,
        home: None,
        shard: None,
    };
    let broker = broker
        .restart_after(|dir| put(dir, codec::encode(&declare)))
        .await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    assert_eq!(
        bodies(&ch.drain("orphaned").await),
        ["o0", "o1"],
        "the messages were kept"
    );
    client.close().await;
}
