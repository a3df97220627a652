//! `brokerctl import_definitions FILE` and `[definitions] load_at_boot`: a RabbitMQ definitions
//! file (what `rabbitmqctl export_definitions` and deployment tools write) applied without
//! overwriting what exists. The whole file is checked first — every error names its JSON path —
//! and nothing of it is applied unless all of it can be. What each field becomes:
//! - `users`: certificate identities with their `tags` (a list or a comma-separated string). A
//!   plaintext `password` becomes the password bridge's hash only when the bridge is enabled;
//!   RabbitMQ's `password_hash` cannot be verified by Warren and is ignored (warned once).
//! - `vhosts`, `permissions`, `topic_permissions`, `policies`: as RabbitMQ defines them; a user's
//!   existing permission in a vhost, and an existing policy of the same name, are kept.
//! - `parameters`: operator policies (`operator_policy`); other components are ignored (warned).
//! - `exchanges`, `queues`, `bindings`: declared (durable as given) unless they exist.
//!
//! Everything else (`limits`, `metadata`, `global_parameters`, ...) is ignored, warned once.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};
use warren_storage::definitions::{
    PermissionDefinition, PolicyDefinition, TopicPermissionDefinition,
};

use super::definitions::AdminError;
use super::json_table::from_json;
use crate::broker::Broker;
use crate::exchange::{Destination, ExchangeKind, ExchangeSpec};
use crate::meta::MetaCommand;
use crate::queue::QueueSpec;
use crate::resource::Resource;

/// What a file asks for, checked.
#[derive(Default)]
struct Plan {
    commands: Vec<MetaCommand>,
    exchanges: Vec<(String, ExchangeSpec)>,
    queues: Vec<(String, QueueSpec)>,
    bindings: Vec<Binding>,
    warnings: BTreeSet<String>,
    kept: usize,
}

struct Binding {
    vhost: String,
    source: String,
    destination: String,
    to_queue: bool,
    routing_key: String,
    arguments: amq_protocol::types::FieldTable,
}

/// A section's objects, each with its JSON path.
type Items<'a> = Vec<(String, &'a Map<String, Value>)>;

fn items<'a>(doc: &'a Map<String, Value>, key: &str) -> Result<Items<'a>, String> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let path = format!("$.{key}[{i}]");
                match v {
                    Value::Object(o) => Ok((path, o)),
                    _ => Err(format!("{path}: expected an object")),
                }
            })
            .collect(),
        Some(_) => Err(format!("$.{key}: expected a list")),
    }
}

fn string(o: &Map<String, Value>, key: &str, path: &str) -> Result<String, String> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{path}.{key}: expected a string")),
        None => Err(format!("{path}.{key}: missing")),
    }
}

fn boolean(o: &Map<String, Value>, key: &str, default: bool, path: &str) -> Result<bool, String> {
    match o.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("{path}.{key}: expected true or false")),
    }
}

fn name(kind: &str, value: &str, path: &str) -> Result<(), String> {
    warren_storage::names::check(value)
        .map_err(|why| format!("{path}: invalid {kind} name {value:?}: {why}"))
}

fn pattern(o: &Map<String, Value>, key: &str, path: &str) -> Result<String, String> {
    let p = string(o, key, path)?;
    regex::Regex::new(&p).map_err(|e| format!("{path}.{key}: invalid pattern {p:?}: {e}"))?;
    Ok(p)
}

/// A policy's definition: an object, or (RabbitMQ 3.10's export of an operator policy) a list of
/// `[key, value]` pairs.
fn definition(v: Option<&Value>, path: &str) -> Result<Map<String, Value>, String> {
    match v {
        Some(Value::Object(d)) => Ok(d.clone()),
        Some(Value::Array(pairs)) => pairs
            .iter()
            .enumerate()
            .map(|(i, pair)| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(k), v]) => Ok((k.clone(), v.clone())),
                _ => Err(format!(
                    "{path}.definition[{i}]: expected a [key, value] pair"
                )),
            })
            .collect(),
        _ => Err(format!("{path}.definition: expected an object")),
    }
}

