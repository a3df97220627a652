//! The host's side of a subscription: the proxy consumer's sink, which sends what the queue hands
//! it to the subscribed node, and keeps what it handed until the node settles it.
//!
//! A dispatch hands the proxy many messages at once; they go out as few requests (at most
//! [`BATCH`] messages or [`BATCH_BYTES`] each, in order, from one task at a time), not one request
//! and one task per message. Each request names the subscription (its epoch, chosen by the
//! subscriber), so a node never stages what an older subscription of its sends late. What a
//! request certainly did not get staged there (the link is down, the node answers it has no such
//! subscription) comes back to the queue here unchanged; what it may have (no answer) comes back
//! as a return (redelivered, counted), as an unacknowledged delivery does. Either way the proxy is
//! held for [`PAUSE`], so that a node that cannot take them is not handed the same messages again
//! and again. While [`WINDOW_BYTES`] are handed out and not settled, the proxy is held too
//! (through its own channel credit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::cluster::link::Links;
use crate::cluster::raft::codec::{encode, DecodeError, Reader, Writer};
use crate::cluster::raft::rpc;
use crate::queue::consumer::{ChannelCredit, Consumer, Delivery, DeliverySink};
use crate::queue::{Entry, Queue};

/// The message bytes a host hands a subscribed node before that node settles some (one message
/// more at most): a window of large messages stops here, not at the window of messages.
const WINDOW_BYTES: u64 = 8 * 1024 * 1024;
/// How long a subscribe or a delivery may wait for its answer.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The answer to a subscription's request (a delivery, a window) that names a subscription the
/// answering node does not have: nothing of it was taken. An empty answer is "done".
pub(super) const UNKNOWN: &[u8] = &[1];
/// How long a proxy is held after a request of its was not staged.
const PAUSE: Duration = Duration::from_millis(200);
/// The most messages, and message bytes (one message more at most), one delivery request carries.
const BATCH: usize = 256;
const BATCH_BYTES: u64 = 1024 * 1024;

/// Where a host's proxy consumer sends what it is handed: the subscribed node.
pub(super) struct RemoteSink(Arc<Shared>);

/// A sink's state, shared with its sending task.
struct Shared {
    links: Arc<Links>,
    node: u64,
    group: u32,
    vhost: String,
    queue: String,
    /// The subscription's epoch, chosen by the subscriber: every delivery request carries it.
    epoch: u64,
    /// Handed over and not yet settled.
    outstanding: Mutex<Handed>,
    /// Handed to the proxy and not sent yet.
    unsent: Mutex<Unsent>,
    /// The subscriber answered that it has no such subscription: the host gives it up.
    gone: AtomicBool,
}

/// Deliveries waiting for the one task that sends them, in order: the first of them starts it, and
/// it sends what has gathered by then as one request (a dispatch hands over many at once).
#[derive(Default)]
struct Unsent {
    deliveries: Vec<Delivery>,
    sending: bool,
}

/// What a host handed a subscribed node and it has not settled, by message id, and their bytes.
/// While [`WINDOW_BYTES`] are handed out, or while paused, the proxy consumer's deliveries are held
/// (through its own channel credit, which no client's channel.flow shares).
struct Handed {
    entries: HashMap<u64, Entry>,
    bytes: u64,
    credit: Arc<ChannelCredit>,
    /// Pauses in progress (each [`PAUSE`] long) after requests that were not staged.
    pauses: u32,
}

impl Handed {
    fn new(credit: Arc<ChannelCredit>) -> Self {
        Handed {
            entries: HashMap::new(),
            bytes: 0,
            credit,
            pauses: 0,
        }
    }

    fn insert(&mut self, id: u64, entry: Entry) {
        self.bytes += entry.message.body_size();
        if let Some(old) = self.entries.insert(id, entry) {
            self.bytes = self.bytes.saturating_sub(old.message.body_size());
        }
        self.hold();
    }

    fn remove(&mut self, id: &u64) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.bytes = self.bytes.saturating_sub(entry.message.body_size());
        self.hold();
        Some(entry)
    }

    fn drain(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        self.hold();
        self.entries.drain().map(|(_, e)| e).collect()
    }

    fn hold(&self) {
        self.credit.flow_active.store(
            self.bytes < WINDOW_BYTES && self.pauses == 0,
            Ordering::Release,
        );
    }
}

