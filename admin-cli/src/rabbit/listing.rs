//! rabbitmqctl's `list_*` commands: the info keys each knows, the columns it prints by default,
//! its banner, and its rows made from the broker's admin answers under RabbitMQ's key names
//! (`rabbitmqctl list_queues --silent name type --formatter json`, as kolla-ansible's precheck
//! runs it).

use serde_json::{json, Map, Value};

use super::{output, Ctx, Fail};

/// One listing command.
struct Listing {
    verb: &'static str,
    /// The info keys it knows (columns may be asked for by name, in any order).
    keys: &'static [&'static str],
    /// Its columns when none are asked for.
    defaults: &'static [&'static str],
    /// Whether it takes a user name first (list_user_permissions USER).
    per_user: bool,
}

const LISTINGS: &[Listing] = &[
    Listing {
        verb: "list_queues",
        keys: &[
            "name",
            "type",
            "durable",
            "auto_delete",
            "exclusive",
            "arguments",
            "policy",
            "operator_policy",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "message_bytes",
            "consumers",
            "memory",
            "state",
        ],
        defaults: &["name", "messages"],
        per_user: false,
    },
    Listing {
        verb: "list_exchanges",
        keys: &[
            "name",
            "type",
            "durable",
            "auto_delete",
            "internal",
            "arguments",
            "policy",
        ],
        defaults: &["name", "type"],
        per_user: false,
    },
    Listing {
        verb: "list_bindings",
        keys: &[
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
        ],
        defaults: &[
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
        ],
        per_user: false,
    },
    Listing {
        verb: "list_users",
        keys: &["user", "tags"],
        defaults: &["user", "tags"],
        per_user: false,
    },
    Listing {
        verb: "list_vhosts",
        keys: &[
            "name",
            "tracing",
            "description",
            "tags",
            "default_queue_type",
            "cluster_state",
        ],
        defaults: &["name"],
        per_user: false,
    },
    Listing {
        verb: "list_permissions",
        keys: &["user", "configure", "write", "read"],
        defaults: &["user", "configure", "write", "read"],
        per_user: false,
    },
    Listing {
        verb: "list_user_permissions",
        keys: &["vhost", "configure", "write", "read"],
        defaults: &["vhost", "configure", "write", "read"],
        per_user: true,
    },
    Listing {
        verb: "list_topic_permissions",
        keys: &["user", "exchange", "write", "read"],
        defaults: &["user", "exchange", "write", "read"],
        per_user: false,
    },
    Listing {
        verb: "list_user_topic_permissions",
        keys: &["vhost", "exchange", "write", "read"],
        defaults: &["vhost", "exchange", "write", "read"],
        per_user: true,
    },
    Listing {
        verb: "list_policies",
        keys: &[
            "vhost",
            "name",
            "pattern",
            "apply-to",
            "definition",
            "priority",
        ],
        defaults: &[
            "vhost",
            "name",
            "pattern",
            "apply-to",
            "definition",
            "priority",
        ],
        per_user: false,
    },
    Listing {
        verb: "list_operator_policies",
        keys: &[
            "vhost",
            "name",
            "pattern",
            "apply-to",
            "definition",
            "priority",
        ],
        defaults: &[
            "vhost",
            "name",
            "pattern",
            "apply-to",
            "definition",
            "priority",
        ],
        per_user: false,
    },
    Listing {
        verb: "list_connections",
        keys: &[
            "pid",
            "name",
            "user",
            "peer_host",
            "peer_port",
            "state",
            "vhost",
            "protocol",
            "ssl",
        ],
        defaults: &["user", "peer_host", "peer_port", "state"],
        per_user: false,
    },
    Listing {
        verb: "list_channels",
        keys: &[
            "pid",
            "name",
            "connection",
            "number",
            "user",
            "vhost",
            "transactional",
            "confirm",
            "consumer_count",
            "messages_unacknowledged",
            "prefetch_count",
            "global_prefetch_count",
        ],
        defaults: &["pid", "user", "consumer_count", "messages_unacknowledged"],
        per_user: false,
    },
    Listing {
        verb: "list_consumers",
        keys: &[
            "queue_name",
            "channel_pid",
            "consumer_tag",
            "ack_required",
            "prefetch_count",
            "active",
            "activity_status",
            "arguments",
        ],
        defaults: &[
            "queue_name",
            "channel_pid",
            "consumer_tag",
            "ack_required",
            "prefetch_count",
            "active",
            "arguments",
        ],
        per_user: false,
    },
    Listing {
        verb: "list_feature_flags",
        keys: &[
            "name",
            "state",
            "stability",
            "provided_by",
            "desc",
            "doc_url",
        ],
        defaults: &["name", "state"],
        per_user: false,
    },
];

