//! How metadata commands are kept in the local log: each setting command is a `Put` of its tagged
//! binary form under the identity of the object it sets, so the log keeps one live record per
//! object however often it changes (and compacts the rest away); each deleting command is the
//! `Delete` of that identity, and of everything that hung on the object (a user's tags, password
//! hash and permissions; the permissions in a vhost). Identities are JSON arrays of names — the
//! same strings earlier versions used for exchanges, queues and bindings, so rewriting an old record
//! replaces it in place — and are never parsed: the command in the value says what it is.

use bytes::Bytes;
use warren_storage::definitions::Definitions;
use warren_storage::log::record::Record;

use super::{codec, MetaCommand, StoredBinding};

fn key(parts: &[&str]) -> String {
    serde_json::to_string(parts).unwrap_or_default()
}

pub(crate) fn vhost_key(vhost: &str) -> String {
    key(&["vhost", vhost])
}

pub(crate) fn user_key(user: &str) -> String {
    key(&["user", user])
}

fn user_tags_key(user: &str) -> String {
    key(&["user-tags", user])
}

fn password_key(user: &str) -> String {
    key(&["user-password", user])
}

fn permission_key(user: &str, vhost: &str) -> String {
    key(&["permission", user, vhost])
}

fn topic_permission_key(user: &str, vhost: &str, exchange: &str) -> String {
    key(&["topic-permission", user, vhost, exchange])
}

fn seeded_key(user: &str) -> String {
    key(&["seeded", user])
}

fn policy_key(vhost: &str, name: &str, operator: bool) -> String {
    key(&[
        if operator {
            "operator-policy"
        } else {
            "policy"
        },
        vhost,
        name,
    ])
}

fn removed_node_key(id: u64) -> String {
    key(&["removed-node", &id.to_string()])
}

pub fn exchange_key(vhost: &str, exchange: &str) -> String {
    key(&["exchange", vhost, exchange])
}

pub fn queue_key(vhost: &str, queue: &str) -> String {
    key(&["queue", vhost, queue])
}

pub(crate) fn binding_key(vhost: &str, b: &StoredBinding) -> String {
    let args = serde_json::to_string(&b.arguments).unwrap_or_default();
    key(&[
        "binding",
        vhost,
        &b.source,
        b.kind.as_str(),
        &b.destination,
        &b.routing_key,
        &args,
    ])
}

/// The name a queue's messages are stored under in the log.
pub fn message_queue(vhost: &str, queue: &str) -> String {
    key(&[vhost, queue])
}

/// The vhost and queue a [`message_queue`] name was made of (a replicated queue's messages travel
/// between nodes under it).
pub fn split_message_queue(name: &str) -> Option<(String, String)> {
    match serde_json::from_str::<Vec<String>>(name).ok()?.as_slice() {
        [vhost, queue] => Some((vhost.clone(), queue.clone())),
        _ => None,
    }
}

fn put(key: String, command: &MetaCommand) -> Record {
    Record::Put {
        key,
        value: Bytes::from(codec::encode(command)),
    }
}

fn delete(key: String) -> Record {
    Record::Delete { key }
}

/// The records that keep `command` in the log; `defs` (users and vhosts before the command) tells
/// what a deletion takes with it.
pub fn records(command: &MetaCommand, defs: &Definitions) -> Vec<Record> {
    match command {
        MetaCommand::DeleteUser { user } => {
            let mut out = vec![
                delete(user_key(user)),
                delete(user_tags_key(user)),
                delete(password_key(user)),
            ];
            for u in defs.users.iter().filter(|u| &u.name == user) {
                out.extend(
                    u.permissions
                        .iter()
                        .map(|p| delete(permission_key(user, &p.vhost))),
                );
                out.extend(
                    u.topic_permissions
                        .iter()
                        .map(|p| delete(topic_permission_key(user, &p.vhost, &p.exchange))),
                );
            }
            out
        }
        MetaCommand::DeleteVhost { vhost } => {
            let mut out = vec![delete(vhost_key(vhost))];
            for u in &defs.users {
                let perms = u.permissions.iter().filter(|p| &p.vhost == vhost);
                out.extend(perms.map(|p| delete(permission_key(&u.name, &p.vhost))));
                let topic = u.topic_permissions.iter().filter(|p| &p.vhost == vhost);
                out.extend(
                    topic.map(|p| delete(topic_permission_key(&u.name, &p.vhost, &p.exchange))),
                );
            }
            for operator in [false, true] {
                let policies = defs
                    .policies_of(operator)
                    .iter()
                    .filter(|p| &p.vhost == vhost);
                out.extend(policies.map(|p| delete(policy_key(&p.vhost, &p.name, operator))));
            }
            out
        }
        MetaCommand::ClearTopicPermissions {
            user,
            vhost,
            exchange: None,
        } => defs
            .users
            .iter()
            .filter(|u| &u.name == user)
            .flat_map(|u| &u.topic_permissions)
            .filter(|p| &p.vhost == vhost)
            .map(|p| delete(topic_permission_key(user, vhost, &p.exchange)))
            .collect(),
        other => vec![record(other)],
    }
}

/// The one record of a command that concerns one object (every command but the deletions of users
/// and vhosts and the clearing of a vhost's topic permissions, which [`records`] expands).
pub fn record(command: &MetaCommand) -> Record {
    match command {
        MetaCommand::AddVhost { vhost } => put(vhost_key(vhost), command),
        MetaCommand::DeleteVhost { vhost } => delete(vhost_key(vhost)),
        MetaCommand::AddUser { user, .. } => put(user_key(user), command),
        MetaCommand::DeleteUser { user } => delete(user_key(user)),
        MetaCommand::SetUserTags { user, .. } => put(user_tags_key(user), command),
        MetaCommand::SetPasswordHash {
            user,
            hash: Some(_),
        } => put(password_key(user), command),
        MetaCommand::SetPasswordHash { user, hash: None } => delete(password_key(user)),
        MetaCommand::SetPermissions { user, permission } => {
            put(permission_key(user, &permission.vhost), command)
        }
        MetaCommand::ClearPermissions { user, vhost } => delete(permission_key(user, vhost)),
        MetaCommand::SetTopicPermissions {
            user,
            permission: p,
        } => put(topic_permission_key(user, &p.vhost, &p.exchange), command),
        MetaCommand::ClearTopicPermissions {
            user,
            vhost,
            exchange,
        } => delete(topic_permission_key(
            user,
            vhost,
            exchange.as_deref().unwrap_or_default(),
        )),
        MetaCommand::SeedUser { user } => put(seeded_key(user), command),
        MetaCommand::RemovedNode { id } => put(removed_node_key(*id), command),
        MetaCommand::SetPolicy { policy, operator } => {
            put(policy_key(&policy.vhost, &policy.name, *operator), command)
        }
        MetaCommand::ClearPolicy {
            vhost,
            name,
            operator,
        } => delete(policy_key(vhost, name, *operator)),
        MetaCommand::DeclareExchange {
            vhost, exchange, ..
        } => put(exchange_key(vhost, exchange), command),
        MetaCommand::DeleteExchange { vhost, exchange } => delete(exchange_key(vhost, exchange)),
        MetaCommand::DeclareQueue { vhost, queue, .. } => put(queue_key(vhost, queue), command),
        MetaCommand::DeleteQueue { vhost, queue }
        | MetaCommand::RetireQueue { vhost, queue, .. } => delete(queue_key(vhost, queue)),
        MetaCommand::Bind { vhost, binding } => put(binding_key(vhost, binding), command),
        MetaCommand::Unbind { vhost, binding } => delete(binding_key(vhost, binding)),
    }
}
