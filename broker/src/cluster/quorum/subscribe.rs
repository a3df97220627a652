//! Consumers of a quorum queue on a node that does not host it (HA.md §5.4, done the simple way).
//!
//! The consuming node subscribes at the host (the shard's leader): the host registers one proxy
//! consumer for that node on its live queue, with a window of credit the node asks for by what
//! its consumers can hold ([`window_for`]), and sends what it hands the proxy over the link
//! (sink.rs). The consuming node stages what arrives in its own copy of the queue
//! (`Queue::stage`, nothing journaled), where its local consumers take it exactly as from a single
//! node's queue: prefetch, acks, requeues, priorities. An ack there journals `Remove` as always;
//! on a node that does not host the queue that record becomes a settle sent to the host, which
//! settles the proxy's message (journaled to the shard) and so gives the proxy its credit back.
//! When the node's consumers change it asks for the window they call for now; when its last
//! consumer goes it unsubscribes and the host takes back everything the proxy still holds; when
//! the host changes (its node stops leading the shard) the node drops what it staged
//! (`Queue::unstage`: deliveries of it are void) and subscribes at the new host, which has every
//! unsettled message in its replica. A consumer thus sees a failover as redeliveries, never as a
//! loss. The host drops the subscriptions of a node whose link has been down for a while and
//! takes their messages back; a node that sees its link to the host down drops what it staged and,
//! once the link is back, subscribes afresh (the host then takes back what it handed before, if it
//! had not yet), so no subscription is lost to a partition.
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::holder::{QuorumHolder, NOT_HOSTING};
use super::resend::{send_until_answered, GONE_AFTER};
use super::sink::{names_body, read_names, RemoteSink, CALL_TIMEOUT};
use crate::cluster::link::Links;
use crate::cluster::raft::codec::{decode, encode};
use crate::cluster::raft::network::bad_request;
use crate::cluster::raft::rpc;
use crate::ids::{ChannelId, ConnectionId, ConsumerId, ConsumerTag, NodeId};
use crate::queue::consumer::{ChannelCredit, Consumer, DeliverySink, Limit};
use crate::queue::Queue;

/// A consumer without a prefetch limit (or in no-ack mode) counts as this many in a window.
const UNLIMITED_SHARE: u32 = 1024;
/// The largest window a node asks for, and a host grants.
const MAX_WINDOW: u32 = 8192;
/// The messages a node asks a host to hand it before it settles some, for consumers that may hold
/// `capacity` unacknowledged (`Queue::consumer_capacity`): twice that (what they hold, and as many
/// again acknowledged and settling at the host, or on their way, while they take more), and 8 more
/// so that a consumer with prefetch 1 does not wait a round trip for each message. Sized by the
/// consumers, a window keeps a fast consumer on another node than the host fed as one on the host
/// is, yet stages little beyond what they can hold: messages staged at one node wait for its
/// consumers while another node's may be idle (a fixed window of 128 starved a prefetch-100
/// consumer behind a confirming publisher, and one of 1,024 staged hundreds for prefetch 1).
fn window_for(capacity: u64) -> u32 {
    capacity
        .saturating_mul(2)
        .saturating_add(8)
        .min(u64::from(MAX_WINDOW)) as u32
}

/// How often a node looks at what it should be subscribed to.
pub(super) const TICK: Duration = Duration::from_millis(200);

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
    /// As a subscriber: the host each queue's staged messages come from and the window asked of
    /// it, by record name.
    local: Mutex<HashMap<String, Subscribed>>,
    /// As a host: what other nodes' basic.get took and have not settled.
    pub(super) gets: super::get::Gets,
}

/// A subscriber's subscription: at which host, with which window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subscribed {
    host: u64,
    window: u32,
}

