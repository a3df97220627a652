//! The application's view: amqprs over mutual TLS with SASL EXTERNAL, with every server-initiated
//! method (channel.close, connection.close, basic.cancel, confirms, returns) forwarded to queues the
//! test reads with a timeout, and consumers read through [`Consumer`].

use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{
    BasicConsumeArguments, BasicGetArguments, BasicPublishArguments, Channel, ConsumerMessage,
    QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::security::SecurityCredentials;
use amqprs::tls::TlsAdaptor;
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, Nack, Return};
use async_trait::async_trait;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Mutex;

use crate::{TestBroker, Timely, TIMEOUT};

type AmqprsResult<T> = Result<T, amqprs::error::Error>;

/// A connection.close or channel.close as the peer sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl CloseInfo {
    pub fn new(code: u16, text: &str, class_id: u16, method_id: u16) -> Self {
        CloseInfo {
            code,
            text: text.to_string(),
            class_id,
            method_id,
        }
    }
}

/// A close read by the raw client (warren-wire-client).
impl From<warren_wire_client::Closed> for CloseInfo {
    fn from(c: warren_wire_client::Closed) -> Self {
        CloseInfo {
            code: c.code,
            text: c.text,
            class_id: c.class_id,
            method_id: c.method_id,
        }
    }
}

/// Something the broker initiated on a channel.
#[derive(Debug)]
pub enum ChannelEvent {
    Closed(CloseInfo),
    Cancelled(String),
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
    },
    Returned {
        code: u16,
        text: String,
        exchange: String,
        routing_key: String,
        body: Vec<u8>,
    },
}

struct ChannelEvents(UnboundedSender<ChannelEvent>);

#[async_trait]
impl ChannelCallback for ChannelEvents {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> AmqprsResult<()> {
        let _ = self.0.send(ChannelEvent::Closed(CloseInfo {
            code: close.reply_code(),
            text: close.reply_text().clone(),
            class_id: close.class_id(),
            method_id: close.method_id(),
        }));
        Ok(())
    }

    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> AmqprsResult<()> {
        let _ = self
            .0
            .send(ChannelEvent::Cancelled(cancel.consumer_tag().clone()));
        Ok(())
    }

    async fn flow(&mut self, _: &Channel, active: bool) -> AmqprsResult<bool> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        let _ = self.0.send(ChannelEvent::Ack {
            tag: ack.delivery_tag(),
            multiple: ack.mutiple(),
        });
    }

    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        let _ = self.0.send(ChannelEvent::Nack {
            tag: nack.delivery_tag(),
            multiple: nack.multiple(),
        });
    }

    async fn publish_return(
        &mut self,
        _: &Channel,
        ret: Return,
        _: BasicProperties,
        body: Vec<u8>,
    ) {
        let _ = self.0.send(ChannelEvent::Returned {
            code: ret.reply_code(),
            text: ret.reply_text().clone(),
            exchange: ret.exchange().clone(),
            routing_key: ret.routing_key().clone(),
            body,
        });
    }
}

struct ConnectionEvents(UnboundedSender<CloseInfo>);

#[async_trait]
impl ConnectionCallback for ConnectionEvents {
    async fn close(&mut self, _: &Connection, close: Close) -> AmqprsResult<()> {
        let _ = self.0.send(CloseInfo {
            code: close.reply_code(),
            text: close.reply_text().clone(),
            class_id: close.class_id(),
            method_id: close.method_id(),
        });
        Ok(())
    }
    async fn blocked(&mut self, _: &Connection, _: String) {}
    async fn unblocked(&mut self, _: &Connection) {}
    async fn secret_updated(&mut self, _: &Connection) {}
}

/// An amqprs connection and the connection.close the broker may send on it.
pub struct Client {
    pub conn: Connection,
    closes: UnboundedReceiver<CloseInfo>,
}

impl TestBroker {
    /// Connects as `admin` with the dev PKI's client certificate.
    pub async fn connect(&self) -> Client {
        self.connect_as(&self.pki.admin_cert, &self.pki.admin_key, None)
            .await
            .expect("admin connects")
    }

