//! Connection negotiation (spec 2.2.4): protocol header, start/start-ok with SASL EXTERNAL, tune/tune-ok,
//! open/open-ok. The whole exchange must finish within the AMQP handshake timeout, and frames are
//! limited to 4096 octets until tune-ok.

use std::net::SocketAddr;

use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tracing::{info, warn};
use warren_protocol::constants::{FRAME_MIN_SIZE, PROTOCOL_HEADER};
use warren_protocol::frame::{decode_frame, FrameError, FrameKind, RawFrame};
use warren_protocol::method::{decode_method, encode_method};

use crate::audit::Event;
use crate::broker::Broker;
use crate::connection::session::ClientCapabilities;
use crate::error::AmqpError;
use crate::users::User;
use crate::vhost::{Vhost, VhostConnection};
use std::sync::Arc;

/// What a successful negotiation settled.
pub(crate) struct Negotiated {
    pub user: Arc<User>,
    /// Holds the connection's place in the vhost's connection count.
    pub vhost_connection: VhostConnection,
    pub vhost: Arc<Vhost>,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    pub capabilities: ClientCapabilities,
}

/// Why negotiation ended without an open connection.
pub(crate) enum HandshakeError {
    /// The socket closed or failed; nothing more to send.
    Gone,
    /// A bad protocol header: answer with ours and close.
    BadHeader,
    /// Close with connection.close carrying this error.
    Refused(AmqpError),
}

/// Bytes sent to the client and the read buffer, shared with the caller so pipelined frames survive.
pub struct Io<'a, R> {
    pub reader: &'a mut R,
    pub rbuf: &'a mut BytesMut,
    pub out: &'a mut BytesMut,
    pub writer: &'a mpsc::Sender<Bytes>,
}

impl<R: AsyncRead + Unpin> Io<'_, R> {
    async fn flush(&mut self) -> Result<(), HandshakeError> {
        if !self.out.is_empty() {
            self.writer
                .send(self.out.split().freeze())
                .await
                .map_err(|_| HandshakeError::Gone)?;
        }
        Ok(())
    }

    async fn read_frame(&mut self, frame_max: u32) -> Result<RawFrame, HandshakeError> {
        loop {
            match decode_frame(self.rbuf, frame_max) {
                Ok(Some(f)) if f.kind == FrameKind::Heartbeat => continue,
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(FrameError::TooLarge { size, max }) => {
                    return Err(HandshakeError::Refused(AmqpError::frame_error(format!(
                        "type 1, all octets = <<>>: {{frame_too_large,{},{}}}",
                        size - 8,
                        max - 8
                    ))))
                }
                Err(e) => return Err(HandshakeError::Refused(AmqpError::frame_error(e))),
            }
            self.rbuf.reserve(4096);
            match self.reader.read_buf(self.rbuf).await {
                Ok(0) | Err(_) => return Err(HandshakeError::Gone),
                Ok(_) => {}
            }
        }
    }

    /// Reads the next method on channel 0, which must be `expected` (class 10, method id).
    async fn read_connection_method(
        &mut self,
        frame_max: u32,
        expected: &str,
    ) -> Result<connection::AMQPMethod, HandshakeError> {
        let frame = self.read_frame(frame_max).await?;
        let unexpected = || {
            HandshakeError::Refused(AmqpError::command_invalid(format!("expected '{expected}'")))
        };
        if frame.kind != FrameKind::Method || frame.channel != 0 {
            return Err(unexpected());
        }
        match decode_method(&frame.payload) {
            Ok(AMQPClass::Connection(m)) => Ok(m),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(HandshakeError::Refused(AmqpError::syntax_error(e))),
        }
    }
}

/// RabbitMQ 3.13's server properties, with the capabilities Warren really implements.
fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props.insert("cluster_name".into(), text("warren"));
    props.insert("copyright".into(), text("Copyright (c) the Warren authors"));
    props.insert(
        "information".into(),
        text("Licensed under the Apache License 2.0"),
    );
    props.insert("platform".into(), text("Rust"));
    props.insert("product".into(), text("Warren"));
    props.insert("version".into(), text(env!("CARGO_PKG_VERSION")));
    props
}