/// Runs `verb` if it is a listing; None if it is not one.
pub fn run(ctx: &Ctx, verb: &str) -> Option<Result<(), Fail>> {
    let listing = LISTINGS.iter().find(|l| l.verb == verb)?;
    Some(list(ctx, listing))
}

fn list(ctx: &Ctx, listing: &Listing) -> Result<(), Fail> {
    let mut args = ctx.line.args().to_vec();
    let user = match listing.per_user {
        true if args.is_empty() => return Err(Fail::usage("not enough arguments: a user name")),
        true => Some(args.remove(0)),
        false => None,
    };
    // Columns: as asked (comma- or space-separated), checked against the keys it knows.
    let mut columns: Vec<String> = args
        .iter()
        .flat_map(|a| a.split(','))
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect();
    if let Some(bad) = columns.iter().find(|c| !listing.keys.contains(&c.as_str())) {
        return Err(Fail::usage(format!(
            "Info key(s) {bad} are not supported by Warren's {}; it knows {}",
            listing.verb,
            listing.keys.join(", ")
        )));
    }
    if columns.is_empty() {
        columns = listing.defaults.iter().map(|c| c.to_string()).collect();
    }
    let vhost = ctx.line.vhost().to_string();
    let (banner, rows) = match listing.verb {
        "list_queues" => (
            format!("Timeout: 60.0 seconds ...\nListing queues for vhost {vhost} ..."),
            queues(ctx, &vhost)?,
        ),
        "list_exchanges" => (
            format!("Listing exchanges for vhost {vhost} ..."),
            exchanges(ctx, &vhost)?,
        ),
        "list_bindings" => (
            format!("Listing bindings for vhost {vhost}..."),
            bindings(ctx, &vhost)?,
        ),
        "list_users" => ("Listing users ...".into(), users(ctx)?),
        "list_vhosts" => ("Listing vhosts ...".into(), vhosts(ctx)?),
        "list_permissions" => (
            format!("Listing permissions for vhost \"{vhost}\" ..."),
            rename(
                ctx.call(json!({"command": "list_permissions", "vhost": vhost}))?,
                &[],
            ),
        ),
        "list_topic_permissions" => (
            format!("Listing topic permissions for vhost \"{vhost}\" ..."),
            rename(
                ctx.call(json!({"command": "list_topic_permissions", "vhost": vhost}))?,
                &[],
            ),
        ),
        "list_user_permissions" | "list_user_topic_permissions" => {
            let user = user.unwrap_or_default();
            let topic = listing.verb == "list_user_topic_permissions";
            (
                format!(
                    "Listing {}permissions for user \"{user}\" ...",
                    if topic { "topic " } else { "" }
                ),
                of_user(ctx, &user, topic)?,
            )
        }
        "list_policies" | "list_operator_policies" => (
            format!("Listing policies for vhost \"{vhost}\" ..."),
            rename(
                ctx.call(json!({"command": "list_policies", "vhost": vhost,
                                "operator": listing.verb == "list_operator_policies"}))?,
                &[],
            ),
        ),
        "list_connections" => ("Listing connections ...".into(), connections(ctx)?),
        "list_channels" => (
            "Listing channels ...".into(),
            rename(ctx.call(json!({"command": "list_channels"}))?, &[]),
        ),
        "list_consumers" => (
            format!("Listing consumers in vhost {vhost} ..."),
            rename(
                ctx.call(json!({"command": "list_consumers", "vhost": vhost}))?,
                &[],
            ),
        ),
        // Warren has no feature flags: everything RabbitMQ gates behind one is simply there.
        _ => ("Listing feature flags ...".into(), Vec::new()),
    };
    output::banner(&ctx.line, &banner);
    output::rows(&ctx.line, &columns, &rows);
    Ok(())
}

/// The broker's answer rows as objects, with keys renamed (`from` → `to`).
fn rename(answer: Value, names: &[(&str, &str)]) -> Vec<Map<String, Value>> {
    let Value::Array(rows) = answer else {
        return Vec::new();
    };
    rows.into_iter()
        .filter_map(|r| match r {
            Value::Object(mut m) => {
                for (from, to) in names {
                    if let Some(v) = m.remove(*from) {
                        m.insert(to.to_string(), v);
                    }
                }
                Some(m)
            }
            _ => None,
        })
        .collect()
}

