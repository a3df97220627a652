//! A frame-level AMQP client over TLS for what an application library hides: the exact bytes and order
//! of frames, broken clients, and connection-level errors. Frames are built and parsed with
//! warren-protocol (methods are amq-protocol's `AMQPClass`), so the tests speak the same wire format
//! the broker does without sharing any of its state machines.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{BufMut, Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use warren_broker::pki::Pem;
use warren_protocol::constants::PROTOCOL_HEADER;
use warren_protocol::frame::{decode_frame, encode_frame_with, FrameKind, RawFrame};
use warren_protocol::method::{decode_method, encode_method};

use crate::{CloseInfo, TestBroker, TIMEOUT};

mod attempt;
mod build;
pub use build::*;

/// Which client certificate the TLS handshake presents.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The dev PKI's `admin` certificate.
    Admin,
    Cert(Pem),
    /// No client certificate at all.
    None,
}

/// What the client answers in connection.tune-ok and connection.open. `None` takes the broker's value.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub channel_max: Option<u16>,
    pub frame_max: Option<u32>,
    pub heartbeat: u16,
    pub vhost: String,
    /// Advertise consumer_cancel_notify (and the other usual client capabilities) in start-ok.
    pub capabilities: bool,
    /// Also advertise `connection.blocked` (only with `capabilities`): the broker then tells this
    /// connection when a resource alarm blocks it and when it is released.
    pub connection_blocked: bool,
    /// The SASL mechanism and response of start-ok (EXTERNAL with an empty response by default; see
    /// [`plain_response`] and [`amqplain_response`] for the password bridge).
    pub mechanism: String,
    pub response: Vec<u8>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            channel_max: None,
            frame_max: None,
            heartbeat: 0,
            vhost: "/".to_string(),
            capabilities: true,
            connection_blocked: false,
            mechanism: "EXTERNAL".to_string(),
            response: Vec::new(),
        }
    }
}

/// The broker's side of a completed negotiation.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub start: connection::Start,
    pub tune: connection::Tune,
}

/// A message received as method + content header + body frames.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub method: AMQPClass,
    /// The content header's property flags and values, exactly as they came off the wire.
    pub properties: Bytes,
    pub body_size: u64,
    pub body: Vec<u8>,
    /// Payload size of each body frame, in order.
    pub body_frames: Vec<usize>,
}

impl RawMessage {
    pub fn deliver(&self) -> &basic::Deliver {
        match &self.method {
            AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => d,
            other => panic!("expected basic.deliver, got {other:?}"),
        }
    }
}

fn tls_config(ca: &Path, identity: Option<&Pem>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("CA added");
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(pem) => {
            let chain = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Channels opened by [`RawClient::attempt`] start here, clear of the numbers tests pick by hand.
const FIRST_ATTEMPT_CHANNEL: u16 = 1000;

/// A TLS connection driven frame by frame.
pub struct RawClient {
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    /// The frame_max used to split outgoing bodies (4096 until tune-ok).
    pub frame_max: u32,
    /// Heartbeat frames skipped by the `next_*` readers so far.
    pub heartbeats_seen: usize,
    /// The channel [`Self::attempt`] opens next.
    next_attempt_channel: u16,
}

impl TestBroker {
    /// A TLS connection as `admin`, before the protocol header.
    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self, Identity::Admin)
            .await
            .expect("TLS handshake as admin")
    }

    /// A TLS connection as `admin` with the AMQP handshake done (broker's tune values, vhost `/`).
    pub async fn raw_open(&self) -> RawClient {
        let mut raw = self.raw().await;
        raw.handshake().await;
        raw
    }
}

impl RawClient {
    /// TCP connect plus TLS handshake with `identity`. With TLS 1.3 the broker verifies the client
    /// certificate after the client's handshake completes, so a refused certificate may only show as
    /// a closed connection on the first read.
    pub async fn connect(broker: &TestBroker, identity: Identity) -> std::io::Result<Self> {
        Self::connect_tcp(broker, identity, None).await
    }

    /// Like [`Self::connect`], from the local address `source` (e.g. 127.0.0.2, for the allowlist).
    pub async fn connect_from(
        broker: &TestBroker,
        identity: Identity,
        source: IpAddr,
    ) -> std::io::Result<Self> {
        Self::connect_tcp(broker, identity, Some(source)).await
    }

