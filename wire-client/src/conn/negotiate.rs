//! The negotiation (spec 2.2.4): protocol header, start/start-ok, tune/tune-ok, open/open-ok, with
//! the connection.close a broker sends instead of tune (a refused login) or open-ok (a refused
//! vhost) answered and returned as [`Error::Closed`].

use amq_protocol::protocol::{connection, AMQPClass};
use warren_protocol::constants::PROTOCOL_HEADER;

use super::Conn;
use crate::error::{Error, Result};
use crate::tuning::{start_ok, Handshake, Tuning};

impl Conn {
    /// Sends the protocol header and reads connection.start.
    pub async fn start(&mut self) -> Result<connection::Start> {
        self.write(PROTOCOL_HEADER).await?;
        match self.next_method().await? {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(start))) => Ok(start),
            other => Err(unexpected("connection.start", other)),
        }
    }

    /// The negotiation up to and including sending connection.open (the answer is left unread);
    /// start-ok names the client `product`.
    pub async fn negotiate(&mut self, product: &str, tuning: &Tuning) -> Result<Handshake> {
        let start = self.start().await?;
        self.send_method(0, &start_ok(product, tuning)).await?;
        let tune = match self.expect_connection_method("connection.tune").await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
            other => return Err(unexpected("connection.tune", (0, other))),
        };
        let tune_ok = tuning.tune_ok(&tune);
        self.frame_max = tune_ok.frame_max;
        let tune_ok = AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok));
        self.send_method(0, &tune_ok).await?;
        self.send_method(0, &tuning.open()).await?;
        Ok(Handshake { start, tune })
    }

    /// The whole negotiation, through connection.open-ok.
    pub async fn handshake(&mut self, product: &str, tuning: &Tuning) -> Result<Handshake> {
        let handshake = self.negotiate(product, tuning).await?;
        match self.expect_connection_method("connection.open-ok").await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Ok(handshake),
            other => Err(unexpected("connection.open-ok", (0, other))),
        }
    }

    /// The next method, which must be on channel 0; a connection.close is answered and returned as
    /// [`Error::Closed`].
    async fn expect_connection_method(&mut self, expected: &str) -> Result<AMQPClass> {
        let method = match self.next_method().await? {
            (0, method) => method,
            other => return Err(unexpected(expected, other)),
        };
        if let AMQPClass::Connection(connection::AMQPMethod::Close(_)) = method {
            if let Some(closed) = self.answer_close(0, &method).await {
                return Err(Error::Closed(closed));
            }
        }
        Ok(method)
    }
}

fn unexpected(expected: &str, (channel, method): (u16, AMQPClass)) -> Error {
    Error::Unexpected(format!(
        "expected {expected}, got {method:?} on channel {channel}"
    ))
}
