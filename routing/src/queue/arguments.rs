//! Queue arguments (`x-*`): RabbitMQ's validation (type and range, with its error terms in the 406 text)
//! and its equivalence check on redeclare, and the typed view the queue acts on.

use std::fmt;

use amq_protocol::types::{AMQPValue, FieldTable};
use warren_protocol::field::{as_int, as_text, type_name};

use crate::error::{AmqpError, AmqpResult};
use crate::resource::Resource;

pub mod stream;

/// What a queue does when a length limit is reached (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// The arguments Warren acts on, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArguments {
    pub message_ttl_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    /// Whether the queue has its own `x-overflow` (which a policy's `overflow` does not change).
    pub overflow_declared: bool,
    pub max_priority: Option<u8>,
    pub single_active_consumer: bool,
    pub delivery_limit: Option<u64>,
    pub quorum: bool,
    /// `x-queue-mode: lazy`: page messages out as soon as more than one waits.
    pub lazy: bool,
    /// `x-max-in-memory-bytes` / `x-max-in-memory-length`: a lower memory budget for this queue.
    pub max_in_memory_bytes: Option<u64>,
    pub max_in_memory_length: Option<u64>,
    /// `x-warren-publisher: true`: every delivery from this queue (consumers and basic.get) carries
    /// the publisher's authenticated identity in the `x-warren-publisher` header.
    pub publisher_header: bool,
    /// `x-queue-type: stream`, with its retention (`x-max-age`, and `max_length_bytes`) and
    /// segment size.
    pub stream: bool,
    pub max_age_ms: Option<u64>,
    pub stream_max_segment_bytes: Option<u64>,
}

/// The queue and consumer argument that asks for the publisher's identity in delivered headers.
pub const PUBLISHER_ARGUMENT: &str = "x-warren-publisher";

/// A boolean argument (`x-single-active-consumer`, `x-warren-publisher`), RabbitMQ's type error else.
pub fn bool_arg(key: &str, v: &AMQPValue, resource: &Resource<'_>) -> AmqpResult<bool> {
    match v {
        AMQPValue::Boolean(b) => Ok(*b),
        other => Err(invalid(
            key,
            resource,
            format_args!("{{unacceptable_type,{}}}", type_name(other)),
        )),
    }
}

/// RabbitMQ's `?MAX_EXPIRY_TIMER`.
const MAX_EXPIRY: i128 = 4_294_967_295;

/// A value as RabbitMQ prints it inside quotes.
struct Bare<'a>(&'a AMQPValue);

impl fmt::Display for Bare<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = as_int(self.0) {
            return write!(f, "{i}");
        }
        if let Some(t) = as_text(self.0) {
            return f.write_str(&t);
        }
        match self.0 {
            AMQPValue::Boolean(b) => write!(f, "{b}"),
            AMQPValue::Timestamp(t) => write!(f, "{t}"),
            AMQPValue::Float(x) => write!(f, "{x}"),
            AMQPValue::Double(x) => write!(f, "{x}"),
            other => write!(f, "{other:?}"),
        }
    }
}

fn type_class(v: &AMQPValue) -> &'static str {
    if as_int(v).is_some() {
        "int"
    } else if matches!(v, AMQPValue::Float(_) | AMQPValue::Double(_)) {
        "float"
    } else {
        type_name(v)
    }
}

