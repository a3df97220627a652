//! Frames to events: deliveries (deliver + header + body), publisher confirms, and a close from the
//! broker as an error. Only the method frames a consumer or confirming publisher sees in bulk are
//! read by hand (basic.deliver, basic.ack/nack, basic.return); anything else goes through the
//! generic decoder, and the body is kept as the first body frame's bytes, not copied.

use bytes::{Bytes, BytesMut};
use warren_protocol::frame::{decode_frame, FrameKind, RawFrame};
use warren_protocol::method::decode_method;

use crate::error::{Closed, Error, Result};

/// A complete delivery (deliver + header + body).
#[derive(Debug)]
pub struct Delivery {
    pub channel: u16,
    pub tag: u64,
    /// The raw property list (flags + values).
    pub props: Bytes,
    /// The first body frame (the benchmark puts its timestamps in the first 8 octets).
    pub body_head: Bytes,
}

#[derive(Debug)]
pub enum Event {
    Deliver(Delivery),
    /// A publisher confirm (basic.ack from the broker).
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
    },
    /// Any other method (a load generator has no use for them once set up).
    Method,
    /// Heartbeats and basic.return (whose content is skipped).
    Other,
}

#[derive(Default)]
struct Pending {
    channel: u16,
    tag: u64,
    props: Bytes,
    body_head: Option<Bytes>,
    body_size: u64,
    received: u64,
}

