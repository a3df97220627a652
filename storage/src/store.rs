//! The store: the log on its own thread with group commit. Writers hand over records with an optional
//! completion; the thread appends everything queued, issues one fdatasync for the whole batch, then
//! runs the completions — so durability costs one fsync per batch, not per message, however many
//! connections publish. A failed write fails its batch; a failed fsync poisons the store (the state of
//! the page cache is unknown afterwards), and every later write fails until restart.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::log::medium::Medium;
use crate::log::record::Record;
use crate::log::{Log, LogError, Recovered};

/// How long the store waits for work before reclaiming space on its own: just past the log's
/// retirement interval, so a quiet log's dead active segment goes at the first idle reclaim.
const IDLE_RECLAIM: std::time::Duration =
    crate::log::RETIRE_INTERVAL.saturating_add(std::time::Duration::from_millis(100));

/// Called once the records are durable (`Ok`) or known not to be (`Err`).
pub type Completion = Box<dyn FnOnce(io::Result<()>) + Send>;

enum Command {
    Write {
        records: Vec<Record>,
        done: Option<Completion>,
    },
    /// Records nobody waits to be durable, whose writer still wants to know if they failed.
    WriteUnsynced {
        records: Vec<Record>,
        written: Completion,
    },
    /// Runs after everything queued before it is durable.
    Barrier(Completion),
    /// Reads back live messages (recovery), after the writes queued before it.
    Read {
        queue: String,
        ids: Vec<u64>,
        reply: Sender<io::Result<Vec<(u64, Bytes)>>>,
    },
    /// Stops the thread once what was queued before is durable; answered when it has stopped.
    Close(Sender<()>),
}

/// Tuning for the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Segment size before a new one is started.
    pub segment_bytes: u64,
    /// Most commands gathered into one batch.
    pub max_batch: usize,
    /// Whether recovery returns message payloads, or ids only, to be read back with
    /// [`Store::read`] batch by batch (so a long backlog is never in memory at once).
    pub recover_payloads: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes: 64 << 20,
            max_batch: 8192,
            recover_payloads: true,
        }
    }
}

/// A handle to the store thread; dropping the last one flushes and stops it.
pub struct Store {
    tx: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    busy: Arc<Busy>,
}

/// Since when the thread has been writing its current batch (a stalled disk shows as a batch
/// that never ends): milliseconds after `epoch`, plus one; 0 while it waits for work.
struct Busy {
    epoch: Instant,
    since: AtomicU64,
}

impl Busy {
    fn start(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.since.store(ms + 1, Ordering::Relaxed);
    }
    fn end(&self) {
        self.since.store(0, Ordering::Relaxed);
    }
}

