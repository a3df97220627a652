//! Warren end to end: one test binary, one module per AMQP area. Each test starts its own broker
//! in-process on 127.0.0.1:0 (see the `warren_tests` harness) and talks to it over mutual TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod arguments;
mod audit;
mod basic;
mod channel;
mod cluster_links;
mod cluster_meta;
mod cluster_shards;
mod cluster_topology;
mod confirm;
mod data_dir;
mod dead_letter;
mod errors;
mod exchange;
mod exchanges;
mod flow;
mod fuzz_corpora;
mod handshake;
mod hardening;
mod hostile_tables;
mod identity;
mod limits;
mod paging;
mod password_bridge;
mod permissions;
mod publisher;
mod queue;
mod recovery;
mod revocation;
mod runaway;
mod tls;
mod ttl;
mod tx;
mod upgrade;
