//! The subscribing node's side of a subscription (subscribe.rs tells the whole of it): which host
//! each queue's staged messages come from under which epoch, keeping that in line with the shard's
//! leader, this node's consumers and its links (`sync`, every tick), staging what the host hands
//! over, and settling at the host what the consumers acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::holder::QuorumHolder;
use super::resend::send_until_answered;
use super::sink::{names_body, read_names, CALL_TIMEOUT, UNKNOWN};
use crate::cluster::link::Links;
use crate::cluster::raft::codec::{decode, encode};
use crate::cluster::raft::network::bad_request;
use crate::cluster::raft::rpc;
use crate::queue::Queue;

/// A consumer without a prefetch limit (or in no-ack mode) counts as this many in a window.
const UNLIMITED_SHARE: u32 = 1024;
/// The largest window a node asks for, and a host grants.
pub(super) const MAX_WINDOW: u32 = 8192;

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

/// How often a node asks a host again for the window it has (so that a subscription the host no
/// longer has — a lost cancellation — is noticed and made afresh).
const KEEPALIVE: Duration = Duration::from_secs(5);

/// The most subscriptions to one queue a node keeps telling a host it ended (attempts whose answer
/// was lost add one each; a host has at most one of them).
const MAX_OWED: usize = 8;

/// This node's subscriptions at other nodes.
pub(super) struct Subscriber {
    links: OnceLock<Arc<Links>>,
    subscribed: Mutex<HashMap<String, Subscribed>>,
    /// Subscriptions dropped while the link to their host was down, by record name (host, epoch):
    /// the host is told once the link is back, and takes back what it handed (it would not if the
    /// link came back before it gave the node up, and nothing more were handed over).
    owed: Mutex<HashMap<String, Vec<(u64, u64)>>>,
    next_epoch: AtomicU64,
}

impl Default for Subscriber {
    fn default() -> Self {
        Subscriber {
            links: OnceLock::new(),
            subscribed: Mutex::default(),
            owed: Mutex::default(),
            // Different at every start of the node, so no epoch of an earlier run comes again.
            next_epoch: AtomicU64::new(crate::cluster::link::incarnation()),
        }
    }
}

/// A subscription of this node's: its host, epoch and window, and when the window was last asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subscribed {
    host: u64,
    epoch: u64,
    window: u32,
    asked: Instant,
}

impl Subscriber {
    pub(super) fn attach(&self, links: Arc<Links>) {
        let _ = self.links.set(links);
    }

    pub(super) fn links(&self) -> Option<Arc<Links>> {
        self.links.get().cloned()
    }

    fn get(&self, record: &str) -> Option<Subscribed> {
        self.subscribed.lock().get(record).copied()
    }

    fn host(&self, record: &str) -> Option<u64> {
        self.get(record).map(|s| s.host)
    }

    /// Whether this node's subscription to `record` is at `host` under `epoch`.
    fn is(&self, record: &str, host: u64, epoch: u64) -> bool {
        self.get(record)
            .is_some_and(|s| s.host == host && s.epoch == epoch)
    }

    /// Forgets the subscription to `record` if it is still `epoch`'s; whether it was.
    fn end(&self, record: &str, epoch: u64) -> bool {
        let mut subscribed = self.subscribed.lock();
        let ours = subscribed.get(record).is_some_and(|s| s.epoch == epoch);
        if ours {
            subscribed.remove(record);
        }
        ours
    }
}

/// The vhost and queue of a record name.
fn split_record(record: &str) -> Option<(String, String)> {
    crate::meta::records::split_message_queue(record)
}

impl Subscriber {
    /// The host hands this node messages for its consumers; answered [`UNKNOWN`] (nothing staged)
    /// when they are not for its current subscription.
    pub(super) fn deliver(
        &self,
        from: u64,
        body: &Bytes,
        holder: &dyn QuorumHolder,
    ) -> Result<Bytes, String> {
        let (vhost, name, epoch, handed) = decode(body, |r| {
            let (vhost, name) = read_names(r)?;
            let epoch = r.u64()?;
            let mut handed = Vec::new();
            for _ in 0..r.count(8 + 1 + 8 + 8)? {
                handed.push((
                    r.u64()?,
                    (r.bool()?, r.u64()?),
                    Bytes::copy_from_slice(r.bytes()?),
                ));
            }
            Ok((vhost, name, epoch, handed))
        })
        .map_err(bad_request)?;
        let record = crate::meta::records::message_queue(&vhost, &name);
        let queue = holder.queue(&vhost, &name).ok_or("no such queue here")?;
        // All or none: the host takes back every message of a request that is not staged.
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
        // Asked under the copy's lock: an unstage for a subscription that ended comes before or
        // after, never between.
        let current = || self.is(&record, from, epoch);
        if queue.stage(staged, current, crate::time::Now::read()) {
            Ok(Bytes::new())
        } else {
            Ok(Bytes::from_static(UNKNOWN))
        }
    }

    /// The host dropped this node's subscription (the queue went, or it stopped hosting it).
    pub(super) fn cancelled(
        &self,
        from: u64,
        body: &Bytes,
        holder: &dyn QuorumHolder,
    ) -> Result<(), String> {
        let (vhost, name, epoch) = decode(body, |r| {
            let (vhost, name) = read_names(r)?;
            Ok((vhost, name, r.u64()?))
        })
        .map_err(bad_request)?;
        let record = crate::meta::records::message_queue(&vhost, &name);
        if self.is(&record, from, epoch) && self.end(&record, epoch) {
            if let Some(queue) = holder.queue(&vhost, &name) {
                queue.unstage(crate::time::Now::read());
            }
        }
        Ok(())
    }

