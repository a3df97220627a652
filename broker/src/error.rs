//! AMQP errors live in warren-protocol (`warren_protocol::error`): the routing core and the
//! connection layer both report them. Re-exported here while the broker's modules move.

pub use warren_protocol::error::{octets_snippet, AmqpError, AmqpResult};
