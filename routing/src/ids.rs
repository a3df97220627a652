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