    /// Settles at the host what this node's consumers acknowledged (a `Remove` journaled by this
    /// node's copy of a queue it does not host); false when the queue has no subscription here.
    pub(super) fn settle_at_host(&self, record: &str, ids: Vec<u64>) -> bool {
        let Some(host) = self.host(record) else {
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

    /// Forgets this node's subscription to the queue named `record` (it now hosts it).
    pub(super) fn hosting(&self, record: &str) {
        self.subscribed.lock().remove(record);
    }

    /// Ends this node's subscription `old` to `record` (what it staged is dropped) and tells its
    /// host, at once or, with the link down, once it is back.
    fn unsubscribe_from(
        &self,
        links: &Arc<Links>,
        record: &str,
        queue: &Arc<Queue>,
        old: Subscribed,
    ) {
        if !self.end(record, old.epoch) {
            return;
        }
        queue.unstage(crate::time::Now::read());
        if links.connected(old.host) {
            self.send_unsubscribe(links, record, old.host, old.epoch);
        } else {
            tracing::debug!(
                record,
                host = old.host,
                "the link to a subscription's host is down"
            );
            let mut owed = self.owed.lock();
            let owed = owed.entry(record.to_string()).or_default();
            if owed.len() >= MAX_OWED {
                owed.remove(0);
            }
            owed.push((old.host, old.epoch));
        }
    }

    fn send_unsubscribe(&self, links: &Arc<Links>, record: &str, host: u64, epoch: u64) {
        let Some((vhost, name)) = split_record(record) else {
            return;
        };
        let body = Bytes::from(encode(|w| {
            names_body(&vhost, &name, w);
            w.u64(epoch);
        }));
        // A lost one would leave what the host handed held there (unless it hands more).
        send_until_answered(
            links.clone(),
            host,
            rpc::UNSUBSCRIBE,
            body,
            "an unsubscription",
        );
    }

    /// Subscribes this node's copy of `queue` (record name `record`) at `wanted` (None: nowhere)
    /// with the window its consumers call for now: ending a subscription elsewhere, or one whose
    /// link is down, first (what it staged is dropped); asking the host again for a changed
    /// window, or every [`KEEPALIVE`]; subscribing afresh when the host no longer has it.
    pub(super) async fn sync(
        &self,
        links: &Arc<Links>,
        group: u32,
        record: &str,
        queue: &Arc<Queue>,
        wanted: Option<u64>,
    ) {
        let due: Vec<(u64, u64)> = {
            let mut owed = self.owed.lock();
            let mut due = Vec::new();
            if let Some(list) = owed.get_mut(record) {
                list.retain(|&(host, epoch)| {
                    let up = links.connected(host);
                    if up {
                        due.push((host, epoch));
                    }
                    !up
                });
                if list.is_empty() {
                    owed.remove(record);
                }
            }
            due
        };
        for (host, epoch) in due {
            self.send_unsubscribe(links, record, host, epoch);
        }
        let mut current = self.get(record);
        if let Some(old) =
            current.filter(|old| Some(old.host) != wanted || !links.connected(old.host))
        {
            self.unsubscribe_from(links, record, queue, old);
            current = None;
        }
        // Not asked while the link is down (it would fail, and leave one more to end later).
        let Some(host) = wanted.filter(|host| links.connected(*host)) else {
            return;
        };
        let window = window_for(queue.consumer_capacity(UNLIMITED_SHARE));
        let now = Instant::now();
        let asking = match current {
            None => Subscribed {
                host,
                epoch: self.next_epoch.fetch_add(1, Ordering::Relaxed),
                window,
                asked: now,
            },
            Some(old) if old.window != window || now.duration_since(old.asked) >= KEEPALIVE => {
                Subscribed {
                    window,
                    asked: now,
                    ..old
                }
            }
            Some(_) => return,
        };
        let fresh = current.is_none();
        self.subscribed.lock().insert(record.to_string(), asking);
        let Some((vhost, name)) = split_record(record) else {
            return;
        };
        let body = Bytes::from(encode(|w| {
            names_body(&vhost, &name, w);
            w.u64(asking.epoch);
            w.u64(u64::from(asking.window));
            w.bool(fresh);
        }));
        let answer = match links.start_call(host, group, rpc::SUBSCRIBE, body) {
            Ok(call) => call.answer(CALL_TIMEOUT).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(answer) if answer.is_empty() => {}
            // The host no longer has it (it gave the node up, or stopped hosting and hosts again):
            // a fresh one at the next tick.
            Ok(_) => self.unsubscribe_from(links, record, queue, asking),
            Err(why) if fresh => {
                // The host may have registered it (and handed messages) before the answer was
                // lost: it is ended as any other, and a fresh one asked at the next tick.
                tracing::debug!(queue = %name, host, %why, "not subscribed yet");
                self.unsubscribe_from(links, record, queue, asking);
            }
            Err(why) => {
                // Asked again at the next tick.
                tracing::debug!(queue = %name, host, %why, "the window was not asked");
                if let Some(old) = current {
                    let mut subscribed = self.subscribed.lock();
                    if subscribed.get(record) == Some(&asking) {
                        subscribed.insert(record.to_string(), old);
                    }
                }
            }
        }
    }
}
