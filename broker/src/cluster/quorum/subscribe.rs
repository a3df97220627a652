//! Consumers of a quorum queue on a node that does not host it (HA.md §5.4, done the simple way).
//!
//! The consuming node subscribes at the host (the shard's leader): the host registers one proxy
//! consumer for that node on its live queue, with a window of credit, and sends each message it
//! hands to the proxy over the link. The consuming node stages what arrives in its own copy of
//! the queue (`Queue::stage`, nothing journaled), where its local consumers take it exactly as from
//! a single node's queue: prefetch, acks, requeues, priorities. An ack there journals `Remove` as
//! always; on a node that does not host the queue that record becomes a settle sent to the host,
//! which settles the proxy's message (journaled to the shard) and so gives the proxy its credit
//! back. When the node's last consumer goes it unsubscribes and the host takes back everything
//! the proxy still holds; when the host changes (its node stops leading the shard) the node drops
//! what it staged (`Queue::unstage`: deliveries of it are void) and subscribes at the new host,
//! which has every unsettled message in its replica. A consumer thus sees a failover as
//! redeliveries, never as a loss. The host drops the subscriptions of a node whose link has been
//! down for a while and takes their messages back.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::holder::{QuorumHolder, NOT_HOSTING};
use super::resend::{send_until_answered, GONE_AFTER};
use crate::cluster::link::Links;
use crate::cluster::raft::codec::{decode, encode};
use crate::cluster::raft::network::bad_request;
use crate::cluster::raft::rpc;
use crate::ids::{ChannelId, ConnectionId, ConsumerId, ConsumerTag, NodeId};
use crate::queue::consumer::{ChannelCredit, Consumer, Delivery, DeliverySink, Limit};
use crate::queue::{Entry, Queue};

/// Messages a host hands a subscribed node before that node settles some. A larger window keeps a
/// fast consumer there fed better (with 1,024 a consumer on another node than the host kept up
/// with a confirming publisher that it fell behind with 128: benches/quorum.sh), but the messages
/// staged at one node wait for its consumers while another node's may be idle; a window sized by
/// the subscribing node's consumers' prefetch would have both.
const WINDOW: u32 = 128;
/// The message bytes a host hands a subscribed node before that node settles some (one message
/// more at most): a window of large messages stops here, not at [`WINDOW`].
const WINDOW_BYTES: u64 = 8 * 1024 * 1024;
/// How often a node looks at what it should be subscribed to.
pub(super) const TICK: Duration = Duration::from_millis(200);
/// How long a subscribe or a delivery may wait for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A subscription from another node to a queue this node hosts.
struct Remote {
    consumer: Arc<Consumer>,
    sink: Arc<RemoteSink>,
    queue: Arc<Queue>,
    /// Since when the subscriber's link has been down, if it is.
    down_since: Option<Instant>,
}

/// Both sides of subscriptions on this node.
#[derive(Default)]
pub struct Subscriptions {
    links: OnceLock<Arc<Links>>,
    /// As a host: by (subscribing node, record name).
    remote: Mutex<HashMap<(u64, String), Remote>>,
    /// As a subscriber: the host each queue's staged messages come from, by record name.
    local: Mutex<HashMap<String, u64>>,
    /// As a host: what other nodes' basic.get took and have not settled.
    pub(super) gets: super::get::Gets,
}

/// Where a host's proxy consumer sends what it is handed: the subscribed node.
struct RemoteSink {
    links: Arc<Links>,
    node: u64,
    group: u32,
    vhost: String,
    queue: String,
    /// Handed over and not yet settled.
    outstanding: Arc<Mutex<Handed>>,
}

/// What a host handed a subscribed node and it has not settled, by message id, and their bytes.
/// While [`WINDOW_BYTES`] are handed out, the proxy consumer's deliveries are held (through its
/// own channel credit, which no client's channel.flow shares); below, they go again.
struct Handed {
    entries: HashMap<u64, Entry>,
    bytes: u64,
    credit: Arc<ChannelCredit>,
}

impl Handed {
    fn new(credit: Arc<ChannelCredit>) -> Self {
        Handed {
            entries: HashMap::new(),
            bytes: 0,
            credit,
        }
    }

    fn insert(&mut self, id: u64, entry: Entry) {
        self.bytes += entry.message.body_size();
        if let Some(old) = self.entries.insert(id, entry) {
            self.bytes = self.bytes.saturating_sub(old.message.body_size());
        }
        self.hold_at_bytes();
    }

