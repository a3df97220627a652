//! Streams on a cluster (routing's queue/stream_copy.rs): a stream's log is on its home, and a
//! consumer on another node reads it there, by asking.
//!
//! Each such consumer has a reading task on its own node. While the consumer has credit, the task
//! asks the home for the records from its next offset (`STREAM_READ`: at most the credit, about
//! 1 MiB), hands them to the consumer with their offsets, and goes on from the offset after the
//! last. The first request carries the consumer's `x-stream-offset` as given (`first`, `next`, a
//! time, …) and the home resolves it; the answer says where reading resumes, so a consumer that
//! starts at `next` on an idle stream keeps that place. A task that is caught up waits for the
//! home's tail to move: one request per stream and home on each node (`STREAM_TAIL`, answered
//! when the stream grows or after a few seconds) tells every caught-up reader of that stream on
//! the node, so a node's waiting requests at a home are bounded by its streams, not its
//! consumers.
//!
//! Nothing is handed out at the home, so nothing needs taking back: a link that fails, or a home
//! that restarts, only makes the task ask again from the same offset. A consumer thus gets every
//! record once, in order, as a local one does, and like one it loses nothing it has not acked
//! (acks remove nothing from a stream).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::holder::{QuorumHolder, NOT_HOSTING};
use crate::cluster::link::Links;
use crate::cluster::raft::codec::{decode, encode, DecodeError, Reader, Writer};
use crate::cluster::raft::network::bad_request;
use crate::cluster::raft::rpc;
use crate::queue::consumer::Consumer;
use crate::queue::stream::StartAt;
use crate::queue::stream_copy::RemoteStream;
use crate::queue::stream_read::stream_delivery;
use crate::queue::Queue;

/// Most records one read asks for.
const READ_RECORDS: u32 = 256;
/// About the most bytes one read answers with.
const READ_BYTES: u64 = 1 << 20;
/// How long the home holds a tail request while the stream does not grow.
const TAIL_WAIT: Duration = Duration::from_secs(5);
/// How long an answer may take beyond what the home holds it.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);
/// How long a reader waits after a failed request before asking again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The reading of streams other nodes hold, for this node's consumers (a handle: clones share it).
#[derive(Default, Clone)]
pub struct StreamReads(Arc<Shared>);

#[derive(Default)]
pub struct Shared {
    links: OnceLock<Arc<Links>>,
    holder: OnceLock<Weak<dyn QuorumHolder>>,
    /// This node's readers, by their copy of the queue (its address).
    readers: Mutex<HashMap<usize, Vec<Arc<Reading>>>>,
    /// The tail of each stream read here, by (home, record name), while a reader waits on it.
    tails: Mutex<HashMap<(u64, String), watch::Sender<u64>>>,
}

impl std::fmt::Debug for StreamReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReads").finish_non_exhaustive()
    }
}

/// One consumer reading a stream another node holds.
struct Reading {
    consumer: Arc<Consumer>,
    /// Credit came back.
    wake: Notify,
    stopped: AtomicBool,
    /// Wakes a stopped reader wherever it waits.
    stop: Notify,
}

/// What a reader asks for: where the stream's home is and which stream.
#[derive(Clone)]
struct Source {
    home: u64,
    vhost: String,
    queue: String,
    record: String,
}

impl StreamReads {
    /// The node links and the broker, once the cluster has started.
    pub(crate) fn attach(&self, links: Arc<Links>, holder: Weak<dyn QuorumHolder>) {
        let _ = self.0.links.set(links);
        let _ = self.0.holder.set(holder);
    }

    fn forget(&self, queue: &Arc<Queue>, reading: &Arc<Reading>) {
        let key = Arc::as_ptr(queue) as usize;
        let mut readers = self.0.readers.lock();
        if let Some(list) = readers.get_mut(&key) {
            list.retain(|r| !Arc::ptr_eq(r, reading));
            if list.is_empty() {
                readers.remove(&key);
            }
        }
    }

    /// The tail of `source` as this node last heard it, kept current while anyone watches.
    fn watch_tail(&self, source: &Source) -> watch::Receiver<u64> {
        let key = (source.home, source.record.clone());
        let mut tails = self.0.tails.lock();
        if let Some(tail) = tails.get(&key) {
            return tail.subscribe();
        }
        let (tail, watching) = watch::channel(0);
        tails.insert(key, tail.clone());
        tokio::spawn(follow_tail(self.clone(), source.clone(), tail));
        watching
    }
}

