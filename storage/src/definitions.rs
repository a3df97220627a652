//! The broker's definitions that must survive a restart: vhosts, users (certificate identities, tags,
//! optional password hash) and their permissions, as one JSON document replaced atomically on every
//! change. Small and rarely written, so a whole-file rewrite is the simplest crash-safe form.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// configure/write/read patterns of one user in one vhost (RabbitMQ's permission triple).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PermissionDefinition {
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// Routing-key patterns of one user for one topic exchange of one vhost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicPermissionDefinition {
    pub vhost: String,
    pub exchange: String,
    pub write: String,
    pub read: String,
}

/// A policy (RabbitMQ's `set_policy`, or `set_operator_policy`): queues and exchanges of `vhost`
/// whose name `pattern` matches (unanchored) and whose kind `apply_to` names take the keys of
/// `definition`; of several, the highest `priority` applies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDefinition {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to")]
    pub apply_to: String,
    pub priority: i64,
    pub definition: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserDefinition {
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<PermissionDefinition>,
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionDefinition>,
    /// PHC-format argon2id hash for the optional password bridge; never the password itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Definitions {
    pub vhosts: Vec<String>,
    pub users: Vec<UserDefinition>,
    /// Users once created from the configuration file: never created again, even when deleted since.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeded_users: Vec<String>,
    /// Ids of nodes removed from the cluster (never members again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_nodes: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyDefinition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operator_policies: Vec<PolicyDefinition>,
}

impl Definitions {
    /// The policies of one kind: operator policies or the users' (vhost policies).
    pub fn policies_of(&self, operator: bool) -> &[PolicyDefinition] {
        match operator {
            true => &self.operator_policies,
            false => &self.policies,
        }
    }

    pub fn policies_of_mut(&mut self, operator: bool) -> &mut Vec<PolicyDefinition> {
        match operator {
            true => &mut self.operator_policies,
            false => &mut self.policies,
        }
    }
}

/// How a user of the configuration file compares with the broker's definitions at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeding {
    /// Not seen before: created as configured.
    Created(String),
    /// Changed since it was seeded (brokerctl): the broker's definition is kept.
    Differs(String),
    /// Seeded once and deleted since: not created again.
    Deleted(String),
}

impl Definitions {
    /// Seeds the users of the configuration file: a user is created at the first start that lists it,
    /// and later starts never override what was changed since (with brokerctl), nor re-create a user
    /// deleted since. Returns what differs, for the broker to report.
    pub fn seed_users(&mut self, configured: &[UserDefinition]) -> Vec<Seeding> {
        let mut notes = Vec::new();
        for user in configured {
            let existing = self.users.iter().find(|u| u.name == user.name);
            let seeded = self.seeded_users.contains(&user.name);
            match existing {
                None if seeded => notes.push(Seeding::Deleted(user.name.clone())),
                None => {
                    self.users.push(user.clone());
                    notes.push(Seeding::Created(user.name.clone()));
                }
                Some(current) if current != user => notes.push(Seeding::Differs(user.name.clone())),
                Some(_) => {}
            }
            if !seeded {
                self.seeded_users.push(user.name.clone());
            }
        }
        notes
    }

    /// Reads the file; a missing file is an empty set of definitions.
    pub fn load(path: &Path) -> io::Result<Self> {
        match std::fs::read(path) {
            Ok(data) => Self::from_slice(&data, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Definitions::default()),
            Err(e) => Err(e),
        }
    }

    /// Parses the contents of a definitions file (`path` is only named in errors).
    pub fn from_slice(data: &[u8], path: &Path) -> io::Result<Self> {
        serde_json::from_slice(data).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Replaces the file atomically, readable by the broker's user only (it may hold password hashes).
    /// Only tests write it now: metadata lives in the log as commands, this file is read once to
    /// import an earlier version's definitions.
    #[cfg(test)]
    pub(crate) fn save(&self, path: &Path) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        crate::write_atomic(path, &data, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("definitions.json");
        assert_eq!(Definitions::load(&path).unwrap(), Definitions::default());
        let defs = Definitions {
            vhosts: vec!["/".into()],
            users: vec![UserDefinition {
                name: "nova".into(),
                tags: vec![],
                permissions: vec![PermissionDefinition {
                    vhost: "/".into(),
                    configure: ".*".into(),
                    write: ".*".into(),
                    read: ".*".into(),
                }],
                topic_permissions: vec![],
                password_hash: None,
            }],
            seeded_users: vec!["nova".into()],
            removed_nodes: Vec::new(),
            ..Definitions::default()
        };
        defs.save(&path).unwrap();
        assert_eq!(Definitions::load(&path).unwrap(), defs);
        std::fs::write(&path, "{not json").unwrap();
        assert!(Definitions::load(&path)
            .unwrap_err()
            .to_string()
            .contains("definitions.json"));
    }

    fn user(name: &str, write: &str) -> UserDefinition {
        UserDefinition {
            name: name.into(),
            tags: vec![],
            permissions: vec![PermissionDefinition {
                vhost: "/".into(),
                configure: ".*".into(),
                write: write.into(),
                read: ".*".into(),
            }],
            topic_permissions: vec![],
            password_hash: None,
        }
    }

    #[test]
    fn configured_users_are_seeded_once() {
        let configured = [user("nova", ".*"), user("glance", ".*")];
        let mut defs = Definitions::default();
        assert_eq!(
            defs.seed_users(&configured),
            [
                Seeding::Created("nova".into()),
                Seeding::Created("glance".into())
            ]
        );
        assert!(defs.seed_users(&configured).is_empty(), "nothing changed");
        // brokerctl narrows nova's write permission and deletes glance.
        defs.users[0] = user("nova", "^nova");
        defs.users.retain(|u| u.name != "glance");
        assert_eq!(
            defs.seed_users(&configured),
            [
                Seeding::Differs("nova".into()),
                Seeding::Deleted("glance".into())
            ]
        );
        assert_eq!(
            defs.users,
            [user("nova", "^nova")],
            "brokerctl's changes stand"
        );
        // A data directory from before seeding was recorded: its users count as seeded.
        let mut old = Definitions {
            vhosts: vec![],
            users: vec![user("nova", "^nova")],
            seeded_users: vec![],
            removed_nodes: Vec::new(),
            ..Definitions::default()
        };
        assert_eq!(
            old.seed_users(&configured[..1]),
            [Seeding::Differs("nova".into())]
        );
        assert_eq!(old.seeded_users, ["nova"]);
    }
}
