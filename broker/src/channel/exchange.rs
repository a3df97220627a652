//! exchange.declare / delete / bind / unbind on a channel.

use amq_protocol::protocol::{exchange, AMQPClass};

use super::Channel;
use crate::connection::session::Session;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Destination, ExchangeKind, ExchangeSpec};

impl Channel {
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
                    s.vhost.exchange(name)?;
                } else {
                    // The type is checked before anything else, even for an existing exchange (RabbitMQ).
                    let kind = ExchangeKind::parse(d.kind.as_str()).ok_or_else(|| {
                        AmqpError::precondition(format!(
                            "unknown exchange type '{}'",
                            d.kind.as_str()
                        ))
                    })?;
                    let spec = ExchangeSpec {
                        name: name.to_string(),
                        kind,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: d.arguments,
                    };
                    s.vhost.declare_exchange(spec, false)?;
                }
                reply(
                    s,
                    d.nowait,
                    exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}),
                );
            }
            exchange::AMQPMethod::Delete(d) => {
                s.vhost.delete_exchange(d.exchange.as_str(), d.if_unused)?;
                reply(
                    s,
                    d.nowait,
                    exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}),
                );
            }
            exchange::AMQPMethod::Bind(b) => {
                let destination = Destination::Exchange(b.destination.as_str().into());
                s.vhost.bind(
                    b.source.as_str(),
                    destination,
                    b.routing_key.as_str(),
                    b.arguments,
                )?;
                reply(
                    s,
                    b.nowait,
                    exchange::AMQPMethod::BindOk(exchange::BindOk {}),
                );
            }
            exchange::AMQPMethod::Unbind(u) => {
                let destination = Destination::Exchange(u.destination.as_str().into());
                s.vhost.unbind(
                    u.source.as_str(),
                    destination,
                    u.routing_key.as_str(),
                    u.arguments,
                )?;
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
