//! A virtual host: its exchanges and queues, and the topology operations with RabbitMQ's checks and texts.
//!
//! Exchanges and queues live in sharded maps read without a vhost-wide lock on the publish path. Topology
//! changes (declare, delete, bind) take the vhost's `topology` mutex so that check-then-act sequences
//! (exclusivity, if-unused, "bind needs both ends") are atomic; publishes never take it.

mod dead_letter;
mod replicated;

pub use replicated::Replication;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use dashmap::DashMap;
use parking_lot::Mutex;

use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{
    Binding, Destination, Exchange, ExchangeKind, ExchangeSpec, RouteGuard, RouteInput,
};
use crate::ids::{ConnectionId, QueueName, VhostName};
use crate::meta::{records, DestinationKind, MetaCommand, StoredBinding};
use crate::persist::Durability;
use crate::policy::{self, Policy};
use crate::queue::dead_letter::DeadLetters;
use crate::queue::paging::Paging;
use crate::queue::sink::{Journal, QueueOwner, QueueTimers};
use crate::queue::stream::{StreamQueue, Streams};
use crate::queue::{arguments, Queue, QueueSpec};
use crate::resource::{check_name, ensure_same, Resource};
use crate::time::Now;
use warren_protocol::content::BasicProperties;
use warren_storage::log::record::Record;
use warren_storage::stream::Retention;

/// The pre-declared exchanges of every vhost (RabbitMQ's `amq.*` set, minus the deprecated rabbitmq ones).
const STANDARD_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

#[derive(Debug)]
pub struct Vhost {
    pub name: VhostName,
    /// The command log, where durable definitions and persistent messages go.
    durability: Option<Arc<Durability>>,
    /// Where queues page their backlog past their memory budget (None: all in memory).
    paging: Option<Arc<Paging>>,
    /// Where stream queues keep their logs (None: streams cannot be declared).
    streams: Option<Arc<Streams>>,
    /// Its policies and operator policies, compiled (policy.rs).
    policies: parking_lot::RwLock<policy::InForce>,
    limits: VhostLimits,
    connections: AtomicU32,
    /// Queues this node deleted (rabbitmq_queues_deleted_total): on a single node every deletion
    /// (queue.delete, x-expires, auto-delete, an exclusive owner gone, the vhost deleted); on a
    /// cluster node the expiries and auto-deletions it proposed (the channel counts queue.delete).
    /// (The broker's counter, shared: a deleted vhost's deletions stay counted.)
    queues_deleted: std::sync::OnceLock<Arc<std::sync::atomic::AtomicU64>>,
    exchanges: DashMap<String, Arc<Exchange>>,
    queues: DashMap<QueueName, Arc<Queue>>,
    topology: Mutex<()>,
    /// Topic write permission for hops into topic exchanges the publisher did not name.
    guard: Arc<dyn RouteGuard>,
    /// Wakes its queues for TTL and x-expires.
    timers: Arc<dyn QueueTimers>,
    /// Set on a cluster node: exchanges, queues and the bindings between them change through the
    /// metadata group (replicated.rs), so every exchange is recorded, transient ones too.
    replication: std::sync::OnceLock<replicated::Replication>,
}

/// Per-vhost limits (RabbitMQ's vhost limits `max-queues` and `max-connections`).
#[derive(Debug, Clone, Copy, Default)]
pub struct VhostLimits {
    pub max_queues: Option<u32>,
    pub max_connections: Option<u32>,
}

/// A connection counted into a vhost; dropping it counts the connection out.
#[derive(Debug)]
pub struct VhostConnection(Arc<Vhost>);

impl Drop for VhostConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Outcome of queue.declare.
pub struct DeclaredQueue {
    pub queue: Arc<Queue>,
    pub created: bool,
}

impl Vhost {
    pub fn new(
        name: &str,
        limits: VhostLimits,
        durability: Option<Arc<Durability>>,
        paging: Option<Arc<Paging>>,
        streams: Option<Arc<Streams>>,
        guard: Arc<dyn RouteGuard>,
        timers: Arc<dyn QueueTimers>,
    ) -> Arc<Self> {
        let vhost = Vhost {
            guard,
            timers,
            name: name.into(),
            durability,
            paging,
            streams,
            policies: Default::default(),
            limits,
            connections: AtomicU32::new(0),
            queues_deleted: Default::default(),
            exchanges: DashMap::new(),
            queues: DashMap::new(),
            topology: Mutex::new(()),
            replication: std::sync::OnceLock::new(),
        };
        for (name, kind) in STANDARD_EXCHANGES {
            let spec = ExchangeSpec {
                name: (*name).to_string(),
                kind: *kind,
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            };
            vhost
                .exchanges
                .insert((*name).to_string(), Exchange::new(spec));
        }
        Arc::new(vhost)
    }

