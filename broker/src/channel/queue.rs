//! queue.declare / bind / unbind / purge / delete on a channel.

use amq_protocol::protocol::{queue, AMQPClass};

use super::Channel;
use crate::connection::session::Session;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::Destination;
use crate::permissions::{self, Access, Kind};
use crate::queue::QueueSpec;
use crate::time::Now;
use warren_protocol::field::{as_text, type_name};

/// A server-generated name: `prefix` and 22 characters of URL-safe base64 over 128 random bits, like
/// RabbitMQ's `rabbit_guid:binary(gen_secure(), Prefix)`.
pub(crate) fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits: u128 = rand::random();
    let mut name = String::with_capacity(prefix.len() + 23);
    name.push_str(prefix);
    name.push('-');
    for i in 0..22 {
        name.push(ALPHABET[((bits >> (i * 6)) & 63) as usize] as char);
    }
    name
}

/// queue.bind/unbind, in rabbit_channel:binding_action's order: write on the queue, the default-exchange
/// refusal, read on the exchange, then the topic read permission on the binding key.
fn check_queue_binding(s: &Session, exchange: &str, queue: &str, key: &str) -> AmqpResult<()> {
    permissions::check(s, Access::Write, Kind::Queue, queue)?;
    if exchange.is_empty() {
        return Err(AmqpError::access_refused(
            "operation not permitted on the default exchange",
        ));
    }
    permissions::check(s, Access::Read, Kind::Exchange, exchange)?;
    if let Ok(x) = s.vhost.exchange(exchange) {
        permissions::check_topic(s, Access::Read, &x, key)?;
    }
    Ok(())
}

