//! One task per connection owns the socket's read side and every channel's state: it decodes frames,
//! runs the channel state machines, takes deliveries pushed by queues, and hands encoded frames to the
//! writer task in batches (one batch per burst of input, so frames coalesce into few TLS records).

pub mod handshake;
pub mod outbound;
pub mod session;
pub mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{channel as chan, connection, AMQPClass};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;
use tracing::{debug, info, warn, Instrument};
use warren_protocol::constants::{reply, FRAME_OVERHEAD, PROTOCOL_HEADER};
use warren_protocol::frame::{decode_frame, encode_heartbeat, FrameError, FrameKind, RawFrame};
use warren_protocol::method::{decode_method, method_ids, MethodError};

use crate::admission::PendingSlot;
use crate::broker::{Broker, ConnectionInfo};
use crate::channel::Channel;
use crate::error::{octets_snippet, AmqpError};
use crate::flow;
use crate::identity::identity_from_certificate;
use crate::queue::consumer::Delivery;
use crate::queue::consumer::Limit;
use handshake::{HandshakeError, Io};
use outbound::Outbound;
use session::{Session, NO_ACK_WRITE_BUDGET};

/// How long a closing connection waits for the client's close-ok.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// Deliveries taken from the outbox before the batch is written out.
const OUTBOX_BATCH: usize = 512;

/// A channel number's state: open, or closed by the server and waiting for the client's close-ok.
enum Slot {
    Open(Box<Channel>),
    AwaitingCloseOk,
}

/// Serves one TLS connection from protocol header to close.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    pending: PendingSlot,
) {
    let identity = match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        Some(cert) => identity_from_certificate(cert, &broker.config.auth.identity_rule())
            .map_err(|e| e.to_string()),
        None => Err("no client certificate".to_string()),
    };
    let span = tracing::info_span!("conn", %peer, user = tracing::field::Empty);
    async move {
        let (mut reader, write_half) = tokio::io::split(stream);
        let (batches, batch_rx) = mpsc::channel::<Bytes>(writer::WRITE_QUEUE_BATCHES);
        let writer_task = tokio::spawn(writer::run(write_half, batch_rx));
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::with_capacity(16 * 1024);
        let timeout = Duration::from_millis(broker.config.limits.amqp_handshake_timeout_ms);
        let negotiated = {
            let mut io = Io {
                reader: &mut reader,
                rbuf: &mut rbuf,
                out: &mut out,
                writer: &batches,
            };
            match tokio::time::timeout(
                timeout,
                handshake::negotiate(&broker, &mut io, identity, peer),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => {
                    info!("AMQP handshake timed out");
                    Err(HandshakeError::Gone)
                }
            }
        };
        match negotiated {
            Ok(n) => {
                // Negotiated: the connection no longer counts against the pre-authentication caps.
                drop(pending);
                tracing::Span::current().record("user", n.user.name.as_str());
                let (outbox, outbox_rx) = mpsc::unbounded_channel();
                let id = broker.next_connection_id();
                let _registered = broker.register_connection(
                    id,
                    ConnectionInfo {
                        peer,
                        user: n.user.name.clone(),
                        vhost: n.vhost.name.clone(),
                        outbox: outbox.clone(),
                    },
                );
                let session = Session {
                    broker: broker.clone(),
                    id,
                    peer,
                    publisher: Arc::from(n.user.name.as_str()),
                    user: n.user,
                    vhost: n.vhost,
                    frame_max: n.frame_max,
                    capabilities: n.capabilities,
                    out,
                    outbox,
                    write_budget: Arc::new(Limit::new(NO_ACK_WRITE_BUDGET)),
                    published: false,
                    last_grant: Default::default(),
                    flow: Default::default(),
                    waiting: None,
                    reruns: 0,
                    counts: Default::default(),
                    published_ever: false,
                };
                let conn = Connection {
                    s: session,
                    channels: HashMap::new(),
                    channel_max: n.channel_max,
                    heartbeat: n.heartbeat,
                    batches: batches.clone(),
                    last_sent: Instant::now(),
                    last_received: Instant::now(),
                    blocked: false,
                    paused: None,
                    incarnations: 0,
                    _vhost_connection: n.vhost_connection,
                };
                conn.run(reader, rbuf, outbox_rx, stop).await;
            }
            Err(HandshakeError::BadHeader) => {
                out.extend_from_slice(PROTOCOL_HEADER);
                let _ = batches.send(out.split().freeze()).await;
            }
            Err(HandshakeError::Refused(e)) => {
                info!(code = e.code, text = ?e.text, "connection refused during negotiation");
                encode_close(&mut out, &e);
                let _ = batches.send(out.split().freeze()).await;
                // Give the client a moment to read the close before the socket goes (RabbitMQ waits too).
                wait_close_ok(&mut reader, &mut rbuf).await;
            }
            Err(HandshakeError::Gone) => {}
        }
        drop(batches);
        let _ = writer_task.await;
    }
    .instrument(span)
    .await
}

