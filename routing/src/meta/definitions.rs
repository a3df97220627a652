//! The part of durable metadata that is the broker's rather than a vhost's: vhost names, users, their
//! tags, password hashes, permissions and topic permissions, and which configured users were seeded
//! ([`Definitions`]). [`apply`] is the one function that changes them — for an administrative change
//! (after validation, before its records are written), at recovery, and next in the metadata Raft
//! group; its refusals are the texts brokerctl shows.

use warren_storage::definitions::{Definitions, Seeding, UserDefinition};
use warren_storage::log::record::Record;

use super::{records, MetaCommand};

/// Why a change to the definitions did not happen (nothing changed then).
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot store the change in the log: {0}")]
    Store(std::io::Error),
}

/// Applies `commands` to a copy of `defs` (refusing them all if one is refused), hands their records
/// to `write` (which returns once they are durable), then makes the copy current. The one path by
/// which vhosts, users and permissions change: at start-up (the configuration's, an earlier
/// version's file) and through the admin API.
pub fn commit(
    defs: &mut Definitions,
    commands: &[MetaCommand],
    write: impl FnOnce(Vec<Record>) -> std::io::Result<()>,
) -> Result<(), CommitError> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut next = defs.clone();
    let mut out = Vec::new();
    for command in commands {
        out.extend(records::records(command, &next));
        apply(&mut next, command).map_err(CommitError::Refused)?;
    }
    write(out).map_err(CommitError::Store)?;
    *defs = next;
    Ok(())
}

fn user<'a>(defs: &'a mut Definitions, name: &str) -> Result<&'a mut UserDefinition, String> {
    defs.users
        .iter_mut()
        .find(|u| u.name == name)
        .ok_or_else(|| format!("no such user '{name}'"))
}

