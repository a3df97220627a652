//! Harness for Warren's end-to-end tests: the real broker served in-process on `127.0.0.1:0` with a
//! fresh dev PKI ([`TestBroker`]), an amqprs client over mutual TLS ([`client`]) for what applications
//! see, a raw frame client ([`raw`], a panicking facade over warren-wire-client) for protocol-level
//! checks (frame order, exact bytes, errors), and the admin API ([`admin`]: JSON on the admin socket,
//! or the real `brokerctl`).
//!
//! Every wait is bounded by [`TIMEOUT`], so a broker that hangs fails a test instead of stalling the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod broker;
pub mod certs;
pub mod client;
pub mod cluster;
pub mod features;
pub mod raw;
pub mod users;

use std::future::Future;
use std::time::Duration;

pub use admin::{Admin, CtlOutput};
pub use broker::TestBroker;
pub use client::{ChannelEvent, Client, CloseInfo, Consumer, Delivery, TestChannel};
pub use raw::{Identity, RawClient, Tuning};

/// The longest any test waits for a single answer from the broker.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test watches for something that must NOT happen (an extra delivery, a second frame).
pub const QUIET: Duration = Duration::from_millis(300);

/// Bounds any future by [`TIMEOUT`]: `channel.queue_declare(args).timely().await`.
pub trait Timely: Future + Sized {
    fn timely(self) -> impl Future<Output = Self::Output> {
        async move {
            match tokio::time::timeout(TIMEOUT, self).await {
                Ok(out) => out,
                Err(_) => panic!("the broker did not answer within {TIMEOUT:?}"),
            }
        }
    }
}

impl<F: Future> Timely for F {}
