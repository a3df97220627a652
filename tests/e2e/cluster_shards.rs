//! Queue shard groups (issue 13 point 4, HA.md §1.3): every node runs `[cluster] queue_shards` Raft
//! groups beside the metadata group, shown by `cluster status`; what a shard's leader writes reaches
//! every replica, a follower cannot write, a restarted node rebuilds its replica from its snapshot
//! and log, and when the shard's leader goes the others elect one that holds every written message.

use std::time::Duration;

use bytes::Bytes;
use warren_broker::cluster::quorum::ShardGroup;
use warren_broker::cluster::raft::QueueOp;
use warren_tests::cluster::{node_id, status, three_nodes, LinkCluster, SETTLE};
use warren_tests::TestBroker;

/// The record name of quorum queue `compute` in vhost `/`, which the test declares first (a node
/// taking a shard over drops what its replica holds of queues that do not exist).
fn queue() -> String {
    warren_broker::meta::records::message_queue("/", "compute")
}

fn shard(b: &TestBroker) -> &ShardGroup {
    b.server
        .broker
        .cluster()
        .expect("a cluster node")
        .shard(&queue())
}

/// Waits until every broker names the same leader for the queue's shard, other than `gone`.
async fn shard_leader(brokers: &[&TestBroker], gone: Option<u64>) -> u64 {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let leaders: Vec<Option<u64>> = brokers.iter().map(|b| shard(b).leader()).collect();
        if let Some(Some(leader)) = leaders.first().copied() {
            if leaders.iter().all(|l| *l == Some(leader)) && Some(leader) != gone {
                return leader;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agreed shard leader within {SETTLE:?}: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn enqueue(id: u64) -> QueueOp {
    QueueOp::Enqueue {
        queue: queue(),
        id,
        payload: Bytes::from(format!("message {id}")),
    }
}

/// Waits until `b`'s replica of the queue holds exactly the messages `ids`.
async fn wait_for_replica(b: &TestBroker, ids: &[u64]) {
    let expected: Vec<(u64, Bytes)> = ids
        .iter()
        .map(|id| (*id, Bytes::from(format!("message {id}"))))
        .collect();
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let (held, next_id) = shard(b).machine.messages(&queue());
        if held == expected {
            assert!(ids.iter().all(|id| *id < next_id), "next id {next_id}");
            return;
        }
        // (The shard's Raft metrics say why, should a replica not catch up: its vote, leader,
        // log and applied index.)
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {} holds {:?}, not {ids:?}; its shard: {}",
            node_id(b),
            held.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            shard(b).metrics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn shard_groups_replicate_what_their_leader_writes() {
    let cluster = LinkCluster::new(3);
    let mut brokers = three_nodes(&cluster).await.map(Some);
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    // cluster status shows the metadata group and the four shards of the test configuration.
    let groups = status(all[0]).await["groups"].clone();
    let names: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["metadata", "shard-1", "shard-2", "shard-3", "shard-4"]
    );

    {
        let c = all[0].connect().await;
        let ch = c.channel().await;
        let mut args = amqprs::channel::QueueDeclareArguments::durable_client_named("compute");
        args.arguments(warren_tests::features::table([(
            "x-queue-type",
            warren_tests::features::text("quorum"),
        )]));
        ch.declare(args).await;
        c.close().await;
    }
    // (A loaded machine may still change the new shard's leader once: the write goes to whoever
    // leads when it is made.)
    let deadline = tokio::time::Instant::now() + SETTLE;
    let leader = loop {
        let leader = shard_leader(&all, None).await;
        let on_leader = all.iter().find(|b| node_id(b) == leader).unwrap();
        match shard(on_leader)
            .write(vec![enqueue(1), enqueue(2), enqueue(3)])
            .await
        {
            Ok(_) => break leader,
            Err(why) => assert!(
                tokio::time::Instant::now() < deadline,
                "the leader writes: {why:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let on_leader = all.iter().find(|b| node_id(b) == leader).unwrap();
    let follower = all.iter().find(|b| node_id(b) != leader).unwrap();
    shard(on_leader)
        .write(vec![QueueOp::Remove {
            queue: queue(),
            id: 2,
        }])
        .await
        .expect("the leader writes");
    // Applied on the leader when the write returns, and on every replica soon after.
    let (held, _) = shard(on_leader).machine.messages(&queue());
    assert_eq!(held.len(), 2);
    for b in &all {
        wait_for_replica(b, &[1, 3]).await;
    }
    // A follower cannot write.
    let refused = shard(follower).write(vec![enqueue(9)]).await;
    assert!(refused.is_err(), "{refused:?}");
    let shown = status(on_leader).await["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["messages"].as_u64() == Some(2))
        .cloned();
    assert!(shown.is_some(), "no shard shows its 2 messages");

    // A snapshot on every node, then more writes: a restarted follower rebuilds its replica from
    // its snapshot and the log after it.
    for b in &all {
        shard(b).raft.trigger().snapshot().await.expect("snapshot");
    }
    for b in &all {
        let within = Some(SETTLE);
        shard(b)
            .raft
            .wait(within)
            .metrics(|m| m.snapshot.is_some(), "snapshot built")
            .await
            .expect("snapshot built");
    }
    shard(on_leader)
        .write(vec![enqueue(4)])
        .await
        .expect("the leader writes");
    let follower_id = node_id(follower);
    let restarted = brokers[(follower_id - 1) as usize]
        .take()
        .unwrap()
        .restart()
        .await;
    wait_for_replica(&restarted, &[1, 3, 4]).await;
    brokers[(follower_id - 1) as usize] = Some(restarted);

    // The shard's leader goes: the other two elect a new one, which holds every message written
    // and takes writes.
    let gone = brokers[(leader - 1) as usize]
        .take()
        .unwrap()
        .stop_keeping_data()
        .await;
    let left: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let next = shard_leader(&left, Some(leader)).await;
    let on_next = left.iter().find(|b| node_id(b) == next).unwrap();
    wait_for_replica(on_next, &[1, 3, 4]).await;
    let (_, next_id) = shard(on_next).machine.messages(&queue());
    shard(on_next)
        .write(vec![enqueue(next_id)])
        .await
        .expect("the new leader writes");
    for b in &left {
        wait_for_replica(b, &[1, 3, 4, next_id]).await;
    }
    // The old leader comes back and catches up.
    let back = gone.start().await;
    wait_for_replica(&back, &[1, 3, 4, next_id]).await;
}

#[tokio::test]
async fn a_shards_leadership_moves_on_request_to_the_node_asked() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let leader = shard_leader(&all, None).await;
    let group = format!("shard-{}", shard(all[0]).group);
    let to = leader % 3 + 1;
    let on_leader = all[(leader - 1) as usize];
    // Only the shard's leader can hand it over; an unknown group is named as such.
    let follower = all[(to - 1) as usize];
    let refused = follower
        .brokerctl(&["cluster", "transfer-leadership", "--group", &group])
        .await;
    assert!(!refused.success, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains(&format!("node {leader} leads group {group}")),
        "{refused:?}"
    );
    let unknown = on_leader
        .brokerctl(&["cluster", "transfer-leadership", "--group", "shard-99"])
        .await;
    assert!(
        !unknown.success
            && unknown
                .stderr
                .contains("the groups are metadata and shard-1"),
        "{unknown:?}"
    );
    let moved = on_leader
        .brokerctl(&[
            "cluster",
            "transfer-leadership",
            "--group",
            &group,
            "--to",
            &to.to_string(),
        ])
        .await
        .ok();
    assert!(moved.contains(&format!("\"leader\": {to}")), "{moved}");
    assert_eq!(shard_leader(&all, Some(leader)).await, to);
    // cluster status shows it.
    let shown = status(all[0]).await["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == group.as_str())
        .cloned()
        .unwrap();
    assert_eq!(shown["leader"], to, "{shown}");
}
