//! Dead-lettering (RabbitMQ semantics): messages rejected without requeue, expired, dropped by a length
//! limit or over their delivery limit are republished to the queue's dead-letter exchange with an
//! `x-death` history, unless that would close a cycle of automatic dead-lettering. This file holds
//! the history (`x-death`, the cycle rule); the queue's owner republishes (vhost/dead_letter.rs).

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};

use super::Entry;
use crate::message::Message;
use warren_protocol::field::{as_text, string_list};

/// Why a message left its queue for the dead-letter exchange (the `reason` in `x-death`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// The header entries dead-lettering reads (the history, CC keys) and writes.
pub(crate) const DEATH_HEADERS: [&str; 8] = [
    "x-death",
    "CC",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
];

/// Messages leaving a queue, collected under the queue's lock and dead-lettered after it is released
/// (a dead-letter route may lead back to the same queue).
pub(crate) type DeadLetters = Vec<(Entry, Reason)>;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn field(t: &FieldTable, k: &str) -> Option<String> {
    t.inner().get(k).and_then(as_text)
}

/// The new `x-death` list (most recent first) and the rest of the headers, as RabbitMQ 3.13 writes
/// them; `wall_ms` is when the message died (its `time`).
pub(crate) fn with_death(
    message: &Message,
    headers: Option<FieldTable>,
    queue: &str,
    reason: Reason,
    wall_ms: u64,
) -> FieldTable {
    let mut headers = headers.unwrap_or_default();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let existing = deaths.iter().position(|d| match d {
        AMQPValue::FieldTable(t) => {
            field(t, "queue").as_deref() == Some(queue)
                && field(t, "reason").as_deref() == Some(reason.as_str())
        }
        _ => false,
    });
    let entry = match existing.map(|i| deaths.remove(i)) {
        Some(AMQPValue::FieldTable(mut t)) => {
            let count = match t.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n + 1,
                _ => 1,
            };
            t.insert("count".into(), AMQPValue::LongLongInt(count));
            t
        }
        _ => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), text(reason.as_str()));
            t.insert("queue".into(), text(queue));
            t.insert("time".into(), AMQPValue::Timestamp(wall_ms / 1000));
            t.insert("exchange".into(), text(&message.exchange));
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(
                    std::iter::once(message.routing_key.clone())
                        .chain(string_list(&headers, "CC"))
                        .map(|k| text(&k))
                        .collect::<Vec<_>>(),
                )),
            );
            if let Some(ms) = message.expiration_ms {
                t.insert("original-expiration".into(), text(&ms.to_string()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    for (k, v) in [
        ("reason", reason.as_str()),
        ("queue", queue),
        ("exchange", message.exchange.as_str()),
    ] {
        let first = format!("x-first-death-{k}");
        if !headers.inner().contains_key(first.as_str()) {
            headers.insert(first.into(), text(v));
        }
        headers.insert(format!("x-last-death-{k}").into(), text(v));
    }
    headers
}

/// RabbitMQ's `is_cycle`: dead-lettering to `target` closes a cycle when `target` already appears in the
/// history and no death since (and including) that one was a rejection.
pub(crate) fn is_cycle(target: &str, headers: &FieldTable) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return false;
    };
    let mut reasons = Vec::new();
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = d else {
            continue;
        };
        reasons.push(field(t, "reason"));
        if field(t, "queue").as_deref() == Some(target) {
            return reasons.iter().all(|r| r.as_deref() != Some("rejected"));
        }
    }
    false
}
