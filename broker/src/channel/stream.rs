//! What basic.consume, basic.get, basic.nack and basic.reject mean for a stream queue: RabbitMQ
//! 3.10's rules (`rabbit_amqqueue:check_consume_arguments`, `rabbit_stream_queue:consume/3`,
//! `dequeue/4` and `settle/4`) with their reply codes and texts. The stream itself is
//! routing/src/queue/stream.rs.

use amq_protocol::types::FieldTable;

use crate::error::{AmqpError, AmqpResult};
use crate::queue::stream::StartAt;
use crate::queue::Queue;
use crate::resource::Resource;

/// The consumer argument that says where a stream consumer starts.
const OFFSET_ARGUMENT: &str = "x-stream-offset";
/// Consumer arguments of other queue types that a stream refuses.
const NOT_STREAM: &[&str] = &["x-priority", "x-cancel-on-ha-failover"];

/// What basic.consume asks of a queue's type: for a stream, where its consumer starts (after
/// checking its arguments, its prefetch and its acknowledgement mode); None for other queues
/// (which refuse `x-stream-offset`).
pub(super) fn consume_start(
    queue: &Queue,
    vhost: &str,
    args: &FieldTable,
    no_ack: bool,
    prefetch: u32,
    global_prefetch: u32,
) -> AmqpResult<Option<StartAt>> {
    let name = queue.name().as_str();
    let res = Resource::queue(name, vhost);
    if !queue.args.stream {
        if args.inner().contains_key(OFFSET_ARGUMENT) {
            let kind = if queue.args.quorum {
                "rabbit_quorum_queue"
            } else {
                "rabbit_classic_queue"
            };
            return Err(AmqpError::precondition(format!(
                "invalid arg '{OFFSET_ARGUMENT}' for {res} of queue type {kind}"
            )));
        }
        return Ok(None);
    }
    let now_ms = crate::time::Now::read().wall_ms as i64;
    let start = StartAt::parse(args.inner().get(OFFSET_ARGUMENT), now_ms).map_err(|term| {
        AmqpError::precondition(format!("invalid arg '{OFFSET_ARGUMENT}' for {res}: {term}"))
    })?;
    if let Some((key, _)) = args
        .inner()
        .iter()
        .find(|(k, _)| NOT_STREAM.contains(&k.as_str()))
    {
        return Err(AmqpError::precondition(format!(
            "invalid arg '{key}' for {res} of queue type rabbit_stream_queue"
        )));
    }
    if prefetch == 0 {
        return Err(AmqpError::precondition(format!(
            "consumer prefetch count is not set for '{res}'"
        )));
    }
    if no_ack {
        return Err(AmqpError::not_implemented(format!(
            "automatic acknowledgement not supported by stream queues {res}"
        )));
    }
    if global_prefetch > 0 {
        return Err(AmqpError::not_implemented(format!(
            "{res} does not support global qos"
        )));
    }
    Ok(Some(start))
}

/// basic.get: a stream has no head to take.
pub(super) fn refuse_get(queue: &Queue, vhost: &str) -> AmqpResult<()> {
    match queue.args.stream {
        true => Err(AmqpError::not_implemented(format!(
            "basic.get not supported by stream queues {}",
            Resource::queue(queue.name().as_str(), vhost)
        ))),
        false => Ok(()),
    }
}

/// basic.nack and basic.reject: nothing leaves a stream, so nothing can be put back or rejected.
pub(super) fn refuse_return<'a>(
    mut queues: impl Iterator<Item = &'a Queue>,
    vhost: &str,
) -> AmqpResult<()> {
    match queues.find(|q| q.args.stream) {
        Some(q) => Err(AmqpError::not_implemented(format!(
            "basic.nack and basic.reject not supported by stream queues {}",
            Resource::queue(q.name().as_str(), vhost)
        ))),
        None => Ok(()),
    }
}
