//! Durable metadata as typed commands: every change to what survives a restart — vhosts, users,
//! their tags, password hashes and permissions, durable exchanges, queues and bindings — is one
//! [`MetaCommand`] variant. The live path validates a change, writes its command and applies it;
//! recovery decodes the same commands from the log and applies them in dependency order; the
//! metadata Raft group (HA.md) will replicate the same commands.
//!
//! In the local log a command is stored as a tagged binary record (codec.rs) under the identity of
//! the object it sets (records.rs): the log keeps the last command per object and drops the rest, and
//! a deleting command is the removal of its object's key (with everything that hung on it). The key
//! is never read back for meaning: recovery decodes the command in the value. Records written before
//! this format (JSON values under JSON-array keys, and the separate `definitions.json`) are read by
//! legacy.rs and rewritten as commands at the first start.

pub mod codec;
pub mod definitions;
pub mod legacy;
pub mod records;

use amq_protocol::types::FieldTable;

use crate::ids::{QueueName, VhostName};
use warren_storage::definitions::{PermissionDefinition, TopicPermissionDefinition};

/// What a binding's destination is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    Queue,
    Exchange,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Queue => "queue",
            DestinationKind::Exchange => "exchange",
        }
    }
}

/// Where a classic queue of a cluster lives, as its record says (RabbitMQ's home node: the queue
/// and its messages are on that node only; the others know it exists and forward to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueHome {
    pub node: u64,
    /// The home node's run (a random number per start) that declared it: a transient queue of an
    /// earlier run of its home is gone, whatever the records say.
    pub run: u64,
    pub durable: bool,
    /// The connection on the home node that owns it, when it is exclusive.
    pub owner: Option<u64>,
}

/// A binding between durable objects, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBinding {
    pub source: String,
    pub kind: DestinationKind,
    pub destination: String,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// One change to durable metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaCommand {
    AddVhost {
        vhost: VhostName,
    },
    /// The vhost goes with its users' permissions in it (its queues and exchanges go by their own
    /// commands).
    DeleteVhost {
        vhost: VhostName,
    },
    AddUser {
        user: String,
        tags: Vec<String>,
    },
    /// The user goes with its tags, password hash and permissions (it stays seeded).
    DeleteUser {
        user: String,
    },
    SetUserTags {
        user: String,
        tags: Vec<String>,
    },
    /// The password bridge's argon2id hash; None clears it.
    SetPasswordHash {
        user: String,
        hash: Option<String>,
    },
    SetPermissions {
        user: String,
        permission: PermissionDefinition,
    },
    ClearPermissions {
        user: String,
        vhost: VhostName,
    },
    SetTopicPermissions {
        user: String,
        permission: TopicPermissionDefinition,
    },
    /// One exchange's topic permission, or all of the user's in the vhost (None).
    ClearTopicPermissions {
        user: String,
        vhost: VhostName,
        exchange: Option<String>,
    },
    /// A user of the configuration file was created once: it is never created again by seeding.
    SeedUser {
        user: String,
    },
    /// A policy (operator policy when `operator`), created or replaced (same vhost and name).
    SetPolicy {
        policy: warren_storage::definitions::PolicyDefinition,
        operator: bool,
    },
    ClearPolicy {
        vhost: VhostName,
        name: String,
        operator: bool,
    },
    /// A cluster node was removed (`brokerctl cluster remove_node`): its id is never a member again
    /// (node ids are never reused), and no node admits its links.
    RemovedNode {
        id: u64,
    },
    /// A durable exchange, or (recorded only by a cluster node) a transient one.
    DeclareExchange {
        vhost: VhostName,
        exchange: String,
        kind: String,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    },
    DeleteExchange {
        vhost: VhostName,
        exchange: String,
    },
    DeclareQueue {
        vhost: VhostName,
        queue: QueueName,
        auto_delete: bool,
        arguments: FieldTable,
        /// Who declared it (absent for queues stored before it was recorded).
        declared_by: Option<String>,
        /// A cluster's classic queue: the node it lives on (None for a single node's durable
        /// queues and for quorum queues).
        home: Option<QueueHome>,
        /// A cluster's quorum queue: the shard group it was placed in when declared (None for
        /// other queues, and for quorum queues recorded before placement, whose shard is the hash
        /// of their name).
        shard: Option<u32>,
    },
    DeleteQueue {
        vhost: VhostName,
        queue: QueueName,
    },
    /// A cluster's classic queue that its home (or the metadata leader, for a lost home) found
    /// gone: deleted only if its record still names that home (the queue may have been declared
    /// again meanwhile, elsewhere or by a later run of the same node).
    RetireQueue {
        vhost: VhostName,
        queue: QueueName,
        home: QueueHome,
    },
    Bind {
        vhost: VhostName,
        binding: StoredBinding,
    },
    Unbind {
        vhost: VhostName,
        binding: StoredBinding,
    },
}

impl MetaCommand {
    /// The vhost a command about exchanges, queues or bindings concerns (None for the others).
    pub fn vhost(&self) -> Option<&str> {
        match self {
            MetaCommand::DeclareExchange { vhost, .. }
            | MetaCommand::DeleteExchange { vhost, .. }
            | MetaCommand::DeclareQueue { vhost, .. }
            | MetaCommand::DeleteQueue { vhost, .. }
            | MetaCommand::RetireQueue { vhost, .. }
            | MetaCommand::Bind { vhost, .. }
            | MetaCommand::Unbind { vhost, .. } => Some(vhost),
            _ => None,
        }
    }

    /// The order recovery applies live commands in: what a command refers to comes first (vhosts and
    /// users, then what hangs on users, exchanges, queues, and bindings between them).
    pub fn recovery_rank(&self) -> u8 {
        match self {
            MetaCommand::AddVhost { .. }
            | MetaCommand::DeleteVhost { .. }
            | MetaCommand::RemovedNode { .. } => 0,
            MetaCommand::AddUser { .. } | MetaCommand::DeleteUser { .. } => 1,
            MetaCommand::SetUserTags { .. }
            | MetaCommand::SetPasswordHash { .. }
            | MetaCommand::SetPermissions { .. }
            | MetaCommand::ClearPermissions { .. }
            | MetaCommand::SetTopicPermissions { .. }
            | MetaCommand::ClearTopicPermissions { .. }
            | MetaCommand::SeedUser { .. }
            | MetaCommand::SetPolicy { .. }
            | MetaCommand::ClearPolicy { .. } => 2,
            MetaCommand::DeclareExchange { .. } | MetaCommand::DeleteExchange { .. } => 3,
            MetaCommand::DeclareQueue { .. }
            | MetaCommand::DeleteQueue { .. }
            | MetaCommand::RetireQueue { .. } => 4,
            MetaCommand::Bind { .. } | MetaCommand::Unbind { .. } => 5,
        }
    }
}