fn same_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => x == y,
        _ => match (as_text(a), as_text(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

/// The error term RabbitMQ prints with `~p` after "invalid arg 'x' for queue ...: ".
fn invalid(key: &str, resource: &Resource<'_>, term: impl fmt::Display) -> AmqpError {
    AmqpError::precondition(format!("invalid arg '{key}' for {resource}: {term}"))
}

fn int_arg(key: &str, v: &AMQPValue, resource: &Resource<'_>) -> AmqpResult<i128> {
    // rabbit_amqqueue:check_int_arg returns a formatted string, which `~p` prints in quotes.
    as_int(v).ok_or_else(|| {
        invalid(
            key,
            resource,
            format_args!("\"expected integer, got {}\"", type_name(v)),
        )
    })
}

fn non_negative(key: &str, v: &AMQPValue, resource: &Resource<'_>) -> AmqpResult<u64> {
    let n = int_arg(key, v, resource)?;
    if n < 0 {
        return Err(invalid(
            key,
            resource,
            format_args!("{{value_negative,{n}}}"),
        ));
    }
    Ok(n as u64)
}

fn expiry(key: &str, n: i128, resource: &Resource<'_>) -> AmqpResult<u64> {
    if n < 0 {
        return Err(invalid(
            key,
            resource,
            format_args!("{{value_negative,{n}}}"),
        ));
    }
    if n > MAX_EXPIRY {
        return Err(invalid(
            key,
            resource,
            format_args!("{{value_too_large,{n},{MAX_EXPIRY}}}"),
        ));
    }
    Ok(n as u64)
}

fn text_arg(key: &str, v: &AMQPValue, resource: &Resource<'_>) -> AmqpResult<String> {
    as_text(v).ok_or_else(|| {
        invalid(
            key,
            resource,
            format_args!("{{unacceptable_type,{}}}", type_name(v)),
        )
    })
}

/// Validates `args` as RabbitMQ's `rabbit_amqqueue:check_declare_arguments` does and returns the typed
/// view. Unknown keys are accepted and ignored (as RabbitMQ does), including `x-ha-policy` and the
/// in-memory limits oslo.messaging may send.
pub fn parse(args: &FieldTable, resource: &Resource<'_>) -> AmqpResult<QueueArguments> {
    let mut out = QueueArguments::default();
    let get = |k: &str| args.inner().get(k);
    // The type first (rabbit_amqqueue:check_queue_type), then the validators of the arguments that
    // type supports, then the arguments of other types.
    if let Some(v) = get("x-queue-type") {
        match text_arg("x-queue-type", v, resource)?.as_str() {
            "classic" => {}
            "quorum" => out.quorum = true,
            "stream" => return stream::parse(args, resource),
            other => {
                return Err(invalid(
                    "x-queue-type",
                    resource,
                    format_args!("\"unsupported queue type '{other}'\""),
                ))
            }
        }
    }
    if let Some(v) = get("x-expires") {
        let n = int_arg("x-expires", v, resource)?;
        if n == 0 {
            return Err(invalid("x-expires", resource, "{value_zero,0}"));
        }
        out.expires_ms = Some(expiry("x-expires", n, resource)?);
    }
    if let Some(v) = get("x-message-ttl") {
        let n = int_arg("x-message-ttl", v, resource)?;
        out.message_ttl_ms = Some(expiry("x-message-ttl", n, resource)?);
    }
    if let Some(v) = get("x-dead-letter-exchange") {
        out.dead_letter_exchange = Some(text_arg("x-dead-letter-exchange", v, resource)?);
    }
    if let Some(v) = get("x-dead-letter-routing-key") {
        let key = text_arg("x-dead-letter-routing-key", v, resource)?;
        if out.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                resource,
                "routing_key_but_no_dlx_defined",
            ));
        }
        out.dead_letter_routing_key = Some(key);
    }
    for key in [
        "x-max-length",
        "x-max-length-bytes",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-delivery-limit",
    ] {
        if let Some(v) = get(key) {
            let n = non_negative(key, v, resource)?;
            match key {
                "x-max-length" => out.max_length = Some(n),
                "x-max-length-bytes" => out.max_length_bytes = Some(n),
                "x-delivery-limit" => out.delivery_limit = Some(n),
                "x-max-in-memory-length" => out.max_in_memory_length = Some(n),
                _ => out.max_in_memory_bytes = Some(n),
            }
        }
    }
    if let (Some(v), false) = (get("x-max-priority"), out.quorum) {
        let n = non_negative("x-max-priority", v, resource)?;
        if n > 255 {
            return Err(invalid(
                "x-max-priority",
                resource,
                format_args!("{{max_value_exceeded,{n}}}"),
            ));
        }
        out.max_priority = Some(n as u8);
    }
    if let Some(v) = get("x-overflow") {
        out.overflow_declared = true;
        out.overflow = match text_arg("x-overflow", v, resource)?.as_str() {
            "drop-head" => Overflow::DropHead,
            "reject-publish" => Overflow::RejectPublish,
            "reject-publish-dlx" => Overflow::RejectPublishDlx,
            _ => return Err(invalid("x-overflow", resource, "invalid_overflow")),
        };
    }
    if let (Some(v), false) = (get("x-queue-mode"), out.quorum) {
        out.lazy = match text_arg("x-queue-mode", v, resource)?.as_str() {
            "default" => false,
            "lazy" => true,
            other => {
                return Err(invalid(
                    "x-queue-mode",
                    resource,
                    format_args!("\"unsupported queue mode '{other}'\""),
                ))
            }
        };
    }
    if let Some(v) = get("x-single-active-consumer") {
        out.single_active_consumer = bool_arg("x-single-active-consumer", v, resource)?;
    }
    if let Some(v) = get(PUBLISHER_ARGUMENT) {
        out.publisher_header = bool_arg(PUBLISHER_ARGUMENT, v, resource)?;
    }
    if out.quorum {
        quorum_arguments(args, resource)?;
    }
    Ok(out)
}

