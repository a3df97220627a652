//! Endings: the close a test expects from the broker (answered with close-ok, returned as a
//! [`CloseInfo`] to compare), the socket closing, and the client's own connection.close.

use amq_protocol::protocol::{channel, connection, AMQPClass};
use warren_protocol::frame::FrameKind;

use super::RawClient;
use crate::CloseInfo;

impl RawClient {
    /// The next non-heartbeat frame must be connection.close; answers close-ok.
    pub async fn expect_connection_close(&mut self) -> CloseInfo {
        match self.next_method().await {
            (0, close @ AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                self.answer_close(0, &close).await
            }
            other => panic!("expected connection.close, got {other:?}"),
        }
    }

    /// The next non-heartbeat frame must be channel.close on `id`; answers close-ok.
    pub async fn expect_channel_close(&mut self, id: u16) -> CloseInfo {
        match self.expect_method(id).await {
            close @ AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                self.answer_close(id, &close).await
            }
            other => panic!("expected channel.close on channel {id}, got {other:?}"),
        }
    }

    /// Answers `close` (connection.close or channel.close) with close-ok.
    pub(super) async fn answer_close(&mut self, channel: u16, close: &AMQPClass) -> CloseInfo {
        match self.conn.answer_close(channel, close).await {
            Some(closed) => closed.into(),
            None => panic!("expected a close, got {close:?}"),
        }
    }

    /// Asserts the broker closes the socket, sending nothing but heartbeats first.
    pub async fn expect_eof(&mut self) {
        loop {
            match self.read_frame().await {
                None => return,
                Some(f) if f.kind == FrameKind::Heartbeat => self.heartbeats_seen += 1,
                Some(f) => panic!("expected the connection to close, got {f:?}"),
            }
        }
    }

    /// Closes the connection from the client side (connection.close / close-ok).
    pub async fn close(mut self) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
        loop {
            if let (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) =
                self.next_method().await
            {
                return;
            }
        }
    }
}