/// What a client's connection.start-ok properties say it understands (consumer_cancel_notify, ...).
pub fn client_capabilities(props: &FieldTable) -> ClientCapabilities {
    let Some(AMQPValue::FieldTable(caps)) = props.inner().get("capabilities") else {
        return ClientCapabilities::default();
    };
    let on = |k: &str| matches!(caps.inner().get(k), Some(AMQPValue::Boolean(true)));
    ClientCapabilities {
        consumer_cancel_notify: on("consumer_cancel_notify"),
        connection_blocked: on("connection.blocked"),
    }
}

/// Runs the negotiation. `identity` is the certificate identity, or why there is none.
pub(crate) async fn negotiate<R: AsyncRead + Unpin>(
    broker: &Broker,
    io: &mut Io<'_, R>,
    identity: Result<String, String>,
    peer: SocketAddr,
) -> Result<Negotiated, HandshakeError> {
    while io.rbuf.len() < 8 {
        match io.reader.read_buf(io.rbuf).await {
            Ok(0) | Err(_) => {
                return Err(if io.rbuf.is_empty() {
                    HandshakeError::Gone
                } else {
                    HandshakeError::BadHeader
                });
            }
            Ok(_) => {}
        }
    }
    if &io.rbuf[..8] != PROTOCOL_HEADER {
        return Err(HandshakeError::BadHeader);
    }
    let _ = io.rbuf.split_to(8);
    let start = connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: server_properties(),
        mechanisms: LongString::from(if broker.config.auth.password_bridge {
            "EXTERNAL PLAIN AMQPLAIN"
        } else {
            "EXTERNAL"
        }),
        locales: LongString::from("en_US"),
    };
    encode_method(
        io.out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Start(start)),
    );
    io.flush().await?;

    let start_ok = match io
        .read_connection_method(FRAME_MIN_SIZE, "connection.start-ok")
        .await?
    {
        connection::AMQPMethod::StartOk(s) => s,
        _ => {
            return Err(HandshakeError::Refused(AmqpError::command_invalid(
                "expected 'connection.start-ok'",
            )))
        }
    };
    let (name, user) = authenticate(broker, &start_ok, identity, peer)?;
    let capabilities = client_capabilities(&start_ok.client_properties);

    let limits = &broker.config.limits;
    let tune = connection::Tune {
        channel_max: limits.channel_max,
        frame_max: limits.frame_max,
        heartbeat: limits.heartbeat,
    };
    encode_method(
        io.out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Tune(tune)),
    );
    io.flush().await?;
    let tune_ok = match io
        .read_connection_method(FRAME_MIN_SIZE, "connection.tune-ok")
        .await?
    {
        connection::AMQPMethod::TuneOk(t) => t,
        _ => {
            return Err(HandshakeError::Refused(AmqpError::command_invalid(
                "expected 'connection.tune-ok'",
            )))
        }
    };
    // 0 means "no limit" from the client's side: the server's limit applies.
    let frame_max = if tune_ok.frame_max == 0 {
        limits.frame_max
    } else {
        tune_ok.frame_max
    };
    let channel_max = if tune_ok.channel_max == 0 {
        limits.channel_max
    } else {
        tune_ok.channel_max
    };
    if frame_max < FRAME_MIN_SIZE || frame_max > limits.frame_max {
        return Err(HandshakeError::Refused(AmqpError::not_allowed(format!(
            "negotiated frame_max = {frame_max} is outside the allowed range ({FRAME_MIN_SIZE} to {})",
            limits.frame_max
        ))));
    }
    if channel_max > limits.channel_max {
        return Err(HandshakeError::Refused(AmqpError::not_allowed(format!(
            "negotiated channel_max = {channel_max} is higher than the maximum allowed value ({})",
            limits.channel_max
        ))));
    }

    let open = match io
        .read_connection_method(frame_max, "connection.open")
        .await?
    {
        connection::AMQPMethod::Open(o) => o,
        _ => {
            return Err(HandshakeError::Refused(AmqpError::command_invalid(
                "expected 'connection.open'",
            )))
        }
    };
    let vhost_name = open.virtual_host.as_str();
    let source = peer.to_string();
    let refuse_open = |e: AmqpError| {
        broker.audit.record(&Event {
            kind: "authorisation",
            action: "open vhost",
            user: &name,
            source: &source,
            vhost: Some(vhost_name),
            result: "denied",
            detail: Some(&e.text),
        });
        HandshakeError::Refused(e.during((10, 40)))
    };
    let Some(vhost) = broker.vhost(vhost_name) else {
        return Err(refuse_open(AmqpError::not_allowed(format!(
            "vhost {vhost_name} not found"
        ))));
    };
    if !user.can_access_vhost(vhost_name) {
        return Err(refuse_open(AmqpError::not_allowed(format!(
            "access to vhost '{vhost_name}' refused for user '{name}'"
        ))));
    }
    let vhost_connection = vhost.open_connection(&name).map_err(refuse_open)?;
    encode_method(
        io.out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
    );
    info!(%peer, user = ?name, vhost = ?vhost_name, "connection opened");
    Ok(Negotiated {
        user,
        vhost_connection,
        vhost,
        frame_max,
        channel_max,
        heartbeat: tune_ok.heartbeat,
        capabilities,
    })
}