/// Arguments of other queue types a quorum queue refuses (rabbit_queue_type: classic and stream
/// capabilities that rabbit_quorum_queue lacks).
const NOT_QUORUM: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// A quorum queue's own arguments, validated as RabbitMQ 3.10 does, then the first argument of
/// another queue type (in the client's table order) refused.
fn quorum_arguments(args: &FieldTable, resource: &Resource<'_>) -> AmqpResult<()> {
    let get = |k: &str| args.inner().get(k);
    if let Some(v) = get("x-dead-letter-strategy") {
        if !matches!(
            text_arg("x-dead-letter-strategy", v, resource)?.as_str(),
            "at-most-once" | "at-least-once"
        ) {
            return Err(invalid(
                "x-dead-letter-strategy",
                resource,
                "invalid_dlx_strategy",
            ));
        }
    }
    cluster_size(args, "x-quorum-initial-group-size", resource)?;
    leader_locator(args, resource)?;
    if let Some((key, _)) = args
        .inner()
        .iter()
        .find(|(k, _)| NOT_QUORUM.contains(&k.as_str()))
    {
        return Err(AmqpError::precondition(format!(
            "invalid arg '{key}' for {resource} of queue type rabbit_quorum_queue"
        )));
    }
    Ok(())
}

/// An initial cluster size (`x-quorum-initial-group-size`, a stream's `x-initial-cluster-size`):
/// a positive integer (RabbitMQ's `check_initial_cluster_size_arg`).
fn cluster_size(args: &FieldTable, key: &str, resource: &Resource<'_>) -> AmqpResult<()> {
    let Some(v) = args.inner().get(key) else {
        return Ok(());
    };
    match int_arg(key, v, resource)? {
        0 => Err(invalid(key, resource, "{value_zero,0}")),
        n if n < 0 => Err(invalid(
            key,
            resource,
            format_args!("{{value_negative,{n}}}"),
        )),
        _ => Ok(()),
    }
}

/// `x-queue-leader-locator` (quorum queues and streams).
fn leader_locator(args: &FieldTable, resource: &Resource<'_>) -> AmqpResult<()> {
    if let Some(v) = args.inner().get("x-queue-leader-locator") {
        if !matches!(
            text_arg("x-queue-leader-locator", v, resource)?.as_str(),
            "client-local" | "balanced" | "random" | "least-leaders"
        ) {
            return Err(invalid(
                "x-queue-leader-locator",
                resource,
                "invalid_queue_locator_arg",
            ));
        }
    }
    Ok(())
}

/// The declare properties a quorum queue refuses, in RabbitMQ's order (rabbit_quorum_queue's
/// `check_auto_delete`, `check_exclusive`, `check_non_durable`).
pub fn check_quorum_properties(
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    resource: &Resource<'_>,
) -> AmqpResult<()> {
    let refused = if auto_delete {
        "auto-delete"
    } else if exclusive {
        "exclusive-owner"
    } else if !durable {
        "non-durable"
    } else {
        return Ok(());
    };
    Err(AmqpError::precondition(format!(
        "invalid property '{refused}' for {resource}"
    )))
}

