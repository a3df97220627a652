//! Frame and method builders for the raw client: the common methods as one-liners (tests write the
//! rest as amq-protocol struct literals), property lists, content headers and whole publishes.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::protocol::{basic, channel, confirm, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::BytesMut;
use warren_protocol::frame::{encode_body, encode_content_header};
use warren_protocol::method::encode_method;

/// Properties encoded the way a client library would encode them.
pub fn encode_properties(props: &AMQPProperties) -> Vec<u8> {
    gen_properties(props)(WriteContext::from(Vec::new()))
        .expect("properties encode")
        .write
}

/// An empty property list: no flags set.
pub const NO_PROPERTIES: &[u8] = &[0, 0];

/// Appends basic.publish `(exchange, routing key, mandatory)`, its content header and body frames.
pub fn encode_publish(
    out: &mut BytesMut,
    frame_max: u32,
    channel: u16,
    (exchange, routing_key, mandatory): (&str, &str, bool),
    properties: &[u8],
    body: &[u8],
) {
    encode_method(
        out,
        channel,
        &basic_publish(exchange, routing_key, mandatory),
    );
    encode_content_header(out, channel, 60, body.len() as u64, properties);
    encode_body(out, channel, body, frame_max);
}

// ---- method builders (the common ones; tests build the rest as struct literals) ----------------

pub fn channel_open() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))
}

pub fn channel_close() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

pub fn queue_declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        ..Default::default()
    }))
}

pub fn queue_bind(queue: &str, exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }))
}

pub fn exchange_declare(name: &str, kind: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
        exchange: name.into(),
        kind: kind.into(),
        ..Default::default()
    }))
}

/// queue.declare with arguments (`passive` for a passive declare).
pub fn queue_declare_with(name: &str, passive: bool, arguments: FieldTable) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive,
        arguments,
        ..Default::default()
    }))
}

pub fn queue_delete(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: name.into(),
        ..Default::default()
    }))
}

pub fn queue_purge(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
        queue: name.into(),
        nowait: false,
    }))
}

pub fn queue_unbind(queue: &str, exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }))
}

/// exchange.declare with arguments (`passive` for a passive declare).
pub fn exchange_declare_with(
    name: &str,
    kind: &str,
    passive: bool,
    arguments: FieldTable,
) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
        exchange: name.into(),
        kind: kind.into(),
        passive,
        arguments,
        ..Default::default()
    }))
}

pub fn exchange_delete(name: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
        exchange: name.into(),
        ..Default::default()
    }))
}

/// exchange.bind `destination` to `source`.
pub fn exchange_bind(destination: &str, source: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
        destination: destination.into(),
        source: source.into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }))
}

pub fn exchange_unbind(destination: &str, source: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
        destination: destination.into(),
        source: source.into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }))
}

pub fn basic_get(queue: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
        queue: queue.into(),
        no_ack,
    }))
}

/// A field table with one long-string entry (`x-dead-letter-exchange`, `alternate-exchange`, ...).
pub fn text_argument(key: &str, value: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(key.into(), AMQPValue::LongString(value.into()));
    table
}

pub fn basic_publish(exchange: &str, routing_key: &str, mandatory: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory,
        immediate: false,
    }))
}

pub fn basic_consume(queue: &str, tag: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: queue.into(),
        consumer_tag: tag.into(),
        no_ack,
        ..Default::default()
    }))
}

pub fn basic_ack(delivery_tag: u64, multiple: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
        delivery_tag,
        multiple,
    }))
}

pub fn confirm_select() -> AMQPClass {
    AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
        nowait: false,
    }))
}

/// The frame types, re-exported for tests that build frames by hand.
pub mod frame_type {
    pub use warren_protocol::constants::{FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
}

/// Encodes a content header payload (class 60) for tests that send header frames by hand.
pub fn content_header_payload(body_size: u64, properties: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_content_header(&mut out, 0, 60, body_size, properties);
    // strip the 7-octet frame header and the frame-end octet
    out[7..out.len() - 1].to_vec()
}

/// The SASL PLAIN response: `authzid NUL login NUL password` with an empty authzid.
pub fn plain_response(login: &str, password: &str) -> Vec<u8> {
    format!("\0{login}\0{password}").into_bytes()
}

/// The SASL AMQPLAIN response: a field table with LOGIN and PASSWORD, without its length prefix (as
/// py-amqp and amqprs send it).
pub fn amqplain_response(login: &str, password: &str) -> Vec<u8> {
    use amq_protocol::types::generation::gen_field_table;
    use amq_protocol::types::LongString;
    let mut table = FieldTable::default();
    table.insert(
        "LOGIN".into(),
        AMQPValue::LongString(LongString::from(login)),
    );
    table.insert(
        "PASSWORD".into(),
        AMQPValue::LongString(LongString::from(password)),
    );
    let encoded = gen_field_table(&table)(WriteContext::from(Vec::new()))
        .expect("field table encodes")
        .write;
    encoded[4..].to_vec()
}
