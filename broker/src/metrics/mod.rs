//! The Prometheus endpoint (issue 15): `/metrics` and `/metrics/per-object` in the text exposition
//! format with rabbitmq_prometheus's names, on a listener of its own (never the AMQP one), so
//! Grafana's RabbitMQ dashboards and RabbitMQ's alert rules work against Warren. Values are read
//! when Prometheus asks (scrape.rs) from counters the broker keeps anyway or adds cheaply
//! (counters.rs: a connection adds its message counts once per input batch).

pub mod counters;
mod family;
pub mod http;
pub mod process;
pub mod scrape;

pub use counters::{Counters, SessionCounts};
