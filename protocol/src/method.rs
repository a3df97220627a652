//! Method frames: decoding through `amq-protocol`'s generated parsers, encoding through its generators,
//! plus hand-written encoders for the methods on the delivery hot path (deliver, get-ok, ack, nack).

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{gen_class, parse_class, AMQPClass};
use bytes::{BufMut, BytesMut};

use crate::constants::*;
use crate::frame::encode_frame_with;

/// Why a method frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MethodError {
    /// A class or method id this server does not know (answered with 540 NOT_IMPLEMENTED).
    #[error("unknown method {class_id}/{method_id}")]
    Unknown { class_id: u16, method_id: u16 },
    /// A known method whose arguments do not parse (502 SYNTAX_ERROR).
    #[error("malformed arguments for method {class_id}/{method_id}")]
    Malformed { class_id: u16, method_id: u16 },
}

/// The class and method ids at the front of a method payload, (0, 0) when it is too short.
pub fn method_ids(payload: &[u8]) -> (u16, u16) {
    if payload.len() < 4 {
        return (0, 0);
    }
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    )
}

/// Decodes a method frame's payload. Trailing bytes after the arguments are a syntax error.
pub fn decode_method(payload: &[u8]) -> Result<AMQPClass, MethodError> {
    let (class_id, method_id) = method_ids(payload);
    // Tables nested beyond any real use would overflow the recursive parser: refuse them first.
    if crate::nesting::check_method(payload).is_err() {
        return Err(MethodError::Malformed {
            class_id,
            method_id,
        });
    }
    match parse_class(payload) {
        Ok(([], class)) => Ok(class),
        _ if is_known(class_id, method_id) => Err(MethodError::Malformed {
            class_id,
            method_id,
        }),
        _ => Err(MethodError::Unknown {
            class_id,
            method_id,
        }),
    }
}

fn is_known(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        CLASS_CONNECTION => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        CLASS_CHANNEL => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        CLASS_EXCHANGE => &[10, 11, 20, 21, 30, 31, 40, 51],
        CLASS_QUEUE => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        CLASS_BASIC => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        CLASS_CONFIRM => &[10, 11],
        CLASS_TX => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

/// Appends a method frame for any method, using the generated serialiser.
pub fn encode_method(out: &mut BytesMut, channel: u16, method: &AMQPClass) {
    encode_frame_with(out, FRAME_METHOD, channel, |b| {
        let ctx = WriteContext::from(Vec::with_capacity(64));
        // The generator only fails on a short string over 255 octets; every such string the broker sends
        // was either received as a short string or is a fixed text, so the fallback is unreachable.
        if let Ok(ctx) = gen_class(method)(ctx) {
            b.put_slice(&ctx.write);
        }
    });
}

fn put_short_str(b: &mut BytesMut, s: &[u8]) {
    let len = s.len().min(255);
    b.put_u8(len as u8);
    b.put_slice(&s[..len]);
}

/// Appends basic.deliver (60/60) without going through the generic generator.
pub fn encode_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &[u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    encode_frame_with(out, FRAME_METHOD, channel, |b| {
        b.put_u16(CLASS_BASIC);
        b.put_u16(60);
        put_short_str(b, consumer_tag);
        b.put_u64(delivery_tag);
        b.put_u8(u8::from(redelivered));
        put_short_str(b, exchange);
        put_short_str(b, routing_key);
    });
}

/// Appends basic.get-ok (60/71).
pub fn encode_get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
    message_count: u32,
) {
    encode_frame_with(out, FRAME_METHOD, channel, |b| {
        b.put_u16(CLASS_BASIC);
        b.put_u16(71);
        b.put_u64(delivery_tag);
        b.put_u8(u8::from(redelivered));
        put_short_str(b, exchange);
        put_short_str(b, routing_key);
        b.put_u32(message_count);
    });
}

/// Appends a publisher-confirm basic.ack (60/80) or basic.nack (60/120).
pub fn encode_confirm(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    multiple: bool,
    ack: bool,
) {
    encode_frame_with(out, FRAME_METHOD, channel, |b| {
        b.put_u16(CLASS_BASIC);
        if ack {
            b.put_u16(80);
            b.put_u64(delivery_tag);
            b.put_u8(u8::from(multiple));
        } else {
            b.put_u16(120);
            b.put_u64(delivery_tag);
            // bit 0 multiple, bit 1 requeue (always false for a publisher nack)
            b.put_u8(u8::from(multiple));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_frame;
    use amq_protocol::protocol::basic;

    #[test]
    fn hand_written_deliver_matches_the_generator() {
        let mut fast = BytesMut::new();
        encode_deliver(&mut fast, 5, b"ctag", 42, true, b"amq.topic", b"a.b");
        let mut generic = BytesMut::new();
        let deliver = basic::Deliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 42,
            redelivered: true,
            exchange: "amq.topic".into(),
            routing_key: "a.b".into(),
        };
        encode_method(
            &mut generic,
            5,
            &AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)),
        );
        assert_eq!(fast, generic);
    }

    #[test]
    fn round_trips_and_classifies_errors() {
        let mut out = BytesMut::new();
        let qos = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: true,
        }));
        encode_method(&mut out, 1, &qos);
        let frame = decode_frame(&mut out, 4096).unwrap().unwrap();
        assert_eq!(decode_method(&frame.payload).unwrap(), qos);
        assert_eq!(
            decode_method(&[0, 60, 0, 10]),
            Err(MethodError::Malformed {
                class_id: 60,
                method_id: 10
            })
        );
        assert_eq!(
            decode_method(&[0, 61, 0, 10]),
            Err(MethodError::Unknown {
                class_id: 61,
                method_id: 10
            })
        );
    }
}
