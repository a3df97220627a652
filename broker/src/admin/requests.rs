//! The admin API's requests (rabbitmqctl's verbs as JSON) and their answers.

use serde::Deserialize;
use serde_json::{json, Value};

use super::definitions::AdminError;
use crate::audit::Event;
use crate::broker::Broker;
use crate::exchange::Destination;
use warren_protocol::field::as_text;

#[derive(Debug, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Request {
    AddUser {
        name: String,
        #[serde(default)]
        tags: Vec<String>,
    },
    DeleteUser {
        name: String,
    },
    ListUsers,
    SetUserTags {
        name: String,
        tags: Vec<String>,
    },
    ChangePassword {
        name: String,
        password: String,
    },
    ClearPassword {
        name: String,
    },
    /// Whether `password` is the user's password for the password bridge (rabbitmqctl
    /// authenticate_user); refused when the bridge is off, as no password logs anyone in then.
    AuthenticateUser {
        name: String,
        password: String,
    },
    AddVhost {
        name: String,
    },
    DeleteVhost {
        name: String,
    },
    ListVhosts,
    SetPermissions {
        vhost: String,
        user: String,
        configure: String,
        write: String,
        read: String,
    },
    ClearPermissions {
        vhost: String,
        user: String,
    },
    ListPermissions {
        vhost: String,
    },
    SetTopicPermissions {
        vhost: String,
        user: String,
        exchange: String,
        write: String,
        read: String,
    },
    ClearTopicPermissions {
        vhost: String,
        user: String,
        #[serde(default)]
        exchange: Option<String>,
    },
    ListTopicPermissions {
        vhost: String,
    },
    ListQueues {
        vhost: String,
    },
    /// set_policy / set_operator_policy (`operator`): `definition` is RabbitMQ's JSON object.
    SetPolicy {
        vhost: String,
        name: String,
        pattern: String,
        definition: Value,
        #[serde(default)]
        priority: i64,
        #[serde(default = "all_kinds")]
        apply_to: String,
        #[serde(default)]
        operator: bool,
    },
    ClearPolicy {
        vhost: String,
        name: String,
        #[serde(default)]
        operator: bool,
    },
    ListPolicies {
        vhost: String,
        #[serde(default)]
        operator: bool,
    },
    ExportDefinitions,
    /// A RabbitMQ definitions document (the file's content, parsed by brokerctl).
    ImportDefinitions {
        definitions: Value,
    },
    /// Drops a queue's ready messages (rabbitmqctl purge_queue).
    PurgeQueue {
        vhost: String,
        name: String,
    },
    /// Deletes a queue (rabbitmqctl delete_queue), with queue.delete's conditions.
    DeleteQueue {
        vhost: String,
        name: String,
        #[serde(default)]
        if_unused: bool,
        #[serde(default)]
        if_empty: bool,
    },
    ListExchanges {
        vhost: String,
    },
    ListBindings {
        vhost: String,
    },
    ListConnections,
    CloseConnection {
        peer: String,
        reason: String,
    },
    Status,
    /// rabbitmqctl stop_app / start_app: stop or resume serving clients.
    SetServing {
        serving: bool,
    },
    /// Every open channel of every connection (rabbitmqctl list_channels).
    ListChannels,
    /// Every consumer of the vhost's queues (rabbitmqctl list_consumers).
    ListConsumers {
        vhost: String,
    },
    ClusterStatus,
    TransferLeadership {
        #[serde(default)]
        to: Option<u64>,
        /// `metadata` (the default) or `shard-N`.
        #[serde(default)]
        group: Option<String>,
    },
    ClusterSnapshot,
    AddNode {
        id: u64,
        name: String,
        addr: String,
    },
    RemoveNode {
        id: u64,
    },
}

/// A policy's `apply-to` when not given: RabbitMQ's default.
fn all_kinds() -> String {
    "all".into()
}

impl Request {
    /// Changes are audited; listings are not.
    fn is_change(&self) -> bool {
        !matches!(
            self,
            Request::ListUsers
                | Request::ListVhosts
                | Request::ListPermissions { .. }
                | Request::ListTopicPermissions { .. }
                | Request::ListQueues { .. }
                | Request::ListPolicies { .. }
                | Request::ExportDefinitions
                | Request::ListExchanges { .. }
                | Request::ListBindings { .. }
                | Request::ListConnections
                | Request::Status
                | Request::ListConsumers { .. }
                | Request::ListChannels
                | Request::ClusterStatus
        )
    }

