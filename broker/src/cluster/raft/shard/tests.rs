//! The replica's properties: replaying a shard's log gives the same replica as a snapshot taken
//! part-way (encoded and decoded, as it travels and is stored) plus the rest of the log; and the
//! replica holds exactly the messages enqueued and not removed or dropped.

use std::collections::BTreeSet;

use bytes::Bytes;
use proptest::prelude::*;

use super::{shard_of, Replica};
use crate::cluster::raft::codec::{decode, encode};
use crate::cluster::raft::QueueOp;

fn op() -> impl Strategy<Value = QueueOp> {
    let queue = prop::sample::select(vec!["/\nq1", "/\nq2", "nova\nq1"]).prop_map(str::to_string);
    prop_oneof![
        6 => (queue.clone(), 0u64..40, prop::collection::vec(any::<u8>(), 0..16)).prop_map(
            |(queue, id, body)| QueueOp::Enqueue { queue, id, payload: Bytes::from(body) }
        ),
        4 => (queue.clone(), 0u64..40).prop_map(|(queue, id)| QueueOp::Remove { queue, id }),
        1 => queue.clone().prop_map(|queue| QueueOp::Drop { queue }),
        3 => (queue, 0u64..40).prop_map(|(queue, id)| QueueOp::Returned { queue, id }),
    ]
}

proptest! {
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
