//! A cluster node's topology (HA.md §5.2): exchanges (transient ones too), quorum queues and the
//! bindings to quorum queues and between exchanges change through the metadata group, so every node
//! routes the same way and a publish on any node finds the same queues.
//!
//! A change takes three steps. The channel asks for the command it needs, with RabbitMQ's checks
//! and texts (`plan_*`: `None` when it is already so, an error when a check refuses it); it
//! proposes the command and waits until this node has applied it; then it runs the method again,
//! which now finds the change made (or, after a racing change on another node, refuses it with the
//! same 406 a single node gives). Every node applies committed commands with
//! [`Vhost::apply_replicated`], in log order and idempotently: applying a declaration of something
//! that exists, or a deletion of something that does not, changes nothing.
//!
//! A classic queue (and a stream: queue/stream_copy.rs) lives on its home node (the node whose
//! client declared it), as in RabbitMQ:
//! its record, with the home, is every node's, so every node routes to it and refuses a second
//! declaration; the home holds the live queue, and every other node a copy that publishes and
//! dead letters are forwarded through and that its own consumers take from (the broker's
//! cluster/quorum, as for a quorum queue another node hosts). Only the home decides that such a
//! queue is gone (its exclusive owner closed, its last consumer left, `x-expires`); it proposes the
//! deletion like any other change.
//! A snapshot of the metadata group carries [`Vhost::replicated_commands`]; installing one turns
//! this node's replicated topology into it ([`Vhost::reconcile`]).

use std::sync::Arc;

use amq_protocol::types::FieldTable;

use super::{binding_of, stored_binding, Vhost, STANDARD_EXCHANGES};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Destination, ExchangeKind, ExchangeSpec};
use crate::ids::ConnectionId;
use crate::meta::MetaCommand;
use crate::queue::sink::{Journal, MetaProposer};
use crate::queue::stream_copy::RemoteStream;
use crate::queue::{arguments, Queue, QueueSpec};
use crate::resource::check_name;
use crate::time::Now;

/// Whether a binding to `destination` is the metadata group's (the queue's are every node's).
pub fn replicated_destination(destination: &Destination) -> bool {
    match destination {
        Destination::Exchange(_) => true,
        Destination::Queue(q) => q.is_replicated(),
    }
}

/// What a cluster node's vhost needs from its cluster.
#[derive(Debug, Clone)]
pub struct Replication {
    /// This node's id.
    pub node: u64,
    /// This run of the node (random per start): the classic queues it declares carry it.
    pub run: u64,
    /// Where quorum queues journal their messages (the queue shard groups).
    pub quorum: Arc<dyn Journal>,
    /// The journal of this node's copies of classic queues other nodes hold: acks of what their
    /// consumers were handed are settled at the home, dead letters into them are sent there.
    pub copies: Arc<dyn Journal>,
    /// Where changes the vhost decides itself go (deletions of queues it holds).
    pub proposer: Arc<dyn MetaProposer>,
    /// How the consumers of this node's copies of streams other nodes hold read them there.
    pub streams: Arc<dyn RemoteStream>,
}

impl Replication {
    /// Whether `queue` here is a copy of a classic queue another node holds.
    pub fn is_copy(&self, queue: &Queue) -> bool {
        self.is_copy_spec(&queue.spec)
    }

    /// Whether a queue of `spec` is, here, a copy of a classic queue or stream another node holds.
    pub fn is_copy_spec(&self, spec: &QueueSpec) -> bool {
        spec.home.is_some_and(|h| h.node != self.node)
    }
}

impl Vhost {
    /// Makes this vhost a cluster node's: from now on its exchanges and queues are all recorded
    /// and change through the metadata group; see [`Replication`].
    pub fn set_replicated(&self, replication: Replication) {
        let _ = self.replication.set(replication);
    }

    /// Whether `queue`'s record is this cluster's metadata group's (so are the bindings to it).
    pub fn replicates(&self, queue: &Queue) -> bool {
        self.is_replicated() && queue.is_replicated()
    }

