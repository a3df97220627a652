// What one fuzz input goes through. The single definition shared by the cargo-fuzz target
// (fuzz/fuzz_targets/frames.rs) and the corpus replay test (protocol/tests/fuzz_corpus.rs); both
// bring it in with `#[path = ...] mod decode;`.
//
// Nothing here may panic on any input. The asserts are properties the broker relies on, so a
// failing one is a bug in warren-protocol just as a panic inside it is.

use bytes::{Bytes, BytesMut};
use warren_protocol::content::{
    edit_headers, header_entries, splice_properties, stamp_header, BasicProperties, ContentHeader,
};
use warren_protocol::frame::{decode_frame, FrameError, FrameKind};
use warren_protocol::method::{decode_method, encode_method, method_ids, MethodError};
use warren_protocol::spec::basic::parse_properties;
use warren_protocol::types::{AMQPValue, LongString};

/// The smallest frame_max (the limit before tune-ok) and the broker's default.
pub const FRAME_MAXES: [u32; 2] = [4096, 131072];

const STAMP_KEY: &str = "x-warren-publisher";

/// Splits `data` into frames at each frame_max and decodes every payload by its frame type; then
/// hands the whole input to the payload decoders as well, so that the fuzzer reaches them without
/// having to build a valid frame envelope first.
pub fn decode_all(data: &[u8]) {
    for frame_max in FRAME_MAXES {
        let whole = split_frames(data, frame_max, data.len().max(1));
        // The broker reads from a socket: the same bytes arriving in small pieces must give the same
        // frames, the same error and the same unconsumed tail.
        let step = 1 + data.first().map_or(0, |b| usize::from(b % 16));
        let pieces = split_frames(data, frame_max, step);
        assert!(
            whole == pieces,
            "frame_max {frame_max}: reading {step} bytes at a time changed the result: {:?} vs {:?}",
            whole.summary(),
            pieces.summary()
        );
        for (kind, _channel, payload) in &whole.frames {
            match kind {
                FrameKind::Method => method(payload),
                FrameKind::Header => header(payload.clone()),
                FrameKind::Body | FrameKind::Heartbeat => {}
            }
        }
    }
    method(data);
    header(Bytes::copy_from_slice(data));
    properties(data);
}

#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    pub frames: Vec<(FrameKind, u16, Bytes)>,
    /// The error that ended the stream, if any.
    pub error: Option<FrameError>,
    /// Bytes left in the buffer when the input ran out (an incomplete frame); 0 after an error,
    /// when the connection is closed whatever it had read.
    pub left: usize,
}

/// Frame kinds, channels and payload sizes.
pub type Shapes = Vec<(FrameKind, u16, usize)>;

impl Split {
    /// Frame shapes, error and leftover, for messages (payloads can be large).
    pub fn summary(&self) -> (Shapes, &Option<FrameError>, usize) {
        let frames = self
            .frames
            .iter()
            .map(|(k, c, p)| (*k, *c, p.len()))
            .collect();
        (frames, &self.error, self.left)
    }
}

/// Feeds `data` to `decode_frame` `step` bytes at a time, as a connection's read loop does.
pub fn split_frames(data: &[u8], frame_max: u32, step: usize) -> Split {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    loop {
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(f)) => {
                assert!(
                    f.payload.len() + 8 <= frame_max as usize,
                    "a frame of {} payload octets passed frame_max {frame_max}",
                    f.payload.len()
                );
                frames.push((f.kind, f.channel, f.payload));
            }
            Ok(None) if fed < data.len() => {
                let n = step.min(data.len() - fed);
                buf.extend_from_slice(&data[fed..fed + n]);
                fed += n;
            }
            Ok(None) => {
                return Split {
                    frames,
                    error: None,
                    left: buf.len(),
                }
            }
            Err(e) => {
                return Split {
                    frames,
                    error: Some(e),
                    left: 0,
                }
            }
        }
    }
}

