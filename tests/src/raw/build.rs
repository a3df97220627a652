//! What only tests build by hand: property lists encoded as a client library would, content header
//! payloads for hand-made frames, and SASL responses for the password bridge. The method builders
//! and publish encoder are warren-wire-client's, re-exported beside these.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use warren_protocol::frame::encode_content_header;

/// Properties encoded the way a client library would encode them.
pub fn encode_properties(props: &AMQPProperties) -> Vec<u8> {
    gen_properties(props)(WriteContext::from(Vec::new()))
        .expect("properties encode")
        .write
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