    /// Whether `queue` is a copy of a classic queue another cluster node holds.
    pub fn is_copy(&self, queue: &Queue) -> bool {
        self.replication.get().is_some_and(|r| r.is_copy(queue))
    }

    /// A queue this node holds is no longer wanted (its exclusive owner closed, its last consumer
    /// left): a single node's goes now; a cluster's goes through the metadata group, asked by its
    /// home only (a copy's consumers are the home's through their subscription).
    pub fn retire_queue(&self, queue: &Arc<Queue>, now: Now) {
        match self.replication.get() {
            Some(r) if queue.is_replicated() => {
                r.proposer.propose_deletion(&self.name, queue);
                self.count_deletion();
            }
            _ => self.remove_queue(queue, now),
        }
    }

    /// exchange.declare (not passive): the command that creates the exchange, or `None` when an
    /// equivalent one exists.
    pub fn plan_declare_exchange(&self, spec: &ExchangeSpec) -> AmqpResult<Option<MetaCommand>> {
        if spec.name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let _topology = self.topology.lock();
        match self.exchanges.get(&spec.name).map(|x| x.clone()) {
            Some(existing) => self
                .check_exchange_equivalent(&existing, spec)
                .map(|()| None),
            None => {
                check_name("exchange", &spec.name)?;
                Ok(Some(self.declare_exchange_command(spec)))
            }
        }
    }

    /// exchange.delete: the command that deletes the exchange, or `None` when there is none.
    pub fn plan_delete_exchange(
        &self,
        name: &str,
        if_unused: bool,
    ) -> AmqpResult<Option<MetaCommand>> {
        let _topology = self.topology.lock();
        Ok(self
            .check_exchange_delete(name, if_unused)?
            .map(|_| MetaCommand::DeleteExchange {
                vhost: self.name.clone(),
                exchange: name.to_string(),
            }))
    }

    /// queue.bind / exchange.bind (`add`) and their unbinds, for a replicated destination: the
    /// command, or `None` when the binding already is (or already is not).
    pub fn plan_binding(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        add: bool,
    ) -> AmqpResult<Option<MetaCommand>> {
        let binding = binding_of(source, destination, routing_key, arguments)?;
        let _topology = self.topology.lock();
        let vhost = self.name.clone();
        if !add {
            let bound = self.exchanges.get(source).map(|x| x.clone());
            return Ok(bound
                .filter(|x| x.has_binding(&binding))
                .map(|x| MetaCommand::Unbind {
                    vhost,
                    binding: stored_binding(&x, &binding),
                }));
        }
        let exchange = self.check_binding_ends(source, &binding.destination)?;
        Ok(
            (!exchange.has_binding(&binding)).then(|| MetaCommand::Bind {
                vhost,
                binding: stored_binding(&exchange, &binding),
            }),
        )
    }

