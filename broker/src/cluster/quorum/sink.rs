//! The host's side of a subscription: the proxy consumer's sink, which sends what the queue hands
//! it to the subscribed node, and keeps what it handed until the node settles it.
//!
//! A dispatch hands the proxy many messages at once; they go out as few requests (at most
//! [`BATCH`] messages or [`BATCH_BYTES`] each, in order, from one task at a time), not one request
//! and one task per message. Whatever a request does not get staged there (no answer, a refusal, a
//! link that is down) comes back to the queue here with the proxy's credit. While [`WINDOW_BYTES`]
//! are handed out and not settled, the proxy is held (through its own channel credit).

use std::collections::HashMap;
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

/// Where a host's proxy consumer sends what it is handed: the subscribed node.
pub(super) struct RemoteSink {
    links: Arc<Links>,
    pub(super) node: u64,
    group: u32,
    vhost: String,
    pub(super) queue: String,
    /// Handed over and not yet settled.
    outstanding: Arc<Mutex<Handed>>,
    /// Handed to the proxy and not sent yet.
    unsent: Arc<Mutex<Unsent>>,
}

/// Deliveries waiting for the one task that sends them, in order: the first of them starts it, and
/// it sends what has gathered by then as one request (a dispatch hands over many at once).
#[derive(Default)]
struct Unsent {
    deliveries: Vec<Delivery>,
    sending: bool,
}

/// What a host handed a subscribed node and it has not settled, by message id, and their bytes.
/// While [`WINDOW_BYTES`] are handed out, the proxy consumer's deliveries are held (through its
/// own channel credit, which no client's channel.flow shares); below, they go again.
struct Handed {
    entries: HashMap<u64, Entry>,
    bytes: u64,
    credit: Arc<ChannelCredit>,
    /// A request was not staged there a moment ago: the proxy is held for [`PAUSE`].
    paused: bool,
}

