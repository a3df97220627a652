//! Users (certificate identities), their tags, and RabbitMQ-style permissions per vhost.
//! Deny by default: a user with no permission entry for a vhost cannot open it.

use std::collections::HashMap;

use regex::Regex;

use crate::config::UserConfig;

/// One vhost's configure/write/read patterns, compiled. RabbitMQ anchors them: a name is permitted when
/// the whole name matches.
#[derive(Debug, Clone)]
pub struct Permission {
    pub configure: Regex,
    pub write: Regex,
    pub read: Regex,
}

#[derive(Debug)]
pub struct User {
    pub name: String,
    pub tags: Vec<String>,
    permissions: HashMap<String, Permission>,
}

fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

impl User {
    pub fn from_config(config: &UserConfig) -> Result<Self, regex::Error> {
        let mut permissions = HashMap::new();
        for p in &config.permissions {
            permissions.insert(
                p.vhost.clone(),
                Permission {
                    configure: anchored(&p.configure)?,
                    write: anchored(&p.write)?,
                    read: anchored(&p.read)?,
                },
            );
        }
        Ok(User {
            name: config.name.clone(),
            tags: config.tags.clone(),
            permissions,
        })
    }

    /// connection.open is allowed when the user has any permission entry on the vhost.
    pub fn can_access_vhost(&self, vhost: &str) -> bool {
        self.permissions.contains_key(vhost)
    }

    pub fn permission(&self, vhost: &str) -> Option<&Permission> {
        self.permissions.get(vhost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PermissionConfig;

    #[test]
    fn patterns_match_whole_names_and_access_is_deny_by_default() {
        let user = User::from_config(&UserConfig {
            name: "nova".into(),
            tags: vec![],
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
        assert!(p.configure.is_match("nova_compute") && !p.configure.is_match("xnova"));
        assert!(!p.write.is_match("anything") && p.write.is_match(""));
    }
}
