//! A host takes each node's numbered publishes into a shard in number order, as rabbit_fifo refuses
//! an enqueue whose sequence number is past its enqueuer's next one (`out_of_sequence`) and the
//! channel sends again from the missing one.
//!
//! The sender keeps its order (lanes.rs), but it cannot see the host: a node that has just become
//! a shard's leader refuses the first requests of a burst (it does not host the queues until its
//! first entry is applied) and takes the later ones once it does, and a request refused on the
//! sender's side (its link down or full) never arrives while the next one may. Either way a later
//! publish would be stored ahead of an earlier one that comes again. So the host knows, per shard
//! and sender, the next number it expects: a publish past it is refused for now (the sender sends
//! it again after the missing ones). Numbers a sender settled without this host (stored by an
//! earlier host, given basic.nack at their deadline) are never coming: every request carries the
//! sender's floor, its lowest unsettled number, and the host expects nothing below it.

use std::collections::HashMap;

use crate::cluster::raft::Sender;

/// The next number this node expects from each sender, per shard.
#[derive(Default)]
pub(crate) struct Arrivals(parking_lot::Mutex<HashMap<(u32, Sender), u64>>);

impl Arrivals {
    /// Takes publish `seq` from `from` into shard `group`, sent with the sender's `floor`, unless
    /// an earlier unsettled one has not come: then `Err` with the number expected. A publish taken
    /// is one this node stores, is storing, stored before, or refuses for good.
    pub fn admit(&self, group: u32, from: Sender, (seq, floor): (u64, u64)) -> Result<(), u64> {
        let mut arrivals = self.0.lock();
        let next = arrivals.entry((group, from)).or_insert(floor);
        *next = (*next).max(floor);
        if seq > *next {
            return Err(*next);
        }
        if seq == *next {
            *next += 1;
        }
        Ok(())
    }

    /// Publish `seq` from `from`, taken, was not stored after all (this node lost the shard's
    /// leadership while storing it): its sender sends it again, and nothing after it may be
    /// taken first.
    pub fn lost(&self, group: u32, from: Sender, seq: u64) {
        if let Some(next) = self.0.lock().get_mut(&(group, from)) {
            *next = (*next).min(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: Sender = Sender {
        node: 2,
        incarnation: 7,
    };

    #[test]
    fn a_publish_past_a_missing_one_waits_for_it_and_a_resend_is_taken() {
        let arrivals = Arrivals::default();
        assert_eq!(arrivals.admit(1, FROM, (10, 10)), Ok(()));
        // 11 was refused (or never came): 12 must not go ahead of it.
        assert_eq!(arrivals.admit(1, FROM, (12, 10)), Err(11));
        assert_eq!(arrivals.admit(1, FROM, (11, 10)), Ok(()));
        assert_eq!(arrivals.admit(1, FROM, (12, 10)), Ok(()));
        // A copy of one taken before is taken again (the store answers it once).
        assert_eq!(arrivals.admit(1, FROM, (11, 10)), Ok(()));
        // Each shard, and each sender, has its own numbers.
        assert_eq!(arrivals.admit(2, FROM, (0, 0)), Ok(()));
        let restarted = Sender {
            incarnation: 8,
            ..FROM
        };
        assert_eq!(arrivals.admit(1, restarted, (0, 0)), Ok(()));
        assert_eq!(arrivals.admit(1, FROM, (13, 10)), Ok(()));
    }

    #[test]
    fn numbers_the_sender_settled_elsewhere_are_not_waited_for() {
        let arrivals = Arrivals::default();
        // First contact: what is below the floor was settled without this node.
        assert_eq!(arrivals.admit(1, FROM, (40, 40)), Ok(()));
        assert_eq!(arrivals.admit(1, FROM, (45, 40)), Err(41));
        // 41..=44 were settled (another host stored them, or their deadline passed).
        assert_eq!(arrivals.admit(1, FROM, (45, 45)), Ok(()));
        assert_eq!(arrivals.admit(1, FROM, (46, 45)), Ok(()));
    }

    #[test]
    fn a_publish_lost_after_it_was_taken_holds_back_those_after_it() {
        let arrivals = Arrivals::default();
        for seq in 0..5 {
            assert_eq!(arrivals.admit(1, FROM, (seq, 0)), Ok(()));
        }
        arrivals.lost(1, FROM, 3);
        arrivals.lost(1, FROM, 4);
        assert_eq!(arrivals.admit(1, FROM, (5, 0)), Err(3));
        assert_eq!(arrivals.admit(1, FROM, (3, 0)), Ok(()));
        assert_eq!(arrivals.admit(1, FROM, (4, 0)), Ok(()));
        assert_eq!(arrivals.admit(1, FROM, (5, 0)), Ok(()));
        arrivals.lost(9, FROM, 0);
        assert_eq!(
            arrivals.admit(9, FROM, (1, 1)),
            Ok(()),
            "nothing to hold back"
        );
    }
}
