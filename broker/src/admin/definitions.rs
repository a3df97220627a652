//! Administrative changes to vhosts, users and permissions: each one is validated, written to the
//! definitions file, and only then applied to the running broker, so a failed write changes nothing.
//! Permission changes apply to open connections at once (permissions are looked up per operation);
//! deleting a user or vhost closes its connections with 320 CONNECTION_FORCED, as RabbitMQ does.

use std::sync::Arc;

use warren_protocol::constants::reply;
use warren_storage::definitions::{
    Definitions, PermissionDefinition, TopicPermissionDefinition, UserDefinition,
};

use crate::broker::{vhost_limits, Broker};
use crate::connection::outbound::Outbound;
use crate::error::AmqpError;
use crate::users::User;
use crate::vhost::Vhost;

/// An administrative request that cannot be carried out, with a message for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdminError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, AdminError> {
    Err(AdminError(message.into()))
}

/// Names of users and vhosts: printable, at most 255 bytes (see `warren_storage::names`).
fn check_name(kind: &str, name: &str) -> Result<(), AdminError> {
    match warren_storage::names::check(name) {
        Ok(()) => Ok(()),
        Err(why) => fail(format!("invalid {kind} name {name:?}: {why}")),
    }
}

fn check_pattern(pattern: &str) -> Result<(), AdminError> {
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| AdminError(format!("invalid pattern {pattern:?}: {e}")))
}

impl Broker {
    /// Applies `change` to a copy of the definitions, saves it, then makes it the running state.
    fn change_definitions(
        &self,
        change: impl FnOnce(&mut Definitions) -> Result<(), AdminError>,
    ) -> Result<Definitions, AdminError> {
        let mut current = self.definitions.lock();
        let mut next = current.clone();
        change(&mut next)?;
        next.save(&self.definitions_path).map_err(|e| {
            AdminError(format!(
                "cannot save {}: {e}",
                self.definitions_path.display()
            ))
        })?;
        *current = next.clone();
        Ok(next)
    }

    /// Rebuilds the running user from its definition (or removes it).
    fn refresh_user(&self, defs: &Definitions, name: &str) -> Result<(), AdminError> {
        let mut users = self.users.write();
        self.users_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        match defs.users.iter().find(|u| u.name == name) {
            Some(def) => {
                let user = User::from_config(def).map_err(|e| AdminError(e.to_string()))?;
                users.insert(name.to_string(), Arc::new(user));
            }
            None => {
                users.remove(name);
            }
        }
        Ok(())
    }

    fn close_connections(&self, matches: impl Fn(&str, &str) -> bool, text: &str) {
        for c in self.connections.iter() {
            if matches(&c.user, &c.vhost) {
                let _ = c.outbox.send(Outbound::ForceClose(AmqpError::new(
                    reply::CONNECTION_FORCED,
                    text,
                )));
            }
        }
    }

    /// Closes the connections from `peer` with 320 CONNECTION_FORCED and `reason`; returns how many.
    pub fn close_connections_from(&self, peer: &str, reason: &str) -> usize {
        let mut closed = 0;
        for c in self.connections.iter() {
            if c.peer.to_string() == peer {
                let _ = c.outbox.send(Outbound::ForceClose(AmqpError::new(
                    reply::CONNECTION_FORCED,
                    reason,
                )));
                closed += 1;
            }
        }
        closed
    }

    pub fn add_user(&self, name: &str, tags: Vec<String>) -> Result<(), AdminError> {
        check_name("user", name)?;
        let defs = self.change_definitions(|d| {
            if d.users.iter().any(|u| u.name == name) {
                return fail(format!("user '{name}' already exists"));
            }
            d.users.push(UserDefinition {
                name: name.to_string(),
                tags,
                permissions: Vec::new(),
                topic_permissions: Vec::new(),
                password_hash: None,
            });
            Ok(())
        })?;
        self.refresh_user(&defs, name)
    }

    pub fn delete_user(&self, name: &str) -> Result<(), AdminError> {
        let defs = self.change_definitions(|d| {
            let before = d.users.len();
            d.users.retain(|u| u.name != name);
            if d.users.len() == before {
                return fail(format!("no such user '{name}'"));
            }
            Ok(())
        })?;
        self.refresh_user(&defs, name)?;
        self.close_connections(|user, _| user == name, &format!("user '{name}' is deleted"));
        Ok(())
    }

