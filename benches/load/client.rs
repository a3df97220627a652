//! The load generator's AMQP 0-9-1 client: tokio-rustls for mutual TLS, SASL EXTERNAL, and
//! `warren-protocol` for framing. It does only what the scenarios need, but does it the way a fast
//! pipelining client does: publishes, acks and replies are encoded straight into one buffer and written
//! with one TLS record per burst (at most 16 KiB of plaintext), and every frame that arrives in one read
//! is handled before the next write.
//!
//! The same code drives Warren and RabbitMQ, so any cost it has is paid equally by both.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use warren_protocol::constants::{FRAME_METHOD, PROTOCOL_HEADER};
use warren_protocol::frame::{
    decode_frame, encode_body, encode_content_header, encode_frame_with, encode_heartbeat,
    FrameKind, RawFrame,
};
use warren_protocol::method::{decode_method, encode_method};

pub type Stream = TlsStream<TcpStream>;

/// Largest frame this client asks for (both brokers propose 131072).
const CLIENT_FRAME_MAX: u32 = 131_072;
/// Time allowed for any single handshake or synchronous method reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// One TLS record holds at most 16 KiB of plaintext: bursts are cut there.
pub const BURST_BYTES: usize = 16 * 1024;

/// Where to connect and with which TLS material (the client certificate `admin`).
pub struct Target {
    pub addr: SocketAddr,
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl Target {
    /// `tls_dir` holds ca.pem, admin.pem and admin.key (the layout of `warren --dev`). TLS session
    /// resumption is off: every connection pays a full handshake, as a new client process would.
    pub fn new(port: u16, tls_dir: &Path) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        let ca = tls_dir.join("ca.pem");
        for cert in CertificateDer::pem_file_iter(&ca).with_context(|| ca.display().to_string())? {
            roots.add(cert.context("CA certificate")?)?;
        }
        let cert_path = tls_dir.join("admin.pem");
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| cert_path.display().to_string())?
            .collect::<Result<Vec<_>, _>>()
            .context("client certificate")?;
        let key_path = tls_dir.join("admin.key");
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| key_path.display().to_string())?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            connector: TlsConnector::from(Arc::new(config)),
            server_name: ServerName::try_from("localhost")?.to_owned(),
        })
    }
}

impl Target {
    /// TCP connect (TCP_NODELAY, as the brokers set on their side) and the TLS handshake with the
    /// client certificate. AMQP connections start with this; the floor rows use the bare stream.
    pub async fn connect_tls(&self) -> Result<Stream> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")
    }
}

/// The negotiated TLS version and cipher suite of a connection, for the record.
pub fn tls_info(stream: &Stream) -> (String, String) {
    let session = stream.get_ref().1;
    let version = session
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let suite = session
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    (version, suite)
}

/// A broker-initiated close, as an error.
#[derive(Debug)]
pub struct Closed {
    pub code: u16,
    pub text: String,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "closed by the broker: {} {}", self.code, self.text)
    }
}
impl std::error::Error for Closed {}

/// An open AMQP connection (after connection.open-ok).
pub struct Conn {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub frame_max: u32,
}

impl Conn {
    /// TCP connect, TLS handshake with the client certificate, then the AMQP negotiation with SASL
    /// EXTERNAL (header, start/start-ok, tune/tune-ok, open/open-ok). `heartbeat` goes into tune-ok.
    pub async fn open(target: &Target, heartbeat: u16) -> Result<Conn> {
        tokio::time::timeout(REPLY_TIMEOUT, Self::open_inner(target, heartbeat))
            .await
            .map_err(|_| anyhow!("connection open timed out"))?
    }

