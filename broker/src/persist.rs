//! Durability: what the broker writes to the command log and how it reads it back.
//!
//! Durable exchanges, queues and bindings between durable objects are stored as definitions (JSON
//! values under JSON-array keys); persistent messages (delivery_mode 2) in durable queues are stored
//! as `Enqueue` records and removed when they leave the queue. A publisher confirm for such a message
//! waits until its record is fsynced (the store's group commit): [`PendingConfirm`] counts the writes a
//! publish is waiting for and tells the publishing connection when the last one is durable.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::types::FieldTable;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use warren_storage::log::medium::DiskMedium;
use warren_storage::log::record::Record;
use warren_storage::log::{LogError, Recovered};
use warren_storage::store::{Completion, Store, StoreOptions};

use crate::connection::outbound::Outbound;
use crate::exchange::ExchangeSpec;
use crate::queue::QueueSpec;

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

/// Milliseconds since the epoch (message publish times survive restarts in this form).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

impl StoredExchange {
    pub fn of(spec: &ExchangeSpec) -> Self {
        StoredExchange {
            kind: spec.kind.as_str().to_string(),
            auto_delete: spec.auto_delete,
            internal: spec.internal,
            arguments: spec.arguments.clone(),
        }
    }
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

impl StoredQueue {
    pub fn of(spec: &QueueSpec) -> Self {
        StoredQueue {
            auto_delete: spec.auto_delete,
            arguments: spec.arguments.clone(),
            declared_by: spec.declared_by.as_deref().map(str::to_string),
        }
    }
}

/// A stored message, decoded.
pub struct StoredMessage {
    pub published_at_ms: u64,
    pub priority: u8,
    pub expiration_ms: Option<u64>,
    pub exchange: String,
    pub routing_key: String,
    /// The authenticated publisher ("" when a format-1 record carried none).
    pub publisher: String,
    pub properties: Bytes,
    pub body: Bytes,
}

impl StoredMessage {
    /// The message as queues hold it, charged to the memory alarm; `stored` is its stored form when
    /// it is persistent (so it is not encoded again).
    pub fn into_message(
        self,
        alarms: &Arc<crate::alarms::Alarms>,
        persistent: bool,
        stored: Option<Bytes>,
    ) -> crate::message::Message {
        let charge =
            crate::alarms::Charge::new(alarms, (self.properties.len() + self.body.len()) as u64);
        crate::message::Message {
            exchange: self.exchange,
            routing_key: self.routing_key,
            publisher: std::sync::Arc::from(self.publisher),
            properties: self.properties,
            body: self.body,
            priority: self.priority,
            expiration_ms: self.expiration_ms,
            charge: Some(charge),
            persistent,
            published_at_ms: self.published_at_ms,
            stored: stored.map_or_else(std::sync::OnceLock::new, std::sync::OnceLock::from),
        }
    }
}

/// Format 2 records the publisher beside the message; format 1 (before 2026-12) carried it only as
/// the `x-warren-publisher` header stamped into the properties, which recovery moves back out.
const MESSAGE_FORMAT: u8 = 2;
const MESSAGE_FORMAT_STAMPED: u8 = 1;

/// `format:u8 published_at:u64 priority:u8 has_expiration:u8 expiration:u64 exchange:str8 key:str8
/// publisher:str16 properties:u32+bytes body:rest` (format 1 has no publisher field).
pub fn encode_message(m: &StoredMessage) -> Bytes {
    let mut out = BytesMut::with_capacity(
        32 + m.exchange.len() + m.routing_key.len() + m.properties.len() + m.body.len(),
    );
    out.put_u8(MESSAGE_FORMAT);
    out.put_u64(m.published_at_ms);
    out.put_u8(m.priority);
    out.put_u8(u8::from(m.expiration_ms.is_some()));
    out.put_u64(m.expiration_ms.unwrap_or(0));
    for s in [&m.exchange, &m.routing_key] {
        let s = &s.as_bytes()[..s.len().min(255)];
        out.put_u8(s.len() as u8);
        out.put_slice(s);
    }
    // A user name is not an AMQP short string: it has two length octets, never truncated in practice.
    let publisher = &m.publisher.as_bytes()[..m.publisher.len().min(usize::from(u16::MAX))];
    out.put_u16(publisher.len() as u16);
    out.put_slice(publisher);
    out.put_u32(m.properties.len() as u32);
    out.put_slice(&m.properties);
    out.put_slice(&m.body);
    out.freeze()
}

pub fn decode_message(p: &Bytes) -> Option<StoredMessage> {
    struct Cursor<'a>(&'a Bytes, usize);
    impl Cursor<'_> {
        fn take(&mut self, n: usize) -> Option<Bytes> {
            let end = self.1.checked_add(n).filter(|e| *e <= self.0.len())?;
            let out = self.0.slice(self.1..end);
            self.1 = end;
            Some(out)
        }
        fn uint(&mut self, n: usize) -> Option<u64> {
            Some(
                self.take(n)?
                    .iter()
                    .fold(0u64, |acc, x| acc << 8 | u64::from(*x)),
            )
        }
        fn text(&mut self, len_octets: usize) -> Option<String> {
            let n = self.uint(len_octets)? as usize;
            String::from_utf8(self.take(n)?.to_vec()).ok()
        }
    }
    let mut c = Cursor(p, 0);
    let format = c.uint(1)? as u8;
    if format != MESSAGE_FORMAT && format != MESSAGE_FORMAT_STAMPED {
        return None;
    }
    let published_at_ms = c.uint(8)?;
    let priority = c.uint(1)? as u8;
    let has_expiration = c.uint(1)? != 0;
    let expiration = c.uint(8)?;
    let exchange = c.text(1)?;
    let routing_key = c.text(1)?;
    let mut publisher = if format == MESSAGE_FORMAT {
        c.text(2)?
    } else {
        String::new()
    };
    let props_len = c.uint(4)? as usize;
    let mut properties = c.take(props_len)?;
    if format == MESSAGE_FORMAT_STAMPED {
        (publisher, properties) = unstamp(properties);
    }
    let body = p.slice(c.1..);
    Some(StoredMessage {
        publisher,
        published_at_ms,
        priority,
        expiration_ms: has_expiration.then_some(expiration),
        exchange,
        routing_key,
        properties,
        body,
    })
}