    /// Applies a metadata command read back from the log (nothing is written): recovery's half of
    /// the one apply of exchanges, queues and bindings (the live half validates first, then writes
    /// the command and makes the same change). The log holds only declarations: a deletion is the
    /// removal of its object's record (meta/records.rs), so it never comes back to be applied.
    pub fn restore(self: &Arc<Self>, command: MetaCommand, now: Now) {
        match command {
            MetaCommand::DeclareExchange {
                exchange,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
                ..
            } => self.restore_exchange(exchange, &kind, durable, auto_delete, internal, arguments),
            MetaCommand::DeclareQueue {
                queue,
                auto_delete,
                arguments,
                declared_by,
                home,
                shard,
                ..
            } => {
                let spec =
                    self.stored_queue_spec(queue, auto_delete, arguments, declared_by, home, shard);
                self.restore_queue(spec, now)
            }
            MetaCommand::Bind { binding, .. } => self.restore_binding(binding),
            other => {
                tracing::error!(command = ?other, "not a declaration of an exchange, queue or binding: nothing restored")
            }
        }
    }

    /// Re-creates a durable exchange. An exchange of a kind this version does not know is left in
    /// the log, untouched, and reported.
    fn restore_exchange(
        &self,
        name: String,
        kind: &str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) {
        let Some(kind) = ExchangeKind::parse(kind) else {
            tracing::error!(
                exchange = ?name,
                vhost = ?self.name,
                kind = ?kind,
                "a stored exchange has a kind this version does not know: it is not restored (its record stays in the log)"
            );
            return;
        };
        let spec = ExchangeSpec {
            name: name.clone(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
        };
        let exchange = Exchange::new(spec);
        self.apply_exchange_policy(&exchange);
        self.exchanges.insert(name, exchange);
    }

    /// Re-creates a durable queue. Arguments that today's validation refuses are reported and not
    /// acted on, but the queue keeps them as stored (a redeclare compares against them) and keeps
    /// its messages.
    fn restore_queue(self: &Arc<Self>, spec: QueueSpec, now: Now) {
        let (args, refused) =
            arguments::parse_stored(&spec.arguments, &self.resource("queue", &spec.name));
        for e in refused {
            tracing::error!(
                queue = %spec.name,
                vhost = %self.name,
                refusal = %e.text,
                "a stored queue has an argument this version refuses: the queue and its messages are kept, the argument is not applied"
            );
        }
        let stream = match self.open_stream(&spec, &args) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::error!(
                    queue = %spec.name,
                    vhost = %self.name,
                    error = %e.text,
                    "a stored stream queue cannot be opened: it is not restored (its record and files stay)"
                );
                return;
            }
        };
        let name = spec.name.clone();
        let queue = self.new_queue(spec, args, stream, now);
        self.queues.insert(name, queue);
    }

    /// The log of stream queue `spec` (None for other queues), opened or created.
    pub(crate) fn open_stream(
        &self,
        spec: &QueueSpec,
        args: &arguments::QueueArguments,
    ) -> AmqpResult<Option<StreamQueue>> {
        let copy = self.replication.get().is_some_and(|r| r.is_copy_spec(spec));
        if !args.stream || copy {
            return Ok(None);
        }
        let Some(streams) = &self.streams else {
            return Err(AmqpError::internal(format!(
                "cannot declare {}: this broker has no directory for streams",
                self.resource("queue", &spec.name)
            )));
        };
        let args = self.applied_for(&spec.name, args).args;
        let retention = Retention {
            max_age_ms: args.max_age_ms,
            max_bytes: args.max_length_bytes,
        };
        streams
            .open(
                &self.name,
                &spec.name,
                args.stream_max_segment_bytes,
                retention,
            )
            .map(Some)
            .map_err(|e| {
                AmqpError::internal(format!(
                    "cannot declare {}: its stream files: {e}",
                    self.resource("queue", &spec.name)
                ))
            })
    }

    /// A queue of this vhost: stored messages go to the log when it is durable, and its backlog
    /// pages to spill files past its budget.
    fn new_queue(
        self: &Arc<Self>,
        spec: QueueSpec,
        args: arguments::QueueArguments,
        stream: Option<StreamQueue>,
        now: Now,
    ) -> Arc<Queue> {
        let name = records::message_queue(&self.name, &spec.name);
        let durability = match (&self.durability, self.replication.get()) {
            (_, Some(r)) if args.quorum => {
                if let Some(shard) = spec.shard {
                    r.quorum.placed(&name, shard);
                }
                Some((r.quorum.clone(), name))
            }
            // A copy of a classic queue another node holds: what its consumers were handed came
            // from there, and their acks go there.
            (_, Some(r)) if r.is_copy_spec(&spec) => Some((r.copies.clone(), name)),
            (Some(d), _) if spec.durable => {
                let journal: Arc<dyn Journal> = d.clone();
                Some((journal, name))
            }
            _ => None,
        };
        let remote_stream = match self.replication.get() {
            Some(r) if args.stream && r.is_copy_spec(&spec) => Some(r.streams.clone()),
            _ => None,
        };
        let owner: Arc<dyn QueueOwner> = self.clone();
        let applied = self.applied_for(&spec.name, &args);
        let queue = Queue::new(
            Arc::downgrade(&owner),
            spec,
            args,
            crate::queue::Storage {
                durability,
                paging: self.paging.clone(),
                stream,
                remote_stream,
            },
            self.timers.clone(),
            now,
        );
        queue.apply_policies(applied, now);
        queue
    }

    /// The text value of `key` in the policy that applies to `name` of `kind`.
    pub(crate) fn policy_text(&self, name: &str, kind: policy::Kind, key: &str) -> Option<String> {
        let in_force = self.policies.read().clone();
        policy::select(&in_force.policies, name, kind)
            .and_then(|p| p.def.definition.get(key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }

    /// What the policies in force make of queue `name`'s own arguments `args`.
    fn applied_for(&self, name: &str, args: &arguments::QueueArguments) -> crate::queue::Applied {
        let in_force = self.policies.read().clone();
        let kind = policy::Kind::of_queue(args);
        let p = policy::select(&in_force.policies, name, kind);
        let op = policy::select(&in_force.operator, name, kind);
        crate::queue::Applied {
            policy: p.map(|p| p.def.name.clone()),
            operator_policy: op.map(|p| p.def.name.clone()),
            args: Arc::new(policy::effective(
                args,
                p.map(|p| &p.def),
                op.map(|p| &p.def),
            )),
        }
    }

    /// Puts this vhost's policies of `defs` in force and applies them to every queue (RabbitMQ
    /// re-applies policies to existing queues whenever they change).
    pub fn set_policies(&self, defs: &warren_storage::definitions::Definitions, now: Now) {
        let compile = |operator: bool| -> Arc<Vec<Policy>> {
            Arc::new(
                defs.policies_of(operator)
                    .iter()
                    .filter(|p| p.vhost == *self.name)
                    .filter_map(|p| {
                        let compiled = Policy::new(p.clone());
                        if compiled.is_none() {
                            tracing::error!(vhost = %self.name, policy = %p.name, "a stored policy's pattern does not compile: it is not applied");
                        }
                        if p.definition.keys().any(|k| policy::is_mirroring_key(k)) {
                            tracing::warn!(vhost = %self.name, policy = %p.name, "the policy's ha-* keys are ignored: Warren has no classic queue mirroring (use quorum queues)");
                        }
                        compiled
                    })
                    .collect(),
            )
        };
        let next = policy::InForce {
            policies: compile(false),
            operator: compile(true),
        };
        {
            let mut current = self.policies.write();
            let same = |a: &[Policy], b: &[Policy]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.def == y.def)
            };
            if same(&current.policies, &next.policies) && same(&current.operator, &next.operator) {
                return;
            }
            *current = next;
        }
        for queue in self.queue_list() {
            let applied = self.applied_for(queue.name(), &queue.args);
            queue.apply_policies(applied, now);
        }
        for exchange in self.exchange_list() {
            self.apply_exchange_policy(&exchange);
        }
    }

    /// Gives `exchange` the `alternate-exchange` of the policy that applies to it, if any.
    fn apply_exchange_policy(&self, exchange: &Exchange) {
        let alternate = self
            .policy_text(
                exchange.name(),
                policy::Kind::Exchange,
                "alternate-exchange",
            )
            .map(Arc::from);
        exchange.set_policy_alternate(alternate);
    }

    /// Re-creates a binding between durable objects.
    fn restore_binding(&self, binding: StoredBinding) {
        match self.resolve_binding(&binding) {
            Ok((x, b)) => {
                x.bind(b);
            }
            Err(missing) => tracing::error!(
                source = ?binding.source,
                destination = ?binding.destination,
                vhost = ?self.name,
                missing,
                "a stored binding is not restored: one of its ends was not (its record stays in the log)"
            ),
        }
    }

    /// The source exchange and the live binding a stored one names, or which end is missing.
    fn resolve_binding(
        &self,
        stored: &StoredBinding,
    ) -> Result<(Arc<Exchange>, Binding), &'static str> {
        let destination = match stored.kind {
            DestinationKind::Queue => match self.find_queue(&stored.destination) {
                Some(q) => Destination::Queue(q),
                None => return Err("the queue"),
            },
            DestinationKind::Exchange => Destination::Exchange(stored.destination.as_str().into()),
        };
        let exchange = self
            .exchanges
            .get(&stored.source)
            .map(|x| x.clone())
            .ok_or("the source exchange")?;
        let binding = Binding {
            destination,
            routing_key: stored.routing_key.clone(),
            arguments: stored.arguments.clone(),
        };
        Ok((exchange, binding))
    }

    /// Counts a connection into the vhost, refusing it over `max_connections` (530, RabbitMQ's text).
    pub fn open_connection(self: &Arc<Self>, user: &str) -> AmqpResult<VhostConnection> {
        let max = self.limits.max_connections;
        let admitted = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                max.is_none_or(|max| n < max).then_some(n + 1)
            });
        match admitted {
            Ok(_) => Ok(VhostConnection(self.clone())),
            Err(_) => Err(AmqpError::not_allowed(format!(
                "access to vhost '{}' refused for user '{user}': connection limit ({}) is reached",
                self.name,
                max.unwrap_or_default()
            ))),
        }
    }

    fn resource<'a>(&'a self, kind: &'static str, name: &'a str) -> Resource<'a> {
        Resource {
            kind,
            name,
            vhost: &self.name,
        }
    }

    pub(crate) fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no {}", self.resource("exchange", name)))
    }

    /// RabbitMQ's 404 for a durable queue whose home node is down (`rabbit_amqqueue:absent/2`).
    pub fn home_down(&self, name: &str, node: &str) -> AmqpError {
        AmqpError::not_found(format!(
            "home node '{node}' of durable {} is down or inaccessible",
            self.resource("queue", name)
        ))
    }

    pub fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no {}", self.resource("queue", name)))
    }

    pub fn exchange(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.exchanges
            .get(name)
            .map(|e| e.clone())
            .ok_or_else(|| self.no_exchange(name))
    }

    pub fn find_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.get(name).map(|q| q.clone())
    }

    /// Looks a queue up for use by `connection`, enforcing exclusivity (405 RESOURCE_LOCKED).
    pub fn queue(&self, name: &str, connection: ConnectionId) -> AmqpResult<Arc<Queue>> {
        let queue = self.find_queue(name).ok_or_else(|| self.no_queue(name))?;
        self.check_exclusive(&queue, Some(connection), false)?;
        Ok(queue)
    }

    /// RabbitMQ's `check_exclusive_access`: another connection's exclusive queue is locked; in strict mode
    /// (redeclare) a different exclusivity is too.
    fn check_exclusive(
        &self,
        queue: &Queue,
        owner: Option<ConnectionId>,
        strict: bool,
    ) -> AmqpResult<()> {
        let locked = match (queue.spec.exclusive_owner, owner) {
            (Some(existing), Some(requester)) => existing != requester,
            (Some(_), None) => true,
            (None, Some(_)) => strict,
            (None, None) => false,
        };
        if locked {
            return Err(AmqpError::resource_locked(format!(
                "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                self.resource("queue", queue.name())
            )));
        }
        Ok(())
    }

    pub fn declare_exchange(&self, spec: ExchangeSpec, passive: bool) -> AmqpResult<Arc<Exchange>> {
        if passive {
            return self.exchange(&spec.name);
        }
        if spec.name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        let _topology = self.topology.lock();
        let existing = match self.exchanges.get(&spec.name) {
            Some(found) => found.clone(),
            None => {
                check_name("exchange", &spec.name)?;
                return Ok(self.create_exchange(spec));
            }
        };
        self.check_exchange_equivalent(&existing, &spec)?;
        Ok(existing)
    }

    /// Makes a new exchange, with its record when it is one.
    fn create_exchange(&self, spec: ExchangeSpec) -> Arc<Exchange> {
        let exchange = Exchange::new(spec);
        self.apply_exchange_policy(&exchange);
        if let (Some(d), true) = (&self.durability, self.records_exchange(&exchange.spec)) {
            d.meta(&self.declare_exchange_command(&exchange.spec));
        }
        self.exchanges
            .insert(exchange.name().to_string(), exchange.clone());
        exchange
    }

    /// Whether an exchange has a record in the log: a durable one, and every one of a cluster node.
    fn records_exchange(&self, spec: &ExchangeSpec) -> bool {
        spec.durable || self.is_replicated()
    }

    /// Whether this is a cluster node's vhost (replicated.rs).
    pub fn is_replicated(&self) -> bool {
        self.replication.get().is_some()
    }

    /// A redeclare of an exchange must match it (406 otherwise).
    fn check_exchange_equivalent(
        &self,
        existing: &Exchange,
        spec: &ExchangeSpec,
    ) -> AmqpResult<()> {
        let current = &existing.spec;
        let res = || self.resource("exchange", &spec.name);
        ensure_same("type", res(), spec.kind.as_str(), current.kind.as_str())?;
        ensure_same("durable", res(), spec.durable, current.durable)?;
        ensure_same("auto_delete", res(), spec.auto_delete, current.auto_delete)?;
        ensure_same("internal", res(), spec.internal, current.internal)?;
        // Only alternate-exchange is compared among exchange arguments (rabbit_exchange).
        arguments::check_keys_equivalent(
            &["alternate-exchange"],
            &spec.arguments,
            &current.arguments,
            &res(),
        )
    }

    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        let _topology = self.topology.lock();
        if self.check_exchange_delete(name, if_unused)?.is_some() {
            self.delete_exchange_locked(name);
        }
        Ok(())
    }

    /// exchange.delete's checks; the exchange if it exists (deleting one that does not succeeds).
    fn check_exchange_delete(
        &self,
        name: &str,
        if_unused: bool,
    ) -> AmqpResult<Option<Arc<Exchange>>> {
        if name.is_empty() {
            return Err(AmqpError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        // Deleting an exchange that does not exist succeeds (rabbit_channel: exchange.delete is idempotent).
        let Some(exchange) = self.exchanges.get(name).map(|e| e.clone()) else {
            return Ok(None);
        };
        // "In use" means bound as a source (rabbit_binding:has_for_source).
        if if_unused && exchange.binding_count() > 0 {
            return Err(AmqpError::precondition(format!(
                "{} in use",
                self.resource("exchange", name)
            )));
        }
        Ok(Some(exchange))
    }

    fn delete_exchange_locked(&self, name: &str) {
        if let Some((_, exchange)) = self.exchanges.remove(name) {
            for b in exchange.bindings() {
                self.persist_binding(&exchange, &b, false);
            }
            if let (Some(d), true) = (&self.durability, self.records_exchange(&exchange.spec)) {
                d.meta(&MetaCommand::DeleteExchange {
                    vhost: self.name.clone(),
                    exchange: name.to_string(),
                });
            }
        }
        self.remove_bindings_to(&Destination::Exchange(name.into()));
    }

    /// Records a binding between recorded objects in the log (or its removal).
    fn persist_binding(&self, source: &Exchange, binding: &Binding, add: bool) {
        let Some(d) = &self.durability else { return };
        let recorded = match &binding.destination {
            Destination::Queue(q) => q.spec.durable,
            Destination::Exchange(x) => self
                .exchanges
                .get(x.as_ref())
                .is_none_or(|e| self.records_exchange(&e.spec)),
        };
        if !(self.records_exchange(&source.spec) && recorded) {
            return;
        }
        let vhost = self.name.clone();
        let binding = stored_binding(source, binding);
        d.meta(&if add {
            MetaCommand::Bind { vhost, binding }
        } else {
            MetaCommand::Unbind { vhost, binding }
        });
    }

    /// queue.declare. `server_named` names were generated by the broker and skip the `amq.` check, which
    /// applies to every name a client supplies (even a redeclare of its own `amq.gen-` queue). An
    /// existing queue is only checked for equivalence; a new one runs `before_create`, then has its
    /// arguments validated (RabbitMQ's order).
    pub fn declare_queue(
        self: &Arc<Self>,
        mut spec: QueueSpec,
        passive: bool,
        server_named: bool,
        connection: ConnectionId,
        before_create: impl FnOnce() -> AmqpResult<()>,
        now: Now,
    ) -> AmqpResult<DeclaredQueue> {
        if passive {
            let queue = self.queue(&spec.name, connection)?;
            queue.touch(now);
            return Ok(DeclaredQueue {
                queue,
                created: false,
            });
        }
        if !server_named {
            check_name("queue", &spec.name)?;
        }
        // Exclusive queues are never durable (rabbit_channel stores `durable andalso not exclusive`).
        spec.durable &= spec.exclusive_owner.is_none();
        let _topology = self.topology.lock();
        if let Some(existing) = self.find_queue(&spec.name) {
            self.check_queue_equivalent(&existing, &spec)?;
            existing.touch(now);
            return Ok(DeclaredQueue {
                queue: existing,
                created: false,
            });
        }
        let args = self.check_new_queue(&spec, before_create)?;
        let stream = self.open_stream(&spec, &args)?;
        if let (Some(d), true) = (&self.durability, spec.durable) {
            d.meta(&self.declare_queue_command(&spec));
        }
        let queue = self.new_queue(spec, args, stream, now);
        self.queues.insert(queue.name().clone(), queue.clone());
        Ok(DeclaredQueue {
            queue,
            created: true,
        })
    }

    /// A redeclare must match the queue: exclusivity, durable, auto_delete, arguments (405, 406).
    fn check_queue_equivalent(&self, existing: &Queue, spec: &QueueSpec) -> AmqpResult<()> {
        self.check_exclusive(existing, spec.exclusive_owner, true)?;
        let current = &existing.spec;
        let res = || self.resource("queue", &spec.name);
        ensure_same("durable", res(), spec.durable, current.durable)?;
        ensure_same("auto_delete", res(), spec.auto_delete, current.auto_delete)?;
        arguments::check_equivalent(&spec.arguments, &current.arguments, &res())
    }

    /// The checks of a queue that does not exist yet, in RabbitMQ's order; its parsed arguments.
    fn check_new_queue(
        &self,
        spec: &QueueSpec,
        before_create: impl FnOnce() -> AmqpResult<()>,
    ) -> AmqpResult<arguments::QueueArguments> {
        if let Some(max) = self.limits.max_queues {
            if self.queues.len() >= max as usize {
                return Err(AmqpError::precondition(format!(
                    "cannot declare queue '{}': queue limit in vhost '{}' ({max}) is reached",
                    spec.name, self.name
                )));
            }
        }
        // RabbitMQ's order for a new queue: the limit, the caller's checks (DLX), then validation.
        before_create()?;
        let res = self.resource("queue", &spec.name);
        let args = arguments::parse(&spec.arguments, &res)?;
        if args.quorum || args.stream {
            arguments::check_quorum_properties(
                spec.durable,
                spec.exclusive_owner.is_some(),
                spec.auto_delete,
                &res,
            )?;
        }
        if args.stream {
            arguments::stream::check_declare(&args)?;
        }
        Ok(args)
    }

    /// Deletes a queue with queue.delete's checks; returns the number of ready messages dropped.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: ConnectionId,
        now: Now,
    ) -> AmqpResult<u32> {
        let _topology = self.topology.lock();
        match self.check_queue_delete(name, if_unused, if_empty, connection)? {
            Some(queue) => Ok(self.remove_queue_locked(&queue, now)),
            None => Ok(0),
        }
    }

    /// queue.delete's checks; the queue if it exists (deleting one that does not succeeds).
    fn check_queue_delete(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        connection: ConnectionId,
    ) -> AmqpResult<Option<Arc<Queue>>> {
        let Some(queue) = self.find_queue(name) else {
            return Ok(None);
        };
        self.check_exclusive(&queue, Some(connection), false)?;
        if queue.args.quorum && (if_unused || if_empty) {
            // rabbit_quorum_queue:delete/4: if-unused is looked at first; a connection error.
            let flag = if if_unused { "if-unused" } else { "if-empty" };
            return Err(AmqpError::not_implemented(format!(
                "cannot delete {}. queue.delete operations with {flag} flag set are not supported by quorum queues",
                self.resource("queue", name)
            )));
        }
        // A classic queue checks if-empty before if-unused (rabbit_amqqueue_process).
        if if_empty && queue.message_count() > 0 {
            return Err(AmqpError::precondition(format!(
                "{} not empty",
                self.resource("queue", name)
            )));
        }
        if if_unused && queue.consumer_count() > 0 {
            return Err(AmqpError::precondition(format!(
                "{} in use",
                self.resource("queue", name)
            )));
        }
        Ok(Some(queue))
    }

    /// Deletes a queue without checks (exclusive owner gone, auto-delete), if it is still this one.
    pub fn remove_queue(&self, queue: &Arc<Queue>, now: Now) {
        let _topology = self.topology.lock();
        self.remove_queue_locked(queue, now);
    }

    /// Deletes every queue and exchange of a vhost that is being deleted, with their records, so
    /// nothing of it is restored (or reported as orphaned) at the next start.
    pub fn remove_all(&self, now: Now) {
        let _topology = self.topology.lock();
        for queue in self.queue_list() {
            self.remove_queue_locked(&queue, now);
        }
        let names: Vec<String> = self.exchanges.iter().map(|x| x.key().clone()).collect();
        for name in names {
            if !STANDARD_EXCHANGES
                .iter()
                .any(|(standard, _)| *standard == name)
            {
                self.delete_exchange_locked(&name);
            }
        }
    }

    /// Counts the queues this node deletes in this vhost into `counter` (see the field).
    pub fn count_deletions_in(&self, counter: Arc<std::sync::atomic::AtomicU64>) {
        let _ = self.queues_deleted.set(counter);
    }

    fn count_deletion(&self) {
        if let Some(counter) = self.queues_deleted.get() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn remove_queue_locked(&self, queue: &Arc<Queue>, now: Now) -> u32 {
        let removed = self
            .queues
            .remove_if(queue.name(), |_, q| Arc::ptr_eq(q, queue));
        if removed.is_some() && !self.is_replicated() {
            self.count_deletion();
        }
        if let (Some(r), true) = (
            self.replication.get(),
            queue.args.quorum && removed.is_some(),
        ) {
            r.quorum
                .unplaced(&records::message_queue(&self.name, queue.name()));
        }
        if let (Some(d), true) = (&self.durability, records_queue(&queue.spec)) {
            d.write(
                vec![
                    records::record(&MetaCommand::DeleteQueue {
                        vhost: self.name.clone(),
                        queue: queue.name().clone(),
                    }),
                    Record::DropQueue {
                        queue: records::message_queue(&self.name, queue.name()),
                    },
                ],
                None,
            );
        }
        self.remove_bindings_to(&Destination::Queue(queue.clone()));
        let (count, consumers) = queue.mark_deleted(now);
        for consumer in consumers {
            consumer.sink.cancelled(consumer.clone());
        }
        count
    }

    /// Removes every binding to a deleted queue or exchange; auto-delete exchanges left without
    /// bindings go too (and, in turn, the bindings to them).
    fn remove_bindings_to(&self, destination: &Destination) {
        let mut emptied = Vec::new();
        for exchange in self.exchanges.iter() {
            let gone = exchange.unbind_destination(destination);
            for b in &gone {
                self.persist_binding(&exchange, b, false);
            }
            if !gone.is_empty() && self.unused_auto_delete(&exchange) {
                emptied.push(exchange.name().to_string());
            }
        }
        for name in emptied {
            self.delete_exchange_locked(&name);
        }
    }

    /// An auto-delete exchange without bindings goes. On a cluster node every binding is the
    /// metadata group's (a classic queue's too), applied in the same order on every node, so every
    /// node deletes it at the same point of the log.
    fn unused_auto_delete(&self, exchange: &Exchange) -> bool {
        exchange.spec.auto_delete && exchange.binding_count() == 0
    }
    /// queue.bind / exchange.bind: both ends must exist; the default exchange takes no bindings.
    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        self.binding_action(source, destination, routing_key, arguments, true)
    }

    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        self.binding_action(source, destination, routing_key, arguments, false)
    }

    fn binding_action(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        add: bool,
    ) -> AmqpResult<()> {
        let binding = binding_of(source, destination, routing_key, arguments)?;
        let _topology = self.topology.lock();
        if !add {
            // Unbinding what does not exist, even between missing objects, succeeds (rabbit_db_binding).
            let emptied = self.exchanges.get(source).is_some_and(|x| {
                let removed = x.unbind(&binding);
                if removed {
                    self.persist_binding(&x, &binding, false);
                }
                removed && self.unused_auto_delete(&x)
            });
            if emptied {
                self.delete_exchange_locked(source);
            }
            return Ok(());
        }
        let exchange = self.check_binding_ends(source, &binding.destination)?;
        if exchange.bind(binding.clone()) {
            self.persist_binding(&exchange, &binding, true);
        }
        Ok(())
    }

    /// A new binding needs both ends; the source is reported first when both are missing.
    fn check_binding_ends(
        &self,
        source: &str,
        destination: &Destination,
    ) -> AmqpResult<Arc<Exchange>> {
        let exchange = self.exchange(source)?;
        match destination {
            Destination::Exchange(name) => {
                self.exchange(name)?;
            }
            Destination::Queue(q) if q.is_deleted() => return Err(self.no_queue(q.name())),
            Destination::Queue(_) => {}
        }
        Ok(exchange)
    }

    /// Whether the message may enter topic exchange `x` with its key on its publisher's behalf.
    fn may_enter(&self, x: &Exchange, input: &RouteInput<'_>) -> bool {
        x.spec.kind != ExchangeKind::Topic
            || self
                .guard
                .may_enter(&self.name, input.on_behalf_of, x, input.routing_key)
    }

    /// Routes a message published to `exchange`, following exchange-to-exchange bindings once each, and
    /// returns each matched queue once (a diamond of bindings never delivers twice). Every exchange the
    /// message enters other than by the publisher's own checked key passes the route guard first.
    pub fn route(&self, exchange: &Arc<Exchange>, input: &RouteInput<'_>) -> Vec<Arc<Queue>> {
        let mut queues: Vec<Arc<Queue>> = Vec::new();
        if !input.entry_authorised && !self.may_enter(exchange, input) {
            return queues;
        }
        let mut visited: Vec<Arc<str>> = Vec::new();
        let mut pending: Vec<Arc<Exchange>> = vec![exchange.clone()];
        let mut hits = Vec::new();
        while let Some(x) = pending.pop() {
            hits.clear();
            x.route(input, &mut hits);
            // An exchange whose own bindings match nothing hands the message to its alternate exchange.
            if hits.is_empty() {
                if let Some(ae) = x.alternate() {
                    hits.push(Destination::Exchange(ae));
                }
            }
            for hit in hits.drain(..) {
                match hit {
                    Destination::Queue(q) => {
                        if !queues.iter().any(|seen| Arc::ptr_eq(seen, &q)) {
                            queues.push(q);
                        }
                    }
                    Destination::Exchange(name) => {
                        if name.as_ref() != exchange.name() && !visited.contains(&name) {
                            if let Some(next) = self.exchanges.get(name.as_ref()) {
                                if self.may_enter(&next, input) {
                                    pending.push(next.clone());
                                }
                            }
                            visited.push(name);
                        }
                    }
                }
            }
        }
        queues
    }

    /// Exclusive queues owned by a closing connection.
    pub fn queues_owned_by(&self, connection: ConnectionId) -> Vec<Arc<Queue>> {
        self.queues
            .iter()
            .filter(|q| q.spec.exclusive_owner == Some(connection))
            .map(|q| q.clone())
            .collect()
    }

    pub fn exchange_list(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.iter().map(|e| e.clone()).collect()
    }

    pub fn queue_list(&self) -> Vec<Arc<Queue>> {
        self.queues.iter().map(|q| q.clone()).collect()
    }
}