/// SASL EXTERNAL: the identity comes from the certificate; the user must exist. Every outcome is
/// audited; the client only ever sees RabbitMQ's generic refusal.
fn authenticate(
    broker: &Broker,
    start_ok: &connection::StartOk,
    identity: Result<String, String>,
    peer: SocketAddr,
) -> Result<(String, Arc<User>), HandshakeError> {
    let source = peer.to_string();
    let mechanism = start_ok.mechanism.as_str();
    let audit = |user: &str, result: &'static str, detail: Option<&str>| {
        broker.audit.record(&Event {
            kind: "authentication",
            action: "login",
            user,
            source: &source,
            vhost: None,
            result,
            detail,
        });
    };
    let refuse = |user: &str, detail: &str| {
        crate::metrics::Counters::inc(&broker.metrics.auth_failed);
        warn!(%peer, user, reason = detail, "login refused");
        audit(user, "failure", Some(detail));
        HandshakeError::Refused(AmqpError::access_refused(format!(
            "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        )))
    };
    let name = identity.map_err(|why| refuse("", &why))?;
    let response = start_ok.response.as_bytes();
    let password = match mechanism {
        "EXTERNAL" => {
            // SASL EXTERNAL may carry an authorisation identity; it must then be the certificate's own.
            if !response.is_empty() && response != name.as_bytes() {
                return Err(refuse(
                    &name,
                    "requested identity differs from the certificate's",
                ));
            }
            None
        }
        "PLAIN" | "AMQPLAIN" if broker.config.auth.password_bridge => {
            let (login, password) = crate::sasl::parse_password_response(mechanism, response)
                .ok_or_else(|| refuse(&name, "malformed password response"))?;
            // The bridge adds a password to the certificate; it never replaces it.
            if login != name {
                return Err(refuse(
                    &name,
                    &format!("user name '{login}' is not the certificate's identity"),
                ));
            }
            Some(password)
        }
        other => return Err(refuse(&name, &format!("mechanism {other} is not offered"))),
    };
    let user = broker
        .user(&name)
        .ok_or_else(|| refuse(&name, "no such user"))?;
    if let Some(password) = password {
        let verified = user
            .password_hash
            .as_deref()
            .is_some_and(|h| crate::password::verify(h, &password));
        if !verified {
            return Err(refuse(&name, "invalid credentials"));
        }
    }
    audit(&name, "success", None);
    crate::metrics::Counters::inc(&broker.metrics.auth_succeeded);
    Ok((name, user))
}
