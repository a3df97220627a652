//! A stream queue (`x-queue-type: stream`, what oslo.messaging's `rabbit_stream_fanout` declares):
//! messages are appended to a [`StreamLog`] on disk and never removed by consumers. Each consumer
//! reads on its own from where its `x-stream-offset` said, as far as its prefetch allows, and every
//! delivery says its offset (the `x-stream-offset` header), so a client that reconnects resumes
//! after the last offset it saw. Records leave only by retention (`x-max-age`, `x-max-length-bytes`,
//! whole segments of `x-stream-max-segment-size-bytes`). Memory is the log's sparse index and what
//! consumers' prefetch holds, whatever the stream's size.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use amq_protocol::types::AMQPValue;
use parking_lot::Mutex;
use warren_protocol::field::{as_int, as_text};
use warren_storage::stream::syncer::Syncer;
use warren_storage::stream::{Cursor, Retention, StreamLog, DEFAULT_MAX_SEGMENT_BYTES};

use super::consumer::Consumer;
use super::sink::WaitsForWrites;
use super::stream_read::{stream_delivery, TailWaiters};
use super::Queue;
use crate::message::codec::decode_message;
use crate::message::memory::MemoryAccount;
use crate::message::Message;

/// Most records read for one consumer at once.
const READ_BATCH: usize = 256;
/// About the most bytes read for one consumer at once.
const READ_BYTES: usize = 1 << 20;

/// The broker-wide side of streams: where their directories are, the thread that syncs their
/// appends, and the memory account that messages read back are charged to.
#[derive(Debug)]
pub struct Streams {
    root: PathBuf,
    syncer: Arc<Syncer>,
    account: Arc<dyn MemoryAccount>,
}

/// Where a consumer starts reading (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    First,
    /// The last record (RabbitMQ: the last chunk's first record; a chunk here is one record).
    Last,
    /// Only what is appended from now on (the default).
    Next,
    Offset(u64),
    /// The first record appended at or after this wall-clock time (milliseconds).
    Time(i64),
}

impl StartAt {
    /// `x-stream-offset` as RabbitMQ 3.10's `rabbit_stream_queue:parse_offset_arg` reads it:
    /// `first`, `last`, `next`, an offset, an AMQP timestamp (seconds), or an interval back from
    /// `now_ms` such as `30m` (`Y M D h m s`). `Err` carries RabbitMQ's term for the bad value.
    pub fn parse(value: Option<&AMQPValue>, now_ms: i64) -> Result<StartAt, String> {
        let Some(v) = value else {
            return Ok(StartAt::Next);
        };
        if let Some(text) = as_text(v) {
            return match text.as_str() {
                "first" => Ok(StartAt::First),
                "last" => Ok(StartAt::Last),
                "next" => Ok(StartAt::Next),
                other => match (matches!(v, AMQPValue::LongString(_)), max_age_ms(other)) {
                    (true, Some(ms)) => Ok(StartAt::Time(now_ms.saturating_sub(ms as i64))),
                    _ => Err(format!("{{invalid_stream_offset_arg,{}}}", erlang_term(v))),
                },
            };
        }
        if let AMQPValue::Timestamp(seconds) = v {
            return Ok(StartAt::Time((*seconds as i64).saturating_mul(1000)));
        }
        match as_int(v) {
            Some(n) if n >= 0 => Ok(StartAt::Offset(u64::try_from(n).unwrap_or(u64::MAX))),
            _ => Err(format!("{{invalid_stream_offset_arg,{}}}", erlang_term(v))),
        }
    }
}

/// An interval such as `7D` or `30m` in milliseconds (RabbitMQ's `check_max_age`: a positive
/// integer and one of `Y M D h m s`), or None.
pub fn max_age_ms(text: &str) -> Option<u64> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let value: u64 = text[..digits].parse().ok().filter(|v| *v > 0)?;
    let unit: u64 = match &text[digits..] {
        "Y" => 365 * 86_400_000,
        "M" => 30 * 86_400_000,
        "D" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => return None,
    };
    value.checked_mul(unit)
}

