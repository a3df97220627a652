//! What messages hold in memory, counted while they live: a [`Charge`] is created with a message
//! and released when its last reference goes. The account is a trait the broker's memory alarm
//! implements (alarms.rs), so messages and queues never import the alarm.

use std::fmt;
use std::sync::Arc;

/// Where message bytes are counted: the memory alarm.
pub trait MemoryAccount: Send + Sync + fmt::Debug {
    fn charge(&self, bytes: u64);
    fn release(&self, bytes: u64);
    /// Bytes counted now.
    fn used(&self) -> u64;
    /// Where the alarm goes off.
    fn high_watermark(&self) -> u64;
}

/// Bytes a message holds, counted while it lives: created with the message, released when its last
/// reference is dropped.
#[derive(Debug)]
pub struct Charge {
    account: Arc<dyn MemoryAccount>,
    bytes: u64,
}

impl Charge {
    pub fn new(account: Arc<dyn MemoryAccount>, bytes: u64) -> Self {
        account.charge(bytes);
        Charge { account, bytes }
    }

    /// A charge of `bytes` to the same account (for a message derived from this one).
    pub(crate) fn sibling(&self, bytes: u64) -> Self {
        Charge::new(self.account.clone(), bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.account.release(self.bytes);
    }
}
