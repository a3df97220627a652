//! The memory alarm: a count of the bytes held by messages (bodies and properties, wherever they are:
//! queues, unacked, in flight) against a high-water mark. Above it, publishing connections are blocked
//! (connection.blocked); below it again, they are released. Counting message bytes, rather than reading
//! the process RSS, makes the alarm clear as soon as messages are consumed, whatever the allocator keeps.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug)]
pub struct MemoryMonitor {
    used: AtomicU64,
    high_watermark: u64,
    alarm: AtomicBool,
    notify: watch::Sender<bool>,
}

impl MemoryMonitor {
    pub fn new(high_watermark: u64) -> Self {
        MemoryMonitor {
            used: AtomicU64::new(0),
            high_watermark,
            alarm: AtomicBool::new(false),
            notify: watch::Sender::new(false),
        }
    }

    /// The threshold from the configuration: an absolute size, or a fraction of the machine's RAM.
    pub fn threshold(fraction: f64, bytes: Option<u64>) -> u64 {
        bytes.unwrap_or_else(|| (total_ram().unwrap_or(1 << 30) as f64 * fraction) as u64)
    }

    pub fn charge(&self, bytes: u64) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if used > self.high_watermark && !self.alarm.load(Ordering::Relaxed) {
            self.set_alarm(true);
        }
    }

    pub fn release(&self, bytes: u64) {
        let used = self
            .used
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        if used <= self.high_watermark && self.alarm.load(Ordering::Relaxed) {
            self.set_alarm(false);
        }
    }

    fn set_alarm(&self, on: bool) {
        if self.alarm.swap(on, Ordering::AcqRel) != on {
            tracing::warn!(
                used = self.used(),
                high_watermark = self.high_watermark,
                alarm = on,
                "memory alarm"
            );
            self.notify.send_replace(on);
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn in_alarm(&self) -> bool {
        self.alarm.load(Ordering::Acquire)
    }

    /// A receiver that sees every change of the alarm.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.notify.subscribe()
    }
}

/// Bytes a message holds, counted while it lives: created with the message, released when its last
/// reference is dropped.
#[derive(Debug)]
pub struct Charge {
    monitor: Arc<MemoryMonitor>,
    bytes: u64,
}

impl Charge {
    pub fn new(monitor: &Arc<MemoryMonitor>, bytes: u64) -> Self {
        monitor.charge(bytes);
        Charge {
            monitor: monitor.clone(),
            bytes,
        }
    }

    /// A charge of `bytes` to the same monitor (for a message derived from this one).
    pub fn sibling(&self, bytes: u64) -> Self {
        Charge::new(&self.monitor, bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.monitor.release(self.bytes);
    }
}

/// MemTotal from /proc/meminfo, in bytes.
fn total_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_rises_above_and_clears_below_the_watermark() {
        let m = MemoryMonitor::new(100);
        let rx = m.subscribe();
        m.charge(60);
        assert!(!m.in_alarm());
        m.charge(60);
        assert!(m.in_alarm() && *rx.borrow());
        m.release(15);
        assert!(
            m.in_alarm(),
            "105 bytes: still above the 90-byte clearing point"
        );
        m.release(15);
        assert!(!m.in_alarm() && !*rx.borrow());
        assert!(MemoryMonitor::threshold(0.4, None) > 0);
        assert_eq!(MemoryMonitor::threshold(0.4, Some(5)), 5);
    }
}
