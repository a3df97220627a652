//! The verbs that talk to a running broker: one JSON request line on its admin socket, one JSON answer.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Add a user (a certificate identity: the CN of its client certificate). No permissions yet.
    #[command(name = "add_user", alias = "add-user")]
    AddUser {
        name: String,
        /// Tags such as administrator or monitoring (`--tags a b` or `--tag a --tag b`).
        #[arg(long = "tags", alias = "tag", num_args = 1..)]
        tags: Vec<String>,
    },
    #[command(name = "delete_user", alias = "delete-user")]
    DeleteUser {
        name: String,
    },
    #[command(name = "list_users", alias = "list-users")]
    ListUsers,
    #[command(name = "set_user_tags", alias = "set-user-tags")]
    SetUserTags {
        name: String,
        tags: Vec<String>,
    },
    /// Set the password for the optional PLAIN/AMQPLAIN bridge (stored as an argon2id hash).
    #[command(name = "change_password", alias = "change-password")]
    ChangePassword {
        name: String,
        /// The password; omit it to read it from standard input (one line), which keeps it out of
        /// `ps` and the shell history.
        password: Option<String>,
    },
    #[command(name = "clear_password", alias = "clear-password")]
    ClearPassword {
        name: String,
    },
    #[command(name = "add_vhost", alias = "add-vhost")]
    AddVhost {
        name: String,
    },
    #[command(name = "delete_vhost", alias = "delete-vhost")]
    DeleteVhost {
        name: String,
    },
    #[command(name = "list_vhosts", alias = "list-vhosts")]
    ListVhosts,
    /// Set a user's configure, write and read patterns in a vhost.
    #[command(name = "set_permissions", alias = "set-permissions")]
    SetPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        user: String,
        configure: String,
        write: String,
        read: String,
    },
    #[command(name = "clear_permissions", alias = "clear-permissions")]
    ClearPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        user: String,
    },
    #[command(name = "list_permissions", alias = "list-permissions")]
    ListPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
    },
    /// Set a user's routing-key patterns for one topic exchange ({username} and {vhost} are expanded).
    #[command(name = "set_topic_permissions", alias = "set-topic-permissions")]
    SetTopicPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        user: String,
        exchange: String,
        write: String,
        read: String,
    },
    #[command(name = "clear_topic_permissions", alias = "clear-topic-permissions")]
    ClearTopicPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        user: String,
        exchange: Option<String>,
    },
    #[command(name = "list_topic_permissions", alias = "list-topic-permissions")]
    ListTopicPermissions {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
    },
    /// Set a policy: queues and exchanges whose name PATTERN matches (a regular expression) take the
    /// keys of DEFINITION (a JSON object, e.g. '{"message-ttl":60000}').
    #[command(name = "set_policy", alias = "set-policy")]
    SetPolicy {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// queues, exchanges, all, classic_queues, quorum_queues or streams
        #[arg(long = "apply-to", default_value = "all")]
        apply_to: String,
        name: String,
        pattern: String,
        #[arg(value_parser = json_object)]
        definition: Value,
    },
    #[command(name = "clear_policy", alias = "clear-policy")]
    ClearPolicy {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        name: String,
    },
    #[command(name = "list_policies", alias = "list-policies")]
    ListPolicies {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
    },
    /// Set an operator policy: limits (expires, message-ttl, max-length, max-length-bytes,
    /// max-in-memory-*, delivery-limit) that apply on top of users' policies, the lower value winning.
    #[command(name = "set_operator_policy", alias = "set-operator-policy")]
    SetOperatorPolicy {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        #[arg(long = "apply-to", default_value = "queues")]
        apply_to: String,
        name: String,
        pattern: String,
        #[arg(value_parser = json_object)]
        definition: Value,
    },
    #[command(name = "clear_operator_policy", alias = "clear-operator-policy")]
    ClearOperatorPolicy {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
        name: String,
    },
    #[command(name = "list_operator_policies", alias = "list-operator-policies")]
    ListOperatorPolicies {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
    },
    /// Write the broker's definitions (users, vhosts, permissions, policies, durable exchanges,
    /// queues and bindings) to FILE ("-": standard output) in RabbitMQ's format.
    #[command(name = "export_definitions", alias = "export-definitions")]
    ExportDefinitions {
        file: PathBuf,
    },
    /// Apply a RabbitMQ definitions file; what already exists is kept. Nothing is applied if any
    /// of it is refused (the error names its JSON path).
    #[command(name = "import_definitions", alias = "import-definitions")]
    ImportDefinitions {
        file: PathBuf,
        #[arg(skip)]
        definitions: Option<Value>,
    },
    #[command(name = "list_queues", alias = "list-queues")]
    ListQueues {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
    },
    #[command(name = "list_exchanges", alias = "list-exchanges")]
    ListExchanges {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
    },
    #[command(name = "list_bindings", alias = "list-bindings")]
    ListBindings {
        #[arg(short = 'p', long = "vhost", default_value = "/")]
        vhost: String,
    },
    #[command(name = "list_connections", alias = "list-connections")]
    ListConnections,
    /// Close the connection from PEER (as list_connections shows it) with 320 CONNECTION_FORCED.
    #[command(name = "close_connection", alias = "close-connection")]
    CloseConnection {
        peer: String,
        #[arg(default_value = "Closed via brokerctl")]
        reason: String,
    },
    Status,
    /// The cluster's nodes and this node's links to them (also `brokerctl cluster status`).
    #[command(name = "cluster_status", alias = "cluster-status")]
    ClusterStatus,
    /// Snapshot the metadata group on this node and purge its log up to the snapshot.
    #[command(name = "cluster_snapshot", alias = "cluster-snapshot")]
    ClusterSnapshot,
    /// Hand this node's leadership of a group to another node (run it on the group's leader).
    #[command(name = "transfer_leadership", alias = "transfer-leadership")]
    TransferLeadership {
        /// The node to lead next (default: the linked node with the shortest round trip).
        #[arg(long)]
        to: Option<u64>,
        /// The group: `metadata` (default) or `shard-N`, as `cluster status` lists them.
        #[arg(long)]
        group: Option<String>,
    },
    /// Add a node started with `join = true` to the cluster: every group makes it a learner, waits
    /// for it to catch up, then makes it a voter (also `brokerctl cluster add-node`).
    #[command(name = "add_node", alias = "add-node")]
    AddNode {
        /// Its node id (never one a removed node had).
        id: u64,
        /// Its name: its node certificate's CN.
        name: String,
        /// Its node-link address (host:port).
        addr: String,
    },
    /// Remove a node from the cluster; its classic queues are deleted (run it on another node).
    #[command(name = "remove_node", alias = "remove-node")]
    RemoveNode {
        id: u64,
    },
}

