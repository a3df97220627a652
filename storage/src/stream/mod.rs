//! Streams (RabbitMQ's `x-queue-type: stream`): an append-only log of records addressed by offset,
//! which readers read from any offset or time without removing anything. Records leave only by
//! retention, a whole segment at a time: by age (`x-max-age`) and by total size
//! (`x-max-length-bytes`), never the segment being written.
//!
//! A stream lives in its own directory as segment files (segment.rs), each started afresh once the
//! last passed `x-stream-max-segment-size-bytes`. Memory per stream is its sparse indexes (one entry
//! per 64 KiB on disk) whatever the stream's size; readers hold a [`Cursor`] (an offset and a file
//! position) and read what their credit allows. Appends are written at once and made durable by the
//! [`syncer::Syncer`], one fdatasync per file for every append waiting on it, like the command log's
//! group commit.

mod segment;
pub mod syncer;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use segment::{Repaired, StreamRecord};
use segment::{Segment, READ_BATCH};

/// RabbitMQ's default `x-stream-max-segment-size-bytes` (500 MB).
pub const DEFAULT_MAX_SEGMENT_BYTES: u64 = 500_000_000;

/// Which records a stream keeps (at least the segment being written, whatever they say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Segments whose newest record is older than this go.
    pub max_age_ms: Option<u64>,
    /// The oldest segments go while the stream is larger than this.
    pub max_bytes: Option<u64>,
}

/// Where a reader is: the next offset it reads, and a position in a segment file at or before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub offset: u64,
    segment: u64,
    position: u64,
}

/// One stream's segments: the sealed ones, oldest first, and the one being written.
#[derive(Debug)]
pub struct StreamLog {
    dir: PathBuf,
    sealed: VecDeque<Segment>,
    active: Segment,
    max_segment_bytes: u64,
    bytes: u64,
}

