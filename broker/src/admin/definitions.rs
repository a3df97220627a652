//! Administrative changes to vhosts, users and permissions: each one is a list of metadata commands
//! (routing's meta/), validated by applying them to a copy of the definitions, written to the log
//! and, once durable, applied to the running broker, so a failed write changes nothing. On a
//! cluster node the commands go through the metadata group instead, and every node applies them
//! the same way when their entry is committed.
//! Permission changes apply to open connections at once (permissions are looked up per operation);
//! deleting a user or vhost closes its connections with 320 CONNECTION_FORCED, as RabbitMQ does.

use std::sync::Arc;

use warren_protocol::constants::reply;
use warren_storage::definitions::{Definitions, PermissionDefinition, TopicPermissionDefinition};

use crate::broker::{vhost_limits, Broker};
use crate::connection::outbound::Outbound;
use crate::error::AmqpError;
use crate::meta::definitions::CommitError;
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
    /// Carries out an administrative change: through the cluster's metadata group when this broker
    /// is a cluster node (every node applies it, this one before it returns), else here.
    pub(super) async fn change(&self, commands: Vec<MetaCommand>) -> Result<(), AdminError> {
        match self.cluster.get() {
            Some(cluster) => cluster.meta.propose(commands).await.map_err(AdminError),
            None => self.apply_definitions(&commands),
        }
    }

    /// Writes `commands` and, once they are durable, makes them take effect: the running users
    /// and vhosts, and the connections a deletion ends. Nothing changes if one is refused. The
    /// one apply of a single node's admin change and of the metadata group's entries.
    pub(crate) fn apply_definitions(&self, commands: &[MetaCommand]) -> Result<(), AdminError> {
        match self.apply_commands(commands) {
            Ok(answer) => answer.map_err(AdminError),
            Err(e) => Err(AdminError(CommitError::Store(e).to_string())),
        }
    }

    /// [`Self::apply_definitions`], keeping a failed write (the outer error) apart from a refusal
    /// (the inner one), as the metadata group needs them.
    fn apply_commands(&self, commands: &[MetaCommand]) -> std::io::Result<Result<(), String>> {
        let defs = {
            let mut current = self.definitions.lock();
            match self.durability.commit(&mut current, commands) {
                Ok(()) => current.clone(),
                Err(CommitError::Refused(why)) => return Ok(Err(why)),
                Err(CommitError::Store(e)) => return Err(e),
            }
        };
        for command in commands {
            if let Err(e) = self.take_effect(&defs, command) {
                return Ok(Err(e.0));
            }
        }
        Ok(Ok(()))
    }

    /// What an applied command changes in the running broker (`defs`: the definitions after it).
    fn take_effect(&self, defs: &Definitions, command: &MetaCommand) -> Result<(), AdminError> {
        match command {
            MetaCommand::AddVhost { vhost } => {
                if !self.vhosts.contains_key(vhost.as_str()) {
                    let vhost = Vhost::new(
                        vhost,
                        vhost_limits(&self.config),
                        Some(self.durability.clone()),
                        Some(self.paging.clone()),
                        Some(self.streams.clone()),
                        self.route_guard.clone(),
                        Arc::new(crate::timers::RuntimeTimers),
                    );
                    if let Some(r) = &self.replication {
                        vhost.set_replicated(r.clone());
                    }
                    vhost.count_deletions_in(self.metrics.queues_deleted.clone());
                    self.vhosts.insert(vhost.name.clone(), vhost);
                }
            }
            MetaCommand::DeleteVhost { vhost } => {
                let name = vhost.as_str();
                if let Some((_, vhost)) = self.vhosts.remove(name) {
                    vhost.remove_all(crate::time::Now::read());
                }
                let users: Vec<String> = defs.users.iter().map(|u| u.name.clone()).collect();
                for user in users {
                    self.refresh_user(defs, &user)?;
                }
                self.close_connections(
                    |_, vhost| vhost == name,
                    &format!("vhost '{name}' is deleted"),
                );
            }
            MetaCommand::DeleteUser { user } => {
                self.refresh_user(defs, user)?;
                self.close_connections(|u, _| u == user, &format!("user '{user}' is deleted"));
            }
            MetaCommand::AddUser { user, .. }
            | MetaCommand::SetUserTags { user, .. }
            | MetaCommand::SetPasswordHash { user, .. }
            | MetaCommand::SetPermissions { user, .. }
            | MetaCommand::ClearPermissions { user, .. }
            | MetaCommand::SetTopicPermissions { user, .. }
            | MetaCommand::ClearTopicPermissions { user, .. } => self.refresh_user(defs, user)?,
            MetaCommand::RemovedNode { id } => {
                if let Some(cluster) = self.cluster() {
                    cluster.links.forget(*id);
                }
            }
            MetaCommand::SetPolicy { policy, .. } => {
                if let Some(vhost) = self.vhost(&policy.vhost) {
                    vhost.set_policies(defs, crate::time::Now::read());
                }
            }
            MetaCommand::ClearPolicy { vhost, .. } => {
                if let Some(vhost) = self.vhost(vhost) {
                    vhost.set_policies(defs, crate::time::Now::read());
                }
            }
            // Seeding is recorded only; exchanges, queues and bindings change through their vhost.
            MetaCommand::SeedUser { .. }
            | MetaCommand::DeclareExchange { .. }
            | MetaCommand::DeleteExchange { .. }
            | MetaCommand::DeclareQueue { .. }
            | MetaCommand::DeleteQueue { .. }
            | MetaCommand::RetireQueue { .. }
            | MetaCommand::Bind { .. }
            | MetaCommand::Unbind { .. } => {}
        }
        Ok(())
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

    pub async fn add_user(&self, name: &str, tags: Vec<String>) -> Result<(), AdminError> {
        check_name("user", name)?;
        let user = name.to_string();
        self.change(vec![MetaCommand::AddUser { user, tags }]).await
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), AdminError> {
        let user = name.to_string();
        self.change(vec![MetaCommand::DeleteUser { user }]).await
    }

    pub async fn set_user_tags(&self, name: &str, tags: Vec<String>) -> Result<(), AdminError> {
        let user = name.to_string();
        self.change(vec![MetaCommand::SetUserTags { user, tags }])
            .await
    }

    /// Stores the password hash used by the optional PLAIN/AMQPLAIN bridge (None clears it).
    pub(crate) async fn set_password_hash(
        &self,
        name: &str,
        hash: Option<String>,
    ) -> Result<(), AdminError> {
        let user = name.to_string();
        self.change(vec![MetaCommand::SetPasswordHash { user, hash }])
            .await
    }

    pub async fn add_vhost(&self, name: &str) -> Result<(), AdminError> {
        check_name("vhost", name)?;
        self.change(vec![MetaCommand::AddVhost { vhost: name.into() }])
            .await
    }

    pub async fn delete_vhost(&self, name: &str) -> Result<(), AdminError> {
        self.change(vec![MetaCommand::DeleteVhost { vhost: name.into() }])
            .await
    }

    /// set_policy (or set_operator_policy): validated as RabbitMQ validates it, stored, and put
    /// in force on the vhost's queues at once.
    pub async fn set_policy(
        &self,
        policy: warren_storage::definitions::PolicyDefinition,
        operator: bool,
    ) -> Result<(), AdminError> {
        self.check_vhost(&policy.vhost)?;
        crate::policy::validate(&policy, operator)
            .map_err(|why| AdminError(format!("Validation failed\n\n{why}")))?;
        self.change(vec![MetaCommand::SetPolicy { policy, operator }])
            .await
    }

    pub async fn clear_policy(
        &self,
        vhost: &str,
        name: &str,
        operator: bool,
    ) -> Result<(), AdminError> {
        self.check_vhost(vhost)?;
        self.change(vec![MetaCommand::ClearPolicy {
            vhost: vhost.into(),
            name: name.to_string(),
            operator,
        }])
        .await
    }

    fn check_vhost(&self, vhost: &str) -> Result<(), AdminError> {
        if self.vhosts.contains_key(vhost) {
            Ok(())
        } else {
            fail(format!("no such vhost '{vhost}'"))
        }
    }

    pub async fn set_permissions(
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
        let user = user.to_string();
        self.change(vec![MetaCommand::SetPermissions { user, permission }])
            .await
    }

    pub async fn clear_permissions(&self, vhost: &str, user: &str) -> Result<(), AdminError> {
        let user = user.to_string();
        self.change(vec![MetaCommand::ClearPermissions {
            user,
            vhost: vhost.into(),
        }])
        .await
    }

    pub async fn set_topic_permissions(
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
        let user = user.to_string();
        self.change(vec![MetaCommand::SetTopicPermissions { user, permission }])
            .await
    }

    /// Clears one exchange's topic permission, or all of the user's in the vhost when `exchange` is None.
    pub async fn clear_topic_permissions(
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
        self.change(vec![command]).await
    }

    /// A copy of the stored definitions (for listings).
    pub fn definitions(&self) -> Definitions {
        self.definitions.lock().clone()
    }
}

