//! A message's stored form (the log's `Enqueue` payload, a spill file's entry): its encoding, the
//! decoding recovery and paging use, and format 1's stamped publisher moved back out. Kept beside
//! [`Message`] so that the log, paging and recovery depend on the message, never the other way.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::memory::{Charge, MemoryAccount};
use super::Message;

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
        account: Arc<dyn MemoryAccount>,
        persistent: bool,
        stored: Option<Bytes>,
    ) -> Message {
        let charge = Charge::new(account, (self.properties.len() + self.body.len()) as u64);
        Message {
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
    let header = super::PUBLISHER_HEADER;
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
}