    /// Changes one user's definition (it must exist) and applies it.
    fn update_user(
        &self,
        name: &str,
        edit: impl FnOnce(&mut UserDefinition) -> Result<(), AdminError>,
    ) -> Result<(), AdminError> {
        let defs =
            self.change_definitions(|d| match d.users.iter_mut().find(|u| u.name == name) {
                Some(user) => edit(user),
                None => fail(format!("no such user '{name}'")),
            })?;
        self.refresh_user(&defs, name)
    }

    pub fn set_user_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AdminError> {
        self.update_user(name, |u| {
            u.tags = tags;
            Ok(())
        })
    }

    /// Stores the password hash used by the optional PLAIN/AMQPLAIN bridge (None clears it).
    pub fn set_password_hash(&self, name: &str, hash: Option<String>) -> Result<(), AdminError> {
        self.update_user(name, |u| {
            u.password_hash = hash;
            Ok(())
        })
    }

    pub fn add_vhost(&self, name: &str) -> Result<(), AdminError> {
        check_name("vhost", name)?;
        self.change_definitions(|d| {
            if d.vhosts.iter().any(|v| v == name) {
                return fail(format!("vhost '{name}' already exists"));
            }
            d.vhosts.push(name.to_string());
            Ok(())
        })?;
        self.vhosts.insert(
            name.to_string(),
            Vhost::new(
                name,
                vhost_limits(&self.config),
                Some(self.durability.clone()),
                Some(self.paging.clone()),
                self.route_guard.clone(),
                Arc::new(crate::timers::RuntimeTimers),
            ),
        );
        Ok(())
    }

    pub fn delete_vhost(&self, name: &str) -> Result<(), AdminError> {
        let defs = self.change_definitions(|d| {
            let before = d.vhosts.len();
            d.vhosts.retain(|v| v != name);
            if d.vhosts.len() == before {
                return fail(format!("no such vhost '{name}'"));
            }
            for u in &mut d.users {
                u.permissions.retain(|p| p.vhost != name);
                u.topic_permissions.retain(|p| p.vhost != name);
            }
            Ok(())
        })?;
        if let Some((_, vhost)) = self.vhosts.remove(name) {
            for queue in vhost.queue_names() {
                if let Some(q) = vhost.find_queue(&queue) {
                    vhost.remove_queue(&q, crate::time::Now::read());
                }
            }
        }
        let names: Vec<String> = defs.users.iter().map(|u| u.name.clone()).collect();
        for user in names {
            self.refresh_user(&defs, &user)?;
        }
        self.close_connections(
            |_, vhost| vhost == name,
            &format!("vhost '{name}' is deleted"),
        );
        Ok(())
    }

    fn check_vhost(&self, vhost: &str) -> Result<(), AdminError> {
        if self.vhosts.contains_key(vhost) {
            Ok(())
        } else {
            fail(format!("no such vhost '{vhost}'"))
        }
    }

    pub fn set_permissions(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AdminError> {
        self.check_vhost(vhost)?;
        for p in [configure, write, read] {
            check_pattern(p)?;
        }
        self.update_user(user, |u| {
            u.permissions.retain(|p| p.vhost != vhost);
            u.permissions.push(PermissionDefinition {
                vhost: vhost.to_string(),
                configure: configure.to_string(),
                write: write.to_string(),
                read: read.to_string(),
            });
            Ok(())
        })
    }

    pub fn clear_permissions(&self, vhost: &str, user: &str) -> Result<(), AdminError> {
        self.update_user(user, |u| {
            u.permissions.retain(|p| p.vhost != vhost);
            Ok(())
        })
    }

    pub fn set_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AdminError> {
        self.check_vhost(vhost)?;
        for p in [write, read] {
            check_pattern(&crate::config::expand_topic_pattern(p, user, vhost))?;
        }
        self.update_user(user, |u| {
            u.topic_permissions
                .retain(|p| !(p.vhost == vhost && p.exchange == exchange));
            u.topic_permissions.push(TopicPermissionDefinition {
                vhost: vhost.to_string(),
                exchange: exchange.to_string(),
                write: write.to_string(),
                read: read.to_string(),
            });
            Ok(())
        })
    }

    /// Clears one exchange's topic permission, or all of the user's in the vhost when `exchange` is None.
    pub fn clear_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: Option<&str>,
    ) -> Result<(), AdminError> {
        self.update_user(user, |u| {
            u.topic_permissions
                .retain(|p| !(p.vhost == vhost && exchange.is_none_or(|x| p.exchange == x)));
            Ok(())
        })
    }

    /// A snapshot of the persisted definitions (for listings).
    pub fn definitions(&self) -> Definitions {
        self.definitions.lock().clone()
    }
}