/// How RabbitMQ prints a field value it refuses (`{Type,Value}` with `~p`).
fn erlang_term(v: &AMQPValue) -> String {
    match (v, as_text(v)) {
        (AMQPValue::LongString(_), Some(t)) => format!("{{longstr,<<\"{t}\">>}}"),
        (AMQPValue::ShortString(_), Some(t)) => format!("{{shortstr,<<\"{t}\">>}}"),
        (AMQPValue::Boolean(b), _) => format!("{{bool,{b}}}"),
        (_, _) => match as_int(v) {
            Some(n) => format!("{{long,{n}}}"),
            None => format!("{v:?}"),
        },
    }
}

impl Streams {
    /// Streams kept under `root` (created 0700 if missing); starts the syncing thread.
    pub fn new(root: &Path, account: Arc<dyn MemoryAccount>) -> io::Result<Arc<Streams>> {
        std::fs::create_dir_all(root)?;
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(Arc::new(Streams {
            root: root.to_path_buf(),
            syncer: Syncer::start()?,
            account,
        }))
    }

    /// The directory of stream `queue` in `vhost`: a readable part of the name and a hash of both
    /// names (names may hold any character and be longer than a file name may).
    pub fn dir_for(&self, vhost: &str, queue: &str) -> PathBuf {
        let readable: String = queue
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(48)
            .collect();
        // FNV-1a, 64 bits: stable across versions and platforms, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in vhost.bytes().chain([0]).chain(queue.bytes()) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.root.join(format!("{readable}-{hash:016x}"))
    }

    /// Opens (or creates) the log of stream `queue` in `vhost`.
    pub fn open(
        self: &Arc<Self>,
        vhost: &str,
        queue: &str,
        max_segment_bytes: Option<u64>,
        retention: Retention,
    ) -> io::Result<StreamQueue> {
        let dir = self.dir_for(vhost, queue);
        let (log, repaired) =
            StreamLog::open(&dir, max_segment_bytes.unwrap_or(DEFAULT_MAX_SEGMENT_BYTES))?;
        for r in repaired {
            tracing::warn!(
                stream = %queue, vhost = %vhost, file = %r.path.display(), damage = r.what,
                dropped_bytes = r.dropped_bytes,
                "a stream's last segment ended in a write a crash interrupted (never confirmed): it is cut off"
            );
        }
        Ok(StreamQueue {
            streams: self.clone(),
            dir,
            retention: Mutex::new(retention),
            state: Mutex::new(State {
                log: Some(log),
                readers: Vec::new(),
            }),
            tail: TailWaiters::default(),
        })
    }

    /// Deletes the directories of streams that are not in `keep` (left by a queue deleted while
    /// the broker was down, or whose deletion was interrupted).
    pub fn sweep(&self, keep: &[PathBuf]) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !keep.contains(&path) {
                tracing::info!(dir = %path.display(), "removing the files of a stream that no longer exists");
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(dir = %path.display(), error = %e, "could not remove a deleted stream's files");
                }
            }
        }
    }
}

/// A cursor at where `start` says.
fn cursor_for(log: &StreamLog, start: StartAt) -> io::Result<Cursor> {
    Ok(match start {
        StartAt::First => log.cursor_at(0),
        StartAt::Last => log.cursor_at(log.next_offset().saturating_sub(1)),
        StartAt::Next => log.cursor_at(log.next_offset()),
        StartAt::Offset(n) => log.cursor_at(n),
        StartAt::Time(ms) => log.cursor_at_time(ms)?,
    })
}

/// A stream reader: a consumer and where it is.
#[derive(Debug)]
struct Reader {
    consumer: Arc<Consumer>,
    cursor: Cursor,
}

#[derive(Debug)]
struct State {
    /// None once the stream is deleted.
    log: Option<StreamLog>,
    readers: Vec<Reader>,
}

/// One stream queue's log and readers.
#[derive(Debug)]
pub struct StreamQueue {
    streams: Arc<Streams>,
    dir: PathBuf,
    retention: Mutex<Retention>,
    state: Mutex<State>,
    /// Other nodes' readers waiting for the next append (stream_read.rs).
    tail: TailWaiters,
}

