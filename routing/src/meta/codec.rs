//! The tagged binary form of a [`MetaCommand`]: a format octet, a tag octet naming the variant, then
//! its fields in declaration order — strings as `u32` length and UTF-8, booleans as one octet,
//! options as a presence octet and the value, lists as a `u32` count and the items, field tables in
//! AMQP's own wire encoding (so every argument type round-trips exactly, which JSON did not
//! promise). Decoding checks everything and never panics: the log's checksum guards against a torn
//! write, not against a record this version cannot read.

use amq_protocol::types::FieldTable;
use warren_storage::definitions::{PermissionDefinition, TopicPermissionDefinition};

use super::{DestinationKind, MetaCommand, QueueHome, StoredBinding};

/// The first octet of every command record. Records of earlier versions were JSON (`{` or `[`).
pub const FORMAT: u8 = 0xC1;

const ADD_VHOST: u8 = 1;
const DELETE_VHOST: u8 = 2;
const ADD_USER: u8 = 3;
const DELETE_USER: u8 = 4;
const SET_USER_TAGS: u8 = 5;
const SET_PASSWORD_HASH: u8 = 6;
const SET_PERMISSIONS: u8 = 7;
const CLEAR_PERMISSIONS: u8 = 8;
const SET_TOPIC_PERMISSIONS: u8 = 9;
const CLEAR_TOPIC_PERMISSIONS: u8 = 10;
const SEED_USER: u8 = 11;
const DECLARE_EXCHANGE: u8 = 12;
const DELETE_EXCHANGE: u8 = 13;
const DECLARE_QUEUE: u8 = 14;
const DELETE_QUEUE: u8 = 15;
const BIND: u8 = 16;
const UNBIND: u8 = 17;
/// A transient exchange: only a cluster node records one (every node must route through it).
const DECLARE_TRANSIENT_EXCHANGE: u8 = 18;
/// A cluster's classic queue: a queue declaration followed by its home.
const DECLARE_HOMED_QUEUE: u8 = 19;
const RETIRE_QUEUE: u8 = 20;
const REMOVED_NODE: u8 = 21;
const SET_POLICY: u8 = 22;
const CLEAR_POLICY: u8 = 23;
/// A cluster's quorum queue: a queue declaration followed by the shard group it was placed in.
const DECLARE_PLACED_QUEUE: u8 = 24;

