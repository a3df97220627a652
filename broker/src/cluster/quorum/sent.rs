//! A publish forwarded to a quorum queue's host is numbered by its sending node (sender, sequence)
//! and stored at most once however often it is sent: the sender sends it again, to whichever node
//! hosts the queue next, when the host changes or fails before answering (as RabbitMQ's channel
//! resends to a quorum queue's new leader), instead of giving its publisher basic.nack.
//!
//! The host checks a publish against the ones its shard has applied (`QueueOp::Sent`, written in
//! the same entry as the enqueue, so every replica knows them) and against those it is storing
//! now. That is enough: a node hosts a shard's queues only once it has applied every entry of the
//! terms before its own (hosting.rs), so an earlier host's copy is either applied there or never
//! will be; and a host's failed write means it lost the leadership, so it stores nothing more of
//! that term.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::io;

use tokio::sync::oneshot;

use crate::cluster::raft::{QueueOp, Sender};

/// A forwarded publish's number: its sender, its sequence number, and the lowest sequence number
/// that sender may still send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Numbered {
    pub from: Sender,
    pub seq: u64,
    pub floor: u64,
}

impl Numbered {
    /// The mark that goes into the shard with the publish's enqueue.
    pub fn mark(&self) -> QueueOp {
        QueueOp::Sent {
            from: self.from,
            seq: self.seq,
            floor: self.floor,
        }
    }
}

thread_local! {
    /// The forwarded publish this thread is publishing into its queue, with the queue's record
    /// name: the queue journals its enqueue on this thread, and the journal adds the mark.
    static PUBLISHING: RefCell<Option<(String, Numbered)>> = const { RefCell::new(None) };
}

/// Runs `publish` (a forwarded message into quorum queue `record`) so that the journal write of
/// its enqueue carries `number`.
pub(crate) fn publishing<T>(record: &str, number: Numbered, publish: impl FnOnce() -> T) -> T {
    PUBLISHING.with(|p| *p.borrow_mut() = Some((record.to_string(), number)));
    let published = publish();
    PUBLISHING.with(|p| p.borrow_mut().take());
    published
}

/// The mark for a journal write of `queue` made while its forwarded publish is published on this
/// thread, when the write enqueues into that queue (a dead letter into another does not take it).
pub(super) fn take_mark(queue: &str, ops: &[QueueOp]) -> Option<QueueOp> {
    let enqueues = ops
        .iter()
        .any(|op| matches!(op, QueueOp::Enqueue { queue: q, .. } if q == queue));
    if !enqueues {
        return None;
    }
    PUBLISHING.with(|p| {
        let mut p = p.borrow_mut();
        match p.as_ref() {
            Some((record, _)) if record == queue => p.take().map(|(_, n)| n.mark()),
            _ => None,
        }
    })
}

/// The sequence numbers of this node's forwarded publishes, per shard, and which of them are not
/// settled yet (the lowest of those is the floor each publish carries).
pub(crate) struct Sequences {
    pub from: Sender,
    shards: parking_lot::Mutex<HashMap<u32, Unsettled>>,
}

#[derive(Default)]
struct Unsettled {
    next: u64,
    open: BTreeSet<u64>,
}

impl Unsettled {
    /// The lowest number not settled yet (the next one when all are).
    fn floor(&self) -> u64 {
        self.open.first().copied().unwrap_or(self.next)
    }
}

impl Sequences {
    pub fn new(node: u64) -> Self {
        // The run's start time tells this run's numbers from a previous run's.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Sequences {
            from: Sender { node, incarnation },
            shards: Default::default(),
        }
    }

    /// The next number for a publish into shard `group`, open until [`Sequences::settled`].
    pub fn number(&self, group: u32) -> Numbered {
        let mut shards = self.shards.lock();
        let shard = shards.entry(group).or_default();
        let seq = shard.next;
        shard.next += 1;
        shard.open.insert(seq);
        Numbered {
            from: self.from,
            seq,
            floor: shard.floor(),
        }
    }

    /// The lowest number of shard `group` not settled yet: every one below it has its answer.
    pub fn floor(&self, group: u32) -> u64 {
        self.shards.lock().get(&group).map_or(0, Unsettled::floor)
    }

    /// Publish `seq` of shard `group` has its answer: it is never sent again.
    pub fn settled(&self, group: u32, seq: u64) {
        if let Some(shard) = self.shards.lock().get_mut(&group) {
            shard.open.remove(&seq);
        }
    }
}

/// What answers the copies of a forwarded publish that arrive while the host is storing it.
type Waiters = Vec<oneshot::Sender<io::Result<()>>>;