    async fn open_inner(target: &Target, heartbeat: u16) -> Result<Conn> {
        let stream = target.connect_tls().await?;
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            frame_max: 4096,
        };
        c.stream.write_all(PROTOCOL_HEADER).await?;
        c.stream.flush().await?;
        match c.next_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(_)) => {}
            other => bail!("expected connection.start, got {other:?}"),
        }
        let mut out = BytesMut::new();
        encode_method(&mut out, 0, &start_ok());
        c.write(&out).await?;
        let tune = match c.next_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => bail!("expected connection.tune, got {other:?}"),
        };
        let frame_max = match tune.frame_max {
            0 => CLIENT_FRAME_MAX,
            n => n.min(CLIENT_FRAME_MAX),
        };
        let mut out = BytesMut::new();
        encode_method(
            &mut out,
            0,
            &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max,
                heartbeat,
            })),
        );
        encode_method(
            &mut out,
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        );
        c.write(&out).await?;
        c.frame_max = frame_max;
        match c.next_method(0).await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => Ok(c),
            other => bail!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// The negotiated TLS version and cipher suite, for the record.
    pub fn tls_info(&self) -> (String, String) {
        tls_info(&self.stream)
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads once more from the socket into the read buffer (cancel-safe).
    pub async fn fill(&mut self) -> Result<()> {
        fill(&mut self.stream, &mut self.rbuf).await
    }

    pub fn try_frame(&mut self) -> Result<Option<RawFrame>> {
        Ok(decode_frame(&mut self.rbuf, 0)?)
    }

    pub async fn read_frame(&mut self) -> Result<RawFrame> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// The next method on `channel`, skipping heartbeats; a connection.close or channel.close from
    /// the broker is answered and returned as a [`Closed`] error. Content frames are skipped.
    pub async fn next_method(&mut self, channel: u16) -> Result<AMQPClass> {
        loop {
            let f = self.read_frame().await?;
            if f.kind != FrameKind::Method {
                continue;
            }
            let m = decode_method(&f.payload).map_err(|e| anyhow!("{e}"))?;
            if let Some(closed) = self.answer_close(f.channel, &m).await? {
                return Err(closed.into());
            }
            if f.channel == channel {
                return Ok(m);
            }
        }
    }

    async fn answer_close(&mut self, ch: u16, m: &AMQPClass) -> Result<Option<Closed>> {
        Ok(match m {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                let mut out = BytesMut::new();
                encode_method(
                    &mut out,
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                let _ = self.write(&out).await;
                Some(Closed {
                    code: c.reply_code,
                    text: c.reply_text.to_string(),
                })
            }
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                let mut out = BytesMut::new();
                encode_method(
                    &mut out,
                    ch,
                    &AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                let _ = self.write(&out).await;
                Some(Closed {
                    code: c.reply_code,
                    text: c.reply_text.to_string(),
                })
            }
            _ => None,
        })
    }

    /// Sends a synchronous method and returns the reply on the same channel.
    pub async fn call(&mut self, ch: u16, m: AMQPClass) -> Result<AMQPClass> {
        let mut out = BytesMut::new();
        encode_method(&mut out, ch, &m);
        self.write(&out).await?;
        tokio::time::timeout(REPLY_TIMEOUT, self.next_method(ch))
            .await
            .map_err(|_| anyhow!("no reply to {m:?} within {REPLY_TIMEOUT:?}"))?
    }

    pub async fn open_channel(&mut self, ch: u16) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await
        .map(drop)
    }

    pub async fn confirm_select(&mut self, ch: u16) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        )
        .await
        .map(drop)
    }

    pub async fn qos(&mut self, ch: u16, prefetch: u16) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
        )
        .await
        .map(drop)
    }

    /// Declares a queue; returns its message count.
    pub async fn declare_queue(&mut self, ch: u16, opts: QueueOpts<'_>) -> Result<u32> {
        match self.call(ch, opts.method()).await? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => bail!("expected queue.declare-ok, got {other:?}"),
        }
    }

    /// The number of ready messages in `name` (a passive declare).
    pub async fn queue_count(&mut self, ch: u16, name: &str) -> Result<u32> {
        self.declare_queue(
            ch,
            QueueOpts {
                name,
                passive: true,
                ..QueueOpts::default()
            },
        )
        .await
    }

    pub async fn delete_queue(&mut self, ch: u16, name: &str) -> Result<()> {
        self.call(ch, queue_delete(name)).await.map(drop)
    }

    pub async fn declare_exchange(&mut self, ch: u16, name: &str, kind: &str) -> Result<()> {
        self.call(ch, exchange_declare(name, kind)).await.map(drop)
    }

    pub async fn delete_exchange(&mut self, ch: u16, name: &str) -> Result<()> {
        self.call(
            ch,
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                exchange: name.into(),
                if_unused: false,
                nowait: false,
            })),
        )
        .await
        .map(drop)
    }

    pub async fn bind(&mut self, ch: u16, q: &str, ex: &str, key: &str) -> Result<()> {
        self.call(ch, queue_bind(q, ex, key)).await.map(drop)
    }

    pub async fn consume(&mut self, ch: u16, q: &str, tag: &str, no_ack: bool) -> Result<()> {
        match self.call(ch, consume(q, tag, no_ack)).await? {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => Ok(()),
            other => bail!("expected basic.consume-ok, got {other:?}"),
        }
    }

    /// connection.close and wait (bounded) for close-ok, discarding whatever arrives meanwhile.
    pub async fn close(mut self) -> Result<()> {
        let mut out = BytesMut::new();
        encode_method(
            &mut out,
            0,
            &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        self.write(&out).await?;
        let wait = async {
            loop {
                let f = self.read_frame().await?;
                if f.kind == FrameKind::Method && f.channel == 0 {
                    match decode_method(&f.payload) {
                        Ok(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                            return Ok::<(), anyhow::Error>(())
                        }
                        Ok(AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                            return Ok(())
                        }
                        _ => {}
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .map_err(|_| anyhow!("no connection.close-ok within 5 s"))??;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        Ok(())
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
            },
        )
    }

    pub fn unsplit(reader: Reader, writer: Writer) -> Conn {
        Conn {
            stream: reader.rd.unsplit(writer.wr),
            rbuf: reader.rbuf,
            frame_max: writer.frame_max,
        }
    }
}

/// Reads once from `rd` into `rbuf` (at least 16 KiB free; cancel-safe); EOF is an error.
pub async fn fill<R: tokio::io::AsyncRead + Unpin>(rd: &mut R, rbuf: &mut BytesMut) -> Result<()> {
    if rbuf.capacity() - rbuf.len() < 16 * 1024 {
        rbuf.reserve(64 * 1024);
    }
    let n = rd.read_buf(rbuf).await?;
    if n == 0 {
        bail!("connection closed by the broker (EOF)");
    }
    Ok(())
}

fn start_ok() -> AMQPClass {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "connection.blocked",
        "authentication_failure_close",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from("warren-load")),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: props,
        mechanism: "EXTERNAL".into(),
        response: LongString::from(Vec::new()),
        locale: "en_US".into(),
    }))
}

