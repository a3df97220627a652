//! Policies (RabbitMQ's `set_policy` and `set_operator_policy`): which queues a policy applies to,
//! which one wins, and what a queue's arguments become with it — RabbitMQ 3.10's rules
//! (`rabbit_policy`, `rabbit_policies`, `rabbit_queue_type_util:args_policy_lookup/3`).
//!
//! A policy's pattern is an unanchored regular expression on the queue's name, with the PCRE
//! features OpenStack's patterns use (the negative lookahead of `^(?!amq\.).*`): fancy-regex,
//! with a backtracking limit so that a hostile pattern costs a bounded amount per name (a match
//! that hits the limit counts as no match). Of the policies that match a queue of the kinds their
//! `apply-to` names, the highest priority applies (one user policy, and one operator policy).
//! Numeric keys take the lower of the queue's own `x-` argument, the policy's and the operator
//! policy's value; the others keep the queue's argument when it has one.

use fancy_regex::{Regex, RegexBuilder};
use serde_json::Value;
use warren_storage::definitions::PolicyDefinition;

use crate::queue::arguments::{Overflow, QueueArguments};
use crate::queue::stream::max_age_ms;

/// Steps a pattern may backtrack for one name before the match is given up.
const BACKTRACK_LIMIT: usize = 100_000;

/// What a policy may apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClassicQueue,
    QuorumQueue,
    Stream,
    Exchange,
}

impl Kind {
    /// The kind of a queue with these (declared) arguments.
    pub fn of_queue(args: &QueueArguments) -> Kind {
        if args.quorum {
            Kind::QuorumQueue
        } else if args.stream {
            Kind::Stream
        } else {
            Kind::ClassicQueue
        }
    }

    /// The policy keys this kind does not support: a policy with any of them does not apply to it
    /// at all (RabbitMQ 3.10's `unsupported_policies` of each queue type; `ha-mode` keeps a
    /// legacy mirroring policy off quorum queues and streams, `delivery-limit` off classic ones).
    fn unsupported(self) -> &'static [&'static str] {
        const MIRRORING: [&str; 6] = [
            "ha-mode",
            "ha-params",
            "ha-sync-mode",
            "ha-promote-on-shutdown",
            "ha-promote-on-failure",
            "queue-master-locator",
        ];
        const STREAM: [&str; 19] = [
            "expires",
            "message-ttl",
            "dead-letter-exchange",
            "dead-letter-routing-key",
            "max-length",
            "max-in-memory-length",
            "max-in-memory-bytes",
            "max-priority",
            "overflow",
            "queue-mode",
            "single-active-consumer",
            "delivery-limit",
            "dead-letter-strategy",
            MIRRORING[0],
            MIRRORING[1],
            MIRRORING[2],
            MIRRORING[3],
            MIRRORING[4],
            MIRRORING[5],
        ];
        const QUORUM: [&str; 12] = [
            "max-priority",
            "queue-mode",
            "single-active-consumer",
            "max-age",
            "stream-max-segment-size-bytes",
            "initial-cluster-size",
            MIRRORING[0],
            MIRRORING[1],
            MIRRORING[2],
            MIRRORING[3],
            MIRRORING[4],
            MIRRORING[5],
        ];
        const CLASSIC: [&str; 6] = [
            "max-age",
            "stream-max-segment-size-bytes",
            "queue-leader-locator",
            "initial-cluster-size",
            "delivery-limit",
            "dead-letter-strategy",
        ];
        match self {
            Kind::Stream => &STREAM,
            Kind::QuorumQueue => &QUORUM,
            Kind::ClassicQueue => &CLASSIC,
            Kind::Exchange => &[],
        }
    }

    fn selected_by(self, apply_to: &str) -> bool {
        match apply_to {
            "all" => true,
            "queues" => self != Kind::Exchange,
            "exchanges" => self == Kind::Exchange,
            "classic_queues" => self == Kind::ClassicQueue,
            "quorum_queues" => self == Kind::QuorumQueue,
            "streams" => self == Kind::Stream,
            _ => false,
        }
    }
}

const APPLY_TO: &[&str] = &[
    "queues",
    "exchanges",
    "all",
    "classic_queues",
    "quorum_queues",
    "streams",
];

/// Keys an operator policy may set (RabbitMQ's `operator_policy_validator`s).
const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// Keys of classic queue mirroring (removed from RabbitMQ 4, ignored by Warren, which has quorum
/// queues for that): accepted so older deployment files load, with a warning when set.
pub fn is_mirroring_key(key: &str) -> bool {
    key.starts_with("ha-") || key == "queue-master-locator"
}

/// A JSON value as RabbitMQ's `~p` prints the Erlang term it decodes to.
fn term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn int(v: &Value) -> Option<i64> {
    v.as_i64()
}