    /// What the audit log records (never a password).
    fn describe(&self) -> String {
        match self {
            Request::ChangePassword { name, .. } => format!("change_password {name}"),
            Request::AuthenticateUser { name, .. } => format!("authenticate_user {name}"),
            // The document may hold passwords.
            Request::ImportDefinitions { .. } => "import_definitions".into(),
            other => format!("{other:?}"),
        }
    }
}

/// Parses one request line as [`handle`] does, and describes it as the audit log would: for fuzzing
/// the admin socket's parsing without a broker. `None` when the line is not a request.
#[doc(hidden)]
pub fn parse_for_fuzzing(line: &str) -> Option<(bool, String)> {
    let request: Request = serde_json::from_str(line).ok()?;
    Some((request.is_change(), request.describe()))
}

/// Answers one request line: `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.
pub async fn handle(broker: &Broker, line: &str, uid: u32) -> Value {
    let request: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let change = request.is_change();
    let action = if change {
        request.describe()
    } else {
        String::new()
    };
    let result = execute(broker, request).await;
    if change {
        let who = format!("uid {uid}");
        let detail = result.as_ref().err().map(|e| e.0.clone());
        broker.audit.record(&Event {
            kind: "admin",
            action: &action,
            user: &who,
            source: "admin-socket",
            vhost: None,
            result: if result.is_ok() { "success" } else { "failure" },
            detail: detail.as_deref(),
        });
    }
    match result {
        Ok(v) => json!({"ok": true, "result": v}),
        Err(e) => json!({"ok": false, "error": e.0}),
    }
}

fn vhost(broker: &Broker, name: &str) -> Result<std::sync::Arc<crate::vhost::Vhost>, AdminError> {
    broker
        .vhost(name)
        .ok_or_else(|| AdminError(format!("no such vhost '{name}'")))
}

