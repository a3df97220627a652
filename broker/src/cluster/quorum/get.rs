//! basic.get on a node that does not hold the queue (a quorum queue's host, a classic queue's
//! home), as in RabbitMQ where any node answers it: when this node's copy has nothing staged for
//! its own consumers, the channel asks the holder (`GET`, the connection parked meanwhile as for
//! the counts). The holder takes the head message with a single node's basic.get — the delivery
//! count, the redelivered flag and the count left are its own — and either settles it at once
//! (no-ack) or keeps it handed out to the asking node until that node settles it (`GOT`: an ack,
//! a requeue, or a reject that dead-letters it). Each get carries a token the asking node chose,
//! which names the message in its settlement — and in the requeue it sends when the answer never
//! came, so a message handed out for a lost answer is not held for nothing. A message handed out this way goes back to the
//! queue when the asking node's link has been down for a while, and is void when the holder stops
//! holding the queue: the shard's next leader has it unsettled in its replica and delivers it
//! again, as after any failover.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::holder::{QuorumHolder, NOT_HOSTING};
use super::resend::{send_until_answered, GONE_AFTER};
use crate::cluster::link::Links;
use crate::cluster::raft::codec::{decode, encode};
use crate::cluster::raft::network::bad_request;
use crate::cluster::raft::rpc;
use crate::message::Message;
use crate::queue::{Entry, Queue};

/// How long the holder may take to answer a get.
const GET_TIMEOUT: Duration = Duration::from_secs(5);

/// How a got message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    Ack = 0,
    Requeue = 1,
    /// basic.reject / basic.nack without requeue: dead-lettered if the queue says so.
    Reject = 2,
}

/// A message the holder handed this node's basic.get.
pub(crate) struct Got {
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Its delivery count at the holder (`x-delivery-count` of a quorum queue).
    pub returns: u64,
    /// Messages left in the queue.
    pub count: u32,
    /// Where to settle it (None: got with no-ack, already settled).
    pub settle: Option<RemoteGot>,
}

/// A message got from another node and not settled yet: settling it tells the holder.
pub(crate) struct RemoteGot {
    links: Arc<Links>,
    node: u64,
    vhost: String,
    queue: String,
    token: u64,
}

impl std::fmt::Debug for RemoteGot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteGot")
            .field("node", &self.node)
            .field("queue", &self.queue)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A token for the next get: unique on this node, and across its restarts (the holder may still
/// have what an earlier run of this node got), as counted on from this run's incarnation.
fn next_token() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| AtomicU64::new(crate::cluster::link::incarnation()))
        .fetch_add(1, Ordering::Relaxed)
}

impl RemoteGot {
    /// Settles it at the holder (resend.rs: before anything this channel asks next).
    pub(crate) fn settle(self, how: How) {
        let body = Bytes::from(encode(|w| {
            w.bytes(self.vhost.as_bytes());
            w.bytes(self.queue.as_bytes());
            w.u8(how as u8);
            w.u64(self.token);
        }));
        send_until_answered(
            self.links,
            self.node,
            rpc::GOT,
            body,
            "a got message's settlement",
        );
    }
}

/// Messages handed out to one node's gets from one queue, by token.
type Handed = HashMap<u64, (Arc<Queue>, Entry)>;

/// The holder's side: what other nodes' basic.get took and have not settled, by (node, record
/// name) and token.
#[derive(Default)]
pub struct Gets {
    handed: Mutex<HashMap<(u64, String), Handed>>,
    down_since: Mutex<HashMap<u64, Instant>>,
}

impl Gets {
    /// Node `from` asks for the head message of a queue this node holds.
    /// Node `from` asks for the head message of a queue this node `holds`.
    pub(super) fn get(
        &self,
        from: u64,
        holds: impl Fn(&Queue) -> bool,
        holder: &dyn QuorumHolder,
        body: &Bytes,
    ) -> Result<Bytes, String> {
        let (vhost, name, no_ack, token) = decode(body, |r| {
            Ok((r.string()?, r.string()?, r.bool()?, r.u64()?))
        })
        .map_err(bad_request)?;
        let queue = holder
            .queue(&vhost, &name)
            .filter(|q| holds(q))
            .ok_or_else(|| format!("{NOT_HOSTING}: queue '{name}' in vhost '{vhost}'"))?;
        let Some((entry, count)) = queue.get(crate::time::Now::read()) else {
            return Ok(Bytes::from(encode(|w| w.bool(false))));
        };
        let answer = encode(|w| {
            w.bool(true);
            w.bool(entry.redelivered);
            w.u64(entry.returns);
            w.u64(u64::from(count));
            w.bytes(&entry.message.stored_form());
        });
        if no_ack {
            queue.settle([&entry]);
        } else {
            let record = crate::meta::records::message_queue(&vhost, &name);
            self.handed
                .lock()
                .entry((from, record))
                .or_default()
                .insert(token, (queue, entry));
        }
        Ok(Bytes::from(answer))
    }

