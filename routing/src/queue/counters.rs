//! A queue's ready count kept in two atomics beside its lock, so that others read it without
//! taking the lock: per-publisher flow control (flow.rs) asks whether a queue is behind on every
//! publish, and statistics can read it as often as they like.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A queue's message counters, read without its lock: ready = arrived − departed.
#[derive(Debug, Default)]
pub struct ReadyCounters {
    arrived: AtomicU64,
    departed: AtomicU64,
}

impl ReadyCounters {
    pub fn arrive(&self, n: u64) {
        self.arrived.fetch_add(n, Relaxed);
    }

    pub fn depart(&self, n: u64) {
        self.departed.fetch_add(n, Relaxed);
    }

    pub fn departed(&self) -> u64 {
        self.departed.load(Relaxed)
    }

    /// Ready messages (approximate while other threads change the queue).
    pub fn backlog(&self) -> u64 {
        self.arrived.load(Relaxed).saturating_sub(self.departed())
    }
}
