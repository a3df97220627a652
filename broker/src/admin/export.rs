//! `brokerctl export_definitions`: the broker's definitions in RabbitMQ's export format (what
//! `rabbitmqctl export_definitions` writes and `import_definitions` reads), so that moving off
//! Warren is as easy as moving onto it: users (their tags; no password hash — Warren's identities
//! are certificates, and a password hash of the bridge is argon2id, which RabbitMQ cannot read),
//! vhosts, permissions, topic permissions, policies (operator policies as RabbitMQ keeps them, as
//! `operator_policy` parameters), and the durable exchanges, queues and bindings between them.

use serde_json::{json, Value};

use super::json_table::to_json;
use crate::broker::Broker;
use crate::exchange::Destination;

/// The RabbitMQ release whose format this is.
const FORMAT_VERSION: &str = "3.13.7";

impl Broker {
    pub(crate) fn export_definitions(&self) -> Value {
        let defs = self.definitions();
        let users: Vec<Value> = defs
            .users
            .iter()
            .map(|u| {
                json!({"name": u.name, "password_hash": "", "hashing_algorithm":
                       "rabbit_password_hashing_sha256", "tags": u.tags, "limits": {}})
            })
            .collect();
        let vhosts: Vec<Value> = defs
            .vhosts
            .iter()
            .map(|v| json!({"name": v, "limits": [], "metadata": {"description": "", "tags": []}}))
            .collect();
        let mut permissions = Vec::new();
        let mut topic_permissions = Vec::new();
        for u in &defs.users {
            for p in &u.permissions {
                permissions.push(json!({"user": u.name, "vhost": p.vhost, "configure":
                                        p.configure, "write": p.write, "read": p.read}));
            }
            for p in &u.topic_permissions {
                topic_permissions.push(json!({"user": u.name, "vhost": p.vhost, "exchange":
                                              p.exchange, "write": p.write, "read": p.read}));
            }
        }
        let policies: Vec<Value> = defs
            .policies
            .iter()
            .map(|p| {
                json!({"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to":
                       p.apply_to, "definition": p.definition, "priority": p.priority})
            })
            .collect();
        let parameters: Vec<Value> = defs
            .operator_policies
            .iter()
            .map(|p| {
                json!({"vhost": p.vhost, "component": "operator_policy", "name": p.name,
                       "value": {"pattern": p.pattern, "apply-to": p.apply_to,
                                 "definition": p.definition, "priority": p.priority}})
            })
            .collect();
        let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
        let mut vhost_list: Vec<_> = self.vhosts.iter().map(|v| v.clone()).collect();
        vhost_list.sort_by(|a, b| a.name.cmp(&b.name));
        for vhost in vhost_list {
            let v = vhost.name.to_string();
            let mut qs = vhost.queue_list();
            qs.sort_by(|a, b| a.name().cmp(b.name()));
            for q in qs
                .iter()
                .filter(|q| q.spec.durable && q.spec.exclusive_owner.is_none())
            {
                queues.push(
                    json!({"name": q.name().as_str(), "vhost": v, "durable": true,
                                   "auto_delete": q.spec.auto_delete,
                                   "arguments": to_json(&q.spec.arguments)}),
                );
            }
            let mut xs = vhost.exchange_list();
            xs.sort_by(|a, b| a.name().cmp(b.name()));
            for x in &xs {
                let standard = x.name().is_empty() || x.name().starts_with("amq.");
                if x.spec.durable && !standard {
                    exchanges.push(json!({"name": x.name(), "vhost": v,
                                          "type": x.spec.kind.as_str(), "durable": true,
                                          "auto_delete": x.spec.auto_delete,
                                          "internal": x.spec.internal,
                                          "arguments": to_json(&x.spec.arguments)}));
                }
                if x.name().is_empty() || !x.spec.durable {
                    continue;
                }
                for b in x.bindings() {
                    let (kind, name, durable) = match &b.destination {
                        Destination::Queue(q) => ("queue", q.name().to_string(), q.spec.durable),
                        Destination::Exchange(e) => (
                            "exchange",
                            e.to_string(),
                            xs.iter().any(|d| d.name() == &**e && d.spec.durable),
                        ),
                    };
                    if durable {
                        bindings.push(json!({"source": x.name(), "vhost": v,
                                             "destination": name, "destination_type": kind,
                                             "routing_key": b.routing_key,
                                             "arguments": to_json(&b.arguments)}));
                    }
                }
            }
        }
        json!({
            "rabbit_version": FORMAT_VERSION,
            "rabbitmq_version": FORMAT_VERSION,
            "product_name": "Warren",
            "product_version": env!("CARGO_PKG_VERSION"),
            "users": users,
            "vhosts": vhosts,
            "permissions": permissions,
            "topic_permissions": topic_permissions,
            "parameters": parameters,
            "global_parameters": [],
            "policies": policies,
            "queues": queues,
            "exchanges": exchanges,
            "bindings": bindings,
        })
    }
}
