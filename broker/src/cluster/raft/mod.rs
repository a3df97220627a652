//! The cluster's Raft groups, on openraft (HA.md §1, §5): the types every group shares, the binary
//! forms its entries and messages take on disk and on node links (`codec`), and the log store that
//! keeps a group's entries, vote and progress in Warren's own command log (`log_store`), so one
//! group-commit fdatasync covers every group on a node and the local data.
//!
//! A group's application data is a [`Proposal`]: metadata commands proposed together by one node.

pub mod codec;
pub mod log_store;
pub mod meta;
pub mod network;
pub mod rpc;

use std::fmt;

use crate::meta::MetaCommand;

/// Metadata commands applied together, in order, on every node; `origin` is the node that
/// proposed them (for the log and for answering its client).
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub origin: u64,
    pub commands: Vec<MetaCommand>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} command(s) from node {}",
            self.commands.len(),
            self.origin
        )
    }
}

/// What applying a proposal gave: `Err` with the reason the first refused command gives (as
/// brokerctl reports it); commands before it took effect, those after it did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer(pub Result<(), String>);

openraft::declare_raft_types!(
    /// The type configuration of Warren's Raft groups: node ids are `[cluster]` node ids, a node
    /// is known by its node-link address.
    pub Types:
        D = Proposal,
        R = Answer,
);

/// Log ids, votes and entries of Warren's groups.
pub type LogId = openraft::type_config::alias::LogIdOf<Types>;
pub type Vote = openraft::type_config::alias::VoteOf<Types>;
pub type Entry = openraft::type_config::alias::EntryOf<Types>;
pub type Membership = openraft::Membership<u64, openraft::BasicNode>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<Types>;