/// That `name`, referred to at `path`.`field`, is a user or vhost of the broker or the file.
fn must_exist(names: &BTreeSet<String>, name: &str, path: &str, field: &str) -> Result<(), String> {
    match names.contains(name) {
        true => Ok(()),
        false => Err(format!("{path}.{field}: no such {field} '{name}'")),
    }
}

/// Fields of each section that are read; the others are warned about once.
fn unread(plan: &mut Plan, section: &str, o: &Map<String, Value>, read: &[&str]) {
    for key in o.keys().filter(|k| !read.contains(&k.as_str())) {
        plan.warnings
            .insert(format!("{section}[].{key} is ignored by Warren"));
    }
}

/// The metadata commands that declare `exchanges`, `queues` and `bindings` on a cluster: classic
/// queues homed on this node (as a client's declaration here would be), quorum queues on their
/// shards.
fn cluster_topology(
    r: &crate::vhost::Replication,
    exchanges: Vec<(String, ExchangeSpec)>,
    queues: Vec<(String, QueueSpec)>,
    bindings: Vec<Binding>,
) -> Vec<MetaCommand> {
    let mut out = Vec::new();
    for (vhost, x) in exchanges {
        out.push(MetaCommand::DeclareExchange {
            vhost: vhost.as_str().into(),
            exchange: x.name,
            kind: x.kind.as_str().to_string(),
            durable: x.durable,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments: x.arguments,
        });
    }
    for (vhost, q) in queues {
        let quorum = q
            .arguments
            .inner()
            .get("x-queue-type")
            .and_then(warren_protocol::field::as_text)
            .is_some_and(|t| t == "quorum");
        let home = (!quorum).then_some(crate::meta::QueueHome {
            node: r.node,
            run: r.run,
            durable: q.durable,
            owner: None,
        });
        out.push(MetaCommand::DeclareQueue {
            vhost: vhost.as_str().into(),
            queue: q.name,
            auto_delete: q.auto_delete,
            arguments: q.arguments,
            declared_by: None,
            home,
            // Imported quorum queues go where their names hash to (`balanced`).
            shard: None,
        });
    }
    for b in bindings {
        out.push(MetaCommand::Bind {
            vhost: b.vhost.as_str().into(),
            binding: crate::meta::StoredBinding {
                source: b.source,
                kind: match b.to_queue {
                    true => crate::meta::DestinationKind::Queue,
                    false => crate::meta::DestinationKind::Exchange,
                },
                destination: b.destination,
                routing_key: b.routing_key,
                arguments: b.arguments,
            },
        });
    }
    out
}

impl Broker {
    /// Applies a RabbitMQ definitions document; returns what was created, kept and warned about.
    pub(crate) async fn import_definitions(&self, doc: &Value) -> Result<Value, AdminError> {
        let plan = self.plan_import(doc).map_err(AdminError)?;
        let created = json!({
            "commands": plan.commands.len(),
            "exchanges": plan.exchanges.len(),
            "queues": plan.queues.len(),
            "bindings": plan.bindings.len(),
        });
        if !plan.commands.is_empty() {
            self.change(plan.commands).await?;
        }
        if let Some(r) = &self.replication {
            // A cluster node: exchanges, queues and bindings go through the metadata group, as
            // clients' declarations do, and every node creates them.
            let topology = cluster_topology(r, plan.exchanges, plan.queues, plan.bindings);
            if !topology.is_empty() {
                self.change(topology).await?;
            }
            return Ok(json!({
                "created": created,
                "kept": plan.kept,
                "warnings": plan.warnings.into_iter().collect::<Vec<_>>(),
            }));
        }
        let now = crate::time::Now::read();
        for (vhost, spec) in plan.exchanges {
            if let Some(v) = self.vhost(&vhost) {
                v.declare_exchange(spec, false)
                    .map_err(|e| AdminError(e.text))?;
            }
        }
        for (vhost, spec) in plan.queues {
            if let Some(v) = self.vhost(&vhost) {
                v.declare_queue(
                    spec,
                    false,
                    false,
                    crate::ids::ConnectionId(0),
                    || Ok(()),
                    now,
                )
                .map_err(|e| AdminError(e.text))?;
            }
        }
        for b in plan.bindings {
            if let Some(v) = self.vhost(&b.vhost) {
                let destination = match b.to_queue {
                    true => match v.find_queue(&b.destination) {
                        Some(q) => Destination::Queue(q),
                        None => continue,
                    },
                    false => Destination::Exchange(b.destination.as_str().into()),
                };
                v.bind(&b.source, destination, &b.routing_key, b.arguments)
                    .map_err(|e| AdminError(e.text))?;
            }
        }
        Ok(json!({
            "created": created,
            "kept": plan.kept,
            "warnings": plan.warnings.into_iter().collect::<Vec<_>>(),
        }))
    }