/// Why a record does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a command record (format octet {0:#04x})")]
    Format(u8),
    #[error("unknown command tag {0}")]
    Tag(u8),
    #[error("the record ends inside a field")]
    Truncated,
    #[error("a string is not UTF-8")]
    Utf8,
    #[error("a field table does not decode")]
    Table,
    #[error("{0} bytes follow the command")]
    Trailing(usize),
    #[error("an unknown destination kind {0}")]
    Destination(u8),
    #[error("a flag octet is {0}, not 0 or 1")]
    Flag(u8),
    #[error("a policy definition is not a JSON object")]
    Policy,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn str(&mut self, s: impl AsRef<str>) {
        let s = s.as_ref();
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn bool(&mut self, b: bool) {
        self.u8(u8::from(b));
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn home(&mut self, home: &QueueHome) {
        self.u64(home.node);
        self.u64(home.run);
        self.bool(home.durable);
        self.bool(home.owner.is_some());
        self.u64(home.owner.unwrap_or(0));
    }
    fn opt(&mut self, s: Option<&str>) {
        self.bool(s.is_some());
        if let Some(s) = s {
            self.str(s);
        }
    }
    fn list(&mut self, items: &[String]) {
        self.0
            .extend_from_slice(&(items.len() as u32).to_be_bytes());
        for s in items {
            self.str(s);
        }
    }
    fn table(&mut self, t: &FieldTable) {
        // A table that was decoded from the wire always encodes; an empty one stands in otherwise.
        let body = warren_protocol::content::encode_entries(t).unwrap_or_default();
        self.0.extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.0.extend_from_slice(&body);
    }
    fn binding(&mut self, b: &StoredBinding) {
        self.str(&b.source);
        self.u8(match b.kind {
            DestinationKind::Queue => 0,
            DestinationKind::Exchange => 1,
        });
        self.str(&b.destination);
        self.str(&b.routing_key);
        self.table(&b.arguments);
    }
}

/// The record payload of `command`.
pub fn encode(command: &MetaCommand) -> Vec<u8> {
    let mut w = Writer(vec![FORMAT]);
    match command {
        MetaCommand::AddVhost { vhost } => {
            w.u8(ADD_VHOST);
            w.str(vhost);
        }
        MetaCommand::DeleteVhost { vhost } => {
            w.u8(DELETE_VHOST);
            w.str(vhost);
        }
        MetaCommand::AddUser { user, tags } => {
            w.u8(ADD_USER);
            w.str(user);
            w.list(tags);
        }
        MetaCommand::DeleteUser { user } => {
            w.u8(DELETE_USER);
            w.str(user);
        }
        MetaCommand::SetUserTags { user, tags } => {
            w.u8(SET_USER_TAGS);
            w.str(user);
            w.list(tags);
        }
        MetaCommand::SetPasswordHash { user, hash } => {
            w.u8(SET_PASSWORD_HASH);
            w.str(user);
            w.opt(hash.as_deref());
        }
        MetaCommand::SetPermissions {
            user,
            permission: p,
        } => {
            w.u8(SET_PERMISSIONS);
            w.str(user);
            for s in [&p.vhost, &p.configure, &p.write, &p.read] {
                w.str(s);
            }
        }
        MetaCommand::ClearPermissions { user, vhost } => {
            w.u8(CLEAR_PERMISSIONS);
            w.str(user);
            w.str(vhost);
        }
        MetaCommand::SetTopicPermissions {
            user,
            permission: p,
        } => {
            w.u8(SET_TOPIC_PERMISSIONS);
            w.str(user);
            for s in [&p.vhost, &p.exchange, &p.write, &p.read] {
                w.str(s);
            }
        }
        MetaCommand::ClearTopicPermissions {
            user,
            vhost,
            exchange,
        } => {
            w.u8(CLEAR_TOPIC_PERMISSIONS);
            w.str(user);
            w.str(vhost);
            w.opt(exchange.as_deref());
        }
        MetaCommand::SeedUser { user } => {
            w.u8(SEED_USER);
            w.str(user);
        }
        MetaCommand::RemovedNode { id } => {
            w.u8(REMOVED_NODE);
            w.u64(*id);
        }
        MetaCommand::SetPolicy { policy, operator } => {
            w.u8(SET_POLICY);
            w.bool(*operator);
            w.str(&policy.vhost);
            w.str(&policy.name);
            w.str(&policy.pattern);
            w.str(&policy.apply_to);
            w.u64(policy.priority as u64);
            w.str(serde_json::Value::Object(policy.definition.clone()).to_string());
        }
        MetaCommand::ClearPolicy {
            vhost,
            name,
            operator,
        } => {
            w.u8(CLEAR_POLICY);
            w.bool(*operator);
            w.str(vhost);
            w.str(name);
        }
        MetaCommand::DeclareExchange {
            vhost,
            exchange,
            kind,
            auto_delete,
            internal,
            arguments,
            durable,
        } => {
            w.u8(if *durable {
                DECLARE_EXCHANGE
            } else {
                DECLARE_TRANSIENT_EXCHANGE
            });
            w.str(vhost);
            w.str(exchange);
            w.str(kind);
            w.bool(*auto_delete);
            w.bool(*internal);
            w.table(arguments);
        }
        MetaCommand::DeleteExchange { vhost, exchange } => {
            w.u8(DELETE_EXCHANGE);
            w.str(vhost);
            w.str(exchange);
        }
        MetaCommand::DeclareQueue {
            vhost,
            queue,
            auto_delete,
            arguments,
            declared_by,
            home,
            shard,
        } => {
            // A queue has a home (classic) or a shard (quorum) in a cluster, never both.
            w.u8(match (home, shard) {
                (Some(_), _) => DECLARE_HOMED_QUEUE,
                (None, Some(_)) => DECLARE_PLACED_QUEUE,
                (None, None) => DECLARE_QUEUE,
            });
            w.str(vhost);
            w.str(queue);
            w.bool(*auto_delete);
            w.table(arguments);
            w.opt(declared_by.as_deref());
            match (home, shard) {
                (Some(home), _) => w.home(home),
                (None, Some(shard)) => w.u32(*shard),
                (None, None) => {}
            }
        }
        MetaCommand::DeleteQueue { vhost, queue } => {
            w.u8(DELETE_QUEUE);
            w.str(vhost);
            w.str(queue);
        }
        MetaCommand::RetireQueue { vhost, queue, home } => {
            w.u8(RETIRE_QUEUE);
            w.str(vhost);
            w.str(queue);
            w.home(home);
        }
        MetaCommand::Bind { vhost, binding } => {
            w.u8(BIND);
            w.str(vhost);
            w.binding(binding);
        }
        MetaCommand::Unbind { vhost, binding } => {
            w.u8(UNBIND);
            w.str(vhost);
            w.binding(binding);
        }
    }
    w.0
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut octets = [0; 8];
        octets.copy_from_slice(b);
        Ok(u64::from_be_bytes(octets))
    }
    fn home(&mut self) -> Result<QueueHome, DecodeError> {
        let (node, run, durable) = (self.u64()?, self.u64()?, self.bool()?);
        let (exclusive, owner) = (self.bool()?, self.u64()?);
        Ok(QueueHome {
            node,
            run,
            durable,
            owner: exclusive.then_some(owner),
        })
    }
    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8)
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Flag(other)),
        }
    }
    fn opt(&mut self) -> Result<Option<String>, DecodeError> {
        if self.bool()? {
            self.str().map(Some)
        } else {
            Ok(None)
        }
    }
    fn list(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.u32()?;
        // Each item takes at least its four length octets: a count the record cannot hold fails
        // before anything is allocated for it.
        if n > self.0.len() / 4 {
            return Err(DecodeError::Truncated);
        }
        (0..n).map(|_| self.str()).collect()
    }
    fn table(&mut self) -> Result<FieldTable, DecodeError> {
        let n = self.u32()?;
        let body = self.take(n)?;
        warren_protocol::nesting::parse_table(body).map_err(|_| DecodeError::Table)
    }
    fn binding(&mut self) -> Result<StoredBinding, DecodeError> {
        let source = self.str()?;
        let kind = match self.u8()? {
            0 => DestinationKind::Queue,
            1 => DestinationKind::Exchange,
            other => return Err(DecodeError::Destination(other)),
        };
        Ok(StoredBinding {
            source,
            kind,
            destination: self.str()?,
            routing_key: self.str()?,
            arguments: self.table()?,
        })
    }
}

