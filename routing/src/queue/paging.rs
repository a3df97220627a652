//! Paging: how queue entries leave memory for spill files once a queue's backlog passes its memory
//! budget, and how they come back.
//!
//! Each queue gets a budget (the broker's `limits.queue_memory_budget_bytes`, or the queue's own
//! `x-max-in-memory-bytes` / `x-max-in-memory-length`, or 0 for `x-queue-mode: lazy`). Past it, new
//! messages are appended to a [`Spill`] run instead of memory and read back in batches as consumers
//! reach them (see `ready.rs`), so a queue nobody consumes costs a few counters of memory
//! however long it grows. When messages as a whole take more than half the memory alarm's high-water
//! mark, every queue with a backlog pages its new arrivals too (RabbitMQ pages at 50% of the
//! watermark), so many moderately long queues do not add up to an alarm either.
//!
//! A paged entry is written whole — its position, priority, redelivery state, deadline, log id and the
//! message in its stored form — so it comes back exactly as it left. Spill files are scratch space,
//! cleared at start-up: a persistent message's durable copy is the command log's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use warren_storage::spill::{self, Spill};

use super::Entry;
use crate::message::codec::decode_message;
use crate::message::memory::MemoryAccount;

/// Spill chunk files are started afresh at this size, so a run that never empties still frees disk.
const CHUNK_BYTES: u64 = 64 << 20;

/// What memory an entry is counted for beyond its bytes (the entry, the message, allocations).
pub(crate) const ENTRY_OVERHEAD: u64 = 320;

/// How much memory a queue may give its ready messages before it pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub messages: Option<u64>,
}

/// The broker-wide side of paging: where spill files go, the default budget, and the memory alarm
/// (for the 50% pressure rule and for charging messages read back).
#[derive(Debug)]
pub struct Paging {
    dir: PathBuf,
    default_budget: u64,
    alarms: Arc<dyn MemoryAccount>,
    /// Message bytes above which every queue with a backlog pages.
    pressure: u64,
    next_run: AtomicU64,
    /// Deadlines are written as offsets from this instant.
    epoch: Instant,
}

impl Paging {
    /// Clears `dir` of an earlier run's spill files and pages into it from now on; `paging_ratio` is
    /// the fraction of the memory alarm's mark above which every queue with a backlog pages; spilled
    /// TTL deadlines are written as offsets from `epoch` (any fixed instant: the core reads no clock).
    pub fn new(
        dir: &Path,
        default_budget: u64,
        alarms: Arc<dyn MemoryAccount>,
        paging_ratio: f64,
        epoch: Instant,
    ) -> std::io::Result<Arc<Self>> {
        spill::clear_dir(dir)?;
        Ok(Arc::new(Paging {
            dir: dir.to_path_buf(),
            default_budget,
            pressure: (alarms.high_watermark() as f64 * paging_ratio) as u64,
            alarms,
            next_run: AtomicU64::new(0),
            epoch,
        }))
    }

    /// A queue's budget: its in-memory arguments, lazy mode, or the broker's default.
    pub fn budget(
        &self,
        lazy: bool,
        max_in_memory_bytes: Option<u64>,
        max_in_memory_length: Option<u64>,
    ) -> Budget {
        let bytes = if lazy { 0 } else { self.default_budget };
        // A queue's own limit can lower its budget, never raise it.
        Budget {
            bytes: max_in_memory_bytes.map_or(bytes, |b| b.min(bytes)),
            messages: max_in_memory_length,
        }
    }

    /// Messages as a whole hold more than the paging ratio of the memory alarm's mark.
    pub(crate) fn under_pressure(&self) -> bool {
        self.alarms.used() > self.pressure
    }

    /// A new, empty run with its own file names.
    pub(crate) fn new_run(&self) -> Spill {
        let n = self.next_run.fetch_add(1, Ordering::Relaxed);
        Spill::new(&self.dir, &format!("run-{n}"), CHUNK_BYTES)
    }

    /// Writes `entry` to `run` (the entry leaves memory; its message is dropped by the caller).
    pub fn write(&self, run: &mut Spill, entry: &Entry) -> std::io::Result<()> {
        let mut head = BytesMut::with_capacity(HEAD_LEN);
        let m = &entry.message;
        let flags = u8::from(entry.redelivered)
            | u8::from(m.persistent) << 1
            | u8::from(entry.store_id.is_some()) << 2
            | u8::from(entry.expires_at.is_some()) << 3;
        head.put_u8(flags);
        head.put_u64(entry.seq);
        head.put_u8(entry.priority);
        head.put_u64(entry.returns);
        head.put_u64(entry.store_id.unwrap_or(0));
        let deadline = entry.expires_at.map_or(0, |t| {
            t.saturating_duration_since(self.epoch).as_nanos() as u64
        });
        head.put_u64(deadline);
        // Not cached in the message when it was not stored already: other queues may hold it.
        let stored = m.stored.get().cloned().unwrap_or_else(|| m.encode_stored());
        run.push(&[&head, &stored])
    }

    /// An entry read back from a run, its message charged to the memory alarm again.
    pub fn read(&self, mut record: Bytes) -> Option<Entry> {
        if record.len() < HEAD_LEN {
            return None;
        }
        let flags = record.get_u8();
        let seq = record.get_u64();
        let priority = record.get_u8();
        let returns = record.get_u64();
        let store_id = record.get_u64();
        let deadline = record.get_u64();
        let m = decode_message(&record)?;
        let persistent = flags & 2 != 0;
        let message = m.into_message(
            self.alarms.clone(),
            persistent,
            persistent.then_some(record),
        );
        Some(Entry {
            seq,
            message: Arc::new(message),
            redelivered: flags & 1 != 0,
            priority,
            expires_at: (flags & 8 != 0).then(|| self.epoch + Duration::from_nanos(deadline)),
            returns,
            store_id: (flags & 4 != 0).then_some(store_id),
        })
    }

    /// The log id of a paged entry, without decoding the message (for purging a durable queue).
    pub(crate) fn store_id(record: &Bytes) -> Option<u64> {
        (record.len() >= HEAD_LEN && record[0] & 4 != 0).then(|| {
            let mut at = &record[STORE_ID_AT..STORE_ID_AT + 8];
            at.get_u64()
        })
    }
}

/// flags:u8 seq:u64 priority:u8 returns:u64 store_id:u64 deadline_ns:u64, then the stored message.
const HEAD_LEN: usize = STORE_ID_AT + 8 + 8;
const STORE_ID_AT: usize = 1 + 8 + 1 + 8;

/// The memory an entry is counted for against its queue's budget.
pub fn cost(entry: &Entry) -> u64 {
    let m = &entry.message;
    (m.body.len() + m.properties.len() + m.exchange.len() + m.routing_key.len()) as u64
        + ENTRY_OVERHEAD
}
