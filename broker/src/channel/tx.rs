//! Transactions (tx.select / commit / rollback): publishes and settlements are held until commit.
//! A rollback discards the publishes and puts the acknowledged deliveries back as unacked (RabbitMQ).

use amq_protocol::protocol::{tx, AMQPClass};

use super::confirm::PendingConfirm;
use super::publish::Publication;
use super::unacked::Delivered;
use super::Channel;
use crate::connection::session::Session;
use crate::error::{AmqpError, AmqpResult};

#[derive(Default)]
pub(crate) struct Transaction {
    pub publishes: Vec<Publication>,
    /// Settlements in arrival order, with basic.ack (None) or the requeue flag of nack/reject.
    pub settles: Vec<(Vec<Delivered>, Option<bool>)>,
}

impl Channel {
    pub(super) fn tx_method(&mut self, s: &mut Session, method: tx::AMQPMethod) -> AmqpResult<()> {
        let reply = match method {
            tx::AMQPMethod::Select(_) => {
                if self.confirms.is_some() {
                    return Err(AmqpError::precondition(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Transaction::default);
                tx::AMQPMethod::SelectOk(tx::SelectOk {})
            }
            tx::AMQPMethod::Commit(_) => {
                let done = std::mem::take(self.tx.as_mut().ok_or_else(not_transactional)?);
                // commit-ok waits until the committed persistent messages are on disk (as RabbitMQ).
                let tracker =
                    PendingConfirm::new(s.outbox.clone(), self.id, self.incarnation, None);
                let now = crate::time::Now::read();
                for publication in &done.publishes {
                    self.route_and_enqueue(s, publication, Some(&tracker), now);
                }
                for (settled, requeue) in done.settles {
                    self.apply_settle(settled, requeue);
                }
                match tracker.release() {
                    Some(true) => tx::AMQPMethod::CommitOk(tx::CommitOk {}),
                    Some(false) => return Err(commit_failed()),
                    // Outbound::Committed sends commit-ok (or the error) once the writes are done.
                    None => return Ok(()),
                }
            }
            tx::AMQPMethod::Rollback(_) => {
                let undone = std::mem::take(self.tx.as_mut().ok_or_else(not_transactional)?);
                for (settled, _) in undone.settles {
                    self.unacked.put_back(settled);
                }
                tx::AMQPMethod::RollbackOk(tx::RollbackOk {})
            }
            _ => return Err(AmqpError::command_invalid("unimplemented method")),
        };
        s.send(self.id, AMQPClass::Tx(reply));
        Ok(())
    }
}

/// A committed message could not be stored: the client must not believe the commit succeeded.
pub(crate) fn commit_failed() -> AmqpError {
    AmqpError::internal("tx.commit failed: the committed messages could not be stored")
        .during((90, 20))
}

impl Channel {
    /// The durable writes of a tx.commit finished: commit-ok, or the error that closes the connection.
    pub(crate) fn commit_durable(&mut self, s: &mut Session, ok: bool) -> AmqpResult<()> {
        if !ok {
            return Err(commit_failed());
        }
        s.send(
            self.id,
            AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
        Ok(())
    }
}

fn not_transactional() -> AmqpError {
    AmqpError::precondition("channel is not transactional")
}