impl std::fmt::Debug for RemoteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSink")
            .field("node", &self.0.node)
            .field("queue", &self.0.queue)
            .field("epoch", &self.0.epoch)
            .finish_non_exhaustive()
    }
}

pub(super) fn names_body(vhost: &str, queue: &str, w: &mut Writer) {
    w.bytes(vhost.as_bytes());
    w.bytes(queue.as_bytes());
}

pub(super) fn read_names(r: &mut Reader<'_>) -> Result<(String, String), DecodeError> {
    Ok((r.string()?, r.string()?))
}

/// How a delivery request ended.
enum Sent {
    Staged,
    /// Certainly not staged: never sent, or refused.
    NotStaged,
    /// No answer: maybe staged.
    Unknown,
}

impl RemoteSink {
    /// The sink of a proxy consumer for node `to.0` (reached in group `to.1`) of queue
    /// `names.1` in vhost `names.0`, for its subscription `epoch`, whose channel credit is
    /// `credit`.
    pub(super) fn new(
        links: Arc<Links>,
        (node, group): (u64, u32),
        (vhost, queue): (String, String),
        epoch: u64,
        credit: Arc<ChannelCredit>,
    ) -> Self {
        RemoteSink(Arc::new(Shared {
            links,
            node,
            group,
            vhost,
            queue,
            epoch,
            outstanding: Mutex::new(Handed::new(credit)),
            unsent: Mutex::default(),
            gone: AtomicBool::new(false),
        }))
    }

    pub(super) fn node(&self) -> u64 {
        self.0.node
    }

    pub(super) fn queue(&self) -> &str {
        &self.0.queue
    }

    pub(super) fn epoch(&self) -> u64 {
        self.0.epoch
    }

    /// Whether the subscriber answered that it has no such subscription.
    pub(super) fn gone(&self) -> bool {
        self.0.gone.load(Ordering::Acquire)
    }

    /// The node settled these: they are no longer handed out (ids it was not handed are skipped).
    pub(super) fn settled(&self, ids: &[u64]) -> Vec<Entry> {
        let mut handed = self.0.outstanding.lock();
        ids.iter().filter_map(|id| handed.remove(id)).collect()
    }

    /// Everything handed out, no longer so (the queue takes it back, or it is void).
    pub(super) fn take_all(&self) -> Vec<Entry> {
        self.0.outstanding.lock().drain()
    }
}

impl Shared {
    /// Sends what was handed to the proxy and not sent yet, in requests of at most [`BATCH`]
    /// messages; what a request does not get staged there comes back to the queue here.
    async fn send_unsent(self: Arc<Self>) {
        // Whatever the dispatch that started this task still hands over goes in the same request.
        tokio::task::yield_now().await;
        while let Some(batch) = self.next_batch() {
            let Some(first) = batch.first() else {
                continue;
            };
            let (queue, consumer) = (first.queue.clone(), first.consumer.clone());
            let ids: Vec<u64> = batch.iter().map(|d| delivery_id(&d.entry)).collect();
            let body = Bytes::from(encode(|w| {
                names_body(&self.vhost, &self.queue, w);
                w.u64(self.epoch);
                w.u64(batch.len() as u64);
                for (d, id) in batch.iter().zip(&ids) {
                    w.u64(*id);
                    w.bool(d.entry.redelivered);
                    w.u64(d.entry.returns);
                    w.bytes(&d.entry.message.stored_form());
                }
            }));
            drop(batch);
            let call = if self.links.connected(self.node) {
                self.links
                    .start_call(self.node, self.group, rpc::DELIVER, body)
                    .ok()
            } else {
                None
            };
            let Some(call) = call else {
                self.not_staged(&ids, &queue, &consumer, Sent::NotStaged);
                continue;
            };
            // Answered while the next request goes out.
            let shared = self.clone();
            tokio::spawn(async move {
                let sent = match call.answer(CALL_TIMEOUT).await {
                    Ok(answer) if answer.is_empty() => Sent::Staged,
                    Ok(answer) if answer.as_ref() == UNKNOWN => {
                        shared.gone.store(true, Ordering::Release);
                        Sent::NotStaged
                    }
                    // A refusal (the queue is not here, a message does not decode): none staged.
                    Ok(_) | Err(crate::cluster::link::CallError::Remote(..)) => Sent::NotStaged,
                    Err(_) => Sent::Unknown,
                };
                shared.not_staged(&ids, &queue, &consumer, sent);
            });
        }
    }