/// For a queue read back from the log: its arguments validated one by one, keeping every key today's
/// rules accept and returning the refusal of each one they do not (a rule tightened between versions
/// must not cost the queue or its messages). Keys are tried in table order, which puts
/// `x-dead-letter-exchange` before `x-dead-letter-routing-key`.
pub(crate) fn parse_stored(
    args: &FieldTable,
    resource: &Resource<'_>,
) -> (QueueArguments, Vec<AmqpError>) {
    if let Ok(parsed) = parse(args, resource) {
        return (parsed, Vec::new());
    }
    let mut accepted = FieldTable::default();
    let mut refused = Vec::new();
    for (key, value) in args.inner() {
        let mut with = accepted.clone();
        with.insert(key.clone(), value.clone());
        match parse(&with, resource) {
            Ok(_) => accepted = with,
            Err(e) => refused.push(e),
        }
    }
    // Every key kept parsed together just now, so this is the same typed view.
    (parse(&accepted, resource).unwrap_or_default(), refused)
}

/// The arguments compared on redeclare (the classic queue type's `queue_arguments`, plus the quorum
/// delivery limit); other keys may differ freely.
const EQUIVALENCE_KEYS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
    "x-delivery-limit",
    PUBLISHER_ARGUMENT,
];

/// RabbitMQ's `val/1`: a value with its type, or `none`.
fn tagged(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".to_string(),
        Some(v) => format!("the value '{}' of type '{}'", Bare(v), type_name(v)),
    }
}

/// `rabbit_misc:assert_args_equivalence` for queues: the first compared key whose values differ gives 406.
pub(crate) fn check_equivalent(
    received: &FieldTable,
    current: &FieldTable,
    resource: &Resource<'_>,
) -> AmqpResult<()> {
    check_keys_equivalent(EQUIVALENCE_KEYS, received, current, resource)
}