/// Takes the publisher out of a format-1 record's stamped `x-warren-publisher` header, leaving the
/// properties as published. Unparsable properties are kept as they are, with no publisher.
fn unstamp(properties: Bytes) -> (String, Bytes) {
    use warren_protocol::content::{edit_headers, BasicProperties};
    let header = crate::message::PUBLISHER_HEADER;
    let publisher = BasicProperties::parse(&properties)
        .ok()
        .and_then(|p| p.headers_table())
        .and_then(|t| {
            t.inner()
                .get(header)
                .and_then(warren_protocol::field::as_text)
        });
    match publisher {
        Some(name) => match edit_headers(&properties, &[header], None) {
            Ok(unstamped) => (name, unstamped),
            Err(_) => (name, properties),
        },
        None => (String::new(), properties),
    }
}

/// A publish waiting for durable writes before its confirm. The channel holds one count while it
/// routes; each durable write holds one until it completes. Whoever drops the last count settles it.
pub struct PendingConfirm {
    count: AtomicUsize,
    failed: AtomicBool,
    outbox: UnboundedSender<Outbound>,
    channel: u16,
    incarnation: u64,
    /// The publish's confirm sequence number, or None for a tx.commit waiting for its publishes.
    seq: Option<u64>,
}

impl PendingConfirm {
    pub fn new(
        outbox: UnboundedSender<Outbound>,
        channel: u16,
        incarnation: u64,
        seq: Option<u64>,
    ) -> Arc<Self> {
        Arc::new(PendingConfirm {
            count: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            outbox,
            channel,
            incarnation,
            seq,
        })
    }

    /// A completion for one more durable write of this publish.
    pub fn hold(self: &Arc<Self>) -> Completion {
        self.count.fetch_add(1, Ordering::AcqRel);
        let me = self.clone();
        Box::new(move |result| {
            if let Err(e) = result {
                tracing::error!(error = %e, "a persistent message could not be stored: its publisher gets a nack");
                me.failed.store(true, Ordering::Release);
            }
            if me.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                let ok = !me.failed.load(Ordering::Acquire);
                let (channel, incarnation) = (me.channel, me.incarnation);
                let _ = me.outbox.send(match me.seq {
                    Some(seq) => Outbound::Confirmed {
                        channel,
                        incarnation,
                        seq,
                        ok,
                    },
                    None => Outbound::Committed {
                        channel,
                        incarnation,
                        ok,
                    },
                });
            }
        })
    }

    /// The channel's own count. `Some(ok)` when nothing is pending any more (settle right away with
    /// that outcome: a write may already have failed), `None` while writes are in flight (their last
    /// completion settles it through the outbox).
    pub fn release(&self) -> Option<bool> {
        (self.count.fetch_sub(1, Ordering::AcqRel) == 1)
            .then(|| !self.failed.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = StoredMessage {
            published_at_ms: 1_700_000_000_123,
            priority: 7,
            expiration_ms: Some(60_000),
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
            publisher: "nova".into(),
            properties: Bytes::from_static(&[0x10, 0, 2]),
            body: Bytes::from_static(b"hello"),
        };
        let back = decode_message(&encode_message(&m)).unwrap();
        assert_eq!(back.publisher, "nova");
        assert_eq!(
            (
                back.published_at_ms,
                back.priority,
                back.expiration_ms,
                back.exchange.as_str(),
                back.routing_key.as_str()
            ),
            (m.published_at_ms, 7, Some(60_000), "amq.topic", "a.b")
        );
        assert_eq!(
            (&back.properties[..], &back.body[..]),
            (&m.properties[..], &b"hello"[..])
        );
        assert!(decode_message(&Bytes::from_static(&[9])).is_none());
        let short = encode_message(&m);
        assert!(decode_message(&short.slice(..20)).is_none());
    }

    /// A record written before the publisher had its own field: the stamped header moves back out.
    #[test]
    fn format_one_records_give_up_their_stamped_header() {
        let props = warren_protocol::content::edit_headers(
            &[0x10, 0, 2],
            &[],
            Some((crate::message::PUBLISHER_HEADER, b"glance")),
        )
        .unwrap();
        let mut old = vec![MESSAGE_FORMAT_STAMPED];
        old.extend_from_slice(&42u64.to_be_bytes());
        old.extend_from_slice(&[0, 0]);
        old.extend_from_slice(&0u64.to_be_bytes());
        old.extend_from_slice(b"\x01x\x01k");
        old.extend_from_slice(&(props.len() as u32).to_be_bytes());
        old.extend_from_slice(&props);
        old.extend_from_slice(b"body");
        let back = decode_message(&Bytes::from(old)).unwrap();
        assert_eq!(back.publisher, "glance");
        assert_eq!(back.body, &b"body"[..]);
        let headers = warren_protocol::content::BasicProperties::parse(&back.properties)
            .unwrap()
            .headers_table()
            .unwrap_or_default();
        assert!(headers.inner().is_empty(), "{headers:?}");
    }

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