async fn execute(broker: &Broker, request: Request) -> Result<Value, AdminError> {
    let done = |r: Result<(), AdminError>| r.map(|()| Value::Null);
    match request {
        Request::AddUser { name, tags } => done(broker.add_user(&name, tags).await),
        Request::DeleteUser { name } => done(broker.delete_user(&name).await),
        Request::SetUserTags { name, tags } => done(broker.set_user_tags(&name, tags).await),
        Request::ChangePassword { name, password } => {
            let hash = crate::password::hash(&password).map_err(|e| AdminError(e.to_string()))?;
            done(broker.set_password_hash(&name, Some(hash)).await)
        }
        Request::ClearPassword { name } => done(broker.set_password_hash(&name, None).await),
        Request::AuthenticateUser { name, password } => {
            if !broker.config.auth.password_bridge {
                return Err(AdminError(
                    "password login ([auth] password_bridge) is off: no password logs anyone in".into(),
                ));
            }
            let users = broker.definitions().users;
            let user = users
                .iter()
                .find(|u| u.name == name)
                .ok_or_else(|| AdminError(format!("no such user '{name}'")))?;
            match user.password_hash.as_deref() {
                Some(hash) if crate::password::verify(hash, &password) => Ok(json!("Success")),
                _ => Err(AdminError(format!("Error: failed to authenticate user \"{name}\""))),
            }
        }
        Request::AddVhost { name } => done(broker.add_vhost(&name).await),
        Request::DeleteVhost { name } => done(broker.delete_vhost(&name).await),
        Request::SetPermissions { vhost, user, configure, write, read } => {
            done(broker.set_permissions(&vhost, &user, &configure, &write, &read).await)
        }
        Request::ClearPermissions { vhost, user } => done(broker.clear_permissions(&vhost, &user).await),
        Request::SetTopicPermissions { vhost, user, exchange, write, read } => {
            done(broker.set_topic_permissions(&vhost, &user, &exchange, &write, &read).await)
        }
        Request::ClearTopicPermissions { vhost, user, exchange } => {
            done(broker.clear_topic_permissions(&vhost, &user, exchange.as_deref()).await)
        }
        Request::SetPolicy { vhost, name, pattern, definition, priority, apply_to, operator } => {
            let Value::Object(definition) = definition else {
                return Err(AdminError(format!(
                    "definition must be a dictionary: {definition}"
                )));
            };
            let policy = warren_storage::definitions::PolicyDefinition {
                vhost,
                name,
                pattern,
                apply_to,
                priority,
                definition,
            };
            done(broker.set_policy(policy, operator).await)
        }
        Request::ClearPolicy { vhost, name, operator } => {
            done(broker.clear_policy(&vhost, &name, operator).await)
        }
        Request::ListPolicies { vhost: v, operator } => {
            let defs = broker.definitions();
            let mut rows: Vec<Value> = defs
                .policies_of(operator)
                .iter()
                .filter(|p| p.vhost == v)
                .map(|p| {
                    json!({
                        "vhost": p.vhost, "name": p.name, "pattern": p.pattern,
                        "apply-to": p.apply_to, "definition": p.definition, "priority": p.priority,
                    })
                })
                .collect();
            rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            Ok(Value::Array(rows))
        }
        Request::ExportDefinitions => Ok(broker.export_definitions()),
        Request::PurgeQueue { vhost: v, name } => {
            let vhost = vhost(broker, &v)?;
            let queue = vhost
                .find_queue(&name)
                .ok_or_else(|| AdminError(no_queue(&v, &name)))?;
            if broker.cluster().is_some() && !broker.shard_journal.holds(&queue) {
                return Err(AdminError(format!(
                    "queue '{name}' in vhost '{v}' is held by node {}: purge it there",
                    broker.queue_node(&queue).unwrap_or_else(|| "?".into())
                )));
            }
            Ok(json!(queue.purge(crate::time::Now::read())))
        }
        Request::DeleteQueue { vhost: v, name, if_unused, if_empty } => {
            let vhost = vhost(broker, &v)?;
            let nobody = crate::ids::ConnectionId(0);
            if vhost.is_replicated() {
                let command = vhost
                    .plan_delete_queue(&name, if_unused, if_empty, nobody)
                    .map_err(|e| AdminError(e.text))?;
                let count = vhost.find_queue(&name).map_or(0, |q| q.message_count());
                if let Some(command) = command {
                    broker.change(vec![command]).await?;
                }
                return Ok(json!(count));
            }
            if vhost.find_queue(&name).is_none() {
                return Err(AdminError(no_queue(&v, &name)));
            }
            let count = vhost
                .delete_queue(&name, if_unused, if_empty, nobody, crate::time::Now::read())
                .map_err(|e| AdminError(e.text))?;
            Ok(json!(count))
        }
        Request::ImportDefinitions { definitions } => broker.import_definitions(&definitions).await,
        Request::ListUsers => Ok(Value::Array(
            broker
                .definitions()
                .users
                .iter()
                .map(|u| json!({"name": u.name, "tags": u.tags, "password": u.password_hash.is_some()}))
                .collect(),
        )),
        Request::ListVhosts => Ok(json!(broker.definitions().vhosts)),
        Request::ListPermissions { vhost: v } => {
            vhost(broker, &v)?;
            let mut rows = Vec::new();
            for u in broker.definitions().users {
                for p in u.permissions.iter().filter(|p| p.vhost == v) {
                    rows.push(json!({"user": u.name, "configure": p.configure, "write": p.write, "read": p.read}));
                }
            }
            Ok(Value::Array(rows))
        }
        Request::ListTopicPermissions { vhost: v } => {
            vhost(broker, &v)?;
            let mut rows = Vec::new();
            for u in broker.definitions().users {
                for p in u.topic_permissions.iter().filter(|p| p.vhost == v) {
                    rows.push(json!({"user": u.name, "exchange": p.exchange, "write": p.write, "read": p.read}));
                }
            }
            Ok(Value::Array(rows))
        }
        Request::ListQueues { vhost: v } => {
            let mut rows: Vec<Value> = vhost(broker, &v)?
                .queue_list()
                .iter()
                .map(|q| {
                    let applied = q.applied();
                    json!({
                        "name": q.name(),
                        "type": if q.args.quorum {
                            "quorum"
                        } else if q.args.stream {
                            "stream"
                        } else {
                            "classic"
                        },
                        "node": broker.queue_node(q),
                        "shard": broker.queue_shard(q),
                        "messages": q.message_count(),
                        "messages_unacknowledged": q.unacknowledged(),
                        "message_bytes": q.ready_bytes(),
                        "messages_paged_out": q.paged_count(),
                        "arguments": super::json_table::to_json(&q.spec.arguments),
                        "consumers": q.consumer_count(),
                        "durable": q.spec.durable,
                        "exclusive": q.spec.exclusive_owner.is_some(),
                        "auto_delete": q.spec.auto_delete,
                        "policy": applied.policy,
                        "operator_policy": applied.operator_policy,
                    })
                })
                .collect();
            rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            Ok(Value::Array(rows))
        }
        Request::ListExchanges { vhost: v } => {
            let mut rows: Vec<Value> = vhost(broker, &v)?
                .exchange_list()
                .iter()
                .map(|x| {
                    json!({
                        "name": x.name(),
                        "type": x.spec.kind.as_str(),
                        "durable": x.spec.durable,
                        "auto_delete": x.spec.auto_delete,
                        "internal": x.spec.internal,
                        "alternate_exchange": x.spec.arguments.inner().get("alternate-exchange").and_then(as_text),
                        "arguments": super::json_table::to_json(&x.spec.arguments),
                    })
                })
                .collect();
            rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            Ok(Value::Array(rows))
        }
        Request::ListBindings { vhost: v } => {
            let mut rows = Vec::new();
            for x in vhost(broker, &v)?.exchange_list() {
                for b in x.bindings() {
                    let (kind, name) = match &b.destination {
                        Destination::Queue(q) => ("queue", q.name().to_string()),
                        Destination::Exchange(e) => ("exchange", e.to_string()),
                    };
                    rows.push(json!({
                        "source": x.name(),
                        "destination": name,
                        "destination_type": kind,
                        "routing_key": b.routing_key,
                    }));
                }
            }
            Ok(Value::Array(rows))
        }
        Request::ListConnections => Ok(Value::Array(
            broker
                .connections
                .iter()
                .map(|c| json!({"peer": c.peer.to_string(), "user": c.user, "vhost": c.vhost}))
                .collect(),
        )),
        Request::CloseConnection { peer, reason } => {
            let closed = broker.close_connections_from(&peer, &reason);
            if closed == 0 {
                return Err(AdminError(format!("no connection from {peer}")));
            }
            Ok(json!(closed))
        }
        Request::ClusterStatus => cluster_status(broker),
        Request::SetServing { serving } => {
            broker.set_serving(serving);
            Ok(Value::Null)
        }
        Request::ListChannels => {
            // Each connection's task answers for its channels (nothing shared on the hot path);
            // one that does not answer within a second is left out.
            let asked: Vec<_> = broker
                .connections
                .iter()
                .filter_map(|c| {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    c.outbox
                        .send(crate::connection::outbound::Outbound::Report(tx))
                        .ok()?;
                    Some((c.peer.to_string(), c.user.clone(), c.vhost.to_string(), rx))
                })
                .collect();
            let mut rows = Vec::new();
            for (peer, user, vhost, rx) in asked {
                let Ok(Ok(channels)) =
                    tokio::time::timeout(std::time::Duration::from_secs(1), rx).await
                else {
                    continue;
                };
                for mut ch in channels {
                    let number = ch["number"].clone();
                    ch["name"] = json!(format!("{peer} ({number})"));
                    ch["pid"] = json!(format!("{peer}/{number}"));
                    ch["connection"] = json!(peer);
                    ch["user"] = json!(user);
                    ch["vhost"] = json!(vhost);
                    rows.push(ch);
                }
            }
            Ok(Value::Array(rows))
        }
        Request::ListConsumers { vhost: v } => {
            let peers: std::collections::HashMap<u64, String> = broker
                .connections
                .iter()
                .map(|c| (c.key().0, c.peer.to_string()))
                .collect();
            let mut rows = Vec::new();
            for q in vhost(broker, &v)?.queue_list() {
                for c in q.consumers() {
                    let peer = peers.get(&c.id.connection.0).cloned().unwrap_or_default();
                    rows.push(json!({
                        "queue_name": q.name(),
                        "channel_pid": format!("{peer}/{}", c.id.channel.0),
                        "consumer_tag": c.id.tag.to_string(),
                        "ack_required": !c.no_ack,
                        "prefetch_count": c.prefetch.limit(),
                        "active": true,
                        "activity_status": "up",
                        "arguments": [],
                    }));
                }
            }
            Ok(Value::Array(rows))
        }
        Request::TransferLeadership { to, group } => {
            let leader = cluster_of(broker)?
                .transfer_leadership(to, group.as_deref())
                .await
                .map_err(AdminError)?;
            Ok(json!({ "leader": leader }))
        }
        Request::AddNode { id, name, addr } => {
            let addr = addr.parse().map_err(|_| {
                AdminError(format!(
                    "{addr:?} is not a node-link address (host:port, as in cluster.peers)"
                ))
            })?;
            cluster_of(broker)?
                .add_node(id, &name, addr)
                .await
                .map_err(AdminError)?;
            Ok(json!({ "added": id }))
        }
        Request::RemoveNode { id } => {
            cluster_of(broker)?
                .remove_node(id)
                .await
                .map_err(AdminError)?;
            Ok(json!({ "removed": id }))
        }
        Request::ClusterSnapshot => {
            let index = cluster_of(broker)?.compact().await.map_err(AdminError)?;
            Ok(json!({ "snapshot_index": index }))
        }
        Request::Status => Ok(json!({
            "product": "Warren",
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "listeners": broker.config.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "connections": broker.connections.len(),
            "vhosts": broker.definitions().vhosts,
            "memory_used": broker.alarms.used(),
            "rss_bytes": crate::metrics::process::resident_bytes(),
            "memory_limit": broker.alarms.high_watermark(),
            "memory_alarm": broker.alarms.memory_alarm(),
            "disk_alarm": broker.alarms.disk_alarm(),
            "disk_free": crate::alarms::free_disk(&broker.config.data_dir),
            "data_dir": broker.config.data_dir,
            "password_bridge": broker.config.auth.password_bridge,
            "cluster_node": broker.cluster().map(|c| c.links.config().me().map(|p| p.name.clone())),
            "uptime_ms": broker.started.elapsed().as_millis() as u64,
            "serving": broker.serving(),
        })),
    }
}