impl AdminCommand {
    /// The JSON request and, for listings, the columns to print.
    fn request(&self) -> (Value, Layout) {
        use AdminCommand::*;
        match self {
            AddUser { name, tags } => (
                json!({"command": "add_user", "name": name, "tags": tags}),
                Layout::Plain,
            ),
            DeleteUser { name } => (
                json!({"command": "delete_user", "name": name}),
                Layout::Plain,
            ),
            ListUsers => (
                json!({"command": "list_users"}),
                Layout::Table(&["name", "tags", "password"]),
            ),
            SetUserTags { name, tags } => (
                json!({"command": "set_user_tags", "name": name, "tags": tags}),
                Layout::Plain,
            ),
            ChangePassword { name, password } => (
                json!({"command": "change_password", "name": name, "password": password}),
                Layout::Plain,
            ),
            ClearPassword { name } => (
                json!({"command": "clear_password", "name": name}),
                Layout::Plain,
            ),
            AddVhost { name } => (json!({"command": "add_vhost", "name": name}), Layout::Plain),
            DeleteVhost { name } => (
                json!({"command": "delete_vhost", "name": name}),
                Layout::Plain,
            ),
            ListVhosts => (json!({"command": "list_vhosts"}), Layout::Plain),
            SetPermissions {
                vhost,
                user,
                configure,
                write,
                read,
            } => (
                json!({"command": "set_permissions", "vhost": vhost, "user": user,
                       "configure": configure, "write": write, "read": read}),
                Layout::Plain,
            ),
            ClearPermissions { vhost, user } => (
                json!({"command": "clear_permissions", "vhost": vhost, "user": user}),
                Layout::Plain,
            ),
            ListPermissions { vhost } => (
                json!({"command": "list_permissions", "vhost": vhost}),
                Layout::Table(&["user", "configure", "write", "read"]),
            ),
            SetTopicPermissions {
                vhost,
                user,
                exchange,
                write,
                read,
            } => (
                json!({"command": "set_topic_permissions", "vhost": vhost, "user": user,
                       "exchange": exchange, "write": write, "read": read}),
                Layout::Plain,
            ),
            ClearTopicPermissions {
                vhost,
                user,
                exchange,
            } => (
                json!({"command": "clear_topic_permissions", "vhost": vhost, "user": user, "exchange": exchange}),
                Layout::Plain,
            ),
            ListTopicPermissions { vhost } => (
                json!({"command": "list_topic_permissions", "vhost": vhost}),
                Layout::Table(&["user", "exchange", "write", "read"]),
            ),
            SetPolicy {
                vhost,
                priority,
                apply_to,
                name,
                pattern,
                definition,
            }
            | SetOperatorPolicy {
                vhost,
                priority,
                apply_to,
                name,
                pattern,
                definition,
            } => (
                json!({"command": "set_policy", "vhost": vhost, "name": name, "pattern": pattern,
                       "definition": definition, "priority": priority, "apply_to": apply_to,
                       "operator": matches!(self, SetOperatorPolicy { .. })}),
                Layout::Plain,
            ),
            ClearPolicy { vhost, name } | ClearOperatorPolicy { vhost, name } => (
                json!({"command": "clear_policy", "vhost": vhost, "name": name,
                       "operator": matches!(self, ClearOperatorPolicy { .. })}),
                Layout::Plain,
            ),
            ListPolicies { vhost } | ListOperatorPolicies { vhost } => (
                json!({"command": "list_policies", "vhost": vhost,
                       "operator": matches!(self, ListOperatorPolicies { .. })}),
                Layout::Table(&[
                    "vhost",
                    "name",
                    "pattern",
                    "apply-to",
                    "definition",
                    "priority",
                ]),
            ),
            ExportDefinitions { .. } => (json!({"command": "export_definitions"}), Layout::Plain),
            ImportDefinitions { definitions, .. } => (
                json!({"command": "import_definitions", "definitions": definitions}),
                Layout::Plain,
            ),
            ListQueues { vhost } => (
                json!({"command": "list_queues", "vhost": vhost}),
                Layout::Table(&[
                    "name",
                    "type",
                    "messages",
                    "consumers",
                    "durable",
                    "exclusive",
                    "auto_delete",
                    "policy",
                ]),
            ),
            ListExchanges { vhost } => (
                json!({"command": "list_exchanges", "vhost": vhost}),
                Layout::Table(&[
                    "name",
                    "type",
                    "durable",
                    "auto_delete",
                    "internal",
                    "alternate_exchange",
                ]),
            ),
            ListBindings { vhost } => (
                json!({"command": "list_bindings", "vhost": vhost}),
                Layout::Table(&["source", "destination", "destination_type", "routing_key"]),
            ),
            ListConnections => (
                json!({"command": "list_connections"}),
                Layout::Table(&["peer", "user", "vhost"]),
            ),
            CloseConnection { peer, reason } => (
                json!({"command": "close_connection", "peer": peer, "reason": reason}),
                Layout::Plain,
            ),
            Status => (json!({"command": "status"}), Layout::Plain),
            ClusterSnapshot => (json!({"command": "cluster_snapshot"}), Layout::Plain),
            TransferLeadership { to, group } => (
                json!({"command": "transfer_leadership", "to": to, "group": group}),
                Layout::Plain,
            ),
            AddNode { id, name, addr } => (
                json!({"command": "add_node", "id": id, "name": name, "addr": addr}),
                Layout::Plain,
            ),
            RemoveNode { id } => (json!({"command": "remove_node", "id": id}), Layout::Plain),
            ClusterStatus => (
                json!({"command": "cluster_status"}),
                Layout::Sections(&[
                    (
                        "nodes",
                        &[
                            "id",
                            "name",
                            "addr",
                            "link",
                            "metadata",
                            "rtt_us",
                            "last_error",
                        ],
                    ),
                    (
                        "groups",
                        &[
                            "group",
                            "state",
                            "leader",
                            "term",
                            "last_log_index",
                            "applied_index",
                            "snapshot_index",
                            "purged_index",
                            "messages",
                        ],
                    ),
                ]),
            ),
        }
    }
}