/// Turns frames into events; one per connection (content frames of different channels do not
/// interleave on the wire — spec 4.2.6 — so one pending delivery is enough).
#[derive(Default)]
pub struct Assembler {
    pending: Option<Pending>,
    /// Content following a basic.return: skipped.
    skipping: bool,
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn invalid(what: &str) -> Error {
    Error::InvalidFrame(what.to_string())
}

impl Assembler {
    /// The next event from the frames already in `rbuf`, without reading.
    pub fn next_event(&mut self, rbuf: &mut BytesMut) -> Result<Option<Event>> {
        while let Some(frame) = decode_frame(rbuf, 0)? {
            if let Some(event) = self.push(frame)? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }

    /// One frame in; an event out once one is complete. A connection.close or channel.close is
    /// [`Error::Closed`] (not answered: the caller is about to give up on the connection).
    pub fn push(&mut self, f: RawFrame) -> Result<Option<Event>> {
        match f.kind {
            FrameKind::Heartbeat => Ok(Some(Event::Other)),
            FrameKind::Method => self.method(f),
            FrameKind::Header => {
                let p = &f.payload;
                if p.len() < 14 {
                    return Err(invalid("short content header"));
                }
                let size = be_u64(&p[4..12]);
                if self.skipping {
                    if size == 0 {
                        self.skipping = false;
                    }
                    return Ok(None);
                }
                let Some(pending) = self.pending.as_mut() else {
                    return Err(invalid("content header without a method"));
                };
                pending.body_size = size;
                pending.props = f.payload.slice(12..);
                if size == 0 {
                    return Ok(self.finish());
                }
                Ok(None)
            }
            FrameKind::Body => {
                if self.skipping {
                    // basic.return bodies: never needed; they end with the connection's next method
                    // frame at the latest.
                    return Ok(None);
                }
                let Some(pending) = self.pending.as_mut() else {
                    return Err(invalid("body frame without a method"));
                };
                pending.received += f.payload.len() as u64;
                if pending.body_head.is_none() {
                    pending.body_head = Some(f.payload);
                }
                if pending.received >= pending.body_size {
                    return Ok(self.finish());
                }
                Ok(None)
            }
        }
    }

    fn finish(&mut self) -> Option<Event> {
        let p = self.pending.take()?;
        Some(Event::Deliver(Delivery {
            channel: p.channel,
            tag: p.tag,
            props: p.props,
            body_head: p.body_head.unwrap_or_default(),
        }))
    }

    fn method(&mut self, f: RawFrame) -> Result<Option<Event>> {
        self.skipping = false;
        let p = &f.payload;
        if p.len() >= 4 && p[0] == 0 && p[1] == 60 {
            match p[3] {
                // basic.deliver: consumer-tag, delivery-tag, redelivered, exchange, routing-key
                60 => {
                    let ctag_len = *p.get(4).ok_or_else(|| invalid("short deliver"))? as usize;
                    let at = 5 + ctag_len;
                    if p.len() < at + 8 {
                        return Err(invalid("short deliver"));
                    }
                    self.pending = Some(Pending {
                        channel: f.channel,
                        tag: be_u64(&p[at..at + 8]),
                        ..Pending::default()
                    });
                    return Ok(None);
                }
                // basic.ack / basic.nack from the broker (publisher confirms)
                80 | 120 if p.len() >= 13 => {
                    let tag = be_u64(&p[4..12]);
                    let multiple = p[12] & 1 != 0;
                    return Ok(Some(if p[3] == 80 {
                        Event::Ack { tag, multiple }
                    } else {
                        Event::Nack { tag, multiple }
                    }));
                }
                // basic.return: its content follows and is skipped
                50 => {
                    self.skipping = true;
                    return Ok(Some(Event::Other));
                }
                _ => {}
            }
        }
        let m = decode_method(p)?;
        match Closed::from_method(&m) {
            Some(closed) => Err(Error::Closed(closed)),
            None => Ok(Some(Event::Method)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{encode_publish, Props, NO_PROPERTIES};
    use amq_protocol::protocol::{channel, AMQPClass};
    use bytes::BufMut;
    use warren_protocol::constants::FRAME_METHOD;
    use warren_protocol::frame::encode_frame_with;
    use warren_protocol::method::{encode_deliver, encode_method};

    /// The header and body frames of a publish: a delivery's content is framed the same way.
    fn content(channel: u16, props: &[u8], body: &[u8], frame_max: u32) -> BytesMut {
        let mut publish = BytesMut::new();
        encode_publish(
            &mut publish,
            frame_max,
            channel,
            ("ex", "k", false),
            props,
            body,
        );
        let size = u32::from_be_bytes([publish[3], publish[4], publish[5], publish[6]]) as usize;
        publish.split_off(7 + size + 1)
    }

    /// basic.deliver + header + body as the broker sends it, the body split at `frame_max`.
    fn deliver(out: &mut BytesMut, channel: u16, tag: u64, props: &[u8], body: &[u8], fm: u32) {
        encode_deliver(out, channel, b"ctag", tag, false, b"ex", b"k");
        out.put_slice(&content(channel, props, body, fm));
    }

    fn events(buf: &mut BytesMut) -> Vec<Event> {
        let mut asm = Assembler::default();
        let mut out = Vec::new();
        while let Some(e) = asm.next_event(buf).expect("valid frames") {
            out.push(e);
        }
        out
    }

    #[test]
    fn a_body_split_over_frames_is_one_delivery_with_its_first_frame() {
        let props = Props {
            correlation_id: Some(b"c1"),
            ..Props::default()
        }
        .to_bytes();
        let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut buf = BytesMut::new();
        deliver(&mut buf, 3, 42, &props, &body, 4096);
        let events = events(&mut buf);
        assert_eq!(events.len(), 1, "{events:?}");
        let Event::Deliver(d) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((d.channel, d.tag), (3, 42));
        assert_eq!(&d.props[..], &props[..]);
        assert_eq!(&d.body_head[..], &body[..4088]);
    }

    #[test]
    fn an_empty_body_completes_with_the_header() {
        let mut buf = BytesMut::new();
        deliver(&mut buf, 1, 7, &Props::default().to_bytes(), b"", 4096);
        match &events(&mut buf)[..] {
            [Event::Deliver(d)] => assert_eq!((d.tag, d.body_head.len()), (7, 0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn returned_content_is_skipped_and_confirms_are_read() {
        let mut buf = BytesMut::new();
        // basic.return: reply-code, reply-text, exchange, routing-key; then its content
        encode_frame_with(&mut buf, FRAME_METHOD, 1, |b| {
            b.put_slice(&[0, 60, 0, 50, 1, 56, 0, 0, 1, b'q']);
        });
        buf.put_slice(&content(1, NO_PROPERTIES, &[1; 5000], 4096));
        // basic.ack from the broker, multiple
        encode_frame_with(&mut buf, FRAME_METHOD, 1, |b| {
            b.put_slice(&[0, 60, 0, 80]);
            b.put_u64(9);
            b.put_u8(1);
        });
        deliver(&mut buf, 1, 5, NO_PROPERTIES, b"hello", 4096);
        match &events(&mut buf)[..] {
            [Event::Other, Event::Ack {
                tag: 9,
                multiple: true,
            }, Event::Deliver(d)] => {
                assert_eq!((d.tag, &d.body_head[..]), (5, &b"hello"[..]))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_close_from_the_broker_is_an_error() {
        let mut buf = BytesMut::new();
        let close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: 404,
            reply_text: "NOT_FOUND - no queue 'q' in vhost '/'".into(),
            class_id: 60,
            method_id: 20,
        }));
        encode_method(&mut buf, 1, &close);
        match Assembler::default().next_event(&mut buf) {
            Err(Error::Closed(c)) => assert_eq!((c.code, c.class_id, c.method_id), (404, 60, 20)),
            other => panic!("{other:?}"),
        }
    }
}
