//! The negotiation as tests drive it: whole (`handshake`), up to connection.open (`negotiate`), or
//! step by step (`start`, `send_start_ok`) to send something else in between. The steps themselves
//! are warren-wire-client's; a refused login or vhost comes back as a [`CloseInfo`].

use amq_protocol::protocol::connection;
use warren_protocol::constants::PROTOCOL_HEADER;
use warren_wire_client::{start_ok, Error, Handshake, Tuning};

use super::RawClient;
use crate::CloseInfo;

/// What start-ok names the client.
const PRODUCT: &str = "warren-tests";

impl RawClient {
    pub async fn send_protocol_header(&mut self) {
        self.send(PROTOCOL_HEADER).await;
    }

    /// Sends the protocol header and reads connection.start.
    pub async fn start(&mut self) -> connection::Start {
        self.conn.start().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// connection.start-ok with SASL EXTERNAL and an empty response (identity from the certificate).
    pub async fn send_start_ok(&mut self, capabilities: bool) {
        let tuning = Tuning {
            capabilities,
            ..Tuning::default()
        };
        self.send_method(0, start_ok(PRODUCT, &tuning)).await;
    }

    pub async fn handshake(&mut self) -> Handshake {
        self.handshake_with(Tuning::default()).await
    }

    /// The whole negotiation: header, start/start-ok, tune/tune-ok, open/open-ok.
    pub async fn handshake_with(&mut self, tuning: Tuning) -> Handshake {
        let handshake = self.conn.handshake(PRODUCT, &tuning).await;
        self.frame_max = self.conn.frame_max;
        handshake.unwrap_or_else(|e| panic!("{e}"))
    }

    /// The whole negotiation, or the connection.close the broker answers with instead of tune (a
    /// refused login) or open-ok (a refused vhost); the close is answered with close-ok.
    pub async fn try_handshake(&mut self, tuning: &Tuning) -> Result<Handshake, CloseInfo> {
        let handshake = self.conn.handshake(PRODUCT, tuning).await;
        self.frame_max = self.conn.frame_max;
        match handshake {
            Ok(handshake) => Ok(handshake),
            Err(Error::Closed(closed)) => Err(closed.into()),
            Err(e) => panic!("{e}"),
        }
    }

    /// The negotiation up to and including sending connection.open (the answer is left unread).
    pub async fn negotiate(&mut self, tuning: &Tuning) -> Handshake {
        let handshake = self.conn.negotiate(PRODUCT, tuning).await;
        self.frame_max = self.conn.frame_max;
        handshake.unwrap_or_else(|e| panic!("{e}"))
    }
}
