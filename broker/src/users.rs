//! Users (certificate identities) and RabbitMQ-style permissions per vhost. (Their tags are kept with
//! the definitions and listed by brokerctl; no broker decision depends on them.)
//! Deny by default: a user with no permission entry for a vhost cannot open it.

use std::collections::HashMap;

use regex::Regex;

use crate::config::{expand_topic_pattern, UserConfig};

/// One vhost's configure/write/read patterns, compiled. As in RabbitMQ they are unanchored (a name is
/// permitted when the pattern matches anywhere in it; use `^...$` to anchor) and the empty pattern
/// means `^$`, i.e. nothing.
#[derive(Debug, Clone)]
pub(crate) struct Permission {
    pub configure: Regex,
    pub write: Regex,
    pub read: Regex,
}

#[derive(Debug)]
pub(crate) struct User {
    pub name: String,
    /// argon2id hash for the optional password bridge.
    pub password_hash: Option<String>,
    permissions: HashMap<String, Permission>,
    /// By (vhost, exchange).
    topic_permissions: HashMap<(String, String), TopicPermission>,
}

fn pattern(p: &str) -> Result<Regex, regex::Error> {
    Regex::new(if p.is_empty() { "^$" } else { p })
}

/// A topic permission: patterns over routing keys for one topic exchange, with `{username}` and
/// `{vhost}` already expanded.
#[derive(Debug, Clone)]
pub(crate) struct TopicPermission {
    pub write: Regex,
    pub read: Regex,
}

impl User {
    pub(crate) fn from_config(config: &UserConfig) -> Result<Self, regex::Error> {
        let mut permissions = HashMap::new();
        for p in &config.permissions {
            permissions.insert(
                p.vhost.clone(),
                Permission {
                    configure: pattern(&p.configure)?,
                    write: pattern(&p.write)?,
                    read: pattern(&p.read)?,
                },
            );
        }
        let mut topic_permissions = HashMap::new();
        for t in &config.topic_permissions {
            let expand = |p: &str| expand_topic_pattern(p, &config.name, &t.vhost);
            topic_permissions.insert(
                (t.vhost.clone(), t.exchange.clone()),
                TopicPermission {
                    write: pattern(&expand(&t.write))?,
                    read: pattern(&expand(&t.read))?,
                },
            );
        }
        Ok(User {
            name: config.name.clone(),
            password_hash: config.password_hash.clone(),
            permissions,
            topic_permissions,
        })
    }

    /// connection.open is allowed when the user has any permission entry on the vhost.
    pub(crate) fn can_access_vhost(&self, vhost: &str) -> bool {
        self.permissions.contains_key(vhost)
    }

    pub fn permission(&self, vhost: &str) -> Option<&Permission> {
        self.permissions.get(vhost)
    }

    pub(crate) fn topic_permission(&self, vhost: &str, exchange: &str) -> Option<&TopicPermission> {
        self.topic_permissions
            .get(&(vhost.to_string(), exchange.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PermissionConfig, TopicPermissionConfig};

    #[test]
    fn patterns_match_whole_names_and_access_is_deny_by_default() {
        let user = User::from_config(&UserConfig {
            name: "nova".into(),
            tags: vec![],
            password_hash: None,
            topic_permissions: vec![TopicPermissionConfig {
                vhost: "/".into(),
                exchange: "amq.topic".into(),
                write: "^{username}\\.".into(),
                read: ".*".into(),
            }],
            permissions: vec![PermissionConfig {
                vhost: "/".into(),
                configure: "nova.*".into(),
                write: "".into(),
                read: ".*".into(),
            }],
        })
        .unwrap();
        assert!(user.can_access_vhost("/") && !user.can_access_vhost("other"));
        let p = user.permission("/").unwrap();
        // Unanchored, as in RabbitMQ; the empty pattern matches only the empty name.
        assert!(p.configure.is_match("nova_compute") && p.configure.is_match("xnova"));
        assert!(!p.configure.is_match("neutron"));
        assert!(!p.write.is_match("anything") && p.write.is_match(""));
        let t = user.topic_permission("/", "amq.topic").unwrap();
        assert!(t.write.is_match("nova.compute") && !t.write.is_match("neutron.agent"));
    }

    /// PROBE F12: `{username}` is the name itself, not a pattern (`al.ce` must not match `alxce`).
    #[test]
    fn expanded_names_match_only_themselves() {
        let user = User::from_config(&UserConfig {
            name: "al.ce".into(),
            tags: vec![],
            password_hash: None,
            topic_permissions: vec![TopicPermissionConfig {
                vhost: "v+1".into(),
                exchange: "amq.topic".into(),
                write: "^{username}\\.".into(),
                read: "^{vhost}$".into(),
            }],
            permissions: vec![],
        })
        .unwrap();
        let t = user.topic_permission("v+1", "amq.topic").unwrap();
        assert!(t.write.is_match("al.ce.x"));
        assert!(!t.write.is_match("alxce.x"));
        assert!(t.read.is_match("v+1") && !t.read.is_match("vv1"));
    }
}
