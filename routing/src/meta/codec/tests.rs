use amq_protocol::types::{AMQPValue, FieldTable};
use proptest::prelude::*;
use warren_storage::definitions::{PermissionDefinition, TopicPermissionDefinition};

use super::*;

fn table() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    t.insert("x-flag".into(), AMQPValue::Boolean(true));
    t.insert("x-big".into(), AMQPValue::LongLongInt(-5));
    t.insert("x-bytes".into(), AMQPValue::ByteArray(vec![0xff, 0].into()));
    t
}

fn binding() -> StoredBinding {
    StoredBinding {
        source: "nova".into(),
        kind: DestinationKind::Exchange,
        destination: "cells ü".into(),
        routing_key: "compute.#".into(),
        arguments: table(),
    }
}

fn every_command() -> Vec<MetaCommand> {
    let s = |v: &str| v.to_string();
    vec![
        MetaCommand::AddVhost {
            vhost: s("/").into(),
        },
        MetaCommand::DeleteVhost {
            vhost: s("cinder").into(),
        },
        MetaCommand::AddUser {
            user: s("nova"),
            tags: vec![s("monitoring"), s("")],
        },
        MetaCommand::DeleteUser { user: s("nova") },
        MetaCommand::SetUserTags {
            user: s("nova"),
            tags: vec![],
        },
        MetaCommand::SetPasswordHash {
            user: s("nova"),
            hash: Some(s("$argon2id$v=19$...")),
        },
        MetaCommand::SetPasswordHash {
            user: s("nova"),
            hash: None,
        },
        MetaCommand::SetPermissions {
            user: s("nova"),
            permission: PermissionDefinition {
                vhost: s("/"),
                configure: s("^nova\\."),
                write: s(".*"),
                read: s(""),
            },
        },
        MetaCommand::ClearPermissions {
            user: s("nova"),
            vhost: s("/").into(),
        },
        MetaCommand::SetTopicPermissions {
            user: s("nova"),
            permission: TopicPermissionDefinition {
                vhost: s("/"),
                exchange: s("amq.topic"),
                write: s("^{username}\\."),
                read: s(".*"),
            },
        },
        MetaCommand::ClearTopicPermissions {
            user: s("nova"),
            vhost: s("/").into(),
            exchange: None,
        },
        MetaCommand::ClearTopicPermissions {
            user: s("nova"),
            vhost: s("/").into(),
            exchange: Some(s("amq.topic")),
        },
        MetaCommand::SeedUser { user: s("glance") },
        MetaCommand::DeclareExchange {
            vhost: s("/").into(),
            exchange: s("nova"),
            kind: s("topic"),
            durable: true,
            auto_delete: true,
            internal: false,
            arguments: table(),
        },
        MetaCommand::DeclareExchange {
            vhost: s("/").into(),
            exchange: s("nova_fanout"),
            kind: s("fanout"),
            durable: false,
            auto_delete: false,
            internal: true,
            arguments: table(),
        },
        MetaCommand::DeleteExchange {
            vhost: s("/").into(),
            exchange: s("nova"),
        },
        MetaCommand::DeclareQueue {
            vhost: s("/").into(),
            queue: s("compute").into(),
            auto_delete: false,
            arguments: table(),
            declared_by: Some(s("nova")),
            home: None,
            shard: None,
        },
        MetaCommand::DeclareQueue {
            vhost: s("/").into(),
            queue: s("reply_1").into(),
            auto_delete: true,
            arguments: table(),
            declared_by: Some(s("nova")),
            home: Some(crate::meta::QueueHome {
                node: 3,
                run: u64::MAX - 1,
                durable: false,
                owner: Some(17),
            }),
            shard: None,
        },
        MetaCommand::DeclareQueue {
            vhost: s("/").into(),
            queue: s("durable_classic").into(),
            auto_delete: false,
            arguments: FieldTable::default(),
            declared_by: None,
            home: Some(crate::meta::QueueHome {
                node: 1,
                run: 0,
                durable: true,
                owner: None,
            }),
            shard: None,
        },
        MetaCommand::DeclareQueue {
            vhost: s("/").into(),
            queue: s("placed_quorum").into(),
            auto_delete: false,
            arguments: table(),
            declared_by: Some(s("nova")),
            home: None,
            shard: Some(u32::MAX),
        },
        MetaCommand::DeclareQueue {
            vhost: s("/").into(),
            queue: s("old").into(),
            auto_delete: true,
            arguments: FieldTable::default(),
            declared_by: None,
            home: None,
            shard: None,
        },
        MetaCommand::RemovedNode { id: 7 },
        MetaCommand::SetPolicy {
            policy: warren_storage::definitions::PolicyDefinition {
                vhost: "/".into(),
                name: "ttl".into(),
                pattern: "^(?!amq\\.).*".into(),
                apply_to: "queues".into(),
                priority: -3,
                definition: serde_json::json!({"message-ttl": 60000, "ha-mode": "all"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            },
            operator: true,
        },
        MetaCommand::ClearPolicy {
            vhost: "/".into(),
            name: "ttl".into(),
            operator: false,
        },
        MetaCommand::RetireQueue {
            vhost: s("/").into(),
            queue: s("reply_1").into(),
            home: crate::meta::QueueHome {
                node: 2,
                run: 7,
                durable: false,
                owner: None,
            },
        },
        MetaCommand::DeleteQueue {
            vhost: s("/").into(),
            queue: s("compute").into(),
        },
        MetaCommand::Bind {
            vhost: s("/").into(),
            binding: binding(),
        },
        MetaCommand::Unbind {
            vhost: s("/").into(),
            binding: StoredBinding {
                kind: DestinationKind::Queue,
                ..binding()
            },
        },
    ]
}

#[test]
fn every_command_round_trips() {
    for c in every_command() {
        let bytes = encode(&c);
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(decode(&bytes).as_ref(), Ok(&c), "{c:?}");
    }
}

#[test]
fn a_cut_or_lengthened_record_is_refused_not_misread() {
    for c in every_command() {
        let bytes = encode(&c);
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "{c:?} cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::Trailing(1)));
    }
    assert_eq!(decode(b"{\"kind\":1}"), Err(DecodeError::Format(b'{')));
    assert_eq!(decode(&[FORMAT, 200]), Err(DecodeError::Tag(200)));
}

#[test]
fn the_deepest_tables_the_protocol_accepts_round_trip() {
    let mut t = FieldTable::default();
    t.insert("k".into(), AMQPValue::LongString("v".into()));
    for _ in 1..warren_protocol::nesting::MAX_DEPTH {
        let mut outer = FieldTable::default();
        outer.insert("k".into(), AMQPValue::FieldTable(t));
        t = outer;
    }
    let c = MetaCommand::DeclareQueue {
        vhost: "/".into(),
        queue: "deep".into(),
        auto_delete: false,
        arguments: t,
        declared_by: None,
        home: None,
        shard: None,
    };
    assert_eq!(decode(&encode(&c)), Ok(c));
}

proptest! {
    #[test]
    fn any_bytes_decode_or_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut with_format = vec![FORMAT];
        with_format.extend_from_slice(&bytes);
        for input in [&bytes[..], &with_format[..]] {
            if let Ok(c) = decode(input) {
                // Whatever decodes encodes to a record that decodes to the same command.
                prop_assert_eq!(decode(&encode(&c)), Ok(c));
            }
        }
    }

    #[test]
    fn names_of_any_text_round_trip(vhost in ".{0,40}", name in ".{0,40}", key in ".{0,40}") {
        let c = MetaCommand::Bind {
            vhost: vhost.into(),
            binding: StoredBinding { source: name.clone(), kind: DestinationKind::Queue, destination: name, routing_key: key, arguments: FieldTable::default() },
        };
        prop_assert_eq!(decode(&encode(&c)), Ok(c));
    }
}