    /// Connects with a heartbeat interval requested in tune-ok (0 = take the broker's).
    pub async fn connect_with_heartbeat(&self, heartbeat: u16) -> Client {
        self.connect_as(&self.pki.admin_cert, &self.pki.admin_key, Some(heartbeat))
            .await
            .expect("admin connects")
    }

    /// The admin's connection with two channels: one for declaring and consuming, one in confirm
    /// mode for publishing (the usual set-up of a feature test).
    pub async fn connect_with_confirming_channel(&self) -> (Client, TestChannel, TestChannel) {
        let client = self.connect().await;
        let ch = client.channel().await;
        let pch = client.channel().await;
        pch.select_confirms().await;
        (client, ch, pch)
    }

    /// Connects with the given client certificate; the error is whatever amqprs reports.
    pub async fn connect_as(
        &self,
        cert: &Path,
        key: &Path,
        heartbeat: Option<u16>,
    ) -> Result<Client, amqprs::error::Error> {
        self.open(
            cert,
            key,
            heartbeat,
            "/",
            SecurityCredentials::new_external(),
        )
        .await
    }

    /// Connects as `name` with a fresh certificate from the broker's CA (EXTERNAL, vhost `/`).
    pub async fn connect_user(&self, name: &str) -> Client {
        let (cert, key) = self.user_cert_files(name);
        self.connect_as(&cert, &key, None)
            .await
            .unwrap_or_else(|e| panic!("{name} connects: {e}"))
    }

    /// Connects with the given certificate to `vhost`, authenticating with `credentials` (EXTERNAL,
    /// or PLAIN/AMQPLAIN through the password bridge).
    pub async fn connect_with(
        &self,
        (cert, key): (&Path, &Path),
        vhost: &str,
        credentials: SecurityCredentials,
    ) -> Result<Client, amqprs::error::Error> {
        self.open(cert, key, None, vhost, credentials).await
    }

    async fn open(
        &self,
        cert: &Path,
        key: &Path,
        heartbeat: Option<u16>,
        vhost: &str,
        credentials: SecurityCredentials,
    ) -> Result<Client, amqprs::error::Error> {
        let tls = TlsAdaptor::with_client_auth(
            Some(&self.pki.ca_cert),
            cert,
            key,
            "localhost".to_string(),
        )
        .expect("TLS adaptor");
        let mut args = OpenConnectionArguments::new("127.0.0.1", self.port, "", "");
        args.credentials(credentials)
            .virtual_host(vhost)
            .tls_adaptor(tls);
        if let Some(heartbeat) = heartbeat {
            args.heartbeat(heartbeat);
        }
        let conn = Connection::open(&args).timely().await?;
        let (tx, closes) = unbounded_channel();
        conn.register_callback(ConnectionEvents(tx))
            .timely()
            .await
            .expect("connection callback registered");
        Ok(Client { conn, closes })
    }
}

impl Client {
    /// Opens a channel with every server-initiated method forwarded to [`TestChannel::next_event`].
    pub async fn channel(&self) -> TestChannel {
        let ch = self
            .conn
            .open_channel(None)
            .timely()
            .await
            .expect("channel opens");
        let (tx, events) = unbounded_channel();
        ch.register_callback(ChannelEvents(tx))
            .timely()
            .await
            .expect("channel callback registered");
        TestChannel {
            ch,
            events: Mutex::new(events),
        }
    }

    /// The connection.close the broker sends next.
    pub async fn expect_close(&mut self) -> CloseInfo {
        match tokio::time::timeout(TIMEOUT, self.closes.recv()).await {
            Ok(Some(close)) => close,
            Ok(None) => panic!("connection ended without a connection.close"),
            Err(_) => panic!("no connection.close within {TIMEOUT:?}"),
        }
    }

    /// Closes the connection cleanly (connection.close / close-ok).
    pub async fn close(self) {
        self.conn
            .close()
            .timely()
            .await
            .expect("connection closes cleanly");
    }
}