/// Checks one key's value as `rabbit_policies:validate_policy0/2` does.
fn check_value(key: &str, v: &Value) -> Result<(), String> {
    let non_negative = |what: &str| match int(v) {
        Some(n) if n >= 0 => Ok(()),
        _ => Err(format!("{} is not a valid {what}", term(v))),
    };
    let one_of = |allowed: &[&str], what: &str| match v.as_str() {
        Some(s) if allowed.contains(&s) => Ok(()),
        _ => Err(format!("{} is not a valid {what}", term(v))),
    };
    let text = |what: &str| match v {
        Value::String(_) => Ok(()),
        _ => Err(format!("{} is not a valid {what}", term(v))),
    };
    match key {
        "alternate-exchange" => text("alternate exchange name"),
        "dead-letter-exchange" => text("dead letter exchange name"),
        "dead-letter-routing-key" => text("dead letter routing key"),
        "dead-letter-strategy" => {
            one_of(&["at-most-once", "at-least-once"], "dead letter strategy")
        }
        "message-ttl" => non_negative("message TTL"),
        "expires" => match int(v) {
            Some(n) if n >= 1 => Ok(()),
            _ => Err(format!("{} is not a valid queue expiry", term(v))),
        },
        "max-length" => non_negative("maximum length"),
        "max-length-bytes" => non_negative("maximum length in bytes"),
        "max-in-memory-length" | "max-in-memory-bytes" => non_negative("maximum memory in bytes"),
        "queue-mode" => one_of(&["default", "lazy"], "queue-mode value"),
        "queue-version" => match int(v) {
            Some(1 | 2) => Ok(()),
            _ => Err(format!("{} is not a valid queue-version value", term(v))),
        },
        "overflow" => one_of(
            &["drop-head", "reject-publish", "reject-publish-dlx"],
            "overflow value",
        ),
        "delivery-limit" => non_negative("delivery limit"),
        "max-age" => match v.as_str().and_then(max_age_ms) {
            Some(_) => Ok(()),
            None => Err(format!("{} is not a valid max age", term(v))),
        },
        "queue-leader-locator" => one_of(
            &["client-local", "balanced", "random", "least-leaders"],
            "queue leader locator value",
        ),
        "initial-cluster-size" => non_negative("cluster size"),
        "stream-max-segment-size-bytes" => match int(v) {
            Some(n) if (0..=3_000_000_000).contains(&n) => Ok(()),
            _ => Err(format!("{} is not a valid segment size", term(v))),
        },
        _ => Ok(()),
    }
}

fn is_policy_key(key: &str) -> bool {
    matches!(
        key,
        "alternate-exchange"
            | "dead-letter-exchange"
            | "dead-letter-routing-key"
            | "dead-letter-strategy"
            | "message-ttl"
            | "expires"
            | "max-length"
            | "max-length-bytes"
            | "max-in-memory-length"
            | "max-in-memory-bytes"
            | "queue-mode"
            | "queue-version"
            | "overflow"
            | "delivery-limit"
            | "max-age"
            | "queue-leader-locator"
            | "initial-cluster-size"
            | "stream-max-segment-size-bytes"
    ) || is_mirroring_key(key)
}

/// Compiles a pattern with the backtracking bound.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .backtrack_limit(BACKTRACK_LIMIT)
        .build()
        .map_err(|e| format!("<<\"{pattern}\">> is not a valid regular expression: {e}"))
}

/// Validates a policy as RabbitMQ does before storing it; the error is RabbitMQ's text after its
/// "Validation failed" line.
pub fn validate(p: &PolicyDefinition, operator: bool) -> Result<(), String> {
    if p.name.is_empty() || p.name.len() > 255 {
        return Err("a policy name must have 1 to 255 characters".into());
    }
    compile(&p.pattern)?;
    if !APPLY_TO.contains(&p.apply_to.as_str()) {
        return Err(format!(
            "apply-to '{}' unrecognised; should be 'queues', 'exchanges', 'all', 'classic_queues', 'quorum_queues' or 'streams'",
            p.apply_to
        ));
    }
    if p.definition.is_empty() {
        return Err("no policy provided".into());
    }
    let unrecognised: Vec<String> = p
        .definition
        .iter()
        .filter(|(k, _)| match operator {
            true => !OPERATOR_KEYS.contains(&k.as_str()),
            false => !is_policy_key(k),
        })
        .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", term(v)))
        .collect();
    for (k, v) in &p.definition {
        if !unrecognised
            .iter()
            .any(|u| u.starts_with(&format!("{{<<\"{k}\">>")))
        {
            check_value(k, v)?;
        }
    }
    if !unrecognised.is_empty() {
        return Err(format!(
            "[{}] are not recognised policy settings",
            unrecognised.join(",")
        ));
    }
    Ok(())
}

