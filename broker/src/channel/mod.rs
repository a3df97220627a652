//! A channel's state machine: method dispatch, content assembly for basic.publish, consumers, unacked
//! deliveries and publisher confirms. Owned by the connection task, so nothing here is locked.

mod basic;
mod confirm;
mod exchange;
mod publish;
mod queue;
mod remote;
mod replicated;
mod stream;
mod tx;
pub mod unacked;

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::protocol::{access, channel as chan, AMQPClass};
use bytes::Bytes;
use warren_protocol::method::method_ids;

use crate::connection::session::Session;
use crate::error::{AmqpError, AmqpResult};
use crate::ids::QueueName;
use crate::queue::consumer::{ChannelCredit, Consumer};
use crate::queue::Queue;
use crate::time::Now;
use confirm::Confirms;
use publish::Assembly;
use tx::Transaction;
use unacked::Unacked;

/// A consumer registered on this channel and the queue it consumes from.
struct Registration {
    consumer: Arc<Consumer>,
    queue: Arc<Queue>,
}

pub struct Channel {
    pub id: u16,
    /// Distinguishes this channel from earlier ones with the same number on the connection (late
    /// durable confirms for a closed channel must not reach its successor).
    pub incarnation: u64,
    assembly: Assembly,
    consumers: HashMap<Arc<str>, Registration>,
    credit: Arc<ChannelCredit>,
    /// basic.qos(global=false): the prefetch given to consumers created from now on.
    consumer_prefetch: u32,
    unacked: Unacked,
    next_delivery_tag: crate::ids::DeliveryTag,
    confirms: Option<Confirms>,
    /// Set by tx.select: publishes and settlements wait for tx.commit.
    tx: Option<Transaction>,
    /// The last queue declared on this channel: an empty queue name in later methods means it.
    last_queue: Option<QueueName>,
    /// Credit was released in this batch: consumers' queues get a dispatch pass at its end.
    needs_dispatch: bool,
    /// The ready messages of a replicated queue this channel is deleting (replicated.rs), for its
    /// delete-ok.
    deleted_ready: Option<u32>,
    /// The name this channel generated for a server-named queue whose declaration waits for the
    /// cluster's metadata group (the method runs again with it).
    server_named: Option<crate::ids::QueueName>,
    /// The answer of the node holding a queue to what this channel asked it (channel/remote.rs).
    asked: remote::Slot,
}

impl Channel {
    pub fn new(id: u16, incarnation: u64) -> Self {
        Channel {
            id,
            incarnation,
            assembly: Assembly::Idle,
            consumers: HashMap::new(),
            credit: Arc::new(ChannelCredit::default()),
            consumer_prefetch: 0,
            unacked: Unacked::default(),
            next_delivery_tag: crate::ids::DeliveryTag::FIRST,
            confirms: None,
            tx: None,
            last_queue: None,
            needs_dispatch: false,
            deleted_ready: None,
            server_named: None,
            asked: Default::default(),
        }
    }

    pub(crate) fn handle_method(
        &mut self,
        s: &mut Session,
        method: AMQPClass,
        payload: &[u8],
    ) -> AmqpResult<()> {
        let ids = method_ids(payload);
        let result = self.dispatch_method(s, method, payload);
        if let Some(waiting) = &mut s.waiting {
            waiting.ids = ids;
        }
        result.map_err(|e| e.during(ids))
    }