    /// The next request's deliveries, without those the queue took back meanwhile (None: nothing
    /// is waiting, and the sending task ends).
    fn next_batch(&self) -> Option<Vec<Delivery>> {
        let mut batch: Vec<Delivery> = {
            let mut unsent = self.unsent.lock();
            let waiting = &mut unsent.deliveries;
            let (mut n, mut bytes) = (0, 0);
            while n < waiting.len() && n < BATCH && bytes < BATCH_BYTES {
                bytes += waiting[n].entry.message.body_size();
                n += 1;
            }
            if n == 0 {
                unsent.sending = false;
                return None;
            }
            waiting.drain(..n).collect()
        };
        let handed = self.outstanding.lock();
        batch.retain(|d| handed.entries.contains_key(&delivery_id(&d.entry)));
        Some(batch)
    }

    /// Messages of a request not staged there come back to the queue here (unless settled or
    /// taken back meanwhile) with the proxy's credit — unchanged when they certainly were not
    /// staged, as a return when they may have been — and the proxy is held for [`PAUSE`] (the
    /// queue's other consumers may take them meanwhile).
    fn not_staged(
        self: &Arc<Self>,
        ids: &[u64],
        queue: &Arc<Queue>,
        consumer: &Consumer,
        sent: Sent,
    ) {
        if matches!(sent, Sent::Staged) {
            return;
        }
        // The lock is released before they go back, which hands them to other consumers.
        let entries: Vec<Entry> = {
            let mut handed = self.outstanding.lock();
            handed.pauses += 1;
            let entries = ids.iter().filter_map(|id| handed.remove(id)).collect();
            handed.hold();
            entries
        };
        consumer.release_credit(entries.len() as u32);
        let now = crate::time::Now::read();
        match sent {
            Sent::Unknown => queue.requeue(entries, now),
            _ => queue.return_undelivered(entries, now),
        }
        let (shared, queue) = (self.clone(), queue.clone());
        tokio::spawn(async move {
            tokio::time::sleep(PAUSE).await;
            {
                let mut handed = shared.outstanding.lock();
                handed.pauses -= 1;
                handed.hold();
            }
            queue.dispatch(crate::time::Now::read());
        });
    }
}

impl DeliverySink for RemoteSink {
    fn deliver(&self, delivery: Delivery) -> Result<(), Delivery> {
        let id = delivery_id(&delivery.entry);
        self.0.outstanding.lock().insert(id, delivery.entry.clone());
        let start = {
            let mut unsent = self.0.unsent.lock();
            unsent.deliveries.push(delivery);
            !std::mem::replace(&mut unsent.sending, true)
        };
        if start {
            tokio::spawn(self.0.clone().send_unsent());
        }
        Ok(())
    }

    fn cancelled(&self, _consumer: Arc<Consumer>) {
        // The queue went, or this node stopped hosting it: what was handed out is void here, and
        // the subscriber drops what it staged.
        self.0.outstanding.lock().drain();
        let body = Bytes::from(encode(|w| {
            names_body(&self.0.vhost, &self.0.queue, w);
            w.u64(self.0.epoch);
        }));
        if let Ok(call) = self
            .0
            .links
            .start_call(self.0.node, self.0.group, rpc::CANCELLED, body)
        {
            tokio::spawn(async move {
                let _ = call.answer(CALL_TIMEOUT).await;
            });
        }
    }
}

/// What the host and the subscriber call a message handed over: its id in the log, or for one the
/// queue does not store (a classic queue's transient message) its place in the queue, marked so
/// the two never meet (log ids stay far below 2^63).
fn delivery_id(entry: &Entry) -> u64 {
    entry.store_id.unwrap_or(entry.seq | 1 << 63)
}
