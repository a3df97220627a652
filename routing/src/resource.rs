//! Naming a queue or exchange in a reply text as RabbitMQ does ("queue 'q' in vhost '/'"), and the
//! checks whose 406/403 texts name one: redeclare equivalence and the reserved `amq.` prefix. Used by
//! the vhost and by argument validation, which must not depend on each other for a message text.

use std::fmt;

use crate::error::{AmqpError, AmqpResult};

/// "queue 'q' in vhost '/'": RabbitMQ's `rabbit_misc:rs/1` rendering of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource<'a> {
    /// "queue" or "exchange".
    pub kind: &'static str,
    pub name: &'a str,
    pub vhost: &'a str,
}

impl<'a> Resource<'a> {
    pub fn queue(name: &'a str, vhost: &'a str) -> Self {
        Resource {
            kind: "queue",
            name,
            vhost,
        }
    }
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}' in vhost '{}'", self.kind, self.name, self.vhost)
    }
}

/// RabbitMQ's `assert_field_equivalence`: a redeclare must repeat the original value.
pub(crate) fn ensure_same<T: PartialEq + fmt::Display>(
    field: &str,
    resource: Resource<'_>,
    received: T,
    current: T,
) -> AmqpResult<()> {
    if received == current {
        Ok(())
    } else {
        Err(inequivalent(field, resource, received, current))
    }
}

fn inequivalent(
    field: &str,
    resource: Resource<'_>,
    received: impl fmt::Display,
    current: impl fmt::Display,
) -> AmqpError {
    AmqpError::precondition(format!("inequivalent arg '{field}' for {resource}: received '{received}' but current is '{current}'"))
}

/// RabbitMQ reserves the `amq.` prefix for broker-defined objects (`rabbit_channel:check_name`).
pub fn check_name(kind: &str, name: &str) -> AmqpResult<()> {
    if name.starts_with("amq.") {
        return Err(AmqpError::access_refused(format!(
            "{kind} name '{name}' contains reserved prefix 'amq.*'"
        )));
    }
    Ok(())
}