impl StreamLog {
    /// Opens the stream in `dir`, creating it (mode 0700) if it does not exist. Returns the tails
    /// it cut off the last segment (records whose write a crash interrupted).
    pub fn open(dir: &Path, max_segment_bytes: u64) -> io::Result<(StreamLog, Vec<Repaired>)> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            if let Some(first) = name.to_str().and_then(segment::parse_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments: VecDeque<Segment> = VecDeque::new();
        let mut repaired = Vec::new();
        let mut bytes = 0;
        for (i, first) in firsts.iter().enumerate() {
            let tail = i + 1 == firsts.len();
            let (seg, cut) = Segment::open(dir.join(segment::file_name(*first)), *first, tail)?;
            if let Some(prev) = segments.back() {
                if prev.next != seg.first {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "stream {}: segment {} ends at offset {} but the next starts at {}",
                            dir.display(),
                            prev.path.display(),
                            prev.next,
                            seg.first
                        ),
                    ));
                }
            }
            repaired.extend(cut);
            bytes += seg.len;
            segments.push_back(seg);
        }
        let active = match segments.pop_back() {
            Some(last) => last,
            None => {
                let first = Segment::create(dir, 0)?;
                sync_dir(dir)?;
                first
            }
        };
        let log = StreamLog {
            dir: dir.to_path_buf(),
            sealed: segments,
            active,
            max_segment_bytes: max_segment_bytes.max(4096),
            bytes,
        };
        Ok((log, repaired))
    }

    /// Every segment, oldest first.
    fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.sealed.iter().chain(std::iter::once(&self.active))
    }

    /// The oldest offset still kept.
    pub fn first_offset(&self) -> u64 {
        self.sealed.front().map_or(self.active.first, |s| s.first)
    }

    /// The offset the next record gets.
    pub fn next_offset(&self) -> u64 {
        self.active.next
    }

    /// Records kept.
    pub fn len(&self) -> u64 {
        self.next_offset() - self.first_offset()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// The size after which a new segment is started, from the next append on.
    pub fn set_max_segment_bytes(&mut self, bytes: u64) {
        self.max_segment_bytes = bytes.max(4096);
    }

    /// The file the latest appends went to, for the [`syncer::Syncer`].
    pub fn active_file(&self) -> Arc<File> {
        self.active.file.clone()
    }

    /// Appends a record stamped `timestamp_ms` (or the previous record's, if that is later) and
    /// returns its offset. It is durable once the active file is synced.
    pub fn append(&mut self, timestamp_ms: i64, data: &[u8]) -> io::Result<u64> {
        if self.active.len >= self.max_segment_bytes {
            // What was written to the old segment is synced before the new one is used, so a
            // crash never leaves a gap between them.
            self.active.file.sync_data()?;
            let next = Segment::create(&self.dir, self.active.next)?;
            sync_dir(&self.dir)?;
            let sealed = std::mem::replace(&mut self.active, next);
            self.sealed.push_back(sealed);
        }
        let timestamp_ms = timestamp_ms.max(self.active.last_ts);
        let before = self.active.len;
        let offset = self.active.append(timestamp_ms, data)?;
        self.bytes += self.active.len - before;
        Ok(offset)
    }

    /// Deletes the segments `retention` no longer keeps (never the active one); returns how many.
    pub fn apply_retention(&mut self, now_ms: i64, retention: &Retention) -> io::Result<usize> {
        let mut removed = 0;
        while let Some(front) = self.sealed.front() {
            let too_old = retention
                .max_age_ms
                .is_some_and(|age| front.last_ts < now_ms.saturating_sub(age as i64));
            let too_big = retention.max_bytes.is_some_and(|max| self.bytes > max);
            if !too_old && !too_big {
                break;
            }
            let Some(seg) = self.sealed.pop_front() else {
                break;
            };
            self.bytes -= seg.len;
            fs::remove_file(&seg.path)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// A cursor at `offset`, clamped to the records kept (and the end).
    pub fn cursor_at(&self, offset: u64) -> Cursor {
        let offset = offset.clamp(self.first_offset(), self.next_offset());
        let seg = if offset >= self.active.first {
            &self.active
        } else {
            self.sealed
                .iter()
                .rev()
                .find(|s| s.first <= offset)
                .unwrap_or(&self.active)
        };
        let mark = seg.mark_for_offset(offset);
        Cursor {
            offset,
            segment: seg.first,
            position: mark.position,
        }
    }

    /// A cursor at the first record stamped at or after `timestamp_ms` (the end if none is).
    pub fn cursor_at_time(&self, timestamp_ms: i64) -> io::Result<Cursor> {
        let Some(seg) = self.segments().find(|s| s.last_ts >= timestamp_ms) else {
            return Ok(self.cursor_at(self.next_offset()));
        };
        let mark = seg.mark_for_time(timestamp_ms);
        let mut position = mark.position;
        loop {
            let (records, after) = seg.read(position, 4096, READ_BATCH)?;
            if records.is_empty() {
                return Ok(self.cursor_at(seg.next));
            }
            if let Some(r) = records.iter().find(|r| r.timestamp_ms >= timestamp_ms) {
                return Ok(Cursor {
                    offset: r.offset,
                    segment: seg.first,
                    position: mark.position,
                });
            }
            position = after;
        }
    }

    /// The records from `cursor` on: at least one if there is one, more while `max_records` and
    /// about `max_bytes` allow; the cursor moves past them. A cursor whose records retention
    /// removed moves to the oldest record kept.
    pub fn read(
        &self,
        cursor: &mut Cursor,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<StreamRecord>> {
        let mut out = Vec::new();
        if max_records == 0 {
            return Ok(out);
        }
        loop {
            let found = self.segments().position(|s| s.first == cursor.segment);
            let Some(i) = found.filter(|_| cursor.offset >= self.first_offset()) else {
                *cursor = self.cursor_at(cursor.offset);
                continue;
            };
            let mut segments = self.segments().skip(i);
            let Some(seg) = segments.next() else {
                return Ok(out);
            };
            if cursor.position >= seg.len {
                match segments.next() {
                    Some(next) => {
                        *cursor = Cursor {
                            offset: cursor.offset.max(next.first),
                            segment: next.first,
                            position: 0,
                        };
                        continue;
                    }
                    None => return Ok(out),
                }
            }
            let (records, position) = seg.read(cursor.position, max_records, max_bytes)?;
            cursor.position = position;
            out.extend(records.into_iter().filter(|r| r.offset >= cursor.offset));
            if let Some(last) = out.last() {
                cursor.offset = last.offset + 1;
                return Ok(out);
            }
        }
    }

    /// Deletes the stream's files and directory (the queue was deleted).
    pub fn remove(self) -> io::Result<()> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(&dir)
    }
}

/// Makes a directory's entries (a new or deleted file) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