    /// queue.declare (not passive): the commands that create the queue, or none when an
    /// equivalent one exists; `before_create` runs for a new one as in [`Vhost::declare_queue`]. A
    /// classic queue's home is this node. `stale` says whether an existing classic queue is gone
    /// with its home (a transient one whose home is down): it is replaced by this declaration.
    pub fn plan_declare_queue(
        &self,
        mut spec: QueueSpec,
        server_named: bool,
        stale: impl FnOnce(&Queue) -> bool,
        before_create: impl FnOnce() -> AmqpResult<()>,
    ) -> AmqpResult<Vec<MetaCommand>> {
        if !server_named {
            check_name("queue", &spec.name)?;
        }
        spec.durable &= spec.exclusive_owner.is_none();
        let _topology = self.topology.lock();
        let mut commands = Vec::new();
        if let Some(existing) = self.find_queue(&spec.name) {
            let Some(home) = existing.spec.home.filter(|_| stale(&existing)) else {
                return self
                    .check_queue_equivalent(&existing, &spec)
                    .map(|()| Vec::new());
            };
            commands.push(MetaCommand::RetireQueue {
                vhost: self.name.clone(),
                queue: existing.name().clone(),
                home,
            });
        }
        let args = self.check_new_queue(&spec, before_create)?;
        match self.replication.get() {
            Some(r) if args.quorum => {
                // RabbitMQ's `x-queue-leader-locator` (its `client-local` default: this node) is
                // advisory for shards: a shard this node leads, when it leads one. A policy's
                // `queue-leader-locator` wins over the argument, as in RabbitMQ.
                let locator = self
                    .policy_text(
                        &spec.name,
                        crate::policy::Kind::of_queue(&args),
                        "queue-leader-locator",
                    )
                    .or_else(|| {
                        spec.arguments
                            .inner()
                            .get("x-queue-leader-locator")
                            .and_then(warren_protocol::field::as_text)
                    });
                let record = crate::meta::records::message_queue(&self.name, &spec.name);
                spec.shard = r.quorum.place(&record, locator.as_deref());
            }
            Some(r) => {
                spec.home = Some(crate::meta::QueueHome {
                    node: r.node,
                    run: r.run,
                    durable: spec.durable,
                    owner: spec.exclusive_owner.map(|c| c.0),
                });
            }
            None => {}
        }
        commands.push(self.declare_queue_command(&spec));
        Ok(commands)
    }

