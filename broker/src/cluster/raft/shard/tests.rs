//! The replica's properties: replaying a shard's log gives the same replica as a snapshot taken
//! part-way (encoded and decoded, as it travels and is stored) plus the rest of the log; and the
//! replica holds exactly the messages enqueued and not removed or dropped.

use std::collections::BTreeSet;

use bytes::Bytes;
use proptest::prelude::*;

use super::{shard_of, Replica};
use crate::cluster::raft::codec::{decode, encode};
use crate::cluster::raft::{QueueOp, Sender};

fn op() -> impl Strategy<Value = QueueOp> {
    let queue = prop::sample::select(vec!["/\nq1", "/\nq2", "nova\nq1"]).prop_map(str::to_string);
    prop_oneof![
        6 => (queue.clone(), 0u64..40, prop::collection::vec(any::<u8>(), 0..16)).prop_map(
            |(queue, id, body)| QueueOp::Enqueue { queue, id, payload: Bytes::from(body) }
        ),
        4 => (queue.clone(), 0u64..40).prop_map(|(queue, id)| QueueOp::Remove { queue, id }),
        1 => queue.clone().prop_map(|queue| QueueOp::Drop { queue }),
        3 => (queue, 0u64..40).prop_map(|(queue, id)| QueueOp::Returned { queue, id }),
        3 => sent(),
    ]
}

/// A forwarded publish's mark: three nodes, each in one of three runs.
fn sent() -> impl Strategy<Value = QueueOp> {
    (1u64..4, 1u64..4, 0u64..60, 0u64..50).prop_map(|(node, incarnation, seq, floor)| {
        QueueOp::Sent {
            from: Sender { node, incarnation },
            seq,
            floor: floor.min(seq),
        }
    })
}

proptest! {
    /// A resend is recognised exactly when its sender's current run sent it before (or it is
    /// below what that run may still send): never a message that was not applied, so a resend is
    /// never dropped in place of storing it.
    #[test]
    fn a_resend_is_recognised_exactly_when_it_was_applied(ops in prop::collection::vec(sent(), 0..300)) {
        let mut replica = Replica::default();
        for op in &ops {
            replica.apply(op);
        }
        let marks: Vec<(Sender, u64, u64)> = ops
            .iter()
            .map(|op| match op {
                QueueOp::Sent { from, seq, floor } => (*from, *seq, *floor),
                _ => unreachable!("only marks"),
            })
            .collect();
        for node in 1u64..4 {
            let latest = marks.iter().filter(|(f, ..)| f.node == node).map(|(f, ..)| f.incarnation).max();
            for incarnation in 1u64..4 {
                let from = Sender { node, incarnation };
                let this_run: Vec<_> = marks.iter().filter(|(f, ..)| *f == from).collect();
                let floor = this_run.iter().map(|(_, _, floor)| *floor).max().unwrap_or(0);
                for seq in 0u64..60 {
                    let expected = latest == Some(incarnation)
                        && (seq < floor || this_run.iter().any(|(_, s, _)| *s == seq));
                    prop_assert_eq!(replica.was_sent(&from, seq), expected, "{:?} seq {}", from, seq);
                }
            }
        }
    }

    #[test]
    fn replay_equals_snapshot_plus_replay(ops in prop::collection::vec(op(), 0..200), cut in 0usize..200) {
        let cut = cut.min(ops.len());
        let mut full = Replica::default();
        for op in &ops {
            full.apply(op);
        }
        let mut early = Replica::default();
        for op in &ops[..cut] {
            early.apply(op);
        }
        let bytes = encode(|w| early.write(w));
        let mut resumed = decode(&bytes, Replica::read).expect("a snapshot decodes");
        prop_assert_eq!(&resumed, &early);
        for op in &ops[cut..] {
            resumed.apply(op);
        }
        prop_assert_eq!(&resumed, &full);
    }

    #[test]
    fn the_replica_holds_what_was_enqueued_and_not_removed(ops in prop::collection::vec(op(), 0..200)) {
        let mut replica = Replica::default();
        let mut model: BTreeSet<(String, u64)> = BTreeSet::new();
        let mut returns: std::collections::BTreeMap<(String, u64), u64> = Default::default();
        let mut max_id = None;
        for op in &ops {
            replica.apply(op);
            match op {
                QueueOp::Enqueue { queue, id, .. } => {
                    model.insert((queue.clone(), *id));
                    max_id = max_id.max(Some(*id));
                }
                QueueOp::Remove { queue, id } => {
                    model.remove(&(queue.clone(), *id));
                    returns.remove(&(queue.clone(), *id));
                }
                QueueOp::Drop { queue } => {
                    model.retain(|(q, _)| q != queue);
                    returns.retain(|(q, _), _| q != queue);
                }
                QueueOp::Returned { queue, id } => {
                    if model.contains(&(queue.clone(), *id)) {
                        *returns.entry((queue.clone(), *id)).or_default() += 1;
                    }
                }
                QueueOp::Sent { .. } => {}
            }
        }
        for (queue, id) in &model {
            prop_assert_eq!(
                replica.returns(queue, *id),
                returns.get(&(queue.clone(), *id)).copied().unwrap_or(0)
            );
        }
        let held: BTreeSet<(String, u64)> = ["/\nq1", "/\nq2", "nova\nq1"]
            .iter()
            .flat_map(|q| replica.messages(q).into_iter().map(move |(id, _)| (q.to_string(), id)))
            .collect();
        prop_assert_eq!(held, model.clone());
        prop_assert_eq!(replica.len(), model.len());
        prop_assert_eq!(replica.next_id(), max_id.map_or(0, |id| id + 1));
    }
}

