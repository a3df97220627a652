//! What travels on a node link once TLS has verified both ends: first a hello each way, then frames.
//!
//! The hello names the cluster (its id, from the name and node list), the node and this run of it
//! (the incarnation, new at every start, so a peer can tell a restarted node from a link that
//! merely reconnected). A mismatch is answered with the reason and the link is closed, so a
//! misconfigured node says why in both logs.
//!
//! A frame is `length (u32, big-endian) | kind (u8) | payload`; the length counts kind and payload
//! and is bounded, so a peer cannot make this node buffer without limit. A request larger than a
//! frame (a big message forwarded or replicated, a snapshot) travels as `RequestPart` frames
//! followed by its `Request` frame, and the receiver joins them (bounded by `MAX_REQUEST`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Marks the start of a node link (after TLS), so that anything else is refused at once.
const MAGIC: &[u8; 4] = b"WRNL";
const VERSION: u8 = 1;
/// Magic, version, cluster id, node id, incarnation.
pub(crate) const HELLO_LEN: usize = 4 + 1 + 8 + 8 + 8;
/// The largest frame accepted (kind and payload).
pub(crate) const MAX_FRAME: u32 = 16 * 1024 * 1024;
/// The most a request's body may carry in one frame (the rest of the frame is its head).
pub(crate) const MAX_PART: usize = MAX_FRAME as usize - 64;
/// The largest request body a link joins from parts (a 512 MiB message, RabbitMQ's ceiling and
/// Warren's, with room for its envelope), and the most a link buffers of unfinished requests.
pub(crate) const MAX_REQUEST: usize = 768 * 1024 * 1024;

/// A node introducing itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub cluster_id: u64,
    pub node_id: u64,
    pub incarnation: u64,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        let mut b = &mut out[..];
        b.put_slice(MAGIC);
        b.put_u8(VERSION);
        b.put_u64(self.cluster_id);
        b.put_u64(self.node_id);
        b.put_u64(self.incarnation);
        out
    }

    pub fn decode(bytes: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        let mut b = &bytes[..];
        if &b[..4] != MAGIC {
            return Err("not a Warren node link".into());
        }
        b.advance(4);
        let version = b.get_u8();
        if version != VERSION {
            return Err(format!(
                "node link version {version}; this node speaks {VERSION}"
            ));
        }
        Ok(Hello {
            cluster_id: b.get_u64(),
            node_id: b.get_u64(),
            incarnation: b.get_u64(),
        })
    }
}

/// The kinds of frame on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// The hello was accepted: frames follow.
    Welcome,
    /// The hello was refused, and why; the link closes.
    Refused(String),
    /// Liveness: answered with a `Pong` carrying the same number.
    Ping(u64),
    Pong(u64),
    /// A call to the peer's handler of `group` (a Raft message, a forwarded proposal), answered by
    /// a `Response` with the same `id`.
    Request {
        id: u64,
        group: u32,
        kind: u8,
        body: Bytes,
    },
    /// A leading piece of request `id`'s body (the `Request` frame carries the last piece).
    RequestPart {
        id: u64,
        body: Bytes,
    },
    /// The answer to request `id`: its body, or why it failed.
    Response {
        id: u64,
        answer: Result<Bytes, String>,
    },
}

const WELCOME: u8 = 1;
const REFUSED: u8 = 2;
const PING: u8 = 3;
const PONG: u8 = 4;
const REQUEST: u8 = 5;
const RESPONSE: u8 = 6;
const REQUEST_PART: u8 = 7;

impl Frame {
    pub fn encode(&self, out: &mut BytesMut) {
        let (kind, head, body): (u8, Vec<u8>, &[u8]) = match self {
            Frame::Welcome => (WELCOME, Vec::new(), &[]),
            Frame::Refused(why) => (REFUSED, Vec::new(), why.as_bytes()),
            Frame::Ping(n) => (PING, n.to_be_bytes().to_vec(), &[]),
            Frame::Pong(n) => (PONG, n.to_be_bytes().to_vec(), &[]),
            Frame::Request {
                id,
                group,
                kind,
                body,
            } => {
                let mut head = id.to_be_bytes().to_vec();
                head.extend_from_slice(&group.to_be_bytes());
                head.push(*kind);
                (REQUEST, head, body)
            }
            Frame::RequestPart { id, body } => (REQUEST_PART, id.to_be_bytes().to_vec(), body),
            Frame::Response { id, answer } => {
                let mut head = id.to_be_bytes().to_vec();
                head.push(u8::from(answer.is_ok()));
                let body = match answer {
                    Ok(body) => &body[..],
                    Err(why) => why.as_bytes(),
                };
                (RESPONSE, head, body)
            }
        };
        out.put_u32((1 + head.len() + body.len()) as u32);
        out.put_u8(kind);
        out.put_slice(&head);
        out.put_slice(body);
    }