/// How a verb's answer is printed in the table format.
enum Layout {
    /// As it is (nothing, a list of names, or JSON).
    Plain,
    /// Rows of the answer's array under these columns.
    Table(&'static [&'static str]),
    /// Several tables: each a member of the answer's object, its rows under its columns.
    Sections(&'static [(&'static str, &'static [&'static str])]),
}

/// Prints `rows` under a header of `columns`, tab-separated.
fn print_table(rows: &[Value], columns: &[&str]) {
    println!("{}", columns.join("\t"));
    for row in rows {
        println!(
            "{}",
            columns
                .iter()
                .map(|c| cell(&row[*c]))
                .collect::<Vec<_>>()
                .join("\t")
        );
    }
}

pub(crate) fn socket_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("WARREN_ADMIN_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/warren/admin.sock"))
}

/// Why a command failed, for the exit code scripts rely on.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The broker could not be reached (exit 69, EX_UNAVAILABLE, as rabbitmqctl).
    #[error("{0}")]
    Unavailable(String),
    /// The broker refused the request (exit 1).
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns the broker's `result`, or its error as this command's error.
/// Writes `data` to `file`, readable by its owner only (definitions hold password hashes).
pub(crate) fn write_private(file: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(data)
}

pub(crate) fn call(socket: &PathBuf, request: &Value) -> anyhow::Result<Value> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        Failure::Unavailable(format!(
            "cannot reach the broker's admin socket {}: {e}",
            socket.display()
        ))
    })?;
    // A node's catch-up while it is added, or a removal, may take minutes on a loaded cluster.
    let patience = match request["command"].as_str() {
        Some("add_node" | "remove_node") => Duration::from_secs(600),
        _ => Duration::from_secs(30),
    };
    stream.set_read_timeout(Some(patience))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("no answer from the broker")?;
    if answer.is_empty() {
        bail!("the broker closed the admin connection (is this user root or the broker's user?)");
    }
    let answer: Value =
        serde_json::from_str(&answer).context("unreadable answer from the broker")?;
    if answer["ok"] == Value::Bool(true) {
        Ok(answer["result"].clone())
    } else {
        let error = answer["error"]
            .as_str()
            .unwrap_or("the broker refused the request");
        Err(Failure::Refused(error.to_string()).into())
    }
}

