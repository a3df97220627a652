//! Republishing a queue's dead letters through its dead-letter exchange, as the vhost that holds the
//! queue does once the queue's lock is released: the history is written (queue/dead_letter.rs), each
//! route into a topic exchange passes the topic permission of the user on whose behalf it travels,
//! and a target that would close a cycle of automatic dead-lettering is skipped.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use warren_protocol::content::{header_entries, splice_properties};
use warren_protocol::field::string_list;

use super::Vhost;
use crate::message::Message;
use crate::queue::dead_letter::{is_cycle, with_death, DeadLetters, DEATH_HEADERS};
use crate::queue::Queue;
use crate::time::Now;

/// On whose behalf a dead letter travels into topic exchanges: its publisher, whose keys they are;
/// with a fixed x-dead-letter-routing-key, the queue's declarer, whose choice that key was (checked
/// at queue.declare, and again here so that narrowing their permission takes effect).
fn on_behalf_of(queue: &Queue, publisher: &Arc<str>) -> Arc<str> {
    match (
        &queue.live_args().dead_letter_routing_key,
        &queue.spec.declared_by,
    ) {
        (Some(_), Some(declarer)) => declarer.clone(),
        _ => publisher.clone(),
    }
}

/// Dead-letters a message whose properties cannot take an `x-death` entry (stored by an older version
/// under rules since tightened; publish refuses such properties today) as it is, rather than
/// losing it. Without x-death there is no cycle detection, so it never goes back to
/// the queue it left.
fn unchanged(
    queue: &Arc<Queue>,
    vhost: &Vhost,
    exchange: Option<&Arc<crate::exchange::Exchange>>,
    old: &Arc<Message>,
    why: &str,
    now: Now,
) {
    tracing::error!(
        queue = ?queue.name(),
        why,
        "a dead letter's properties cannot take x-death: it is dead-lettered unchanged"
    );
    let args = queue.live_args();
    let fixed = args.dead_letter_routing_key.as_deref();
    let key = fixed.unwrap_or(&old.routing_key);
    let on_behalf_of = on_behalf_of(queue, &old.publisher);
    let targets = super::route_keys(
        vhost,
        exchange,
        &old.properties,
        &on_behalf_of,
        std::iter::once((key, false)),
    );
    for target in targets {
        if !Arc::ptr_eq(&target, queue) {
            into(vhost, &target, old.clone(), now);
        }
    }
}

/// Enqueues a dead letter into `target`, or, on a cluster node, sends it to the node holding
/// `target` when that is a quorum queue this node does not host or a classic queue of another
/// node (its copy here holds only what this node's consumers were handed). Dead-lettering is at most once, as RabbitMQ's default: the
/// letter is not confirmed to anyone.
fn into(vhost: &Vhost, target: &Arc<Queue>, letter: Arc<Message>, now: Now) {
    if let Some(r) = vhost.replication.get() {
        let journal = match (target.args.quorum, r.is_copy(target)) {
            (true, _) => Some(&r.quorum),
            (false, true) => Some(&r.copies),
            _ => None,
        };
        if journal.is_some_and(|j| j.forward(&vhost.name, target, &letter)) {
            return;
        }
    }
    target.publish(letter, None, now);
}

/// Republishes `letters` to `queue`'s dead-letter exchange; without one (or if it is gone) they are dropped.
pub(crate) fn republish(vhost: &Vhost, queue: &Arc<Queue>, letters: DeadLetters, now: Now) {
    let args = queue.live_args();
    let Some(dlx) = &args.dead_letter_exchange else {
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
            unchanged(queue, vhost, exchange.as_ref(), old, "do not parse", now);
            continue;
        };
        let headers = with_death(old, Some(found), queue.name(), reason, now.wall_ms);
        // RabbitMQ routes a dead letter by the DLX routing key alone when one is set (dropping CC),
        // otherwise by its original routing key and CC keys.
        let fixed = args.dead_letter_routing_key.is_some();
        let keys: Vec<String> = match &args.dead_letter_routing_key {
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
                vhost,
                exchange.as_ref(),
                old,
                "cannot be re-encoded",
                now,
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
            published_at_ms: now.wall_ms,
            stored: Default::default(),
        });
        // Each hop into a topic exchange (the dead-letter exchange and every one after it) passes
        // the topic write permission of the user on whose behalf the dead letter travels.
        let on_behalf_of = on_behalf_of(queue, &message.publisher);
        let targets = super::route_keys(
            vhost,
            exchange.as_ref(),
            &message.properties,
            &on_behalf_of,
            keys.iter().map(|k| (k.as_str(), false)),
        );
        for target in targets {
            if !is_cycle(target.name(), &headers) {
                into(vhost, &target, message.clone(), now);
            }
        }
    }
}
