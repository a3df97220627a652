//! One segment file of a stream: records framed `len:u32 crc32:u32 payload` (frame.rs), each payload
//! `offset:u64 timestamp_ms:i64 data`, big-endian, appended in offset order. The file is named after
//! its first offset. A sparse index in memory (one entry per [`INDEX_EVERY`] bytes) lets a reader
//! start near any offset or timestamp without reading the segment from its start.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::frame::{self, read_at, Frame, HEADER};

/// Bytes between two index entries.
pub(super) const INDEX_EVERY: u64 = 64 << 10;
/// Bytes read at once when scanning (more when one record is larger).
pub(super) const READ_BATCH: usize = 256 << 10;
/// The offset and timestamp before a record's data.
pub(super) const RECORD_HEAD: usize = 16;

/// A record of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    pub offset: u64,
    /// Wall-clock milliseconds when it was appended (never earlier than the record before it).
    pub timestamp_ms: i64,
    pub data: Bytes,
}

/// Where a record starts, for the sparse index.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    pub offset: u64,
    pub position: u64,
    pub timestamp_ms: i64,
}

#[derive(Debug)]
pub(super) struct Segment {
    pub first: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// Bytes of whole records in the file.
    pub len: u64,
    /// The offset after its last record.
    pub next: u64,
    /// The timestamp of its last record (`i64::MIN` while empty).
    pub last_ts: i64,
    pub index: Vec<Mark>,
}

pub(super) fn file_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// The first offset a segment file's name gives, if it is one.
pub(super) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The framed bytes of one record.
pub(super) fn encode(offset: u64, timestamp_ms: i64, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(RECORD_HEAD + data.len());
    payload.extend_from_slice(&offset.to_be_bytes());
    payload.extend_from_slice(&timestamp_ms.to_be_bytes());
    payload.extend_from_slice(data);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&frame::header_for(&payload));
    out.extend_from_slice(&payload);
    out
}

fn decode(mut payload: Bytes) -> Option<StreamRecord> {
    if payload.len() < RECORD_HEAD {
        return None;
    }
    let offset = payload.get_u64();
    let timestamp_ms = payload.get_i64();
    Some(StreamRecord {
        offset,
        timestamp_ms,
        data: payload,
    })
}