/// Records read for a reader on another node (stream_copy.rs).
#[derive(Debug)]
pub struct RemoteRead {
    /// The offset to read from next (where the start resolved to, when nothing was read).
    pub resume: u64,
    pub records: Vec<warren_storage::stream::StreamRecord>,
}

impl StreamQueue {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies its retention now (its timer, for a stream nobody publishes to).
    pub fn retain(&self, now_ms: i64) {
        let retention = *self.retention.lock();
        let mut state = self.state.lock();
        if let Some(log) = state.log.as_mut() {
            if let Err(e) = log.apply_retention(now_ms, &retention) {
                tracing::error!(dir = %self.dir.display(), error = %e, "a stream's old segments could not be removed");
            }
        }
    }

    /// What it keeps and how large its segments grow from now on (a policy changed); applied at
    /// the next append.
    pub fn set_limits(&self, retention: Retention, max_segment_bytes: Option<u64>) {
        *self.retention.lock() = retention;
        if let Some(log) = self.state.lock().log.as_mut() {
            log.set_max_segment_bytes(max_segment_bytes.unwrap_or(DEFAULT_MAX_SEGMENT_BYTES));
        }
    }

    /// Appends `message`; `confirm` waits until it is on disk. False if the stream is deleted or
    /// the write failed (the confirm is then a nack).
    pub fn append(
        &self,
        message: &Message,
        confirm: Option<&dyn WaitsForWrites>,
        now_ms: i64,
    ) -> bool {
        let payload = message.stored_form();
        let mut state = self.state.lock();
        let Some(log) = state.log.as_mut() else {
            return false;
        };
        let written = log.append(now_ms, &payload).and_then(|_| {
            log.apply_retention(now_ms, &self.retention.lock())?;
            Ok(())
        });
        match written {
            Ok(()) => {
                if let Some(c) = confirm {
                    self.streams.syncer.sync(log.active_file(), c.hold());
                }
                drop(state);
                self.tail.wake_all();
                true
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "a message could not be appended to a stream");
                if let Some(c) = confirm {
                    c.hold()(Err(e));
                }
                false
            }
        }
    }

    /// Adds a reader for `consumer` starting at `start`.
    pub fn add_reader(&self, consumer: Arc<Consumer>, start: StartAt) -> io::Result<()> {
        let mut state = self.state.lock();
        let Some(log) = state.log.as_ref() else {
            return Ok(());
        };
        let cursor = cursor_for(log, start)?;
        state.readers.push(Reader { consumer, cursor });
        Ok(())
    }

    /// For a reader on another node: up to `max_records` (about `max_bytes`) from `start` on.
    /// None once the stream is deleted.
    pub fn read_from(
        &self,
        start: StartAt,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<Option<RemoteRead>> {
        let state = self.state.lock();
        let Some(log) = state.log.as_ref() else {
            return Ok(None);
        };
        let mut cursor = cursor_for(log, start)?;
        let records = log.read(&mut cursor, max_records.min(READ_BATCH), max_bytes)?;
        Ok(Some(RemoteRead {
            resume: cursor.offset,
            records,
        }))
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.state
            .lock()
            .log
            .as_ref()
            .map_or(0, StreamLog::next_offset)
    }

    /// Resolves once a record at `offset` or later exists, or the stream is deleted.
    pub async fn appended(&self, offset: u64) {
        let passed = || {
            let state = self.state.lock();
            state
                .log
                .as_ref()
                .is_none_or(|log| log.next_offset() > offset)
        };
        self.tail.until(passed).await
    }

    /// Removes `consumer`'s reader; true if it had one.
    pub fn remove_reader(&self, consumer: &Arc<Consumer>) -> bool {
        let mut state = self.state.lock();
        let before = state.readers.len();
        state
            .readers
            .retain(|r| !Arc::ptr_eq(&r.consumer, consumer));
        state.readers.len() != before
    }

    pub fn reader_count(&self) -> u32 {
        self.state.lock().readers.len() as u32
    }

    /// Records kept.
    pub fn len(&self) -> u64 {
        self.state.lock().log.as_ref().map_or(0, StreamLog::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.state.lock().log.as_ref().map_or(0, StreamLog::bytes)
    }

    /// Pushes to every reader what its credit allows, in offset order; drops readers whose
    /// connection is gone.
    pub fn dispatch(&self, queue: &Arc<Queue>) {
        let mut state = self.state.lock();
        let State { log, readers } = &mut *state;
        let Some(log) = log.as_ref() else {
            return;
        };
        readers.retain_mut(|r| self.serve(log, r, queue));
    }

    /// Feeds one reader; false if its connection is gone.
    fn serve(&self, log: &StreamLog, reader: &mut Reader, queue: &Arc<Queue>) -> bool {
        let consumer = &reader.consumer;
        loop {
            if reader.cursor.offset >= log.next_offset() {
                return true;
            }
            let mut credit = 0;
            while credit < READ_BATCH && consumer.try_take_credit() {
                credit += 1;
            }
            if credit == 0 {
                return true;
            }
            let records = match log.read(&mut reader.cursor, credit, READ_BYTES) {
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(dir = %self.dir.display(), error = %e, "a stream could not be read: its consumer waits");
                    consumer.release_credit(credit as u32);
                    return true;
                }
            };
            consumer.release_credit((credit - records.len()) as u32);
            if records.is_empty() {
                return true;
            }
            for r in records {
                let Some(stored) = decode_message(&r.data) else {
                    tracing::error!(dir = %self.dir.display(), offset = r.offset, "a stream record does not decode as a message: skipped");
                    consumer.release_credit(1);
                    continue;
                };
                let message = stored.into_message(self.streams.account.clone(), true, None);
                let delivery =
                    stream_delivery(consumer.clone(), queue.clone(), r.offset, Arc::new(message));
                if let Err(back) = consumer.sink.deliver(delivery) {
                    back.consumer.release_credit(1);
                    return false;
                }
                queue.handed_over(1);
            }
        }
    }

    /// The stream was deleted: its readers' consumers are returned (to be told), its files removed.
    pub fn delete(&self) -> Vec<Arc<Consumer>> {
        let mut state = self.state.lock();
        let readers = std::mem::take(&mut state.readers);
        if let Some(log) = state.log.take() {
            if let Err(e) = log.remove() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a deleted stream's files");
            }
        }
        drop(state);
        self.tail.wake_all();
        readers.into_iter().map(|r| r.consumer).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    #[test]
    fn offsets_parse_as_rabbitmq_reads_them() {
        let long = |s: &str| AMQPValue::LongString(LongString::from(s));
        assert_eq!(StartAt::parse(None, 0), Ok(StartAt::Next));
        assert_eq!(StartAt::parse(Some(&long("first")), 0), Ok(StartAt::First));
        assert_eq!(StartAt::parse(Some(&long("last")), 0), Ok(StartAt::Last));
        assert_eq!(StartAt::parse(Some(&long("next")), 0), Ok(StartAt::Next));
        assert_eq!(
            StartAt::parse(Some(&AMQPValue::LongLongInt(42)), 0),
            Ok(StartAt::Offset(42))
        );
        assert_eq!(
            StartAt::parse(Some(&AMQPValue::Timestamp(5)), 0),
            Ok(StartAt::Time(5000))
        );
        assert_eq!(
            StartAt::parse(Some(&long("30m")), 10_000_000),
            Ok(StartAt::Time(10_000_000 - 1_800_000))
        );
        assert_eq!(
            StartAt::parse(Some(&long("10x")), 0),
            Err("{invalid_stream_offset_arg,{longstr,<<\"10x\">>}}".into())
        );
        assert!(StartAt::parse(Some(&AMQPValue::LongLongInt(-1)), 0).is_err());
        assert_eq!(max_age_ms("7D"), Some(7 * 86_400_000));
        assert_eq!(max_age_ms("0s"), None);
        assert_eq!(max_age_ms("s"), None);
        assert_eq!(max_age_ms("1800s"), Some(1_800_000));
    }
}
