//! Encoders for what a client sends per message — publishes, acks, property lists — written straight
//! into the caller's buffer: the benchmark encodes whole bursts this way (no method struct, no
//! intermediate allocation), and the tests batch publishes into one write with the same code.

use bytes::{BufMut, BytesMut};
use warren_protocol::constants::FRAME_METHOD;
use warren_protocol::frame::{encode_body, encode_content_header, encode_frame_with};

/// An empty property list: no flags set.
pub const NO_PROPERTIES: &[u8] = &[0, 0];

/// A short string: a length octet and at most 255 octets.
fn put_short(b: &mut BytesMut, s: &[u8]) {
    let n = s.len().min(255);
    b.put_u8(n as u8);
    b.put_slice(&s[..n]);
}

/// The basic properties the benchmark's scenarios use, encoded in the wire order of their flag bits
/// (spec 4.2.6.1: the flags, then each present property in flag order).
#[derive(Debug, Default, Clone, Copy)]
pub struct Props<'a> {
    pub content_type: Option<&'a [u8]>,
    pub delivery_mode: Option<u8>,
    pub correlation_id: Option<&'a [u8]>,
    pub reply_to: Option<&'a [u8]>,
}

impl Props<'_> {
    pub fn encode(&self, out: &mut BytesMut) {
        let mut flags = 0u16;
        if self.content_type.is_some() {
            flags |= 1 << 15;
        }
        if self.delivery_mode.is_some() {
            flags |= 1 << 12;
        }
        if self.correlation_id.is_some() {
            flags |= 1 << 10;
        }
        if self.reply_to.is_some() {
            flags |= 1 << 9;
        }
        out.put_u16(flags);
        if let Some(v) = self.content_type {
            put_short(out, v);
        }
        if let Some(v) = self.delivery_mode {
            out.put_u8(v);
        }
        if let Some(v) = self.correlation_id {
            put_short(out, v);
        }
        if let Some(v) = self.reply_to {
            put_short(out, v);
        }
    }

    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.to_vec()
    }
}

/// Appends basic.publish `(exchange, routing key, mandatory)`, its content header (`properties` as
/// raw flags + values) and body frames split at `frame_max`.
pub fn encode_publish(
    out: &mut BytesMut,
    frame_max: u32,
    channel: u16,
    (exchange, routing_key, mandatory): (&str, &str, bool),
    properties: &[u8],
    body: &[u8],
) {
    encode_frame_with(out, FRAME_METHOD, channel, |b| {
        b.put_u16(60);
        b.put_u16(40);
        b.put_u16(0); // reserved-1 (ticket)
        put_short(b, exchange.as_bytes());
        put_short(b, routing_key.as_bytes());
        b.put_u8(u8::from(mandatory)); // bit 0 mandatory, bit 1 immediate (never set)
    });
    encode_content_header(out, channel, 60, body.len() as u64, properties);
    encode_body(out, channel, body, frame_max);
}

/// Appends basic.ack (client to broker, for a delivery).
pub fn encode_ack(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    encode_frame_with(out, FRAME_METHOD, channel, |b| {
        b.put_u16(60);
        b.put_u16(80);
        b.put_u64(delivery_tag);
        b.put_u8(u8::from(multiple));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::{basic_ack, basic_publish};
    use warren_protocol::content::BasicProperties;
    use warren_protocol::method::encode_method;

    #[test]
    fn props_encode_in_flag_order() {
        assert_eq!(Props::default().to_bytes(), NO_PROPERTIES);
        let props = Props {
            content_type: Some(b"application/json"),
            delivery_mode: Some(2),
            correlation_id: Some(b"1-7"),
            reply_to: Some(b"replies"),
        };
        let bytes = props.to_bytes();
        assert_eq!(&bytes[..2], &[0b1001_0110, 0]);
        let parsed = BasicProperties::parse(&bytes).expect("properties parse");
        assert_eq!(parsed.content_type, Some(&b"application/json"[..]));
        assert_eq!(parsed.delivery_mode, Some(2));
        assert_eq!(parsed.correlation_id, Some(&b"1-7"[..]));
        assert_eq!(parsed.reply_to, Some(&b"replies"[..]));
    }

    #[test]
    fn props_encode_only_what_is_set() {
        let props = Props {
            delivery_mode: Some(1),
            ..Props::default()
        };
        assert_eq!(props.to_bytes(), [0b0001_0000, 0, 1]);
    }

    #[test]
    fn publish_and_ack_match_the_generic_encoder() {
        for mandatory in [false, true] {
            let mut hand = BytesMut::new();
            encode_publish(
                &mut hand,
                4096,
                3,
                ("ex", "key", mandatory),
                NO_PROPERTIES,
                b"",
            );
            let mut generic = BytesMut::new();
            encode_method(&mut generic, 3, &basic_publish("ex", "key", mandatory));
            assert_eq!(&hand[..generic.len()], &generic[..]);
        }
        let mut hand = BytesMut::new();
        encode_ack(&mut hand, 2, 99, true);
        let mut generic = BytesMut::new();
        encode_method(&mut generic, 2, &basic_ack(99, true));
        assert_eq!(hand, generic);
    }

    #[test]
    fn publish_splits_the_body_at_frame_max() {
        let mut out = BytesMut::new();
        let body = vec![7u8; 10_000];
        encode_publish(&mut out, 4096, 1, ("", "q", false), NO_PROPERTIES, &body);
        let mut frames = Vec::new();
        while let Some(f) = warren_protocol::frame::decode_frame(&mut out, 4096).expect("frame") {
            frames.push((f.kind, f.payload.len()));
        }
        use warren_protocol::frame::FrameKind::{Body, Header, Method};
        assert_eq!(
            frames,
            [
                (Method, 10),
                (Header, 14),
                (Body, 4088),
                (Body, 4088),
                (Body, 1824)
            ]
        );
    }
}