impl Channel {
    pub(super) fn queue_method(
        &mut self,
        s: &mut Session,
        method: queue::AMQPMethod,
    ) -> AmqpResult<()> {
        let id = self.id;
        let reply = |s: &mut Session, nowait: bool, m: queue::AMQPMethod| {
            if !nowait {
                s.send(id, AMQPClass::Queue(m));
            }
        };
        match method {
            queue::AMQPMethod::Declare(mut d) => {
                // A server-named declaration that waited for the metadata group runs again with
                // the name generated the first time.
                let rerun_name = self
                    .server_named
                    .take()
                    .filter(|n| !d.passive && n.as_str() == d.queue.as_str());
                let server_named =
                    (d.queue.as_str().is_empty() && !d.passive) || rerun_name.is_some();
                let quorum = d
                    .arguments
                    .inner()
                    .get("x-queue-type")
                    .and_then(as_text)
                    .is_some_and(|t| t == "quorum");
                if server_named && quorum {
                    // rabbit_channel, before any other check: quorum queues have no server-named form.
                    return Err(AmqpError::precondition(
                        "Cannot declare a server-named queue for type rabbit_quorum_queue",
                    ));
                }
                let name = match rerun_name {
                    Some(name) => name,
                    None if server_named => generated_name("amq.gen").into(),
                    None => self.queue_name(d.queue.as_str())?,
                };
                if d.passive {
                    permissions::check_any(s, Kind::Queue, &name)?;
                } else if server_named || !name.starts_with("amq.") {
                    // (A client-chosen amq.* name is refused by the vhost before any permission check.)
                    permissions::check(s, Access::Configure, Kind::Queue, &name)?;
                }
                // A cluster node declares a queue through the metadata group.
                if server_named && s.vhost.is_replicated() {
                    d.queue = name.as_str().into();
                }
                let rerun = d.clone();
                let again = (!d.passive && s.vhost.is_replicated()).then(|| d.clone());
                let spec = QueueSpec {
                    name,
                    durable: d.durable,
                    exclusive_owner: d.exclusive.then_some(s.id),
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                    declared_by: Some(s.publisher.clone()),
                    home: None,
                    shard: None,
                };
                let dead_letter_exchange = spec
                    .arguments
                    .inner()
                    .get("x-dead-letter-exchange")
                    .cloned();
                let dead_letter_key = spec
                    .arguments
                    .inner()
                    .get("x-dead-letter-routing-key")
                    .and_then(as_text);
                let vhost = s.vhost.clone();
                let queue_name = spec.name.clone();
                let session: &Session = s;
                let before_create = || {
                    let Some(dlx) = dead_letter_exchange else {
                        return Ok(());
                    };
                    // rabbit_channel: the DLX must be a string; then read on the queue, write on the DLX.
                    let Some(dlx_name) = as_text(&dlx) else {
                        return Err(AmqpError::precondition(format!(
                            "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{queue_name}' in vhost '{}'",
                            type_name(&dlx),
                            session.vhost.name
                        )));
                    };
                    permissions::check(session, Access::Read, Kind::Queue, &queue_name)?;
                    permissions::check(session, Access::Write, Kind::Exchange, &dlx_name)?;
                    // Beyond RabbitMQ: a fixed dead-letter key is one the declarer chooses for every
                    // message, so it must pass the declarer's topic write permission on the DLX.
                    match &dead_letter_key {
                        Some(key) => {
                            permissions::check_topic_write_by_name(session, &dlx_name, key)
                        }
                        None => Ok(()),
                    }
                };
                let broker = s.broker.clone();
                let stale = |q: &crate::queue::Queue| broker.home_lost(&vhost, q);
                let q = match again {
                    Some(again) => {
                        let name = spec.name.clone();
                        let commands =
                            vhost.plan_declare_queue(spec, server_named, stale, before_create)?;
                        if !commands.is_empty() {
                            crate::metrics::Counters::inc(&s.broker.metrics.queues_created);
                            if server_named {
                                self.server_named = Some(name);
                            }
                            let again = AMQPClass::Queue(queue::AMQPMethod::Declare(again));
                            return self.replicate_all(s, commands, again);
                        }
                        vhost.queue(&name, s.id)?
                    }
                    None => {
                        let declared = vhost.declare_queue(
                            spec,
                            d.passive,
                            server_named,
                            s.id,
                            before_create,
                            Now::read(),
                        )?;
                        if declared.created {
                            crate::metrics::Counters::inc(&s.broker.metrics.queues_created);
                        }
                        declared.queue
                    }
                };
                crate::metrics::Counters::inc(&s.broker.metrics.queues_declared);
                s.broker.check_home(&s.vhost, &q)?;
                // The declare-ok's counts (none to ask another node for without one).
                if !d.nowait {
                    let again = AMQPClass::Queue(queue::AMQPMethod::Declare(rerun));
                    let Some(counts) = self.counts(s, &q, again) else {
                        // A server-named queue runs again under the name it was given.
                        if server_named {
                            self.server_named = Some(q.name().clone());
                        }
                        return Ok(());
                    };
                    let ok = queue::DeclareOk {
                        queue: q.name().as_str().into(),
                        message_count: counts.messages,
                        consumer_count: counts.consumers,
                    };
                    s.send(id, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)));
                }
                self.last_queue = Some(q.name().clone());
            }
            queue::AMQPMethod::Bind(b) => {
                let name = self.queue_name(b.queue.as_str())?;
                check_queue_binding(s, b.exchange.as_str(), &name, b.routing_key.as_str())?;
                // A missing source is reported before a missing queue (rabbit_db_binding).
                if !b.exchange.as_str().is_empty() {
                    s.vhost.exchange(b.exchange.as_str())?;
                }
                let q = s.vhost.queue(&name, s.id)?;
                s.broker.check_home(&s.vhost, &q)?;
                if s.vhost.replicates(&q) {
                    let plan = s.vhost.plan_binding(
                        b.exchange.as_str(),
                        Destination::Queue(q),
                        b.routing_key.as_str(),
                        b.arguments.clone(),
                        true,
                    )?;
                    if let Some(command) = plan {
                        return self.replicate(
                            s,
                            command,
                            AMQPClass::Queue(queue::AMQPMethod::Bind(b)),
                        );
                    }
                } else {
                    s.vhost.bind(
                        b.exchange.as_str(),
                        Destination::Queue(q),
                        b.routing_key.as_str(),
                        b.arguments,
                    )?;
                }
                reply(s, b.nowait, queue::AMQPMethod::BindOk(queue::BindOk {}));
            }
            queue::AMQPMethod::Unbind(u) => {
                let name = self.queue_name(u.queue.as_str())?;
                check_queue_binding(s, u.exchange.as_str(), &name, u.routing_key.as_str())?;
                match s.vhost.find_queue(&name) {
                    Some(q) if s.vhost.replicates(&q) => {
                        let plan = s.vhost.plan_binding(
                            u.exchange.as_str(),
                            Destination::Queue(q),
                            u.routing_key.as_str(),
                            u.arguments.clone(),
                            false,
                        )?;
                        if let Some(command) = plan {
                            let again = AMQPClass::Queue(queue::AMQPMethod::Unbind(u));
                            return self.replicate(s, command, again);
                        }
                    }
                    Some(q) => {
                        s.vhost.unbind(
                            u.exchange.as_str(),
                            Destination::Queue(q),
                            u.routing_key.as_str(),
                            u.arguments,
                        )?;
                    }
                    None => {}
                }
                reply(s, false, queue::AMQPMethod::UnbindOk(queue::UnbindOk {}));
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.queue_name(p.queue.as_str())?;
                permissions::check(s, Access::Read, Kind::Queue, &name)?;
                let q = s.vhost.queue(&name, s.id)?;
                s.broker.check_home(&s.vhost, &q)?;
                let again = AMQPClass::Queue(queue::AMQPMethod::Purge(p.clone()));
                let Some(message_count) = self.purge(s, &q, again)? else {
                    return Ok(());
                };
                reply(
                    s,
                    p.nowait,
                    queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count }),
                );
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(d.queue.as_str())?;
                permissions::check(s, Access::Configure, Kind::Queue, &name)?;
                // (The run after a replicated deletion finds no queue, and what it held waiting.)
                let replicated = match s.vhost.find_queue(&name) {
                    Some(q) => s.vhost.replicates(&q),
                    None => s.vhost.is_replicated() && self.deleted_ready.is_some(),
                };
                let message_count = if replicated {
                    let plan = s
                        .vhost
                        .plan_delete_queue(&name, d.if_unused, d.if_empty, s.id)?;
                    if let Some(command) = plan {
                        crate::metrics::Counters::inc(&s.broker.metrics.queues_deleted);
                        let again = AMQPClass::Queue(queue::AMQPMethod::Delete(d.clone()));
                        // What the queue holds is its holder's to say (asked first when that is
                        // another node; the method runs again with the answer).
                        self.deleted_ready = match s.vhost.find_queue(&name) {
                            Some(q) if !d.nowait => match self.counts(s, &q, again.clone()) {
                                Some(counts) => Some(counts.messages),
                                None => return Ok(()),
                            },
                            _ => None,
                        };
                        return self.replicate(s, command, again);
                    }
                    // The run after the deletion reports what the queue held when it was asked.
                    self.deleted_ready.take().unwrap_or(0)
                } else {
                    // (Counted by the vhost, as every other way a queue goes.)
                    s.vhost
                        .delete_queue(&name, d.if_unused, d.if_empty, s.id, Now::read())?
                };
                reply(
                    s,
                    d.nowait,
                    queue::AMQPMethod::DeleteOk(queue::DeleteOk { message_count }),
                );
            }
            _ => return Err(AmqpError::command_invalid("unimplemented method")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_names_look_like_rabbitmq_ones() {
        let a = super::generated_name("amq.gen");
        let b = super::generated_name("amq.gen");
        assert!(a.starts_with("amq.gen-") && a.len() == 30 && a != b, "{a}");
    }
}
