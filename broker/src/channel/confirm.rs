//! Publisher confirms (confirm.select): every publish on a confirming channel gets a sequence number and
//! is acked once every queue it was routed to holds it. Acks are coalesced per burst of input into one
//! basic.ack with `multiple`, which clients handle exactly like the individual acks.

use amq_protocol::protocol::{confirm, AMQPClass};
use warren_protocol::method::encode_confirm;

use super::Channel;
use crate::connection::session::Session;
use crate::error::AmqpResult;

#[derive(Debug, Default)]
pub struct Confirms {
    /// Sequence number of the last publish (the first publish is 1).
    last_seq: u64,
    /// Highest sequence number covered by an ack or nack already sent.
    settled_through: u64,
    /// Highest sequence number confirmed so far (all below it are confirmed too).
    ready_through: u64,
}

impl Confirms {
    /// Numbers the next publish.
    pub fn next(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// The publish `seq` is safely enqueued.
    pub fn ack(&mut self, seq: u64) {
        self.ready_through = seq;
    }

    /// The publish `seq` was refused: earlier acks go out first so the nack stays in order.
    pub fn nack(&mut self, s: &mut Session, channel: u16, seq: u64) {
        self.ready_through = seq - 1;
        self.flush(s, channel);
        encode_confirm(&mut s.out, channel, seq, false, false);
        self.settled_through = seq;
        self.ready_through = seq;
    }

    /// Sends one ack for everything confirmed since the last one.
    pub fn flush(&mut self, s: &mut Session, channel: u16) {
        if self.ready_through > self.settled_through {
            let multiple = self.ready_through - self.settled_through > 1;
            encode_confirm(&mut s.out, channel, self.ready_through, multiple, true);
            self.settled_through = self.ready_through;
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
