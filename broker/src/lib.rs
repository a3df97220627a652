//! Warren's broker: TLS listener, SASL EXTERNAL, connections and channels, and the routing core
//! (vhosts, exchanges, bindings, queues, consumers).
//!
//! Crate rule: this is where protocol/ (wire format) and storage/ (durable state) are wired together;
//! neither of those knows about the other. Binaries stay thin: `main.rs` parses flags and calls
//! [`server::run`] with a bound listener and a shutdown future, which is also how tests start brokers.

pub mod access;
pub mod admin;
pub mod admission;
pub mod alarms;
pub mod audit;
pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod crl;
pub mod error;
pub mod exchange;
pub mod flow;
pub mod identity;
pub mod message;
pub mod password;
pub mod permissions;
pub mod persist;
pub mod queue;
pub mod resource;
pub mod sasl;
pub mod server;
pub mod timers;
pub mod tls;
pub mod topic_guard;
pub mod users;
pub mod vhost;

pub use server::{run, Server};
/// The internal CA, re-exported for `--dev` and for tests that issue their own certificates.
pub use warren_pki as pki;
