//! basic.publish: assembling method + content header + body frames into a message (spec 4.2.6), then
//! routing it, enqueueing it, returning it if unroutable and mandatory, and confirming it.

use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use bytes::{Bytes, BytesMut};
use warren_protocol::content::{edit_headers, BasicProperties, ContentHeader};

use super::confirm::{Holds, PendingConfirm};
use super::Channel;
use crate::connection::session::Session;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::Exchange;
use crate::message::memory::Charge;
use crate::message::{Message, PUBLISHER_HEADER};
use crate::permissions::{self, Access, Kind};
use crate::queue::sink::WaitsForWrites;
use crate::queue::Enqueued;
use crate::time::Now;

/// A basic.publish waiting for its content.
pub struct Pending {
    /// None for the default exchange.
    exchange: Option<Arc<Exchange>>,
    exchange_name: String,
    routing_key: String,
    mandatory: bool,
}

/// Where the channel is in the method → header → body sequence.
pub(crate) enum Assembly {
    Idle,
    Header(Pending),
    Body {
        pending: Pending,
        header: ContentHeader,
        body: Body,
    },
}

/// Body frames received so far; a single-frame body is kept as the frame's own bytes (no copy).
pub enum Body {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::One(b) => b.len() as u64,
            Body::Many(b) => b.len() as u64,
        }
    }

    fn push(&mut self, frame: Bytes, total: u64) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(frame),
            Body::One(first) => {
                // `total` was checked against max_message_size, so this allocation is bounded.
                let mut all = BytesMut::with_capacity(total as usize);
                all.extend_from_slice(&first);
                all.extend_from_slice(&frame);
                Body::Many(all)
            }
            Body::Many(mut all) => {
                all.extend_from_slice(&frame);
                Body::Many(all)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(b) => b,
            Body::Many(b) => b.freeze(),
        }
    }
}

const PUBLISH: (u16, u16) = (60, 40);

impl Assembly {
    /// A method frame arrived: only valid when no content is pending (rabbit_command_assembler).
    pub fn expect_method(&self) -> AmqpResult<()> {
        match self {
            Assembly::Idle => Ok(()),
            Assembly::Header(_) => Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .during(PUBLISH)),
            Assembly::Body { .. } => Err(AmqpError::unexpected_frame(
                "expected content body, got non content body frame instead",
            )
            .during(PUBLISH)),
        }
    }
}

impl Channel {
    pub(super) fn start_publish(&mut self, s: &mut Session, p: basic::Publish) -> AmqpResult<()> {
        if p.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        let name = p.exchange.as_str();
        // RabbitMQ checks write permission before the exchange lookup.
        permissions::check(s, Access::Write, Kind::Exchange, name)?;
        let exchange = if name.is_empty() {
            None
        } else {
            let x = s.vhost.exchange(name)?;
            if x.spec.internal {
                return Err(AmqpError::access_refused(format!(
                    "cannot publish to internal exchange '{name}' in vhost '{}'",
                    s.vhost.name
                )));
            }
            permissions::check_topic(s, Access::Write, &x, p.routing_key.as_str())?;
            Some(x)
        };
        self.assembly = Assembly::Header(Pending {
            exchange,
            exchange_name: name.to_string(),
            routing_key: p.routing_key.as_str().to_string(),
            mandatory: p.mandatory,
        });
        Ok(())
    }