    /// Node `from` settles a message it got.
    pub(super) fn settle(&self, from: u64, body: &Bytes) -> Result<(), String> {
        let (vhost, name, how, token) =
            decode(body, |r| Ok((r.string()?, r.string()?, r.u8()?, r.u64()?)))
                .map_err(bad_request)?;
        let record = crate::meta::records::message_queue(&vhost, &name);
        let taken = {
            let mut handed = self.handed.lock();
            let key = (from, record);
            let taken = handed.get_mut(&key).and_then(|ids| ids.remove(&token));
            if handed.get(&key).is_some_and(|ids| ids.is_empty()) {
                handed.remove(&key);
            }
            taken
        };
        let Some((queue, entry)) = taken else {
            return Ok(());
        };
        let now = crate::time::Now::read();
        match how {
            0 => queue.settle([&entry]),
            1 => queue.requeue([entry], now),
            _ => queue.reject(vec![entry], now),
        }
        queue.dispatch(now);
        Ok(())
    }

    /// Gives back to their queues the messages of nodes whose link has been down for
    /// [`GONE_AFTER`] (`up`: the linked nodes).
    pub(super) fn sweep(&self, up: &[u64]) {
        let now = Instant::now();
        let gone: Vec<u64> = {
            let handed = self.handed.lock();
            let mut down = self.down_since.lock();
            down.retain(|node, _| !up.contains(node));
            let mut gone: Vec<u64> = handed
                .keys()
                .map(|(node, _)| *node)
                .filter(|node| !up.contains(node))
                .filter(|node| now.duration_since(*down.entry(*node).or_insert(now)) >= GONE_AFTER)
                .collect();
            gone.dedup();
            gone
        };
        if gone.is_empty() {
            return;
        }
        let taken: Vec<(Arc<Queue>, Entry)> = {
            let mut handed = self.handed.lock();
            let keys: Vec<(u64, String)> = handed
                .keys()
                .filter(|(node, _)| gone.contains(node))
                .cloned()
                .collect();
            keys.iter()
                .filter_map(|k| handed.remove(k))
                .flat_map(|ids| ids.into_values())
                .collect()
        };
        let now = crate::time::Now::read();
        for (queue, entry) in taken {
            queue.requeue([entry], now);
        }
    }

    /// Forgets what was handed out of the queue named `record` (this node stops holding it: the
    /// next holder has those messages unsettled).
    pub(super) fn drop_queue(&self, record: &str) {
        self.handed.lock().retain(|(_, r), _| r != record);
    }
}

/// Asks `node` (over `links`, None before the node has joined its cluster) for the head message
/// of queue `names` (vhost, queue), handed out to this node unless `no_ack`; None when the queue
/// is empty. `holder` decodes the message.
pub(super) fn ask(
    links: Option<Arc<Links>>,
    node: u64,
    (vhost, queue): (&str, &str),
    no_ack: bool,
    holder: Arc<dyn QuorumHolder>,
) -> impl std::future::Future<Output = Result<Option<Got>, String>> + Send + 'static {
    let token = next_token();
    let body = Bytes::from(encode(|w| {
        w.bytes(vhost.as_bytes());
        w.bytes(queue.as_bytes());
        w.bool(no_ack);
        w.u64(token);
    }));
    let (vhost, queue) = (vhost.to_string(), queue.to_string());
    async move {
        let links = links.ok_or("this node has not joined its cluster yet")?;
        let handle = RemoteGot {
            links: links.clone(),
            node,
            vhost,
            queue,
            token,
        };
        let answer = match links.start_call(node, 0, rpc::GET, body) {
            Ok(call) => call.answer(GET_TIMEOUT).await.map_err(|e| e.to_string()),
            Err(e) => return Err(e.to_string()),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(why) => {
                // The holder may have handed a message out all the same: it goes back.
                if !no_ack {
                    handle.settle(How::Requeue);
                }
                return Err(why);
            }
        };
        let got = decode(&answer, |r| {
            if !r.bool()? {
                return Ok(None);
            }
            Ok(Some((
                r.bool()?,
                r.u64()?,
                r.u64()?,
                Bytes::copy_from_slice(r.bytes()?),
            )))
        })
        .map_err(bad_request)?;
        let Some((redelivered, returns, count, payload)) = got else {
            return Ok(None);
        };
        let Some(message) = holder.message(&payload) else {
            if !no_ack {
                handle.settle(How::Requeue);
            }
            return Err("the message does not decode".into());
        };
        Ok(Some(Got {
            message,
            redelivered,
            returns,
            count: u32::try_from(count).unwrap_or(u32::MAX),
            settle: (!no_ack).then_some(handle),
        }))
    }
}