/// Routes a message under several routing keys (its own plus CC/BCC), each with whether entering the
/// exchange with it is already authorised, and returns each queue once. The default exchange (`None`)
/// routes a key to the queue of that name.
pub fn route_keys<'a>(
    vhost: &Vhost,
    exchange: Option<&Arc<Exchange>>,
    properties: &[u8],
    on_behalf_of: &str,
    keys: impl Iterator<Item = (&'a str, bool)>,
) -> Vec<Arc<Queue>> {
    let mut queues: Vec<Arc<Queue>> = Vec::new();
    let headers = || {
        BasicProperties::parse(properties)
            .ok()
            .and_then(|p| p.headers_table())
    };
    for (key, entry_authorised) in keys {
        let found = match exchange {
            None => vhost.find_queue(key).into_iter().collect(),
            Some(x) => vhost.route(
                x,
                &RouteInput {
                    routing_key: key,
                    headers: &headers,
                    on_behalf_of,
                    entry_authorised,
                },
            ),
        };
        for q in found {
            if !queues.iter().any(|seen| Arc::ptr_eq(seen, &q)) {
                queues.push(q);
            }
        }
    }
    queues
}

/// The binding a bind or unbind names; the default exchange takes none (403, RabbitMQ's text).
fn binding_of(
    source: &str,
    destination: Destination,
    routing_key: &str,
    arguments: FieldTable,
) -> AmqpResult<Binding> {
    if source.is_empty() || matches!(&destination, Destination::Exchange(d) if d.is_empty()) {
        return Err(AmqpError::access_refused(
            "operation not permitted on the default exchange",
        ));
    }
    Ok(Binding {
        destination,
        routing_key: routing_key.to_string(),
        arguments,
    })
}

