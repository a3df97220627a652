//! Events off a connection: on the whole connection for request/response loops, or on its read half
//! while a writer task owns the other (a publisher reading confirms while it writes).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};

use super::{fill, Conn};
use crate::assemble::{Assembler, Event};
use crate::error::Result;
use crate::tls::Stream;

impl Conn {
    /// The next event from the frames already read, without reading.
    pub fn try_event(&mut self, asm: &mut Assembler) -> Result<Option<Event>> {
        asm.next_event(&mut self.rbuf)
    }

    /// Splits into a reader and a writer for tasks that read and write concurrently.
    pub fn split(self) -> (Reader, Writer) {
        let (rd, wr) = tokio::io::split(self.stream);
        (
            Reader {
                rd,
                rbuf: self.rbuf,
                asm: Assembler::default(),
            },
            Writer {
                wr,
                frame_max: self.frame_max,
                reply_timeout: self.reply_timeout,
            },
        )
    }

    /// The connection whole again (to close it).
    pub fn unsplit(reader: Reader, writer: Writer) -> Conn {
        Conn {
            stream: reader.rd.unsplit(writer.wr),
            rbuf: reader.rbuf,
            frame_max: writer.frame_max,
            reply_timeout: writer.reply_timeout,
        }
    }
}

/// The read half of a split connection, with its frame assembler.
pub struct Reader {
    rd: ReadHalf<Stream>,
    rbuf: BytesMut,
    asm: Assembler,
}

impl Reader {
    /// Reads once more from the socket (cancel-safe).
    pub async fn fill(&mut self) -> Result<()> {
        fill(&mut self.rd, &mut self.rbuf).await
    }

    /// The next event already in the buffer, without reading.
    pub fn try_event(&mut self) -> Result<Option<Event>> {
        self.asm.next_event(&mut self.rbuf)
    }
}

/// The write half of a split connection.
pub struct Writer {
    wr: WriteHalf<Stream>,
    pub frame_max: u32,
    reply_timeout: Duration,
}

impl Writer {
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.wr.write_all(bytes).await?;
        self.wr.flush().await
    }
}