/// Changes `defs` as `command` says, or says why it cannot (nothing changed then). Commands about
/// exchanges, queues and bindings leave `defs` as it is.
pub fn apply(defs: &mut Definitions, command: &MetaCommand) -> Result<(), String> {
    match command {
        MetaCommand::AddVhost { vhost } => {
            if defs.vhosts.iter().any(|v| v == vhost) {
                return Err(format!("vhost '{vhost}' already exists"));
            }
            defs.vhosts.push(vhost.to_string());
        }
        MetaCommand::DeleteVhost { vhost } => {
            if !defs.vhosts.iter().any(|v| v == vhost) {
                return Err(format!("no such vhost '{vhost}'"));
            }
            defs.vhosts.retain(|v| v != vhost);
            for u in &mut defs.users {
                u.permissions.retain(|p| p.vhost != *vhost);
                u.topic_permissions.retain(|p| p.vhost != *vhost);
            }
            defs.policies.retain(|p| p.vhost != *vhost);
            defs.operator_policies.retain(|p| p.vhost != *vhost);
        }
        MetaCommand::AddUser { user, tags } => {
            if defs.users.iter().any(|u| &u.name == user) {
                return Err(format!("user '{user}' already exists"));
            }
            defs.users.push(UserDefinition {
                name: user.clone(),
                tags: tags.clone(),
                permissions: Vec::new(),
                topic_permissions: Vec::new(),
                password_hash: None,
            });
        }
        MetaCommand::DeleteUser { user } => {
            let before = defs.users.len();
            defs.users.retain(|u| &u.name != user);
            if defs.users.len() == before {
                return Err(format!("no such user '{user}'"));
            }
        }
        MetaCommand::SetUserTags { user: name, tags } => user(defs, name)?.tags = tags.clone(),
        MetaCommand::SetPasswordHash { user: name, hash } => {
            user(defs, name)?.password_hash = hash.clone();
        }
        MetaCommand::SetPermissions {
            user: name,
            permission,
        } => {
            let u = user(defs, name)?;
            u.permissions.retain(|p| p.vhost != permission.vhost);
            u.permissions.push(permission.clone());
        }
        MetaCommand::ClearPermissions { user: name, vhost } => {
            user(defs, name)?.permissions.retain(|p| p.vhost != *vhost);
        }
        MetaCommand::SetTopicPermissions {
            user: name,
            permission,
        } => {
            let u = user(defs, name)?;
            u.topic_permissions
                .retain(|p| !(p.vhost == permission.vhost && p.exchange == permission.exchange));
            u.topic_permissions.push(permission.clone());
        }
        MetaCommand::ClearTopicPermissions {
            user: name,
            vhost,
            exchange,
        } => {
            user(defs, name)?.topic_permissions.retain(|p| {
                !(p.vhost == *vhost && exchange.as_ref().is_none_or(|x| &p.exchange == x))
            });
        }
        MetaCommand::SeedUser { user } => {
            if !defs.seeded_users.contains(user) {
                defs.seeded_users.push(user.clone());
            }
        }
        MetaCommand::RemovedNode { id } => {
            if !defs.removed_nodes.contains(id) {
                defs.removed_nodes.push(*id);
            }
        }
        MetaCommand::SetPolicy { policy, operator } => {
            if !defs.vhosts.contains(&policy.vhost) {
                return Err(format!("no such vhost '{}'", policy.vhost));
            }
            crate::policy::validate(policy, *operator)?;
            let list = defs.policies_of_mut(*operator);
            match list
                .iter_mut()
                .find(|p| p.vhost == policy.vhost && p.name == policy.name)
            {
                Some(existing) => *existing = policy.clone(),
                None => list.push(policy.clone()),
            }
        }
        MetaCommand::ClearPolicy {
            vhost,
            name,
            operator,
        } => {
            let list = defs.policies_of_mut(*operator);
            let before = list.len();
            list.retain(|p| !(p.vhost == **vhost && p.name == *name));
            if list.len() == before {
                let kind = if *operator {
                    "operator policy"
                } else {
                    "policy"
                };
                return Err(format!("no {kind} '{name}' in vhost '{vhost}'"));
            }
        }
        MetaCommand::DeclareExchange { .. }
        | MetaCommand::DeleteExchange { .. }
        | MetaCommand::DeclareQueue { .. }
        | MetaCommand::DeleteQueue { .. }
        | MetaCommand::RetireQueue { .. }
        | MetaCommand::Bind { .. }
        | MetaCommand::Unbind { .. } => {}
    }
    Ok(())
}

/// The commands that create `user` as defined.
pub(crate) fn user_commands(user: &UserDefinition) -> Vec<MetaCommand> {
    let name = || user.name.clone();
    let mut out = vec![MetaCommand::AddUser {
        user: name(),
        tags: user.tags.clone(),
    }];
    if let Some(hash) = &user.password_hash {
        out.push(MetaCommand::SetPasswordHash {
            user: name(),
            hash: Some(hash.clone()),
        });
    }
    out.extend(
        user.permissions
            .iter()
            .map(|p| MetaCommand::SetPermissions {
                user: name(),
                permission: p.clone(),
            }),
    );
    out.extend(
        user.topic_permissions
            .iter()
            .map(|p| MetaCommand::SetTopicPermissions {
                user: name(),
                permission: p.clone(),
            }),
    );
    out
}

/// The commands that build `defs` from nothing (a `definitions.json` of an earlier version).
pub fn commands_for(defs: &Definitions) -> Vec<MetaCommand> {
    let mut out: Vec<MetaCommand> = defs
        .vhosts
        .iter()
        .map(|v| MetaCommand::AddVhost {
            vhost: v.as_str().into(),
        })
        .collect();
    for u in &defs.users {
        out.extend(user_commands(u));
    }
    out.extend(
        defs.seeded_users
            .iter()
            .map(|u| MetaCommand::SeedUser { user: u.clone() }),
    );
    out.extend(
        defs.removed_nodes
            .iter()
            .map(|id| MetaCommand::RemovedNode { id: *id }),
    );
    out.extend(policy_commands(defs));
    out
}