    /// Whether the frame fits the bound a receiver enforces.
    pub fn fits(&self) -> bool {
        let body = match self {
            Frame::Request { body, .. } | Frame::RequestPart { body, .. } => body.len(),
            Frame::Response {
                answer: Ok(body), ..
            } => body.len(),
            Frame::Response {
                answer: Err(why), ..
            } => why.len(),
            Frame::Refused(why) => why.len(),
            _ => 0,
        };
        body + 32 <= MAX_FRAME as usize
    }

    /// The next whole frame in `buf` (consumed), None if more bytes are needed, or why the bytes
    /// are not a frame.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len == 0 || len > MAX_FRAME {
            return Err(format!("frame length {len} out of range"));
        }
        let total = 4 + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let kind = buf.get_u8();
        let payload = buf.split_to(total - 5).freeze();
        let number = |p: &Bytes| -> Result<u64, String> {
            <[u8; 8]>::try_from(&p[..])
                .map(u64::from_be_bytes)
                .map_err(|_| format!("frame kind {kind}: {} octets, expected 8", p.len()))
        };
        match kind {
            WELCOME if payload.is_empty() => Ok(Some(Frame::Welcome)),
            REFUSED => Ok(Some(Frame::Refused(
                String::from_utf8_lossy(&payload).into_owned(),
            ))),
            PING => number(&payload).map(|n| Some(Frame::Ping(n))),
            PONG => number(&payload).map(|n| Some(Frame::Pong(n))),
            REQUEST if payload.len() >= 13 => Ok(Some(Frame::Request {
                id: number(&payload.slice(..8))?,
                group: u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]]),
                kind: payload[12],
                body: payload.slice(13..),
            })),
            REQUEST_PART if payload.len() >= 8 => Ok(Some(Frame::RequestPart {
                id: number(&payload.slice(..8))?,
                body: payload.slice(8..),
            })),
            RESPONSE if payload.len() >= 9 => {
                let id = number(&payload.slice(..8))?;
                let answer = match payload[8] {
                    1 => Ok(payload.slice(9..)),
                    0 => Err(String::from_utf8_lossy(&payload[9..]).into_owned()),
                    other => return Err(format!("response status {other}")),
                };
                Ok(Some(Frame::Response { id, answer }))
            }
            other => Err(format!("unknown frame kind {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip_and_foreign_bytes_are_refused() {
        let hello = Hello {
            cluster_id: 7,
            node_id: 2,
            incarnation: 99,
        };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        let mut amqp = [0u8; HELLO_LEN];
        amqp[..8].copy_from_slice(b"AMQP\x00\x00\x09\x01");
        assert!(Hello::decode(&amqp).is_err());
        let mut newer = hello.encode();
        newer[4] = 2;
        assert!(Hello::decode(&newer).unwrap_err().contains("version 2"));
    }

    #[test]
    fn frames_round_trip_whole_or_in_pieces() {
        let frames = [
            Frame::Welcome,
            Frame::Refused("wrong cluster".into()),
            Frame::Ping(5),
            Frame::Pong(u64::MAX),
            Frame::Request {
                id: 9,
                group: 3,
                kind: 2,
                body: Bytes::from_static(b"append"),
            },
            Frame::RequestPart {
                id: 9,
                body: Bytes::from_static(b"the first part"),
            },
            Frame::Response {
                id: 9,
                answer: Ok(Bytes::from_static(b"ok")),
            },
            Frame::Response {
                id: 10,
                answer: Err("no leader".into()),
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        // Fed one octet at a time, every frame comes out once it is complete.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = Frame::decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for bytes in [
            &[0, 0, 0, 0][..],
            &[0xff, 0xff, 0xff, 0xff],
            &[0, 0, 0, 1, 99],
            &[0, 0, 0, 2, PING, 1],
            &[0, 0, 0, 2, WELCOME, 0],
            &[0, 0, 0, 5, REQUEST, 0, 0, 0, 1],
            &[0, 0, 0, 10, RESPONSE, 0, 0, 0, 0, 0, 0, 0, 1, 7],
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(Frame::decode(&mut buf).is_err(), "{bytes:?}");
        }
    }
}
