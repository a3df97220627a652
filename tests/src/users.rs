//! Users for the configuration, in one line each: `user("bob", &[("/", ".*", "^bob\\.", "")])`.

use warren_broker::config::{PermissionConfig, TopicPermissionConfig, UserConfig};

/// A user with (vhost, configure, write, read) permission entries and no topic permissions.
pub fn user(name: &str, permissions: &[(&str, &str, &str, &str)]) -> UserConfig {
    UserConfig {
        name: name.to_string(),
        tags: Vec::new(),
        permissions: permissions
            .iter()
            .map(|(vhost, configure, write, read)| PermissionConfig {
                vhost: vhost.to_string(),
                configure: configure.to_string(),
                write: write.to_string(),
                read: read.to_string(),
            })
            .collect(),
        topic_permissions: Vec::new(),
        password_hash: None,
    }
}

/// A user with `.*` for everything on vhost `/`.
pub fn full_access(name: &str) -> UserConfig {
    user(name, &[("/", ".*", ".*", ".*")])
}

/// A topic permission: routing-key patterns for one exchange of one vhost.
pub fn topic(vhost: &str, exchange: &str, write: &str, read: &str) -> TopicPermissionConfig {
    TopicPermissionConfig {
        vhost: vhost.to_string(),
        exchange: exchange.to_string(),
        write: write.to_string(),
        read: read.to_string(),
    }
}
