//! The broker's counters behind RabbitMQ's Prometheus names: churn (connections, channels,
//! queues), authentication attempts, and the global message counters with the message size
//! histogram. A connection counts its messages in plain fields ([`SessionCounts`]) and adds them
//! here once per input batch, so the publish and delivery paths touch no shared cache line per
//! message.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the message size histogram's buckets (RabbitMQ's `rabbitmq_message_size_bytes`).
pub const SIZE_BUCKETS: [u64; 12] = [
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
];

/// What one connection counted since its last batch.
#[derive(Debug, Default)]
pub struct SessionCounts {
    pub received: u64,
    pub received_confirm: u64,
    pub routed: u64,
    pub unroutable_dropped: u64,
    pub unroutable_returned: u64,
    pub confirmed: u64,
    pub delivered_consume_manual_ack: u64,
    pub delivered_consume_auto_ack: u64,
    pub delivered_get_manual_ack: u64,
    pub delivered_get_auto_ack: u64,
    pub get_empty: u64,
    pub redelivered: u64,
    pub acknowledged: u64,
    /// Messages received per size bucket (the last one: larger than every bound).
    pub sizes: [u64; SIZE_BUCKETS.len() + 1],
    pub size_sum: u64,
    /// Something was counted.
    pub dirty: bool,
}

impl SessionCounts {
    /// A message of `bytes` (body) received from a publisher.
    pub fn received(&mut self, bytes: usize, confirm: bool) {
        self.received += 1;
        self.received_confirm += u64::from(confirm);
        let bytes = bytes as u64;
        let bucket = SIZE_BUCKETS
            .iter()
            .position(|b| bytes <= *b)
            .unwrap_or(SIZE_BUCKETS.len());
        self.sizes[bucket] += 1;
        self.size_sum += bytes;
        self.dirty = true;
    }

    /// A delivery to a consumer (`get`: basic.get) in manual or automatic acknowledgement mode.
    pub fn delivered(&mut self, get: bool, manual_ack: bool, redelivered: bool) {
        match (get, manual_ack) {
            (false, true) => self.delivered_consume_manual_ack += 1,
            (false, false) => self.delivered_consume_auto_ack += 1,
            (true, true) => self.delivered_get_manual_ack += 1,
            (true, false) => self.delivered_get_auto_ack += 1,
        }
        self.redelivered += u64::from(redelivered);
        self.dirty = true;
    }

    pub fn note(&mut self) {
        self.dirty = true;
    }
}

/// The broker's totals.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    pub channels_opened: AtomicU64,
    pub channels_closed: AtomicU64,
    pub queues_declared: AtomicU64,
    pub queues_created: AtomicU64,
    /// Shared with every vhost, which counts its deletions (routing's `Vhost::count_deletions_in`).
    pub queues_deleted: std::sync::Arc<AtomicU64>,
    pub auth_succeeded: AtomicU64,
    pub auth_failed: AtomicU64,
    /// Connections that have published (RabbitMQ's `publishers` gauge counts publishing channels).
    pub publishers: AtomicU64,
    pub received: AtomicU64,
    pub received_confirm: AtomicU64,
    pub routed: AtomicU64,
    pub unroutable_dropped: AtomicU64,
    pub unroutable_returned: AtomicU64,
    pub confirmed: AtomicU64,
    pub delivered_consume_manual_ack: AtomicU64,
    pub delivered_consume_auto_ack: AtomicU64,
    pub delivered_get_manual_ack: AtomicU64,
    pub delivered_get_auto_ack: AtomicU64,
    pub get_empty: AtomicU64,
    pub redelivered: AtomicU64,
    pub acknowledged: AtomicU64,
    pub sizes: [AtomicU64; SIZE_BUCKETS.len() + 1],
    pub size_sum: AtomicU64,
}

impl Counters {
    /// Adds what a connection counted, and clears it.
    pub fn add(&self, c: &mut SessionCounts) {
        if !c.dirty {
            return;
        }
        let pairs = [
            (&self.received, c.received),
            (&self.received_confirm, c.received_confirm),
            (&self.routed, c.routed),
            (&self.unroutable_dropped, c.unroutable_dropped),
            (&self.unroutable_returned, c.unroutable_returned),
            (&self.confirmed, c.confirmed),
            (
                &self.delivered_consume_manual_ack,
                c.delivered_consume_manual_ack,
            ),
            (
                &self.delivered_consume_auto_ack,
                c.delivered_consume_auto_ack,
            ),
            (&self.delivered_get_manual_ack, c.delivered_get_manual_ack),
            (&self.delivered_get_auto_ack, c.delivered_get_auto_ack),
            (&self.get_empty, c.get_empty),
            (&self.redelivered, c.redelivered),
            (&self.acknowledged, c.acknowledged),
            (&self.size_sum, c.size_sum),
        ];
        for (total, n) in pairs {
            if n > 0 {
                total.fetch_add(n, Relaxed);
            }
        }
        for (total, n) in self.sizes.iter().zip(c.sizes) {
            if n > 0 {
                total.fetch_add(n, Relaxed);
            }
        }
        *c = SessionCounts::default();
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_counts_reach_the_totals_once() {
        let totals = Counters::default();
        let mut c = SessionCounts::default();
        c.received(10, true);
        c.received(5000, false);
        c.received(1 << 30, false);
        c.delivered(false, true, true);
        totals.add(&mut c);
        totals.add(&mut c);
        assert_eq!(Counters::get(&totals.received), 3);
        assert_eq!(Counters::get(&totals.received_confirm), 1);
        assert_eq!(Counters::get(&totals.sizes[0]), 1);
        assert_eq!(Counters::get(&totals.sizes[4]), 1);
        assert_eq!(Counters::get(&totals.sizes[SIZE_BUCKETS.len()]), 1);
        assert_eq!(Counters::get(&totals.delivered_consume_manual_ack), 1);
        assert_eq!(Counters::get(&totals.redelivered), 1);
        assert_eq!(Counters::get(&totals.size_sum), 10 + 5000 + (1 << 30));
    }
}
