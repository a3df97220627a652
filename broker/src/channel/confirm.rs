//! Publisher confirms (confirm.select): every publish on a confirming channel gets a sequence number and
//! is acked once every queue it was routed to holds it. Acks are coalesced per burst of input into one
//! basic.ack with `multiple`, which clients handle exactly like the individual acks.

use std::collections::{BTreeMap, BTreeSet};

use amq_protocol::protocol::{confirm, AMQPClass};
use warren_protocol::method::encode_confirm;

use super::Channel;
use crate::connection::session::Session;
use crate::error::AmqpResult;

#[derive(Debug, Default)]
pub struct Confirms {
    /// Sequence number of the last publish (the first publish is 1).
    last_seq: u64,
    /// Publishes waiting for their durable writes.
    waiting: BTreeSet<u64>,
    /// Publishes decided (true = ack) but not yet told to the client.
    decided: BTreeMap<u64, bool>,
}

impl Confirms {
    /// Numbers the next publish.
    pub fn next(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// The publish `seq` is settled now: enqueued everywhere (ack) or refused (nack).
    pub fn decide(&mut self, seq: u64, ok: bool) {
        self.decided.insert(seq, ok);
    }

    /// The publish `seq` waits for durable writes.
    pub fn wait(&mut self, seq: u64) {
        self.waiting.insert(seq);
    }

    /// The durable writes of `seq` finished.
    pub fn durable(&mut self, seq: u64, ok: bool) {
        if self.waiting.remove(&seq) {
            self.decided.insert(seq, ok);
        }
    }

    /// Tells the client every decision below the oldest publish still waiting, in order: runs of acks
    /// as one basic.ack with `multiple`, nacks one by one. Everything below what is sent is settled,
    /// so `multiple` never acknowledges a publish that is still waiting.
    pub fn flush(&mut self, s: &mut Session, channel: u16) {
        let limit = self.waiting.first().copied().unwrap_or(u64::MAX);
        let mut run: Option<(u64, u64)> = None;
        let ready: Vec<(u64, bool)> = self.decided.range(..limit).map(|(k, v)| (*k, *v)).collect();
        for (seq, ok) in ready {
            self.decided.remove(&seq);
            if ok {
                run = Some(run.map_or((seq, seq), |(first, _)| (first, seq)));
            } else {
                if let Some((first, last)) = run.take() {
                    encode_confirm(&mut s.out, channel, last, last > first, true);
                }
                encode_confirm(&mut s.out, channel, seq, false, false);
            }
        }
        if let Some((first, last)) = run {
            encode_confirm(&mut s.out, channel, last, last > first, true);
        }
    }
}

impl Channel {
    pub(super) fn confirm_method(
        &mut self,
        s: &mut Session,
        method: confirm::AMQPMethod,
    ) -> AmqpResult<()> {
        match method {
            confirm::AMQPMethod::Select(select) => {
                if self.tx.is_some() {
                    return Err(crate::error::AmqpError::precondition(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                self.confirms.get_or_insert_with(Confirms::default);
                if !select.nowait {
                    s.send(
                        self.id,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            confirm::AMQPMethod::SelectOk(_) => Err(crate::error::AmqpError::command_invalid(
                "unimplemented method",
            )),
        }
    }
}