    /// queue.delete of a replicated queue: the command, or `None` when there is no such queue.
    pub fn plan_delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: ConnectionId,
    ) -> AmqpResult<Option<MetaCommand>> {
        let _topology = self.topology.lock();
        Ok(self
            .check_queue_delete(name, if_unused, if_empty, connection)?
            .map(|q| MetaCommand::DeleteQueue {
                vhost: self.name.clone(),
                queue: q.name().clone(),
            }))
    }

    /// Applies a committed topology command of the metadata group on this node (idempotent; the
    /// records of what it creates or removes are written as for a local change). An error is a
    /// command this node cannot apply (an unknown exchange type, a binding whose end is missing).
    pub fn apply_replicated(
        self: &Arc<Self>,
        command: &MetaCommand,
        now: Now,
    ) -> Result<(), String> {
        let _topology = self.topology.lock();
        match command {
            MetaCommand::DeclareExchange {
                exchange,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
                ..
            } => {
                if self.exchanges.contains_key(exchange) {
                    return Ok(());
                }
                let kind = ExchangeKind::parse(kind)
                    .ok_or_else(|| format!("unknown exchange type '{kind}'"))?;
                self.create_exchange(ExchangeSpec {
                    name: exchange.clone(),
                    kind,
                    durable: *durable,
                    auto_delete: *auto_delete,
                    internal: *internal,
                    arguments: arguments.clone(),
                });
            }
            MetaCommand::DeleteExchange { exchange, .. } => {
                if !is_standard(exchange) {
                    self.delete_exchange_locked(exchange);
                }
            }
            MetaCommand::DeclareQueue {
                queue,
                auto_delete,
                arguments,
                declared_by,
                home,
                shard,
                ..
            } => {
                if self.queues.contains_key(queue) {
                    return Ok(());
                }
                let spec = self.stored_queue_spec(
                    queue.clone(),
                    *auto_delete,
                    arguments.clone(),
                    declared_by.clone(),
                    *home,
                    *shard,
                );
                let (args, refused) =
                    arguments::parse_stored(&spec.arguments, &self.resource("queue", queue));
                if let Some(e) = refused.first() {
                    return Err(e.text.clone());
                }
                // The home of a stream opens its log; other nodes' copies read it there.
                let stream = self.open_stream(&spec, &args).map_err(|e| e.text)?;
                if let Some(d) = &self.durability {
                    d.meta(command);
                }
                let q = self.new_queue(spec, args, stream, now);
                self.queues.insert(queue.clone(), q);
            }
            MetaCommand::DeleteQueue { queue, .. } => {
                if let Some(q) = self.find_queue(queue) {
                    self.remove_queue_locked(&q, now);
                }
            }
            MetaCommand::RetireQueue { queue, home, .. } => {
                if let Some(q) = self
                    .find_queue(queue)
                    .filter(|q| q.spec.home == Some(*home))
                {
                    self.remove_queue_locked(&q, now);
                }
            }
            MetaCommand::Bind { binding, .. } => {
                let (exchange, binding) = self
                    .resolve_binding(binding)
                    .map_err(|missing| format!("{missing} of the binding does not exist"))?;
                if exchange.bind(binding.clone()) {
                    self.persist_binding(&exchange, &binding, true);
                }
            }
            MetaCommand::Unbind { binding, .. } => {
                if let Ok((exchange, binding)) = self.resolve_binding(binding) {
                    if exchange.unbind(&binding) {
                        self.persist_binding(&exchange, &binding, false);
                        if self.unused_auto_delete(&exchange) {
                            self.delete_exchange_locked(exchange.name());
                        }
                    }
                }
            }
            other => return Err(format!("not a command about topology: {other:?}")),
        }
        Ok(())
    }

    /// The replicated topology as the commands that build it: exchanges (not the standard ones),
    /// queues, then the bindings to them and between exchanges, each list in name order.
    pub fn replicated_commands(&self) -> Vec<MetaCommand> {
        let _topology = self.topology.lock();
        let mut exchanges = self.exchange_list();
        exchanges.sort_by(|a, b| a.name().cmp(b.name()));
        let mut queues = self.queue_list();
        queues.retain(|q| q.is_replicated());
        queues.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out: Vec<MetaCommand> = exchanges
            .iter()
            .filter(|x| !is_standard(x.name()))
            .map(|x| self.declare_exchange_command(&x.spec))
            .collect();
        out.extend(queues.iter().map(|q| self.declare_queue_command(&q.spec)));
        for x in &exchanges {
            for b in x.bindings() {
                if replicated_destination(&b.destination) {
                    out.push(MetaCommand::Bind {
                        vhost: self.name.clone(),
                        binding: stored_binding(x, &b),
                    });
                }
            }
        }
        out
    }

    /// Turns this node's replicated topology into `target` (a snapshot's): what it lacks goes
    /// (bindings, queues, then exchanges), what it misses comes (exchanges, queues, bindings).
    /// Returns what could not be applied.
    pub fn reconcile(self: &Arc<Self>, target: &[MetaCommand], now: Now) -> Vec<String> {
        let current = self.replicated_commands();
        let mut problems = Vec::new();
        let mut removals: Vec<MetaCommand> = current
            .iter()
            .filter(|c| !target.contains(c))
            .filter_map(|c| match c {
                MetaCommand::Bind { vhost, binding } => Some(MetaCommand::Unbind {
                    vhost: vhost.clone(),
                    binding: binding.clone(),
                }),
                MetaCommand::DeclareQueue { vhost, queue, .. } => Some(MetaCommand::DeleteQueue {
                    vhost: vhost.clone(),
                    queue: queue.clone(),
                }),
                MetaCommand::DeclareExchange {
                    vhost, exchange, ..
                } => Some(MetaCommand::DeleteExchange {
                    vhost: vhost.clone(),
                    exchange: exchange.clone(),
                }),
                _ => None,
            })
            .collect();
        removals.sort_by_key(|c| std::cmp::Reverse(c.recovery_rank()));
        let mut additions: Vec<&MetaCommand> =
            target.iter().filter(|c| !current.contains(c)).collect();
        additions.sort_by_key(|c| c.recovery_rank());
        for command in removals.iter().chain(additions) {
            if let Err(e) = self.apply_replicated(command, now) {
                problems.push(e);
            }
        }
        problems
    }
}

fn is_standard(name: &str) -> bool {
    STANDARD_EXCHANGES
        .iter()
        .any(|(standard, _)| *standard == name)
}
