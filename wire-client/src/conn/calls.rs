//! Synchronous methods the lenient way, for load generators setting up their queues: the reply is
//! the next method on the channel, whatever else arrives meanwhile (heartbeats, content, other
//! channels) is skipped, and a close is answered and returned as [`Error::Closed`]. Tests that check
//! frame order read with `next_frame`/`next_method` instead, which skip nothing but heartbeats.

use std::time::Duration;

use amq_protocol::protocol::{basic, connection, queue, AMQPClass};
use amq_protocol::types::FieldTable;
use tokio::io::AsyncWriteExt;
use warren_protocol::frame::FrameKind;
use warren_protocol::method::decode_method;

use super::Conn;
use crate::error::{Error, Result};
use crate::methods::{
    basic_consume, basic_qos, channel_open, confirm_select, exchange_declare, exchange_delete,
    queue_bind, queue_delete, queue_opts, QueueOpts,
};

/// How long [`Conn::close`] waits for close-ok, and then for the TLS close.
const CLOSE_OK_WAIT: Duration = Duration::from_secs(5);
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

impl Conn {
    /// The next method on `channel`; see the module doc for what is skipped.
    async fn reply(&mut self, channel: u16) -> Result<AMQPClass> {
        loop {
            let frame = self.read_frame().await?.ok_or(Error::Eof)?;
            if frame.kind != FrameKind::Method {
                continue;
            }
            let method = decode_method(&frame.payload)?;
            if let Some(closed) = self.answer_close(frame.channel, &method).await {
                return Err(Error::Closed(closed));
            }
            if frame.channel == channel {
                return Ok(method);
            }
        }
    }

    /// Sends a synchronous method and returns the reply on the same channel, within the reply
    /// timeout.
    pub async fn call(&mut self, channel: u16, method: AMQPClass) -> Result<AMQPClass> {
        self.send_method(channel, &method).await?;
        tokio::time::timeout(self.reply_timeout, self.reply(channel))
            .await
            .map_err(|_| Error::Timeout(self.reply_timeout))?
    }

    pub async fn open_channel(&mut self, channel: u16) -> Result<()> {
        self.call(channel, channel_open()).await.map(drop)
    }

    pub async fn confirm_select(&mut self, channel: u16) -> Result<()> {
        self.call(channel, confirm_select()).await.map(drop)
    }

    pub async fn qos(&mut self, channel: u16, prefetch: u16) -> Result<()> {
        self.call(channel, basic_qos(prefetch)).await.map(drop)
    }

    /// Declares a queue; returns its message count.
    pub async fn declare_queue(&mut self, channel: u16, opts: QueueOpts<'_>) -> Result<u32> {
        self.declare_queue_with(channel, opts, FieldTable::default())
            .await
    }

    /// `queue.declare` with arguments (`x-queue-type` and the like); the message count.
    pub async fn declare_queue_with(
        &mut self,
        channel: u16,
        opts: QueueOpts<'_>,
        arguments: FieldTable,
    ) -> Result<u32> {
        match self.call(channel, opts.declare_with(arguments)).await? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => Err(Error::Unexpected(format!(
                "expected queue.declare-ok, got {other:?}"
            ))),
        }
    }

    /// The number of ready messages in `name` (a passive declare).
    pub async fn queue_count(&mut self, channel: u16, name: &str) -> Result<u32> {
        let passive = QueueOpts {
            passive: true,
            ..queue_opts(name)
        };
        self.declare_queue(channel, passive).await
    }

    pub async fn delete_queue(&mut self, channel: u16, name: &str) -> Result<()> {
        self.call(channel, queue_delete(name)).await.map(drop)
    }

    pub async fn declare_exchange(&mut self, channel: u16, name: &str, kind: &str) -> Result<()> {
        self.call(channel, exchange_declare(name, kind))
            .await
            .map(drop)
    }

    pub async fn delete_exchange(&mut self, channel: u16, name: &str) -> Result<()> {
        self.call(channel, exchange_delete(name)).await.map(drop)
    }

    pub async fn bind(
        &mut self,
        channel: u16,
        queue: &str,
        exchange: &str,
        key: &str,
    ) -> Result<()> {
        self.call(channel, queue_bind(queue, exchange, key))
            .await
            .map(drop)
    }

    pub async fn consume(
        &mut self,
        channel: u16,
        queue: &str,
        tag: &str,
        no_ack: bool,
    ) -> Result<()> {
        match self
            .call(channel, basic_consume(queue, tag, no_ack))
            .await?
        {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => Ok(()),
            other => Err(Error::Unexpected(format!(
                "expected basic.consume-ok, got {other:?}"
            ))),
        }
    }

    /// connection.close, then close-ok awaited (bounded; whatever arrives meanwhile is discarded, and a
    /// crossing connection.close from the broker counts as done), then the TLS close.
    pub async fn close(mut self) -> Result<()> {
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }));
        self.send_method(0, &close).await?;
        let wait = async {
            loop {
                let frame = self.read_frame().await?.ok_or(Error::Eof)?;
                if frame.kind != FrameKind::Method || frame.channel != 0 {
                    continue;
                }
                if let Ok(AMQPClass::Connection(
                    connection::AMQPMethod::CloseOk(_) | connection::AMQPMethod::Close(_),
                )) = decode_method(&frame.payload)
                {
                    return Ok::<(), Error>(());
                }
            }
        };
        tokio::time::timeout(CLOSE_OK_WAIT, wait)
            .await
            .map_err(|_| Error::Timeout(CLOSE_OK_WAIT))??;
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.stream.shutdown()).await;
        Ok(())
    }
}
