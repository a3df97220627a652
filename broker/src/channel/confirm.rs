//! Publisher confirms (confirm.select): every publish on a confirming channel gets a sequence number and
//! is acked once every queue it was routed to holds it. Acks are coalesced per burst of input into one
//! basic.ack with `multiple`, which clients handle exactly like the individual acks.

use std::collections::{BTreeMap, BTreeSet};

use amq_protocol::protocol::{confirm, AMQPClass};
use warren_protocol::method::encode_confirm;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use warren_storage::store::Completion;

use super::Channel;
use crate::connection::outbound::Outbound;
use crate::connection::session::Session;
use crate::error::AmqpResult;
use crate::queue::sink::WaitsForWrites;

#[derive(Debug, Default)]
pub(crate) struct Confirms {
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
            s.counts.confirmed += u64::from(ok);
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

/// A publish waiting for durable writes before its confirm. The channel holds one count while it
/// routes; each durable write holds one until it completes. Whoever drops the last count settles it.
pub(crate) struct PendingConfirm {
    count: AtomicUsize,
    failed: AtomicBool,
    outbox: UnboundedSender<Outbound>,
    channel: u16,
    incarnation: u64,
    /// The publish's confirm sequence number, or None for a tx.commit waiting for its publishes.
    seq: Option<u64>,
}

impl PendingConfirm {
    pub fn new(
        outbox: UnboundedSender<Outbound>,
        channel: u16,
        incarnation: u64,
        seq: Option<u64>,
    ) -> Arc<Self> {
        Arc::new(PendingConfirm {
            count: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            outbox,
            channel,
            incarnation,
            seq,
        })
    }

    /// A completion for one more durable write of this publish.
    fn hold_one(self: &Arc<Self>) -> Completion {
        self.count.fetch_add(1, Ordering::AcqRel);
        let me = self.clone();
        Box::new(move |result| {
            if let Err(e) = result {
                tracing::error!(error = %e, "a persistent message could not be stored: its publisher gets a nack");
                me.failed.store(true, Ordering::Release);
            }
            if me.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                let ok = !me.failed.load(Ordering::Acquire);
                let (channel, incarnation) = (me.channel, me.incarnation);
                let _ = me.outbox.send(match me.seq {
                    Some(seq) => Outbound::Confirmed {
                        channel,
                        incarnation,
                        seq,
                        ok,
                    },
                    None => Outbound::Committed {
                        channel,
                        incarnation,
                        ok,
                    },
                });
            }
        })
    }

    /// The channel's own count. `Some(ok)` when nothing is pending any more (settle right away with
    /// that outcome: a write may already have failed), `None` while writes are in flight (their last
    /// completion settles it through the outbox).
    pub fn release(&self) -> Option<bool> {
        (self.count.fetch_sub(1, Ordering::AcqRel) == 1)
            .then(|| !self.failed.load(Ordering::Acquire))
    }
}

/// A pending confirm as queues see it: each queue that stores the publish waits for its write.
pub(crate) struct Holds<'a>(pub &'a Arc<PendingConfirm>);

impl WaitsForWrites for Holds<'_> {
    fn hold(&self) -> Completion {
        self.0.hold_one()
    }
}
