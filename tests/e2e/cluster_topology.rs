//! Replicated topology (issue 13 point 3): on a cluster node, exchanges (transient ones too),
//! quorum queues and the bindings to them go through the metadata group, so what a client declares
//! on one node exists on every node, with a single node's equivalence checks and texts there; it
//! survives a node's restart, reaches a node that was away (by log or by snapshot), and a node cut
//! off from the majority refuses the change instead of making it alone.

use std::time::Duration;

use amqprs::channel::{
    ExchangeBindArguments, ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use warren_tests::cluster::{agreed_leader, isolate, three_nodes, LinkCluster, SETTLE};
use warren_tests::features::{table, text};
use warren_tests::{TestBroker, TestChannel, Timely};

fn quorum(name: &str) -> QueueDeclareArguments {
    let mut args = QueueDeclareArguments::durable_client_named(name);
    args.arguments(table([("x-queue-type", text("quorum"))]));
    args
}

fn exchange(name: &str, kind: &str, durable: bool) -> ExchangeDeclareArguments {
    let mut args = ExchangeDeclareArguments::new(name, kind);
    args.durable(durable);
    args
}

/// Declares the topology an OpenStack service declares: a durable topic exchange, a transient
/// fanout exchange bound into it, a quorum queue bound to the topic exchange.
async fn declare_service(ch: &TestChannel) {
    for args in [
        exchange("nova", "topic", true),
        exchange("nova_fanout", "fanout", false),
    ] {
        let what = format!("{args:?}");
        if let Err(e) = ch.exchange_declare(args).timely().await {
            ch.fail(&what, e).await;
        }
    }
    ch.declare(quorum("compute")).await;
    ch.queue_bind(QueueBindArguments::new("compute", "nova", "compute.#"))
        .timely()
        .await
        .expect("queue.bind");
    ch.exchange_bind(ExchangeBindArguments::new("nova", "nova_fanout", ""))
        .timely()
        .await
        .expect("exchange.bind");
}

/// What `b` holds of the service's topology: its exchanges, whether the queue is a quorum queue,
/// and the bindings out of the two exchanges (destination, key).
fn topology(b: &TestBroker) -> (Vec<String>, Option<bool>, Vec<(String, String)>) {
    let vhost = b.server.broker.vhost("/").expect("vhost /");
    let mut exchanges: Vec<String> = vhost
        .exchange_list()
        .iter()
        .map(|x| x.name().to_string())
        .filter(|n| !n.starts_with("amq."))
        .collect();
    exchanges.sort();
    let queue = vhost.find_queue("compute").map(|q| q.args.quorum);
    let mut bindings = Vec::new();
    for name in ["nova", "nova_fanout"] {
        if let Ok(x) = vhost.exchange(name) {
            for binding in x.bindings() {
                let to = match &binding.destination {
                    warren_broker::exchange::Destination::Queue(q) => q.name().to_string(),
                    warren_broker::exchange::Destination::Exchange(x) => x.to_string(),
                };
                bindings.push((to, binding.routing_key.clone()));
            }
        }
    }
    bindings.sort();
    (exchanges, queue, bindings)
}

fn full() -> (Vec<String>, Option<bool>, Vec<(String, String)>) {
    (
        vec!["nova".into(), "nova_fanout".into()],
        Some(true),
        vec![
            ("compute".into(), "compute.#".into()),
            ("nova".into(), String::new()),
        ],
    )
}

/// Waits until `b` holds `expected`.
async fn wait_for_topology(
    b: &TestBroker,
    expected: &(Vec<String>, Option<bool>, Vec<(String, String)>),
) {
    wait_for_topology_within(b, expected, SETTLE).await;
}

/// [`wait_for_topology`] within `limit`.
async fn wait_for_topology_within(
    b: &TestBroker,
    expected: &(Vec<String>, Option<bool>, Vec<(String, String)>),
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let found = topology(b);
        if &found == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node on port {} holds {found:?}, not {expected:?}",
            b.port
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn topology_declared_on_one_node_exists_on_every_node() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    agreed_leader(&[&b1, &b2, &b3]).await;
    let c1 = b1.connect().await;
    declare_service(&c1.channel().await).await;
    // Applied on the declaring node before the declare-ok, and on the others soon after.
    assert_eq!(topology(&b1), full());
    for b in [&b2, &b3] {
        wait_for_topology(b, &full()).await;
    }

    // Another node checks a redeclare against the replicated exchange and queue as a single node
    // does, with the same texts; an equivalent redeclare needs no change and is accepted.
    let c2 = b2.connect().await;
    let ch = c2.channel().await;
    let refused = ch
        .refused(
            ch.exchange_declare(exchange("nova", "direct", true))
                .timely()
                .await,
        )
        .await;
    assert_eq!(refused.code, 406, "{refused:?}");
    assert_eq!(
        refused.text,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'nova' in vhost '/': received 'direct' but current is 'topic'"
    );
    let ch = c2.channel().await;
    let classic = QueueDeclareArguments::durable_client_named("compute");
    let refused = ch
        .try_declare(classic)
        .await
        .expect_err("classic redeclare");
    assert_eq!(refused.code, 406, "{refused:?}");
    assert!(refused.text.contains("'x-queue-type'"), "{refused:?}");
    let ch = c2.channel().await;
    declare_service(&ch).await;
    assert_eq!(topology(&b2), full());

    // A restarted node keeps all of it, the transient exchange too (the cluster still has it).
    let b2 = b2.restart().await;
    wait_for_topology(&b2, &full()).await;

    // Deletions on one node hold on all: the queue with its binding, then the transient exchange
    // with its binding into nova.
    let c3 = b3.connect().await;
    let ch = c3.channel().await;
    ch.queue_delete(QueueDeleteArguments::new("compute"))
        .timely()
        .await
        .expect("queue.delete");
    ch.exchange_delete(ExchangeDeleteArguments::new("nova_fanout"))
        .timely()
        .await
        .expect("exchange.delete");
    let left = (vec!["nova".to_string()], None, vec![]);
    assert_eq!(topology(&b3), left);
    for b in [&b1, &b2] {
        wait_for_topology(b, &left).await;
    }
    for client in [c1, c2, c3] {
        client.close().await;
    }
}

#[tokio::test]
async fn a_node_away_gets_the_topology_by_snapshot_and_a_cut_off_node_refuses_changes() {
    let cluster = LinkCluster::new(3);
    let mut brokers = three_nodes(&cluster).await.map(Some);
    let all: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let leader = agreed_leader(&all).await;
    // Node `away` goes (data kept) with a topology the others then replace and compact away.
    let away = leader % 3 + 1;
    {
        let c = all[0].connect().await;
        let ch = c.channel().await;
        ch.exchange_declare(exchange("stale", "direct", true))
            .timely()
            .await
            .expect("declare stale");
        c.close().await;
    }
    for b in &all {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while b
            .server
            .broker
            .vhost("/")
            .unwrap()
            .exchange("stale")
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "stale never came");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let gone = brokers[(away - 1) as usize]
        .take()
        .unwrap()
        .stop_keeping_data()
        .await;
    let left: Vec<&TestBroker> = brokers.iter().flatten().collect();
    let c = left[0].connect().await;
    let ch = c.channel().await;
    declare_service(&ch).await;
    ch.exchange_delete(ExchangeDeleteArguments::new("stale"))
        .timely()
        .await
        .expect("delete stale");
    c.close().await;
    for b in &left {
        wait_for_topology(b, &full()).await;
        let compacted = b.brokerctl(&["cluster", "snapshot"]).await.ok();
        assert!(compacted.contains("snapshot_index"), "{compacted}");
    }

    // Back on its old data, the node is caught up from a snapshot: the deleted exchange goes,
    // the new topology comes.
    let back = gone.start().await;
    // HA8's bound for a returning node (its peers' redial back-off is up to 5 s, and the whole
    // suite runs beside it).
    wait_for_topology_within(&back, &full(), Duration::from_secs(60)).await;

    // A node cut off from the others cannot make a change alone: the client is told (541, so it
    // reconnects elsewhere), and nothing was declared there.
    let others: Vec<u64> = (1..=3).filter(|id| *id != away).collect();
    isolate(&back, &others);
    let mut c = back.connect().await;
    let ch = c.channel().await;
    let declared = ch
        .exchange_declare(exchange("lonely", "fanout", true))
        .timely()
        .await;
    assert!(declared.is_err(), "{declared:?}");
    let close = c.expect_close().await;
    assert_eq!(close.code, 541, "{close:?}");
    assert!(
        close
            .text
            .starts_with("INTERNAL_ERROR - the cluster did not make the change"),
        "{close:?}"
    );
    assert!(back
        .server
        .broker
        .vhost("/")
        .unwrap()
        .exchange("lonely")
        .is_err());
}

#[tokio::test]
async fn an_auto_delete_exchange_goes_on_every_node_with_its_last_binding() {
    let cluster = LinkCluster::new(3);
    let [b1, b2, b3] = three_nodes(&cluster).await;
    agreed_leader(&[&b1, &b2, &b3]).await;
    let c1 = b1.connect().await;
    let ch = c1.channel().await;
    // oslo's fanout exchange: transient and auto-delete; a consumer's classic queue (its home is
    // node 1) bound to it.
    let mut args = exchange("cinder_fanout", "fanout", false);
    args.auto_delete(true);
    if let Err(e) = ch.exchange_declare(args).timely().await {
        ch.fail("exchange.declare", e).await;
    }
    ch.declare(QueueDeclareArguments::new("cinder_fanout_1"))
        .await;
    if let Err(e) = ch
        .queue_bind(QueueBindArguments::new(
            "cinder_fanout_1",
            "cinder_fanout",
            "",
        ))
        .timely()
        .await
    {
        ch.fail("queue.bind", e).await;
    }
    for b in [&b2, &b3] {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while b
            .server
            .broker
            .vhost("/")
            .unwrap()
            .exchange("cinder_fanout")
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the exchange never reached a node"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The queue goes: its binding goes with it on every node, and so does the exchange (every
    // node applies the same deletions in the same order).
    if let Err(e) = ch
        .queue_delete(QueueDeleteArguments::new("cinder_fanout_1"))
        .timely()
        .await
    {
        ch.fail("queue.delete", e).await;
    }
    for b in [&b1, &b2, &b3] {
        let deadline = tokio::time::Instant::now() + SETTLE;
        while b
            .server
            .broker
            .vhost("/")
            .unwrap()
            .exchange("cinder_fanout")
            .is_ok()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node on port {} kept the exchange",
                b.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    c1.close().await;
}
