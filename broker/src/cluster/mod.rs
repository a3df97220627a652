//! Warren as a cluster node (opt-in with `[cluster]`; HA.md is the design). So far: the cluster's
//! configuration and the node links between its nodes, mutually authenticated over TLS 1.3 with node
//! certificates only. Replicated definitions and quorum queues (openraft groups) run over these
//! links next.

pub mod config;
pub mod dev;
pub mod home;
pub mod link;
pub mod node;
pub mod quorum;
pub mod raft;
