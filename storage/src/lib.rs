//! Warren's durable state. Rule of this crate: it knows nothing of AMQP framing or sockets.
//!
//! Today it holds the crash-safe file primitive every persistent artefact goes through (the internal CA's
//! keys and certificates) and the definitions document (vhosts, users, permissions); the message log
//! with group commit builds on them.

pub mod atomic_file;
pub mod definitions;

pub use atomic_file::write_atomic;
