//! A published message as queues hold it: shared by every queue it was routed to, never copied.

use bytes::Bytes;

/// Exchange, routing key, the raw content-header properties and the body, exactly as published.
#[derive(Debug)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    /// Property flags and values as the publisher encoded them (forwarded byte-for-byte).
    pub properties: Bytes,
    pub body: Bytes,
}

impl Message {
    pub fn body_size(&self) -> u64 {
        self.body.len() as u64
    }
}