    pub(super) fn content_header(&mut self, s: &mut Session, payload: Bytes) -> AmqpResult<()> {
        let pending = match std::mem::replace(&mut self.assembly, Assembly::Idle) {
            Assembly::Header(p) => p,
            Assembly::Idle => {
                return Err(AmqpError::unexpected_frame(
                    "expected method frame, got non method frame instead",
                ));
            }
            Assembly::Body { .. } => {
                return Err(AmqpError::unexpected_frame(
                    "expected content body, got non content body frame instead",
                )
                .during(PUBLISH));
            }
        };
        let class_id = if payload.len() >= 2 {
            u16::from_be_bytes([payload[0], payload[1]])
        } else {
            0
        };
        if class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content header for class 60, got one for class {class_id} instead"
            ))
            .during(PUBLISH));
        }
        let header = ContentHeader::parse(payload).map_err(|e| {
            AmqpError::frame_error(format!("cannot decode content header: {e}")).during(PUBLISH)
        })?;
        let max = s.broker.config.limits.max_message_size;
        if header.body_size > max {
            return Err(AmqpError::precondition(format!(
                "message size {} is larger than configured max size {max}",
                header.body_size
            ))
            .during(PUBLISH));
        }
        if header.body_size == 0 {
            return self.publish_complete(s, pending, header, Bytes::new());
        }
        self.assembly = Assembly::Body {
            pending,
            header,
            body: Body::Empty,
        };
        Ok(())
    }

    pub(super) fn content_body(&mut self, s: &mut Session, payload: Bytes) -> AmqpResult<()> {
        let Assembly::Body { body, header, .. } = &mut self.assembly else {
            return Err(match self.assembly {
                Assembly::Header(_) => AmqpError::unexpected_frame(
                    "expected content header for class 60, got non content header frame instead",
                )
                .during(PUBLISH),
                _ => AmqpError::unexpected_frame(
                    "expected method frame, got non method frame instead",
                ),
            });
        };
        let total = header.body_size;
        if body.len() + payload.len() as u64 > total {
            return Err(AmqpError::unexpected_frame(format!(
                "content body exceeds the declared size of {total} octets"
            ))
            .during(PUBLISH));
        }
        body.push(payload, total);
        if body.len() < total {
            return Ok(());
        }
        let Assembly::Body {
            pending,
            header,
            body,
        } = std::mem::replace(&mut self.assembly, Assembly::Idle)
        else {
            return Ok(()); // unreachable: matched above
        };
        self.publish_complete(s, pending, header, body.into_bytes())
    }

    fn publish_complete(
        &mut self,
        s: &mut Session,
        p: Pending,
        header: ContentHeader,
        body: Bytes,
    ) -> AmqpResult<()> {
        let props = BasicProperties::parse(&header.properties).map_err(|e| {
            AmqpError::frame_error(format!("cannot decode content header: {e}")).during(PUBLISH)
        })?;
        if let Some(user_id) = props.user_id {
            if user_id != s.user.name.as_bytes() {
                return Err(AmqpError::precondition(format!(
                    "user_id property set to '{}' but authenticated user was '{}'",
                    String::from_utf8_lossy(user_id),
                    s.user.name
                ))
                .during(PUBLISH));
            }
        }
        let expiration_ms = match props.expiration {
            None => None,
            Some(raw) => Some(crate::message::parse_expiration(raw).map_err(|reason| {
                AmqpError::precondition(format!(
                    "invalid expiration '{}': {reason}",
                    String::from_utf8_lossy(raw)
                ))
                .during(PUBLISH)
            })?),
        };
        if !s.published_ever {
            s.published_ever = true;
            crate::metrics::Counters::inc(&s.broker.metrics.publishers);
        }
        s.published = true;
        s.counts.received(body.len(), self.confirms.is_some());
        // Sender-selected distribution (RabbitMQ): CC and BCC headers add routing keys; BCC is not
        // delivered.
        let (cc, bcc) = sender_selected(&props);
        // Every other byte is delivered as published. The publisher is recorded beside the message
        // (and written into the headers only for consumers that ask), so a client-sent header of that
        // name is dropped: it can never be forged.
        let mut remove: Vec<&str> = Vec::new();
        if mentions(&props, PUBLISHER_HEADER) {
            remove.push(PUBLISHER_HEADER);
        }
        if !bcc.is_empty() {
            remove.push("BCC");
        }
        let properties = if remove.is_empty() {
            header.properties.clone()
        } else {
            edit_headers(&header.properties, &remove, None).map_err(|e| {
                AmqpError::frame_error(format!("cannot decode content header: {e}")).during(PUBLISH)
            })?
        };
        let mut extra_keys = cc;
        extra_keys.extend(bcc);
        let body_len = body.len();
        let properties_len = properties.len();
        // One reading of the clocks per publish: its publish time, and the time it enters its queues.
        let now = Now::read();
        let message = Arc::new(Message {
            exchange: p.exchange_name,
            routing_key: p.routing_key,
            publisher: s.publisher.clone(),
            properties,
            body,
            priority: props.priority.unwrap_or(0),
            expiration_ms,
            charge: Some(Charge::new(
                s.broker.alarms.clone(),
                (properties_len + body_len) as u64,
            )),
            persistent: props.delivery_mode == Some(2),
            published_at_ms: now.wall_ms,
            stored: Default::default(),
        });
        let publication = Publication {
            exchange: p.exchange,
            message,
            mandatory: p.mandatory,
            extra_keys,
        };
        match &mut self.tx {
            Some(tx) => tx.publishes.push(publication),
            None => {
                let seq = self.confirms.as_mut().map(|c| c.next());
                let tracker = seq.map(|seq| {
                    PendingConfirm::new(s.outbox.clone(), self.id, self.incarnation, Some(seq))
                });
                let accepted = self.route_and_enqueue(s, &publication, tracker.as_ref(), now);
                if let (Some(confirms), Some(seq), Some(tracker)) =
                    (self.confirms.as_mut(), seq, tracker)
                {
                    match tracker.release() {
                        // Refused by a queue, or a write already failed: nack.
                        _ if !accepted => confirms.decide(seq, false),
                        Some(ok) => confirms.decide(seq, ok),
                        // Persistent in a durable queue: confirmed once fsynced (Outbound::Confirmed).
                        None => confirms.wait(seq),
                    }
                }
            }
        }
        Ok(())
    }
}