/// An amqprs channel plus the methods the broker initiated on it.
pub struct TestChannel {
    pub ch: Channel,
    events: Mutex<UnboundedReceiver<ChannelEvent>>,
}

impl Deref for TestChannel {
    type Target = Channel;
    fn deref(&self) -> &Channel {
        &self.ch
    }
}

impl TestChannel {
    /// The next server-initiated method on this channel.
    pub async fn next_event(&self) -> ChannelEvent {
        let mut events = self.events.lock().await;
        match tokio::time::timeout(TIMEOUT, events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("channel ended without further events"),
            Err(_) => panic!("no channel event within {TIMEOUT:?}"),
        }
    }

    /// Asserts no server-initiated method arrives for [`crate::QUIET`].
    pub async fn assert_no_event(&self) {
        let mut events = self.events.lock().await;
        if let Ok(Some(event)) = tokio::time::timeout(crate::QUIET, events.recv()).await {
            panic!("unexpected channel event: {event:?}");
        }
    }

    /// The channel.close the broker sends next; publisher confirms arriving before it are skipped.
    pub async fn expect_close(&self) -> CloseInfo {
        loop {
            match self.next_event().await {
                ChannelEvent::Closed(close) => return close,
                ChannelEvent::Ack { .. } | ChannelEvent::Nack { .. } => {}
                other => panic!("expected channel.close, got {other:?}"),
            }
        }
    }

    /// The channel.close that refused a call: `result` must be an error (the call was refused), and
    /// the broker's close is returned for the test to compare.
    pub async fn refused<T: std::fmt::Debug>(
        &self,
        result: Result<T, amqprs::error::Error>,
    ) -> CloseInfo {
        assert!(result.is_err(), "expected a refusal, got {result:?}");
        self.expect_close().await
    }

    /// Panics for a failed amqprs call, naming the channel.close that caused it if one arrives.
    pub async fn fail(&self, what: &str, error: amqprs::error::Error) -> ! {
        let mut events = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
            if let ChannelEvent::Closed(close) = event {
                panic!("{what} failed: the broker closed the channel with {close:?}");
            }
        }
        panic!("{what} failed: {error}");
    }

    /// Declares a non-durable, non-exclusive queue; returns (name, messages, consumers).
    pub async fn declare_queue(&self, name: &str) -> (String, u32, u32) {
        match self
            .queue_declare(QueueDeclareArguments::new(name))
            .timely()
            .await
        {
            Ok(ok) => ok.expect("declare-ok"),
            Err(e) => self.fail(&format!("queue.declare {name:?}"), e).await,
        }
    }

    /// Declares a queue whose deliveries carry the publisher (`x-warren-publisher: true`).
    pub async fn declare_queue_showing_publisher(&self, name: &str) -> String {
        let mut args = QueueDeclareArguments::new(name);
        let mut table = amqprs::FieldTable::new();
        table.insert(
            "x-warren-publisher".try_into().expect("a field name"),
            amqprs::FieldValue::t(true),
        );
        args.arguments(table);
        match self.queue_declare(args).timely().await {
            Ok(ok) => ok.expect("declare-ok").0,
            Err(e) => self.fail(&format!("queue.declare {name:?}"), e).await,
        }
    }

    /// Publishes `body` with no properties.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        self.publish_with(
            exchange,
            routing_key,
            BasicProperties::default(),
            body,
            false,
        )
        .await;
    }

    pub async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
        mandatory: bool,
    ) {
        let mut args = BasicPublishArguments::new(exchange, routing_key);
        args.mandatory(mandatory);
        self.basic_publish(properties, body.to_vec(), args)
            .timely()
            .await
            .expect("basic.publish written");
    }

    /// basic.consume; `manual_ack` false means no-ack. Returns the consumer tag and its deliveries.
    pub async fn consume(&self, queue: &str, tag: &str, manual_ack: bool) -> (String, Consumer) {
        let mut args = BasicConsumeArguments::new(queue, tag);
        args.manual_ack(manual_ack);
        self.consume_with(args).await
    }

    pub async fn consume_with(&self, args: BasicConsumeArguments) -> (String, Consumer) {
        let what = format!("basic.consume {:?}", args.queue);
        match self.basic_consume_rx(args).timely().await {
            Ok((tag, rx)) => (tag, Consumer { rx }),
            Err(e) => self.fail(&what, e).await,
        }
    }

    /// basic.get; None for get-empty.
    pub async fn get(&self, queue: &str, no_ack: bool) -> Option<Delivery> {
        let mut args = BasicGetArguments::new(queue);
        args.no_ack(no_ack);
        let got = match self.basic_get(args).timely().await {
            Ok(got) => got?,
            Err(e) => self.fail(&format!("basic.get {queue:?}"), e).await,
        };
        let (get_ok, properties, body) = got;
        Some(Delivery {
            consumer_tag: String::new(),
            tag: get_ok.delivery_tag(),
            redelivered: get_ok.redelivered(),
            exchange: get_ok.exchange().clone(),
            routing_key: get_ok.routing_key().clone(),
            message_count: Some(get_ok.message_count()),
            properties,
            body,
        })
    }

    /// Bodies of every message left in `queue`, taken with basic.get no-ack (at most 1000).
    pub async fn drain(&self, queue: &str) -> Vec<Delivery> {
        let mut all = Vec::new();
        while let Some(d) = self.get(queue, true).await {
            all.push(d);
            assert!(all.len() <= 1000, "queue {queue} does not drain");
        }
        all
    }
}

