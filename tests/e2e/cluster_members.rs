//! Membership changes (issue 13 point 7, HA.md HA12): a node started with `join = true` is added
//! to a running three-node cluster while a publisher keeps publishing, another node is removed,
//! and every confirmed message is still there; the refusals of `add_node` and `remove_node`.

use std::time::Duration;

use amqprs::channel::QueueDeclareArguments;
use amqprs::BasicProperties;
use serde_json::{json, Value};
use warren_tests::cluster::{agreed_leader, host_of, status, LinkCluster, SETTLE};
use warren_tests::features::{table, text, Confirm};
use warren_tests::TestBroker;

const QUEUE: &str = "jobs";
/// Long enough for a new node's catch-up in every group on a loaded two-core machine.
const CHANGE: Duration = Duration::from_secs(90);

async fn start(cluster: &LinkCluster, id: u64) -> TestBroker {
    let config = cluster.config_started_by(id, 3);
    TestBroker::start_with(move |c| c.cluster = Some(config)).await
}

/// Nodes 1 to 3, which start the cluster, once they agree on a metadata leader.
async fn first_three(cluster: &LinkCluster) -> [TestBroker; 3] {
    let nodes = [
        start(cluster, 1).await,
        start(cluster, 2).await,
        start(cluster, 3).await,
    ];
    agreed_leader(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    nodes
}

/// What `b`'s cluster status says node `id` is in the metadata group.
async fn role(b: &TestBroker, id: u64) -> Option<String> {
    let status = status(b).await;
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == json!(id))
        .map(|n| n["metadata"].as_str().unwrap_or_default().to_string())
}

/// The voters of every group as `b`'s cluster status shows them: the metadata group's, then each
/// shard's.
async fn voters(b: &TestBroker) -> Vec<Vec<u64>> {
    let status = status(b).await;
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| serde_json::from_value(g["voters"].clone()).unwrap())
        .collect()
}

async fn wait_for_voters(b: &TestBroker, expected: &[u64]) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let all = voters(b).await;
        if all.iter().all(|v| v == expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "voters {all:?}, not {expected:?} in every group"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn queue_names(b: &TestBroker) -> Vec<String> {
    let list = b
        .admin()
        .ok(json!({"command": "list_queues", "vhost": "/"}))
        .await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap().to_string())
        .collect()
}

async fn add_node(on: &TestBroker, cluster: &LinkCluster, id: u64) -> Result<Value, String> {
    let peer = &cluster.peers[(id - 1) as usize];
    on.admin()
        .call_within(
            json!({"command": "add_node", "id": id, "name": peer.name, "addr": peer.addr.to_string()}),
            CHANGE,
        )
        .await
}