/// Sends a request whose answer only needs collecting.
fn send(links: &Arc<Links>, node: u64, group: u32, kind: u8, body: Bytes) {
    if let Ok(call) = links.start_call(node, group, kind, body) {
        tokio::spawn(async move {
            let _ = call.answer(CALL_TIMEOUT).await;
        });
    }
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
        let (vhost, name, window, fresh) = decode(body, |r| {
            let (vhost, name) = read_names(r)?;
            Ok((vhost, name, r.u64()?, r.bool()?))
        })
        .map_err(bad_request)?;
        // Never unlimited (0) nor larger than any node asks for: a window is memory held here.
        let window = window.clamp(1, u64::from(MAX_WINDOW)) as u32;
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
            if Arc::ptr_eq(&existing.queue, &queue) && !fresh {
                // The same subscription with a new window (its node's consumers changed). A fresh
                // one replaces it below: the node dropped what it staged, which comes back here.
                existing.consumer.prefetch.set_limit(window);
                drop(remote);
                queue.dispatch(crate::time::Now::read());
                return Ok(());
            }
        }
        let credit = Arc::new(ChannelCredit::default());
        let sink = Arc::new(RemoteSink::new(
            links,
            (from, group),
            (vhost, name.clone()),
            credit.clone(),
        ));
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
            prefetch: Limit::new(window),
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
        let entries = sub.sink.settled(&ids);
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
        let entries = sub.sink.take_all();
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
        let (vhost, name, handed) = decode(body, |r| {
            let (vhost, name) = read_names(r)?;
            let mut handed = Vec::new();
            for _ in 0..r.count(8 + 1 + 8 + 8)? {
                handed.push((
                    r.u64()?,
                    (r.bool()?, r.u64()?),
                    Bytes::copy_from_slice(r.bytes()?),
                ));
            }
            Ok((vhost, name, handed))
        })
        .map_err(bad_request)?;
        let record = crate::meta::records::message_queue(&vhost, &name);
        if self.local.lock().get(&record).map(|s| s.host) != Some(from) {
            return Err("not subscribed to that queue at that node".into());
        }
        let queue = holder.queue(&vhost, &name).ok_or("no such queue here")?;
        // All or none: the host takes back every message of a request that is not answered.
        let messages = handed
            .iter()
            .map(|(_, _, payload)| holder.message(payload))
            .collect::<Option<Vec<_>>>()
            .ok_or("a message does not decode")?;
        // (redelivered, returns): the host's, so x-delivery-count reads the same everywhere.
        let staged = handed
            .into_iter()
            .zip(messages)
            .map(|((id, flags, _), message)| (id, message, flags));
        queue.stage(staged, crate::time::Now::read());
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
        if local.get(&record).map(|s| s.host) == Some(from) {
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
        let Some(host) = self.local.lock().get(record).map(|s| s.host) else {
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
    /// ending its subscription elsewhere first (what it staged from there is dropped), with the
    /// window its consumers call for now: a changed window is asked of the same host again.
    pub(super) async fn sync(
        &self,
        links: &Arc<Links>,
        group: u32,
        record: &str,
        queue: &Arc<Queue>,
        wanted: Option<u64>,
    ) {
        let wanted = wanted.map(|host| Subscribed {
            host,
            window: window_for(queue.consumer_capacity(UNLIMITED_SHARE)),
        });
        let mut current = self.local.lock().get(record).copied();
        if let Some(old) = current.filter(|old| !links.connected(old.host)) {
            // The link to the host is down: what was staged from there is dropped (deliveries of
            // it are void), and the host takes it back — when it gives the node up, or when the
            // node subscribes afresh — and hands it again.
            self.local.lock().remove(record);
            queue.unstage(crate::time::Now::read());
            tracing::debug!(
                record,
                host = old.host,
                "the link to a subscription's host is down"
            );
            current = None;
        }
        if current == wanted {
            return;
        }
        let Some((vhost, name)) = split_record(record) else {
            return;
        };
        let body = Bytes::from(encode(|w| names_body(&vhost, &name, w)));
        let kept = current.filter(|old| Some(old.host) == wanted.map(|w| w.host));
        if let Some(old) = current.filter(|_| kept.is_none()) {
            self.local.lock().remove(record);
            send(links, old.host, group, rpc::UNSUBSCRIBE, body);
            queue.unstage(crate::time::Now::read());
        }
        let Some(want) = wanted else {
            return;
        };
        self.local.lock().insert(record.to_string(), want);
        let body = Bytes::from(encode(|w| {
            names_body(&vhost, &name, w);
            w.u64(u64::from(want.window));
            w.bool(kept.is_none());
        }));
        let host = want.host;
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
            // Asked again at the next tick: a new subscription as none, a new window as the old.
            let mut local = self.local.lock();
            if local.get(record) == Some(&want) {
                match kept {
                    Some(old) => local.insert(record.to_string(), old),
                    None => local.remove(record),
                };
            }
        }
    }
}
