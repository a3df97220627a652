//! Topology changes on a cluster node's channel (routing's vhost/replicated.rs): the channel asks
//! the vhost for the command a change needs, hands it to the metadata group and parks the
//! connection (`Session::waiting`); once the change is applied on this node the connection runs the
//! method again, which finds it made and replies as a single node would. Frames behind the method
//! wait, in order, as AMQP requires.

use amq_protocol::protocol::AMQPClass;

use super::Channel;
use crate::connection::session::{Session, Waiting};
use crate::error::{AmqpError, AmqpResult};
use crate::meta::MetaCommand;

/// How many times a method runs again before it gives up: a change that another node undoes
/// before this one can answer, over and over, ends with an error rather than a loop.
const MAX_RERUNS: u8 = 3;

impl Channel {
    /// Hands `command` to the metadata group; `again` is the method, run again once the change is
    /// applied here.
    pub(super) fn replicate(
        &self,
        s: &mut Session,
        command: MetaCommand,
        again: AMQPClass,
    ) -> AmqpResult<()> {
        self.replicate_all(s, vec![command], again)
    }

    /// Hands `commands` to the metadata group as one change; `again` as for [`Self::replicate`].
    pub(super) fn replicate_all(
        &self,
        s: &mut Session,
        commands: Vec<MetaCommand>,
        again: AMQPClass,
    ) -> AmqpResult<()> {
        if s.reruns >= MAX_RERUNS {
            return Err(AmqpError::internal(
                "the cluster made the change, but other changes undid it before this node could answer; try again",
            ));
        }
        let Some(cluster) = s.broker.cluster().cloned() else {
            return Err(AmqpError::internal(
                "this node has not joined its cluster yet",
            ));
        };
        s.waiting = Some(Waiting {
            channel: self.id,
            method: again,
            ids: (0, 0),
            done: Box::pin(async move { cluster.meta.propose(commands).await }),
        });
        Ok(())
    }
}
