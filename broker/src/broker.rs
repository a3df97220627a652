//! The broker's shared state: configuration, vhosts, users, open connections, the memory alarm and the
//! audit log. One `Arc<Broker>` is handed to every connection task; nothing here is global.
//!
//! Definitions (vhosts, users, permissions) persist as metadata commands in the command log, beside
//! durable exchanges, queues and bindings (routing's meta/); the configuration's vhosts and users are
//! applied on top at every start. Every change made through the admin API is written as commands,
//! and applied once durable, while holding `definitions`, which serialises administrative changes.
//! A `definitions.json` of an earlier version is imported once and renamed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc::UnboundedSender;
use warren_storage::definitions::{Definitions, Seeding};
use warren_storage::dir_lock::{DirLock, DirLockError};

use crate::alarms::Alarms;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::connection::outbound::Outbound;
use crate::exchange::RouteGuard;
use crate::ids::{ConnectionId, VhostName};
use crate::message::codec::decode_message;
use crate::meta::{codec, legacy, records, MetaCommand};
use crate::persist::Durability;
use crate::queue::paging::Paging;
use crate::queue::stream::Streams;
use crate::queue::Queue;
use crate::topic_guard::TopicGuard;
use crate::users::User;
use crate::vhost::{Vhost, VhostLimits};
use warren_storage::log::record::Record;
use warren_storage::log::{LogError, Recovered};

/// What the broker knows about an open connection, for listing and for closing it from outside.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub peer: SocketAddr,
    pub user: String,
    pub vhost: VhostName,
    pub outbox: UnboundedSender<Outbound>,
}

/// Stored messages read back from the log at once during start-up.
const RESTORE_BATCH: usize = 4096;

