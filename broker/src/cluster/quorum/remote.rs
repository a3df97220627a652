//! What a node asks the node holding a queue (a quorum queue's host, a classic queue's home) when a
//! client uses the queue here for more than publishing and consuming: its counts (queue.declare-ok,
//! a passive declare) and queue.purge. The copy on this node holds only what its own consumers
//! were handed, so an answer from it would be wrong.

use bytes::Bytes;

use super::holder::{QuorumHolder, NOT_HOSTING};
use super::journal::ShardJournal;
use crate::cluster::raft::codec::{decode, encode};
use crate::cluster::raft::network::bad_request;
use crate::cluster::raft::rpc;
use crate::queue::Queue;

/// How long the holder may take to answer.
const ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A queue's counts as its holder has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    pub messages: u32,
    pub consumers: u32,
}

/// The holder's side: answers a COUNT or PURGE request about a queue this node holds.
pub(super) fn answer(
    journal: &ShardJournal,
    holder: &dyn QuorumHolder,
    kind: u8,
    body: &Bytes,
) -> Result<Bytes, String> {
    let (vhost, name) = decode(body, |r| Ok((r.string()?, r.string()?))).map_err(bad_request)?;
    let queue = holder
        .queue(&vhost, &name)
        .filter(|q| journal.holds(q))
        .ok_or_else(|| format!("{NOT_HOSTING}: queue '{name}' in vhost '{vhost}'"))?;
    let out = match kind {
        rpc::COUNT => encode(|w| {
            w.u64(u64::from(queue.message_count()));
            w.u64(u64::from(queue.consumer_count()));
        }),
        _ => encode(|w| w.u64(u64::from(queue.purge(crate::time::Now::read())))),
    };
    Ok(Bytes::from(out))
}

impl ShardJournal {
    /// The node holding `queue` when that is another node (None: this node holds it, or it is a
    /// single node's queue).
    pub(crate) fn holder_of(&self, queue: &Queue) -> Option<u64> {
        let me = *self.node.get()?;
        self.holder(queue).filter(|node| *node != me)
    }

    /// The node holding `queue` on a cluster, this one included: a classic queue's home, a
    /// quorum queue's shard leader (None when it has none, and for a single node's queue).
    pub(crate) fn holder(&self, queue: &Queue) -> Option<u64> {
        match (queue.spec.home, queue.record_name()) {
            (Some(home), _) => Some(home.node),
            (None, Some(record)) if queue.args.quorum => self.shard(record)?.leader(),
            _ => None,
        }
    }

    fn ask(
        &self,
        node: u64,
        kind: u8,
        (vhost, queue): (&str, &str),
    ) -> impl std::future::Future<Output = Result<Bytes, String>> + Send + 'static {
        let body = Bytes::from(encode(|w| {
            w.bytes(vhost.as_bytes());
            w.bytes(queue.as_bytes());
        }));
        let call = match self.forwarder.get() {
            Some((forwarder, _)) => forwarder
                .links()
                .start_call(node, 0, kind, body)
                .map_err(|e| e.to_string()),
            None => Err("this node has not joined its cluster yet".to_string()),
        };
        async move { call?.answer(ASK_TIMEOUT).await.map_err(|e| e.to_string()) }
    }

    /// Asks `node` for the counts of queue `names` (vhost, queue).
    pub(crate) fn ask_counts(
        &self,
        node: u64,
        names: (&str, &str),
    ) -> impl std::future::Future<Output = Result<Counts, String>> + Send + 'static {
        let asked = self.ask(node, rpc::COUNT, names);
        async move {
            let answer = asked.await?;
            decode(&answer, |r| {
                Ok(Counts {
                    messages: u32::try_from(r.u64()?).unwrap_or(u32::MAX),
                    consumers: u32::try_from(r.u64()?).unwrap_or(u32::MAX),
                })
            })
            .map_err(bad_request)
        }
    }

    /// Asks `node` for the head message of queue `names` (vhost, queue) for a basic.get (see
    /// get.rs), handed out to this node unless `no_ack`; None when the queue is empty.
    pub(crate) fn ask_get(
        &self,
        node: u64,
        names: (&str, &str),
        no_ack: bool,
        holder: std::sync::Arc<dyn QuorumHolder>,
    ) -> impl std::future::Future<Output = Result<Option<super::Got>, String>> + Send + 'static
    {
        let links = self.forwarder.get().map(|(f, _)| f.links().clone());
        super::get::ask(links, node, names, no_ack, holder)
    }

    /// Asks `node` to purge queue `names` (vhost, queue); how many messages went.
    pub(crate) fn ask_purge(
        &self,
        node: u64,
        names: (&str, &str),
    ) -> impl std::future::Future<Output = Result<u32, String>> + Send + 'static {
        let asked = self.ask(node, rpc::PURGE, names);
        async move {
            let answer = asked.await?;
            decode(&answer, |r| Ok(u32::try_from(r.u64()?).unwrap_or(u32::MAX)))
                .map_err(bad_request)
        }
    }
}
