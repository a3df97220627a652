//! AMQP 0-9-1 on the wire: frame splitting, method (de)serialisation, content headers.
//!
//! Rule of this crate: it does no I/O and knows nothing of queues, exchanges or storage. The broker feeds
//! it bytes and gets typed frames back; method types come from `amq-protocol`, while content headers are
//! kept as the raw bytes the publisher sent so that every property and header survives byte-for-byte.

pub mod constants;
pub mod content;
pub mod error;
pub mod field;
pub mod frame;
pub mod method;
pub mod nesting;

pub use amq_protocol::protocol as spec;
pub use amq_protocol::types;