impl RemoteStream for StreamReads {
    fn read(&self, queue: &Arc<Queue>, consumer: Arc<Consumer>, start: StartAt) {
        let (Some(home), Some(record)) = (queue.spec.home, queue.record_name()) else {
            return;
        };
        let Some((vhost, name)) = crate::meta::records::split_message_queue(record) else {
            return;
        };
        let source = Source {
            home: home.node,
            vhost,
            queue: name,
            record: record.to_string(),
        };
        let reading = Arc::new(Reading {
            consumer,
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            stop: Notify::new(),
        });
        self.0
            .readers
            .lock()
            .entry(Arc::as_ptr(queue) as usize)
            .or_default()
            .push(reading.clone());
        tokio::spawn(read_loop(
            self.clone(),
            Arc::downgrade(queue),
            reading,
            source,
            start,
        ));
    }

    fn stop(&self, consumer: &Arc<Consumer>) {
        for list in self.0.readers.lock().values() {
            for r in list.iter().filter(|r| Arc::ptr_eq(&r.consumer, consumer)) {
                r.stopped.store(true, Ordering::Release);
                r.stop.notify_one();
            }
        }
    }

    fn wake(&self, queue: &Queue) {
        let key = queue as *const Queue as usize;
        if let Some(list) = self.0.readers.lock().get(&key) {
            for r in list {
                r.wake.notify_one();
            }
        }
    }
}

/// Records read at the home.
struct Read {
    resume: u64,
    records: Vec<(u64, Bytes)>,
}

fn write_start(w: &mut Writer, start: StartAt) {
    let (kind, value) = match start {
        StartAt::First => (0, 0),
        StartAt::Last => (1, 0),
        StartAt::Next => (2, 0),
        StartAt::Offset(n) => (3, n),
        StartAt::Time(ms) => (4, ms as u64),
    };
    w.u8(kind);
    w.u64(value);
}

fn read_start(r: &mut Reader) -> Result<StartAt, DecodeError> {
    let (kind, value) = (r.u8()?, r.u64()?);
    Ok(match kind {
        0 => StartAt::First,
        1 => StartAt::Last,
        2 => StartAt::Next,
        3 => StartAt::Offset(value),
        _ => StartAt::Time(value as i64),
    })
}

