//! The users' topic write permissions as routing asks them, for hops the publisher did not name
//! (alternate exchange, exchange-to-exchange binding, dead-letter exchange, CC/BCC keys). Held by every
//! vhost as its [`RouteGuard`]; knows users and the audit log, not connections.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::access::{topic_text, Access};
use crate::audit::{AuditLog, Event};
use crate::exchange::{Exchange, RouteGuard};
use crate::users::User;

/// The users' topic write permissions, asked by routing for hops the publisher did not name (see
/// [`RouteGuard`]). A refused hop is audited; the message still takes its other routes.
pub(crate) struct TopicGuard {
    pub users: Arc<RwLock<HashMap<String, Arc<User>>>>,
    pub audit: Arc<AuditLog>,
}

impl std::fmt::Debug for TopicGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopicGuard")
    }
}

impl RouteGuard for TopicGuard {
    fn may_enter(&self, vhost: &str, on_behalf_of: &str, exchange: &Exchange, key: &str) -> bool {
        // Messages stored before Warren recorded publishers have no identity to check.
        if on_behalf_of.is_empty() {
            return true;
        }
        let user = self.users.read().get(on_behalf_of).cloned();
        let allowed = match &user {
            // A deleted user keeps no rights: its messages do not enter a topic exchange this way.
            None => false,
            Some(u) => u
                .topic_permission(vhost, exchange.name())
                .is_none_or(|t| t.write.is_match(key)),
        };
        if !allowed {
            let text = topic_text(Access::Write, key, exchange.name(), vhost, on_behalf_of);
            self.audit.record_limited(on_behalf_of, &Event {
                kind: "authorisation",
                action: &text,
                user: on_behalf_of,
                source: "routing",
                vhost: Some(vhost),
                result: "denied",
                detail: Some("route dropped (alternate exchange, exchange binding, dead-letter or CC/BCC hop)"),
            });
        }
        allowed
    }
}