fn no_queue(vhost: &str, name: &str) -> String {
    format!("no queue '{name}' in vhost '{vhost}'")
}

fn cluster_of(broker: &Broker) -> Result<&crate::cluster::node::Cluster, AdminError> {
    broker.cluster.get().map(|c| &**c).ok_or_else(|| {
        AdminError("this broker is not a cluster node (no [cluster] section)".into())
    })
}

/// Every node of the cluster as this node sees it (itself, and each peer with its link), and the
/// metadata group's state on this node.
fn cluster_status(broker: &Broker) -> Result<Value, AdminError> {
    let cluster = cluster_of(broker)?;
    let config = cluster.links.config();
    let meta = cluster.meta_status();
    let leader = meta["leader"].as_u64();
    let membership = cluster.meta_membership();
    let role = |id: u64| match () {
        _ if leader == Some(id) => "leader",
        _ if membership.voter_ids().any(|v| v == id) => "voter",
        _ if membership.get_node(&id).is_some() => "learner",
        _ => "not a member",
    };
    let mut nodes = vec![json!({
        "id": config.node_id,
        "name": config.me().map(|p| p.name.clone()),
        "addr": config.listen.to_string(),
        "link": "self",
        "metadata": role(config.node_id),
        "rtt_us": null,
        "last_error": null,
    })];
    for peer in cluster.links.status() {
        nodes.push(json!({
            "id": peer.id,
            "name": peer.name,
            "addr": peer.addr.to_string(),
            "link": if peer.connected { "up" } else { "down" },
            "metadata": role(peer.id),
            "rtt_us": peer.rtt_us,
            "last_error": peer.last_error,
        }));
    }
    let mut groups = vec![meta];
    groups.extend(cluster.shards.iter().map(|s| s.status()));
    Ok(json!({"nodes": nodes, "groups": groups}))
}