#[tokio::test]
async fn a_node_added_under_load_and_another_removed_keep_every_confirmed_message() {
    let cluster = LinkCluster::new(4);
    let [n1, n2, n3] = first_three(&cluster).await;
    let c = n1.connect().await;
    let ch = c.channel().await;
    let mut args = QueueDeclareArguments::durable_client_named(QUEUE);
    args.arguments(table([("x-queue-type", text("quorum"))]));
    ch.declare(args).await;
    // A durable classic queue lives on node 1, its home.
    ch.declare(QueueDeclareArguments::durable_client_named("on-1"))
        .await;
    c.close().await;

    // A node that waits to be added is in no group, and nobody counts it.
    let n4 = start(&cluster, 4).await;
    assert_eq!(voters(&n4).await, vec![Vec::<u64>::new(); 5]);
    assert_eq!(role(&n1, 4).await, None, "{}", status(&n1).await);

    // A publisher on node 2 publishes throughout the change; whatever is confirmed must stay.
    let publishing = {
        let n2 = n2.connect().await;
        tokio::spawn(async move {
            let ch = n2.channel().await;
            ch.select_confirms().await;
            let mut acked = Vec::new();
            for i in 0..300 {
                let body = format!("m-{i}");
                let confirm = ch
                    .publish_confirmed("", QUEUE, BasicProperties::default(), body.as_bytes())
                    .await;
                if confirm == Confirm::Ack {
                    acked.push(body);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n2.close().await;
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Added through node 3, whichever node leads each group.
    add_node(&n3, &cluster, 4).await.expect("node 4 added");
    for b in [&n1, &n2, &n3, &n4] {
        wait_for_voters(b, &[1, 2, 3, 4]).await;
    }
    let four = role(&n1, 4).await;
    assert!(
        matches!(four.as_deref(), Some("voter" | "leader")),
        "{four:?}"
    );
    // Adding it again changes nothing and is not an error (an interrupted add is finished so).
    add_node(&n1, &cluster, 4).await.expect("added again");

    assert!(queue_names(&n2).await.contains(&"on-1".to_string()));

    // Node 1 goes, while the publisher still publishes.
    n4.admin()
        .call_within(json!({"command": "remove_node", "id": 1}), CHANGE)
        .await
        .expect("node 1 removed");
    for b in [&n2, &n3, &n4] {
        wait_for_voters(b, &[2, 3, 4]).await;
        assert_eq!(role(b, 1).await, None, "{}", status(b).await);
    }
    // As RabbitMQ's forget_cluster_node: the classic queues of the removed node are deleted.
    let deadline = tokio::time::Instant::now() + SETTLE;
    while queue_names(&n2).await.contains(&"on-1".to_string()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 1's classic queue stays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked = publishing.await.expect("the publisher ran");
    assert!(
        acked.len() > 100,
        "only {} publishes confirmed",
        acked.len()
    );

    // Node 1's links are refused from now on, and it is stopped; nodes 2 to 4 carry on.
    drop(n1);
    // Node 3 restarts: its configuration still lists nodes 1 to 3, but the membership in its log
    // has node 4 (which it links to), and node 1's removal is recorded.
    let n3 = n3.stop_keeping_data().await.start().await;
    let left = [&n2, &n3, &n4];
    agreed_leader(&left).await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let four = status(&n3).await["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == json!(4))
            .map(|n| n["link"].clone());
        // Node 1 is still in node 3's configured peers, but its removal is recorded.
        if four == Some(json!("up")) && role(&n3, 1).await.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            status(&n3).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let host = host_of(&left, QUEUE).await;
    let c = host.connect().await;
    let ch = c.channel().await;
    let got = ch.get_n(QUEUE, acked.len(), Duration::from_secs(20)).await;
    let got = warren_tests::client::bodies(&got);
    // Every confirmed message, in publish order (a nacked one may have been kept too).
    let confirmed: Vec<&String> = got.iter().filter(|b| acked.contains(b)).collect();
    assert_eq!(confirmed.len(), acked.len(), "lost: {:?}", {
        let mut lost = acked.clone();
        lost.retain(|b| !got.contains(b));
        lost
    });
    assert!(confirmed.windows(2).all(|w| {
        let n = |s: &str| s[2..].parse::<u32>().unwrap();
        n(w[0]) < n(w[1])
    }));
    // The metadata group takes changes with node 4 among its majority.
    ch.declare(QueueDeclareArguments::durable_client_named("after"))
        .await;
    c.close().await;
}

#[tokio::test]
async fn membership_changes_that_cannot_be_made_are_refused_with_the_reason() {
    let cluster = LinkCluster::new(4);
    let [n1, n2, n3] = first_three(&cluster).await;
    let refused = |args: &'static [&'static str]| {
        let n1 = &n1;
        async move {
            let out = n1.brokerctl(args).await;
            assert!(!out.success, "{args:?}: {out:?}");
            out.stderr
        }
    };
    let n2_addr = cluster.peers[1].addr.to_string();
    let why = n1
        .brokerctl(&["cluster", "add-node", "2", "n9", &n2_addr])
        .await;
    assert!(why.stderr.contains("node ids are never reused"), "{why:?}");
    let addr = cluster.peers[3].addr.to_string();
    let why = n1
        .brokerctl(&["cluster", "add-node", "4", "n2", &addr])
        .await;
    assert!(why.stderr.contains("already called \"n2\""), "{why:?}");
    let why = n1
        .brokerctl(&["cluster", "add-node", "4", "n4", &n2_addr])
        .await;
    assert!(why.stderr.contains("already at"), "{why:?}");
    let why = n1.brokerctl(&["add_node", "4", "n4", "nowhere"]).await;
    assert!(why.stderr.contains("not a node-link address"), "{why:?}");
    let why = refused(&["cluster", "remove-node", "1"]).await;
    assert!(
        why.contains("this node: run remove_node on another node"),
        "{why}"
    );
    let why = refused(&["remove_node", "9"]).await;
    assert!(why.contains("node 9 is not a member"), "{why}");
    // A node id nobody runs cannot be added: it never catches up, and the change says so.
    let started = tokio::time::Instant::now();
    let why = n2
        .admin()
        .call_within(
            json!({"command": "add_node", "id": 4, "name": "n4", "addr": addr}),
            CHANGE,
        )
        .await
        .expect_err("a node that is not running is not added");
    assert!(why.contains("was not made"), "{why}");
    assert!(started.elapsed() < CHANGE);
    // Nothing was made a voter; node 4 may stay a learner of the metadata group until it is
    // added for real or removed.
    wait_for_voters(&n3, &[1, 2, 3]).await;
    n2.admin()
        .call_within(json!({"command": "remove_node", "id": 4}), CHANGE)
        .await
        .expect("a learner that never came is removed");
    assert_eq!(role(&n3, 4).await, None);
    // Its id is burnt: node ids are never reused.
    let why = add_node(&n3, &cluster, 4)
        .await
        .expect_err("a removed node's id is refused");
    assert!(
        why.contains("node id 4 was removed from this cluster"),
        "{why}"
    );
}

#[tokio::test]
async fn a_dead_node_is_replaced_by_a_new_one_with_a_new_id() {
    let cluster = LinkCluster::new(4);
    let [n1, n2, n3] = first_three(&cluster).await;
    let (c, ch, pch) = n1.connect_with_confirming_channel().await;
    let mut args = QueueDeclareArguments::durable_client_named(QUEUE);
    args.arguments(table([("x-queue-type", text("quorum"))]));
    ch.declare(args).await;
    host_of(&[&n1, &n2, &n3], QUEUE).await;
    for i in 0..20 {
        pch.publish_acked(
            "",
            QUEUE,
            BasicProperties::default(),
            format!("m-{i}").as_bytes(),
        )
        .await;
    }
    c.close().await;

    // Node 3 dies for good; node 4 takes its place, and node 3 is removed while it is down.
    drop(n3.stop_keeping_data().await);
    let n4 = start(&cluster, 4).await;
    add_node(&n1, &cluster, 4).await.expect("node 4 added");
    n2.admin()
        .call_within(json!({"command": "remove_node", "id": 3}), CHANGE)
        .await
        .expect("the dead node removed");
    for b in [&n1, &n2, &n4] {
        wait_for_voters(b, &[1, 2, 4]).await;
    }
    // Node 1 stops too: nodes 2 and 4 are a majority of the new membership, not of the old one.
    drop(n1.stop_keeping_data().await);
    agreed_leader(&[&n2, &n4]).await;
    let host = host_of(&[&n2, &n4], QUEUE).await;
    let c = host.connect().await;
    let ch = c.channel().await;
    let got = ch.get_n(QUEUE, 20, Duration::from_secs(20)).await;
    let expected: Vec<String> = (0..20).map(|i| format!("m-{i}")).collect();
    assert_eq!(warren_tests::client::bodies(&got), expected);
    ch.declare(QueueDeclareArguments::durable_client_named("after"))
        .await;
    c.close().await;
}

/// A node that was down while a node was added and the metadata group's leadership moved to the
/// new node comes back with a log and configured peers that name neither: it would never dial the
/// new node (the lower id dials) nor admit it. It learns it from a member it does reach, and
/// catches up from it.
#[tokio::test]
async fn a_node_away_while_the_leader_joined_learns_it_from_another_member_and_catches_up() {
    let cluster = LinkCluster::new(4);
    let [n1, n2, n3] = first_three(&cluster).await;
    let away = n3.stop_keeping_data().await;
    let n4 = start(&cluster, 4).await;
    add_node(&n1, &cluster, 4).await.expect("node 4 added");
    let leader = agreed_leader(&[&n1, &n2, &n4]).await;
    if leader != 4 {
        let on = [&n1, &n2][(leader - 1) as usize];
        let moved = on
            .brokerctl(&["cluster", "transfer-leadership", "--to", "4"])
            .await;
        assert!(moved.success, "{moved:?}");
    }
    let deadline = tokio::time::Instant::now() + SETTLE;
    while agreed_leader(&[&n1, &n2, &n4]).await != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 4 does not lead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n4.brokerctl(&["add_vhost", "while-away"]).await.ok();

    let n3 = away.start().await;
    let deadline = tokio::time::Instant::now() + SETTLE * 2;
    while n3.server.broker.vhost("while-away").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 did not catch up from node 4: {}",
            status(&n3).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(agreed_leader(&[&n1, &n2, &n3, &n4]).await, 4);
}
