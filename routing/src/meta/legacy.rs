//! Definition records of earlier versions, read once and rewritten as commands: durable exchanges,
//! queues and bindings were JSON values under JSON-array keys whose meaning came from the position
//! of each name (`["queue", vhost, name]`). This is the only place that still reads a key.

use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};

use super::{DestinationKind, MetaCommand, StoredBinding};

/// A durable exchange as earlier versions stored it.
#[derive(Serialize, Deserialize)]
pub struct StoredExchange {
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// A durable queue as earlier versions stored it.
#[derive(Serialize, Deserialize)]
pub struct StoredQueue {
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// Who declared it (absent in records written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
}

/// Whether `value` is a record of an earlier version (JSON) rather than a command.
pub fn is_legacy(value: &[u8]) -> bool {
    value.first().is_some_and(|b| matches!(b, b'{' | b'['))
}

/// The command an earlier version's definition record stood for.
pub fn command(key: &str, value: &[u8]) -> Result<MetaCommand, String> {
    let parts: Vec<String> =
        serde_json::from_str(key).map_err(|_| "its key does not parse".to_string())?;
    let part = |i: usize| parts[i].clone();
    match (parts.first().map(String::as_str), parts.len()) {
        (Some("exchange"), 3) => {
            let x: StoredExchange = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            Ok(MetaCommand::DeclareExchange {
                vhost: part(1).into(),
                exchange: part(2),
                kind: x.kind,
                durable: true,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
            })
        }
        (Some("queue"), 3) => {
            let q: StoredQueue = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            Ok(MetaCommand::DeclareQueue {
                vhost: part(1).into(),
                queue: part(2).into(),
                auto_delete: q.auto_delete,
                arguments: q.arguments,
                declared_by: q.declared_by,
                home: None,
                shard: None,
            })
        }
        (Some("binding"), 7) => {
            let arguments: FieldTable = serde_json::from_slice(value).map_err(|e| e.to_string())?;
            let kind = match parts[3].as_str() {
                "queue" => DestinationKind::Queue,
                "exchange" => DestinationKind::Exchange,
                other => return Err(format!("unknown destination kind {other:?}")),
            };
            Ok(MetaCommand::Bind {
                vhost: part(1).into(),
                binding: StoredBinding {
                    source: part(2),
                    kind,
                    destination: part(4),
                    routing_key: part(5),
                    arguments,
                },
            })
        }
        _ => Err("it is not a definition this version knows".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::records;

    /// Arguments were stored as JSON, which serde_json reads back only up to 128 levels: every table
    /// the nesting bound lets in must come back (a queue whose record did not parse was once dropped
    /// with its messages at recovery).
    #[test]
    fn the_deepest_accepted_arguments_are_read_back() {
        use amq_protocol::types::AMQPValue;
        let mut t = FieldTable::default();
        t.insert("k".into(), AMQPValue::LongString("v".into()));
        let mut array = AMQPValue::FieldTable(t.clone());
        for _ in 1..warren_protocol::nesting::MAX_DEPTH {
            let mut outer = FieldTable::default();
            outer.insert("k".into(), AMQPValue::FieldTable(t));
            t = outer;
            array = AMQPValue::FieldArray(vec![array].into());
        }
        let mut with_arrays = FieldTable::default();
        with_arrays.insert("a".into(), array);
        for arguments in [t, with_arrays] {
            let json = serde_json::to_vec(&StoredQueue {
                auto_delete: false,
                arguments,
                declared_by: None,
            })
            .unwrap();
            command(&records::queue_key("/", "q"), &json).expect("read back");
        }
    }

    /// A rewritten record replaces the old one in place: the command's identity is the old key.
    #[test]
    fn old_records_become_commands_under_the_same_keys() {
        let old = [
            (
                records::exchange_key("/", "nova"),
                r#"{"kind":"topic","auto_delete":false,"internal":false,"arguments":{}}"#,
            ),
            (
                records::queue_key("/", "compute"),
                r#"{"auto_delete":false,"arguments":{},"declared_by":"nova"}"#,
            ),
            (
                r#"["binding","/","nova","queue","compute","compute.#","{}"]"#.to_string(),
                "{}",
            ),
        ];
        for (key, value) in old {
            assert!(is_legacy(value.as_bytes()));
            let c = command(&key, value.as_bytes()).unwrap();
            match records::record(&c) {
                warren_storage::log::record::Record::Put { key: new, .. } => assert_eq!(new, key),
                other => panic!("{other:?}"),
            }
        }
        assert!(command(r#"["queue","/"]"#, b"{}").is_err());
        assert!(command("not json", b"{}").is_err());
    }
}
