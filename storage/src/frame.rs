//! The framing the command log and spill runs share: `len:u32 crc32:u32 payload`, big-endian, the
//! CRC over the payload, so a torn or damaged record is detected instead of served.

use bytes::Bytes;

/// Bytes before the payload.
pub const HEADER: usize = 8;

/// The header of a payload of `len` bytes with checksum `crc`.
pub fn header(len: u32, crc: u32) -> [u8; HEADER] {
    let mut h = [0; HEADER];
    h[..4].copy_from_slice(&len.to_be_bytes());
    h[4..].copy_from_slice(&crc.to_be_bytes());
    h
}

/// The header that frames `payload` (its length and checksum).
pub fn header_for(payload: &[u8]) -> [u8; HEADER] {
    header(payload.len() as u32, crc32fast::hash(payload))
}

/// The payload length a header declares (`head` holds at least the first 4 bytes of a frame).
pub fn declared_len(head: &[u8]) -> usize {
    u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize
}

/// `len` bytes of `file` from `offset` (framed records read back from a spill run or a stream).
pub(crate) fn read_at(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Bytes::from(buf))
}

/// What is at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A payload whose checksum matches, and the offset after it.
    Whole {
        payload: Bytes,
        end: usize,
    },
    /// The frame runs past the data: it would end at `end` (at least a header's length on).
    Short {
        end: usize,
    },
    Corrupt,
}

/// The frame starting at `at` (at most `data.len()`) in `data`.
pub fn parse(data: &Bytes, at: usize) -> Frame {
    if data.len() - at < HEADER {
        return Frame::Short { end: at + HEADER };
    }
    let h = &data[at..at + HEADER];
    let crc = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let end = at + HEADER + declared_len(h);
    if data.len() < end {
        return Frame::Short { end };
    }
    let payload = data.slice(at + HEADER..end);
    if crc32fast::hash(&payload) != crc {
        return Frame::Corrupt;
    }
    Frame::Whole { payload, end }
}
