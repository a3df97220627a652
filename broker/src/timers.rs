//! Queue timers on the tokio runtime: a queue asks to be woken at its head message's TTL deadline
//! or for its x-expires check ([`QueueTimers`]); a task sleeps until then and calls
//! `Queue::woken`. The queue holds no task and the sleeping task holds only a weak reference, so a
//! deleted queue is freed at once and its timers end when they wake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::queue::sink::QueueTimers;
use crate::queue::{Queue, Wake};
use crate::time::Now;

/// An x-expires check never polls faster than this (a queue with consumers is checked again).
const EXPIRY_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Default)]
pub struct RuntimeTimers;

impl QueueTimers for RuntimeTimers {
    fn wake_at(&self, queue: &Arc<Queue>, wake: Wake, at: Instant) {
        // Outside a runtime (micro-benchmarks) nothing expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let sleep_until = match wake {
            Wake::Ttl => at,
            Wake::Expiry(_) => at.max(Instant::now() + EXPIRY_POLL),
        };
        let weak = Arc::downgrade(queue);
        runtime.spawn(async move {
            tokio::time::sleep_until(sleep_until.into()).await;
            if let Some(queue) = weak.upgrade() {
                queue.woken(wake, at, Now::read());
            }
        });
    }
}
