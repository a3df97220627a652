//! The identities the routing core passes around, as types rather than bare integers and strings:
//! a channel number cannot be taken for a connection, nor a consumer tag for a queue name. A
//! replicated queue's consumers are named with their node ([`ConsumerId`]).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A client connection on this node (exclusive queues and consumers, delivery routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

impl ConnectionId {
    /// The owner of an exclusive queue whose connection is on another cluster node: no connection
    /// here is it.
    pub const ELSEWHERE: ConnectionId = ConnectionId(u64::MAX);
}

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

/// A cluster node. Every identity below is node-local until the cluster (HA.md) numbers its nodes;
/// until then, and on a single node, it is [`NodeId::LOCAL`]. Node ids are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

impl NodeId {
    pub const LOCAL: NodeId = NodeId(0);
}

/// A name chosen by clients or operators, shared cheaply (`Arc<str>`) and looked up by `&str`.
macro_rules! name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }

        impl From<Arc<str>> for $name {
            fn from(name: Arc<str>) -> Self {
                $name(name)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                $name(name.into())
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                $name(name.into())
            }
        }

        /// Read as the text it is: a name passes where a `&str` is asked for, but a `&str` never
        /// passes for a name.
        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        /// Maps keyed by the name are searched with a `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                *self.0 == **other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                **self == *other.0
            }
        }

        /// Reports and the admin API show the name as the text it is.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name!(
    /// A consumer's tag, unique within its channel (chosen by the client, or `amq.ctag-...`).
    ConsumerTag
);
name!(
    /// A queue's name, unique within its vhost.
    QueueName
);
name!(
    /// A virtual host's name.
    VhostName
);

/// A consumer wherever it is: a replicated queue's state names its consumers by this, and a
/// delivery to a consumer on another node goes to the node it names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsumerId {
    pub node: NodeId,
    pub connection: ConnectionId,
    pub channel: ChannelId,
    pub tag: ConsumerTag,
}

impl fmt::Display for ConsumerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "consumer '{}' on channel {} of connection {} (node {})",
            self.tag, self.channel.0, self.connection.0, self.node.0
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn names_are_found_by_str_and_compare_with_it() {
        let mut map = HashMap::new();
        map.insert(QueueName::from("q1"), 1);
        assert_eq!(map.get("q1"), Some(&1));
        assert_eq!(QueueName::from("q1"), "q1");
        assert_eq!(VhostName::from(String::from("/")).to_string(), "/");
    }
}
