//! A frame-level AMQP 0-9-1 client over TLS, for the end-to-end tests (tests/src/raw/) and the load
//! benchmark (benches/load/). Both need what an application library hides — exact frames and their
//! order, hand-built methods, batched writes — so they share one connection, one negotiation, one set
//! of method builders and one frame-to-event assembler instead of keeping two that drift apart.
//!
//! Crate rule: it may use warren-protocol (framing), amq-protocol (method types), tokio and rustls,
//! and never warren-broker, warren-routing or warren-storage: it speaks the wire format the broker
//! speaks without sharing any of its state machines, so it can check the broker and drive RabbitMQ.
//! Errors are values ([`Error`]); the tests' panicking facade and the benchmark's anyhow wrappers
//! live with their users.

pub mod assemble;
pub mod conn;
pub mod encode;
pub mod error;
pub mod methods;
pub mod tls;
pub mod tuning;

pub use assemble::{Assembler, Delivery, Event};
pub use conn::{fill, frame_method, Conn, Reader, Writer};
pub use encode::{encode_ack, encode_publish, Props, NO_PROPERTIES};
pub use error::{Closed, Error, Result};
pub use tls::{client_config, tcp_connect, ClientCert, Endpoint, Stream};
pub use tuning::{start_ok, Handshake, Tuning};