fn encode_close(out: &mut BytesMut, e: &AmqpError) {
    let close = connection::Close {
        reply_code: e.code,
        reply_text: e.text.as_str().into(),
        class_id: e.class_id,
        method_id: e.method_id,
    };
    warren_protocol::method::encode_method(
        out,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(close)),
    );
}

/// After sending connection.close, reads (and ignores) frames until close-ok, EOF or the timeout.
/// Waits for the method waiting for the metadata group, if there is one.
async fn until_done(waiting: &mut Option<session::Waiting>) -> Result<(), String> {
    match waiting {
        Some(w) => (&mut w.done).await,
        None => std::future::pending().await,
    }
}

async fn wait_close_ok<R: AsyncRead + Unpin>(reader: &mut R, rbuf: &mut BytesMut) {
    let wait = async {
        loop {
            while let Ok(Some(frame)) = decode_frame(rbuf, 0) {
                if frame.kind == FrameKind::Method && frame.channel == 0 {
                    if let Ok(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) =
                        decode_method(&frame.payload)
                    {
                        return;
                    }
                }
            }
            if decode_frame(rbuf, 0).is_err() {
                return;
            }
            rbuf.reserve(4096);
            match reader.read_buf(rbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, wait).await;
}

/// How the main loop ends.
enum Ending {
    /// The client closed the connection (close-ok already queued) or the socket went away.
    Done,
    /// The server closes with this error: send connection.close, await close-ok.
    Close(AmqpError),
    /// Heartbeats missed: drop the socket without a close (RabbitMQ does the same).
    Silent,
}

struct Connection {
    s: Session,
    channels: HashMap<u16, Slot>,
    channel_max: u16,
    heartbeat: u16,
    batches: mpsc::Sender<Bytes>,
    last_sent: Instant,
    last_received: Instant,
    /// Not reading from the socket because the memory alarm is on and this connection publishes.
    blocked: bool,
    /// Not reading from the socket since then: per-publisher flow control (crate::flow).
    paused: Option<Instant>,
    /// Channels opened so far (each gets a distinct incarnation number).
    incarnations: u64,
    _vhost_connection: crate::vhost::VhostConnection,
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut reader: R,
        mut rbuf: BytesMut,
        mut outbox_rx: mpsc::UnboundedReceiver<Outbound>,
        mut stop: watch::Receiver<bool>,
    ) {
        let tick = if self.heartbeat > 0 {
            Duration::from_millis(u64::from(self.heartbeat) * 500)
        } else {
            Duration::from_secs(3600)
        };
        let mut alarm = self.s.broker.alarms.subscribe();
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Frames pipelined behind connection.open are already buffered.
        let mut ending = self.process_frames(&mut rbuf);
        while ending.is_none() {
            if !self.flush().await {
                ending = Some(Ending::Done);
                break;
            }
            tokio::select! {
                read = reader.read_buf(&mut rbuf), if !self.blocked && self.paused.is_none() && self.s.waiting.is_none() => {
                    match read {
                        Ok(0) | Err(_) => { ending = Some(Ending::Done); }
                        Ok(_) => {
                            self.last_received = Instant::now();
                            ending = self.process_frames(&mut rbuf);
                            self.block_if_alarmed();
                            self.pause_if_behind();
                        }
                    }
                    if rbuf.capacity() - rbuf.len() < 4096 {
                        rbuf.reserve(64 * 1024);
                    }
                }
                Some(first) = outbox_rx.recv() => {
                    ending = self.handle_outbound(first);
                    for _ in 0..OUTBOX_BATCH {
                        if ending.is_some() {
                            break;
                        }
                        match outbox_rx.try_recv() {
                            Ok(more) => ending = self.handle_outbound(more),
                            Err(_) => break,
                        }
                    }
                    self.s.flow.end_burst(&self.s.broker.flow_activity, Instant::now());
                    // Queues push on to no-ack consumers whose deliveries this burst wrote, and
                    // the burst's deliveries and confirms are counted.
                    self.after_batch();
                }
                _ = tokio::time::sleep(flow::POLL), if self.paused.is_some() => {
                    let now = Instant::now();
                    let since = self.paused.unwrap_or(now);
                    if now.saturating_duration_since(since) >= self.s.broker.flow_activity.settings.max_pause
                        || self.s.flow.may_resume(&self.s.broker.flow_activity, now)
                    {
                        self.paused = None;
                        self.last_received = now;
                        if !self.blocked {
                            // Frames that arrived before the pause are already buffered. No new
                            // pause before the socket has been read once: MAX_PAUSE is a bound.
                            ending = self.process_frames(&mut rbuf);
                            self.block_if_alarmed();
                        }
                    }
                }
                Ok(()) = alarm.changed() => {
                    let on = *alarm.borrow_and_update();
                    if !on && self.blocked {
                        self.blocked = false;
                        self.last_received = Instant::now();
                        if self.s.capabilities.connection_blocked {
                            self.s.send(0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})));
                        }
                        // Frames that arrived while blocked are already buffered.
                        ending = self.process_frames(&mut rbuf);
                        self.block_if_alarmed();
                        self.pause_if_behind();
                    }
                }
                done = until_done(&mut self.s.waiting), if self.s.waiting.is_some() => {
                    ending = self.resume(done);
                    if ending.is_none() {
                        // Frames that arrived behind the method are already buffered.
                        ending = self.process_frames(&mut rbuf);
                        self.block_if_alarmed();
                        self.pause_if_behind();
                    }
                }
                _ = ticker.tick() => ending = self.heartbeat_tick(),
                _ = stop.changed() => {
                    ending = Some(Ending::Close(AmqpError::new(
                        reply::CONNECTION_FORCED,
                        "broker forced connection closure with reason 'shutdown'",
                    )));
                }
            }
        }
        // Nothing more reaches this connection: release every channel, then whatever is still in flight.
        self.close_all_channels();
        outbox_rx.close();
        while let Ok(pending) = outbox_rx.try_recv() {
            // Deliveries go back to their queues; a second close request changes nothing.
            let _ = self.handle_outbound(pending);
        }
        let now = crate::time::Now::read();
        for queue in self.s.vhost.queues_owned_by(self.s.id) {
            self.s.vhost.retire_queue(&queue, now);
        }
        match ending {
            Some(Ending::Close(e)) => {
                info!(code = e.code, text = ?e.text, "closing connection");
                self.s.out.clear();
                encode_close(&mut self.s.out, &e);
                if self.flush().await {
                    wait_close_ok(&mut reader, &mut rbuf).await;
                }
            }
            Some(Ending::Silent) => self.s.out.clear(),
            _ => {
                self.flush().await;
            }
        }
        debug!("connection finished");
    }

    /// Hands the encoded frames to the writer; false if the writer is gone.
    async fn flush(&mut self) -> bool {
        if self.s.out.is_empty() {
            return true;
        }
        self.last_sent = Instant::now();
        self.batches.send(self.s.out.split().freeze()).await.is_ok()
    }

    /// RabbitMQ's resource alarm: a connection that publishes while the alarm is on stops being read
    /// (consumers elsewhere keep draining), after connection.blocked for clients that understand it.
    fn block_if_alarmed(&mut self) {
        if std::mem::take(&mut self.s.published) && !self.blocked && self.s.broker.alarms.in_alarm()
        {
            self.blocked = true;
            if self.s.capabilities.connection_blocked {
                let blocked = connection::Blocked {
                    reason: self.s.broker.alarms.reason().into(),
                };
                self.s.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Blocked(blocked)),
                );
            }
        }
    }

    /// Per-publisher flow control (crate::flow): after a burst of input, stop reading while a behind
    /// queue this connection feeds has had more than its credit and other traffic is moving. Silent,
    /// unlike the alarm: the pause is short and bounded, and clients need not know.
    fn pause_if_behind(&mut self) {
        let now = Instant::now();
        let activity = &self.s.broker.flow_activity;
        self.s.flow.end_burst(activity, now);
        if self.paused.is_none() && self.s.flow.should_pause(activity, now) {
            self.paused = Some(now);
        }
    }

    fn heartbeat_tick(&mut self) -> Option<Ending> {
        let interval = Duration::from_secs(u64::from(self.heartbeat));
        if self.heartbeat == 0 {
            return None;
        }
        // A blocked connection is not read, so its silence proves nothing (RabbitMQ pauses the check
        // too); nor is one waiting for the metadata group.
        if !self.blocked
            && self.paused.is_none()
            && self.s.waiting.is_none()
            && self.last_received.elapsed() > interval * 2
        {
            warn!(timeout_s = self.heartbeat, "missed heartbeats from client");
            return Some(Ending::Silent);
        }
        if self.last_sent.elapsed() >= interval / 2 {
            encode_heartbeat(&mut self.s.out);
        }
        None
    }

    fn frame_max(&self) -> u32 {
        self.s.frame_max
    }

    /// Decodes and handles every complete frame in `rbuf`; returns how the connection ends, if it does.
    fn process_frames(&mut self, rbuf: &mut BytesMut) -> Option<Ending> {
        loop {
            if self.s.waiting.is_some() {
                // Frames stay buffered, in order, until the waiting method is done.
                break;
            }
            let frame = match decode_frame(rbuf, self.frame_max()) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(FrameError::TooLarge { size, max }) => {
                    return Some(Ending::Close(AmqpError::frame_error(format!(
                        "type {}, all octets = <<>>: {{frame_too_large,{},{}}}",
                        rbuf[0],
                        size - u64::from(FRAME_OVERHEAD),
                        max - FRAME_OVERHEAD
                    ))));
                }
                Err(FrameError::BadFrameEnd(b)) => {
                    return Some(Ending::Close(AmqpError::frame_error(format!(
                        "type {}, {}: {{invalid_frame_end_marker,{b}}}",
                        rbuf[0],
                        octets_snippet(&rbuf[7..rbuf.len().min(23)])
                    ))));
                }
                Err(FrameError::UnknownType(t)) => {
                    // RabbitMQ reads the whole frame before judging its type, so its text shows the payload.
                    let size = u32::from_be_bytes([rbuf[3], rbuf[4], rbuf[5], rbuf[6]]) as usize;
                    let payload = &rbuf[7..rbuf.len().min(7 + size)];
                    return Some(Ending::Close(AmqpError::frame_error(format!(
                        "type {t}, {}: unknown_frame",
                        octets_snippet(payload)
                    ))));
                }
            };
            if let Some(ending) = self.handle_frame(frame) {
                return Some(ending);
            }
        }
        self.after_batch();
        None
    }

    /// Work deferred to the end of a burst of frames: coalesced confirms and dispatch after acks.
    fn after_batch(&mut self) {
        for slot in self.channels.values_mut() {
            if let Slot::Open(ch) = slot {
                ch.after_batch(&mut self.s);
            }
        }
        self.s.broker.metrics.add(&mut self.s.counts);
    }

    /// Runs a method again once its change through the metadata group is applied on this node
    /// (or closes the connection with 541 when the change was not made: the client can retry on
    /// another node).
    fn resume(&mut self, done: Result<(), String>) -> Option<Ending> {
        let waiting = self.s.waiting.take()?;
        if let Err(why) = done {
            self.s.reruns = 0;
            return Some(Ending::Close(
                AmqpError::internal(format!("the cluster did not make the change: {why}"))
                    .during(waiting.ids),
            ));
        }
        let Some(Slot::Open(ch)) = self.channels.get_mut(&waiting.channel) else {
            return None;
        };
        self.s.reruns += 1;
        let (class, method) = waiting.ids;
        let mut ids = [0u8; 4];
        ids[..2].copy_from_slice(&class.to_be_bytes());
        ids[2..].copy_from_slice(&method.to_be_bytes());
        let result = ch.handle_method(&mut self.s, waiting.method, &ids);
        if self.s.waiting.is_none() {
            self.s.reruns = 0;
        }
        match result {
            Ok(()) => None,
            Err(e) if e.is_soft() => {
                self.close_channel(waiting.channel, e);
                None
            }
            Err(e) => Some(Ending::Close(e)),
        }
    }

    fn handle_frame(&mut self, frame: RawFrame) -> Option<Ending> {
        if frame.channel == 0 {
            return self.handle_channel_zero(frame);
        }
        if frame.kind == FrameKind::Heartbeat {
            return Some(Ending::Close(AmqpError::unexpected_frame(format!(
                "type 8, {}",
                octets_snippet(&frame.payload)
            ))));
        }
        let id = frame.channel;
        match self.channels.get_mut(&id) {
            None => self.handle_unopened(frame),
            Some(Slot::AwaitingCloseOk) => {
                // A closing channel ignores everything but channel.close and channel.close-ok
                // (spec 4.2.6, rabbit_reader). A channel.close crossing ours is answered with
                // close-ok, and the channel stays closing until our close is acknowledged: the
                // client's close-ok for it is still on its way (pika sends it after a denied publish).
                if frame.kind == FrameKind::Method {
                    match decode_method(&frame.payload) {
                        Ok(AMQPClass::Channel(chan::AMQPMethod::CloseOk(_))) => {
                            self.channels.remove(&id);
                        }
                        Ok(AMQPClass::Channel(chan::AMQPMethod::Close(_))) => {
                            self.s.send(
                                id,
                                AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                            );
                        }
                        _ => {}
                    }
                }
                None
            }
            Some(Slot::Open(ch)) => {
                let result = match frame.kind {
                    FrameKind::Method => match decode_method(&frame.payload) {
                        Ok(AMQPClass::Channel(chan::AMQPMethod::Close(_))) => {
                            let Some(Slot::Open(mut ch)) = self.channels.remove(&id) else {
                                return None;
                            };
                            ch.close(&mut self.s);
                            self.s.send(
                                id,
                                AMQPClass::Channel(chan::AMQPMethod::CloseOk(chan::CloseOk {})),
                            );
                            return None;
                        }
                        Ok(method) => ch.handle_method(&mut self.s, method, &frame.payload),
                        Err(e) => Err(method_error(e, &frame.payload)),
                    },
                    FrameKind::Header => ch.handle_header(&mut self.s, frame.payload),
                    FrameKind::Body => ch.handle_body(&mut self.s, frame.payload),
                    FrameKind::Heartbeat => Ok(()),
                };
                match result {
                    Ok(()) => None,
                    Err(e) if e.is_soft() => {
                        self.close_channel(id, e);
                        None
                    }
                    Err(e) => Some(Ending::Close(e)),
                }
            }
        }
    }

    fn handle_unopened(&mut self, frame: RawFrame) -> Option<Ending> {
        let ids = method_ids(&frame.payload);
        if frame.kind != FrameKind::Method {
            return Some(Ending::Close(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            )));
        }
        // channel_max bounds how many channels are open (closing ones included), not their numbers:
        // any id may be opened while fewer are open (rabbit_reader:create_channel).
        let open = self.channels.len();
        if self.channel_max != 0 && open >= usize::from(self.channel_max) {
            return Some(Ending::Close(AmqpError::not_allowed(format!(
                "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                self.channel_max
            ))));
        }
        match decode_method(&frame.payload) {
            Ok(AMQPClass::Channel(chan::AMQPMethod::Open(_))) => {
                self.incarnations += 1;
                let channel = Channel::new(frame.channel, self.incarnations);
                crate::metrics::Counters::inc(&self.s.broker.metrics.channels_opened);
                self.channels
                    .insert(frame.channel, Slot::Open(Box::new(channel)));
                self.s.send(
                    frame.channel,
                    AMQPClass::Channel(chan::AMQPMethod::OpenOk(chan::OpenOk {})),
                );
                None
            }
            Ok(_) => Some(Ending::Close(
                AmqpError::channel_error("expected 'channel.open'").during(ids),
            )),
            Err(e) => Some(Ending::Close(method_error(e, &frame.payload))),
        }
    }

    fn handle_channel_zero(&mut self, frame: RawFrame) -> Option<Ending> {
        match frame.kind {
            FrameKind::Heartbeat => return None,
            FrameKind::Header | FrameKind::Body => {
                let t = if frame.kind == FrameKind::Header {
                    2
                } else {
                    3
                };
                return Some(Ending::Close(AmqpError::unexpected_frame(format!(
                    "type {t}, {}",
                    octets_snippet(&frame.payload)
                ))));
            }
            FrameKind::Method => {}
        }
        let ids = method_ids(&frame.payload);
        match decode_method(&frame.payload) {
            Ok(AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                debug!(
                    code = close.reply_code,
                    text = close.reply_text.as_str(),
                    "client closed the connection"
                );
                self.close_all_channels();
                self.s.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                Some(Ending::Done)
            }
            Ok(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => Some(Ending::Done),
            Ok(AMQPClass::Connection(
                connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_),
            )) => None,
            // Certificate identities have no secret to rotate: accept, as RabbitMQ's internal backend does.
            Ok(AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_))) => {
                self.s.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                        connection::UpdateSecretOk {},
                    )),
                );
                None
            }
            Ok(_) => Some(Ending::Close(
                AmqpError::channel_error("unexpected method in connection state running")
                    .during(ids),
            )),
            Err(e) => Some(Ending::Close(method_error(e, &frame.payload))),
        }
    }

    /// Closes a channel for a soft error: release its state now, then wait for the client's close-ok.
    fn close_channel(&mut self, id: u16, e: AmqpError) {
        if let Some(Slot::Open(mut ch)) = self.channels.remove(&id) {
            // Publishes accepted earlier in this burst are confirmed before the channel closes.
            ch.after_batch(&mut self.s);
            ch.close(&mut self.s);
        }
        debug!(channel = id, code = e.code, text = ?e.text, "closing channel");
        let close = chan::Close {
            reply_code: e.code,
            reply_text: e.text.as_str().into(),
            class_id: e.class_id,
            method_id: e.method_id,
        };
        self.s
            .send(id, AMQPClass::Channel(chan::AMQPMethod::Close(close)));
        self.channels.insert(id, Slot::AwaitingCloseOk);
    }

    fn close_all_channels(&mut self) {
        for (_, slot) in self.channels.drain() {
            if let Slot::Open(mut ch) = slot {
                ch.close(&mut self.s);
            }
        }
    }

    fn handle_outbound(&mut self, message: Outbound) -> Option<Ending> {
        match message {
            Outbound::Deliver(Delivery {
                consumer,
                queue,
                entry,
            }) => match self.channels.get_mut(&consumer.id.channel.0) {
                Some(Slot::Open(ch)) if ch.has_consumer(&consumer) => {
                    self.s.flow.delivered();
                    ch.deliver(&mut self.s, consumer, queue, entry)
                }
                // The consumer was cancelled or its channel closed while this was in flight: the message
                // never reached the client, so it goes back as it was.
                _ => {
                    consumer.release_credit(1);
                    queue.return_undelivered([entry], crate::time::Now::read());
                }
            },
            Outbound::Cancelled { channel, consumer } => {
                if let Some(Slot::Open(ch)) = self.channels.get_mut(&channel) {
                    ch.consumer_cancelled_by_server(&mut self.s, &consumer);
                }
            }
            Outbound::Confirmed {
                channel,
                incarnation,
                seq,
                ok,
            } => {
                if let Some(Slot::Open(ch)) = self.channels.get_mut(&channel) {
                    if ch.incarnation == incarnation {
                        ch.confirm_durable(&mut self.s, seq, ok);
                    }
                }
            }
            Outbound::Committed {
                channel,
                incarnation,
                ok,
            } => {
                if let Some(Slot::Open(ch)) = self.channels.get_mut(&channel) {
                    if ch.incarnation == incarnation {
                        if let Err(e) = ch.commit_durable(&mut self.s, ok) {
                            return Some(Ending::Close(e));
                        }
                    }
                }
            }
            Outbound::ForceClose(e) => return Some(Ending::Close(e)),
            Outbound::Report(answer) => {
                let mut channels: Vec<serde_json::Value> = self
                    .channels
                    .values()
                    .filter_map(|slot| match slot {
                        Slot::Open(ch) => Some(ch.report()),
                        _ => None,
                    })
                    .collect();
                channels.sort_by_key(|c| c["number"].as_u64());
                let _ = answer.send(channels);
            }
        }
        None
    }
}

/// Maps a method decoding failure to RabbitMQ's errors.
fn method_error(e: MethodError, payload: &[u8]) -> AmqpError {
    if payload.len() < 4 {
        // Too short to hold class and method ids: RabbitMQ's reader calls it an unknown frame.
        return AmqpError::frame_error(format!(
            "type 1, {}: unknown_frame",
            octets_snippet(payload)
        ));
    }
    match e {
        MethodError::Unknown {
            class_id,
            method_id,
        } => AmqpError::not_implemented(format!("unknown method {{{class_id},{method_id}}}"))
            .during((class_id, method_id)),
        MethodError::Malformed {
            class_id,
            method_id,
        } => {
            // `rabbit_misc:frame_error`: "cannot decode ~w" over the argument bytes after the ids.
            let args: Vec<String> = payload[4..].iter().map(u8::to_string).collect();
            AmqpError::frame_error(format!("cannot decode <<{}>>", args.join(",")))
                .during((class_id, method_id))
        }
    }
}
