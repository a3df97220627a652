//! A stream queue's arguments (`x-queue-type: stream`), validated as RabbitMQ 3.10 does: the
//! validators of the arguments a stream supports, in `rabbit_amqqueue:declare_args/0` order, then
//! the first argument of another queue type (in the client's table order) refused with the type's
//! module name, as `rabbit_amqqueue:check_arguments_key/4` words it.

use amq_protocol::types::FieldTable;

use super::{cluster_size, invalid, leader_locator, non_negative, text_arg, QueueArguments};
use crate::error::{AmqpError, AmqpResult};
use crate::queue::stream::max_age_ms;
use crate::resource::Resource;

/// The largest `x-stream-max-segment-size-bytes` (RabbitMQ's `?MAX_STREAM_MAX_SEGMENT_SIZE`).
pub const MAX_SEGMENT_BYTES: u64 = 3_000_000_000;

/// Arguments of the other queue types (rabbit_queue_type's classic and quorum capabilities that
/// rabbit_stream_queue lacks).
const NOT_STREAM: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-max-length",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-master-locator",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
];

pub(super) fn parse(args: &FieldTable, resource: &Resource<'_>) -> AmqpResult<QueueArguments> {
    let get = |k: &str| args.inner().get(k);
    let mut out = QueueArguments {
        stream: true,
        ..QueueArguments::default()
    };
    if let Some(v) = get("x-max-length-bytes") {
        out.max_length_bytes = Some(non_negative("x-max-length-bytes", v, resource)?);
    }
    if let Some(v) = get("x-max-age") {
        let text = text_arg("x-max-age", v, resource)?;
        out.max_age_ms = Some(
            max_age_ms(&text).ok_or_else(|| invalid("x-max-age", resource, "invalid_max_age"))?,
        );
    }
    if let Some(v) = get("x-stream-max-segment-size-bytes") {
        out.stream_max_segment_bytes = Some(non_negative(
            "x-stream-max-segment-size-bytes",
            v,
            resource,
        )?);
    }
    cluster_size(args, "x-initial-cluster-size", resource)?;
    leader_locator(args, resource)?;
    if let Some((key, _)) = args
        .inner()
        .iter()
        .find(|(k, _)| NOT_STREAM.contains(&k.as_str()))
    {
        return Err(AmqpError::precondition(format!(
            "invalid arg '{key}' for {resource} of queue type rabbit_stream_queue"
        )));
    }
    Ok(out)
}

/// What `rabbit_stream_queue:declare` checks after the properties: the segment size's ceiling.
pub fn check_declare(args: &QueueArguments) -> AmqpResult<()> {
    match args.stream_max_segment_bytes {
        Some(n) if n > MAX_SEGMENT_BYTES => Err(AmqpError::precondition(
            "Exceeded max value for x-stream-max-segment-size-bytes",
        )),
        _ => Ok(()),
    }
}