pub struct Broker {
    pub config: Arc<Config>,
    pub(crate) audit: Arc<AuditLog>,
    pub alarms: Arc<Alarms>,
    /// When messages last moved through healthy queues (per-publisher flow control, see flow.rs).
    pub(crate) flow_activity: crate::flow::Activity,
    pub(crate) vhosts: DashMap<VhostName, Arc<Vhost>>,
    pub(crate) users: Arc<RwLock<HashMap<String, Arc<User>>>>,
    /// What every vhost asks before a message enters a topic exchange by a hop (users' topic writes).
    pub(crate) route_guard: Arc<dyn RouteGuard>,
    /// Moves whenever a user or its permissions change (invalidates per-connection permission caches).
    pub(crate) users_generation: AtomicU64,
    /// Vhosts, users and permissions as the log's commands built them; held while an administrative
    /// change is written and applied.
    pub(crate) definitions: Mutex<Definitions>,
    pub(crate) connections: DashMap<ConnectionId, ConnectionInfo>,
    /// The command log: durable definitions and persistent messages.
    pub durability: Arc<Durability>,
    /// Spill files for queue backlogs past their memory budget.
    pub paging: Arc<Paging>,
    /// Where stream queues keep their logs, and the thread that syncs them.
    pub streams: Arc<Streams>,
    next_connection: AtomicU64,
    /// This node in its cluster, once started (a cluster node only).
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::node::Cluster>>,
    /// The cluster's Raft records as the log recovered them, until the cluster starts.
    pub(crate) raft_records: Mutex<BTreeMap<String, Bytes>>,
    /// Where a cluster node's quorum queues journal their messages: their shard groups.
    pub shard_journal: Arc<crate::cluster::quorum::ShardJournal>,
    /// What a cluster node's vhosts need from the cluster (None on a single node).
    pub(crate) replication: Option<crate::vhost::Replication>,
    /// This broker's exclusive hold on its data directory, released by [`Broker::close`] (or when
    /// the broker is dropped): tasks that outlive a stopped broker a moment must not keep the
    /// directory from the next one.
    dir_lock: Mutex<Option<DirLock>>,
    /// When it started (uptime, as status shows it).
    pub(crate) started: std::time::Instant,
    /// Whether it serves clients (`rabbitmqctl stop_app` / `start_app`).
    serving: std::sync::atomic::AtomicBool,
    /// What the metrics count (metrics/counters.rs).
    pub metrics: crate::metrics::Counters,
    /// Free disk space below which the disk alarm is raised.
    pub disk_free_limit: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("user {user}: {source}")]
    User { user: String, source: regex::Error },
    #[error("cannot open the audit log {path}: {source}")]
    Audit {
        path: String,
        source: std::io::Error,
    },
    #[error("definitions {path}: {source}")]
    Definitions {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Log(#[from] LogError),
    #[error("spill directory {path}: {source}")]
    Spill {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the stream directory {path}: {source}")]
    Streams {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    DataDir(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Locked(#[from] DirLockError),
    #[error("cannot store the configuration's vhosts and users: {0}")]
    Seeding(crate::meta::definitions::CommitError),
}

/// The metadata commands recovery found in the log, in the order they apply.
struct FoundMeta {
    commands: Vec<MetaCommand>,
    /// Some record could not be read: stored messages of unknown queues are kept, not dropped.
    unreadable: bool,
    /// The cluster's Raft records (`raft/...`), for its groups to recover from.
    raft: BTreeMap<String, Bytes>,
}

/// Decodes every live definition record of the log. Records of an earlier version (JSON under
/// JSON-array keys) become commands and are rewritten as such; a record this version cannot read is
/// reported and left in the log as it is.
fn read_meta(recovered: &Recovered, durability: &Durability) -> FoundMeta {
    let mut commands = Vec::new();
    let mut rewrite = Vec::new();
    let mut unreadable = false;
    let mut raft = BTreeMap::new();
    for (key, value) in &recovered.definitions {
        if key.starts_with(crate::cluster::raft::log_store::KEY_PREFIX) {
            raft.insert(key.clone(), value.clone());
            continue;
        }
        let command = if legacy::is_legacy(value) {
            legacy::command(key, value).inspect(|c| {
                let record = records::record(c);
                if matches!(&record, Record::Put { key: new, .. } if new != key) {
                    rewrite.push(Record::Delete { key: key.clone() });
                }
                rewrite.push(record);
            })
        } else {
            codec::decode(value).map_err(|e| e.to_string())
        };
        match command {
            Ok(c) => commands.push(c),
            Err(why) => {
                unreadable = true;
                tracing::error!(
                    key = ?key,
                    why,
                    "a stored definition cannot be restored: it is skipped and stays in the log as it is"
                );
            }
        }
    }
    if !rewrite.is_empty() {
        tracing::info!(
            records = rewrite.len(),
            "rewriting definition records of an earlier version as metadata commands"
        );
        durability.write(rewrite, None);
    }
    commands.sort_by_key(MetaCommand::recovery_rank);
    FoundMeta {
        commands,
        unreadable,
        raft,
    }
}

/// Imports the `definitions.json` of an earlier version (vhosts, users, permissions) as commands,
/// unless the log already holds definitions (an import that was cut short before the rename), then
/// renames it `definitions.json.imported` so it is read once.
fn import_definitions_file(
    path: &std::path::Path,
    definitions: &mut Definitions,
    durability: &Durability,
) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let file = Definitions::load(path)?;
    if *definitions == Definitions::default() {
        let commands = crate::meta::definitions::commands_for(&file);
        durability
            .commit(definitions, &commands)
            .map_err(std::io::Error::other)?;
        tracing::info!(
            vhosts = file.vhosts.len(),
            users = file.users.len(),
            "imported the definitions file of an earlier version into the log"
        );
    }
    let imported = path.with_extension("json.imported");
    std::fs::rename(path, &imported)?;
    tracing::info!(file = %imported.display(), "the definitions file was renamed: the log holds its definitions now");
    Ok(())
}

/// Creates `dir` (and missing parents) as 0700, whatever the umask: a group-writable data directory
/// would be refused by the next check.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Broker {
    /// Whether it serves clients (false after `rabbitmqctl stop_app`, until `start_app`).
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Stops serving clients, closing every connection with 320 as a shutdown does (stop_app),
    /// or serves them again (start_app); the broker itself and its cluster node go on.
    pub(crate) fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
        if !serving {
            for c in self.connections.iter() {
                let _ = c
                    .outbox
                    .send(crate::connection::outbound::Outbound::ForceClose(
                        crate::error::AmqpError::new(
                            warren_protocol::constants::reply::CONNECTION_FORCED,
                            "broker forced connection closure with reason 'shutdown'",
                        ),
                    ));
            }
        }
    }

    /// This node in its cluster (None for a single node, or before the cluster has started).
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::node::Cluster>> {
        self.cluster.get()
    }

    /// The last step of a shutdown: the log stops once what was queued is durable, then the data
    /// directory is released for the next broker (even while tasks that outlive this one a moment
    /// still hold it: their writes now fail instead of reaching the next broker's files).
    pub fn close(&self) {
        self.durability.close();
        self.dir_lock.lock().take();
    }

    /// Opens the broker on `config`'s data directory, taking its lock unless `lock` is the lock
    /// already taken (`warren --dev` takes it before it refreshes the development PKI, so a second
    /// broker never rewrites the first one's certificates).
    pub fn open(config: Arc<Config>, lock: Option<DirLock>) -> Result<Arc<Self>, SetupError> {
        let definitions_path = config.data_dir.join("definitions.json");
        let defs_err = |source| SetupError::Definitions {
            path: definitions_path.clone(),
            source,
        };
        create_private_dir(&config.data_dir).map_err(defs_err)?;
        // Whoever could write the data directory could replace the definitions or the log.
        crate::tls::check_trusted_path(&config.data_dir)?;
        let dir_lock = match lock {
            Some(lock) => lock,
            None => DirLock::acquire(&config.data_dir)?,
        };
        let (durability, recovered) = Durability::open(&config.data_dir)?;
        if let Some((segment, offset, dropped)) = &recovered.truncated {
            tracing::warn!(%segment, offset, dropped, "cut a torn or corrupt record off the end of the log (an unfinished write at a crash)");
        }
        let mut found = read_meta(&recovered, &durability);
        let mut definitions = Definitions::default();
        let (broker_commands, topology): (Vec<_>, Vec<_>) = found
            .commands
            .into_iter()
            .partition(|c| c.vhost().is_none());
        for command in &broker_commands {
            if let Err(why) = crate::meta::definitions::apply(&mut definitions, command) {
                tracing::error!(command = ?command, why, "a stored definition does not apply");
            }
        }
        import_definitions_file(&definitions_path, &mut definitions, &durability)
            .map_err(defs_err)?;
        // A cluster node seeds only until it has joined the metadata group: after that the group's
        // log decides (a vhost or user deleted through it must not come back at a restart).
        let seeds_locally = config.cluster.is_none() || found.raft.is_empty();
        let mut commands: Vec<MetaCommand> = config
            .vhosts
            .iter()
            .filter(|_| seeds_locally)
            .filter(|v| !definitions.vhosts.contains(v))
            .map(|v| MetaCommand::AddVhost {
                vhost: v.as_str().into(),
            })
            .collect();
        let configured: &[_] = if seeds_locally { &config.users } else { &[] };
        let (seeds, notes) = crate::meta::definitions::seeding(&definitions, configured);
        commands.extend(seeds);
        for note in notes {
            match note {
                Seeding::Created(user) => {
                    tracing::info!(user = ?user, "created a user of the configuration file")
                }
                Seeding::Differs(user) => tracing::warn!(
                    user = ?user,
                    "the configuration file and the broker differ for this user (changed with brokerctl since it was created?): the broker's definition stays in force; change it with brokerctl"
                ),
                Seeding::Deleted(user) => tracing::warn!(
                    user = ?user,
                    "this user of the configuration file was deleted with brokerctl: it is not created again"
                ),
            }
        }
        durability
            .commit(&mut definitions, &commands)
            .map_err(SetupError::Seeding)?;

        let limits = &config.limits;
        let threshold = Alarms::threshold(
            limits.memory_high_watermark,
            limits.memory_high_watermark_bytes,
        );
        let alarms = Arc::new(Alarms::new(threshold));
        let spill_dir = config.data_dir.join("spill");
        let paging = Paging::new(
            &spill_dir,
            limits.queue_memory_budget_bytes,
            alarms.clone(),
            limits.memory_paging_ratio,
            std::time::Instant::now(),
        )
        .map_err(|source| SetupError::Spill {
            path: spill_dir,
            source,
        })?;
        let streams_dir = config.data_dir.join("streams");
        let streams =
            Streams::new(&streams_dir, alarms.clone()).map_err(|source| SetupError::Streams {
                path: streams_dir,
                source,
            })?;
        let mut users = HashMap::new();
        for u in &definitions.users {
            let user = User::from_config(u).map_err(|source| SetupError::User {
                user: u.name.clone(),
                source,
            })?;
            users.insert(u.name.clone(), Arc::new(user));
        }
        let audit = Arc::new(
            AuditLog::open(&config.audit.path, config.log.format).map_err(|e| {
                SetupError::Audit {
                    path: config.audit.path.clone(),
                    source: e,
                }
            })?,
        );
        let users = Arc::new(RwLock::new(users));
        let route_guard: Arc<dyn RouteGuard> = Arc::new(TopicGuard {
            users: users.clone(),
            audit: audit.clone(),
        });
        let shard_journal = Arc::new(crate::cluster::quorum::ShardJournal::default());
        let replication = config.cluster.as_ref().map(|c| crate::vhost::Replication {
            node: c.node_id,
            run: rand::random(),
            quorum: shard_journal.clone(),
            copies: Arc::new(crate::cluster::quorum::CopiesJournal(shard_journal.clone())),
            proposer: shard_journal.clone(),
            streams: Arc::new(shard_journal.streams.clone()),
        });
        let disk_limit = config
            .limits
            .disk_free_limit_bytes
            .unwrap_or(threshold.max(1 << 30));
        let vhosts = DashMap::new();
        let metrics = crate::metrics::Counters::default();
        for name in &definitions.vhosts {
            let vhost = Vhost::new(
                name,
                vhost_limits(&config),
                Some(durability.clone()),
                Some(paging.clone()),
                Some(streams.clone()),
                route_guard.clone(),
                Arc::new(crate::timers::RuntimeTimers),
            );
            if let Some(r) = &replication {
                vhost.set_replicated(r.clone());
            }
            vhost.count_deletions_in(metrics.queues_deleted.clone());
            vhost.set_policies(&definitions, crate::time::Now::read());
            vhosts.insert(vhost.name.clone(), vhost);
        }
        let broker = Arc::new(Broker {
            audit,
            alarms,
            flow_activity: crate::flow::Activity::new((&config.flow).into()),
            config,
            vhosts,
            users,
            route_guard,
            users_generation: AtomicU64::new(0),
            definitions: Mutex::new(definitions),
            connections: DashMap::new(),
            durability,
            paging,
            streams,
            next_connection: AtomicU64::new(1),
            cluster: std::sync::OnceLock::new(),
            raft_records: Mutex::new(std::mem::take(&mut found.raft)),
            shard_journal,
            replication,
            dir_lock: Mutex::new(Some(dir_lock)),
            started: std::time::Instant::now(),
            serving: std::sync::atomic::AtomicBool::new(true),
            metrics,
            disk_free_limit: disk_limit,
        });
        crate::alarms::spawn_disk_monitor(
            &broker.alarms,
            broker.config.data_dir.clone(),
            disk_limit,
            std::time::Duration::from_secs(1),
        );
        broker.restore(topology, found.unreadable, recovered)?;
        Ok(broker)
    }

    /// Rebuilds durable exchanges, queues, bindings (`topology`, in recovery order) and stored
    /// messages from the log. The stored messages of a queue whose record exists are never deleted
    /// because it could not be restored, nor any when a record could not be read (`unreadable`).
    fn restore(
        &self,
        topology: Vec<MetaCommand>,
        unreadable: bool,
        recovered: Recovered,
    ) -> Result<(), SetupError> {
        let now = crate::time::Now::read();
        // Message-queue names of queue records that were not restored.
        let mut unrestored = std::collections::HashSet::new();
        // The stream directories any stored queue may have (kept even if it is not restored).
        let mut streams = Vec::new();
        for command in topology {
            if let MetaCommand::DeclareQueue { vhost, queue, .. } = &command {
                streams.push(self.streams.dir_for(vhost, queue));
            }
            let Some(vhost) = command.vhost().and_then(|v| self.vhost(v)) else {
                if let MetaCommand::DeclareQueue { vhost, queue, .. } = &command {
                    unrestored.insert(records::message_queue(vhost, queue));
                }
                tracing::error!(
                    command = ?command,
                    "a stored definition cannot be restored: its vhost does not exist (its record stays in the log)"
                );
                continue;
            };
            vhost.restore(command, now);
        }
        // Stream files without a queue record (a deletion cut short) are removed.
        if !unreadable {
            self.streams.sweep(&streams);
        }
        let mut by_stored_name = HashMap::new();
        for vhost in self.vhosts.iter() {
            for queue in vhost.queue_list() {
                by_stored_name.insert(records::message_queue(&vhost.name, queue.name()), queue);
            }
        }
        let mut restored = 0usize;
        for (name, messages) in recovered.queues {
            let Some(queue) = by_stored_name.get(&name).cloned() else {
                if unreadable || unrestored.contains(&name) {
                    tracing::error!(
                        queue = ?name,
                        messages = messages.len(),
                        "keeping the stored messages of a queue whose definition could not be restored"
                    );
                    continue;
                }
                // Messages of a queue whose definition was deleted: drop them from the log too.
                tracing::warn!(
                    queue = ?name,
                    messages = messages.len(),
                    "dropping stored messages of a queue that no longer exists"
                );
                self.durability
                    .write(vec![Record::DropQueue { queue: name }], None);
                continue;
            };
            let ids: Vec<u64> = messages.into_keys().collect();
            for chunk in ids.chunks(RESTORE_BATCH) {
                restored += self.restore_messages(&queue, &name, chunk.to_vec(), now)?;
            }
        }
        if restored > 0 {
            tracing::info!(messages = restored, "recovered persistent messages");
        }
        Ok(())
    }

    /// Reads one batch of a queue's stored messages back from the log and puts them in the queue
    /// (which pages them out again past its budget, so a long backlog is never in memory at once).
    fn restore_messages(
        &self,
        queue: &Arc<Queue>,
        name: &str,
        ids: Vec<u64>,
        now: crate::time::Now,
    ) -> Result<usize, SetupError> {
        let stored = self.durability.read(name, ids).map_err(LogError::Io)?;
        let mut batch = Vec::with_capacity(stored.len());
        for (id, payload) in stored {
            let Some(m) = decode_message(&payload) else {
                tracing::error!(
                    queue = name,
                    id,
                    "a stored message does not decode; skipped"
                );
                continue;
            };
            let message = m.into_message(self.alarms.clone(), true, Some(payload));
            batch.push((id, Arc::new(message)));
        }
        let n = batch.len();
        queue.restore(batch, now);
        Ok(n)
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub(crate) fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().get(name).cloned()
    }

    pub(crate) fn users_generation(&self) -> u64 {
        self.users_generation.load(Ordering::Acquire)
    }

    pub(crate) fn next_connection_id(&self) -> ConnectionId {
        ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed))
    }

    /// Records an open connection; the returned guard removes it when the connection ends.
    pub(crate) fn register_connection(
        self: &Arc<Self>,
        id: ConnectionId,
        info: ConnectionInfo,
    ) -> Registered {
        self.connections.insert(id, info);
        crate::metrics::Counters::inc(&self.metrics.connections_opened);
        Registered {
            broker: self.clone(),
            id,
        }
    }
}

