//! Exchanges: their declaration, their bindings, and the per-type routing tables built from them.
//!
//! Each exchange keeps its own routing table behind its own read-write lock: publishes on different
//! exchanges never touch a shared lock, and publishes on one exchange only share a read lock. Bindings
//! change the table incrementally, so binding 10,000 queues costs 10,000 small updates, not rebuilds.

mod direct;
mod fanout;
mod headers;
mod topic;

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use parking_lot::{Mutex, RwLock};

use crate::queue::Queue;

/// The exchange types this broker implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
}

impl ExchangeKind {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding sends matching messages.
#[derive(Debug, Clone)]
pub enum Destination {
    Queue(Arc<Queue>),
    Exchange(Arc<str>),
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

/// A binding as declared (source is the owning exchange).
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub destination: Destination,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// Declaration properties, compared on redeclare.
#[derive(Debug, Clone)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// The routing table of one exchange, shaped by its type.
#[derive(Debug)]
enum Routes {
    Direct(direct::DirectRoutes),
    Fanout(fanout::FanoutRoutes),
    Topic(topic::TopicTrie),
    Headers(headers::HeadersRoutes),
}

#[derive(Debug)]
pub struct Exchange {
    pub spec: ExchangeSpec,
    /// The `alternate-exchange` argument: where unroutable messages go.
    pub alternate: Option<Arc<str>>,
    /// An `alternate-exchange` from the policy that applies to it (its own argument wins).
    policy_alternate: RwLock<Option<Arc<str>>>,
    /// Bindings in declaration order; the writer side of `routes`.
    bindings: Mutex<Vec<Binding>>,
    routes: RwLock<Routes>,
}

/// Per-message inputs to routing.
pub struct RouteInput<'a> {
    pub routing_key: &'a str,
    /// Decoded message headers, only needed (and only computed) for headers exchanges.
    pub headers: &'a dyn Fn() -> Option<FieldTable>,
    /// The authenticated user on whose behalf the message travels (its publisher).
    pub on_behalf_of: &'a str,
    /// Whether entering the first exchange with this key was already authorised (a publish's own
    /// routing key is checked with a 403 before routing; CC/BCC keys and dead letters are not).
    pub entry_authorised: bool,
}

/// Topic write permission for the hops a publisher does not name itself: an alternate exchange, an
/// exchange-to-exchange binding, a dead-letter exchange, or a CC/BCC key. Routing asks before a message
/// enters a topic exchange that way; a refusal drops that route only (and the guard audits it).
pub trait RouteGuard: Send + Sync + std::fmt::Debug {
    fn may_enter(&self, vhost: &str, on_behalf_of: &str, exchange: &Exchange, key: &str) -> bool;
}

/// Lets every hop through: for benchmarks and unit tests that have no users.
#[derive(Debug)]
pub struct AllowAll;

impl RouteGuard for AllowAll {
    fn may_enter(&self, _: &str, _: &str, _: &Exchange, _: &str) -> bool {
        true
    }
}

impl Exchange {
    pub fn new(spec: ExchangeSpec) -> Arc<Self> {
        let routes = match spec.kind {
            ExchangeKind::Direct => Routes::Direct(Default::default()),
            ExchangeKind::Fanout => Routes::Fanout(Default::default()),
            ExchangeKind::Topic => Routes::Topic(Default::default()),
            ExchangeKind::Headers => Routes::Headers(Default::default()),
        };
        let alternate = spec
            .arguments
            .inner()
            .get("alternate-exchange")
            .and_then(warren_protocol::field::as_text)
            .map(Arc::from);
        Arc::new(Exchange {
            alternate,
            policy_alternate: RwLock::new(None),
            spec,
            bindings: Mutex::new(Vec::new()),
            routes: RwLock::new(routes),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Where messages its bindings do not route go: its `alternate-exchange` argument, else its
    /// policy's (RabbitMQ: the argument wins).
    pub fn alternate(&self) -> Option<Arc<str>> {
        self.alternate
            .clone()
            .or_else(|| self.policy_alternate.read().clone())
    }

    /// The `alternate-exchange` of the policy that applies to it now (None: no policy sets one).
    pub fn set_policy_alternate(&self, alternate: Option<Arc<str>>) {
        *self.policy_alternate.write() = alternate;
    }

    /// Adds a binding; binding twice is a no-op (RabbitMQ bindings are a set). Returns whether it was new.
    pub fn bind(&self, binding: Binding) -> bool {
        let mut bindings = self.bindings.lock();
        if bindings.contains(&binding) {
            return false;
        }
        match &mut *self.routes.write() {
            Routes::Direct(r) => r.add(&binding.routing_key, binding.destination.clone()),
            Routes::Fanout(r) => r.add(binding.destination.clone()),
            Routes::Topic(r) => r.add(&binding.routing_key, binding.destination.clone()),
            Routes::Headers(r) => r.add(&binding.arguments, binding.destination.clone()),
        }
        bindings.push(binding);
        true
    }

    /// Removes a binding; returns whether it existed.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let mut bindings = self.bindings.lock();
        let Some(at) = bindings.iter().position(|b| b == binding) else {
            return false;
        };
        bindings.remove(at);
        self.remove_route(binding);
        true
    }

    fn remove_route(&self, binding: &Binding) {
        match &mut *self.routes.write() {
            Routes::Direct(r) => r.remove(&binding.routing_key, &binding.destination),
            Routes::Fanout(r) => r.remove(&binding.destination),
            Routes::Topic(r) => r.remove(&binding.routing_key, &binding.destination),
            Routes::Headers(r) => r.remove(&binding.arguments, &binding.destination),
        }
    }

    /// Removes every binding to `destination` (its queue or exchange was deleted).
    pub(crate) fn unbind_destination(&self, destination: &Destination) -> Vec<Binding> {
        let mut bindings = self.bindings.lock();
        let (gone, kept): (Vec<_>, Vec<_>) = bindings
            .drain(..)
            .partition(|b| &b.destination == destination);
        *bindings = kept;
        for b in &gone {
            self.remove_route(b);
        }
        gone
    }

    pub(crate) fn has_binding(&self, binding: &Binding) -> bool {
        self.bindings.lock().contains(binding)
    }

    pub fn binding_count(&self) -> usize {
        self.bindings.lock().len()
    }

    /// A copy of the bindings, for listing and for removing an exchange's own bindings when it goes.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.lock().clone()
    }

    /// Appends every destination this exchange's bindings select for the message (may repeat).
    pub fn route(&self, input: &RouteInput<'_>, out: &mut Vec<Destination>) {
        match &*self.routes.read() {
            Routes::Direct(r) => r.route(input.routing_key, out),
            Routes::Fanout(r) => r.route(out),
            Routes::Topic(r) => r.route(input.routing_key, out),
            Routes::Headers(r) => {
                if let Some(headers) = (input.headers)() {
                    r.route(&headers, out)
                } else {
                    r.route(&FieldTable::default(), out)
                }
            }
        }
    }
}
