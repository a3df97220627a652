//! What every channel of a connection shares: who is connected to which vhost, the negotiated limits,
//! the outgoing frame buffer, and the sender queues use to push deliveries to this connection.

use std::sync::Arc;

use amq_protocol::protocol::AMQPClass;
use bytes::BytesMut;
use tokio::sync::mpsc::UnboundedSender;
use warren_protocol::frame::{encode_body, encode_content_header};
use warren_protocol::method::encode_method;

use crate::access::{Access, Kind};
use crate::broker::Broker;
use crate::connection::outbound::Outbound;
use crate::ids::ConnectionId;
use crate::message::{Message, PUBLISHER_HEADER};
use crate::queue::consumer::Limit;
use crate::users::User;
use crate::vhost::Vhost;
use amq_protocol::types::{AMQPValue, FieldTable};
use warren_protocol::content::{edit_headers, splice_properties};

/// How many times a quorum queue's message came back before this delivery (RabbitMQ's header).
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
const STREAM_OFFSET_HEADER: &str = "x-stream-offset";

/// A header a delivery carries (a long, replacing any the publisher sent under that name).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stamp {
    /// A quorum queue's `x-delivery-count`: how often the message came back.
    DeliveryCount(u64),
    /// A stream's `x-stream-offset`: where the message is in the stream.
    StreamOffset(u64),
}

impl Stamp {
    fn header(self) -> (&'static str, i64) {
        match self {
            Stamp::DeliveryCount(n) => {
                (DELIVERY_COUNT_HEADER, i64::try_from(n).unwrap_or(i64::MAX))
            }
            Stamp::StreamOffset(n) => (STREAM_OFFSET_HEADER, i64::try_from(n).unwrap_or(i64::MAX)),
        }
    }
}

/// Client capabilities from connection.start-ok that change what the broker sends.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCapabilities {
    pub consumer_cancel_notify: bool,
    pub connection_blocked: bool,
}

pub(crate) struct Session {
    pub broker: Arc<Broker>,
    pub id: ConnectionId,
    pub peer: std::net::SocketAddr,
    pub user: Arc<User>,
    /// The user's name, shared by every message this connection publishes (their recorded publisher).
    pub publisher: Arc<str>,
    pub vhost: Arc<Vhost>,
    pub frame_max: u32,
    pub capabilities: ClientCapabilities,
    /// Frames encoded but not yet handed to the writer.
    pub out: BytesMut,
    pub outbox: UnboundedSender<Outbound>,
    /// No-ack deliveries queued to this connection but not yet encoded (bounds memory for slow clients).
    pub write_budget: Arc<Limit>,
    /// A basic.publish completed since the connection last looked (the memory alarm blocks publishers).
    pub published: bool,
    /// Credit with the behind queues this connection publishes to (see crate::flow).
    pub flow: crate::flow::PublisherFlow,
    /// The last permission granted, with the users' generation it was granted under.
    pub last_grant: std::cell::RefCell<Option<(u64, Access, Kind, String)>>,
    /// A method waiting for the cluster's metadata group: no other frame of this connection is
    /// handled until it is done, then the method runs again (channel/replicated.rs).
    pub waiting: Option<Waiting>,
    /// How many times the method being handled has run again after a replicated change.
    pub reruns: u8,
    /// Messages counted for the metrics since the last input batch (added to the broker's then).
    pub counts: crate::metrics::SessionCounts,
    /// It has published (counted once among the metrics' publishers).
    pub published_ever: bool,
}

/// A method whose change is being made through the metadata group.
pub(crate) struct Waiting {
    pub channel: u16,
    /// The method, to run again once the change is applied on this node.
    pub method: AMQPClass,
    /// Its class and method ids (for the text of an error it then raises).
    pub ids: (u16, u16),
    /// Done when the change is applied on this node, or with why it was not made.
    pub done: futures_util::future::BoxFuture<'static, Result<(), String>>,
}

/// No-ack deliveries a connection may have in flight between queues and its socket.
pub(crate) const NO_ACK_WRITE_BUDGET: u32 = 2048;

impl Session {
    pub fn send(&mut self, channel: u16, method: AMQPClass) {
        encode_method(&mut self.out, channel, &method);
    }

    /// Appends the content header and body frames of `message`.
    pub(crate) fn send_content(&mut self, channel: u16, message: &Message) {
        encode_content_header(
            &mut self.out,
            channel,
            60,
            message.body_size(),
            &message.properties,
        );
        encode_body(&mut self.out, channel, &message.body, self.frame_max);
    }

    /// As [`Self::send_content`], with the headers a delivery adds: the publisher's identity when
    /// `publisher` (see [`Self::send_content_with_publisher`]), and `stamp` (a quorum queue's
    /// delivery count, a stream's offset).
    pub(crate) fn send_delivery_content(
        &mut self,
        channel: u16,
        message: &Message,
        publisher: bool,
        stamp: Option<Stamp>,
    ) {
        let Some(stamp) = stamp else {
            return match publisher {
                true => self.send_content_with_publisher(channel, message),
                false => self.send_content(channel, message),
            };
        };
        let (header, value) = stamp.header();
        let mut remove = vec![header];
        let mut append = FieldTable::default();
        if publisher {
            remove.push(PUBLISHER_HEADER);
            append.insert(
                PUBLISHER_HEADER.into(),
                AMQPValue::LongString(message.publisher.as_bytes().to_vec().into()),
            );
        }
        append.insert(header.into(), AMQPValue::LongLongInt(value));
        // As for the publisher header: the properties parsed at publish, so the edit cannot fail;
        // if it did, the message goes out as published rather than not at all.
        let edited = splice_properties(&message.properties, &remove, &append, false);
        let properties = edited.as_deref().unwrap_or(&message.properties);
        encode_content_header(&mut self.out, channel, 60, message.body_size(), properties);
        encode_body(&mut self.out, channel, &message.body, self.frame_max);
    }

    /// As [`Self::send_content`], with the publisher's authenticated identity added to the headers as
    /// `x-warren-publisher` (any value the client sent was removed at publish).
    pub(crate) fn send_content_with_publisher(&mut self, channel: u16, message: &Message) {
        let stamped = edit_headers(
            &message.properties,
            &[PUBLISHER_HEADER],
            Some((PUBLISHER_HEADER, message.publisher.as_bytes())),
        );
        // The properties were parsed at publish (or when stored), so the edit cannot fail; if it did,
        // the message goes out as published rather than not at all.
        let properties = stamped.as_deref().unwrap_or(&message.properties);
        encode_content_header(&mut self.out, channel, 60, message.body_size(), properties);
        encode_body(&mut self.out, channel, &message.body, self.frame_max);
    }
}
