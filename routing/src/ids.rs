//! The identities the routing core passes around, as types rather than bare integers and strings:
//! a channel number cannot be taken for a connection, nor a consumer tag for a queue name. A
//! replicated queue's remote consumers will add the node to [`ConnectionId`]'s meaning (HA.md).

use std::fmt;
use std::sync::Arc;

/// A client connection on this node (exclusive queues and consumers, delivery routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// A channel of a connection (1 to 65535; 0 is the connection itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId(pub u16);

/// A delivery's number on its channel: from 1, increasing. In a `multiple` acknowledgement,
/// [`DeliveryTag::ALL`] (0) names every outstanding delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryTag(pub u64);

impl DeliveryTag {
    pub const ALL: DeliveryTag = DeliveryTag(0);
    pub const FIRST: DeliveryTag = DeliveryTag(1);
}

impl fmt::Display for DeliveryTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A consumer's tag, unique within its channel (chosen by the client, or `amq.ctag-...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsumerTag(Arc<str>);

impl ConsumerTag {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<Arc<str>> for ConsumerTag {
    fn from(tag: Arc<str>) -> Self {
        ConsumerTag(tag)
    }
}

impl fmt::Display for ConsumerTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
