//! Replicated definitions (issue 13 point 3): three brokers as one cluster share vhosts, users and
//! permissions through the metadata Raft group, so a change made with brokerctl on any node holds
//! on every node; it survives the loss of the group's leader (a new one is elected and takes
//! changes), and a node that was down catches up when it comes back.

use std::time::Duration;

use serde_json::json;
use warren_tests::cluster::{
    agreed_leader, agreed_leader_other_than, isolate, status, three_nodes, LinkCluster, SETTLE,
};
use warren_tests::TestBroker;

async fn user_names(broker: &TestBroker) -> Vec<String> {
    let users = broker
        .admin()
        .call(json!({"command": "list_users"}))
        .await
        .expect("list_users");
    users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["name"].as_str().map(str::to_string))
        .collect()
}

/// Waits until `broker` lists user `name`.
async fn wait_for_user(broker: &TestBroker, name: &str) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while !user_names(broker).await.iter().any(|u| u == name) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "user {name} never appeared: {:?}",
            user_names(broker).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_change_on_any_node_holds_on_every_node() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    let leader = agreed_leader(&[&b1, &b2, &b3]).await;
    // Made on a follower (forwarded to the leader) and on the leader itself.
    let follower = [&b1, &b2, &b3]
        .into_iter()
        .enumerate()
        .find(|(i, _)| *i as u64 + 1 != leader)
        .map(|(_, b)| b)
        .unwrap();
    follower.brokerctl(&["add_user", "nova"]).await.ok();
    follower
        .brokerctl(&["set_permissions", "-p", "/", "nova", ".*", ".*", ".*"])
        .await
        .ok();
    b3.brokerctl(&["add_vhost", "cinder"]).await.ok();
    for b in [&b1, &b2, &b3] {
        wait_for_user(b, "nova").await;
    }
    // The permission is in force on every node: nova logs in to each (deny by default otherwise).
    for b in [&b1, &b2, &b3] {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let (cert, key) = b.user_cert_files("nova");
            match b.connect_as(&cert, &key, None).await {
                Ok(client) => {
                    client.close().await;
                    break;
                }
                Err(e) => assert!(tokio::time::Instant::now() < deadline, "nova refused: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let vhosts = b
            .admin()
            .call(json!({"command": "list_vhosts"}))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + SETTLE;
        let mut vhosts = vhosts;
        while !vhosts.as_array().unwrap().iter().any(|v| v == "cinder") {
            assert!(tokio::time::Instant::now() < deadline, "{vhosts}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            vhosts = b
                .admin()
                .call(json!({"command": "list_vhosts"}))
                .await
                .unwrap();
        }
    }
    // A refusal is the same everywhere, and reported to whoever asked.
    let again = b1.brokerctl(&["add_user", "nova"]).await;
    assert!(!again.success, "{again:?}");
    assert!(
        again.stderr.contains("user 'nova' already exists"),
        "{again:?}"
    );
    // Deleting the user on one node ends its permission on all.
    b2.brokerctl(&["delete_user", "nova"]).await.ok();
    for b in [&b1, &b2, &b3] {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while user_names(b).await.iter().any(|u| u == "nova") {
            assert!(tokio::time::Instant::now() < deadline, "nova still listed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn changes_survive_the_leader_and_a_returning_node_catches_up() {
    let cluster = LinkCluster::new(3);
    let mut brokers = three_nodes(&cluster).await.map(Some);
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let leader = agreed_leader(&all).await;
    all[0].brokerctl(&["add_user", "before"]).await.ok();
    for b in &all {
        wait_for_user(b, "before").await;
    }

    // The leader goes (its data kept); the other two elect a new one and take changes.
    let gone = brokers[(leader - 1) as usize]
        .take()
        .unwrap()
        .stop_keeping_data()
        .await;
    let left: Vec<&TestBroker> = brokers.iter().flatten().collect();
    agreed_leader_other_than(&left, Some(leader)).await;
    left[0].brokerctl(&["add_user", "during"]).await.ok();
    for b in &left {
        wait_for_user(b, "during").await;
    }

    // The old leader comes back on its data directory and id, and catches up with what it missed.
    let back = gone.start().await;
    wait_for_user(&back, "during").await;
    assert!(user_names(&back).await.iter().any(|u| u == "before"));
    let all: Vec<&TestBroker> = brokers.iter().flatten().chain([&back]).collect();
    agreed_leader(&all).await;
    back.brokerctl(&["add_user", "after"]).await.ok();
    for b in &all {
        wait_for_user(b, "after").await;
    }
}

#[tokio::test]
async fn leadership_moves_on_request_and_before_the_leader_stops() {
    let cluster = LinkCluster::new(3);
    let mut brokers = three_nodes(&cluster).await.map(Some);
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let leader = agreed_leader(&all).await;
    let to = leader % 3 + 1;
    let moved = all[(leader - 1) as usize]
        .brokerctl(&["cluster", "transfer-leadership", "--to", &to.to_string()])
        .await
        .ok();
    assert!(moved.contains(&format!("\"leader\": {to}")), "{moved}");
    assert_eq!(agreed_leader_other_than(&all, Some(leader)).await, to);
    // Only the leader can hand over.
    let follower = all[(leader - 1) as usize];
    let refused = follower.brokerctl(&["transfer_leadership"]).await;
    assert!(!refused.success, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains(&format!("node {to} leads the metadata group")),
        "{refused:?}"
    );

    // A leader that stops hands over first: the others have a leader at once, without waiting out
    // an election timeout (at least 1 s after the last heartbeat).
    brokers[(to - 1) as usize].take().unwrap().stop().await;
    let left: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let stopped = tokio::time::Instant::now();
    let next = agreed_leader_other_than(&left, Some(to)).await;
    assert!(
        // An election could not start before the 1 s election timeout.
        stopped.elapsed() < Duration::from_millis(900),
        "node {next} led only {:?} after the old leader stopped",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn a_node_behind_a_purged_log_catches_up_from_a_snapshot() {
    let cluster = LinkCluster::new(3);
    let mut brokers = three_nodes(&cluster).await.map(Some);
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let leader = agreed_leader(&all).await;
    all[0].brokerctl(&["add_user", "early"]).await.ok();
    for b in &all {
        wait_for_user(b, "early").await;
    }
    // A follower goes down; meanwhile the others change users and vhosts, then compact their log.
    let away = leader % 3 + 1;
    let gone = brokers[(away - 1) as usize]
        .take()
        .unwrap()
        .stop_keeping_data()
        .await;
    let left: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let on_leader = left
        .iter()
        .find(|b| b.config.cluster.as_ref().map(|c| c.node_id) == Some(leader))
        .unwrap();
    on_leader.brokerctl(&["add_user", "late"]).await.ok();
    on_leader.brokerctl(&["delete_user", "early"]).await.ok();
    on_leader.brokerctl(&["add_vhost", "heat"]).await.ok();
    // Both nodes compact, so whichever leads when the follower returns has purged its log.
    for b in &left {
        let compacted = b.brokerctl(&["cluster", "snapshot"]).await.ok();
        assert!(compacted.contains("snapshot_index"), "{compacted}");
        let group = &status(b).await["groups"][0];
        assert!(group["purged_index"].as_u64().is_some(), "{group}");
    }

    // The follower's log ends before the purged entries: it is caught up by the snapshot, which
    // replaces its definitions (the deleted user goes, the new ones come).
    let back = gone.start().await;
    wait_for_user(&back, "late").await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    while user_names(&back).await.iter().any(|u| u == "early") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "early was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let vhosts = back
        .admin()
        .call(json!({"command": "list_vhosts"}))
        .await
        .unwrap();
    assert!(
        vhosts.as_array().unwrap().iter().any(|v| v == "heat"),
        "{vhosts}"
    );
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let group = status(&back).await["groups"][0].clone();
        if group["snapshot_index"].as_u64().is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up by a snapshot: {group}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_cut_off_leader_confirms_nothing_and_the_majority_goes_on() {
    let cluster = LinkCluster::new(3);
    let brokers = three_nodes(&cluster).await;
    let all: Vec<&TestBroker> = brokers.iter().collect();
    let leader = agreed_leader(&all).await;
    let old = &brokers[(leader - 1) as usize];
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let majority: Vec<&TestBroker> = brokers
        .iter()
        .filter(|b| b.config.cluster.as_ref().map(|c| c.node_id) != Some(leader))
        .collect();

    isolate(old, &others);
    // The minority (the old leader alone) never reports a change as made.
    let refused = old.brokerctl(&["add_user", "minority"]).await;
    assert!(!refused.success, "{refused:?}");
    assert!(
        refused.stderr.contains("not confirmed") || refused.stderr.contains("not made"),
        "{refused:?}"
    );
    // The majority elects a leader of its own and takes changes.
    agreed_leader_other_than(&majority, Some(leader)).await;
    majority[0].brokerctl(&["add_user", "majority"]).await.ok();
    for b in &majority {
        wait_for_user(b, "majority").await;
    }

    // Healed, the old leader follows the new one: it gets the majority's change, and the change it
    // wrote alone is gone everywhere (never committed).
    old.server.broker.cluster().unwrap().links.heal();
    agreed_leader(&all).await;
    wait_for_user(old, "majority").await;
    let mut lists = Vec::new();
    for b in &all {
        let mut users = user_names(b).await;
        users.sort();
        assert!(!users.iter().any(|u| u == "minority"), "{users:?}");
        lists.push(users);
    }
    assert!(
        lists.windows(2).all(|w| w[0] == w[1]),
        "every node lists the same users: {lists:?}"
    );
}

#[tokio::test]
async fn a_configured_vhost_deleted_through_the_group_stays_deleted_after_a_restart() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    agreed_leader(&[&b1, &b2, &b3]).await;
    b1.brokerctl(&["add_vhost", "keep"]).await.ok();
    // "/" is in every node's configuration file; deleted through the group, it must not be
    // created again by a node's own start-up seeding.
    b1.brokerctl(&["delete_vhost", "/"]).await.ok();
    let vhosts = |b: &TestBroker| {
        let admin = b.admin();
        async move {
            let list = admin.call(json!({"command": "list_vhosts"})).await.unwrap();
            let mut names: Vec<String> = list
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            names.sort();
            names
        }
    };
    let deadline = tokio::time::Instant::now() + SETTLE;
    while vhosts(&b2).await != ["keep"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            vhosts(&b2).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b2 = b2.stop_keeping_data().await.start().await;
    agreed_leader(&[&b1, &b2, &b3]).await;
    assert_eq!(vhosts(&b2).await, ["keep"]);
    // The group still takes changes, and the restarted node applies them.
    b3.brokerctl(&["add_vhost", "later"]).await.ok();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while vhosts(&b2).await != ["keep", "later"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            vhosts(&b2).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_definitions_file_imported_on_one_node_is_on_every_node() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    agreed_leader(&[&b1, &b2, &b3]).await;
    let file = b2.dir().join("defs.json");
    let doc = json!({
        "users": [{"name": "glance", "tags": "monitoring"}],
        "vhosts": [{"name": "/"}],
        "permissions": [{"user": "glance", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
        "policies": [{"vhost": "/", "name": "limit", "pattern": "^images", "apply-to": "queues",
                      "definition": {"max-length": 10}, "priority": 0}],
        "exchanges": [{"name": "glance", "vhost": "/", "type": "topic", "durable": true,
                       "auto_delete": false, "internal": false, "arguments": {}}],
        "queues": [{"name": "images", "vhost": "/", "durable": true, "auto_delete": false,
                    "arguments": {"x-queue-type": "quorum"}},
                   {"name": "images-classic", "vhost": "/", "durable": true, "auto_delete": false,
                    "arguments": {}}],
        "bindings": [{"source": "glance", "vhost": "/", "destination": "images",
                      "destination_type": "queue", "routing_key": "images.#", "arguments": {}}]
    });
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = b2
        .brokerctl(&["import_definitions", file.to_str().unwrap()])
        .await;
    assert!(out.success, "{out:?}");
    for b in [&b1, &b2, &b3] {
        wait_for_user(b, "glance").await;
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let queues: serde_json::Value =
                serde_json::from_str(&b.brokerctl(&["--format", "json", "list_queues"]).await.ok())
                    .unwrap();
            let bindings: serde_json::Value = serde_json::from_str(
                &b.brokerctl(&["--format", "json", "list_bindings"])
                    .await
                    .ok(),
            )
            .unwrap();
            let images = queues
                .as_array()
                .unwrap()
                .iter()
                .find(|q| q["name"] == "images")
                .cloned();
            let bound = bindings
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["source"] == "glance" && x["destination"] == "images");
            let classic = queues
                .as_array()
                .unwrap()
                .iter()
                .any(|q| q["name"] == "images-classic");
            if let (Some(q), true, true) = (images, bound, classic) {
                assert_eq!(
                    (q["type"].clone(), q["policy"].clone()),
                    (json!("quorum"), json!("limit"))
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {:?}: {queues} {bindings}",
                b.dir()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