/// A vhost's policies in force, compiled: its users' policies and its operator policies.
#[derive(Debug, Clone, Default)]
pub struct InForce {
    pub policies: std::sync::Arc<Vec<Policy>>,
    pub operator: std::sync::Arc<Vec<Policy>>,
}

/// A stored policy with its pattern compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    pub def: PolicyDefinition,
    regex: Regex,
}

impl Policy {
    /// None for a stored policy whose pattern no longer compiles (reported by the caller).
    pub fn new(def: PolicyDefinition) -> Option<Policy> {
        let regex = compile(&def.pattern).ok()?;
        Some(Policy { def, regex })
    }

    /// Whether it applies to `name` of `kind`.
    pub fn matches(&self, name: &str, kind: Kind) -> bool {
        kind.selected_by(&self.def.apply_to)
            && !self
                .def
                .definition
                .keys()
                .any(|k| kind.unsupported().contains(&k.as_str()))
            && self.regex.is_match(name).unwrap_or(false)
    }
}

/// The policy that applies to `name` of `kind`: the highest priority of those that match (the
/// lexically first name among equals, so the choice is the same on every node).
pub fn select<'a>(policies: &'a [Policy], name: &str, kind: Kind) -> Option<&'a Policy> {
    policies
        .iter()
        .filter(|p| p.matches(name, kind))
        .min_by(|a, b| {
            b.def
                .priority
                .cmp(&a.def.priority)
                .then_with(|| a.def.name.cmp(&b.def.name))
        })
}

