//! One TLS connection read frame by frame: a read buffer filled by cancel-safe reads (so a reader can
//! sit in `select!` beside a stop signal), frames taken off its front without copying, and strict
//! readers that take nothing for granted (the next frame must be the one asked for).

use std::time::Duration;

use amq_protocol::protocol::{channel, connection, AMQPClass};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use warren_protocol::frame::{decode_frame, FrameKind, RawFrame};
use warren_protocol::method::{decode_method, encode_method};

use crate::error::{Closed, Error, Result};
use crate::tls::Stream;

mod calls;
mod negotiate;
mod split;

pub use split::{Reader, Writer};

/// The frame_max in force until tune-ok: the spec's minimum frame size (4.2.3), which every peer
/// accepts.
const FRAME_MIN: u32 = 4096;

/// An AMQP connection over TLS, from the protocol header on.
pub struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    /// The frame_max outgoing bodies are split at: 4096 until tune-ok, then the negotiated value.
    pub frame_max: u32,
    /// How long [`Self::next_frame`] (and so the negotiation) and [`Self::call`] wait for the broker.
    reply_timeout: Duration,
}

impl Conn {
    /// A connection over an established TLS stream, before the protocol header.
    pub fn new(stream: Stream, reply_timeout: Duration) -> Conn {
        Conn {
            stream,
            rbuf: BytesMut::new(),
            frame_max: FRAME_MIN,
            reply_timeout,
        }
    }

    /// The TLS stream (peer certificates, negotiated version, local address).
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Writes `bytes` and flushes.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Encodes and writes one method frame.
    pub async fn send_method(&mut self, channel: u16, method: &AMQPClass) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, method);
        self.write(&out).await
    }

    /// Reads once more from the socket into the read buffer (cancel-safe); EOF is [`Error::Eof`].
    pub async fn fill(&mut self) -> Result<()> {
        fill(&mut self.stream, &mut self.rbuf).await
    }

    /// The next frame already in the read buffer, without reading.
    pub fn try_frame(&mut self) -> Result<Option<RawFrame>> {
        Ok(decode_frame(&mut self.rbuf, 0)?)
    }

    /// The next frame, heartbeats included; None once the broker closed the connection (EOF). Waits
    /// as long as it takes (cancel-safe: callers bound it).
    pub async fn read_frame(&mut self) -> Result<Option<RawFrame>> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(Some(frame));
            }
            match self.fill().await {
                Ok(()) => {}
                Err(Error::Eof) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next frame that is not a heartbeat, each wait bounded by the reply timeout; EOF is an
    /// error here.
    pub async fn next_frame(&mut self) -> Result<RawFrame> {
        loop {
            let frame = tokio::time::timeout(self.reply_timeout, self.read_frame())
                .await
                .map_err(|_| Error::Timeout(self.reply_timeout))??
                .ok_or(Error::Eof)?;
            if frame.kind != FrameKind::Heartbeat {
                return Ok(frame);
            }
        }
    }

    /// The next non-heartbeat frame, which must be a method: (channel, method).
    pub async fn next_method(&mut self) -> Result<(u16, AMQPClass)> {
        let frame = self.next_frame().await?;
        Ok((frame.channel, frame_method(&frame)?))
    }

    /// Everything read but not yet taken as frames (the buffer keeps its spare capacity).
    pub fn take_buffered(&mut self) -> BytesMut {
        self.rbuf.split()
    }

    /// If `method` is connection.close or channel.close, answers close-ok on `channel` and returns
    /// the close. A failed close-ok write is ignored: the broker may already be gone, and the close is
    /// what the caller needs to see.
    pub async fn answer_close(&mut self, channel: u16, method: &AMQPClass) -> Option<Closed> {
        let closed = Closed::from_method(method)?;
        let (channel, close_ok) = match method {
            AMQPClass::Connection(_) => (
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            ),
            _ => (
                channel,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            ),
        };
        let _ = self.send_method(channel, &close_ok).await;
        Some(closed)
    }
}

/// The method in `frame`, which must be a method frame.
pub fn frame_method(frame: &RawFrame) -> Result<AMQPClass> {
    if frame.kind != FrameKind::Method {
        return Err(Error::Unexpected(format!(
            "expected a method frame, got {frame:?}"
        )));
    }
    Ok(decode_method(&frame.payload)?)
}

/// Reads once from `rd` into `rbuf`, with at least 16 KiB free for it (cancel-safe: `read_buf`
/// either appends what it read or nothing); EOF is [`Error::Eof`]. Also used on bare TLS streams
/// (the benchmark's echo floor).
pub async fn fill<R: AsyncRead + Unpin>(rd: &mut R, rbuf: &mut BytesMut) -> Result<()> {
    if rbuf.capacity() - rbuf.len() < 16 * 1024 {
        rbuf.reserve(64 * 1024);
    }
    match rd.read_buf(rbuf).await? {
        0 => Err(Error::Eof),
        _ => Ok(()),
    }
}