impl Store {
    /// Opens (recovering) the log on `medium` and starts the commit thread.
    pub fn open<M: Medium>(
        medium: M,
        options: StoreOptions,
    ) -> Result<(Store, Recovered), LogError> {
        let (log, recovered) =
            Log::open_with(medium, options.segment_bytes, options.recover_payloads)?;
        let (tx, rx) = mpsc::channel();
        let busy = Arc::new(Busy {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
        });
        let thread_busy = busy.clone();
        let thread = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || run(log, rx, options.max_batch, &thread_busy))
            .map_err(LogError::Io)?;
        Ok((
            Store {
                tx: Some(tx),
                thread: Some(thread),
                busy,
            },
            recovered,
        ))
    }

    /// Stops the commit thread once everything queued so far is durable, and waits for it: the
    /// log's files are no longer touched (a broker that stops closes its log before it releases
    /// the data directory, however long other holders of the store live). Later writes fail.
    pub fn close(&self) {
        let Some(tx) = &self.tx else { return };
        let (reply, closed) = mpsc::channel();
        if tx.send(Command::Close(reply)).is_ok() {
            let _ = closed.recv();
        }
    }

    /// Queues records; `done` runs once they are durable (or have failed).
    pub fn write(&self, records: Vec<Record>, done: Option<Completion>) {
        if let Some(Command::Write {
            done: Some(done), ..
        }) = self.unsent(Command::Write { records, done })
        {
            done(Err(io::Error::other("the store has stopped")));
        }
    }

    /// Queues records nobody waits to be durable (they are made so by the next batch someone waits
    /// for, in order after what was queued before), for a writer that must still learn of a
    /// failure: `written` runs once they are appended, with the outcome (a failed fsync of their
    /// batch, if there is one, included). Unlike a write with a completion, they never cost an
    /// fsync of their own.
    pub fn write_unsynced(&self, records: Vec<Record>, written: Completion) {
        if let Some(Command::WriteUnsynced { written, .. }) =
            self.unsent(Command::WriteUnsynced { records, written })
        {
            written(Err(io::Error::other("the store has stopped")));
        }
    }

    /// Hands `command` to the store thread; gives it back if the thread has stopped.
    fn unsent(&self, command: Command) -> Option<Command> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(command).err())
            .map(|e| e.0)
    }

    /// Reads back the live messages among `ids` of `queue` (blocking): those still stored, in the
    /// order asked.
    pub fn read(&self, queue: &str, ids: Vec<u64>) -> io::Result<Vec<(u64, Bytes)>> {
        self.call(|reply| Command::Read {
            queue: queue.to_string(),
            ids,
            reply,
        })
    }

    /// Blocks until everything written so far is durable.
    pub fn flush(&self) -> io::Result<()> {
        self.call(|reply| {
            Command::Barrier(Box::new(move |r| {
                let _ = reply.send(r);
            }))
        })
    }

    /// How long the batch being written now has taken so far (None while the thread is idle): a
    /// disk that has stopped completing writes (a stalled device, a frozen filesystem) shows here
    /// as a time that only grows.
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.busy.since.load(Ordering::Relaxed) {
            0 => None,
            since => {
                let now = self.busy.epoch.elapsed().as_millis() as u64;
                Some(Duration::from_millis(now.saturating_sub(since - 1)))
            }
        }
    }

    /// Sends the command `make` builds around a reply channel and waits for the reply.
    fn call<T>(&self, make: impl FnOnce(Sender<io::Result<T>>) -> Command) -> io::Result<T> {
        let stopped = || io::Error::other("the store has stopped");
        let (reply, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(make(reply))
            .map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run<M: Medium>(mut log: Log<M>, rx: Receiver<Command>, max_batch: usize, busy: &Busy) {
    let mut poisoned: Option<String> = None;
    // Written and not yet synced (records nobody waited for).
    let mut dirty = false;
    loop {
        let first = match rx.recv_timeout(IDLE_RECLAIM) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A quiet log still gets its dead active segment retired (see Log::reclaim).
                if poisoned.is_none() {
                    busy.start();
                    // Reclaiming expects what it counts as removed to be on disk.
                    if !dirty || log.sync().is_ok() {
                        dirty = false;
                        let _ = log.reclaim();
                    }
                    busy.end();
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        busy.start();
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let mut records = Vec::new();
        let mut completions = Vec::new();
        // Told of the outcome, but not waiting for a sync.
        let mut observers = Vec::new();
        let mut reads = Vec::new();
        let mut close = None;
        for command in batch {
            match command {
                Command::Write { records: r, done } => {
                    records.extend(r);
                    completions.extend(done);
                }
                Command::WriteUnsynced {
                    records: r,
                    written,
                } => {
                    records.extend(r);
                    observers.push(written);
                }
                Command::Barrier(done) => completions.push(done),
                Command::Read { queue, ids, reply } => reads.push((queue, ids, reply)),
                Command::Close(reply) => close = Some(reply),
            }
        }
        let result = match &poisoned {
            _ if records.is_empty() && completions.is_empty() => Ok(()),
            Some(why) => Err(io::Error::other(why.clone())),
            // Records nobody waits for (an ack's removal, Raft's committed index) are written and
            // made durable by the next batch someone waits for: an fsync of their own would only
            // delay that batch.
            None if completions.is_empty() => log.append(&records).map_err(|e| {
                if e.kind() != io::ErrorKind::StorageFull {
                    poisoned = Some(format!("storage failed earlier: {e}"));
                }
                e
            }),
            None => log.append(&records).and_then(|()| log.sync()).map_err(|e| {
                if e.kind() != io::ErrorKind::StorageFull {
                    // After a failed fsync nothing written since the last good one can be trusted.
                    poisoned = Some(format!("storage failed earlier: {e}"));
                }
                e
            }),
        };
        let ok = result.is_ok();
        let synced = ok && !completions.is_empty();
        dirty = (dirty || !records.is_empty()) && !synced;
        let error = result.err();
        if error
            .as_ref()
            .is_some_and(|e| e.kind() == io::ErrorKind::StorageFull)
        {
            log.account_unwritten_removals(&records);
            let _ = log.reclaim();
        }
        for done in completions.into_iter().chain(observers) {
            done(match &error {
                None => Ok(()),
                Some(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
        // Reads are answered after the batch's writes (so a removal queued before one is seen),
        // before reclaiming, which may move records.
        for (queue, ids, reply) in reads {
            let mut out = Vec::with_capacity(ids.len());
            let mut result = Ok(());
            for id in ids {
                match log.read_message(&queue, id) {
                    Ok(Some(payload)) => out.push((id, payload)),
                    Ok(None) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            let _ = reply.send(result.map(|()| out));
        }
        if synced && close.is_none() {
            let _ = log.reclaim();
        }
        busy.end();
        if let Some(reply) = close {
            let _ = log.sync();
            // The receiver goes with the thread: every later write fails at once.
            drop(rx);
            let _ = reply.send(());
            return;
        }
    }
    let _ = log.sync();
}