/// Feeds `reading`'s consumer from the home until it stops, its connection goes, or its copy of
/// the queue is deleted.
async fn read_loop(
    reads: StreamReads,
    queue: Weak<Queue>,
    reading: Arc<Reading>,
    source: Source,
    start: StartAt,
) {
    let mut from = start;
    let mut tail: Option<watch::Receiver<u64>> = None;
    let consumer = &reading.consumer;
    loop {
        let Some(copy) = queue.upgrade().filter(|q| !q.is_deleted()) else {
            break;
        };
        if reading.stopped.load(Ordering::Acquire) {
            reads.forget(&copy, &reading);
            break;
        }
        let (Some(links), Some(holder)) = (
            reads.0.links.get().cloned(),
            reads.0.holder.get().and_then(Weak::upgrade),
        ) else {
            drop(copy);
            pause(&reading, RETRY_AFTER).await;
            continue;
        };
        let mut credit = 0;
        while credit < READ_RECORDS && consumer.try_take_credit() {
            credit += 1;
        }
        if credit == 0 {
            drop((copy, holder));
            tokio::select! {
                _ = reading.wake.notified() => {}
                _ = reading.stop.notified() => {}
                // (A wake can be missed between the try and the wait: look again now and then.)
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let read = ask_read(&links, &source, from, credit).await;
        let read = match read {
            Ok(read) => read,
            Err(why) => {
                consumer.release_credit(credit);
                tracing::debug!(queue = %source.queue, home = source.home, %why, "a stream read at its home failed: asked again");
                drop((copy, holder));
                pause(&reading, RETRY_AFTER).await;
                continue;
            }
        };
        consumer.release_credit(credit - read.records.len() as u32);
        from = StartAt::Offset(read.resume);
        if read.records.is_empty() {
            drop((copy, holder));
            let watching = tail.get_or_insert_with(|| reads.watch_tail(&source));
            let resume = read.resume;
            tokio::select! {
                _ = watching.wait_for(|t| *t > resume) => {}
                _ = reading.stop.notified() => {}
                _ = tokio::time::sleep(TAIL_WAIT + ANSWER_MARGIN) => {}
            }
            continue;
        }
        for (offset, data) in read.records {
            let Some(message) = holder.message(&data) else {
                tracing::error!(queue = %source.queue, offset, "a stream record read at its home does not decode: skipped");
                consumer.release_credit(1);
                continue;
            };
            let delivery = stream_delivery(consumer.clone(), copy.clone(), offset, message);
            if let Err(back) = consumer.sink.deliver(delivery) {
                back.consumer.release_credit(1);
                reads.forget(&copy, &reading);
                return;
            }
            copy.handed_over(1);
        }
    }
}

/// Waits `d`, or less if the reader stops.
async fn pause(reading: &Reading, d: Duration) {
    tokio::select! {
        _ = reading.stop.notified() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Asks the home for up to `credit` records from `from`.
async fn ask_read(
    links: &Arc<Links>,
    source: &Source,
    from: StartAt,
    credit: u32,
) -> Result<Read, String> {
    let body = Bytes::from(encode(|w| {
        w.bytes(source.vhost.as_bytes());
        w.bytes(source.queue.as_bytes());
        write_start(w, from);
        w.u64(u64::from(credit));
        w.u64(READ_BYTES);
    }));
    let call = links
        .start_call(source.home, 0, rpc::STREAM_READ, body)
        .map_err(|e| e.to_string())?;
    let answer = call
        .answer(ANSWER_MARGIN)
        .await
        .map_err(|e| e.to_string())?;
    decode(&answer, |r| {
        let resume = r.u64()?;
        let n = r.u64()?;
        let mut records = Vec::with_capacity(n.min(u64::from(READ_RECORDS)) as usize);
        for _ in 0..n {
            records.push((r.u64()?, Bytes::copy_from_slice(r.bytes()?)));
        }
        Ok(Read { resume, records })
    })
    .map_err(bad_request)
}

/// Keeps `tail` at the home's tail of `source` while anyone watches it.
async fn follow_tail(reads: StreamReads, source: Source, tail: watch::Sender<u64>) {
    let key = (source.home, source.record.clone());
    let mut known = 0;
    loop {
        {
            let mut tails = reads.0.tails.lock();
            if tail.receiver_count() == 0 {
                tails.remove(&key);
                return;
            }
        }
        let Some(links) = reads.0.links.get().cloned() else {
            tokio::time::sleep(RETRY_AFTER).await;
            continue;
        };
        let body = Bytes::from(encode(|w| {
            w.bytes(source.vhost.as_bytes());
            w.bytes(source.queue.as_bytes());
            w.u64(known);
            w.u64(TAIL_WAIT.as_millis() as u64);
        }));
        let answer = match links.start_call(source.home, 0, rpc::STREAM_TAIL, body) {
            Ok(call) => call
                .answer(TAIL_WAIT + ANSWER_MARGIN)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match answer.and_then(|a| decode(&a, |r| r.u64()).map_err(bad_request)) {
            Ok(now) => {
                known = now;
                tail.send_replace(now);
            }
            Err(_) => tokio::time::sleep(RETRY_AFTER).await,
        }
    }
}

/// The home's stream `queue` of `vhost` (from a request's start).
fn held_stream(
    r: &mut Reader,
    holder: &dyn QuorumHolder,
    holds: impl Fn(&Queue) -> bool,
) -> Result<Result<Arc<Queue>, String>, DecodeError> {
    let (vhost, name) = (r.string()?, r.string()?);
    Ok(holder
        .queue(&vhost, &name)
        .filter(|q| holds(q) && q.stream().is_some())
        .ok_or_else(|| format!("{NOT_HOSTING}: stream '{name}' in vhost '{vhost}'")))
}

/// The home answers `STREAM_READ`: the records from the start asked for, and where to go on.
pub(super) fn answer_read(
    holder: &dyn QuorumHolder,
    holds: impl Fn(&Queue) -> bool,
    body: &Bytes,
) -> Result<Bytes, String> {
    let (queue, start, max_records, max_bytes) = decode(body, |r| {
        Ok((
            held_stream(r, holder, &holds)?,
            read_start(r)?,
            r.u64()?,
            r.u64()?,
        ))
    })
    .map_err(bad_request)?;
    let queue = queue?;
    let stream = queue.stream().ok_or(NOT_HOSTING)?;
    let read = stream
        .read_from(
            start,
            max_records.min(u64::from(READ_RECORDS)) as usize,
            max_bytes.min(READ_BYTES) as usize,
        )
        .map_err(|e| format!("the stream could not be read: {e}"))?
        .ok_or("the stream was deleted")?;
    Ok(Bytes::from(encode(|w| {
        w.u64(read.resume);
        w.u64(read.records.len() as u64);
        for r in &read.records {
            w.u64(r.offset);
            w.bytes(&r.data);
        }
    })))
}

/// The home answers `STREAM_TAIL`: the offset its stream's next record gets, once it is past the
/// one asked about or after the wait asked for (at most [`TAIL_WAIT`]).
pub(super) fn answer_tail(
    holder: &dyn QuorumHolder,
    holds: impl Fn(&Queue) -> bool,
    body: &Bytes,
) -> futures_util::future::BoxFuture<'static, Result<Bytes, String>> {
    let asked = decode(body, |r| {
        Ok((held_stream(r, holder, &holds)?, r.u64()?, r.u64()?))
    })
    .map_err(bad_request);
    Box::pin(async move {
        let (queue, after, wait_ms) = asked?;
        let queue = queue?;
        let stream = queue.stream().ok_or(NOT_HOSTING)?;
        let wait = Duration::from_millis(wait_ms).min(TAIL_WAIT);
        let _ = tokio::time::timeout(wait, stream.appended(after)).await;
        Ok(Bytes::from(encode(|w| w.u64(stream.next_offset()))))
    })
}
