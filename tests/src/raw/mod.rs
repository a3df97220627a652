//! The tests' frame-level client: the shared connection of warren-wire-client behind a panicking
//! facade, so a test reads as the conversation it checks (`raw.call(1, queue_declare("q"))`) and a
//! broker that answers wrongly, late or not at all fails it with a clear message. Every wait for the
//! broker is bounded by [`TIMEOUT`]; heartbeats the readers skip are counted.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use amq_protocol::protocol::{basic, channel, AMQPClass};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;
use warren_broker::pki::Pem;
use warren_protocol::frame::{encode_frame_with, FrameKind, RawFrame};
use warren_protocol::method::encode_method;
use warren_wire_client::{client_config, frame_method, ClientCert, Conn, Endpoint, Error};

use crate::{TestBroker, TIMEOUT};

mod attempt;
mod build;
mod close;
mod negotiate;
pub use build::*;
pub use warren_wire_client::methods::*;
pub use warren_wire_client::{encode_publish, Handshake, Tuning, NO_PROPERTIES};

/// Which client certificate the TLS handshake presents.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The dev PKI's `admin` certificate.
    Admin,
    Cert(Pem),
    /// No client certificate at all.
    None,
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

/// Channels opened by [`RawClient::attempt`] start here, clear of the numbers tests pick by hand.
const FIRST_ATTEMPT_CHANNEL: u16 = 1000;

/// A TLS connection driven frame by frame.
pub struct RawClient {
    conn: Conn,
    /// The frame_max used to split outgoing bodies (4096 until tune-ok; the connection's, kept here
    /// for tests that encode publishes themselves).
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
        let cert = pem.as_ref().map(|pem| ClientCert {
            chain: pem.cert.as_bytes(),
            key: pem.key.as_bytes(),
        });
        let config = client_config(&broker.pki.ca_cert, cert, true).expect("TLS client config");
        let endpoint =
            Endpoint::new(broker_addr(broker.port), config, "localhost").expect("server name");
        let stream = tokio::time::timeout(TIMEOUT, endpoint.connect(source))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect"))??;
        let conn = Conn::new(stream, TIMEOUT);
        Ok(RawClient {
            frame_max: conn.frame_max,
            conn,
            heartbeats_seen: 0,
            next_attempt_channel: FIRST_ATTEMPT_CHANNEL,
        })
    }

    /// This client's end of the TCP connection (what the broker sees as the peer).
    pub fn local_addr(&self) -> SocketAddr {
        self.conn
            .stream()
            .get_ref()
            .0
            .local_addr()
            .expect("local address")
    }

    /// The certificate the broker presented in the TLS handshake (DER).
    pub fn server_certificate(&self) -> Vec<u8> {
        self.conn
            .stream()
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
        tokio::time::timeout(TIMEOUT, self.conn.write(bytes))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write"))?
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("write to the broker");
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
        self.read_frame_within(TIMEOUT)
            .await
            .unwrap_or_else(|()| panic!("no frame from the broker within {TIMEOUT:?}"))
    }

    /// Like [`Self::read_frame`] but returns `Err(())` instead of panicking after `wait`.
    pub async fn read_frame_within(&mut self, wait: Duration) -> Result<Option<RawFrame>, ()> {
        match tokio::time::timeout(wait, self.conn.read_frame()).await {
            Err(_) => Err(()),
            Ok(Ok(frame)) => Ok(frame),
            // A TLS error (a refused certificate, a reset) ends the connection as EOF does.
            Ok(Err(Error::Io(_))) => Ok(None),
            Ok(Err(e)) => panic!("{e}"),
        }
    }

    /// Every byte the broker sends until it closes the connection (bounded by [`TIMEOUT`]).
    pub async fn read_until_closed(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.conn.fill()).await {
                Err(_) => panic!(
                    "the broker did not close the connection within {TIMEOUT:?} (received {:?})",
                    &self.conn.take_buffered()[..]
                ),
                Ok(Err(_)) => return self.conn.take_buffered().to_vec(),
                Ok(Ok(())) => {}
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
        let method = frame_method(&frame).unwrap_or_else(|e| panic!("{e}"));
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

    /// channel.open, asserting open-ok.
    pub async fn open_channel(&mut self, id: u16) {
        match self.call(id, channel_open()).await {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
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
}

fn broker_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A TCP connection to the broker on 127.0.0.1, optionally from a chosen local address.
pub async fn tcp_connect(
    port: u16,
    source: Option<IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    warren_wire_client::tcp_connect(broker_addr(port), source).await
}