/// A queue's arguments with its policy and operator policy applied (`declared`: its own).
pub fn effective(
    declared: &QueueArguments,
    policy: Option<&PolicyDefinition>,
    operator: Option<&PolicyDefinition>,
) -> QueueArguments {
    let kind = Kind::of_queue(declared);
    let get = |key: &str| -> Option<&Value> { policy.and_then(|p| p.definition.get(key)) };
    // A numeric key: the lowest of the policy's, the operator policy's and the queue's own.
    let num = |key: &str, own: Option<u64>| -> Option<u64> {
        let from_policy = get(key).and_then(Value::as_u64);
        let from_operator = operator
            .and_then(|p| p.definition.get(key))
            .and_then(Value::as_u64);
        [own, from_policy, from_operator]
            .into_iter()
            .flatten()
            .min()
    };
    let text = |key: &str, own: &Option<String>| -> Option<String> {
        own.clone()
            .or_else(|| get(key).and_then(Value::as_str).map(str::to_string))
    };
    let mut out = declared.clone();
    match kind {
        Kind::Stream => {
            out.max_length_bytes = num("max-length-bytes", declared.max_length_bytes);
            out.max_age_ms = [
                declared.max_age_ms,
                get("max-age").and_then(Value::as_str).and_then(max_age_ms),
            ]
            .into_iter()
            .flatten()
            .min();
            out.stream_max_segment_bytes = num(
                "stream-max-segment-size-bytes",
                declared.stream_max_segment_bytes,
            );
        }
        Kind::ClassicQueue | Kind::QuorumQueue => {
            out.message_ttl_ms = num("message-ttl", declared.message_ttl_ms);
            out.expires_ms = num("expires", declared.expires_ms);
            out.max_length = num("max-length", declared.max_length);
            out.max_length_bytes = num("max-length-bytes", declared.max_length_bytes);
            out.delivery_limit = num("delivery-limit", declared.delivery_limit);
            out.max_in_memory_length = num("max-in-memory-length", declared.max_in_memory_length);
            out.max_in_memory_bytes = num("max-in-memory-bytes", declared.max_in_memory_bytes);
            out.dead_letter_exchange = text("dead-letter-exchange", &declared.dead_letter_exchange);
            out.dead_letter_routing_key =
                text("dead-letter-routing-key", &declared.dead_letter_routing_key);
            if !declared.overflow_declared {
                if let Some(o) = get("overflow").and_then(Value::as_str) {
                    out.overflow = match o {
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        _ => Overflow::DropHead,
                    };
                }
            }
            if kind == Kind::ClassicQueue && !declared.lazy {
                out.lazy = get("queue-mode").and_then(Value::as_str) == Some("lazy");
            }
        }
        Kind::Exchange => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(pattern: &str, apply_to: &str, priority: i64, def: Value) -> PolicyDefinition {
        PolicyDefinition {
            vhost: "/".into(),
            name: format!("p{priority}"),
            pattern: pattern.into(),
            apply_to: apply_to.into(),
            priority,
            definition: def.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn validation_texts_follow_rabbitmq() {
        let err = |d: Value| validate(&policy(".*", "queues", 0, d), false).unwrap_err();
        assert_eq!(
            err(json!({"message-ttl": -1})),
            "-1 is not a valid message TTL"
        );
        assert_eq!(err(json!({"expires": 0})), "0 is not a valid queue expiry");
        assert_eq!(
            err(json!({"max-age": "10x"})),
            "<<\"10x\">> is not a valid max age"
        );
        assert_eq!(
            err(json!({"overflow": "x"})),
            "<<\"x\">> is not a valid overflow value"
        );
        assert_eq!(
            err(json!({"foo": "bar"})),
            "[{<<\"foo\">>,<<\"bar\">>}] are not recognised policy settings"
        );
        assert_eq!(err(json!({})), "no policy provided");
        assert!(validate(&policy(".*", "queues", 0, json!({"ha-mode": "all"})), false).is_ok());
        assert!(
            validate(&policy("(", "queues", 0, json!({"max-length": 1})), false)
                .unwrap_err()
                .contains("is not a valid regular expression")
        );
        assert!(
            validate(&policy(".*", "nothing", 0, json!({"max-length": 1})), false)
                .unwrap_err()
                .starts_with("apply-to 'nothing' unrecognised")
        );
        // Operator policies take only the numeric limits.
        assert!(validate(&policy(".*", "queues", 0, json!({"max-length": 1})), true).is_ok());
        assert_eq!(
            validate(
                &policy(".*", "queues", 0, json!({"dead-letter-exchange": "x"})),
                true
            )
            .unwrap_err(),
            "[{<<\"dead-letter-exchange\">>,<<\"x\">>}] are not recognised policy settings"
        );
    }

    #[test]
    fn the_highest_priority_matching_policy_of_the_right_kind_applies() {
        let ps: Vec<Policy> = [
            policy("^(?!amq\\.).*", "queues", 0, json!({"message-ttl": 1000})),
            policy("^notifications", "all", 5, json!({"max-length": 10})),
            policy(".*", "exchanges", 9, json!({"alternate-exchange": "ae"})),
            policy(".*", "streams", 9, json!({"max-age": "1h"})),
        ]
        .into_iter()
        .filter_map(Policy::new)
        .collect();
        let name = |q, k| select(&ps, q, k).map(|p| p.def.name.clone());
        assert_eq!(
            name("notifications.info", Kind::ClassicQueue),
            Some("p5".into())
        );
        assert_eq!(name("compute", Kind::QuorumQueue), Some("p0".into()));
        assert_eq!(name("amq.gen-1", Kind::ClassicQueue), None);
        assert_eq!(name("x", Kind::Exchange), Some("p9".into()));
        assert_eq!(name("fanout", Kind::Stream), Some("p9".into()));
        // A policy with a key the queue type does not support does not apply to it at all.
        let ha = [policy(
            ".*",
            "queues",
            0,
            json!({"ha-mode": "all", "message-ttl": 5}),
        )];
        let ha: Vec<Policy> = ha.into_iter().filter_map(Policy::new).collect();
        assert!(select(&ha, "q", Kind::ClassicQueue).is_some());
        assert!(select(&ha, "q", Kind::QuorumQueue).is_none());
        assert!(select(&ha, "q", Kind::Stream).is_none());
    }

    #[test]
    fn numbers_take_the_lowest_and_texts_the_queues_own() {
        let declared = QueueArguments {
            message_ttl_ms: Some(5000),
            dead_letter_exchange: Some("own".into()),
            ..QueueArguments::default()
        };
        let p = policy(
            ".*",
            "queues",
            0,
            json!({
            "message-ttl": 60000, "max-length": 100, "dead-letter-exchange": "pol",
            "dead-letter-routing-key": "rk", "overflow": "reject-publish"}),
        );
        let op = policy(".*", "queues", 0, json!({"max-length": 50}));
        let e = effective(&declared, Some(&p), Some(&op));
        assert_eq!(e.message_ttl_ms, Some(5000));
        assert_eq!(e.max_length, Some(50));
        assert_eq!(e.dead_letter_exchange.as_deref(), Some("own"));
        assert_eq!(e.dead_letter_routing_key.as_deref(), Some("rk"));
        assert_eq!(e.overflow, Overflow::RejectPublish);
        assert_eq!(effective(&declared, None, None), declared);
        // The queue's own x-overflow wins, even when it says the default.
        let own = QueueArguments {
            overflow_declared: true,
            ..QueueArguments::default()
        };
        assert_eq!(effective(&own, Some(&p), None).overflow, Overflow::DropHead);
    }

    #[test]
    fn a_pattern_that_backtracks_without_end_matches_nothing_quickly() {
        let p = Policy::new(policy("^(a+)+$", "queues", 0, json!({"max-length": 1}))).unwrap();
        let name = format!("{}b", "a".repeat(40));
        let t = std::time::Instant::now();
        assert!(!p.matches(&name, Kind::ClassicQueue));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