/// Decodes a record payload written by [`encode`].
pub fn decode(payload: &[u8]) -> Result<MetaCommand, DecodeError> {
    let mut r = Reader(payload);
    let format = r.u8()?;
    if format != FORMAT {
        return Err(DecodeError::Format(format));
    }
    let tag = r.u8()?;
    let command = match tag {
        ADD_VHOST => MetaCommand::AddVhost {
            vhost: r.str()?.into(),
        },
        DELETE_VHOST => MetaCommand::DeleteVhost {
            vhost: r.str()?.into(),
        },
        ADD_USER => MetaCommand::AddUser {
            user: r.str()?,
            tags: r.list()?,
        },
        DELETE_USER => MetaCommand::DeleteUser { user: r.str()? },
        SET_USER_TAGS => MetaCommand::SetUserTags {
            user: r.str()?,
            tags: r.list()?,
        },
        SET_PASSWORD_HASH => MetaCommand::SetPasswordHash {
            user: r.str()?,
            hash: r.opt()?,
        },
        SET_PERMISSIONS => MetaCommand::SetPermissions {
            user: r.str()?,
            permission: PermissionDefinition {
                vhost: r.str()?,
                configure: r.str()?,
                write: r.str()?,
                read: r.str()?,
            },
        },
        CLEAR_PERMISSIONS => MetaCommand::ClearPermissions {
            user: r.str()?,
            vhost: r.str()?.into(),
        },
        SET_TOPIC_PERMISSIONS => MetaCommand::SetTopicPermissions {
            user: r.str()?,
            permission: TopicPermissionDefinition {
                vhost: r.str()?,
                exchange: r.str()?,
                write: r.str()?,
                read: r.str()?,
            },
        },
        CLEAR_TOPIC_PERMISSIONS => MetaCommand::ClearTopicPermissions {
            user: r.str()?,
            vhost: r.str()?.into(),
            exchange: r.opt()?,
        },
        SEED_USER => MetaCommand::SeedUser { user: r.str()? },
        REMOVED_NODE => MetaCommand::RemovedNode { id: r.u64()? },
        SET_POLICY => {
            let operator = r.bool()?;
            let policy = warren_storage::definitions::PolicyDefinition {
                vhost: r.str()?,
                name: r.str()?,
                pattern: r.str()?,
                apply_to: r.str()?,
                priority: r.u64()? as i64,
                definition: match serde_json::from_str(&r.str()?) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => return Err(DecodeError::Policy),
                },
            };
            MetaCommand::SetPolicy { policy, operator }
        }
        CLEAR_POLICY => MetaCommand::ClearPolicy {
            operator: r.bool()?,
            vhost: r.str()?.into(),
            name: r.str()?,
        },
        DECLARE_EXCHANGE | DECLARE_TRANSIENT_EXCHANGE => MetaCommand::DeclareExchange {
            vhost: r.str()?.into(),
            exchange: r.str()?,
            kind: r.str()?,
            durable: tag == DECLARE_EXCHANGE,
            auto_delete: r.bool()?,
            internal: r.bool()?,
            arguments: r.table()?,
        },
        DELETE_EXCHANGE => MetaCommand::DeleteExchange {
            vhost: r.str()?.into(),
            exchange: r.str()?,
        },
        DECLARE_QUEUE | DECLARE_HOMED_QUEUE | DECLARE_PLACED_QUEUE => MetaCommand::DeclareQueue {
            vhost: r.str()?.into(),
            queue: r.str()?.into(),
            auto_delete: r.bool()?,
            arguments: r.table()?,
            declared_by: r.opt()?,
            home: if tag == DECLARE_HOMED_QUEUE {
                Some(r.home()?)
            } else {
                None
            },
            shard: if tag == DECLARE_PLACED_QUEUE {
                Some(r.u32()? as u32)
            } else {
                None
            },
        },
        DELETE_QUEUE => MetaCommand::DeleteQueue {
            vhost: r.str()?.into(),
            queue: r.str()?.into(),
        },
        RETIRE_QUEUE => MetaCommand::RetireQueue {
            vhost: r.str()?.into(),
            queue: r.str()?.into(),
            home: r.home()?,
        },
        BIND => MetaCommand::Bind {
            vhost: r.str()?.into(),
            binding: r.binding()?,
        },
        UNBIND => MetaCommand::Unbind {
            vhost: r.str()?.into(),
            binding: r.binding()?,
        },
        _ => return Err(DecodeError::Tag(tag)),
    };
    match r.0.len() {
        0 => Ok(command),
        n => Err(DecodeError::Trailing(n)),
    }
}

#[cfg(test)]
mod tests;