#[test]
fn shards_are_stable_and_in_range() {
    assert_eq!(shard_of("/\ncompute", 16), shard_of("/\ncompute", 16));
    let shards: BTreeSet<u32> = (0..200)
        .map(|i| shard_of(&format!("/\nq{i}"), 16))
        .collect();
    assert_eq!(shards, (1..=16).collect());
    assert_eq!(shard_of("anything", 1), 1);
}

#[test]
fn a_snapshot_written_before_returns_were_counted_reads() {
    let mut w = crate::cluster::raft::codec::Writer::default();
    w.u64(8);
    w.u64(1);
    w.bytes(b"/\nq");
    w.u64(1);
    w.u64(7);
    w.bytes(b"body");
    let replica = decode(&w.0, Replica::read).unwrap();
    assert_eq!(
        replica.messages("/\nq"),
        vec![(7, Bytes::from_static(b"body"))]
    );
    assert_eq!((replica.returns("/\nq", 7), replica.next_id()), (0, 8));
}

#[test]
fn a_truncated_snapshot_is_refused() {
    let mut replica = Replica::default();
    replica.apply(&QueueOp::Enqueue {
        queue: "/\nq".into(),
        id: 3,
        payload: Bytes::from_static(b"body"),
    });
    replica.apply(&QueueOp::Returned {
        queue: "/\nq".into(),
        id: 3,
    });
    let bytes = encode(|w| replica.write(w));
    for len in 0..bytes.len() {
        assert!(decode(&bytes[..len], Replica::read).is_err(), "{len}");
    }
}

#[test]
fn a_resend_that_a_later_message_overtook_is_still_stored() {
    let from = Sender {
        node: 2,
        incarnation: 7,
    };
    let mut replica = Replica::default();
    replica.apply(&QueueOp::Sent {
        from,
        seq: 7,
        floor: 6,
    });
    assert!(replica.was_sent(&from, 7));
    assert!(!replica.was_sent(&from, 6), "6 was never applied");
    let next_run = Sender {
        incarnation: 8,
        ..from
    };
    assert!(!replica.was_sent(&next_run, 7), "a new run numbers afresh");
    replica.apply(&QueueOp::Sent {
        from: next_run,
        seq: 0,
        floor: 0,
    });
    assert!(!replica.was_sent(&from, 7), "the old run is forgotten");
}