/// Whether a queue has a record in the log: a durable one, and a cluster's classic queue (the
/// metadata group's, transient or not).
fn records_queue(spec: &QueueSpec) -> bool {
    spec.durable || spec.home.is_some()
}

/// A binding as its command stores it.
fn stored_binding(source: &Exchange, binding: &Binding) -> StoredBinding {
    let (kind, destination) = match &binding.destination {
        Destination::Queue(q) => (DestinationKind::Queue, q.name().to_string()),
        Destination::Exchange(x) => (DestinationKind::Exchange, x.to_string()),
    };
    StoredBinding {
        source: source.name().to_string(),
        kind,
        destination,
        routing_key: binding.routing_key.clone(),
        arguments: binding.arguments.clone(),
    }
}

impl Vhost {
    /// The command that stores an exchange.
    fn declare_exchange_command(&self, spec: &ExchangeSpec) -> MetaCommand {
        MetaCommand::DeclareExchange {
            vhost: self.name.clone(),
            exchange: spec.name.clone(),
            kind: spec.kind.as_str().to_string(),
            durable: spec.durable,
            auto_delete: spec.auto_delete,
            internal: spec.internal,
            arguments: spec.arguments.clone(),
        }
    }

    /// The command that stores a queue.
    fn declare_queue_command(&self, spec: &QueueSpec) -> MetaCommand {
        MetaCommand::DeclareQueue {
            vhost: self.name.clone(),
            queue: spec.name.clone(),
            auto_delete: spec.auto_delete,
            arguments: spec.arguments.clone(),
            declared_by: spec.declared_by.as_deref().map(str::to_string),
            home: spec.home,
            shard: spec.shard,
        }
    }

