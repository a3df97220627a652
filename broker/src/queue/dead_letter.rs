//! Dead-lettering (RabbitMQ semantics): messages rejected without requeue, expired, dropped by a length
//! limit or over their delivery limit are republished to the queue's dead-letter exchange with an
//! `x-death` history, unless that would close a cycle of automatic dead-lettering.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use warren_protocol::content::{header_entries, splice_properties};

use super::{Entry, Queue};
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
const DEATH_HEADERS: [&str; 8] = [
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
pub type DeadLetters = Vec<(Entry, Reason)>;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn field(t: &FieldTable, k: &str) -> Option<String> {
    t.inner().get(k).and_then(as_text)
}

/// The new `x-death` list (most recent first) and the rest of the headers, as RabbitMQ 3.13 writes them.
fn with_death(
    message: &Message,
    headers: Option<FieldTable>,
    queue: &str,
    reason: Reason,
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
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            t.insert("time".into(), AMQPValue::Timestamp(now));
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
fn is_cycle(target: &str, headers: &FieldTable) -> bool {
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

/// Dead-letters a message whose properties cannot take an `x-death` entry (stored by an older version
/// under rules since tightened; publish refuses such properties today) as it is, rather than
/// losing it. Without x-death there is no cycle detection, so it never goes back to
/// the queue it left.
fn unchanged(
    queue: &Arc<Queue>,
    vhost: &crate::vhost::Vhost,
    exchange: Option<&Arc<crate::exchange::Exchange>>,
    old: &Arc<Message>,
    why: &str,
) {
    tracing::error!(
        queue = ?queue.name(),
        why,
        "a dead letter's properties cannot take x-death: it is dead-lettered unchanged"
    );
    let fixed = queue.args.dead_letter_routing_key.as_deref();
    let key = fixed.unwrap_or(&old.routing_key);
    let on_behalf_of = match (fixed, &queue.spec.declared_by) {
        (Some(_), Some(declarer)) => declarer.clone(),
        _ => old.publisher.clone(),
    };
    let targets = crate::vhost::route_keys(
        vhost,
        exchange,
        &old.properties,
        &on_behalf_of,
        std::iter::once((key, false)),
    );
    for target in targets {
        if !Arc::ptr_eq(&target, queue) {
            target.publish(old.clone(), None);
        }
    }
}

/// Republishes `letters` to `queue`'s dead-letter exchange; without one (or if it is gone) they are dropped.
pub fn dead_letter(queue: &Arc<Queue>, letters: DeadLetters) {
    if letters.is_empty() {
        return;
    }
    queue.forget(letters.iter().map(|(e, _)| e));
    let Some(dlx) = &queue.args.dead_letter_exchange else {
        return;
    };
    let Some(vhost) = queue.vhost.upgrade() else {
        return;
    };
    let exchange = if dlx.is_empty() {
        None
    } else {
        match vhost.exchange(dlx) {
            Ok(x) => Some(x),
            Err(_) => return,
        }
    };
    for (entry, reason) in letters {
        let old = &entry.message;
        // Only the entries dead-lettering reads are decoded; everything else is spliced through
        // byte for byte (strings no decoder accepts included). Properties stored by an older
        // version that today's rules refuse (a deeper nesting, a continuation flag) cannot be read
        // at all: the message is dead-lettered as it is rather than lost.
        let Ok(found) = header_entries(&old.properties, &DEATH_HEADERS) else {
            unchanged(queue, &vhost, exchange.as_ref(), old, "do not parse");
            continue;
        };
        let headers = with_death(old, Some(found), queue.name(), reason);
        // RabbitMQ routes a dead letter by the DLX routing key alone when one is set (dropping CC),
        // otherwise by its original routing key and CC keys.
        let fixed = queue.args.dead_letter_routing_key.is_some();
        let keys: Vec<String> = match &queue.args.dead_letter_routing_key {
            Some(key) => vec![key.clone()],
            None => std::iter::once(old.routing_key.clone())
                .chain(string_list(&headers, "CC"))
                .collect(),
        };
        // The broker's own entries are written anew; CC stays as published, or goes with a fixed key.
        let mut written = headers.inner().clone();
        written.remove("CC");
        let replaced: Vec<&str> = DEATH_HEADERS
            .iter()
            .copied()
            .filter(|k| fixed || *k != "CC")
            .collect();
        let spliced =
            splice_properties(&old.properties, &replaced, &FieldTable::from(written), true);
        let Ok(properties) = spliced else {
            unchanged(
                queue,
                &vhost,
                exchange.as_ref(),
                old,
                "cannot be re-encoded",
            );
            continue;
        };
        let routing_key = queue
            .args
            .dead_letter_routing_key
            .clone()
            .unwrap_or_else(|| old.routing_key.clone());
        let charge = old
            .charge
            .as_ref()
            .map(|c| c.sibling((properties.len() + old.body.len()) as u64));
        let message = Arc::new(Message {
            exchange: dlx.clone(),
            routing_key,
            publisher: old.publisher.clone(),
            properties,
            body: old.body.clone(),
            priority: old.priority,
            expiration_ms: None,
            charge,
            persistent: old.persistent,
            published_at_ms: crate::message::now_ms(),
            stored: Default::default(),
        });
        // A dead letter travels on its publisher's behalf: its original keys must pass the topic write
        // permission of the dead-letter exchange (and of every hop after it). A fixed
        // x-dead-letter-routing-key is the declarer's choice: checked at queue.declare, and again
        // here on the declarer's behalf, so narrowing their permission (or a queue declared before
        // this check existed) takes effect.
        let on_behalf_of = match (&queue.args.dead_letter_routing_key, &queue.spec.declared_by) {
            (Some(_), Some(declarer)) => declarer.clone(),
            _ => message.publisher.clone(),
        };
        let targets = crate::vhost::route_keys(
            &vhost,
            exchange.as_ref(),
            &message.properties,
            &on_behalf_of,
            keys.iter().map(|k| (k.as_str(), false)),
        );
        for target in targets {
            if !is_cycle(target.name(), &headers) {
                target.publish(message.clone(), None);
            }
        }
    }
}
