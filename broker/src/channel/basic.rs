//! The basic class on a channel, minus publishing: qos, consume/cancel, deliveries, get, ack/nack/reject
//! and recover.

use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use warren_protocol::method::{encode_deliver, encode_get_ok};

use super::queue::generated_name;
use super::stream;
use super::unacked::Delivered;
use super::{remove_consumer, requeue, settle_by_queue, Channel, Registration};
use crate::cluster::quorum::How;
use crate::connection::session::{Session, Stamp};
use crate::error::{AmqpError, AmqpResult};
use crate::ids::{ChannelId, ConsumerId, ConsumerTag, DeliveryTag, NodeId};
use crate::permissions::{self, Access, Kind};
use crate::queue::arguments::{bool_arg, PUBLISHER_ARGUMENT};
use crate::queue::consumer::{Consumer, Limit};
use crate::queue::{Entry, Queue};
use crate::resource::Resource;
use crate::time::Now;
use amq_protocol::types::FieldTable;
use warren_protocol::field::{as_int, type_name};

/// The `x-priority` consumer argument: any integer (RabbitMQ's check_int_arg), default 0.
fn consumer_priority(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<i64> {
    match args.inner().get("x-priority") {
        None => Ok(0),
        Some(v) => as_int(v).map(|p| p.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64).ok_or_else(|| {
            AmqpError::precondition(format!(
                "invalid arg 'x-priority' for queue '{queue}' in vhost '{vhost}': \"expected integer, got {}\"",
                type_name(v)
            ))
        }),
    }
}

/// The `x-warren-publisher` consumer argument: a boolean, default false.
fn consumer_wants_publisher(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<bool> {
    match args.inner().get(PUBLISHER_ARGUMENT) {
        None => Ok(false),
        Some(v) => bool_arg(PUBLISHER_ARGUMENT, v, &Resource::queue(queue, vhost)),
    }
}

/// Whether every delivery from `queue` carries the publisher: its own argument or its vhost's setting.
pub(super) fn wants_publisher(s: &Session, queue: &Queue) -> bool {
    queue.args.publisher_header
        || s.broker
            .config
            .publisher_header
            .vhosts
            .iter()
            .any(|v| *v == s.vhost.name)
}

impl Channel {
    pub(super) fn basic_method(
        &mut self,
        s: &mut Session,
        method: basic::AMQPMethod,
        payload: &[u8],
    ) -> AmqpResult<()> {
        match method {
            basic::AMQPMethod::Publish(p) => self.start_publish(s, p),
            basic::AMQPMethod::Ack(a) => {
                self.settle(s, DeliveryTag(a.delivery_tag), a.multiple, None)
            }
            basic::AMQPMethod::Nack(n) => {
                self.settle(s, DeliveryTag(n.delivery_tag), n.multiple, Some(n.requeue))
            }
            basic::AMQPMethod::Reject(r) => {
                self.settle(s, DeliveryTag(r.delivery_tag), false, Some(r.requeue))
            }
            basic::AMQPMethod::Qos(q) => self.qos(s, q, payload),
            basic::AMQPMethod::Consume(c) => self.consume(s, c),
            basic::AMQPMethod::Cancel(c) => {
                if let Some(reg) = self.consumers.remove(c.consumer_tag.as_str()) {
                    remove_consumer(s, &reg);
                }
                if !c.nowait {
                    s.send(
                        self.id,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Get(g) => self.get(s, g),
            basic::AMQPMethod::Recover(r) => {
                self.recover(r.requeue)?;
                s.send(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(r) => self.recover(r.requeue),
            _ => Err(AmqpError::command_invalid("unimplemented method")),
        }
    }

    fn qos(&mut self, s: &mut Session, q: basic::Qos, payload: &[u8]) -> AmqpResult<()> {
        // amq-protocol drops prefetch-size; RabbitMQ refuses a non-zero one, so read it from the payload.
        let prefetch_size = payload
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if prefetch_size != 0 {
            return Err(AmqpError::not_implemented(format!(
                "prefetch_size!=0 ({prefetch_size})"
            )));
        }
        if q.global {
            self.credit.global.set_limit(u32::from(q.prefetch_count));
            self.needs_dispatch = true;
        } else {
            self.consumer_prefetch = u32::from(q.prefetch_count);
        }
        s.send(
            self.id,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }

    fn consume(&mut self, s: &mut Session, c: basic::Consume) -> AmqpResult<()> {
        let name = self.queue_name(c.queue.as_str())?;
        permissions::check(s, Access::Read, Kind::Queue, &name)?;
        let queue = s.vhost.queue(&name, s.id)?;
        s.broker.check_home(&s.vhost, &queue)?;
        let start = stream::consume_start(
            &queue,
            &s.vhost.name,
            &c.arguments,
            c.no_ack,
            self.consumer_prefetch,
            self.credit.global.limit(),
        )?;
        if queue.args.quorum && self.credit.global.limit() > 0 {
            // rabbit_quorum_queue:consume/3: a quorum queue's consumers have their own credit.
            return Err(AmqpError::not_implemented(format!(
                "queue '{name}' in vhost '{}' does not support global qos",
                s.vhost.name
            )));
        }
        let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
            generated_name("amq.ctag").into()
        } else {
            c.consumer_tag.as_str().into()
        };
        if let Some(max) = s.broker.config.limits.max_consumers_per_channel {
            if self.consumers.len() >= max as usize && !self.consumers.contains_key(&tag) {
                return Err(AmqpError::not_allowed(format!(
                    "reached maximum ({max}) of consumers per channel"
                )));
            }
        }
        if self.consumers.contains_key(&tag) {
            return Err(AmqpError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let consumer = Arc::new(Consumer {
            id: ConsumerId {
                node: NodeId::LOCAL,
                connection: s.id,
                channel: ChannelId(self.id),
                tag: ConsumerTag::from(tag.clone()),
            },
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            publisher_header: wants_publisher(s, &queue)
                || consumer_wants_publisher(&c.arguments, &name, &s.vhost.name)?,
            priority: consumer_priority(&c.arguments, &name, &s.vhost.name)?,
            prefetch: Limit::new(self.consumer_prefetch),
            channel_credit: self.credit.clone(),
            write_budget: s.write_budget.clone(),
            sink: Arc::new(crate::connection::outbound::Outbox(s.outbox.clone())),
        });
        // consume-ok is encoded now; deliveries the queue pushes meanwhile arrive through the outbox, so
        // the client always sees consume-ok first.
        self.consumers.insert(
            tag.clone(),
            Registration {
                consumer: consumer.clone(),
                queue: queue.clone(),
            },
        );
        let added = match start {
            Some(start) => queue.add_stream_consumer(consumer, start, Now::read()),
            None => queue.add_consumer(consumer, Now::read()),
        };
        if added.is_err() {
            self.consumers.remove(&tag);
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                name, s.vhost.name
            )));
        }
        if !c.nowait {
            s.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.as_ref().into(),
                })),
            );
        }
        Ok(())
    }

    fn get(&mut self, s: &mut Session, g: basic::Get) -> AmqpResult<()> {
        let name = self.queue_name(g.queue.as_str())?;
        permissions::check(s, Access::Read, Kind::Queue, &name)?;
        let queue = s.vhost.queue(&name, s.id)?;
        s.broker.check_home(&s.vhost, &queue)?;
        stream::refuse_get(&queue, &s.vhost.name)?;
        if queue.args.quorum && queue.args.single_active_consumer {
            return Err(AmqpError::resource_locked(format!(
                "cannot obtain access to locked queue '{name}' in vhost '{}'. basic.get operations are not supported by quorum queues with single active consumer",
                s.vhost.name
            )));
        }
        if let Some(answer) = self.got_elsewhere() {
            self.answer_got(s, queue, g.no_ack, answer);
            return Ok(());
        }
        let Some((entry, message_count)) = queue.get(Now::read()) else {
            // Nothing here; the node holding the queue may have some.
            if !self.get_elsewhere(s, &queue, &g) {
                s.counts.get_empty += 1;
                s.counts.note();
                s.send(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                );
            }
            return Ok(());
        };
        let tag = self.next_tag();
        let m = &entry.message;
        s.counts.delivered(true, !g.no_ack, entry.redelivered);
        encode_get_ok(
            &mut s.out,
            self.id,
            tag.0,
            entry.redelivered,
            m.exchange.as_bytes(),
            m.routing_key.as_bytes(),
            message_count,
        );
        // basic.get on a quorum queue always carries the count, 0 included (rabbit_fifo_client).
        let count = queue
            .args
            .quorum
            .then_some(Stamp::DeliveryCount(entry.returns));
        s.send_delivery_content(self.id, m, wants_publisher(s, &queue), count);
        if g.no_ack {
            queue.settle([&entry]);
        } else {
            self.unacked.push(Delivered {
                tag,
                queue,
                entry,
                consumer: None,
                remote: None,
            });
        }
        Ok(())
    }

    pub(super) fn next_tag(&mut self) -> DeliveryTag {
        let tag = self.next_delivery_tag;
        self.next_delivery_tag = DeliveryTag(tag.0 + 1);
        tag
    }

    /// basic.ack (requeue None), basic.nack and basic.reject (requeue Some). In a transaction the
    /// settlement waits for tx.commit, but an unknown tag fails at once, as in RabbitMQ.
    fn settle(
        &mut self,
        s: &mut Session,
        tag: DeliveryTag,
        multiple: bool,
        requeue_to: Option<bool>,
    ) -> AmqpResult<()> {
        let settled = self
            .unacked
            .take(tag, multiple)
            .ok_or_else(|| AmqpError::precondition(format!("unknown delivery tag {tag}")))?;
        if requeue_to.is_none() {
            s.counts.acknowledged += settled.len() as u64;
            s.counts.note();
        }
        if requeue_to.is_some() {
            stream::refuse_return(settled.iter().map(|d| &*d.queue), &s.vhost.name)?;
        }
        match &mut self.tx {
            Some(tx) => tx.settles.push((settled, requeue_to)),
            None => self.apply_settle(settled, requeue_to),
        }
        Ok(())
    }

    /// Settles deliveries: ack drops them, requeue returns them, reject/nack dead-letters them.
    pub(super) fn apply_settle(&mut self, settled: Vec<Delivered>, requeue_to: Option<bool>) {
        self.needs_dispatch = true;
        if requeue_to == Some(true) {
            requeue(settled);
            return;
        }
        let how = match requeue_to {
            Some(false) => How::Reject,
            _ => How::Ack,
        };
        for (queue, entries) in settle_by_queue(settled, how) {
            if requeue_to == Some(false) {
                queue.reject(entries, Now::read());
            } else {
                queue.settle(&entries);
            }
        }
    }

    fn recover(&mut self, requeue_all: bool) -> AmqpResult<()> {
        if !requeue_all {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        requeue(self.unacked.take_all());
        Ok(())
    }

    pub(crate) fn has_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        self.consumers
            .get(consumer.id.tag.as_str())
            .is_some_and(|r| Arc::ptr_eq(&r.consumer, consumer))
    }

    /// Writes a delivery pushed by a queue and records it for acknowledgement.
    pub(crate) fn deliver(
        &mut self,
        s: &mut Session,
        consumer: Arc<Consumer>,
        queue: Arc<Queue>,
        entry: Entry,
    ) {
        s.counts
            .delivered(false, !consumer.no_ack, entry.redelivered);
        let tag = self.next_tag();
        let m = &entry.message;
        encode_deliver(
            &mut s.out,
            self.id,
            consumer.id.tag.as_bytes(),
            tag.0,
            entry.redelivered,
            m.exchange.as_bytes(),
            m.routing_key.as_bytes(),
        );
        // A quorum queue's delivery says how often the message came back (RabbitMQ: after a return),
        // a stream's where it is.
        let stamp = if queue.args.stream {
            Some(Stamp::StreamOffset(entry.seq))
        } else {
            (queue.args.quorum && entry.returns > 0).then_some(Stamp::DeliveryCount(entry.returns))
        };
        s.send_delivery_content(self.id, m, consumer.publisher_header, stamp);
        if consumer.no_ack {
            consumer.release_credit(1);
            // A queue that found the connection's no-ack budget spent stopped pushing; nothing
            // but this write gives the budget back, so the queue is asked to go on (at the end of
            // the burst).
            self.needs_dispatch = true;
            queue.settle([&entry]);
        } else {
            self.unacked.push(Delivered {
                tag,
                queue,
                entry,
                consumer: Some(consumer),
                remote: None,
            });
        }
    }

    /// The queue went away under a consumer: forget it and tell a client that understands basic.cancel.
    pub(crate) fn consumer_cancelled_by_server(
        &mut self,
        s: &mut Session,
        consumer: &Arc<Consumer>,
    ) {
        if !self.has_consumer(consumer) {
            return;
        }
        self.consumers.remove(consumer.id.tag.as_str());
        if s.capabilities.consumer_cancel_notify {
            let cancel = basic::Cancel {
                consumer_tag: consumer.id.tag.as_str().into(),
                nowait: true,
            };
            s.send(self.id, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)));
        }
    }
}