/// The commands that set every policy of `defs`.
fn policy_commands(defs: &Definitions) -> impl Iterator<Item = MetaCommand> + '_ {
    [false, true].into_iter().flat_map(move |operator| {
        defs.policies_of(operator)
            .iter()
            .map(move |p| MetaCommand::SetPolicy {
                policy: p.clone(),
                operator,
            })
    })
}

/// The commands that turn `current` into `target` (a replicated snapshot installed on a node):
/// users that are gone or differ are deleted, vhosts that are gone are deleted, then what `target`
/// has and `current` lacks is created. Applied in order to `current`, they give `target` (up to
/// the order of its lists).
pub fn replacing(current: &Definitions, target: &Definitions) -> Vec<MetaCommand> {
    let mut out = Vec::new();
    let kept = |u: &UserDefinition| target.users.iter().any(|t| t == u);
    for user in current.users.iter().filter(|u| !kept(u)) {
        out.push(MetaCommand::DeleteUser {
            user: user.name.clone(),
        });
    }
    for vhost in current.vhosts.iter().filter(|v| !target.vhosts.contains(v)) {
        out.push(MetaCommand::DeleteVhost {
            vhost: vhost.as_str().into(),
        });
    }
    for vhost in target.vhosts.iter().filter(|v| !current.vhosts.contains(v)) {
        out.push(MetaCommand::AddVhost {
            vhost: vhost.as_str().into(),
        });
    }
    for user in target.users.iter().filter(|t| !current.users.contains(t)) {
        out.extend(user_commands(user));
    }
    for user in &target.seeded_users {
        if !current.seeded_users.contains(user) {
            out.push(MetaCommand::SeedUser { user: user.clone() });
        }
    }
    for id in &target.removed_nodes {
        if !current.removed_nodes.contains(id) {
            out.push(MetaCommand::RemovedNode { id: *id });
        }
    }
    // Policies: the ones `target` lacks are cleared (those of deleted vhosts went with them),
    // then the ones `current` lacks or has otherwise are set.
    for operator in [false, true] {
        for p in current.policies_of(operator) {
            let kept = target
                .policies_of(operator)
                .iter()
                .any(|t| t.vhost == p.vhost && t.name == p.name);
            if !kept && target.vhosts.contains(&p.vhost) {
                out.push(MetaCommand::ClearPolicy {
                    vhost: p.vhost.as_str().into(),
                    name: p.name.clone(),
                    operator,
                });
            }
        }
    }
    out.extend(policy_commands(target).filter(|c| match c {
        MetaCommand::SetPolicy { policy, operator } => {
            !current.policies_of(*operator).contains(policy)
        }
        _ => true,
    }));
    out
}