    async fn connect_tcp(
        broker: &TestBroker,
        identity: Identity,
        source: Option<IpAddr>,
    ) -> std::io::Result<Self> {
        let pem = match identity {
            Identity::Admin => Some(broker.admin_cert()),
            Identity::Cert(pem) => Some(pem),
            Identity::None => None,
        };
        let config = tls_config(&broker.pki.ca_cert, pem.as_ref());
        let connect = async {
            let tcp = tcp_connect(broker.port, source).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from("localhost").expect("server name");
            TlsConnector::from(config).connect(name, tcp).await
        };
        let stream = tokio::time::timeout(TIMEOUT, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect"))??;
        Ok(RawClient {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            frame_max: 4096,
            heartbeats_seen: 0,
            next_attempt_channel: FIRST_ATTEMPT_CHANNEL,
        })
    }

    /// This client's end of the TCP connection (what the broker sees as the peer).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.get_ref().0.local_addr().expect("local address")
    }

    /// The certificate the broker presented in the TLS handshake (DER).
    pub fn server_certificate(&self) -> Vec<u8> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("the broker presented a certificate")
            .to_vec()
    }

    // ---- writing -------------------------------------------------------------------------------

    /// Writes `bytes` and flushes; the error is returned (the broker may already have closed).
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(TIMEOUT, write)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write"))?
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("write to the broker");
    }

    pub async fn send_protocol_header(&mut self) {
        self.send(PROTOCOL_HEADER).await;
    }

    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, &method);
        self.send(&out).await;
    }

    /// A frame of any type with any payload (the size field is computed).
    pub async fn send_frame(&mut self, frame_type: u8, channel: u16, payload: &[u8]) {
        let mut out = BytesMut::new();
        encode_frame_with(&mut out, frame_type, channel, |b| b.put_slice(payload));
        self.send(&out).await;
    }

    /// basic.publish + content header (raw property bytes) + body frames split at `frame_max`, in one
    /// write.
    pub async fn publish(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: &[u8],
        body: &[u8],
    ) {
        let mut out = BytesMut::new();
        encode_publish(
            &mut out,
            self.frame_max,
            channel,
            (exchange, routing_key, mandatory),
            properties,
            body,
        );
        self.send(&out).await;
    }

    // ---- reading -------------------------------------------------------------------------------

    /// The next frame, heartbeats included; None once the broker closed the connection (EOF or TLS
    /// error). Panics if nothing arrives within [`TIMEOUT`].
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match decode_frame(&mut self.rbuf, 0) {
                Ok(Some(frame)) => return Some(frame),
                Ok(None) => {}
                Err(e) => panic!("the broker sent an invalid frame: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => panic!("no frame from the broker within {TIMEOUT:?}"),
                Ok(Ok(0) | Err(_)) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Like [`Self::read_frame`] but returns None instead of panicking after `wait`.
    pub async fn read_frame_within(&mut self, wait: Duration) -> Result<Option<RawFrame>, ()> {
        let deadline = Instant::now() + wait;
        loop {
            match decode_frame(&mut self.rbuf, 0) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => panic!("the broker sent an invalid frame: {e}"),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0) | Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Every byte the broker sends until it closes the connection (bounded by [`TIMEOUT`]).
    pub async fn read_until_closed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => panic!(
                    "the broker did not close the connection within {TIMEOUT:?} (received {:?})",
                    &self.rbuf[..]
                ),
                Ok(Ok(0) | Err(_)) => return self.rbuf.split().to_vec(),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next non-heartbeat frame; panics if the connection closes first.
    pub async fn next_frame(&mut self) -> RawFrame {
        loop {
            match self.read_frame().await {
                Some(f) if f.kind == FrameKind::Heartbeat => self.heartbeats_seen += 1,
                Some(f) => return f,
                None => panic!("the broker closed the connection unexpectedly"),
            }
        }
    }

    /// The next non-heartbeat frame, which must be a method: (channel, method).
    pub async fn next_method(&mut self) -> (u16, AMQPClass) {
        let frame = self.next_frame().await;
        assert_eq!(
            frame.kind,
            FrameKind::Method,
            "expected a method frame, got {frame:?}"
        );
        let method = decode_method(&frame.payload).expect("the broker's method decodes");
        (frame.channel, method)
    }

    /// The next method, which must be on `channel`.
    pub async fn expect_method(&mut self, channel: u16) -> AMQPClass {
        let (ch, method) = self.next_method().await;
        assert_eq!(ch, channel, "method {method:?} on an unexpected channel");
        method
    }

    /// Sends a synchronous method and returns the broker's next method on the same channel.
    pub async fn call(&mut self, channel: u16, method: AMQPClass) -> AMQPClass {
        self.send_method(channel, method).await;
        self.expect_method(channel).await
    }

    /// A content header and its body frames on `channel`, after `method` was read.
    pub async fn expect_content(&mut self, channel: u16, method: AMQPClass) -> RawMessage {
        let header = self.next_frame().await;
        assert_eq!(
            (header.kind, header.channel),
            (FrameKind::Header, channel),
            "expected a content header after {method:?}, got {header:?}"
        );
        let p = &header.payload;
        assert!(p.len() >= 14, "short content header {p:?}");
        assert_eq!(&p[..4], &[0, 60, 0, 0], "class 60, weight 0");
        let body_size = u64::from_be_bytes(p[4..12].try_into().expect("8 octets"));
        let properties = header.payload.slice(12..);
        let mut body = Vec::new();
        let mut body_frames = Vec::new();
        while (body.len() as u64) < body_size {
            let frame = self.next_frame().await;
            assert_eq!(
                (frame.kind, frame.channel),
                (FrameKind::Body, channel),
                "expected a body frame, got {frame:?}"
            );
            body_frames.push(frame.payload.len());
            body.extend_from_slice(&frame.payload);
        }
        assert_eq!(body.len() as u64, body_size, "body size as declared");
        RawMessage {
            method,
            properties,
            body_size,
            body,
            body_frames,
        }
    }

    /// basic.deliver (or basic.return / get-ok: whatever method comes) with its content.
    pub async fn expect_message(&mut self, channel: u16) -> RawMessage {
        let method = self.expect_method(channel).await;
        self.expect_content(channel, method).await
    }

    // ---- negotiation ---------------------------------------------------------------------------

    /// Sends the protocol header and reads connection.start.
    pub async fn start(&mut self) -> connection::Start {
        self.send_protocol_header().await;
        match self.expect_method(0).await {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => start,
            other => panic!("expected connection.start, got {other:?}"),
        }
    }

    /// connection.start-ok with SASL EXTERNAL and an empty response (identity from the certificate).
    pub async fn send_start_ok(&mut self, capabilities: bool) {
        self.send_start_ok_with(capabilities, "EXTERNAL", b"").await;
    }

    /// connection.start-ok with any mechanism and response.
    pub async fn send_start_ok_with(
        &mut self,
        capabilities: bool,
        mechanism: &str,
        response: &[u8],
    ) {
        self.send_start_ok_full(capabilities, false, mechanism, response)
            .await;
    }

    /// connection.start-ok with any mechanism and response, advertising `connection.blocked` too
    /// when `connection_blocked` (and `capabilities`) is set.
    pub async fn send_start_ok_full(
        &mut self,
        capabilities: bool,
        connection_blocked: bool,
        mechanism: &str,
        response: &[u8],
    ) {
        let mut props = FieldTable::default();
        props.insert(
            "product".into(),
            AMQPValue::LongString(LongString::from("warren-tests")),
        );
        if capabilities {
            let mut caps = FieldTable::default();
            for cap in [
                "consumer_cancel_notify",
                "publisher_confirms",
                "basic.nack",
                "authentication_failure_close",
            ] {
                caps.insert(cap.into(), AMQPValue::Boolean(true));
            }
            if connection_blocked {
                caps.insert("connection.blocked".into(), AMQPValue::Boolean(true));
            }
            props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
        }
        let start_ok = connection::StartOk {
            client_properties: props,
            mechanism: mechanism.into(),
            response: LongString::from(response.to_vec()),
            locale: "en_US".into(),
        };
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
        )
        .await;
    }

    pub async fn handshake(&mut self) -> Handshake {
        self.handshake_with(Tuning::default()).await
    }

    /// The whole negotiation: header, start/start-ok, tune/tune-ok, open/open-ok.
    pub async fn handshake_with(&mut self, tuning: Tuning) -> Handshake {
        let handshake = self.negotiate(&tuning).await;
        match self.expect_method(0).await {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
        handshake
    }

    /// The whole negotiation, or the connection.close the broker answers with instead of tune (a
    /// refused login) or open-ok (a refused vhost); the close is answered with close-ok.
    pub async fn try_handshake(&mut self, tuning: &Tuning) -> Result<Handshake, CloseInfo> {
        let start = self.start_and_start_ok(tuning).await;
        let tune = match self.next_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune))) => tune,
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                return Err(self.answer_connection_close(close).await)
            }
            other => panic!("expected connection.tune or close, got {other:?}"),
        };
        self.tune_ok_and_open(tuning, &tune).await;
        match self.next_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {
                Ok(Handshake { start, tune })
            }
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                Err(self.answer_connection_close(close).await)
            }
            other => panic!("expected connection.open-ok or close, got {other:?}"),
        }
    }

    /// connection.start read, start-ok sent as `tuning` says.
    async fn start_and_start_ok(&mut self, tuning: &Tuning) -> connection::Start {
        let start = self.start().await;
        self.send_start_ok_full(
            tuning.capabilities,
            tuning.connection_blocked,
            &tuning.mechanism,
            &tuning.response,
        )
        .await;
        start
    }

    /// Answers connection.tune as `tuning` asks (the server's values where it asks nothing) and
    /// sends connection.open.
    async fn tune_ok_and_open(&mut self, tuning: &Tuning, tune: &connection::Tune) {
        let tune_ok = connection::TuneOk {
            channel_max: tuning.channel_max.unwrap_or(tune.channel_max),
            frame_max: tuning.frame_max.unwrap_or(tune.frame_max),
            heartbeat: tuning.heartbeat,
        };
        self.frame_max = tune_ok.frame_max;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        )
        .await;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: tuning.vhost.as_str().into(),
            })),
        )
        .await;
    }

    async fn answer_connection_close(&mut self, close: connection::Close) -> CloseInfo {
        let mut out = BytesMut::new();
        encode_method(
            &mut out,
            0,
            &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
        let _ = self.try_send(&out).await;
        CloseInfo {
            code: close.reply_code,
            text: close.reply_text.as_str().to_string(),
            class_id: close.class_id,
            method_id: close.method_id,
        }
    }

    /// The negotiation up to and including sending connection.open (the answer is left unread).
    pub async fn negotiate(&mut self, tuning: &Tuning) -> Handshake {
        let start = self.start_and_start_ok(tuning).await;
        let tune = match self.expect_method(0).await {
            AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        self.tune_ok_and_open(tuning, &tune).await;
        Handshake { start, tune }
    }

    /// channel.open, asserting open-ok.
    pub async fn open_channel(&mut self, id: u16) {
        match self.call(id, channel_open()).await {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    // ---- closing -------------------------------------------------------------------------------

    /// The next non-heartbeat frame must be connection.close; answers close-ok.
    pub async fn expect_connection_close(&mut self) -> CloseInfo {
        let (ch, method) = self.next_method().await;
        let close = match (ch, method) {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => c,
            other => panic!("expected connection.close, got {other:?}"),
        };
        let _ = self
            .try_send(&{
                let mut out = BytesMut::new();
                encode_method(
                    &mut out,
                    0,
                    &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                out
            })
            .await;
        CloseInfo {
            code: close.reply_code,
            text: close.reply_text.as_str().to_string(),
            class_id: close.class_id,
            method_id: close.method_id,
        }
    }

    /// The next non-heartbeat frame must be channel.close on `id`; answers close-ok.
    pub async fn expect_channel_close(&mut self, id: u16) -> CloseInfo {
        let close = match self.expect_method(id).await {
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => c,
            other => panic!("expected channel.close on channel {id}, got {other:?}"),
        };
        self.send_method(
            id,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        )
        .await;
        CloseInfo {
            code: close.reply_code,
            text: close.reply_text.as_str().to_string(),
            class_id: close.class_id,
            method_id: close.method_id,
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
            match self.next_method().await {
                (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => return,
                _ => continue,
            }
        }
    }
}

/// A TCP connection to the broker on 127.0.0.1, optionally from a chosen local address.
pub async fn tcp_connect(port: u16, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let broker = SocketAddr::from(([127, 0, 0, 1], port));
    match source {
        None => TcpStream::connect(broker).await,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(broker).await
        }
    }
}