pub(crate) fn vhost_limits(config: &Config) -> VhostLimits {
    VhostLimits {
        max_queues: config.limits.max_queues_per_vhost,
        max_connections: config.limits.max_connections_per_vhost,
    }
}

/// An entry in the connection registry, removed on drop.
pub struct Registered {
    broker: Arc<Broker>,
    id: ConnectionId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.broker.connections.remove(&self.id);
        crate::metrics::Counters::inc(&self.broker.metrics.connections_closed);
    }
}

/// A cluster node hosts the quorum queues of the shards it leads from the vhosts' queues.
impl crate::cluster::quorum::QuorumHolder for Broker {
    fn quorum_queues(&self) -> Vec<(String, Arc<Queue>)> {
        let mut out = Vec::new();
        for vhost in self.vhosts.iter() {
            for queue in vhost.queue_list() {
                if queue.args.quorum {
                    if let Some(name) = queue.record_name() {
                        out.push((name.to_string(), queue));
                    }
                }
            }
        }
        out
    }

    fn copies(&self) -> Vec<(String, Arc<Queue>)> {
        let mut out = Vec::new();
        for vhost in self.vhosts.iter() {
            for queue in vhost.queue_list() {
                // (A stream's copy reads at its home by itself: cluster/quorum/stream.rs.)
                if vhost.is_copy(&queue) && !queue.args.stream {
                    if let Some(name) = queue.record_name() {
                        out.push((name.to_string(), queue));
                    }
                }
            }
        }
        out
    }

    fn publish(
        &self,
        vhost: &str,
        queue: &str,
        message: Arc<crate::message::Message>,
        confirm: &dyn crate::queue::sink::WaitsForWrites,
    ) -> crate::queue::Enqueued {
        let found = self
            .vhosts
            .get(vhost)
            .and_then(|v| v.find_queue(queue))
            .filter(|q| q.is_replicated());
        match found {
            Some(q) => q.publish(message, Some(confirm), crate::time::Now::read()),
            None => crate::queue::Enqueued::Gone,
        }
    }

    fn queue(&self, vhost: &str, queue: &str) -> Option<Arc<Queue>> {
        self.vhosts
            .get(vhost)
            .and_then(|v| v.find_queue(queue))
            .filter(|q| q.is_replicated())
    }

    fn message(&self, payload: &Bytes) -> Option<Arc<crate::message::Message>> {
        let m = decode_message(payload)?;
        Some(Arc::new(m.into_message(
            self.alarms.clone(),
            true,
            Some(payload.clone()),
        )))
    }
}