impl Segment {
    /// A new, empty segment file starting at `first`.
    pub fn create(dir: &Path, first: u64) -> io::Result<Segment> {
        let path = dir.join(file_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(Segment::empty(first, path, file))
    }

    /// A segment of no records yet, over `file`.
    fn empty(first: u64, path: PathBuf, file: File) -> Segment {
        Segment {
            first,
            path,
            file: Arc::new(file),
            len: 0,
            next: first,
            last_ts: i64::MIN,
            index: Vec::new(),
        }
    }

    /// Opens an existing segment and reads it through, rebuilding its index. A torn tail (a crash
    /// during a write that was never confirmed: a record cut short, or a broken last record, or
    /// zeros to the end) is cut off when `tail` is set (the last segment); anything else that does
    /// not read back is an error, never silently dropped.
    pub fn open(path: PathBuf, first: u64, tail: bool) -> io::Result<(Segment, Option<Repaired>)> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let size = file.metadata()?.len();
        let mut seg = Segment::empty(first, path, file);
        let mut position = 0u64;
        let mut broken = None;
        // Where the broken record would end, if it declares a length.
        let mut broken_end = u64::MAX;
        'scan: while position < size {
            let want = READ_BATCH.min((size - position) as usize);
            let mut data = read_at(&seg.file, position, want)?;
            let mut at = 0usize;
            loop {
                match frame::parse(&data, at) {
                    Frame::Whole { payload, end } => {
                        let Some(r) = decode(payload) else {
                            broken = Some("a record too short for its offset");
                            broken_end = position + end as u64;
                            break 'scan;
                        };
                        if r.offset != seg.next {
                            broken = Some("records out of offset order");
                            break 'scan;
                        }
                        seg.noted(r.offset, position + at as u64, r.timestamp_ms);
                        seg.len = position + end as u64;
                        at = end;
                    }
                    Frame::Short { end } if at == 0 => {
                        if position + end as u64 > size {
                            broken = Some("a record cut short");
                            break 'scan;
                        }
                        data = read_at(&seg.file, position, end)?;
                    }
                    Frame::Short { .. } => break,
                    Frame::Corrupt => {
                        broken = Some("a record whose checksum does not match");
                        let declared = frame::declared_len(&data[at..]) + HEADER;
                        broken_end = position + (at + declared) as u64;
                        break 'scan;
                    }
                }
            }
            position += at as u64;
        }
        if let Some(what) = broken {
            let torn = broken_end >= size || zeros_from(&seg.file, seg.len, size)?;
            if !tail || !torn {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "stream segment {} has {what} at byte {}",
                        seg.path.display(),
                        seg.len
                    ),
                ));
            }
        }
        let repaired = (seg.len < size).then(|| Repaired {
            path: seg.path.clone(),
            what: broken.unwrap_or("a record cut short"),
            kept_bytes: seg.len,
            dropped_bytes: size - seg.len,
        });
        if seg.len < size {
            seg.file.set_len(seg.len)?;
        }
        Ok((seg, repaired))
    }

    /// Records that a record `offset` starts at `position`.
    fn noted(&mut self, offset: u64, position: u64, timestamp_ms: i64) {
        let due = self
            .index
            .last()
            .is_none_or(|m| position >= m.position + INDEX_EVERY);
        if due {
            self.index.push(Mark {
                offset,
                position,
                timestamp_ms,
            });
        }
        self.next = offset + 1;
        self.last_ts = timestamp_ms;
    }

    /// Appends one framed record (its offset is `self.next`).
    pub fn append(&mut self, timestamp_ms: i64, data: &[u8]) -> io::Result<u64> {
        let offset = self.next;
        let bytes = encode(offset, timestamp_ms, data);
        self.file.write_all_at(&bytes, self.len)?;
        let position = self.len;
        self.len += bytes.len() as u64;
        self.noted(offset, position, timestamp_ms);
        Ok(offset)
    }

    /// The index mark to start from for `offset` (the last one at or before it).
    pub fn mark_for_offset(&self, offset: u64) -> Mark {
        let i = self.index.partition_point(|m| m.offset <= offset);
        self.index.get(i.wrapping_sub(1)).copied().unwrap_or(Mark {
            offset: self.first,
            position: 0,
            timestamp_ms: i64::MIN,
        })
    }

    /// The index mark to start from for the first record at or after `timestamp_ms`.
    pub fn mark_for_time(&self, timestamp_ms: i64) -> Mark {
        let i = self
            .index
            .partition_point(|m| m.timestamp_ms < timestamp_ms);
        self.index.get(i.wrapping_sub(1)).copied().unwrap_or(Mark {
            offset: self.first,
            position: 0,
            timestamp_ms: i64::MIN,
        })
    }

    /// Whole records from `position` on: at least one (when there is one), more while about
    /// `max_bytes` allows and `max_records` is not reached; with the position after the last.
    pub fn read(
        &self,
        position: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<(Vec<StreamRecord>, u64)> {
        let mut out = Vec::new();
        let mut position = position;
        let mut taken = 0usize;
        while position < self.len
            && out.len() < max_records
            && (out.is_empty() || taken < max_bytes)
        {
            let want = READ_BATCH
                .max(max_bytes.saturating_sub(taken))
                .min((self.len - position) as usize);
            let mut data = read_at(&self.file, position, want)?;
            let mut at = 0usize;
            loop {
                if out.len() >= max_records || (!out.is_empty() && taken >= max_bytes) {
                    break;
                }
                match frame::parse(&data, at) {
                    Frame::Whole { payload, end } => {
                        let r =
                            decode(payload).ok_or_else(|| self.damaged(position + at as u64))?;
                        taken += r.data.len();
                        out.push(r);
                        at = end;
                    }
                    Frame::Short { end } if at == 0 => {
                        if position + end as u64 > self.len {
                            return Err(self.damaged(position));
                        }
                        data = read_at(&self.file, position, end)?;
                    }
                    Frame::Short { .. } => break,
                    Frame::Corrupt => return Err(self.damaged(position + at as u64)),
                }
            }
            position += at as u64;
        }
        Ok((out, position))
    }

    fn damaged(&self, at: u64) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "stream segment {} is damaged at byte {at}",
                self.path.display()
            ),
        )
    }
}

/// A torn or damaged tail cut off the last segment at open: the records in it were never
/// confirmed (a crash during their write). The caller reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub path: PathBuf,
    pub what: &'static str,
    pub kept_bytes: u64,
    pub dropped_bytes: u64,
}

/// Whether `file` holds only zero bytes from `from` to `to` (what a crash can leave after a write
/// that extended the file but never reached its blocks).
fn zeros_from(file: &File, from: u64, to: u64) -> io::Result<bool> {
    let mut at = from;
    while at < to {
        let n = READ_BATCH.min((to - at) as usize);
        if read_at(file, at, n)?.iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}
