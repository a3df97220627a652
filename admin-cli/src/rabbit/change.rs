//! The commands that change the broker, with rabbitmqctl's arguments and banners: users and their
//! tags, vhosts, permissions, policies, queues, connections, definitions, and the password verbs
//! the Ansible modules call, which never turn password login on: Warren's users log in with
//! certificates, and a password is only ever stored for the optional password bridge.

use serde_json::{json, Value};

use super::{output, Ctx, Fail};

/// The commands of this file.
const VERBS: &[&str] = &[
    "add_user",
    "delete_user",
    "set_user_tags",
    "change_password",
    "authenticate_user",
    "clear_password",
    "add_vhost",
    "delete_vhost",
    "set_permissions",
    "clear_permissions",
    "set_topic_permissions",
    "clear_topic_permissions",
    "set_policy",
    "set_operator_policy",
    "clear_policy",
    "clear_operator_policy",
    "purge_queue",
    "delete_queue",
    "close_connection",
    "export_definitions",
    "import_definitions",
    "cluster_status",
    "enable_feature_flag",
    "stop_app",
    "start_app",
];

/// Runs `verb` if it is one of these; None if not.
pub fn run(ctx: &Ctx, verb: &str) -> Option<Result<(), Fail>> {
    if !VERBS.contains(&verb) {
        return None;
    }
    let a = ctx.line.args();
    let vhost = ctx.line.vhost().to_string();
    let arg = |i: usize, what: &str| -> Result<String, Fail> {
        a.get(i)
            .cloned()
            .ok_or_else(|| Fail::usage(format!("not enough arguments: {what}")))
    };
    let simple = |banner: String, request: Value| -> Result<(), Fail> {
        output::banner(&ctx.line, &banner);
        ctx.call(request).map(|_| ())
    };
    Some((|| -> Result<(), Fail> {
        match verb {
            "add_user" => {
                let name = arg(0, "a user name")?;
                let bridge = password_bridge(ctx)?;
                output::banner(&ctx.line, &format!("Adding user \"{name}\" ..."));
                ctx.call(json!({"command": "add_user", "name": name}))?;
                match (a.get(1), bridge) {
                    (Some(password), true) => {
                        ctx.call(json!({"command": "change_password", "name": name, "password": password}))?;
                    }
                    (Some(_), false) => eprintln!(
                        "Warren: the password of \"{name}\" is not stored: it logs in with its client certificate (password login, [auth] password_bridge, is off)"
                    ),
                    (None, _) => {}
                }
                Ok(())
            }
            "delete_user" => {
                let name = arg(0, "a user name")?;
                simple(
                    format!("Deleting user \"{name}\" ..."),
                    json!({"command": "delete_user", "name": name}),
                )
            }
            "set_user_tags" => {
                let name = arg(0, "a user name")?;
                let tags = a[1..].to_vec();
                simple(
                    format!(
                        "Setting tags for user \"{name}\" to [{}] ...",
                        tags.join(", ")
                    ),
                    json!({"command": "set_user_tags", "name": name, "tags": tags}),
                )
            }
            "change_password" | "authenticate_user" => {
                let name = arg(0, "a user name")?;
                let password = arg(1, "a password")?;
                if !password_bridge(ctx)? {
                    return Err(Fail::data(format!(
                        "Warren does not log users in with passwords: \"{name}\" logs in with its client certificate, and password login ([auth] password_bridge) is off. Configure the deployment tool not to manage passwords (see docs/operations.md)"
                    )));
                }
                if verb == "change_password" {
                    return simple(
                        format!("Changing password for user \"{name}\" ..."),
                        json!({"command": "change_password", "name": name, "password": password}),
                    );
                }
                output::banner(&ctx.line, &format!("Authenticating user \"{name}\" ..."));
                ctx.call(
                    json!({"command": "authenticate_user", "name": name, "password": password}),
                )
                .map_err(|e| Fail { code: 65, ..e })?;
                say!("Success");
                Ok(())
            }
            "clear_password" => {
                let name = arg(0, "a user name")?;
                simple(
                    format!("Clearing password for user \"{name}\" ..."),
                    json!({"command": "clear_password", "name": name}),
                )
            }
            "add_vhost" => {
                let name = arg(0, "a vhost name")?;
                simple(
                    format!("Adding vhost \"{name}\" ..."),
                    json!({"command": "add_vhost", "name": name}),
                )
            }
            "delete_vhost" => {
                let name = arg(0, "a vhost name")?;
                simple(
                    format!("Deleting vhost \"{name}\" ..."),
                    json!({"command": "delete_vhost", "name": name}),
                )
            }
            "set_permissions" => {
                let (user, configure, write, read) = (
                    arg(0, "a user")?,
                    arg(1, "configure")?,
                    arg(2, "write")?,
                    arg(3, "read")?,
                );
                simple(
                    format!("Setting permissions for user \"{user}\" in vhost \"{vhost}\" ..."),
                    json!({"command": "set_permissions", "vhost": vhost, "user": user,
                           "configure": configure, "write": write, "read": read}),
                )
            }
            "clear_permissions" => {
                let user = arg(0, "a user")?;
                simple(
                    format!("Clearing permissions for user \"{user}\" in vhost \"{vhost}\" ..."),
                    json!({"command": "clear_permissions", "vhost": vhost, "user": user}),
                )
            }
            "set_topic_permissions" => {
                let (user, exchange, write, read) = (
                    arg(0, "a user")?,
                    arg(1, "an exchange")?,
                    arg(2, "write")?,
                    arg(3, "read")?,
                );
                simple(
                    format!("Setting topic permissions on \"{exchange}\" for user \"{user}\" in vhost \"{vhost}\" ..."),
                    json!({"command": "set_topic_permissions", "vhost": vhost, "user": user,
                           "exchange": exchange, "write": write, "read": read}),
                )
            }
            "clear_topic_permissions" => {
                let user = arg(0, "a user")?;
                simple(
                    format!(
                        "Clearing topic permissions for user \"{user}\" in vhost \"{vhost}\" ..."
                    ),
                    json!({"command": "clear_topic_permissions", "vhost": vhost, "user": user,
                           "exchange": a.get(1)}),
                )
            }
            "set_policy" | "set_operator_policy" => {
                let (name, pattern, definition) = (
                    arg(0, "a name")?,
                    arg(1, "a pattern")?,
                    arg(2, "a definition")?,
                );
                let parsed: Value = serde_json::from_str(&definition)
                    .map_err(|e| Fail::data(format!("Could not parse JSON document: {e}")))?;
                let priority: i64 = ctx
                    .line
                    .option("priority")
                    .unwrap_or("0")
                    .parse()
                    .map_err(|_| Fail::data("priority must be an integer"))?;
                let operator = verb == "set_operator_policy";
                let apply_to =
                    ctx.line
                        .option("apply-to")
                        .unwrap_or(if operator { "queues" } else { "all" });
                simple(
                    format!("Setting policy \"{name}\" for pattern \"{pattern}\" to \"{definition}\" with priority \"{priority}\" for vhost \"{vhost}\" ..."),
                    json!({"command": "set_policy", "vhost": vhost, "name": name, "pattern": pattern,
                           "definition": parsed, "priority": priority, "apply_to": apply_to,
                           "operator": operator}),
                )
            }
            "clear_policy" | "clear_operator_policy" => {
                let name = arg(0, "a name")?;
                simple(
                    format!("Clearing policy \"{name}\" on vhost \"{vhost}\" ..."),
                    json!({"command": "clear_policy", "vhost": vhost, "name": name,
                           "operator": verb == "clear_operator_policy"}),
                )
            }
            "purge_queue" => {
                let name = arg(0, "a queue name")?;
                simple(
                    format!("Purging queue '{name}' in vhost '{vhost}' ..."),
                    json!({"command": "purge_queue", "vhost": vhost, "name": name}),
                )
            }
            "delete_queue" => {
                let name = arg(0, "a queue name")?;
                output::banner(
                    &ctx.line,
                    &format!("Deleting queue '{name}' on vhost '{vhost}' ..."),
                );
                let count = ctx.call(
                    json!({"command": "delete_queue", "vhost": vhost, "name": name,
                                            "if_unused": ctx.line.option("if-unused").is_some(),
                                            "if_empty": ctx.line.option("if-empty").is_some()}),
                )?;
                if !ctx.line.quiet {
                    say!("Queue was successfully deleted with {count} ready messages");
                }
                Ok(())
            }
            "close_connection" => {
                let name = arg(0, "a connection pid")?;
                let reason = a
                    .get(1)
                    .cloned()
                    .unwrap_or_else(|| "Closed via rabbitmqctl".into());
                // A connection's pid is its peer (list_connections pid); its name, `peer ->
                // local`, and an Erlang-looking `<peer>` name it too.
                let peer = name.trim_start_matches('<').trim_end_matches('>');
                let peer = peer.split(" -> ").next().unwrap_or(peer).to_string();
                simple(
                    format!("Closing connection {name}, reason: {reason}..."),
                    json!({"command": "close_connection", "peer": peer, "reason": reason}),
                )
            }
            "export_definitions" => {
                let file = arg(0, "a file (\"-\" for standard output)")?;
                let defs = ctx.call(json!({"command": "export_definitions"}))?;
                let text = serde_json::to_string_pretty(&defs).unwrap_or_default();
                if file == "-" {
                    say!("{text}");
                    return Ok(());
                }
                output::banner(
                    &ctx.line,
                    &format!("Exporting definitions in JSON to a file at \"{file}\" ..."),
                );
                crate::admin::write_private(std::path::Path::new(&file), text.as_bytes())
                    .map_err(|e| Fail::data(format!("{file}: {e}")))
            }
            "import_definitions" => {
                let file = arg(0, "a file")?;
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| Fail::data(format!("{file}: {e}")))?;
                let defs: Value = serde_json::from_str(&text)
                    .map_err(|e| Fail::data(format!("{file}: not a JSON document: {e}")))?;
                simple(
                    format!("Importing definitions in JSON from a file at \"{file}\" ..."),
                    json!({"command": "import_definitions", "definitions": defs}),
                )
            }
            "cluster_status" => {
                let status = match ctx.call(json!({"command": "cluster_status"})) {
                    Ok(status) => status,
                    // A single node is a cluster of one, as RabbitMQ shows it.
                    Err(f) if f.message.contains("not a cluster node") => {
                        json!({"nodes": [{"name": ctx.node(), "link": "self"}], "cluster_name": ctx.node()})
                    }
                    Err(f) => return Err(f),
                };
                output::banner(
                    &ctx.line,
                    &format!("Cluster status of node {} ...", ctx.node()),
                );
                let names: Vec<Value> = status["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|n| n["name"].clone())
                    .collect();
                let running: Vec<Value> = status["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| n["link"] == json!("self") || n["link"] == json!("up"))
                    .map(|n| n["name"].clone())
                    .collect();
                let mut out = serde_json::Map::new();
                out.insert("disk_nodes".into(), Value::Array(names));
                out.insert("running_nodes".into(), Value::Array(running));
                out.insert("cluster_name".into(), status["cluster_name"].clone());
                out.insert("alarms".into(), json!([]));
                out.insert("partitions".into(), json!({}));
                out.insert("warren".into(), status);
                output::object(&ctx.line, &out);
                Ok(())
            }
            "stop_app" | "start_app" => {
                let serving = verb == "start_app";
                let what = if serving { "Starting" } else { "Stopping" };
                simple(
                    format!("{what} node {} ...", ctx.node()),
                    json!({"command": "set_serving", "serving": serving}),
                )
            }
            "enable_feature_flag" => {
                arg(0, "a feature flag name (or all)")?;
                output::banner(&ctx.line, "Warren has no feature flags: everything RabbitMQ gates behind one is always on. Nothing to enable.");
                Ok(())
            }
            other => Err(Fail::usage(format!("{other}: not supported by Warren"))),
        }
    })())
}

/// Whether the broker lets users log in with a password at all.
fn password_bridge(ctx: &Ctx) -> Result<bool, Fail> {
    Ok(ctx.call(json!({"command": "status"}))?["password_bridge"] == json!(true))
}
