//! Log records and their framing: `len:u32 crc32:u32 payload`, the payload a tag and its fields.
//! Records are opaque to this crate: queues are names, messages are byte strings, definitions are
//! key/value pairs; the broker decides what they mean.

use bytes::Bytes;

use crate::frame::Frame;

/// One entry of the command log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A definition (durable exchange, queue, binding...) set to `value`.
    Put { key: String, value: Bytes },
    /// A definition removed.
    Delete { key: String },
    /// A message stored in `queue` under `id` (ids are unique per log and increase).
    Enqueue {
        queue: String,
        id: u64,
        payload: Bytes,
    },
    /// A message left `queue` (acknowledged, expired, dropped).
    Remove { queue: String, id: u64 },
    /// Every message of `queue` is gone (the queue was deleted or purged).
    DropQueue { queue: String },
}

const PUT: u8 = 1;
const DELETE: u8 = 2;
const ENQUEUE: u8 = 3;
const REMOVE: u8 = 4;
const DROP_QUEUE: u8 = 5;

/// Frame header: payload length and CRC-32 of the payload.
pub use crate::frame::HEADER;
/// The largest payload a record may declare (a message is at most 512 MiB in the broker).
pub(crate) const MAX_PAYLOAD: usize = 600 << 20;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

impl Record {
    /// Appends the framed record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        match self {
            Record::Put { key, value } => {
                out.push(PUT);
                put_str(out, key);
                put_bytes(out, value);
            }
            Record::Delete { key } => {
                out.push(DELETE);
                put_str(out, key);
            }
            Record::Enqueue { queue, id, payload } => {
                out.push(ENQUEUE);
                put_str(out, queue);
                out.extend_from_slice(&id.to_be_bytes());
                put_bytes(out, payload);
            }
            Record::Remove { queue, id } => {
                out.push(REMOVE);
                put_str(out, queue);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Record::DropQueue { queue } => {
                out.push(DROP_QUEUE);
                put_str(out, queue);
            }
        }
        let header = crate::frame::header_for(&out[start + HEADER..]);
        out[start..start + HEADER].copy_from_slice(&header);
    }

    /// Decodes a payload whose CRC was already checked.
    fn decode(payload: &Bytes) -> Option<Record> {
        let mut r = Cursor {
            buf: payload,
            pos: 1,
        };
        let record = match *payload.first()? {
            PUT => Record::Put {
                key: r.string()?,
                value: r.bytes()?,
            },
            DELETE => Record::Delete { key: r.string()? },
            ENQUEUE => Record::Enqueue {
                queue: r.string()?,
                id: r.u64()?,
                payload: r.bytes()?,
            },
            REMOVE => Record::Remove {
                queue: r.string()?,
                id: r.u64()?,
            },
            DROP_QUEUE => Record::DropQueue { queue: r.string()? },
            _ => return None,
        };
        (r.pos == payload.len()).then_some(record)
    }
}

struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len())?;
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Some(out)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(&b);
        Some(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// The outcome of reading the frame at `offset`.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    Record(Record, usize),
    /// The bytes at this offset are not a valid record (torn, corrupt, or zero fill).
    Invalid,
    End,
}

/// Reads the record framed at `offset` of `segment`, returning it and the next offset.
pub fn read_at(segment: &Bytes, offset: usize) -> Read {
    if offset == segment.len() {
        return Read::End;
    }
    match crate::frame::parse(segment, offset) {
        Frame::Whole { payload, end } if !payload.is_empty() && payload.len() <= MAX_PAYLOAD => {
            match Record::decode(&payload) {
                Some(r) => Read::Record(r, end),
                None => Read::Invalid,
            }
        }
        // Torn (short), damaged, empty or oversized.
        _ => Read::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Record> {
        vec![
            Record::Put {
                key: "q/%2F/a".into(),
                value: Bytes::from_static(b"{}"),
            },
            Record::Delete {
                key: "q/%2F/a".into(),
            },
            Record::Enqueue {
                queue: "/\0a".into(),
                id: 7,
                payload: Bytes::from_static(b"body"),
            },
            Record::Remove {
                queue: "/\0a".into(),
                id: 7,
            },
            Record::DropQueue {
                queue: "/\0a".into(),
            },
        ]
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        for r in all() {
            r.encode(&mut buf);
        }
        let buf = Bytes::from(buf);
        let mut offset = 0;
        let mut back = Vec::new();
        while let Read::Record(r, next) = read_at(&buf, offset) {
            back.push(r);
            offset = next;
        }
        assert_eq!(back, all());
        assert_eq!(read_at(&buf, offset), Read::End);
    }

    #[test]
    fn any_flipped_bit_or_cut_is_detected() {
        let mut buf = Vec::new();
        all()[2].encode(&mut buf);
        for cut in 0..buf.len() {
            assert_eq!(
                read_at(&Bytes::from(buf[..cut].to_vec()), 0),
                if cut == 0 { Read::End } else { Read::Invalid }
            );
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert_eq!(read_at(&Bytes::from(bad), 0), Read::Invalid, "flip at {i}");
        }
    }
}