impl Broker {
    /// A quorum queue declared or deleted through the metadata group: its shard's host restores
    /// it from the replica, or drops it from the replica.
    fn follow_quorum_queue(&self, vhost: &Vhost, command: &MetaCommand) {
        match command {
            MetaCommand::DeclareQueue { queue, .. } => {
                if let Some(q) = vhost.find_queue(queue).filter(|q| q.args.quorum) {
                    self.shard_journal.adopt(self, &q);
                }
            }
            MetaCommand::DeleteQueue { queue, .. } => {
                let name = crate::meta::records::message_queue(&vhost.name, queue);
                self.shard_journal.forget(&name);
            }
            _ => {}
        }
    }
}

/// The metadata group changes this node's definitions as a local admin change does, and its
/// replicated topology as each vhost applies it (routing's vhost/replicated.rs).
impl crate::cluster::raft::meta::DefinitionsHolder for Broker {
    fn snapshot(&self) -> Vec<MetaCommand> {
        let mut commands = crate::meta::definitions::commands_for(&self.definitions());
        let mut vhosts: Vec<Arc<Vhost>> = self.vhosts.iter().map(|v| v.clone()).collect();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for vhost in vhosts {
            commands.extend(vhost.replicated_commands());
        }
        commands
    }

    fn apply_definitions(&self, commands: &[MetaCommand]) -> std::io::Result<Result<(), String>> {
        let (topology, definitions): (Vec<&MetaCommand>, Vec<&MetaCommand>) =
            commands.iter().partition(|c| c.vhost().is_some());
        let definitions: Vec<MetaCommand> = definitions.into_iter().cloned().collect();
        if let Err(refused) = self.apply_commands(&definitions)? {
            return Ok(Err(refused));
        }
        let now = crate::time::Now::read();
        for command in topology {
            let name = command.vhost().unwrap_or_default();
            let Some(vhost) = self.vhosts.get(name).map(|v| v.clone()) else {
                return Ok(Err(format!("no such vhost '{name}'")));
            };
            if let Err(refused) = vhost.apply_replicated(command, now) {
                return Ok(Err(refused));
            }
            self.follow_quorum_queue(&vhost, command);
        }
        Ok(Ok(()))
    }

    fn install(&self, commands: Vec<MetaCommand>) -> std::io::Result<Result<(), String>> {
        let target = match crate::cluster::raft::meta::definitions_of(&commands) {
            Ok(target) => target,
            Err(e) => return Ok(Err(e)),
        };
        let changes = crate::meta::definitions::replacing(&self.definitions(), &target);
        if let Err(refused) = self.apply_commands(&changes)? {
            return Ok(Err(refused));
        }
        let now = crate::time::Now::read();
        for vhost in self.vhosts.iter().map(|v| v.clone()).collect::<Vec<_>>() {
            let wanted: Vec<MetaCommand> = commands
                .iter()
                .filter(|c| c.vhost() == Some(vhost.name.as_str()))
                .cloned()
                .collect();
            for problem in vhost.reconcile(&wanted, now) {
                tracing::error!(vhost = %vhost.name, problem, "a snapshot's topology could not be applied in full");
            }
            for command in &wanted {
                self.follow_quorum_queue(&vhost, command);
            }
        }
        Ok(Ok(()))
    }
}
