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
//!
//! Each subscription has an epoch the subscribing node chooses; its deliveries carry it, and the
//! node stages only those of its current one. When the node's consumers change it asks for the
//! window they call for now (and every few seconds asks again, so a subscription the host no
//! longer has is noticed); when its last consumer goes it unsubscribes and the host takes back
//! everything the proxy still holds; when the host changes (its node stops leading the shard), or
//! the node sees its link to the host down, the node drops what it staged (`Queue::unstage`:
//! deliveries of it are void) and subscribes afresh — at the new host, which has every unsettled
//! message in its replica, or at the same one once the link is back, which then takes back what
//! the old subscription held. A consumer thus sees a failover or a partition as redeliveries,
//! never as a loss. The host also gives up the subscriptions of a node whose link has been down
//! for a while, or that answers it has no such subscription, and takes their messages back.
//! This file is the host's side; subscriber.rs the subscribing node's (which sizes the window).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::holder::{QuorumHolder, NOT_HOSTING};
use super::resend::GONE_AFTER;
use super::sink::{read_names, RemoteSink, UNKNOWN};
use super::subscriber::{Subscriber, MAX_WINDOW};
use crate::cluster::link::Links;
use crate::cluster::raft::codec::decode;
use crate::cluster::raft::network::bad_request;
use crate::ids::{ChannelId, ConnectionId, ConsumerId, ConsumerTag, NodeId};
use crate::queue::consumer::{ChannelCredit, Consumer, DeliverySink, Limit};
use crate::queue::Queue;

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
    /// As a host: by (subscribing node, record name).
    remote: Mutex<HashMap<(u64, String), Remote>>,
    /// As a subscriber (subscriber.rs).
    pub(super) subscriber: Subscriber,
    /// As a host: what other nodes' basic.get took and have not settled.
    pub(super) gets: super::get::Gets,
}

/// A subscription request: a queue, the subscriber's epoch for it, its window, and whether it is
/// a new subscription (else a window for the one the host has).
struct Request {
    vhost: String,
    name: String,
    epoch: u64,
    window: u32,
    fresh: bool,
}

impl Subscriptions {
    pub(crate) fn attach(&self, links: Arc<Links>) {
        self.subscriber.attach(links);
    }

    /// Node `from` subscribes to a queue this node hosts (a fresh subscription replaces the one
    /// it had, whose messages come back), or asks its subscription for another window; answered
    /// [`UNKNOWN`] when that names a subscription this node does not have.
    pub(crate) fn subscribe(
        &self,
        from: u64,
        group: u32,
        body: &Bytes,
        holds: impl FnOnce(&Queue) -> bool,
        holder: &dyn QuorumHolder,
    ) -> Result<Bytes, String> {
        let request = decode(body, |r| {
            let (vhost, name) = read_names(r)?;
            Ok(Request {
                vhost,
                name,
                epoch: r.u64()?,
                // Never unlimited (0) nor larger than any node asks for: a window is memory
                // held here.
                window: r.u64()?.clamp(1, u64::from(MAX_WINDOW)) as u32,
                fresh: r.bool()?,
            })
        })
        .map_err(bad_request)?;
        let Request { vhost, name, .. } = &request;
        let key = (from, crate::meta::records::message_queue(vhost, name));
        let queue = holder
            .queue(vhost, name)
            .ok_or_else(|| format!("no queue '{name}' in vhost '{vhost}'"))?;
        if !holds(&queue) {
            return Err(format!("{NOT_HOSTING}: queue '{name}' in vhost '{vhost}'"));
        }
        let links = self.subscriber.links().ok_or("the node links are not up")?;
        let old = {
            let mut remote = self.remote.lock();
            let same = remote.get(&key).filter(|existing| {
                Arc::ptr_eq(&existing.queue, &queue) && existing.sink.epoch() == request.epoch
            });
            match (request.fresh, same) {
                (false, Some(existing)) => {
                    existing.consumer.prefetch.set_limit(request.window);
                    drop(remote);
                    queue.dispatch(crate::time::Now::read());
                    return Ok(Bytes::new());
                }
                (false, None) => return Ok(Bytes::from_static(UNKNOWN)),
                (true, _) => remote.remove(&key),
            }
        };
        // What the old subscription held comes back before the new one takes any.
        if let Some(old) = old {
            Self::take_back(old);
        }
        let credit = Arc::new(ChannelCredit::default());
        let sink = Arc::new(RemoteSink::new(
            links,
            (from, group),
            (vhost.clone(), name.clone()),
            request.epoch,
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
            prefetch: Limit::new(request.window),
            channel_credit: credit,
            write_budget: Arc::new(Limit::new(0)),
            sink: sink.clone(),
        });
        let now = crate::time::Now::read();
        queue
            .add_consumer(consumer.clone(), now)
            .map_err(|_| format!("queue '{name}' has an exclusive consumer"))?;
        let replaced = self.remote.lock().insert(
            key,
            Remote {
                consumer,
                sink,
                queue,
                down_since: None,
            },
        );
        if let Some(replaced) = replaced {
            Self::take_back(replaced);
        }
        Ok(Bytes::new())
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

    /// Node `from` no longer consumes from a queue (its subscription of the epoch given): what
    /// its proxy still holds comes back.
    pub(crate) fn unsubscribe(&self, from: u64, body: &Bytes) -> Result<(), String> {
        let (vhost, name, epoch) = decode(body, |r| {
            let (vhost, name) = read_names(r)?;
            Ok((vhost, name, r.u64()?))
        })
        .map_err(bad_request)?;
        let key = (from, crate::meta::records::message_queue(&vhost, &name));
        let removed = {
            let mut remote = self.remote.lock();
            match remote.get(&key) {
                Some(sub) if sub.sink.epoch() == epoch => remote.remove(&key),
                _ => None,
            }
        };
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

    /// Takes back the messages of nodes whose link has been down for [`GONE_AFTER`], and of
    /// subscriptions their node no longer has.
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
                if sub.sink.gone() {
                    gone.push(key.clone());
                } else if up.contains(&key.0) {
                    sub.down_since = None;
                } else if now.duration_since(*sub.down_since.get_or_insert(now)) >= GONE_AFTER {
                    gone.push(key.clone());
                }
            }
            gone.iter().filter_map(|k| remote.remove(k)).collect()
        };
        for sub in taken {
            tracing::info!(node = sub.sink.node(), queue = %sub.sink.queue(), "a subscribed node is gone, or no longer subscribed: its messages come back");
            Self::take_back(sub);
        }
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
}
