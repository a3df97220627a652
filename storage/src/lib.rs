//! Warren's durable state. Rule of this crate: it knows nothing of AMQP framing or sockets.
//!
//! - `atomic_file`: crash-safe whole-file replacement (keys, certificates, the definitions file).
//! - `definitions`: vhosts, users and permissions as one JSON document.
//! - `dir_lock`: the exclusive lock a broker holds on its data directory.
//! - `frame`: the CRC framing the log and spill runs share.
//! - `names`: what user and vhost names and certificate identities may contain.
//! - `log`: the command log (definitions and persistent messages as CRC-checked records in segments)
//!   over a [`log::medium::Medium`]: files, memory, or a fault-injecting medium for crash tests.
//! - `store`: the log on its own thread with group commit.
//! - `stream`: append-only logs read by offset (RabbitMQ's stream queues), with retention.
//! - `spill`: scratch FIFO files for queue backlogs past their memory budget (not durable).

pub mod atomic_file;
pub mod definitions;
pub mod dir_lock;
pub mod frame;
pub mod log;
pub mod names;
pub mod spill;
pub mod store;
pub mod stream;

pub use atomic_file::write_atomic;
