//! A first-in first-out run of records kept in files: where a queue puts the messages that arrive
//! once its backlog has passed its memory budget, so that only a few counters stay in memory for them
//! however long the backlog grows (OpenStack's `notifications.info` queues fill for days when nothing
//! consumes them).
//!
//! Spill files are scratch space, not durable state: nothing is fsynced and everything is deleted when
//! the run is dropped (persistent messages are also in the command log, which is what survives a
//! crash). Records are appended to the last of a series of chunk files and read back from the first;
//! a chunk is deleted once read to its end, so disk use follows the backlog even when the run never
//! empties. Each record is framed `len:u32 crc32:u32 payload`, so a damaged file is reported instead of
//! served.
//!
//! Appends are buffered (one `pwrite` per 64 KiB). A failed write keeps its bytes in the buffer and is
//! retried by the next append: nothing is lost, memory grows instead, and the broker's disk alarm
//! blocks publishers while the disk is short.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::{self, read_at, Frame, HEADER};

/// Buffered bytes written out at once.
const WRITE_BATCH: usize = 64 << 10;
/// Bytes read from a chunk at once, at least (more when one record is larger).
const READ_BATCH: usize = 64 << 10;

struct Chunk {
    path: PathBuf,
    file: File,
    /// Bytes on file, and how far they have been read.
    written: u64,
    read: u64,
}