/// A method frame's payload: decoded, and a decoded method must survive the broker's encoder.
pub fn method(payload: &[u8]) {
    match decode_method(payload) {
        Ok(m) => {
            let mut out = BytesMut::new();
            encode_method(&mut out, 1, &m);
            let f = match decode_frame(&mut out, 0) {
                Ok(Some(f)) => f,
                other => panic!("an encoded method is not one whole frame: {other:?}"),
            };
            assert_eq!(f.kind, FrameKind::Method);
            let again = decode_method(&f.payload)
                .unwrap_or_else(|e| panic!("a re-encoded method does not decode: {e}"));
            // Debug, not ==: a float field may hold NaN.
            assert_eq!(
                format!("{m:?}"),
                format!("{again:?}"),
                "method changed when re-encoded"
            );
        }
        Err(MethodError::Unknown {
            class_id,
            method_id,
        })
        | Err(MethodError::Malformed {
            class_id,
            method_id,
        }) => assert_eq!((class_id, method_id), method_ids(payload)),
    }
}

/// A content header frame's payload.
pub fn header(payload: Bytes) {
    if let Ok(h) = ContentHeader::parse(payload.clone()) {
        assert_eq!(h.properties, payload.slice(12..));
        assert!(
            BasicProperties::parse(&h.properties).is_ok(),
            "ContentHeader::parse accepted properties that BasicProperties::parse refuses"
        );
    }
    if payload.len() >= 12 {
        properties(&payload[12..]);
    }
}

/// A raw property list (flags and values) through every reader and editor the broker applies to it.
pub fn properties(raw: &[u8]) {
    let parsed = BasicProperties::parse(raw);
    if let Ok(p) = &parsed {
        // Every decoder must see what Warren saw: amq-protocol (the re-encoder) and, like it,
        // RabbitMQ and py-amqp read the same properties from the same bytes (a continuation flag
        // or trailing bytes once made the views differ). amq-protocol alone refuses non-UTF-8
        // short strings, which Warren forwards as they are: then it decodes nothing at all.
        if let Ok((rest, theirs)) = parse_properties(raw) {
            assert!(rest.is_empty(), "amq-protocol left {} bytes", rest.len());
            // Compared as printed: a NaN float is not equal to itself, yet the same value.
            assert_eq!(
                format!("{:?}", p.headers_table()),
                format!("{:?}", theirs.headers())
            );
            assert_eq!(
                p.content_type,
                theirs
                    .content_type()
                    .as_ref()
                    .map(|s| s.as_str().as_bytes())
            );
            assert_eq!(p.priority, *theirs.priority());
            assert_eq!(
                p.user_id,
                theirs.user_id().as_ref().map(|s| s.as_str().as_bytes())
            );
        }
    }
    // Dead-lettering: read the entries it needs, add its own, drop the expiration.
    let dead = header_entries(raw, &["x-death", "CC"]).map(|found| {
        let mut add = found;
        add.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString(LongString::from("q")),
        );
        splice_properties(raw, &["x-death"], &add, true)
    });
    if let (Ok(Ok(out)), Ok(before)) = (&dead, &parsed) {
        let after = BasicProperties::parse(out)
            .unwrap_or_else(|e| panic!("dead-lettered properties do not parse: {e}"));
        assert_eq!(
            BasicProperties {
                headers: None,
                expiration: None,
                ..before.clone()
            },
            BasicProperties {
                headers: None,
                ..after.clone()
            },
            "dead-lettering changed a property other than headers and expiration"
        );
    }

    let stamped = stamp_header(raw, STAMP_KEY, b"admin");
    let removed = edit_headers(raw, &[STAMP_KEY, "x-death"], None);
    let appended = edit_headers(raw, &[], Some(("k", b"v")));
    let Ok(before) = parsed else { return };
    for (what, edited) in [
        ("stamp", stamped),
        ("remove", removed),
        ("append", appended),
    ] {
        let Ok(out) = edited else { continue };
        let after = BasicProperties::parse(&out)
            .unwrap_or_else(|e| panic!("{what}: edited properties do not parse: {e}"));
        // Only the headers table may change.
        assert_eq!(
            BasicProperties {
                headers: None,
                ..before.clone()
            },
            BasicProperties {
                headers: None,
                ..after.clone()
            },
            "{what}: a property other than headers changed"
        );
        assert!(
            after.headers.is_some(),
            "{what}: no headers table after editing"
        );
        if what == "stamp" {
            if let Some(t) = after.headers_table() {
                assert_eq!(
                    t.inner().get(STAMP_KEY),
                    Some(&AMQPValue::LongString(LongString::from("admin"))),
                    "stamp: the publisher header does not hold the stamped value"
                );
            }
        }
    }
}