    fn remove(&mut self, id: &u64) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.bytes = self.bytes.saturating_sub(entry.message.body_size());
        self.hold_at_bytes();
        Some(entry)
    }

    fn drain(&mut self) -> Vec<Entry> {
        self.bytes = 0;
        self.hold_at_bytes();
        self.entries.drain().map(|(_, e)| e).collect()
    }

    fn hold_at_bytes(&self) {
        self.credit.flow_active.store(
            self.bytes < WINDOW_BYTES,
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

fn names_body(vhost: &str, queue: &str, w: &mut crate::cluster::raft::codec::Writer) {
    w.bytes(vhost.as_bytes());
    w.bytes(queue.as_bytes());
}

impl DeliverySink for RemoteSink {
    fn deliver(&self, delivery: Delivery) -> Result<(), Delivery> {
        let id = delivery_id(&delivery.entry);
        let body = Bytes::from(encode(|w| {
            names_body(&self.vhost, &self.queue, w);
            w.u64(id);
            w.bool(delivery.entry.redelivered);
            w.u64(delivery.entry.returns);
            w.bytes(&delivery.entry.message.stored_form());
        }));
        let Ok(call) = self
            .links
            .start_call(self.node, self.group, rpc::DELIVER, body)
        else {
            return Err(delivery);
        };
        self.outstanding.lock().insert(id, delivery.entry);
        let outstanding = self.outstanding.clone();
        let (queue, consumer) = (delivery.queue, delivery.consumer);
        tokio::spawn(async move {
            if call.answer(CALL_TIMEOUT).await.is_err() {
                // Not staged there: it comes back here. (The lock is released before the requeue,
                // which may hand the message straight back to this sink.)
                let entry = outstanding.lock().remove(&id);
                if let Some(entry) = entry {
                    consumer.release_credit(1);
                    queue.requeue([entry], crate::time::Now::read());
                }
            }
        });
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

/// Sends a request whose answer only needs collecting.
fn send(links: &Arc<Links>, node: u64, group: u32, kind: u8, body: Bytes) {
    if let Ok(call) = links.start_call(node, group, kind, body) {
        tokio::spawn(async move {
            let _ = call.answer(CALL_TIMEOUT).await;
        });
    }
}

fn read_names(
    r: &mut crate::cluster::raft::codec::Reader<'_>,
) -> Result<(String, String), crate::cluster::raft::codec::DecodeError> {
    Ok((r.string()?, r.string()?))
}

impl Subscriptions {
    pub(crate) fn attach(&self, links: Arc<Links>) {
        let _ = self.links.set(links);
    }

    // ---- the host's side ----

    /// Node `from` subscribes to a queue this node hosts.
    pub(crate) fn subscribe(
        &self,
        from: u64,
        group: u32,
        body: &Bytes,
        holds: impl FnOnce(&Queue) -> bool,
        holder: &dyn QuorumHolder,
    ) -> Result<(), String> {
        let (vhost, name) = decode(body, read_names).map_err(bad_request)?;
        let record = crate::meta::records::message_queue(&vhost, &name);
        let queue = holder
            .queue(&vhost, &name)
            .ok_or_else(|| format!("no queue '{name}' in vhost '{vhost}'"))?;
        if !holds(&queue) {
            return Err(format!(
                "{}: queue '{name}' in vhost '{vhost}'",
                NOT_HOSTING
            ));
        }
        let links = self.links.get().ok_or("the node links are not up")?.clone();
        let mut remote = self.remote.lock();
        if let Some(existing) = remote.get(&(from, record.clone())) {
            if Arc::ptr_eq(&existing.queue, &queue) {
                return Ok(());
            }
        }
        let credit = Arc::new(ChannelCredit::default());
        let sink = Arc::new(RemoteSink {
            links,
            node: from,
            group,
            vhost,
            queue: name.clone(),
            outstanding: Arc::new(Mutex::new(Handed::new(credit.clone()))),
        });
        let consumer = Arc::new(Consumer {
            id: ConsumerId {
                node: NodeId(from),
                connection: ConnectionId(0),
                channel: ChannelId(0),
                tag: ConsumerTag::from(format!("node-{from}").as_str()),
            },
            no_ack: false,
            exclusive: false,
            publisher_header: false,
            priority: 0,
            prefetch: Limit::new(WINDOW),
            channel_credit: credit,
            write_budget: Arc::new(Limit::new(0)),
            sink: sink.clone(),
        });
        let now = crate::time::Now::read();
        queue
            .add_consumer(consumer.clone(), now)
            .map_err(|_| format!("queue '{name}' has an exclusive consumer"))?;
        let old = remote.insert(
            (from, record),
            Remote {
                consumer,
                sink,
                queue,
                down_since: None,
            },
        );
        drop(remote);
        if let Some(old) = old {
            Self::take_back(old);
        }
        Ok(())
    }

    /// Node `from` settles messages it was handed: acknowledged (or, with `requeue`, given back).
    pub(crate) fn settle(&self, from: u64, body: &Bytes) -> Result<(), String> {
        let (vhost, name, requeue, ids) = decode(body, |r| {
            let (vhost, name) = read_names(r)?;
            let requeue = r.bool()?;
            let mut ids = Vec::new();
            for _ in 0..r.count(8)? {
                ids.push(r.u64()?);
            }
            Ok((vhost, name, requeue, ids))
        })
        .map_err(bad_request)?;
        let record = crate::meta::records::message_queue(&vhost, &name);
        let remote = self.remote.lock();
        let Some(sub) = remote.get(&(from, record)) else {
            return Ok(());
        };
        let entries: Vec<Entry> = {
            let mut handed = sub.sink.outstanding.lock();
            ids.iter().filter_map(|id| handed.remove(id)).collect()
        };
        let (queue, consumer) = (sub.queue.clone(), sub.consumer.clone());
        drop(remote);
        let n = entries.len() as u32;
        let now = crate::time::Now::read();
        if requeue {
            queue.requeue(entries, now);
        } else {
            queue.settle(&entries);
        }
        consumer.release_credit(n);
        queue.dispatch(now);
        Ok(())
    }

    /// Node `from` no longer consumes from a queue: what its proxy still holds comes back.
    pub(crate) fn unsubscribe(&self, from: u64, body: &Bytes) -> Result<(), String> {
        let (vhost, name) = decode(body, read_names).map_err(bad_request)?;
        let record = crate::meta::records::message_queue(&vhost, &name);
        let removed = self.remote.lock().remove(&(from, record));
        if let Some(sub) = removed {
            Self::take_back(sub);
        }
        Ok(())
    }

    fn take_back(sub: Remote) {
        let now = crate::time::Now::read();
        sub.queue.remove_consumer(&sub.consumer, now);
        let entries: Vec<Entry> = sub.sink.outstanding.lock().drain();
        sub.queue.requeue(entries, now);
    }

    /// Takes back the messages of nodes whose link has been down for [`GONE_AFTER`].
    pub(super) fn sweep(&self, links: &Links) {
        let up: Vec<u64> = links
            .status()
            .into_iter()
            .filter(|p| p.connected)
            .map(|p| p.id)
            .collect();
        self.gets.sweep(&up);
        let now = Instant::now();
        let taken: Vec<Remote> = {
            let mut remote = self.remote.lock();
            let mut gone = Vec::new();
            for (key, sub) in remote.iter_mut() {
                if up.contains(&key.0) {
                    sub.down_since = None;
                } else if now.duration_since(*sub.down_since.get_or_insert(now)) >= GONE_AFTER {
                    gone.push(key.clone());
                }
            }
            gone.iter().filter_map(|k| remote.remove(k)).collect()
        };
        for sub in taken {
            tracing::warn!(node = sub.sink.node, queue = %sub.sink.queue, "a subscribed node is gone: its messages come back");
            Self::take_back(sub);
        }
    }

    // ---- the subscriber's side ----

    /// The host hands this node a message for its consumers.
    pub(crate) fn deliver(
        &self,
        from: u64,
        body: &Bytes,
        holder: &dyn QuorumHolder,
    ) -> Result<(), String> {
        let (vhost, name, id, flags, payload) = decode(body, |r| {
            let (vhost, name) = read_names(r)?;
            Ok((
                vhost,
                name,
                r.u64()?,
                (r.bool()?, r.u64()?),
                Bytes::copy_from_slice(r.bytes()?),
            ))
        })
        .map_err(bad_request)?;
        let record = crate::meta::records::message_queue(&vhost, &name);
        if self.local.lock().get(&record) != Some(&from) {
            return Err("not subscribed to that queue at that node".into());
        }
        let queue = holder.queue(&vhost, &name).ok_or("no such queue here")?;
        let message = holder
            .message(&payload)
            .ok_or("the message does not decode")?;
        // (redelivered, returns): the host's, so x-delivery-count reads the same on every node.
        queue.stage(id, message, flags, crate::time::Now::read());
        Ok(())
    }

    /// The host dropped this node's subscription (the queue went, or it stopped hosting it).
    pub(crate) fn cancelled(
        &self,
        from: u64,
        body: &Bytes,
        holder: &dyn QuorumHolder,
    ) -> Result<(), String> {
        let (vhost, name) = decode(body, read_names).map_err(bad_request)?;
        let record = crate::meta::records::message_queue(&vhost, &name);
        let mut local = self.local.lock();
        if local.get(&record) == Some(&from) {
            local.remove(&record);
            drop(local);
            if let Some(queue) = holder.queue(&vhost, &name) {
                queue.unstage(crate::time::Now::read());
            }
        }
        Ok(())
    }

    /// Settles at the host what this node's consumers acknowledged (a `Remove` journaled by this
    /// node's copy of a queue it does not host); false when the queue has no subscription here.
    pub(crate) fn settle_at_host(&self, record: &str, ids: Vec<u64>) -> bool {
        let Some(host) = self.local.lock().get(record).copied() else {
            return false;
        };
        let (Some(links), Some((vhost, name))) = (self.links.get(), split_record(record)) else {
            return false;
        };
        let body = Bytes::from(encode(|w| {
            names_body(&vhost, &name, w);
            w.bool(false);
            w.u64(ids.len() as u64);
            for id in &ids {
                w.u64(*id);
            }
        }));
        // A lost settle would also leave the subscription's window one smaller for good.
        send_until_answered(
            links.clone(),
            host,
            rpc::SETTLE,
            body,
            "a subscription's settles",
        );
        true
    }

    /// Ends the other nodes' subscriptions to the queue named `record` (this node stops hosting
    /// it): what they hold of it is void, and they drop it.
    pub(crate) fn drop_hosted(&self, record: &str) {
        let ended: Vec<Remote> = {
            let mut remote = self.remote.lock();
            let keys: Vec<(u64, String)> = remote
                .keys()
                .filter(|(_, r)| r == record)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| remote.remove(k)).collect()
        };
        self.gets.drop_queue(record);
        let now = crate::time::Now::read();
        for sub in ended {
            sub.queue.remove_consumer(&sub.consumer, now);
            sub.sink.cancelled(sub.consumer.clone());
        }
    }

    /// Forgets this node's subscription to the queue named `record` (it now hosts it).
    pub(crate) fn hosting(&self, record: &str) {
        self.local.lock().remove(record);
    }
}

/// The vhost and queue of a record name.
fn split_record(record: &str) -> Option<(String, String)> {
    crate::meta::records::split_message_queue(record)
}

impl Subscriptions {
    /// Subscribes this node's copy of `queue` (record name `record`) at `wanted` (None: nowhere),
    /// ending its subscription elsewhere first: what it staged from there is dropped.
    pub(super) async fn sync(
        &self,
        links: &Arc<Links>,
        group: u32,
        record: &str,
        queue: &Arc<Queue>,
        wanted: Option<u64>,
    ) {
        let current = self.local.lock().get(record).copied();
        if current == wanted {
            return;
        }
        let Some((vhost, name)) = split_record(record) else {
            return;
        };
        let body = Bytes::from(encode(|w| names_body(&vhost, &name, w)));
        if let Some(old) = current {
            self.local.lock().remove(record);
            send(links, old, group, rpc::UNSUBSCRIBE, body.clone());
            queue.unstage(crate::time::Now::read());
        }
        let Some(host) = wanted else {
            return;
        };
        self.local.lock().insert(record.to_string(), host);
        let answer = match links.start_call(host, group, rpc::SUBSCRIBE, body) {
            Ok(call) => call
                .answer(CALL_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = answer {
            tracing::debug!(queue = %name, host, %why, "not subscribed yet");
            let mut local = self.local.lock();
            if local.get(record) == Some(&host) {
                local.remove(record);
            }
        }
    }
}
