//! A published message as queues hold it: shared by every queue it was routed to, never copied.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

pub mod codec;
pub mod memory;

use memory::Charge;

/// The header in which Warren gives a consumer that asks for it the authenticated identity of a
/// message's publisher. A client-sent header of that name is removed at publish, so it cannot be forged.
pub const PUBLISHER_HEADER: &str = "x-warren-publisher";

/// Exchange, routing key, the raw content-header properties and the body, exactly as published, plus
/// the few properties queues act on, decoded once at publish.
#[derive(Debug)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    /// The authenticated user who published it (kept through dead-lettering, paging and the log).
    pub publisher: Arc<str>,
    /// Property flags and values as the publisher encoded them (forwarded byte-for-byte).
    pub properties: Bytes,
    pub body: Bytes,
    /// The `priority` property (0 when absent).
    pub priority: u8,
    /// The `expiration` property in milliseconds (per-message TTL).
    pub expiration_ms: Option<u64>,
    /// This message's share of the memory alarm's count (None only in benchmarks and unit tests).
    pub charge: Option<Charge>,
    /// delivery_mode 2: stored when routed to a durable queue.
    pub persistent: bool,
    /// Wall-clock publish time; TTL deadlines are recomputed from it after a restart.
    pub published_at_ms: u64,
    /// The stored form, encoded once however many durable queues hold the message.
    pub stored: OnceLock<Bytes>,
}

impl Message {
    pub fn body_size(&self) -> u64 {
        self.body.len() as u64
    }

    /// The record payload this message is stored as, encoded once and kept.
    pub fn stored_form(&self) -> Bytes {
        self.stored.get_or_init(|| self.encode_stored()).clone()
    }

    /// The record payload, encoded afresh (for a copy that need not be kept with the message).
    pub(crate) fn encode_stored(&self) -> Bytes {
        codec::encode_message(&codec::StoredMessage {
            published_at_ms: self.published_at_ms,
            priority: self.priority,
            expiration_ms: self.expiration_ms,
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            publisher: self.publisher.to_string(),
            properties: self.properties.clone(),
            body: self.body.clone(),
        })
    }
}

/// Parses the `expiration` property as RabbitMQ does (`string:to_integer` then range checks): an
/// optional sign and decimal digits, nothing else. The error is RabbitMQ's reason term, for the 406 text.
pub fn parse_expiration(raw: &[u8]) -> Result<u64, String> {
    let text = String::from_utf8_lossy(raw);
    let digits_from = usize::from(text.starts_with('-') || text.starts_with('+'));
    let digits = text[digits_from..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    if digits == 0 {
        return Err("no_integer".to_string());
    }
    let end = digits_from + digits;
    if end < text.len() {
        return Err(format!("{{leftover_string,\"{}\"}}", &text[end..]));
    }
    let value: i128 = text[..end].parse().map_err(|_| "no_integer".to_string())?;
    if value < 0 {
        return Err(format!("{{value_negative,{value}}}"));
    }
    if value > 4_294_967_295 {
        return Err(format!("{{value_too_large,{value},4294967295}}"));
    }
    Ok(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiration_is_a_non_negative_integer() {
        assert_eq!(parse_expiration(b"60000"), Ok(60000));
        assert_eq!(parse_expiration(b"0"), Ok(0));
        assert_eq!(parse_expiration(b"-1"), Err("{value_negative,-1}".into()));
        assert_eq!(parse_expiration(b"soon"), Err("no_integer".into()));
        assert_eq!(parse_expiration(b" 5"), Err("no_integer".into()));
        assert_eq!(
            parse_expiration(b"1.5"),
            Err("{leftover_string,\".5\"}".into())
        );
    }
}