/// A table cell: control and invisible characters are escaped (`\t`, `\n`, `\u{202e}`...) so that no
/// name can break a row into two or a cell into columns, nor hide what it is. Backslashes stay as
/// they are, as rabbitmqctl prints them: permission patterns such as `^amq\.default` must read back
/// unchanged (deployment tools compare them to decide whether to set them again).
fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if warren_storage::names::is_invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)))
            }
            c => out.push(c),
        }
    }
    out
}

/// A policy definition on the command line: a JSON object.
fn json_object(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(format!("a policy definition is a JSON object, not {other}")),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => escaped(s),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// How results are printed: tab-separated columns with a header (rabbitmqctl's habit) or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// The password of `change_password NAME` without PASSWORD: the first line of standard input.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        anyhow::bail!("no password on standard input (change_password NAME reads one line)");
    }
    Ok(password.to_string())
}

pub fn run(
    socket: Option<PathBuf>,
    format: Format,
    mut command: AdminCommand,
) -> anyhow::Result<()> {
    if let AdminCommand::ChangePassword { password, .. } = &mut command {
        if password.is_none() {
            *password = Some(password_from_stdin()?);
        }
    }
    if let AdminCommand::ImportDefinitions { file, definitions } = &mut command {
        let text = std::fs::read_to_string(&*file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not JSON: {e}", file.display()))?;
        *definitions = Some(doc);
    }
    let (request, layout) = command.request();
    let result = call(&socket_path(socket), &request)?;
    if let AdminCommand::ExportDefinitions { file } = &command {
        let text = serde_json::to_string_pretty(&result)? + "\n";
        if file.as_os_str() == "-" {
            print!("{text}");
        } else {
            write_private(file, text.as_bytes())
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
            println!("Exported definitions to {}", file.display());
        }
        return Ok(());
    }
    if let AdminCommand::ImportDefinitions { file, .. } = &command {
        for w in result["warnings"].as_array().into_iter().flatten() {
            eprintln!("warning: {}", cell(w));
        }
        println!(
            "Imported definitions from {} ({} kept as they were)",
            file.display(),
            result["kept"]
        );
        return Ok(());
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    match (&result, layout) {
        (Value::Array(rows), Layout::Table(columns)) => print_table(rows, columns),
        (Value::Object(_), Layout::Sections(sections)) => {
            for (i, (name, columns)) in sections.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                let rows = result[*name].as_array().cloned().unwrap_or_default();
                print_table(&rows, columns);
            }
        }
        (Value::Array(items), _) => items.iter().for_each(|i| println!("{}", cell(i))),
        (Value::Null, _) => {}
        (other, _) => println!("{}", serde_json::to_string_pretty(other)?),
    }
    Ok(())
}
