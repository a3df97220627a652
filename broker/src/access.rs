//! What a permission check is about (the access and the kind of resource) and RabbitMQ's denial text
//! for topics: shared by the per-operation checks (permissions.rs, which need a connection's
//! session) and the routing guard (topic_guard.rs, which must not).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Configure,
    Write,
    Read,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// What a resource is, for the check and for the denial text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Queue,
    Exchange,
}

/// RabbitMQ's text for a refused topic access (rabbit_access_control).
pub(crate) fn topic_text(
    access: Access,
    key: &str,
    exchange: &str,
    vhost: &str,
    user: &str,
) -> String {
    format!(
        "{} access to topic '{key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'",
        access.as_str(),
    )
}