/// One FIFO run of records in `DIR/NAME.N` chunk files.
pub struct Spill {
    dir: PathBuf,
    name: String,
    chunk_limit: u64,
    chunks: VecDeque<Chunk>,
    next_chunk: u64,
    /// Framed records not yet written; they follow everything on file.
    pending: BytesMut,
    records: u64,
    /// Payload bytes in the run.
    bytes: u64,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("name", &self.name)
            .field("records", &self.records)
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl Spill {
    /// An empty run; files are created in `dir` (which must exist) as `NAME.0`, `NAME.1`, … when
    /// records are first written. `chunk_limit` bounds a chunk file's size (64 MiB is a good value).
    pub fn new(dir: &Path, name: &str, chunk_limit: u64) -> Self {
        Spill {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            chunk_limit: chunk_limit.max(4096),
            chunks: VecDeque::new(),
            next_chunk: 0,
            pending: BytesMut::new(),
            records: 0,
            bytes: 0,
        }
    }

    /// Records in the run.
    pub fn len(&self) -> u64 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Payload bytes in the run.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Framed bytes appended but not yet written to a file.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// Appends a record made of `parts` (concatenated). The record is kept even when this fails (the
    /// error says the write to disk did not happen yet; it is retried by the next append or read).
    pub fn push(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record over 4 GiB"))?;
        let mut crc = crc32fast::Hasher::new();
        for p in parts {
            crc.update(p);
        }
        self.pending.reserve(HEADER + size);
        self.pending
            .extend_from_slice(&frame::header(len, crc.finalize()));
        for p in parts {
            self.pending.extend_from_slice(p);
        }
        self.records += 1;
        self.bytes += size as u64;
        if self.pending.len() >= WRITE_BATCH {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Takes records from the front of the run: at least one (if any), and more while their total
    /// stays within about `max_bytes`.
    pub fn pop(&mut self, max_bytes: usize) -> io::Result<Vec<Bytes>> {
        let mut out = Vec::new();
        let mut taken = 0;
        while (out.len() as u64) < self.records && (out.is_empty() || taken < max_bytes) {
            let before = out.len();
            self.pop_from_front_chunk(max_bytes.saturating_sub(taken), &mut out)?;
            if out.len() == before {
                self.pop_pending(max_bytes.saturating_sub(taken), &mut out)?;
            }
            if out.len() == before {
                return Err(self.damaged("records are missing from the end of the run"));
            }
            taken += out[before..].iter().map(Bytes::len).sum::<usize>();
        }
        for r in &out {
            self.records -= 1;
            self.bytes -= r.len() as u64;
        }
        if self.records == 0 {
            self.reset()?;
        }
        Ok(out)
    }

    /// Drops every record and deletes the files.
    pub fn clear(&mut self) {
        for chunk in self.chunks.drain(..) {
            let _ = fs::remove_file(&chunk.path);
        }
        self.pending.clear();
        self.records = 0;
        self.bytes = 0;
    }

    fn damaged(&self, what: &str) -> io::Error {
        let file = self
            .chunks
            .front()
            .map_or_else(|| self.dir.join(&self.name), |c| c.path.clone());
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("spill file {}: {what}", file.display()),
        )
    }

    /// Writes the buffered records to the last chunk (starting a new chunk when it is full).
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let full = self
            .chunks
            .back()
            .is_none_or(|c| c.written >= self.chunk_limit);
        if full {
            let path = self.dir.join(format!("{}.{}", self.name, self.next_chunk));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            self.next_chunk += 1;
            self.chunks.push_back(Chunk {
                path,
                file,
                written: 0,
                read: 0,
            });
        }
        let Some(chunk) = self.chunks.back_mut() else {
            return Err(io::Error::other("no spill chunk"));
        };
        chunk.file.write_all_at(&self.pending, chunk.written)?;
        chunk.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Reads whole records from the first chunk with unread bytes, deleting chunks read to their end.
    fn pop_from_front_chunk(&mut self, max_bytes: usize, out: &mut Vec<Bytes>) -> io::Result<()> {
        while self
            .chunks
            .front()
            .is_some_and(|c| c.read == c.written && self.chunks.len() > 1)
        {
            if let Some(done) = self.chunks.pop_front() {
                let _ = fs::remove_file(&done.path);
            }
        }
        let Some(chunk) = self.chunks.front_mut() else {
            return Ok(());
        };
        let unread = chunk.written - chunk.read;
        if unread == 0 {
            return Ok(());
        }
        let want = (max_bytes.max(READ_BATCH) as u64).min(unread) as usize;
        let mut data = read_at(&chunk.file, chunk.read, want)?;
        let mut consumed = 0;
        loop {
            match frame::parse(&data, consumed) {
                Frame::Whole { payload, end } => {
                    out.push(payload);
                    consumed = end;
                }
                // One record larger than the batch: read exactly it.
                Frame::Short { end }
                    if consumed == 0 && data.len() < end && end as u64 <= unread =>
                {
                    data = read_at(&chunk.file, chunk.read, end)?;
                }
                Frame::Short { .. } => break,
                Frame::Corrupt => {
                    let at = chunk.read + consumed as u64;
                    return Err(self.damaged(&format!("corrupt record at offset {at}")));
                }
            }
        }
        let consumed = consumed as u64;
        if consumed == 0 {
            let at = chunk.read;
            return Err(self.damaged(&format!("truncated record at offset {at}")));
        }
        chunk.read += consumed;
        Ok(())
    }

    /// Takes records straight from the write buffer (the newest records, not yet on file).
    fn pop_pending(&mut self, max_bytes: usize, out: &mut Vec<Bytes>) -> io::Result<()> {
        let mut taken = 0;
        while self.pending.len() >= HEADER && (taken == 0 || taken < max_bytes) {
            let size = HEADER + frame::declared_len(&self.pending);
            if size > self.pending.len() {
                return Err(self.damaged("truncated buffered record"));
            }
            let mut record = self.pending.split_to(size).freeze();
            record.advance(HEADER);
            taken += record.len();
            out.push(record);
        }
        Ok(())
    }

    /// After the last record is read: files back to empty, ready for the next backlog.
    fn reset(&mut self) -> io::Result<()> {
        while self.chunks.len() > 1 {
            if let Some(done) = self.chunks.pop_front() {
                let _ = fs::remove_file(&done.path);
            }
        }
        if let Some(chunk) = self.chunks.front_mut() {
            chunk.file.set_len(0)?;
            chunk.written = 0;
            chunk.read = 0;
        }
        Ok(())
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Deletes spill files left by an earlier run of the broker (they are scratch space).
pub fn clear_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
}

#[cfg(test)]
mod tests;
