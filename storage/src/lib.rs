//! Warren's durable state. Rule of this crate: it knows nothing of AMQP framing or sockets.
//!
//! Today it holds the crash-safe file primitive every persistent artefact goes through (the internal CA's
//! keys and certificates); the metadata store and the message log with group commit build on it.

pub mod atomic_file;

pub use atomic_file::write_atomic;