/// A complete message waiting to be routed (at once, or at tx.commit).
pub(crate) struct Publication {
    exchange: Option<Arc<Exchange>>,
    message: Arc<Message>,
    mandatory: bool,
    /// Routing keys from the CC and BCC headers, routed besides the message's own.
    extra_keys: Vec<String>,
}

/// Whether the raw headers table may hold an entry named `key` (its length-prefixed bytes occur
/// somewhere in it): a cheap test that spares decoding headers on the usual path.
fn mentions(props: &BasicProperties<'_>, key: &str) -> bool {
    let Some(raw) = props.headers else {
        return false;
    };
    let key = key.as_bytes();
    raw.windows(key.len() + 1)
        .any(|w| usize::from(w[0]) == key.len() && &w[1..] == key)
}

/// The CC and BCC headers (arrays of strings), read only when the headers table holds such keys.
fn sender_selected(props: &BasicProperties<'_>) -> (Vec<String>, Vec<String>) {
    if !mentions(props, "CC") && !mentions(props, "BCC") {
        return (Vec::new(), Vec::new());
    }
    let Some(table) = props.headers_table() else {
        return (Vec::new(), Vec::new());
    };
    (
        warren_protocol::field::string_list(&table, "CC"),
        warren_protocol::field::string_list(&table, "BCC"),
    )
}

/// Where `q`'s live queue is when it is on another cluster node.
enum Elsewhere<'q> {
    /// A quorum queue whose shard another node leads (its record name).
    Host(&'q str),
    /// A classic queue of another node (its home).
    Home(u64),
}

fn held_elsewhere<'q>(s: &Session, q: &'q crate::queue::Queue) -> Option<Elsewhere<'q>> {
    if let Some(home) = q.spec.home {
        return s.vhost.is_copy(q).then_some(Elsewhere::Home(home.node));
    }
    if !q.args.quorum || !s.vhost.is_replicated() {
        return None;
    }
    let record = q.record_name()?;
    (!s.broker.shard_journal.publishes_here(record)).then_some(Elsewhere::Host(record))
}

impl Channel {
    /// Routes and enqueues a publication, returning it with basic.return when it is mandatory and
    /// unroutable. Returns false when a queue refused it (`x-overflow = reject-publish`).
    pub(super) fn route_and_enqueue(
        &mut self,
        s: &mut Session,
        p: &Publication,
        confirm: Option<&Arc<PendingConfirm>>,
        now: Now,
    ) -> bool {
        let message = &p.message;
        // The routing key was authorised at basic.publish; CC and BCC keys are checked as they route.
        let keys = std::iter::once((message.routing_key.as_str(), true))
            .chain(p.extra_keys.iter().map(|k| (k.as_str(), false)));
        let queues = crate::vhost::route_keys(
            &s.vhost,
            p.exchange.as_ref(),
            &message.properties,
            &message.publisher,
            keys,
        );
        let holds = confirm.map(Holds);
        let mut routed = false;
        let mut accepted = true;
        for q in &queues {
            if let Some(elsewhere) = held_elsewhere(s, q) {
                // A queue another node holds: the message goes there, and the confirm waits for
                // that node's answer.
                routed = true;
                let done = holds.as_ref().map(|h| h.hold());
                let names = (s.vhost.name.as_str(), q.name().as_str());
                let journal = &s.broker.shard_journal;
                match elsewhere {
                    Elsewhere::Host(record) => journal.send_to_host(record, names, message, done),
                    Elsewhere::Home(node) => journal.send_home(node, names, message, done),
                }
                continue;
            }
            match q.publish(
                message.clone(),
                holds.as_ref().map(|h| h as &dyn WaitsForWrites),
                now,
            ) {
                Enqueued::Yes => {
                    routed = true;
                    s.flow
                        .published(&s.broker.flow_activity, q.flow(), now.instant);
                }
                Enqueued::Rejected => {
                    routed = true;
                    accepted = false;
                }
                Enqueued::Gone => {}
            }
        }
        match (routed, p.mandatory) {
            (true, _) => s.counts.routed += 1,
            (false, true) => s.counts.unroutable_returned += 1,
            (false, false) => s.counts.unroutable_dropped += 1,
        }
        s.counts.note();
        if !routed && p.mandatory {
            let ret = basic::Return {
                reply_code: warren_protocol::constants::reply::NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: message.exchange.as_str().into(),
                routing_key: message.routing_key.as_str().into(),
            };
            s.send(self.id, AMQPClass::Basic(basic::AMQPMethod::Return(ret)));
            s.send_content(self.id, message);
        }
        accepted
    }
}