/// The commands that seed the users of the configuration file (see [`Definitions::seed_users`]),
/// with what to report.
pub fn seeding(
    defs: &Definitions,
    configured: &[UserDefinition],
) -> (Vec<MetaCommand>, Vec<Seeding>) {
    let notes = defs.clone().seed_users(configured);
    let mut out = Vec::new();
    for note in &notes {
        if let Seeding::Created(name) = note {
            if let Some(u) = configured.iter().find(|u| &u.name == name) {
                out.extend(user_commands(u));
            }
        }
    }
    for u in configured {
        if !defs.seeded_users.contains(&u.name) {
            out.push(MetaCommand::SeedUser {
                user: u.name.clone(),
            });
        }
    }
    (out, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_storage::definitions::PermissionDefinition;

    fn nova() -> UserDefinition {
        UserDefinition {
            name: "nova".into(),
            tags: vec!["monitoring".into()],
            permissions: vec![PermissionDefinition {
                vhost: "/".into(),
                configure: ".*".into(),
                write: "^nova".into(),
                read: ".*".into(),
            }],
            topic_permissions: vec![],
            password_hash: Some("$argon2id$...".into()),
        }
    }

    fn ttl_policy(vhost: &str, name: &str) -> warren_storage::definitions::PolicyDefinition {
        warren_storage::definitions::PolicyDefinition {
            vhost: vhost.into(),
            name: name.into(),
            pattern: "^(?!amq\\.).*".into(),
            apply_to: "queues".into(),
            priority: 1,
            definition: serde_json::json!({"message-ttl": 60000})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn the_commands_for_a_definitions_file_rebuild_it() {
        let defs = Definitions {
            vhosts: vec!["/".into(), "cinder".into()],
            users: vec![nova()],
            seeded_users: vec!["nova".into(), "glance".into()],
            removed_nodes: Vec::new(),
            policies: vec![ttl_policy("/", "ttl")],
            operator_policies: vec![ttl_policy("cinder", "cap")],
        };
        let mut rebuilt = Definitions::default();
        for c in commands_for(&defs) {
            apply(&mut rebuilt, &c).unwrap();
        }
        assert_eq!(rebuilt, defs);
    }

    #[test]
    fn replacing_turns_the_current_definitions_into_the_target() {
        let mut changed = nova();
        changed.permissions[0].write = ".*".into();
        let glance = UserDefinition {
            name: "glance".into(),
            ..nova()
        };
        let keystone = UserDefinition {
            name: "keystone".into(),
            password_hash: None,
            ..nova()
        };
        let current = Definitions {
            vhosts: vec!["/".into(), "old".into()],
            users: vec![nova(), glance.clone(), keystone.clone()],
            seeded_users: vec!["nova".into()],
            removed_nodes: Vec::new(),
            policies: vec![ttl_policy("/", "gone"), ttl_policy("old", "with-its-vhost")],
            operator_policies: Vec::new(),
        };
        let target = Definitions {
            vhosts: vec!["/".into(), "cinder".into()],
            users: vec![changed, keystone],
            seeded_users: vec!["nova".into(), "glance".into()],
            removed_nodes: Vec::new(),
            policies: vec![ttl_policy("/", "ttl")],
            operator_policies: vec![ttl_policy("cinder", "cap")],
        };
        let mut defs = current.clone();
        for c in replacing(&current, &target) {
            apply(&mut defs, &c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
        let sorted = |mut d: Definitions| {
            d.vhosts.sort();
            d.users.sort_by(|a, b| a.name.cmp(&b.name));
            d.seeded_users.sort();
            d
        };
        assert_eq!(sorted(defs), sorted(target.clone()));
        assert!(replacing(&target, &target).is_empty());
    }

    #[test]
    fn refusals_change_nothing_and_say_why() {
        let mut defs = Definitions::default();
        let add = MetaCommand::AddVhost { vhost: "/".into() };
        apply(&mut defs, &add).unwrap();
        assert_eq!(
            apply(&mut defs, &add).unwrap_err(),
            "vhost '/' already exists"
        );
        let tags = MetaCommand::SetUserTags {
            user: "ghost".into(),
            tags: vec![],
        };
        assert_eq!(apply(&mut defs, &tags).unwrap_err(), "no such user 'ghost'");
        assert_eq!(defs.vhosts, ["/"]);
        assert!(defs.users.is_empty());
    }

    #[test]
    fn seeding_creates_a_configured_user_once() {
        let mut defs = Definitions::default();
        let (commands, notes) = seeding(&defs, &[nova()]);
        assert_eq!(notes, [Seeding::Created("nova".into())]);
        for c in &commands {
            apply(&mut defs, c).unwrap();
        }
        assert_eq!(defs.users, [nova()]);
        assert_eq!(defs.seeded_users, ["nova"]);
        let (again, notes) = seeding(&defs, &[nova()]);
        assert!(again.is_empty() && notes.is_empty());
        apply(
            &mut defs,
            &MetaCommand::DeleteUser {
                user: "nova".into(),
            },
        )
        .unwrap();
        let (after_delete, notes) = seeding(&defs, &[nova()]);
        assert!(after_delete.is_empty());
        assert_eq!(notes, [Seeding::Deleted("nova".into())]);
    }
}