/// queue.declare options.
#[derive(Default, Clone, Copy)]
pub struct QueueOpts<'a> {
    pub name: &'a str,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
}

impl QueueOpts<'_> {
    fn method(&self) -> AMQPClass {
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: self.name.into(),
            passive: self.passive,
            durable: self.durable,
            exclusive: self.exclusive,
            auto_delete: self.auto_delete,
            nowait: false,
            arguments: FieldTable::default(),
        }))
    }
}

pub fn queue_opts(name: &str) -> QueueOpts<'_> {
    QueueOpts {
        name,
        ..QueueOpts::default()
    }
}

pub fn queue_declare(name: &str) -> AMQPClass {
    queue_opts(name).method()
}

pub fn queue_bind(q: &str, ex: &str, key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: q.into(),
        exchange: ex.into(),
        routing_key: key.into(),
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

pub fn queue_delete(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: name.into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    }))
}

pub fn exchange_declare(name: &str, kind: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
        exchange: name.into(),
        kind: kind.into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

pub fn consume(q: &str, tag: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: q.into(),
        consumer_tag: tag.into(),
        no_local: false,
        no_ack,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

// ---- hot-path encoders ---------------------------------------------------------------------------

fn put_short(b: &mut BytesMut, s: &[u8]) {
    let n = s.len().min(255);
    b.put_u8(n as u8);
    b.put_slice(&s[..n]);
}

/// Basic properties the scenarios use, encoded in the wire order of their flag bits.
#[derive(Default, Clone, Copy)]
pub struct Props<'a> {
    pub content_type: Option<&'a [u8]>,
    pub delivery_mode: Option<u8>,
    pub correlation_id: Option<&'a [u8]>,
    pub reply_to: Option<&'a [u8]>,
}

impl Props<'_> {
    pub fn encode(&self, out: &mut BytesMut) {
        let mut flags = 0u16;
        if self.content_type.is_some() {
            flags |= 1 << 15;
        }
        if self.delivery_mode.is_some() {
            flags |= 1 << 12;
        }
        if self.correlation_id.is_some() {
            flags |= 1 << 10;
        }
        if self.reply_to.is_some() {
            flags |= 1 << 9;
        }
        out.put_u16(flags);
        if let Some(v) = self.content_type {
            put_short(out, v);
        }
        if let Some(v) = self.delivery_mode {
            out.put_u8(v);
        }
        if let Some(v) = self.correlation_id {
            put_short(out, v);
        }
        if let Some(v) = self.reply_to {
            put_short(out, v);
        }
    }

    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.to_vec()
    }
}

