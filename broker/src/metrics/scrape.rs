//! What a scrape returns, under rabbitmq_prometheus's names and labels (RabbitMQ 3.13's core,
//! global and alarm collectors, and 4.x's message size histogram), so Grafana's RabbitMQ-Overview
//! dashboard and RabbitMQ's alert rules find their series: `/metrics` aggregates the queue
//! metrics over every queue, `/metrics/per-object` has them per queue with `vhost` and `queue`
//! labels. A queue's ready count is read from its lock-free counters; only its consumers'
//! unacknowledged counts take its lock, one queue at a time, for a few reads.

use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::MetricFamily;

use super::counters::{Counters, SIZE_BUCKETS};
use super::family::Family;
use crate::broker::Broker;

const PROTOCOL: (&str, &str) = ("protocol", "amqp091");

/// The text exposition of the broker's metrics.
pub fn render(broker: &Broker, per_object: bool) -> String {
    let mut families = Vec::new();
    identity(broker, &mut families);
    objects(broker, &mut families);
    queues(broker, per_object, &mut families);
    global(&broker.metrics, &mut families);
    process(broker, &mut families);
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_else(|e| format!("# the metrics could not be encoded: {e}\n"))
}

/// The node's name as the metrics label it (`rabbitmq_node`): its cluster name, else warren@host.
pub fn node_name(broker: &Broker) -> String {
    if let Some(name) = broker
        .cluster()
        .and_then(|c| c.links.config().me().map(|p| p.name.clone()))
    {
        return name;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("warren@{host}")
}

fn identity(broker: &Broker, out: &mut Vec<MetricFamily>) {
    let node = node_name(broker);
    let cluster = broker
        .config
        .cluster
        .as_ref()
        .map_or_else(|| node.clone(), |c| c.cluster_name.clone());
    let permanent = format!("warren-cluster-{cluster}");
    out.push(
        Family::gauge("identity_info", "RabbitMQ node & cluster identity info")
            .with(
                &[
                    ("rabbitmq_node", &node),
                    ("rabbitmq_cluster", &cluster),
                    ("rabbitmq_cluster_permanent_id", &permanent),
                ],
                1.0,
            )
            .done(),
    );
    out.push(
        Family::gauge("build_info", "RabbitMQ & Erlang/OTP version info")
            .with(
                &[
                    ("rabbitmq_version", crate::RABBITMQ_COMPAT),
                    ("prometheus_plugin_version", crate::RABBITMQ_COMPAT),
                    ("prometheus_client_version", "0.14"),
                    ("erlang_version", "none (Warren)"),
                    ("warren_version", env!("CARGO_PKG_VERSION")),
                ],
                1.0,
            )
            .done(),
    );
}

fn objects(broker: &Broker, out: &mut Vec<MetricFamily>) {
    let m = &broker.metrics;
    let get = Counters::get;
    let (mut queues, mut consumers) = (0u64, 0u64);
    for vhost in broker.vhosts.iter() {
        for q in vhost.queue_list() {
            queues += 1;
            consumers += u64::from(q.consumer_count());
        }
    }
    let channels = get(&m.channels_opened).saturating_sub(get(&m.channels_closed));
    let gauges = [
        (
            "connections",
            "Connections currently open",
            broker.connections.len() as u64,
        ),
        ("channels", "Channels currently open", channels),
        ("queues", "Queues available", queues),
        ("consumers", "Consumers currently connected", consumers),
    ];
    for (name, help, v) in gauges {
        out.push(Family::gauge(name, help).with(&[], v as f64).done());
    }
    out.push(
        Family::gauge("global_consumers", "Current number of consumers")
            .with(&[PROTOCOL], consumers as f64)
            .done(),
    );
    let counters = [
        (
            "connections_opened_total",
            "Total number of connections opened",
            &m.connections_opened,
        ),
        (
            "connections_closed_total",
            "Total number of connections closed or terminated",
            &m.connections_closed,
        ),
        (
            "channels_opened_total",
            "Total number of channels opened",
            &m.channels_opened,
        ),
        (
            "channels_closed_total",
            "Total number of channels closed",
            &m.channels_closed,
        ),
        (
            "queues_declared_total",
            "Total number of queues declared",
            &m.queues_declared,
        ),
        (
            "queues_created_total",
            "Total number of queues created",
            &m.queues_created,
        ),
        (
            "queues_deleted_total",
            "Total number of queues deleted",
            &m.queues_deleted,
        ),
    ];
    for (name, help, c) in counters {
        out.push(Family::counter(name, help).with(&[], get(c) as f64).done());
    }
}

fn queues(broker: &Broker, per_object: bool, out: &mut Vec<MetricFamily>) {
    let names = [
        (
            "queue_messages_ready",
            "Messages ready to be delivered to consumers",
        ),
        (
            "queue_messages_unacked",
            "Messages delivered to consumers but not yet acknowledged",
        ),
        (
            "queue_messages",
            "Sum of ready and unacknowledged messages - total queue depth",
        ),
        (
            "queue_messages_bytes",
            "Size in bytes of ready and unacknowledged messages",
        ),
        ("queue_consumers", "Consumers on a queue"),
    ];
    let mut families: Vec<Family> = names.iter().map(|(n, h)| Family::gauge(n, h)).collect();
    let mut totals = [0u64; 5];
    for vhost in broker.vhosts.iter() {
        for q in vhost.queue_list() {
            let ready = match q.stream() {
                Some(s) => s.len(),
                None => q.flow().backlog(),
            };
            let unacked = q.unacknowledged();
            let values = [
                ready,
                unacked,
                ready + unacked,
                q.ready_bytes(),
                u64::from(q.consumer_count()),
            ];
            if per_object {
                let labels = [("vhost", vhost.name.as_str()), ("queue", q.name().as_str())];
                for (f, v) in families.iter_mut().zip(values) {
                    f.push(&labels, v as f64);
                }
            }
            for (t, v) in totals.iter_mut().zip(values) {
                *t += v;
            }
        }
    }
    for (mut f, total) in families.into_iter().zip(totals) {
        if !per_object {
            f.push(&[], total as f64);
        }
        out.push(f.done());
    }
}

fn global(m: &Counters, out: &mut Vec<MetricFamily>) {
    let get = Counters::get;
    let plain = [
        ("global_messages_received_total", "Total number of messages received from publishers", &m.received),
        ("global_messages_received_confirm_total", "Total number of messages received from publishers expecting confirmations", &m.received_confirm),
        ("global_messages_routed_total", "Total number of messages routed to queues or streams", &m.routed),
        ("global_messages_unroutable_dropped_total", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", &m.unroutable_dropped),
        ("global_messages_unroutable_returned_total", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", &m.unroutable_returned),
        ("global_messages_confirmed_total", "Total number of messages confirmed to publishers", &m.confirmed),
        ("global_messages_delivered_consume_manual_ack_total", "Total number of messages consumed using basic.consume with manual acknowledgment", &m.delivered_consume_manual_ack),
        ("global_messages_delivered_consume_auto_ack_total", "Total number of messages consumed using basic.consume with automatic acknowledgment", &m.delivered_consume_auto_ack),
        ("global_messages_delivered_get_manual_ack_total", "Total number of messages consumed using basic.get with manual acknowledgment", &m.delivered_get_manual_ack),
        ("global_messages_delivered_get_auto_ack_total", "Total number of messages consumed using basic.get with automatic acknowledgment", &m.delivered_get_auto_ack),
        ("global_messages_get_empty_total", "Total number of times basic.get operations fetched no message", &m.get_empty),
        ("global_messages_redelivered_total", "Total number of messages redelivered to consumers", &m.redelivered),
        ("global_messages_acknowledged_total", "Total number of messages acknowledged by consumers", &m.acknowledged),
    ];
    for (name, help, c) in plain {
        out.push(
            Family::counter(name, help)
                .with(&[PROTOCOL], get(c) as f64)
                .done(),
        );
    }
    let delivered = [
        &m.delivered_consume_manual_ack,
        &m.delivered_consume_auto_ack,
        &m.delivered_get_manual_ack,
        &m.delivered_get_auto_ack,
    ]
    .iter()
    .map(|c| get(c))
    .sum::<u64>();
    out.push(
        Family::counter(
            "global_messages_delivered_total",
            "Total number of messages delivered to consumers",
        )
        .with(&[PROTOCOL], delivered as f64)
        .done(),
    );
    out.push(
        Family::gauge("global_publishers", "Current number of publishers")
            .with(&[PROTOCOL], get(&m.publishers) as f64)
            .done(),
    );
    let counts: Vec<u64> = m.sizes.iter().map(|c| c.load(Relaxed)).collect();
    let mut size = Family::histogram(
        "message_size_bytes",
        "Size of messages received from publishers",
    );
    size.push_histogram(&[PROTOCOL], &SIZE_BUCKETS, &counts, get(&m.size_sum));
    out.push(size.done());
}

fn process(broker: &Broker, out: &mut Vec<MetricFamily>) {
    let m = &broker.metrics;
    let get = Counters::get;
    let (auth_ok, auth_failed) = (get(&m.auth_succeeded), get(&m.auth_failed));
    let auth = [
        (
            "auth_attempts_total",
            "Total number of authentication attempts",
            auth_ok + auth_failed,
        ),
        (
            "auth_attempts_succeeded_total",
            "Total number of successful authentication attempts",
            auth_ok,
        ),
        (
            "auth_attempts_failed_total",
            "Total number of failed authentication attempts",
            auth_failed,
        ),
    ];
    for (name, help, v) in auth {
        out.push(
            Family::counter(name, help)
                .with(&[PROTOCOL], v as f64)
                .done(),
        );
    }
    let rss = super::process::resident_bytes().unwrap_or(0);
    let (open_fds, max_fds) = super::process::fds();
    let disk_free = crate::alarms::free_disk(&broker.config.data_dir).unwrap_or(0);
    let gauges = [
        ("process_resident_memory_bytes", "Memory used in bytes", rss),
        (
            "resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            broker.alarms.high_watermark(),
        ),
        ("process_open_fds", "Open file descriptors", open_fds),
        ("process_max_fds", "Open file descriptors limit", max_fds),
        (
            "disk_space_available_bytes",
            "Disk space available in bytes",
            disk_free,
        ),
        (
            "disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            broker.disk_free_limit,
        ),
        (
            "alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            u64::from(broker.alarms.memory_alarm()),
        ),
        (
            "alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            u64::from(broker.alarms.disk_alarm()),
        ),
        (
            "alarms_file_descriptor_limit",
            "is 1 if file descriptor limit alarm is in effect",
            0,
        ),
        (
            "erlang_uptime_seconds",
            "Node uptime",
            broker.started.elapsed().as_secs(),
        ),
    ];
    for (name, help, v) in gauges {
        out.push(Family::gauge(name, help).with(&[], v as f64).done());
    }
}