/// `rabbit_misc:assert_args_equivalence` over the given keys.
pub(crate) fn check_keys_equivalent(
    keys: &[&str],
    received: &FieldTable,
    current: &FieldTable,
    resource: &Resource<'_>,
) -> AmqpResult<()> {
    for key in keys {
        let (new, old) = (received.inner().get(*key), current.inner().get(*key));
        let classic = |v: Option<&AMQPValue>| v.and_then(as_text).is_some_and(|t| t == "classic");
        let equal = match (new, old) {
            (None, None) => true,
            (Some(a), Some(b)) => type_class(a) == type_class(b) && same_value(a, b),
            // A missing x-queue-type and "classic" are the same thing.
            (a, b) => *key == "x-queue-type" && (classic(a) || classic(b)),
        };
        if equal {
            continue;
        }
        // Both present: the bare values (even of different types, as RabbitMQ prints them); one
        // missing: the tagged form against `none`.
        let (shown_new, shown_old) = match (new, old) {
            (Some(a), Some(b)) => (format!("'{}'", Bare(a)), format!("'{}'", Bare(b))),
            _ => (tagged(new), tagged(old)),
        };
        return Err(AmqpError::precondition(format!(
            "inequivalent arg '{key}' for {resource}: received {shown_new} but current is {shown_old}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }
    const R: Resource<'static> = Resource {
        kind: "queue",
        name: "q",
        vhost: "/",
    };

    #[test]
    fn quorum_queues_refuse_other_types_arguments_and_check_their_own() {
        let quorum = || {
            (
                "x-queue-type",
                AMQPValue::LongString(LongString::from("quorum")),
            )
        };
        let err = |pairs: &[(&str, AMQPValue)]| parse(&table(pairs), &R).unwrap_err().text;
        // A bad value of a classic argument is not looked at: the argument itself is refused.
        assert_eq!(
            err(&[quorum(), ("x-max-priority", AMQPValue::LongInt(-1))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue"
        );
        assert!(err(&[
            quorum(),
            ("x-quorum-initial-group-size", AMQPValue::LongInt(-2))
        ])
        .ends_with("{value_negative,-2}"));
        assert!(err(&[
            (
                "x-dead-letter-strategy",
                AMQPValue::LongString(LongString::from("never"))
            ),
            quorum()
        ])
        .ends_with("invalid_dlx_strategy"));
        // The type is checked before any other argument.
        assert!(err(&[
            ("x-max-length", AMQPValue::LongInt(-5)),
            (
                "x-queue-type",
                AMQPValue::LongString(LongString::from("bogus"))
            )
        ])
        .contains("x-queue-type"));
        let ok = parse(
            &table(&[
                quorum(),
                ("x-quorum-initial-group-size", AMQPValue::LongInt(5)),
            ]),
            &R,
        )
        .unwrap();
        assert!(ok.quorum);
        // A classic queue keeps its own arguments.
        assert_eq!(
            parse(&table(&[("x-max-priority", AMQPValue::LongInt(5))]), &R)
                .unwrap()
                .max_priority,
            Some(5)
        );
    }

    #[test]
    fn quorum_declare_properties_are_refused_in_rabbitmq_order() {
        let refused = |d, e, a| check_quorum_properties(d, e, a, &R).map_err(|e| e.text);
        assert_eq!(refused(true, false, false), Ok(()));
        assert_eq!(
            refused(false, true, false).unwrap_err(),
            "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 'q' in vhost '/'"
        );
        assert!(refused(false, true, true)
            .unwrap_err()
            .contains("'auto-delete'"));
        assert!(refused(false, false, false)
            .unwrap_err()
            .contains("'non-durable'"));
    }

    #[test]
    fn validation_texts_follow_rabbitmq() {
        let err = |pairs: &[(&str, AMQPValue)]| parse(&table(pairs), &R).unwrap_err().text;
        assert_eq!(
            err(&[("x-max-length", AMQPValue::LongInt(-5))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-5}"
        );
        assert_eq!(
            err(&[("x-message-ttl", AMQPValue::LongString(LongString::from("10")))]),
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
        assert!(err(&[("x-expires", AMQPValue::LongInt(0))]).ends_with("{value_zero,0}"));
        let stream = || {
            (
                "x-queue-type",
                AMQPValue::LongString(LongString::from("stream")),
            )
        };
        assert_eq!(
            err(&[stream(), ("x-message-ttl", AMQPValue::LongInt(5))]),
            "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q' in vhost '/' of queue type rabbit_stream_queue"
        );
        assert_eq!(
            err(&[stream(), ("x-max-age", AMQPValue::LongString(LongString::from("10x")))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 'q' in vhost '/': invalid_max_age"
        );
        assert!(err(&[stream(), ("x-max-age", AMQPValue::LongInt(5))])
            .contains(": {unacceptable_type,"));
        let s = parse(
            &table(&[
                stream(),
                ("x-max-age", AMQPValue::LongString(LongString::from("30m"))),
                ("x-max-length-bytes", AMQPValue::LongInt(1000)),
                (
                    "x-stream-max-segment-size-bytes",
                    AMQPValue::LongLongInt(4_000_000_000),
                ),
            ]),
            &R,
        )
        .unwrap();
        assert!(s.stream && !s.quorum);
        assert_eq!(
            (s.max_age_ms, s.max_length_bytes),
            (Some(1_800_000), Some(1000))
        );
        assert_eq!(
            stream::check_declare(&s).unwrap_err().text,
            "PRECONDITION_FAILED - Exceeded max value for x-stream-max-segment-size-bytes"
        );
        let ok = parse(
            &table(&[
                ("x-message-ttl", AMQPValue::ShortShortUInt(200)),
                (
                    "x-ha-policy",
                    AMQPValue::LongString(LongString::from("all")),
                ),
                (
                    "x-queue-type",
                    AMQPValue::LongString(LongString::from("quorum")),
                ),
            ]),
            &R,
        )
        .unwrap();
        assert_eq!((ok.message_ttl_ms, ok.quorum), (Some(200), true));
    }

    #[test]
    fn equivalence_compares_known_keys_by_type_class() {
        let ten = table(&[("x-max-length", AMQPValue::LongInt(10))]);
        let ten_long = table(&[("x-max-length", AMQPValue::LongLongInt(10))]);
        let twenty = table(&[("x-max-length", AMQPValue::LongInt(20))]);
        check_equivalent(&ten_long, &ten, &R).unwrap();
        assert_eq!(
            check_equivalent(&twenty, &ten, &R).unwrap_err().text,
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received '20' but current is '10'"
        );
        assert_eq!(
            check_equivalent(&ten, &FieldTable::default(), &R).unwrap_err().text,
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'q' in vhost '/': received the value '10' of type 'signedint' but current is none"
        );
        let classic = table(&[(
            "x-queue-type",
            AMQPValue::LongString(LongString::from("classic")),
        )]);
        check_equivalent(&classic, &FieldTable::default(), &R).unwrap();
        check_equivalent(
            &table(&[("x-whatever", AMQPValue::Boolean(true))]),
            &FieldTable::default(),
            &R,
        )
        .unwrap();
    }
}
