//! Durability: what the broker writes to the command log and how it reads it back.
//!
//! Durable exchanges, queues and bindings between durable objects are stored as definitions (JSON
//! values under JSON-array keys); persistent messages (delivery_mode 2) in durable queues are stored
//! as `Enqueue` records and removed when they leave the queue. A publisher confirm for such a message
//! waits until its record is fsynced (the store's group commit): [`PendingConfirm`] counts the writes a
//! publish is waiting for and tells the publishing connection when the last one is durable.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warren_storage::log::medium::DiskMedium;
use warren_storage::log::record::Record;
use warren_storage::log::{LogError, Recovered};
use warren_storage::store::{Completion, Store, StoreOptions};

/// The open store and the id sequence of stored messages.
pub struct Durability {
    store: Store,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl Durability {
    /// Opens (and replays) the log under `DATA_DIR/log`. Recovered messages are listed by id only:
    /// [`Durability::read`] brings their payloads back a batch at a time.
    pub fn open(data_dir: &Path) -> Result<(Arc<Self>, Recovered), LogError> {
        let medium = DiskMedium::new(&data_dir.join("log"))?;
        let options = StoreOptions {
            recover_payloads: false,
            ..StoreOptions::default()
        };
        let (store, recovered) = Store::open(medium, options)?;
        let next_id = AtomicU64::new(recovered.next_id);
        Ok((Arc::new(Durability { store, next_id }), recovered))
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        self.store.write(records, done);
    }

    /// Reads back stored messages of `queue` (start-up), in the order of `ids`.
    pub fn read(&self, queue: &str, ids: Vec<u64>) -> std::io::Result<Vec<(u64, Bytes)>> {
        self.store.read(queue, ids)
    }

    /// Blocks until everything written is durable (shutdown).
    pub fn flush(&self) -> std::io::Result<()> {
        self.store.flush()
    }

    pub fn put(&self, key: String, value: &impl Serialize) {
        match serde_json::to_vec(value) {
            Ok(v) => self.write(
                vec![Record::Put {
                    key,
                    value: Bytes::from(v),
                }],
                None,
            ),
            Err(e) => tracing::error!(%key, error = %e, "cannot store a definition"),
        }
    }

    pub fn delete(&self, key: String) {
        self.write(vec![Record::Delete { key }], None);
    }
}

/// The log key of a durable definition: a JSON array, so names with any characters stay unambiguous.
pub fn key(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

pub fn exchange_key(vhost: &str, name: &str) -> String {
    key(&["exchange", vhost, name])
}

pub fn queue_key(vhost: &str, name: &str) -> String {
    key(&["queue", vhost, name])
}

/// The name messages of a queue are stored under.
pub fn message_queue(vhost: &str, name: &str) -> String {
    key(&[vhost, name])
}

pub fn binding_key(
    vhost: &str,
    source: &str,
    dest_kind: &str,
    dest: &str,
    routing_key: &str,
    args: &str,
) -> String {
    key(&["binding", vhost, source, dest_kind, dest, routing_key, args])
}

/// A durable exchange as stored.
#[derive(Serialize, Deserialize)]
pub struct StoredExchange {
    pub kind: String,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// A durable queue as stored.
#[derive(Serialize, Deserialize)]
pub struct StoredQueue {
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// Who declared it (absent in records written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_by: Option<String>,
}

/// The local log is where durable queues journal their messages.
impl crate::queue::sink::Journal for Durability {
    fn next_id(&self) -> u64 {
        Durability::next_id(self)
    }

    fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        Durability::write(self, records, done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arguments are stored as JSON, which serde_json reads back only up to 128 levels: every table
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
            serde_json::from_slice::<StoredQueue>(&json).expect("read back");
        }
    }

    #[test]
    fn keys_are_unambiguous() {
        assert_ne!(queue_key("a\"b", "c"), queue_key("a", "\"bc"));
        assert_ne!(
            binding_key("/", "x", "queue", "q", "", ""),
            binding_key("/", "x", "exchange", "q", "", "")
        );
    }
}
