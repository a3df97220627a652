//! Authorisation with RabbitMQ's semantics: per (user, vhost) configure/write/read patterns checked for
//! each operation, and topic permissions on routing keys for topic exchanges. The user is looked up for
//! every check, so a permission change applies to open connections at once.

use std::sync::Arc;

use crate::access::topic_text;
pub(crate) use crate::access::{Access, Kind};
use crate::audit::Event;
use crate::connection::session::Session;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Exchange, ExchangeKind};
use crate::users::User;

fn current_user(s: &Session) -> AmqpResult<Arc<User>> {
    s.broker.user(&s.user.name).ok_or_else(|| {
        AmqpError::access_refused(format!("user '{}' no longer exists", s.user.name))
    })
}

/// The name permissions see: the default exchange is checked as `amq.default` (rabbit_access_control).
fn resource_name(kind: Kind, name: &str) -> &str {
    match kind {
        Kind::Exchange if name.is_empty() => "amq.default",
        _ => name,
    }
}

fn kind_str(kind: Kind) -> &'static str {
    match kind {
        Kind::Queue => "queue",
        Kind::Exchange => "exchange",
    }
}

fn allowed(user: &User, vhost: &str, access: Access, name: &str) -> bool {
    user.permission(vhost).is_some_and(|p| {
        let re = match access {
            Access::Configure => &p.configure,
            Access::Write => &p.write,
            Access::Read => &p.read,
        };
        re.is_match(name)
    })
}

/// Audits a denial and turns it into the client's 403.
fn denied(s: &Session, user: &User, text: String) -> AmqpError {
    let source = s.peer.to_string();
    s.broker.audit.record(&Event {
        kind: "authorisation",
        action: &text,
        user: &user.name,
        source: &source,
        vhost: Some(&s.vhost.name),
        result: "denied",
        detail: None,
    });
    AmqpError::access_refused(text)
}

/// `ACCESS_REFUSED - write access to exchange 'x' in vhost '/' refused for user 'bob'` unless permitted.
pub(crate) fn check(s: &Session, access: Access, kind: Kind, name: &str) -> AmqpResult<()> {
    // The publish path checks the same exchange again and again: remember the last grant until any
    // user's permissions change (the generation moves).
    let generation = s.broker.users_generation();
    if let Some((g, a, k, n)) = &*s.last_grant.borrow() {
        if *g == generation && *a == access && *k == kind && n == name {
            return Ok(());
        }
    }
    let user = current_user(s)?;
    let resource = resource_name(kind, name);
    if allowed(&user, &s.vhost.name, access, resource) {
        *s.last_grant.borrow_mut() = Some((generation, access, kind, name.to_string()));
        return Ok(());
    }
    let name = resource;
    let text = format!(
        "{} access to {} '{name}' in vhost '{}' refused for user '{}'",
        access.as_str(),
        kind_str(kind),
        s.vhost.name,
        user.name
    );
    Err(denied(s, &user, text))
}

/// A passive declare needs some permission on the resource; the denial names configure access.
pub(crate) fn check_any(s: &Session, kind: Kind, name: &str) -> AmqpResult<()> {
    let user = current_user(s)?;
    let checked = resource_name(kind, name);
    if [Access::Configure, Access::Write, Access::Read]
        .iter()
        .any(|a| allowed(&user, &s.vhost.name, *a, checked))
    {
        return Ok(());
    }
    check(s, Access::Configure, kind, name)
}

/// Topic permissions: on a topic exchange with a topic permission for this user, the routing key must
/// match its write (publish) or read (bind) pattern; without one, everything is allowed (RabbitMQ).
pub(crate) fn check_topic(
    s: &Session,
    access: Access,
    exchange: &Exchange,
    routing_key: &str,
) -> AmqpResult<()> {
    if exchange.spec.kind != ExchangeKind::Topic {
        return Ok(());
    }
    check_topic_named(s, access, exchange.name(), routing_key)
}

/// The topic write check for an exchange named in an argument (a fixed x-dead-letter-routing-key): a
/// topic exchange, or one that does not exist yet, is checked by name; other kinds have no topics.
pub(crate) fn check_topic_write_by_name(
    s: &Session,
    exchange: &str,
    routing_key: &str,
) -> AmqpResult<()> {
    match s.vhost.exchange(exchange) {
        Ok(x) => check_topic(s, Access::Write, &x, routing_key),
        Err(_) => check_topic_named(s, Access::Write, exchange, routing_key),
    }
}

fn check_topic_named(
    s: &Session,
    access: Access,
    exchange: &str,
    routing_key: &str,
) -> AmqpResult<()> {
    let user = current_user(s)?;
    let Some(topic) = user.topic_permission(&s.vhost.name, exchange) else {
        return Ok(());
    };
    let re = if access == Access::Write {
        &topic.write
    } else {
        &topic.read
    };
    if re.is_match(routing_key) {
        return Ok(());
    }
    let text = topic_text(access, routing_key, exchange, &s.vhost.name, &user.name);
    Err(denied(s, &user, text))
}
