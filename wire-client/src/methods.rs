//! Method builders: the common methods as one-liners (anything rarer is an amq-protocol struct
//! literal at the call site). Every flag not named is false and every table empty, as a client
//! library sends them by default.

use amq_protocol::protocol::{basic, channel, confirm, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};

pub fn channel_open() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))
}

pub fn channel_close() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

/// queue.declare options.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueOpts<'a> {
    pub name: &'a str,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
}

impl QueueOpts<'_> {
    pub fn declare(&self) -> AMQPClass {
        self.declare_with(FieldTable::default())
    }

    pub fn declare_with(&self, arguments: FieldTable) -> AMQPClass {
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: self.name.into(),
            passive: self.passive,
            durable: self.durable,
            exclusive: self.exclusive,
            auto_delete: self.auto_delete,
            nowait: false,
            arguments,
        }))
    }
}

/// The options of a plain declare of `name`.
pub fn queue_opts(name: &str) -> QueueOpts<'_> {
    QueueOpts {
        name,
        ..QueueOpts::default()
    }
}

pub fn queue_declare(name: &str) -> AMQPClass {
    queue_opts(name).declare()
}

/// queue.declare with arguments (`passive` for a passive declare).
pub fn queue_declare_with(name: &str, passive: bool, arguments: FieldTable) -> AMQPClass {
    QueueOpts {
        passive,
        ..queue_opts(name)
    }
    .declare_with(arguments)
}

pub fn queue_bind(queue: &str, exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }))
}

pub fn queue_unbind(queue: &str, exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }))
}

pub fn queue_purge(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
        queue: name.into(),
        nowait: false,
    }))
}

pub fn queue_delete(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: name.into(),
        ..Default::default()
    }))
}

pub fn exchange_declare(name: &str, kind: &str) -> AMQPClass {
    exchange_declare_with(name, kind, false, FieldTable::default())
}

/// exchange.declare with arguments (`passive` for a passive declare).
pub fn exchange_declare_with(
    name: &str,
    kind: &str,
    passive: bool,
    arguments: FieldTable,
) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
        exchange: name.into(),
        kind: kind.into(),
        passive,
        arguments,
        ..Default::default()
    }))
}

pub fn exchange_delete(name: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
        exchange: name.into(),
        ..Default::default()
    }))
}

/// exchange.bind `destination` to `source`.
pub fn exchange_bind(destination: &str, source: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
        destination: destination.into(),
        source: source.into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }))
}

pub fn exchange_unbind(destination: &str, source: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
        destination: destination.into(),
        source: source.into(),
        routing_key: routing_key.into(),
        ..Default::default()
    }))
}

/// A field table with one long-string entry (`x-dead-letter-exchange`, `alternate-exchange`, ...).
pub fn text_argument(key: &str, value: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(key.into(), AMQPValue::LongString(value.into()));
    table
}

/// basic.qos with a per-consumer prefetch count.
pub fn basic_qos(prefetch_count: u16) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
        prefetch_count,
        global: false,
    }))
}

pub fn basic_consume(queue: &str, tag: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: queue.into(),
        consumer_tag: tag.into(),
        no_ack,
        ..Default::default()
    }))
}

pub fn basic_publish(exchange: &str, routing_key: &str, mandatory: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory,
        immediate: false,
    }))
}

pub fn basic_get(queue: &str, no_ack: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
        queue: queue.into(),
        no_ack,
    }))
}

pub fn basic_ack(delivery_tag: u64, multiple: bool) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
        delivery_tag,
        multiple,
    }))
}

pub fn confirm_select() -> AMQPClass {
    AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
        nowait: false,
    }))
}