/// Appends basic.publish + content header + body frames.
pub fn put_publish(
    out: &mut BytesMut,
    frame_max: u32,
    ch: u16,
    exchange: &str,
    routing_key: &str,
    raw_props: &[u8],
    body: &[u8],
) {
    encode_frame_with(out, FRAME_METHOD, ch, |b| {
        b.put_u16(60);
        b.put_u16(40);
        b.put_u16(0);
        put_short(b, exchange.as_bytes());
        put_short(b, routing_key.as_bytes());
        b.put_u8(0);
    });
    encode_content_header(out, ch, 60, body.len() as u64, raw_props);
    encode_body(out, ch, body, frame_max);
}

/// Appends basic.ack (client → broker, for a delivery).
pub fn put_ack(out: &mut BytesMut, ch: u16, tag: u64, multiple: bool) {
    encode_frame_with(out, FRAME_METHOD, ch, |b| {
        b.put_u16(60);
        b.put_u16(80);
        b.put_u64(tag);
        b.put_u8(u8::from(multiple));
    });
}

pub fn put_heartbeat(out: &mut BytesMut) {
    encode_heartbeat(out);
}

// ---- frames → events -----------------------------------------------------------------------------

/// A complete delivery (deliver + header + body).
pub struct Delivery {
    pub channel: u16,
    pub tag: u64,
    /// The raw property list (flags + values).
    pub props: Bytes,
    /// The first body frame (the scenarios put their timestamps in the first 8 octets).
    pub body_head: Bytes,
}

pub enum Event {
    Deliver(Delivery),
    /// A publisher confirm (basic.ack from the broker).
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
    },
    /// Any other method (the scenarios have no use for them once set up).
    Method,
    /// Heartbeats and content of methods we do not track (basic.return).
    Other,
}

#[derive(Default)]
struct Pending {
    channel: u16,
    tag: u64,
    props: Bytes,
    body_head: Option<Bytes>,
    body_size: u64,
    received: u64,
    have_header: bool,
}

