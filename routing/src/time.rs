//! Time as the routing core sees it: a value its callers read and pass in, never a clock the core
//! reads itself, so that the same operations at the same times leave the same state (recovery,
//! and next a replicated queue's followers applying the leader's commands).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The moment an operation happens: the monotonic instant (TTL deadlines, x-expires) and the wall
/// clock in milliseconds since the epoch (publish times, which survive restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub wall_ms: u64,
}

impl Now {
    /// Reads both clocks: for the broker, at the edge where a client's request or a timer arrives.
    pub fn read() -> Self {
        Now {
            instant: Instant::now(),
            wall_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}
