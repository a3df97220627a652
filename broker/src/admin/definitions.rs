//! Administrative changes to vhosts, users and permissions: each one is a list of metadata commands
//! (routing's meta/), validated by applying them to a copy of the definitions, written to the log
//! and, once durable, applied to the running broker, so a failed write changes nothing.
//! Permission changes apply to open connections at once (permissions are looked up per operation);
//! deleting a user or vhost closes its connections with 320 CONNECTION_FORCED, as RabbitMQ does.

use std::sync::Arc;

use warren_protocol::constants::reply;
use warren_storage::definitions::{Definitions, PermissionDefinition, TopicPermissionDefinition};

use crate::broker::{vhost_limits, Broker};
use crate::connection::outbound::Outbound;
use crate::error::AmqpError;
use crate::meta::MetaCommand;
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
    /// Writes `commands` and applies them to the definitions; returns the definitions after them.
    fn change_definitions(&self, commands: &[MetaCommand]) -> Result<Definitions, AdminError> {
        let mut current = self.definitions.lock();
        self.durability
            .commit(&mut current, commands)
            .map_err(|e| AdminError(e.to_string()))?;
        Ok(current.clone())
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
    pub(crate) fn close_connections_from(&self, peer: &str, reason: &str) -> usize {
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
        let user = name.to_string();
        self.update_user(name, MetaCommand::AddUser { user, tags })
    }

    pub fn delete_user(&self, name: &str) -> Result<(), AdminError> {
        let defs = self.change_definitions(&[MetaCommand::DeleteUser {
            user: name.to_string(),
        }])?;
        self.refresh_user(&defs, name)?;
        self.close_connections(|user, _| user == name, &format!("user '{name}' is deleted"));
        Ok(())
    }

    /// Applies one change to a user and refreshes the running user.
    fn update_user(&self, name: &str, command: MetaCommand) -> Result<(), AdminError> {
        let defs = self.change_definitions(&[command])?;
        self.refresh_user(&defs, name)
    }

    pub fn set_user_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AdminError> {
        let user = name.to_string();
        self.update_user(name, MetaCommand::SetUserTags { user, tags })
    }

    /// Stores the password hash used by the optional PLAIN/AMQPLAIN bridge (None clears it).
    pub(crate) fn set_password_hash(
        &self,
        name: &str,
        hash: Option<String>,
    ) -> Result<(), AdminError> {
        let user = name.to_string();
        self.update_user(name, MetaCommand::SetPasswordHash { user, hash })
    }

    pub fn add_vhost(&self, name: &str) -> Result<(), AdminError> {
        check_name("vhost", name)?;
        self.change_definitions(&[MetaCommand::AddVhost { vhost: name.into() }])?;
        let vhost = Vhost::new(
            name,
            vhost_limits(&self.config),
            Some(self.durability.clone()),
            Some(self.paging.clone()),
            self.route_guard.clone(),
            Arc::new(crate::timers::RuntimeTimers),
        );
        self.vhosts.insert(vhost.name.clone(), vhost);
        Ok(())
    }

    pub fn delete_vhost(&self, name: &str) -> Result<(), AdminError> {
        let defs = self.change_definitions(&[MetaCommand::DeleteVhost { vhost: name.into() }])?;
        if let Some((_, vhost)) = self.vhosts.remove(name) {
            vhost.remove_all(crate::time::Now::read());
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
        let permission = PermissionDefinition {
            vhost: vhost.into(),
            configure: configure.to_string(),
            write: write.to_string(),
            read: read.to_string(),
        };
        let name = user.to_string();
        self.update_user(
            user,
            MetaCommand::SetPermissions {
                user: name,
                permission,
            },
        )
    }

    pub fn clear_permissions(&self, vhost: &str, user: &str) -> Result<(), AdminError> {
        let (name, vhost) = (user.to_string(), vhost.to_string());
        self.update_user(
            user,
            MetaCommand::ClearPermissions {
                user: name,
                vhost: vhost.into(),
            },
        )
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
        let permission = TopicPermissionDefinition {
            vhost: vhost.into(),
            exchange: exchange.to_string(),
            write: write.to_string(),
            read: read.to_string(),
        };
        let name = user.to_string();
        self.update_user(
            user,
            MetaCommand::SetTopicPermissions {
                user: name,
                permission,
            },
        )
    }

    /// Clears one exchange's topic permission, or all of the user's in the vhost when `exchange` is None.
    pub fn clear_topic_permissions(
        &self,
        vhost: &str,
        user: &str,
        exchange: Option<&str>,
    ) -> Result<(), AdminError> {
        let command = MetaCommand::ClearTopicPermissions {
            user: user.to_string(),
            vhost: vhost.into(),
            exchange: exchange.map(str::to_string),
        };
        self.update_user(user, command)
    }

    /// A copy of the stored definitions (for listings).
    pub fn definitions(&self) -> Definitions {
        self.definitions.lock().clone()
    }
}