/// Turns frames into events; one per connection (content frames of different channels do not
/// interleave on the wire — spec 4.2.6 — so one pending delivery is enough).
#[derive(Default)]
pub struct Assembler {
    pending: Option<Pending>,
    /// Content following a basic.return: skipped.
    skipping: bool,
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl Assembler {
    pub fn push(&mut self, f: RawFrame) -> Result<Option<Event>> {
        match f.kind {
            FrameKind::Heartbeat => Ok(Some(Event::Other)),
            FrameKind::Method => self.method(f),
            FrameKind::Header => {
                let p = &f.payload;
                if p.len() < 14 {
                    bail!("short content header");
                }
                let size = be_u64(&p[4..12]);
                if self.skipping {
                    if size == 0 {
                        self.skipping = false;
                    }
                    return Ok(None);
                }
                let Some(pending) = self.pending.as_mut() else {
                    bail!("content header without a method");
                };
                pending.body_size = size;
                pending.props = f.payload.slice(12..);
                pending.have_header = true;
                if size == 0 {
                    return Ok(self.finish());
                }
                Ok(None)
            }
            FrameKind::Body => {
                if self.skipping {
                    // basic.return bodies: we never need them; they end with the connection's
                    // next method frame at the latest.
                    return Ok(None);
                }
                let Some(pending) = self.pending.as_mut() else {
                    bail!("body frame without a method");
                };
                pending.received += f.payload.len() as u64;
                if pending.body_head.is_none() {
                    pending.body_head = Some(f.payload);
                }
                if pending.received >= pending.body_size {
                    return Ok(self.finish());
                }
                Ok(None)
            }
        }
    }

    fn finish(&mut self) -> Option<Event> {
        let p = self.pending.take()?;
        Some(Event::Deliver(Delivery {
            channel: p.channel,
            tag: p.tag,
            props: p.props,
            body_head: p.body_head.unwrap_or_default(),
        }))
    }

    fn method(&mut self, f: RawFrame) -> Result<Option<Event>> {
        self.skipping = false;
        let p = &f.payload;
        if p.len() >= 4 && p[0] == 0 && p[1] == 60 {
            match p[3] {
                // basic.deliver: consumer-tag, delivery-tag, redelivered, exchange, routing-key
                60 => {
                    let ctag_len = *p.get(4).ok_or_else(|| anyhow!("short deliver"))? as usize;
                    let at = 5 + ctag_len;
                    if p.len() < at + 8 {
                        bail!("short deliver");
                    }
                    self.pending = Some(Pending {
                        channel: f.channel,
                        tag: be_u64(&p[at..at + 8]),
                        ..Pending::default()
                    });
                    return Ok(None);
                }
                // basic.ack / basic.nack from the broker (publisher confirms)
                80 | 120 if p.len() >= 13 => {
                    let tag = be_u64(&p[4..12]);
                    let multiple = p[12] & 1 != 0;
                    return Ok(Some(if p[3] == 80 {
                        Event::Ack { tag, multiple }
                    } else {
                        Event::Nack { tag, multiple }
                    }));
                }
                // basic.return: its content follows and is skipped
                50 => {
                    self.skipping = true;
                    return Ok(Some(Event::Other));
                }
                _ => {}
            }
        }
        let m = decode_method(p).map_err(|e| anyhow!("{e}"))?;
        match &m {
            AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Err(Closed {
                code: c.reply_code,
                text: c.reply_text.to_string(),
            }
            .into()),
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Err(Closed {
                code: c.reply_code,
                text: c.reply_text.to_string(),
            }
            .into()),
            _ => Ok(Some(Event::Method)),
        }
    }
}

/// The read half of a split connection, with its frame assembler.
pub struct Reader {
    rd: ReadHalf<Stream>,
    pub rbuf: BytesMut,
    asm: Assembler,
}

impl Reader {
    /// Reads once more from the socket (cancel-safe).
    pub async fn fill(&mut self) -> Result<()> {
        fill(&mut self.rd, &mut self.rbuf).await
    }

    /// The next event already in the buffer, without reading.
    pub fn try_event(&mut self) -> Result<Option<Event>> {
        while let Some(f) = decode_frame(&mut self.rbuf, 0)? {
            if let Some(e) = self.asm.push(f)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }
}

/// The write half of a split connection.
pub struct Writer {
    wr: WriteHalf<Stream>,
    pub frame_max: u32,
}

impl Writer {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.wr.write_all(bytes).await?;
        self.wr.flush().await?;
        Ok(())
    }
}

/// An unsplit connection used as a request/response loop (RPC clients and servers, idle holders).
impl Conn {
    pub fn try_event(&mut self, asm: &mut Assembler) -> Result<Option<Event>> {
        while let Some(f) = decode_frame(&mut self.rbuf, 0)? {
            if let Some(e) = asm.push(f)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }
}
