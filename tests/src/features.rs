//! Helpers for the queue-feature tests (arguments, TTLs, dead-lettering, limits, transactions):
//! field tables as client libraries encode them, x-death as a consumer reads it, and channel
//! operations that wait for what the broker does asynchronously (confirms, dead letters, expiry),
//! each bounded by [`TIMEOUT`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amqprs::channel::{ConfirmSelectArguments, QueueDeclareArguments};
use amqprs::{BasicProperties, FieldArray, FieldName, FieldTable, FieldValue};
use tokio::time::Instant;

use crate::{ChannelEvent, CloseInfo, Delivery, TestChannel, Timely, TIMEOUT};

// ---- field values -------------------------------------------------------------------------------

/// A field table from `(key, value)` pairs.
pub fn table<const N: usize>(entries: [(&str, FieldValue); N]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in entries {
        t.insert(name(k), v);
    }
    t
}

fn name(key: &str) -> FieldName {
    key.try_into().expect("a short field name")
}

/// An integer as pika and kombu send a small Python int: a signed 32-bit `I` ("signedint").
pub fn int(v: i32) -> FieldValue {
    FieldValue::I(v)
}

/// A long string (`S`, "longstr").
pub fn text(v: &str) -> FieldValue {
    FieldValue::from(v)
}

pub fn boolean(v: bool) -> FieldValue {
    FieldValue::t(v)
}

/// An array of long strings (`A`), as the CC and BCC headers are sent.
pub fn texts(values: &[&str]) -> FieldValue {
    let items: Vec<FieldValue> = values.iter().map(|v| text(v)).collect();
    FieldValue::A(FieldArray::try_from(items).expect("a field array"))
}

/// The value of any integer field type.
pub fn as_int(value: &FieldValue) -> Option<i64> {
    Some(match value {
        FieldValue::b(v) => i64::from(*v),
        FieldValue::B(v) => i64::from(*v),
        FieldValue::s(v) => i64::from(*v),
        FieldValue::u(v) => i64::from(*v),
        FieldValue::I(v) => i64::from(*v),
        FieldValue::i(v) => i64::from(*v),
        FieldValue::l(v) => *v,
        _ => return None,
    })
}

/// The value of a long-string field.
pub fn as_text(value: &FieldValue) -> Option<String> {
    match value {
        FieldValue::S(v) => Some(v.to_string()),
        _ => None,
    }
}

/// The strings of an array of long strings.
pub fn as_texts(value: &FieldValue) -> Option<Vec<String>> {
    match value {
        FieldValue::A(items) => Vec::<FieldValue>::from(items.clone())
            .iter()
            .map(as_text)
            .collect(),
        _ => None,
    }
}

/// A field table's entries, by name.
pub fn entries(t: &FieldTable) -> BTreeMap<String, FieldValue> {
    t.as_ref()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Message properties with the given headers.
pub fn with_headers(headers: FieldTable) -> BasicProperties {
    let mut p = BasicProperties::default();
    p.with_headers(headers);
    p
}

/// Message properties with the given per-message TTL.
pub fn with_expiration(expiration: &str) -> BasicProperties {
    let mut p = BasicProperties::default();
    p.with_expiration(expiration);
    p
}

/// Message properties with the given priority.
pub fn with_priority(priority: u8) -> BasicProperties {
    let mut p = BasicProperties::default();
    p.with_priority(priority);
    p
}

// ---- x-death ------------------------------------------------------------------------------------

/// One entry of the x-death header.
#[derive(Debug, Clone)]
pub struct Death {
    /// Every field name the entry has.
    pub fields: BTreeSet<String>,
    pub count: Option<i64>,
    pub reason: Option<String>,
    pub queue: Option<String>,
    pub exchange: Option<String>,
    pub routing_keys: Option<Vec<String>>,
    pub original_expiration: Option<String>,
    /// The `time` field when it is an AMQP timestamp (seconds since the epoch).
    pub time: Option<u64>,
}

/// What an x-death entry must hold (RabbitMQ's fields; `time` is checked to be about now).
#[derive(Debug, Clone, Copy)]
pub struct ExpectedDeath<'a> {
    pub count: i64,
    pub reason: &'a str,
    pub queue: &'a str,
    pub exchange: &'a str,
    pub routing_keys: &'a [&'a str],
    pub original_expiration: Option<&'a str>,
}