    fn plan_import(&self, doc: &Value) -> Result<Plan, String> {
        let Value::Object(doc) = doc else {
            return Err("$: expected an object (a RabbitMQ definitions file)".into());
        };
        let mut plan = Plan::default();
        let known = [
            "users",
            "vhosts",
            "permissions",
            "topic_permissions",
            "policies",
            "parameters",
            "queues",
            "exchanges",
            "bindings",
        ];
        for key in doc.keys() {
            let meta = [
                "rabbit_version",
                "rabbitmq_version",
                "product_name",
                "product_version",
            ];
            let empty = doc[key].as_array().is_some_and(Vec::is_empty);
            if !known.contains(&key.as_str()) && !meta.contains(&key.as_str()) && !empty {
                plan.warnings.insert(format!("{key} is ignored by Warren"));
            }
        }
        let defs = self.definitions();
        let bridge = self.config.auth.password_bridge;
        // Vhosts.
        let mut vhosts: BTreeSet<String> = defs.vhosts.iter().cloned().collect();
        for (path, o) in items(doc, "vhosts")? {
            let v = string(o, "name", &path)?;
            name("vhost", &v, &path)?;
            unread(&mut plan, "vhosts", o, &["name"]);
            if vhosts.insert(v.clone()) {
                plan.commands.push(MetaCommand::AddVhost {
                    vhost: v.as_str().into(),
                });
            } else {
                plan.kept += 1;
            }
        }
        // Users.
        let mut users: BTreeSet<String> = defs.users.iter().map(|u| u.name.clone()).collect();
        for (path, o) in items(doc, "users")? {
            let user = string(o, "name", &path)?;
            name("user", &user, &path)?;
            let tags: Vec<String> = match o.get("tags") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => s
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        t.as_str()
                            .map(str::to_string)
                            .ok_or(format!("{path}.tags[{i}]: expected a string"))
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(format!(
                        "{path}.tags: expected a list or a comma-separated string"
                    ))
                }
            };
            unread(
                &mut plan,
                "users",
                o,
                &[
                    "name",
                    "tags",
                    "password",
                    "password_hash",
                    "hashing_algorithm",
                ],
            );
            if !users.insert(user.clone()) {
                plan.kept += 1;
                continue;
            }
            plan.commands.push(MetaCommand::AddUser {
                user: user.clone(),
                tags,
            });
            match (o.get("password"), bridge) {
                (Some(Value::String(p)), true) if !p.is_empty() => {
                    let hash =
                        crate::password::hash(p).map_err(|e| format!("{path}.password: {e}"))?;
                    plan.commands.push(MetaCommand::SetPasswordHash {
                        user,
                        hash: Some(hash),
                    });
                }
                (Some(_), false) => {
                    plan.warnings.insert("users[].password is ignored: the password bridge is off, users log in with their certificates".into());
                }
                _ => {}
            }
            if o.get("password_hash")
                .and_then(Value::as_str)
                .is_some_and(|h| !h.is_empty())
            {
                plan.warnings.insert("users[].password_hash is ignored: RabbitMQ's hashes cannot be verified by Warren (brokerctl change_password sets one for the password bridge)".into());
            }
        }
        let has_permission = |user: &str, vhost: &str| {
            defs.users
                .iter()
                .any(|u| u.name == user && u.permissions.iter().any(|p| p.vhost == vhost))
        };
        for (path, o) in items(doc, "permissions")? {
            let (user, vhost) = (string(o, "user", &path)?, string(o, "vhost", &path)?);
            must_exist(&users, &user, &path, "user")?;
            must_exist(&vhosts, &vhost, &path, "vhost")?;
            let permission = PermissionDefinition {
                vhost: vhost.clone(),
                configure: pattern(o, "configure", &path)?,
                write: pattern(o, "write", &path)?,
                read: pattern(o, "read", &path)?,
            };
            if has_permission(&user, &vhost) {
                plan.kept += 1;
            } else {
                plan.commands
                    .push(MetaCommand::SetPermissions { user, permission });
            }
        }
        for (path, o) in items(doc, "topic_permissions")? {
            let (user, vhost) = (string(o, "user", &path)?, string(o, "vhost", &path)?);
            must_exist(&users, &user, &path, "user")?;
            must_exist(&vhosts, &vhost, &path, "vhost")?;
            let permission = TopicPermissionDefinition {
                vhost,
                exchange: string(o, "exchange", &path)?,
                write: pattern(o, "write", &path)?,
                read: pattern(o, "read", &path)?,
            };
            let exists = defs.users.iter().any(|u| {
                u.name == user
                    && u.topic_permissions
                        .iter()
                        .any(|p| p.vhost == permission.vhost && p.exchange == permission.exchange)
            });
            if exists {
                plan.kept += 1;
            } else {
                plan.commands
                    .push(MetaCommand::SetTopicPermissions { user, permission });
            }
        }
        let policy = |plan: &mut Plan,
                      o: &Map<String, Value>,
                      vhost: String,
                      name: String,
                      path: &str,
                      operator: bool|
         -> Result<(), String> {
            must_exist(&vhosts, &vhost, path, "vhost")?;
            let definition = definition(o.get("definition"), path)?;
            let priority = match o.get("priority") {
                None => 0,
                Some(v) => v
                    .as_i64()
                    .ok_or(format!("{path}.priority: expected an integer"))?,
            };
            let apply_to = match o.get("apply-to") {
                None => "all".to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err(format!("{path}.apply-to: expected a string")),
            };
            let p = PolicyDefinition {
                vhost,
                name,
                pattern: string(o, "pattern", path)?,
                apply_to,
                priority,
                definition,
            };
            crate::policy::validate(&p, operator).map_err(|why| format!("{path}: {why}"))?;
            if defs
                .policies_of(operator)
                .iter()
                .any(|e| e.vhost == p.vhost && e.name == p.name)
            {
                plan.kept += 1;
            } else {
                plan.commands.push(MetaCommand::SetPolicy {
                    policy: p,
                    operator,
                });
            }
            Ok(())
        };
        for (path, o) in items(doc, "policies")? {
            let (vhost, n) = (string(o, "vhost", &path)?, string(o, "name", &path)?);
            policy(&mut plan, o, vhost, n, &path, false)?;
        }
        for (path, o) in items(doc, "parameters")? {
            if o.get("component").and_then(Value::as_str) != Some("operator_policy") {
                plan.warnings.insert(format!(
                    "parameters of component {} are ignored by Warren",
                    o.get("component").map_or("(none)".into(), Value::to_string)
                ));
                continue;
            }
            let (vhost, n) = (string(o, "vhost", &path)?, string(o, "name", &path)?);
            let Some(Value::Object(value)) = o.get("value") else {
                return Err(format!("{path}.value: expected an object"));
            };
            policy(&mut plan, value, vhost, n, &format!("{path}.value"), true)?;
        }
        // Exchanges, queues, bindings.
        let exists_x =
            |vhost: &str, x: &str| self.vhost(vhost).is_some_and(|v| v.exchange(x).is_ok());
        let exists_q =
            |vhost: &str, q: &str| self.vhost(vhost).is_some_and(|v| v.find_queue(q).is_some());
        let mut new_x: BTreeSet<(String, String)> = BTreeSet::new();
        for (path, o) in items(doc, "exchanges")? {
            let (n, vhost) = (string(o, "name", &path)?, string(o, "vhost", &path)?);
            must_exist(&vhosts, &vhost, &path, "vhost")?;
            let kind_name = string(o, "type", &path)?;
            let kind = ExchangeKind::parse(&kind_name)
                .ok_or(format!("{path}.type: unknown exchange type '{kind_name}'"))?;
            if n.is_empty() || n.starts_with("amq.") {
                plan.kept += 1;
                continue;
            }
            crate::resource::check_name("exchange", &n)
                .map_err(|e| format!("{path}.name: {}", e.text))?;
            let spec = ExchangeSpec {
                name: n.clone(),
                kind,
                durable: boolean(o, "durable", true, &path)?,
                auto_delete: boolean(o, "auto_delete", false, &path)?,
                internal: boolean(o, "internal", false, &path)?,
                arguments: o.get("arguments").map_or(Ok(Default::default()), |a| {
                    from_json(a, &format!("{path}.arguments"))
                })?,
            };
            if exists_x(&vhost, &n) || !new_x.insert((vhost.clone(), n)) {
                plan.kept += 1;
            } else {
                plan.exchanges.push((vhost, spec));
            }
        }
        let mut new_q: BTreeSet<(String, String)> = BTreeSet::new();
        for (path, o) in items(doc, "queues")? {
            let (n, vhost) = (string(o, "name", &path)?, string(o, "vhost", &path)?);
            must_exist(&vhosts, &vhost, &path, "vhost")?;
            crate::resource::check_name("queue", &n)
                .map_err(|e| format!("{path}.name: {}", e.text))?;
            let arguments = o.get("arguments").map_or(Ok(Default::default()), |a| {
                from_json(a, &format!("{path}.arguments"))
            })?;
            let durable = boolean(o, "durable", true, &path)?;
            let auto_delete = boolean(o, "auto_delete", false, &path)?;
            let res = Resource {
                kind: "queue",
                name: &n,
                vhost: &vhost,
            };
            let args = crate::queue::arguments::parse(&arguments, &res)
                .map_err(|e| format!("{path}.arguments: {}", e.text))?;
            if args.quorum || args.stream {
                crate::queue::arguments::check_quorum_properties(durable, false, auto_delete, &res)
                    .map_err(|e| format!("{path}: {}", e.text))?;
            }
            unread(
                &mut plan,
                "queues",
                o,
                &[
                    "name",
                    "vhost",
                    "durable",
                    "auto_delete",
                    "arguments",
                    "type",
                ],
            );
            let spec = QueueSpec {
                name: n.as_str().into(),
                durable,
                exclusive_owner: None,
                auto_delete,
                arguments,
                declared_by: None,
                home: None,
                shard: None,
            };
            if exists_q(&vhost, &n) || !new_q.insert((vhost.clone(), n)) {
                plan.kept += 1;
            } else {
                plan.queues.push((vhost, spec));
            }
        }
        for (path, o) in items(doc, "bindings")? {
            let vhost = string(o, "vhost", &path)?;
            let source = string(o, "source", &path)?;
            let destination = string(o, "destination", &path)?;
            let to_queue = match string(o, "destination_type", &path)?.as_str() {
                "queue" => true,
                "exchange" => false,
                other => {
                    return Err(format!(
                        "{path}.destination_type: '{other}' is neither queue nor exchange"
                    ))
                }
            };
            let known_x = |x: &str| {
                x.is_empty()
                    || exists_x(&vhost, x)
                    || new_x.contains(&(vhost.clone(), x.to_string()))
            };
            if !known_x(&source) || source.is_empty() {
                return Err(format!(
                    "{path}.source: no exchange '{source}' in vhost '{vhost}'"
                ));
            }
            let known_d = match to_queue {
                true => {
                    exists_q(&vhost, &destination)
                        || new_q.contains(&(vhost.clone(), destination.clone()))
                }
                false => known_x(&destination),
            };
            if !known_d {
                return Err(format!(
                    "{path}.destination: no {} '{destination}' in vhost '{vhost}'",
                    if to_queue { "queue" } else { "exchange" }
                ));
            }
            plan.bindings.push(Binding {
                vhost,
                source,
                destination,
                to_queue,
                routing_key: o
                    .get("routing_key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                arguments: o.get("arguments").map_or(Ok(Default::default()), |a| {
                    from_json(a, &format!("{path}.arguments"))
                })?,
            });
        }
        Ok(plan)
    }
}
