//! exchange.declare / delete / bind / unbind on a channel.

use amq_protocol::protocol::{exchange, AMQPClass};

use super::Channel;
use crate::connection::session::Session;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Destination, ExchangeKind, ExchangeSpec};
use crate::permissions::{self, Access, Kind};
use warren_protocol::field::as_text;

impl Channel {
    /// exchange.bind/unbind: write on the destination, read on the source, and the topic read
    /// permission on the key when the source is a topic exchange (rabbit_channel:binding_action).
    fn check_exchange_binding(
        &self,
        s: &Session,
        source: &str,
        destination: &str,
        key: &str,
    ) -> AmqpResult<()> {
        permissions::check(s, Access::Write, Kind::Exchange, destination)?;
        if source.is_empty() || destination.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        permissions::check(s, Access::Read, Kind::Exchange, source)?;
        if let Ok(x) = s.vhost.exchange(source) {
            permissions::check_topic(s, Access::Read, &x, key)?;
        }
        Ok(())
    }

    pub(super) fn exchange_method(
        &mut self,
        s: &mut Session,
        method: exchange::AMQPMethod,
    ) -> AmqpResult<()> {
        let id = self.id;
        let reply = |s: &mut Session, nowait: bool, m: exchange::AMQPMethod| {
            if !nowait {
                s.send(id, AMQPClass::Exchange(m));
            }
        };
        match method {
            exchange::AMQPMethod::Declare(d) => {
                let name = d.exchange.as_str();
                if name.is_empty() {
                    return Err(AmqpError::access_refused(
                        "operation not permitted on the default exchange",
                    ));
                }
                if d.passive {
                    permissions::check_any(s, Kind::Exchange, name)?;
                    s.vhost.exchange(name)?;
                } else {
                    // The type is checked before anything else, even for an existing exchange (RabbitMQ).
                    let kind = ExchangeKind::parse(d.kind.as_str()).ok_or_else(|| {
                        AmqpError::precondition(format!(
                            "unknown exchange type '{}'",
                            d.kind.as_str()
                        ))
                    })?;
                    permissions::check(s, Access::Configure, Kind::Exchange, name)?;
                    if let Some(ae) = d
                        .arguments
                        .inner()
                        .get("alternate-exchange")
                        .and_then(as_text)
                    {
                        permissions::check(s, Access::Write, Kind::Exchange, &ae)?;
                        permissions::check(s, Access::Read, Kind::Exchange, name)?;
                    }
                    let again = s.vhost.is_replicated().then(|| d.clone());
                    let spec = ExchangeSpec {
                        name: name.to_string(),
                        kind,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: d.arguments,
                    };
                    match again {
                        Some(again) => {
                            if let Some(command) = s.vhost.plan_declare_exchange(&spec)? {
                                let again = exchange::AMQPMethod::Declare(again);
                                return self.replicate(s, command, AMQPClass::Exchange(again));
                            }
                        }
                        None => {
                            s.vhost.declare_exchange(spec, false)?;
                        }
                    }
                }
                reply(
                    s,
                    d.nowait,
                    exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
                );
            }
            exchange::AMQPMethod::Delete(d) => {
                let name = d.exchange.as_str();
                // The default and amq.* exchanges are refused first (by the vhost), as in RabbitMQ.
                if !name.is_empty() && !name.starts_with("amq.") {
                    permissions::check(s, Access::Configure, Kind::Exchange, name)?;
                }
                if s.vhost.is_replicated() {
                    let plan = s
                        .vhost
                        .plan_delete_exchange(d.exchange.as_str(), d.if_unused)?;
                    if let Some(command) = plan {
                        let again = AMQPClass::Exchange(exchange::AMQPMethod::Delete(d));
                        return self.replicate(s, command, again);
                    }
                } else {
                    s.vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                }
                reply(
                    s,
                    d.nowait,
                    exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}),
                );
            }
            exchange::AMQPMethod::Bind(b) => {
                self.check_exchange_binding(
                    s,
                    b.source.as_str(),
                    b.destination.as_str(),
                    b.routing_key.as_str(),
                )?;
                let destination = Destination::Exchange(b.destination.as_str().into());
                if s.vhost.is_replicated() {
                    let plan = s.vhost.plan_binding(
                        b.source.as_str(),
                        destination,
                        b.routing_key.as_str(),
                        b.arguments.clone(),
                        true,
                    )?;
                    if let Some(command) = plan {
                        let again = AMQPClass::Exchange(exchange::AMQPMethod::Bind(b));
                        return self.replicate(s, command, again);
                    }
                } else {
                    s.vhost.bind(
                        b.source.as_str(),
                        destination,
                        b.routing_key.as_str(),
                        b.arguments,
                    )?;
                }
                reply(
                    s,
                    b.nowait,
                    exchange::AMQPMethod::BindOk(exchange::BindOk {}),
                );
            }
            exchange::AMQPMethod::Unbind(u) => {
                self.check_exchange_binding(
                    s,
                    u.source.as_str(),
                    u.destination.as_str(),
                    u.routing_key.as_str(),
                )?;
                let destination = Destination::Exchange(u.destination.as_str().into());
                if s.vhost.is_replicated() {
                    let plan = s.vhost.plan_binding(
                        u.source.as_str(),
                        destination,
                        u.routing_key.as_str(),
                        u.arguments.clone(),
                        false,
                    )?;
                    if let Some(command) = plan {
                        let again = AMQPClass::Exchange(exchange::AMQPMethod::Unbind(u));
                        return self.replicate(s, command, again);
                    }
                } else {
                    s.vhost.unbind(
                        u.source.as_str(),
                        destination,
                        u.routing_key.as_str(),
                        u.arguments,
                    )?;
                }
                reply(
                    s,
                    u.nowait,
                    exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}),
                );
            }
            _ => return Err(AmqpError::command_invalid("unimplemented method")),
        }
        Ok(())
    }
}