    /// A queue as its `DeclareQueue` command stores it: durable, unless it is a cluster's classic
    /// queue declared transient; exclusive to its connection on its home node, and to no
    /// connection of another node.
    fn stored_queue_spec(
        &self,
        name: QueueName,
        auto_delete: bool,
        arguments: FieldTable,
        declared_by: Option<String>,
        home: Option<crate::meta::QueueHome>,
        shard: Option<u32>,
    ) -> QueueSpec {
        let here = self.replication.get().map(|r| r.node);
        let exclusive_owner = home.and_then(|h| {
            let owner = h.owner?;
            Some(if here == Some(h.node) {
                ConnectionId(owner)
            } else {
                ConnectionId::ELSEWHERE
            })
        });
        QueueSpec {
            name,
            durable: home.is_none_or(|h| h.durable),
            exclusive_owner,
            auto_delete,
            arguments,
            declared_by: declared_by.map(Arc::from),
            home,
            shard,
        }
    }
}

/// The vhost holds its queues: it republishes their dead letters and deletes them when they expire.
impl QueueOwner for Vhost {
    fn dead_letter(&self, queue: &Arc<Queue>, letters: DeadLetters, now: Now) {
        dead_letter::republish(self, queue, letters, now);
    }

    fn expire(&self, queue: &Arc<Queue>, now: Now) {
        match self.replication.get() {
            // A replicated queue goes through the metadata group, on every node at once, when its
            // host asks (the others do not know whether it is in use). Every node checks again
            // later: the host's proposal may fail, and another node may host it by then.
            Some(r) if queue.is_replicated() => {
                r.proposer.propose_deletion(&self.name, queue);
                self.count_deletion();
                if let Some(ms) = queue.live_args().expires_ms {
                    let after = std::time::Duration::from_millis(ms);
                    let wake = crate::queue::Wake::Expiry(after);
                    self.timers.wake_at(queue, wake, now.instant + after);
                }
            }
            _ => self.remove_queue(queue, now),
        }
    }
}