fn queues(ctx: &Ctx, vhost: &str) -> Result<Vec<Map<String, Value>>, Fail> {
    let mut rows = rename(
        ctx.call(json!({"command": "list_queues", "vhost": vhost}))?,
        &[],
    );
    for r in &mut rows {
        // Warren counts ready messages; RabbitMQ's `messages` adds the unacknowledged ones.
        let ready = r.get("messages").and_then(Value::as_u64).unwrap_or(0);
        let unacked = r
            .get("messages_unacknowledged")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        r.insert("messages_ready".into(), json!(ready));
        r.insert("messages".into(), json!(ready + unacked));
        let bytes = r.get("message_bytes").cloned().unwrap_or(json!(0));
        r.insert("memory".into(), bytes);
        r.insert("state".into(), json!("running"));
    }
    Ok(rows)
}

fn exchanges(ctx: &Ctx, vhost: &str) -> Result<Vec<Map<String, Value>>, Fail> {
    let mut rows = rename(
        ctx.call(json!({"command": "list_exchanges", "vhost": vhost}))?,
        &[],
    );
    for r in &mut rows {
        if !r.contains_key("arguments") {
            let mut args = Map::new();
            if let Some(Value::String(ae)) = r.get("alternate_exchange") {
                args.insert("alternate-exchange".into(), json!(ae));
            }
            r.insert("arguments".into(), Value::Object(args));
        }
        r.entry("policy").or_insert(Value::Null);
    }
    Ok(rows)
}

fn bindings(ctx: &Ctx, vhost: &str) -> Result<Vec<Map<String, Value>>, Fail> {
    let mut rows = rename(
        ctx.call(json!({"command": "list_bindings", "vhost": vhost}))?,
        &[
            ("source", "source_name"),
            ("destination", "destination_name"),
            ("destination_type", "destination_kind"),
        ],
    );
    for r in &mut rows {
        r.insert("source_kind".into(), json!("exchange"));
        r.entry("arguments").or_insert(json!([]));
    }
    Ok(rows)
}

fn users(ctx: &Ctx) -> Result<Vec<Map<String, Value>>, Fail> {
    Ok(rename(
        ctx.call(json!({"command": "list_users"}))?,
        &[("name", "user")],
    ))
}

fn vhosts(ctx: &Ctx) -> Result<Vec<Map<String, Value>>, Fail> {
    let names = ctx.call(json!({"command": "list_vhosts"}))?;
    Ok(names
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let mut m = Map::new();
            m.insert("name".into(), n.clone());
            m.insert("tracing".into(), json!(false));
            m.insert("description".into(), json!(""));
            m.insert("tags".into(), json!([]));
            m.insert("default_queue_type".into(), json!("classic"));
            m.insert("cluster_state".into(), json!({}));
            m
        })
        .collect())
}

/// A user's (topic) permissions in every vhost.
fn of_user(ctx: &Ctx, user: &str, topic: bool) -> Result<Vec<Map<String, Value>>, Fail> {
    let users = users(ctx)?;
    if !users.iter().any(|u| u.get("user") == Some(&json!(user))) {
        return Err(Fail::no_user(user));
    }
    let command = match topic {
        true => "list_topic_permissions",
        false => "list_permissions",
    };
    let mut out = Vec::new();
    for vhost in vhosts(ctx)? {
        let name = vhost["name"].clone();
        let rows = rename(ctx.call(json!({"command": command, "vhost": name}))?, &[]);
        for mut r in rows
            .into_iter()
            .filter(|r| r.get("user") == Some(&json!(user)))
        {
            r.insert("vhost".into(), name.clone());
            out.push(r);
        }
    }
    Ok(out)
}

fn connections(ctx: &Ctx) -> Result<Vec<Map<String, Value>>, Fail> {
    let mut rows = rename(ctx.call(json!({"command": "list_connections"}))?, &[]);
    for r in &mut rows {
        let peer = r
            .get("peer")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let (host, port) = match peer.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_matches(|c| c == '[' || c == ']').to_string(),
                p.parse::<u64>().ok(),
            ),
            None => (peer.clone(), None),
        };
        // (A connection's pid, as its channels' are `PEER/N`: what close_connection takes.)
        r.insert("pid".into(), json!(peer));
        r.insert("name".into(), json!(peer));
        r.insert("peer_host".into(), json!(host));
        r.insert("peer_port".into(), json!(port));
        r.insert("state".into(), json!("running"));
        r.insert("protocol".into(), json!("AMQP 0-9-1"));
        r.insert("ssl".into(), json!(true));
    }
    Ok(rows)
}
