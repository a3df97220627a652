//! Resource alarms (RabbitMQ's memory and disk alarms). While either is on, connections that publish
//! are blocked (connection.blocked) and consumers keep draining; when both are off again, they are
//! released. The memory alarm counts the bytes held by messages (wherever they are: queues, unacked,
//! in flight) rather than reading the process RSS, so it clears as soon as messages are consumed,
//! whatever the allocator keeps; it clears at 90% of the mark, so a publisher held at the edge is not
//! blocked and released for every message a consumer takes. The disk alarm is set by a monitor that
//! watches the free space of the data directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

use crate::message::memory::MemoryAccount;

#[derive(Debug)]
pub struct Alarms {
    used: AtomicU64,
    high_watermark: u64,
    memory: AtomicBool,
    disk: AtomicBool,
    /// Whether any alarm is on.
    notify: watch::Sender<bool>,
}

impl Alarms {
    pub fn new(high_watermark: u64) -> Self {
        Alarms {
            used: AtomicU64::new(0),
            high_watermark,
            memory: AtomicBool::new(false),
            disk: AtomicBool::new(false),
            notify: watch::Sender::new(false),
        }
    }

    /// The threshold from the configuration: an absolute size, or a fraction of the machine's RAM.
    pub(crate) fn threshold(fraction: f64, bytes: Option<u64>) -> u64 {
        bytes.unwrap_or_else(|| (total_ram().unwrap_or(1 << 30) as f64 * fraction) as u64)
    }

    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    pub fn charge(&self, bytes: u64) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if used > self.high_watermark && !self.memory.load(Ordering::Relaxed) {
            self.set(&self.memory, true, "memory");
        }
    }

    pub fn release(&self, bytes: u64) {
        let used = self
            .used
            .fetch_sub(bytes, Ordering::Relaxed)
            .saturating_sub(bytes);
        if used <= self.high_watermark / 10 * 9 && self.memory.load(Ordering::Relaxed) {
            self.set(&self.memory, false, "memory");
        }
    }

    pub(crate) fn set_disk_alarm(&self, on: bool) {
        self.set(&self.disk, on, "disk");
    }

    fn set(&self, flag: &AtomicBool, on: bool, which: &str) {
        if flag.swap(on, Ordering::AcqRel) != on {
            tracing::warn!(
                alarm = which,
                on,
                memory_used = self.used(),
                high_watermark = self.high_watermark,
                "resource alarm"
            );
            let any = self.in_alarm();
            self.notify
                .send_if_modified(|state| std::mem::replace(state, any) != any);
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn memory_alarm(&self) -> bool {
        self.memory.load(Ordering::Acquire)
    }

    pub fn disk_alarm(&self) -> bool {
        self.disk.load(Ordering::Acquire)
    }

    pub fn in_alarm(&self) -> bool {
        self.memory.load(Ordering::Acquire) || self.disk.load(Ordering::Acquire)
    }

    /// The reason given in connection.blocked (RabbitMQ's texts).
    pub fn reason(&self) -> &'static str {
        if self.disk.load(Ordering::Acquire) {
            "low on disk"
        } else {
            "low on memory"
        }
    }

    /// A receiver that sees every change of "any alarm on".
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.notify.subscribe()
    }
}

/// Free bytes available to the broker on the file system holding `path`.
pub(crate) fn free_disk(path: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Watches the data directory's free space every `every`, raising the disk alarm below `limit`.
/// Stops when the alarms are dropped.
pub(crate) fn spawn_disk_monitor(alarms: &Arc<Alarms>, dir: PathBuf, limit: u64, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<Alarms> = Arc::downgrade(alarms);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(alarms) = weak.upgrade() else { return };
            if let Some(free) = free_disk(&dir) {
                alarms.set_disk_alarm(free < limit);
            }
        }
    });
}

/// The memory alarm counts what messages hold.
impl MemoryAccount for Alarms {
    fn charge(&self, bytes: u64) {
        Alarms::charge(self, bytes);
    }

    fn release(&self, bytes: u64) {
        Alarms::release(self, bytes);
    }

    fn used(&self) -> u64 {
        Alarms::used(self)
    }

    fn high_watermark(&self) -> u64 {
        Alarms::high_watermark(self)
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
        let m = Alarms::new(100);
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
        assert!(Alarms::threshold(0.4, None) > 0);
        assert_eq!(Alarms::threshold(0.4, Some(5)), 5);
    }
}
