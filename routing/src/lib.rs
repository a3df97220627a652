//! Warren's routing core: vhosts with their exchanges and bindings, routing, queues (the ready list,
//! consumers and credit, TTL, expiry, length limits, priorities, dead-lettering, paging) and
//! messages with their stored form.
//!
//! Rule of this crate: it knows nothing of sockets, TLS, tokio tasks, frames, connections, channels,
//! authentication or configuration files (user definitions appear only as metadata commands). It
//! uses warren-protocol's value types (properties, field tables, `AmqpError`) and warren-storage
//! (records, spill runs). What a queue needs from around it is a trait it owns, implemented by
//! warren-broker: `DeliverySink` (where a consumer's deliveries go:
//! the connection's outbox), `Journal` (the log its durable messages go to), `WaitsForWrites` (a
//! publisher's pending confirm), `QueueOwner` (the vhost: dead letters, expiry), `QueueTimers` (the
//! runtime's timers), `MemoryAccount` (the memory alarm) and `RouteGuard` (topic permissions on
//! routing hops). So the same code can serve a local queue, recovery, and (next) a replicated one.
//! Items are `pub` only where warren-broker (or the tests and benches) use them, or where they are
//! the replicated queue's seam (`QueueState`, `ConsumerHandle`, `Effect`, `Snapshot`).
//!
//! - `vhost`: exchanges and queues of a vhost, declare/delete/bind with RabbitMQ's checks, routing.
//! - `exchange`: one routing table per exchange type.
//! - `queue`: a queue as a deterministic state machine (`state`, `command`) and its live form with
//!   dispatch under the queue's lock.
//! - `meta`: durable metadata changes as typed commands, their binary records and their apply.
//! - `message`: a published message as queues share it, its stored form and its memory charge.
//! - `persist`: the local log handle the vhost and queues write through.
//! - `ids`: node, connection, channel, delivery, consumer, queue and vhost identities.
//! - `time`: `Now`, the time every operation is given (the core reads no clock).
//! - `resource`: naming a queue or exchange in RabbitMQ's reply texts.

pub use warren_protocol::error;

pub mod exchange;
pub mod ids;
pub mod message;
pub mod meta;
pub mod persist;
pub mod policy;
pub mod queue;
pub mod resource;
pub mod time;
pub mod vhost;
