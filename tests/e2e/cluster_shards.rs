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

/// Each shard's leader as every node of `all` agrees, once they do.
async fn shard_leaders(all: &[&TestBroker]) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let seen: Vec<Vec<Option<u64>>> = all
            .iter()
            .map(|b| {
                let c = b.server.broker.cluster().expect("a cluster node");
                c.shards.iter().map(|s| s.leader()).collect()
            })
            .collect();
        if seen.iter().all(|s| *s == seen[0]) && seen[0].iter().all(Option::is_some) {
            return seen[0].iter().flatten().copied().collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no agreed shard leaders: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Declares quorum queue `name` on `b` (with `x-queue-leader-locator` `locator` if given) and
/// returns the shard group `b` lists it in.
async fn declare_placed(b: &TestBroker, name: &str, locator: Option<&str>) -> u32 {
    use warren_tests::features::{table, text};
    let c = b.connect().await;
    let ch = c.channel().await;
    let mut arguments = table([("x-queue-type", text("quorum"))]);
    if let Some(l) = locator {
        arguments.insert("x-queue-leader-locator".try_into().unwrap(), text(l));
    }
    let mut args = amqprs::channel::QueueDeclareArguments::durable_client_named(name);
    args.arguments(arguments);
    ch.declare(args).await;
    c.close().await;
    let listed = b.brokerctl(&["--format", "json", "list_queues"]).await.ok();
    let rows: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed: {listed}"));
    row["shard"].as_str().unwrap()["shard-".len()..]
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_quorum_queue_goes_to_a_shard_its_declaring_node_leads_and_every_node_agrees() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    // Node 2 leads shard 3 and no other (whatever the elections chose), node 1 the rest.
    for g in 1..=4u32 {
        let to = if g == 3 { 2 } else { 1 };
        let leader = shard_leaders(&all).await[(g - 1) as usize];
        if leader != to {
            all[(leader - 1) as usize]
                .brokerctl(&[
                    "cluster",
                    "transfer-leadership",
                    "--group",
                    &format!("shard-{g}"),
                    "--to",
                    &to.to_string(),
                ])
                .await
                .ok();
        }
    }
    assert_eq!(shard_leaders(&all).await, vec![1, 1, 2, 1]);
    // RabbitMQ's default locator (client-local): the declaring node's shard, for every name.
    for name in ["a", "b", "c", "d", "e"] {
        assert_eq!(declare_placed(all[1], name, None).await, 3, "{name}");
    }
    assert_eq!(
        declare_placed(all[1], "explicit", Some("client-local")).await,
        3
    );
    // Node 1 leads shards 1, 2 and 4 but is the preferred leader of 1 and 4 only (shard g prefers
    // voter (g - 1) mod 3): its queues go there, where cluster::balance leaves them.
    let mut on_node_1 = std::collections::BTreeSet::new();
    for i in 0..8 {
        on_node_1.insert(declare_placed(all[0], &format!("one-{i}"), None).await);
    }
    assert_eq!(on_node_1, [1, 4].into());
    // Node 3 leads nothing: where the name hashes to, as `balanced` asks everywhere.
    let hashed = |name: &str| {
        warren_broker::cluster::raft::shard::shard_of(
            &warren_broker::meta::records::message_queue("/", name),
            4,
        )
    };
    assert_eq!(declare_placed(all[2], "f", None).await, hashed("f"));
    let names: Vec<String> = (0..12).map(|i| format!("spread-{i}")).collect();
    for name in &names {
        assert_eq!(
            declare_placed(all[1], name, Some("balanced")).await,
            hashed(name)
        );
    }
    // A policy's `queue-leader-locator` places the queues it matches, over their own argument
    // (RabbitMQ's args_policy_lookup lets the policy win).
    all[1]
        .brokerctl(&[
            "set_policy",
            "spread",
            "^pol-",
            r#"{"queue-leader-locator":"balanced"}"#,
            "--apply-to",
            "queues",
        ])
        .await
        .ok();
    let names: Vec<String> = (0..12).map(|i| format!("pol-{i}")).collect();
    assert!(names.iter().any(|n| hashed(n) != 3));
    for (i, name) in names.iter().enumerate() {
        let own = (i % 2 == 0).then_some("client-local");
        assert_eq!(
            declare_placed(all[1], name, own).await,
            hashed(name),
            "{name}"
        );
    }
    // The record carries the placement: every node puts the queue in that shard, and its host
    // is that shard's leader.
    let record = warren_broker::meta::records::message_queue("/", "a");
    for b in &all {
        let c = b.server.broker.cluster().unwrap();
        let deadline = tokio::time::Instant::now() + SETTLE;
        while c.shard(&record).group != 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {}",
                node_id(b)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    warren_tests::cluster::host_of(&all, "a").await;
    assert!(warren_tests::cluster::hosts(all[1], "a"));
    // A deleted queue's placement goes with it on every node (oslo deletes thousands a day).
    let gone = ["a", "b", "c", "d", "e"]
        .into_iter()
        .find(|n| hashed(n) != 3)
        .expect("a name that does not hash to shard 3");
    {
        let c = all[1].connect().await;
        let ch = c.channel().await;
        ch.queue_delete(amqprs::channel::QueueDeleteArguments::new(gone))
            .await
            .expect("queue.delete");
        c.close().await;
    }
    let record = warren_broker::meta::records::message_queue("/", gone);
    for b in &all {
        let c = b.server.broker.cluster().unwrap();
        let deadline = tokio::time::Instant::now() + SETTLE;
        while c.shard(&record).group != hashed(gone) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {}",
                node_id(b)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn shard_leaderships_move_to_their_preferred_nodes_so_every_node_leads_some() {
    let cluster = LinkCluster::new(3);
    let start = |id: u64| {
        let mut config = cluster.config(id);
        config.balance_leaders = true;
        TestBroker::start_with(move |c| c.cluster = Some(config))
    };
    let brokers = [start(1).await, start(2).await, start(3).await];
    let all: Vec<&TestBroker> = brokers.iter().collect();
    // Shard g prefers voter (g - 1) mod 3 in id order; checks run every few seconds.
    let deadline = tokio::time::Instant::now() + SETTLE + SETTLE;
    loop {
        let leaders = shard_leaders(&all).await;
        if leaders == vec![1, 2, 3, 1] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shard leaders stay {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
