//! What can go wrong talking to a broker, as values: the tests turn them into panics with these
//! messages, the benchmark into anyhow errors with `?`.

use std::time::Duration;

use amq_protocol::protocol::{channel, connection, AMQPClass};
use warren_protocol::frame::FrameError;
use warren_protocol::method::MethodError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("the broker closed the connection (EOF)")]
    Eof,
    #[error("no answer from the broker within {0:?}")]
    Timeout(Duration),
    #[error("the broker sent an invalid frame: {0}")]
    InvalidFrame(String),
    #[error("the broker sent an invalid method: {0}")]
    InvalidMethod(#[from] MethodError),
    /// connection.close or channel.close from the broker (already answered where the reader says so).
    #[error("{0}")]
    Closed(Closed),
    /// A valid frame or method that is not the one this step of the conversation needs.
    #[error("{0}")]
    Unexpected(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        Error::InvalidFrame(e.to_string())
    }
}

/// A connection.close or channel.close the broker sent: reply code and text, and the method that
/// caused it (0/0 when none did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl Closed {
    /// The close `method` carries, if it is connection.close or channel.close.
    pub fn from_method(method: &AMQPClass) -> Option<Closed> {
        let (code, text, class_id, method_id) = match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                (c.reply_code, &c.reply_text, c.class_id, c.method_id)
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                (c.reply_code, &c.reply_text, c.class_id, c.method_id)
            }
            _ => return None,
        };
        Some(Closed {
            code,
            text: text.as_str().to_string(),
            class_id,
            method_id,
        })
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "closed by the broker: {} {}", self.code, self.text)
    }
}
