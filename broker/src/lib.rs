//! Warren's broker: TLS listener, SASL EXTERNAL, connections and channels, admin, configuration,
//! alarms and timers, wired to the routing core (warren-routing: vhosts, exchanges, queues).
//!
//! Crate rule: this is where protocol/ (wire format), storage/ (durable state) and routing/ (the
//! core) are wired together; none of those knows about this crate. It implements the core's traits
//! (the outbox as `DeliverySink`, the log as `Journal`, pending confirms, timers, the memory alarm).
//! Binaries stay thin: `main.rs` parses flags and calls
//! [`server::run`] with a bound listener and a shutdown future, which is also how tests start brokers.

pub mod access;
pub mod admin;
pub mod admission;
pub mod alarms;
pub mod audit;
pub mod broker;
pub mod channel;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod crl;
pub mod error;
pub mod flow;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod password;
pub mod permissions;
pub mod sasl;
pub mod server;
pub mod service_manager;
pub mod timers;
pub mod tls;
pub mod topic_guard;
pub mod users;

pub use server::{run, Server};

/// The RabbitMQ release whose behaviour Warren's tools and metrics follow where they report a
/// RabbitMQ version (`rabbitmq_build_info`, `rabbitmqctl status`).
pub const RABBITMQ_COMPAT: &str = "3.13.7";
/// The internal CA, re-exported for `--dev` and for tests that issue their own certificates.
pub use warren_pki as pki;

// The routing core, under the paths the broker has always used for it.
pub use warren_routing::{
    exchange, ids, message, meta, persist, policy, queue, resource, time, vhost,
};