/// The forwarded publishes a host is storing now, by shard and number, with the resends of each
/// that arrived meanwhile.
#[derive(Default)]
pub(crate) struct Storing(parking_lot::Mutex<HashMap<(u32, Sender, u64), Waiters>>);

/// What a host does with a numbered publish.
pub(crate) enum Arrival {
    /// Store it (it is now storing; call [`Storing::stored`] with the outcome).
    Store,
    /// A copy is being stored: the answer comes with that copy's.
    Wait(oneshot::Receiver<io::Result<()>>),
    /// Applied already: answered as stored.
    Stored,
}

impl Storing {
    /// Whether publish `number` for shard `group` is new, being stored, or stored (`applied`
    /// says whether the shard has applied it).
    pub fn arrive(&self, group: u32, number: &Numbered, applied: impl FnOnce() -> bool) -> Arrival {
        let mut storing = self.0.lock();
        let key = (group, number.from, number.seq);
        if let Some(waiters) = storing.get_mut(&key) {
            let (tx, rx) = oneshot::channel();
            waiters.push(tx);
            return Arrival::Wait(rx);
        }
        // Checked under the lock: a copy being stored is applied before it leaves the map.
        if applied() {
            return Arrival::Stored;
        }
        storing.insert(key, Vec::new());
        Arrival::Store
    }

    /// Publish `number` of shard `group` is stored (or not, as `outcome` says): its resends that
    /// arrived meanwhile get the same answer.
    pub fn stored(&self, group: u32, number: &Numbered, outcome: &io::Result<()>) {
        let waiters = self.0.lock().remove(&(group, number.from, number.seq));
        for waiter in waiters.into_iter().flatten() {
            let answer = match outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            let _ = waiter.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(seq: u64) -> Numbered {
        Numbered {
            from: Sender {
                node: 2,
                incarnation: 9,
            },
            seq,
            floor: 0,
        }
    }

    #[test]
    fn the_floor_is_the_lowest_unsettled_number() {
        let sequences = Sequences::new(3);
        let numbers: Vec<_> = (0..3).map(|_| sequences.number(1)).collect();
        assert_eq!(numbers.iter().map(|n| n.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(numbers.iter().all(|n| n.floor == 0));
        sequences.settled(1, 1);
        assert_eq!(sequences.number(1).floor, 0, "0 is still open");
        sequences.settled(1, 0);
        assert_eq!(sequences.number(1).floor, 2);
        assert_eq!(sequences.number(2).seq, 0, "each shard numbers its own");
    }

    #[test]
    fn a_copy_arriving_while_one_is_stored_gets_its_answer() {
        let storing = Storing::default();
        assert!(matches!(
            storing.arrive(1, &number(5), || false),
            Arrival::Store
        ));
        let Arrival::Wait(mut waiting) = storing.arrive(1, &number(5), || false) else {
            panic!("the second copy must wait for the first");
        };
        assert!(waiting.try_recv().is_err());
        storing.stored(1, &number(5), &Err(io::Error::other("lost the leadership")));
        assert!(waiting.try_recv().unwrap().is_err());
        // Not stored: a later copy is stored afresh; once applied, a copy is answered at once.
        assert!(matches!(
            storing.arrive(1, &number(5), || false),
            Arrival::Store
        ));
        storing.stored(1, &number(5), &Ok(()));
        assert!(matches!(
            storing.arrive(1, &number(5), || true),
            Arrival::Stored
        ));
        assert!(matches!(
            storing.arrive(2, &number(5), || false),
            Arrival::Store
        ));
    }

    #[test]
    fn only_the_enqueue_into_the_forwarded_queue_takes_the_mark() {
        let enqueue = |queue: &str| QueueOp::Enqueue {
            queue: queue.into(),
            id: 1,
            payload: bytes::Bytes::new(),
        };
        let marks = publishing("/\nq", number(4), || {
            let other = take_mark("/\ndead", &[enqueue("/\ndead")]);
            let remove = take_mark(
                "/\nq",
                &[QueueOp::Remove {
                    queue: "/\nq".into(),
                    id: 1,
                }],
            );
            let ours = take_mark("/\nq", &[enqueue("/\nq")]);
            let again = take_mark("/\nq", &[enqueue("/\nq")]);
            (other, remove, ours, again)
        });
        assert_eq!(marks.0, None);
        assert_eq!(marks.1, None);
        assert!(matches!(marks.2, Some(QueueOp::Sent { seq: 4, .. })));
        assert_eq!(marks.3, None, "one publish, one mark");
        assert_eq!(take_mark("/\nq", &[enqueue("/\nq")]), None, "none outside");
    }
}
