//! A stream on a cluster lives on one node, its home, as a classic queue does (the issue's "a
//! stream lives on one node at first"). Every other node has a copy of the queue without a log:
//! publishes to it are forwarded to the home like a classic queue's, and its consumers read the
//! home's log through [`RemoteStream`] (the broker's cluster/quorum/stream.rs: the node asks the
//! home for the records from an offset, as many as the consumer's credit allows, and waits at
//! the home's tail for more). A stream read elsewhere is the same stream: offsets, the
//! `x-stream-offset` header and where a consumer starts are the home's.
//!
//! This file is the hook the broker implements; stream_read.rs how a record read elsewhere
//! becomes a delivery and how the home's readers wait for an append.

use std::sync::Arc;

use super::consumer::Consumer;
use super::stream::StartAt;
use super::Queue;

/// How a node's copy of a stream another node holds feeds its consumers.
pub trait RemoteStream: Send + Sync + std::fmt::Debug {
    /// `consumer` of copy `queue` reads the stream from `start` on, as its credit allows.
    fn read(&self, queue: &Arc<Queue>, consumer: Arc<Consumer>, start: StartAt);
    /// `consumer` reads no more (cancelled, its channel closed, the queue deleted).
    fn stop(&self, consumer: &Arc<Consumer>);
    /// Consumers of `queue` may take more (credit came back with an ack or a qos change).
    fn wake(&self, queue: &Queue);
}