/// A message as a consumer or basic.get saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub consumer_tag: String,
    pub tag: u64,
    pub redelivered: bool,
    pub exchange: String,
    pub routing_key: String,
    /// basic.get-ok's message-count (None for deliveries).
    pub message_count: Option<u32>,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl Delivery {
    /// A header's value when it is a long string (None when absent or of another type).
    pub fn header(&self, key: &str) -> Option<String> {
        let key: amqprs::FieldName = key.try_into().expect("a short header name");
        match self.properties.headers()?.get(&key)? {
            amqprs::FieldValue::S(value) => Some(value.to_string()),
            _ => None,
        }
    }
}

/// Deliveries to one consumer.
pub struct Consumer {
    rx: UnboundedReceiver<ConsumerMessage>,
}

impl Consumer {
    pub async fn recv(&mut self) -> Delivery {
        let msg = match tokio::time::timeout(TIMEOUT, self.rx.recv()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => panic!("consumer ended before the expected delivery"),
            Err(_) => panic!("no delivery within {TIMEOUT:?}"),
        };
        let deliver = msg.deliver.expect("deliver");
        Delivery {
            consumer_tag: deliver.consumer_tag().clone(),
            tag: deliver.delivery_tag(),
            redelivered: deliver.redelivered(),
            exchange: deliver.exchange().clone(),
            routing_key: deliver.routing_key().clone(),
            message_count: None,
            properties: msg.basic_properties.expect("properties"),
            body: msg.content.expect("content"),
        }
    }

    pub async fn recv_n(&mut self, n: usize) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.recv().await);
        }
        out
    }

    /// Asserts a consumer cancelled before gets nothing more within `wait`.
    pub async fn assert_ended(&mut self, wait: Duration) {
        if let Ok(Some(msg)) = tokio::time::timeout(wait, self.rx.recv()).await {
            panic!(
                "a delivery after the cancel: {:?}",
                msg.content
                    .map(|c| String::from_utf8_lossy(&c).into_owned())
            );
        }
    }

    /// Asserts nothing more is delivered for `wait`, and that the consumer is still there (one
    /// whose channel closed meanwhile would be quiet too).
    pub async fn assert_quiet(&mut self, wait: Duration) {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(msg)) => panic!(
                "unexpected delivery: {:?}",
                msg.content
                    .map(|c| String::from_utf8_lossy(&c).into_owned())
            ),
            Ok(None) => panic!("the consumer ended while it was expected to be quiet"),
            Err(_) => {}
        }
    }
}

/// Bodies as strings, for readable assertions.
pub fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.body).into_owned())
        .collect()
}