impl Handed {
    fn new(credit: Arc<ChannelCredit>) -> Self {
        Handed {
            entries: HashMap::new(),
            bytes: 0,
            credit,
            paused: false,
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

    /// Holds the proxy's deliveries while [`WINDOW_BYTES`] are handed out, or while paused.
    fn hold(&self) {
        self.credit.flow_active.store(
            self.bytes < WINDOW_BYTES && !self.paused,
            std::sync::atomic::Ordering::Release,
        );
    }
}

impl std::fmt::Debug for RemoteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSink")
            .field("node", &self.node)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

pub(super) fn names_body(vhost: &str, queue: &str, w: &mut Writer) {
    w.bytes(vhost.as_bytes());
    w.bytes(queue.as_bytes());
}

/// How long a proxy is held after a request of its was not staged.
const PAUSE: Duration = Duration::from_millis(200);
/// The most messages, and message bytes (one message more at most), one delivery request carries.
const BATCH: usize = 256;
const BATCH_BYTES: u64 = 1024 * 1024;

impl RemoteSink {
    /// The sink of a proxy consumer for node `to.0` (reached in group `to.1`) of queue
    /// `names.1` in vhost `names.0`, whose channel credit is `credit`.
    pub(super) fn new(
        links: Arc<Links>,
        (node, group): (u64, u32),
        (vhost, queue): (String, String),
        credit: Arc<ChannelCredit>,
    ) -> Self {
        RemoteSink {
            links,
            node,
            group,
            vhost,
            queue,
            outstanding: Arc::new(Mutex::new(Handed::new(credit))),
            unsent: Arc::default(),
        }
    }

    /// The node settled these: they are no longer handed out (ids it was not handed are skipped).
    pub(super) fn settled(&self, ids: &[u64]) -> Vec<Entry> {
        let mut handed = self.outstanding.lock();
        ids.iter().filter_map(|id| handed.remove(id)).collect()
    }

    /// Everything handed out, no longer so (the queue takes it back, or it is void).
    pub(super) fn take_all(&self) -> Vec<Entry> {
        self.outstanding.lock().drain()
    }

    /// Sends what was handed to the proxy and not sent yet, in requests of at most [`BATCH`]
    /// messages; what a request does not get staged there comes back to the queue here.
    async fn send_unsent(
        links: Arc<Links>,
        to: (u64, u32),
        names: (String, String),
        unsent: Arc<Mutex<Unsent>>,
        outstanding: Arc<Mutex<Handed>>,
    ) {
        // Whatever the dispatch that started this task still hands over goes in the same request.
        tokio::task::yield_now().await;
        loop {
            let mut batch: Vec<Delivery> = {
                let mut unsent = unsent.lock();
                let waiting = &mut unsent.deliveries;
                let (mut n, mut bytes) = (0, 0);
                while n < waiting.len() && n < BATCH && bytes < BATCH_BYTES {
                    bytes += waiting[n].entry.message.body_size();
                    n += 1;
                }
                if n == 0 {
                    unsent.sending = false;
                    return;
                }
                waiting.drain(..n).collect()
            };
            // What the queue took back meanwhile (the node unsubscribed) is not sent.
            {
                let handed = outstanding.lock();
                batch.retain(|d| handed.entries.contains_key(&delivery_id(&d.entry)));
            }
            let Some(first) = batch.first() else {
                continue;
            };
            let (queue, consumer) = (first.queue.clone(), first.consumer.clone());
            let ids: Vec<u64> = batch.iter().map(|d| delivery_id(&d.entry)).collect();
            let body = Bytes::from(encode(|w| {
                names_body(&names.0, &names.1, w);
                w.u64(batch.len() as u64);
                for (d, id) in batch.iter().zip(&ids) {
                    w.u64(*id);
                    w.bool(d.entry.redelivered);
                    w.u64(d.entry.returns);
                    w.bytes(&d.entry.message.stored_form());
                }
            }));
            drop(batch);
            let staged = match links.start_call(to.0, to.1, rpc::DELIVER, body) {
                Ok(call) => {
                    let outstanding = outstanding.clone();
                    let ids = ids.clone();
                    let (queue, consumer) = (queue.clone(), consumer.clone());
                    // Answered while the next request goes out.
                    tokio::spawn(async move {
                        if call.answer(CALL_TIMEOUT).await.is_err() {
                            Self::not_staged(&outstanding, &ids, &queue, &consumer);
                        }
                    });
                    true
                }
                Err(_) => false,
            };
            if !staged {
                Self::not_staged(&outstanding, &ids, &queue, &consumer);
            }
        }
    }

    /// Messages not staged there come back to the queue here (unless settled or taken back
    /// meanwhile), with the proxy's credit; the proxy is held for [`PAUSE`], so that a link that
    /// is down is not handed the same messages again and again (the queue's other consumers may
    /// take them meanwhile).
    fn not_staged(
        outstanding: &Arc<Mutex<Handed>>,
        ids: &[u64],
        queue: &Arc<Queue>,
        consumer: &Consumer,
    ) {
        // The lock is released before the requeue, which hands them to other consumers.
        let entries: Vec<Entry> = {
            let mut handed = outstanding.lock();
            handed.paused = true;
            let entries = ids.iter().filter_map(|id| handed.remove(id)).collect();
            handed.hold();
            entries
        };
        consumer.release_credit(entries.len() as u32);
        queue.requeue(entries, crate::time::Now::read());
        let (outstanding, queue) = (outstanding.clone(), queue.clone());
        tokio::spawn(async move {
            tokio::time::sleep(PAUSE).await;
            {
                let mut handed = outstanding.lock();
                handed.paused = false;
                handed.hold();
            }
            queue.dispatch(crate::time::Now::read());
        });
    }
}

impl DeliverySink for RemoteSink {
    fn deliver(&self, delivery: Delivery) -> Result<(), Delivery> {
        let id = delivery_id(&delivery.entry);
        self.outstanding.lock().insert(id, delivery.entry.clone());
        let start = {
            let mut unsent = self.unsent.lock();
            unsent.deliveries.push(delivery);
            !std::mem::replace(&mut unsent.sending, true)
        };
        if start {
            tokio::spawn(Self::send_unsent(
                self.links.clone(),
                (self.node, self.group),
                (self.vhost.clone(), self.queue.clone()),
                self.unsent.clone(),
                self.outstanding.clone(),
            ));
        }
        Ok(())
    }

    fn cancelled(&self, _consumer: Arc<Consumer>) {
        // The queue went, or this node stopped hosting it: what was handed out is void here, and
        // the subscriber drops what it staged.
        self.outstanding.lock().drain();
        let body = Bytes::from(encode(|w| names_body(&self.vhost, &self.queue, w)));
        if let Ok(call) = self
            .links
            .start_call(self.node, self.group, rpc::CANCELLED, body)
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

pub(super) fn read_names(r: &mut Reader<'_>) -> Result<(String, String), DecodeError> {
    Ok((r.string()?, r.string()?))
}