    fn dispatch_method(
        &mut self,
        s: &mut Session,
        method: AMQPClass,
        payload: &[u8],
    ) -> AmqpResult<()> {
        self.assembly.expect_method()?;
        match method {
            AMQPClass::Channel(m) => self.channel_method(s, m),
            AMQPClass::Exchange(m) => self.exchange_method(s, m),
            AMQPClass::Queue(m) => self.queue_method(s, m),
            AMQPClass::Basic(m) => self.basic_method(s, m, payload),
            AMQPClass::Confirm(m) => self.confirm_method(s, m),
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                s.send(
                    self.id,
                    AMQPClass::Access(access::AMQPMethod::RequestOk(access::RequestOk {})),
                );
                Ok(())
            }
            AMQPClass::Tx(m) => self.tx_method(s, m),
            AMQPClass::Connection(_) | AMQPClass::Access(_) => {
                Err(AmqpError::command_invalid("unimplemented method"))
            }
        }
    }

    fn channel_method(&mut self, s: &mut Session, method: chan::AMQPMethod) -> AmqpResult<()> {
        match method {
            chan::AMQPMethod::Open(_) => {
                Err(AmqpError::channel_error("second 'channel.open' seen"))
            }
            chan::AMQPMethod::Flow(flow) => {
                self.credit
                    .flow_active
                    .store(flow.active, std::sync::atomic::Ordering::Release);
                if flow.active {
                    self.needs_dispatch = true;
                }
                s.send(
                    self.id,
                    AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk {
                        active: flow.active,
                    })),
                );
                Ok(())
            }
            // Replies to methods the server never sends on an open channel: ignore, as RabbitMQ does.
            chan::AMQPMethod::FlowOk(_) | chan::AMQPMethod::CloseOk(_) => Ok(()),
            chan::AMQPMethod::OpenOk(_) | chan::AMQPMethod::Close(_) => {
                Err(AmqpError::command_invalid("unimplemented method"))
            }
        }
    }

    /// What `rabbitmqctl list_channels` shows of it.
    pub(crate) fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "number": self.id,
            "consumer_count": self.consumers.len(),
            "messages_unacknowledged": self.unacked.len(),
            "prefetch_count": self.consumer_prefetch,
            "global_prefetch_count": self.credit.global.limit(),
            "confirm": self.confirms.is_some(),
            "transactional": self.tx.is_some(),
        })
    }

    pub(crate) fn handle_header(&mut self, s: &mut Session, payload: Bytes) -> AmqpResult<()> {
        self.content_header(s, payload)
    }

    pub(crate) fn handle_body(&mut self, s: &mut Session, payload: Bytes) -> AmqpResult<()> {
        self.content_body(s, payload)
    }

    /// Resolves a queue name from a method: empty means the last queue declared on this channel.
    fn queue_name(&self, name: &str) -> AmqpResult<QueueName> {
        if !name.is_empty() {
            return Ok(name.into());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// The durable writes of publish `seq` finished.
    pub(crate) fn confirm_durable(&mut self, s: &mut Session, seq: u64, ok: bool) {
        if let Some(confirms) = &mut self.confirms {
            confirms.durable(seq, ok);
            confirms.flush(s, self.id);
        }
    }

    /// End of a burst of frames: send coalesced confirms and let queues push to freed-up consumers.
    pub(crate) fn after_batch(&mut self, s: &mut Session) {
        if let Some(confirms) = &mut self.confirms {
            confirms.flush(s, self.id);
        }
        if std::mem::take(&mut self.needs_dispatch) {
            let mut seen: Vec<&Arc<Queue>> = Vec::new();
            let now = Now::read();
            for reg in self.consumers.values() {
                if !seen.iter().any(|q| Arc::ptr_eq(q, &reg.queue)) {
                    seen.push(&reg.queue);
                    reg.queue.dispatch(now);
                }
            }
        }
    }

    /// Releases everything the channel holds: consumers leave their queues (auto-delete queues may go)
    /// and unacked deliveries return to their queues, redelivered, in order.
    pub(crate) fn close(&mut self, s: &mut Session) {
        crate::metrics::Counters::inc(&s.broker.metrics.channels_closed);
        for (_, reg) in self.consumers.drain() {
            remove_consumer(s, &reg);
        }
        // Acknowledgements of an uncommitted transaction are void: those deliveries are unacked again.
        if let Some(tx) = self.tx.take() {
            for (settled, _) in tx.settles {
                self.unacked.put_back(settled);
            }
        }
        let pending = self.unacked.take_all();
        requeue(pending);
    }
}

/// Takes a consumer off its queue, deleting an auto-delete queue whose last consumer this was.
fn remove_consumer(s: &Session, reg: &Registration) {
    if reg.queue.remove_consumer(&reg.consumer, Now::read())
        == crate::queue::ConsumerRemoval::RemovedLastOfAutoDelete
    {
        s.vhost.retire_queue(&reg.queue, Now::read());
    }
}

/// Releases the credit of settled deliveries and groups their entries per queue (in order), so each
/// queue is locked, and written to the log, once per settlement. Messages got from another node
/// are settled there, `how` the caller settles the rest.
fn settle_by_queue(
    deliveries: Vec<unacked::Delivered>,
    how: crate::cluster::quorum::How,
) -> Vec<(Arc<Queue>, Vec<crate::queue::Entry>)> {
    let mut by_queue: Vec<(Arc<Queue>, Vec<crate::queue::Entry>)> = Vec::new();
    for d in deliveries {
        if let Some(c) = &d.consumer {
            c.release_credit(1);
        }
        if let Some(remote) = d.remote {
            remote.settle(how);
            continue;
        }
        match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &d.queue)) {
            Some((_, entries)) => entries.push(d.entry),
            None => by_queue.push((d.queue, vec![d.entry])),
        }
    }
    by_queue
}

/// Returns settled-with-requeue deliveries to their queues, keeping their order.
fn requeue(deliveries: Vec<unacked::Delivered>) {
    let now = Now::read();
    for (queue, entries) in settle_by_queue(deliveries, crate::cluster::quorum::How::Requeue) {
        queue.requeue(entries, now);
    }
}