impl Death {
    fn from_table(t: &FieldTable) -> Self {
        let e = entries(t);
        Death {
            fields: e.keys().cloned().collect(),
            count: e.get("count").and_then(as_int),
            reason: e.get("reason").and_then(as_text),
            queue: e.get("queue").and_then(as_text),
            exchange: e.get("exchange").and_then(as_text),
            routing_keys: e.get("routing-keys").and_then(as_texts),
            original_expiration: e.get("original-expiration").and_then(as_text),
            time: match e.get("time") {
                Some(FieldValue::T(t)) => Some(*t),
                _ => None,
            },
        }
    }

    /// (queue, reason, count), for compact assertions on a whole x-death list.
    pub fn summary(&self) -> (String, String, i64) {
        (
            self.queue.clone().unwrap_or_default(),
            self.reason.clone().unwrap_or_default(),
            self.count.unwrap_or(-1),
        )
    }

    /// Asserts the entry is exactly `expected`: the same set of fields as RabbitMQ writes, the same
    /// values, and a timestamp within a minute of now.
    pub fn check(&self, expected: ExpectedDeath<'_>) {
        let mut fields: BTreeSet<String> = [
            "count",
            "reason",
            "queue",
            "time",
            "exchange",
            "routing-keys",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if expected.original_expiration.is_some() {
            fields.insert("original-expiration".to_string());
        }
        assert_eq!(self.fields, fields, "x-death fields of {self:?}");
        let keys: Vec<String> = expected
            .routing_keys
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            (
                self.count,
                self.reason.as_deref(),
                self.queue.as_deref(),
                self.exchange.as_deref(),
                self.routing_keys.as_ref(),
                self.original_expiration.as_deref(),
            ),
            (
                Some(expected.count),
                Some(expected.reason),
                Some(expected.queue),
                Some(expected.exchange),
                Some(&keys),
                expected.original_expiration,
            ),
            "x-death entry {self:?}"
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let time = self.time.expect("x-death time is a timestamp");
        assert!(time.abs_diff(now) < 60, "x-death time {time}, now {now}");
    }
}

/// The x-first-death-* headers RabbitMQ sets on the first dead-lettering.
pub fn first_death(queue: &str, reason: &str, exchange: &str) -> [(&'static str, FieldValue); 3] {
    [
        ("x-first-death-queue", text(queue)),
        ("x-first-death-reason", text(reason)),
        ("x-first-death-exchange", text(exchange)),
    ]
}

impl Delivery {
    /// A header's value, whatever its type.
    pub fn header_value(&self, key: &str) -> Option<&FieldValue> {
        self.properties.headers()?.get(&name(key))
    }

    /// The x-death entries, newest first (empty when there is no x-death header).
    pub fn deaths(&self) -> Vec<Death> {
        match self.header_value("x-death") {
            None => Vec::new(),
            Some(FieldValue::A(items)) => Vec::<FieldValue>::from(items.clone())
                .iter()
                .map(|item| match item {
                    FieldValue::F(t) => Death::from_table(t),
                    other => panic!("x-death entry is not a table: {other:?}"),
                })
                .collect(),
            Some(other) => panic!("x-death is not an array: {other:?}"),
        }
    }

    /// Every header except x-death and x-last-death-* (RabbitMQ 3.13 writes the latter; neither
    /// their presence nor their absence is asserted, as in the Python suite).
    pub fn other_headers(&self) -> BTreeMap<String, FieldValue> {
        self.properties
            .headers()
            .map(entries)
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k != "x-death" && !k.starts_with("x-last-death-"))
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Headers as a consumer receives them: exactly the given ones.
pub fn header_map<const N: usize>(
    headers: [(&str, FieldValue); N],
) -> BTreeMap<String, FieldValue> {
    headers
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

// ---- channel operations -------------------------------------------------------------------------

/// How the broker confirmed one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    Ack,
    Nack,
    /// basic.return (mandatory, unroutable), then the ack.
    ReturnedThenAck,
}

impl TestChannel {
    /// queue.declare with arguments; panics (naming the channel.close) if refused.
    pub async fn declare_queue_with(
        &self,
        name: &str,
        arguments: FieldTable,
    ) -> (String, u32, u32) {
        let mut args = QueueDeclareArguments::new(name);
        args.arguments(arguments);
        self.declare(args).await
    }

    /// Any queue.declare; panics (naming the channel.close) if refused.
    pub async fn declare(&self, args: QueueDeclareArguments) -> (String, u32, u32) {
        let what = format!("{args:?}");
        match self.queue_declare(args).timely().await {
            Ok(ok) => ok.expect("declare-ok"),
            Err(e) => self.fail(&what, e).await,
        }
    }

    /// Any queue.declare: Ok(name, messages, consumers), or the channel.close it caused.
    pub async fn try_declare(
        &self,
        args: QueueDeclareArguments,
    ) -> Result<(String, u32, u32), CloseInfo> {
        match self.queue_declare(args).timely().await {
            Ok(ok) => Ok(ok.expect("declare-ok")),
            Err(_) => Err(self.expect_close().await),
        }
    }

    /// Messages ready in `queue` (passive declare).
    pub async fn message_count(&self, queue: &str) -> u32 {
        let mut args = QueueDeclareArguments::new(queue);
        args.passive(true);
        self.declare(args).await.1
    }

    /// confirm.select.
    pub async fn select_confirms(&self) {
        match self
            .confirm_select(ConfirmSelectArguments::new(false))
            .timely()
            .await
        {
            Ok(()) => {}
            Err(e) => self.fail("confirm.select", e).await,
        }
    }

    /// Publishes on a channel in confirm mode and waits for the broker's verdict on that message.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
    ) -> Confirm {
        self.publish_confirmed_with(exchange, routing_key, properties, body, false)
            .await
    }

    pub async fn publish_confirmed_with(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
        mandatory: bool,
    ) -> Confirm {
        self.publish_with(exchange, routing_key, properties, body, mandatory)
            .await;
        let mut returned = false;
        loop {
            match self.next_event().await {
                ChannelEvent::Ack { .. } if returned => return Confirm::ReturnedThenAck,
                ChannelEvent::Ack { .. } => return Confirm::Ack,
                ChannelEvent::Nack { .. } => return Confirm::Nack,
                ChannelEvent::Returned { .. } if !returned => returned = true,
                other => panic!("expected the confirm of a publish, got {other:?}"),
            }
        }
    }

    /// Publishes `body` with `properties` and asserts the broker acks it.
    pub async fn publish_acked(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: &[u8],
    ) {
        assert_eq!(
            self.publish_confirmed(exchange, routing_key, properties, body)
                .await,
            Confirm::Ack,
            "confirm of {:?}",
            String::from_utf8_lossy(body)
        );
    }

    /// basic.get until a message comes (dead-lettering and expiry are asynchronous), within
    /// [`TIMEOUT`].
    pub async fn get_one(&self, queue: &str, no_ack: bool) -> Delivery {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(d) = self.get(queue, no_ack).await {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "no message in {queue} within {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// basic.get (no-ack) until `n` messages came or `wait` passed, then whatever else is there.
    pub async fn get_n(&self, queue: &str, n: usize, wait: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match self.get(queue, true).await {
                Some(d) => out.push(d),
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        out.extend(self.drain(queue).await);
        out
    }
}
