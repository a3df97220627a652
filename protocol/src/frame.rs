//! Frame splitting (AMQP 0-9-1 section 4.2.3): `type:u8 channel:u16 size:u32 payload frame-end`.
//!
//! Decoding only slices the read buffer (`BytesMut::split_to` + `freeze`), so a message body arrives at a
//! queue without being copied. The size is checked against the negotiated frame_max before anything waits
//! for or allocates the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::constants::*;

/// What a frame carries; the payload is not interpreted here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Method,
    Header,
    Body,
    Heartbeat,
}

/// One frame as it came off the wire.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub kind: FrameKind,
    pub channel: u16,
    pub payload: Bytes,
}

/// Why a byte stream is not a valid frame sequence; all of these are connection errors (501 FRAME_ERROR).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {size} octets exceeds frame_max {max}")]
    TooLarge { size: u64, max: u32 },
    #[error("frame end octet was {0:#04x}, expected 0xce")]
    BadFrameEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
}

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` if more bytes are needed.
///
/// `frame_max` is the negotiated maximum total frame size (header and end octet included); 0 means the
/// peer imposes no limit, which callers never pass since the broker always proposes one.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<RawFrame>, FrameError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = match buf[0] {
        FRAME_METHOD => FrameKind::Method,
        FRAME_HEADER => FrameKind::Header,
        FRAME_BODY => FrameKind::Body,
        FRAME_HEARTBEAT => FrameKind::Heartbeat,
        other => return Err(FrameError::UnknownType(other)),
    };
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    let total = u64::from(size) + u64::from(FRAME_OVERHEAD);
    if frame_max != 0 && total > u64::from(frame_max) {
        return Err(FrameError::TooLarge {
            size: total,
            max: frame_max,
        });
    }
    // `total` fits in usize: it is at most frame_max + 8 on any platform this builds for.
    let total = total as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let end = buf[total - 1];
    if end != FRAME_END {
        return Err(FrameError::BadFrameEnd(end));
    }
    buf.advance(7);
    let payload = buf.split_to(size as usize).freeze();
    buf.advance(1);
    Ok(Some(RawFrame {
        kind,
        channel,
        payload,
    }))
}

/// Appends a frame whose payload is written by `write_payload`, patching the size in afterwards.
pub fn encode_frame_with(
    out: &mut BytesMut,
    frame_type: u8,
    channel: u16,
    write_payload: impl FnOnce(&mut BytesMut),
) {
    out.put_u8(frame_type);
    out.put_u16(channel);
    let size_at = out.len();
    out.put_u32(0);
    let start = out.len();
    write_payload(out);
    let size = (out.len() - start) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Appends a heartbeat frame (always on channel 0, empty payload).
pub fn encode_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Appends a content header frame: class, weight 0, body size, and the properties exactly as given.
pub fn encode_content_header(
    out: &mut BytesMut,
    channel: u16,
    class_id: u16,
    body_size: u64,
    raw_properties: &[u8],
) {
    encode_frame_with(out, FRAME_HEADER, channel, |b| {
        b.put_u16(class_id);
        b.put_u16(0);
        b.put_u64(body_size);
        b.put_slice(raw_properties);
    });
}

/// Appends the body as as many body frames as `frame_max` requires (spec 4.2.6.2).
pub fn encode_body(out: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    let chunk = (frame_max.max(FRAME_MIN_SIZE) - FRAME_OVERHEAD) as usize;
    for part in body.chunks(chunk) {
        out.reserve(part.len() + FRAME_OVERHEAD as usize);
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, channel: u16, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        encode_frame_with(&mut b, kind, channel, |p| p.put_slice(payload));
        b[0] = kind;
        b
    }

    #[test]
    fn decodes_a_frame_and_waits_for_partial_ones() {
        let mut whole = frame(FRAME_BODY, 3, b"hello");
        let mut partial = whole.split_to(9);
        assert!(decode_frame(&mut partial, 4096).unwrap().is_none());
        partial.unsplit(whole);
        let f = decode_frame(&mut partial, 4096).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.channel, &f.payload[..]),
            (FrameKind::Body, 3, &b"hello"[..])
        );
        assert!(partial.is_empty());
    }

    #[test]
    fn rejects_oversized_frames_before_reading_the_payload() {
        let mut b = BytesMut::from(&[FRAME_METHOD, 0, 1, 0, 0, 0x10, 0x00][..]);
        assert_eq!(
            decode_frame(&mut b, 4096).unwrap_err(),
            FrameError::TooLarge {
                size: 4104,
                max: 4096
            }
        );
    }

    #[test]
    fn rejects_bad_frame_end_and_unknown_types() {
        let mut b = frame(FRAME_METHOD, 1, b"x");
        let last = b.len() - 1;
        b[last] = 0;
        assert_eq!(
            decode_frame(&mut b, 4096).unwrap_err(),
            FrameError::BadFrameEnd(0)
        );
        let mut b = frame(9, 1, b"x");
        assert_eq!(
            decode_frame(&mut b, 4096).unwrap_err(),
            FrameError::UnknownType(9)
        );
    }

    #[test]
    fn splits_bodies_at_frame_max() {
        let mut out = BytesMut::new();
        encode_body(&mut out, 1, &[7u8; 10000], 4096);
        let mut n = 0;
        let mut total = 0;
        while let Some(f) = decode_frame(&mut out, 4096).unwrap() {
            n += 1;
            total += f.payload.len();
        }
        assert_eq!((n, total), (3, 10000));
    }
}
