//! The broker's shared state: configuration, vhosts and users. One `Arc<Broker>` is handed to every
//! connection task; nothing here is global.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::memory::MemoryMonitor;
use crate::queue::consumer::ConnectionId;
use crate::users::User;
use crate::vhost::{Vhost, VhostLimits};

pub struct Broker {
    pub config: Arc<Config>,
    pub audit: AuditLog,
    pub memory: Arc<MemoryMonitor>,
    vhosts: DashMap<String, Arc<Vhost>>,
    users: RwLock<HashMap<String, Arc<User>>>,
    next_connection: AtomicU64,
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
}

impl Broker {
    pub fn new(config: Arc<Config>) -> Result<Arc<Self>, SetupError> {
        let vhosts = DashMap::new();
        let limits = VhostLimits {
            max_queues: config.limits.max_queues_per_vhost,
            max_connections: config.limits.max_connections_per_vhost,
        };
        for name in &config.vhosts {
            vhosts.insert(name.clone(), Vhost::new(name, limits));
        }
        let mut users = HashMap::new();
        for u in &config.users {
            let user = User::from_config(u).map_err(|source| SetupError::User {
                user: u.name.clone(),
                source,
            })?;
            users.insert(u.name.clone(), Arc::new(user));
        }
        let limits = &config.limits;
        let threshold = MemoryMonitor::threshold(
            limits.memory_high_watermark,
            limits.memory_high_watermark_bytes,
        );
        let audit = AuditLog::open(&config.audit.path).map_err(|e| SetupError::Audit {
            path: config.audit.path.clone(),
            source: e,
        })?;
        Ok(Arc::new(Broker {
            audit,
            memory: Arc::new(MemoryMonitor::new(threshold)),
            config,
            vhosts,
            users: RwLock::new(users),
            next_connection: AtomicU64::new(1),
        }))
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<Vhost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.users.read().get(name).cloned()
    }

    pub fn next_connection_id(&self) -> ConnectionId {
        ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed))
    }
}
