//! Node links (HA.md HA10): nodes link up over mutual TLS 1.3 and find each other again after a
//! restart, and everything that is not a configured node of this cluster is refused on the node
//! port before a single cluster message is read: plaintext, a user's client certificate, a node
//! certificate from another CA, an expired or revoked one, a node name that is not a peer, a peer
//! without the node-link protocol, a hello from another cluster or under another node's id, and (on
//! the dialling side) a peer whose certificate does not name the address dialled. A node certificate
//! is no login on the AMQP port either.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use warren_broker::pki::Validity;
use warren_tests::cluster::{wait_for_link, LinkCluster};
use warren_tests::{CloseInfo, Identity, RawClient, TestBroker, Tuning, TIMEOUT};

const UP: Duration = Duration::from_secs(15);

/// Everything the node sends until it closes the connection (bounded by [`TIMEOUT`]); a TLS error
/// ends it as a close does.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await {
            Err(_) => panic!("the node kept the refused connection open (got {got:?})"),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Node 1, the refusing side, running alone.
async fn lone_node() -> (
    LinkCluster,
    std::sync::Arc<warren_broker::cluster::link::Links>,
) {
    let cluster = LinkCluster::new(3);
    let node = cluster.start(1).await;
    (cluster, node)
}

/// Dials node 1 with `identity`, sends the hello of node 2, and asserts the node answers nothing
/// and closes; node 1 links nobody.
async fn refused_before_any_message(
    cluster: &LinkCluster,
    node: &warren_broker::cluster::link::Links,
    identity: &warren_broker::pki::Pem,
    alpn: bool,
) {
    if let Ok(mut stream) = cluster.dial(1, Some(identity), alpn).await {
        let _ = stream.write_all(&cluster.hello(2)).await;
        let answer = read_until_closed(&mut stream).await;
        assert!(
            answer.is_empty(),
            "the node answered a refused peer: {answer:?}"
        );
    }
    assert!(node.status().iter().all(|p| !p.connected));
}

#[tokio::test]
async fn three_nodes_link_up_and_a_restarted_node_is_linked_again() {
    let cluster = LinkCluster::new(3);
    let n1 = cluster.start(1).await;
    let n2 = cluster.start(2).await;
    let n3 = cluster.start(3).await;
    for (node, others) in [(&n1, [2, 3]), (&n2, [1, 3]), (&n3, [1, 2])] {
        for id in others {
            wait_for_link(node, id, true, UP).await;
        }
    }
    // Pings measure the round trip.
    let deadline = tokio::time::Instant::now() + UP;
    while n1.status().iter().any(|p| p.rtt_us.is_none()) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", n1.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_run = wait_for_link(&n1, 2, true, UP).await.incarnation;

    n2.stop();
    let down = wait_for_link(&n1, 2, false, UP).await;
    assert!(down.last_error.is_some(), "{down:?}");
    wait_for_link(&n3, 2, false, UP).await;

    let n2 = cluster.start(2).await;
    let again = wait_for_link(&n1, 2, true, UP).await;
    assert_ne!(
        again.incarnation, first_run,
        "a restarted node is a new run"
    );
    wait_for_link(&n2, 3, true, UP).await;
    wait_for_link(&n3, 2, true, UP).await;
    for node in [n1, n2, n3] {
        node.stop();
    }
}

/// The raw dialler is welcomed when it is node 2 (so the refusals below can fail).
#[tokio::test]
async fn a_configured_node_is_welcomed() {
    let (cluster, node) = lone_node().await;
    let mut stream = cluster
        .dial(1, Some(&cluster.node_cert("n2", &["127.0.0.1"])), true)
        .await
        .expect("TLS");
    stream.write_all(&cluster.hello(2)).await.unwrap();
    let mut answer = vec![0u8; 29 + 5];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer[..4], b"WRNL", "node 1's hello");
    assert_eq!(&answer[29..], &[0, 0, 0, 1, 1], "a welcome frame");
    wait_for_link(&node, 2, true, UP).await;
    node.stop();
}

#[tokio::test]
async fn plaintext_is_refused() {
    let (cluster, node) = lone_node().await;
    let mut tcp = tokio::net::TcpStream::connect(cluster.peers[0].addr)
        .await
        .unwrap();
    tcp.write_all(&cluster.hello(2)).await.unwrap();
    let answer = read_until_closed(&mut tcp).await;
    assert!(
        !answer.windows(4).any(|w| w == b"WRNL"),
        "no hello for plaintext: {answer:?}"
    );
    assert!(node.status().iter().all(|p| !p.connected));
    node.stop();
}

#[tokio::test]
async fn a_user_client_certificate_cannot_join() {
    let (cluster, node) = lone_node().await;
    // From the node CA itself, with the name of a peer: still a user's certificate (clientAuth only,
    // no node marker).
    let user = cluster.ca.issue_client("n2", Validity::days(1)).unwrap();
    refused_before_any_message(&cluster, &node, &user, true).await;
    node.stop();
}

#[tokio::test]
async fn a_node_certificate_from_another_ca_is_refused() {
    let (cluster, node) = lone_node().await;
    let foreign = warren_broker::pki::CertificateAuthority::create("Foreign CA")
        .unwrap()
        .issue_node("n2", &["127.0.0.1"], Validity::days(1))
        .unwrap();
    refused_before_any_message(&cluster, &node, &foreign, true).await;
    node.stop();
}

#[tokio::test]
async fn a_node_that_is_not_a_peer_is_refused() {
    let (cluster, node) = lone_node().await;
    let stranger = cluster.node_cert("n9", &["127.0.0.1"]);
    refused_before_any_message(&cluster, &node, &stranger, true).await;
    node.stop();
}

#[tokio::test]
async fn an_expired_node_certificate_is_refused() {
    let (cluster, node) = lone_node().await;
    let now = Validity::days(0);
    let day = time::Duration::days(1);
    let expired = cluster
        .ca
        .issue_node(
            "n2",
            &["127.0.0.1"],
            Validity {
                not_before: now.not_before - 10 * day,
                not_after: now.not_before - day,
            },
        )
        .unwrap();
    refused_before_any_message(&cluster, &node, &expired, true).await;
    node.stop();
}

#[tokio::test]
async fn a_revoked_node_certificate_is_refused() {
    let cluster = LinkCluster::new(3);
    let crl = cluster
        .ca
        .revocation_list(1, &[0x2222], Validity::days(1))
        .unwrap();
    std::fs::write(cluster.path("nodes.crl"), crl).unwrap();
    let mut config = cluster.config(1);
    config.tls.crls = vec![cluster.path("nodes.crl")];
    let node = warren_broker::cluster::link::Links::start(config)
        .await
        .unwrap();
    let revoked = cluster
        .ca
        .issue_node_with_serial("n2", &["127.0.0.1"], Validity::days(1), Some(0x2222))
        .unwrap();
    refused_before_any_message(&cluster, &node, &revoked, true).await;
    // The same node with a certificate that is not revoked gets in.
    let fresh = cluster
        .ca
        .issue_node_with_serial("n2", &["127.0.0.1"], Validity::days(1), Some(0x3333))
        .unwrap();
    let mut stream = cluster.dial(1, Some(&fresh), true).await.unwrap();
    stream.write_all(&cluster.hello(2)).await.unwrap();
    let mut hello = [0u8; 4];
    stream.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"WRNL");
    node.stop();
}

#[tokio::test]
async fn a_peer_without_the_node_link_protocol_is_refused() {
    let (cluster, node) = lone_node().await;
    let n2 = cluster.node_cert("n2", &["127.0.0.1"]);
    refused_before_any_message(&cluster, &node, &n2, false).await;
    node.stop();
}

/// Reads node 1's hello and the frame after it: the refusal text.
async fn refusal_after_hello(cluster: &LinkCluster, hello: &[u8]) -> String {
    let mut stream = cluster
        .dial(1, Some(&cluster.node_cert("n2", &["127.0.0.1"])), true)
        .await
        .unwrap();
    stream.write_all(hello).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert_eq!(&answer[..4], b"WRNL", "{answer:?}");
    let frame = &answer[29..];
    assert_eq!(frame[4], 2, "a refusal frame: {frame:?}");
    String::from_utf8_lossy(&frame[5..]).into_owned()
}

#[tokio::test]
async fn a_hello_from_another_cluster_or_under_another_id_is_refused_with_the_reason() {
    let (cluster, node) = lone_node().await;
    let mut other_cluster = cluster.hello(2);
    other_cluster[5] ^= 0xff;
    let why = refusal_after_hello(&cluster, &other_cluster).await;
    assert!(why.contains("cluster id"), "{why}");
    let why = refusal_after_hello(&cluster, &cluster.hello(3)).await;
    assert!(why.contains("introduced itself as node 3"), "{why}");
    assert!(node.status().iter().all(|p| !p.connected));
    node.stop();
}

#[tokio::test]
async fn a_dialled_peer_whose_certificate_does_not_name_its_address_is_refused() {
    let cluster = LinkCluster::new(2);
    // Node 2's certificate names 127.0.0.2, but node 1 dials it at 127.0.0.1.
    cluster.write("n2", &cluster.node_cert("n2", &["127.0.0.2"]));
    let n2 = cluster.start(2).await;
    let n1 = cluster.start(1).await;
    let deadline = tokio::time::Instant::now() + UP;
    let status = loop {
        let status = n1.status().remove(0);
        if status.last_error.is_some() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.connected);
    let why = status.last_error.unwrap_or_default();
    assert!(why.contains("certificate"), "{why}");
    assert!(n2.status().iter().all(|p| !p.connected));
    n1.stop();
    n2.stop();
}

#[tokio::test]
async fn a_node_certificate_cannot_log_in_over_amqp() {
    let broker = TestBroker::start().await;
    let node = broker.node_cert("admin");
    let mut raw = RawClient::connect(&broker, Identity::Cert(node))
        .await
        .expect("TLS accepts a certificate from the broker's CA");
    assert_eq!(
        raw.try_handshake(&Tuning::default()).await.unwrap_err(),
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.",
            0,
            0
        )
    );
}

#[tokio::test]
async fn brokerctl_cluster_status_lists_the_nodes_and_their_links() {
    let cluster = LinkCluster::new(3);
    let node1 = cluster.config(1);
    let broker = TestBroker::start_with(|c| c.cluster = Some(node1)).await;
    let n2 = cluster.start(2).await;
    wait_for_link(&n2, 1, true, UP).await;
    // Node 3 is down: listed, with why its link is not up.
    let deadline = tokio::time::Instant::now() + UP;
    let table = loop {
        let table = broker.brokerctl(&["cluster", "status"]).await.ok();
        if table.contains("\tup\t")
            && table
                .lines()
                .any(|l| l.starts_with("3\t") && l.contains("down"))
        {
            break table;
        }
        assert!(tokio::time::Instant::now() < deadline, "{table}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "id\tname\taddr\tlink\tmetadata\trtt_us\tlast_error"
    );
    assert!(
        lines[1].starts_with("1\tn1\t") && lines[1].contains("\tself\t"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("2\tn2\t") && lines[2].contains("\tup\t"),
        "{table}"
    );
    assert!(
        lines[3].starts_with("3\tn3\t") && lines[3].contains("\tdown\t"),
        "{table}"
    );
    let json = broker
        .brokerctl(&["--format", "json", "cluster_status"])
        .await
        .ok();
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(3), "{json}");
    // The metadata group, as this node sees it (no majority here: node 2 is a bare link peer).
    assert_eq!(status["groups"][0]["group"], "metadata", "{json}");
    assert!(lines.contains(&""), "a second table follows: {table}");
    assert!(table.contains("group\tstate\tleader\tterm"), "{table}");
    n2.stop();
}

#[tokio::test]
async fn cluster_status_on_a_single_node_says_so() {
    let broker = TestBroker::start().await;
    let out = broker.brokerctl(&["cluster", "status"]).await;
    assert!(!out.success, "{out:?}");
    assert!(out.stderr.contains("not a cluster node"), "{out:?}");
}

/// Writes the node CA's CRL number `number`, revoking `revoked`, to `nodes.crl`.
fn write_crl(cluster: &LinkCluster, revoked: &[u64], number: u64) {
    let crl = cluster
        .ca
        .revocation_list(number, revoked, Validity::days(1))
        .unwrap();
    std::fs::write(cluster.path("nodes.crl"), crl).unwrap();
}

#[tokio::test]
async fn a_node_certificate_revoked_on_reload_is_refused_from_then_on() {
    let cluster = LinkCluster::new(3);
    write_crl(&cluster, &[], 1);
    let mut config = cluster.config(1);
    config.tls.crls = vec![cluster.path("nodes.crl")];
    let node = warren_broker::cluster::link::Links::start(config)
        .await
        .unwrap();
    let n2 = cluster
        .ca
        .issue_node_with_serial("n2", &["127.0.0.1"], Validity::days(1), Some(0x4444))
        .unwrap();
    let mut stream = cluster.dial(1, Some(&n2), true).await.unwrap();
    stream.write_all(&cluster.hello(2)).await.unwrap();
    let answer = read_until_closed_or(&mut stream, 29 + 5).await;
    assert_eq!(
        &answer[29..],
        [0, 0, 0, 1, 1],
        "admitted before the revocation"
    );
    wait_for_link(&node, 2, true, UP).await;

    // Revoked in a new CRL, put in force by a reload: the link already up is dropped at once, and
    // the next link with the certificate is refused.
    write_crl(&cluster, &[0x4444], 2);
    node.reload_tls().unwrap();
    let dropped = wait_for_link(&node, 2, false, UP).await;
    let why = dropped.last_error.unwrap_or_default();
    assert!(why.contains("refused since the reload"), "{why}");
    // The node closes the revoked link (pings sent before may still arrive).
    read_until_closed(&mut stream).await;
    refused_before_any_message(&cluster, &node, &n2, true).await;
    // A reload that fails keeps what is in force.
    std::fs::write(cluster.path("nodes.crl"), "not a CRL").unwrap();
    assert!(node.reload_tls().is_err());
    refused_before_any_message(&cluster, &node, &n2, true).await;
    node.stop();
}

/// A node CRL cannot be rolled back, as a client CRL cannot: a reload refuses one older than the
/// CRL in force (a lower CRL number) and keeps the revocations in force, and so does a restart (the
/// numbers are kept in the data directory); a newer one is taken.
#[tokio::test]
async fn an_older_node_crl_is_refused_on_a_reload_and_on_a_restart() {
    let cluster = LinkCluster::new(3);
    let revoked = cluster
        .ca
        .issue_node_with_serial("n2", &["127.0.0.1"], Validity::days(1), Some(0x5555))
        .unwrap();
    write_crl(&cluster, &[0x5555], 5);
    let mut config = cluster.config(1);
    config.tls.crls = vec![cluster.path("nodes.crl")];
    let node = warren_tests::TestBroker::start_with(move |c| c.cluster = Some(config)).await;
    let links = node.server.broker.cluster().unwrap().links.clone();
    refused_before_any_message(&cluster, &links, &revoked, true).await;

    // An older CRL, validly signed, from before n2's certificate was revoked.
    write_crl(&cluster, &[], 4);
    let error = node.server.reload_tls().expect_err("an older node CRL");
    assert!(error.to_string().contains("lower than"), "{error}");
    refused_before_any_message(&cluster, &links, &revoked, true).await;
    drop(links);
    let stopped = node.stop_keeping_data().await;
    let error = stopped.start_error().await;
    assert!(error.contains("lower than"), "{error}");

    // A newer one is taken, and its revocations hold.
    write_crl(&cluster, &[0x5555, 0x5556], 6);
    let node = stopped.start().await;
    let links = node.server.broker.cluster().unwrap().links.clone();
    refused_before_any_message(&cluster, &links, &revoked, true).await;
}

/// Reads until `want` octets arrived or the node closed the connection.
async fn read_until_closed_or(stream: &mut (impl AsyncRead + Unpin), want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        match tokio::time::timeout(TIMEOUT, stream.read(&mut buf)).await {
            Err(_) => panic!("no answer from the node (got {got:?})"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[tokio::test]
async fn refused_node_links_are_audited() {
    let cluster = LinkCluster::new(3);
    let node1 = cluster.config(1);
    let broker = TestBroker::start_with(|c| c.cluster = Some(node1)).await;
    // A user's certificate (refused after TLS) and a node certificate from another CA (refused by
    // TLS itself).
    let user = cluster.ca.issue_client("n2", Validity::days(1)).unwrap();
    let foreign = warren_broker::pki::CertificateAuthority::create("Foreign CA")
        .unwrap()
        .issue_node("n3", &["127.0.0.1"], Validity::days(1))
        .unwrap();
    for pem in [&user, &foreign] {
        if let Ok(mut stream) = cluster.dial(1, Some(pem), true).await {
            let _ = stream.write_all(&cluster.hello(2)).await;
            read_until_closed(&mut stream).await;
        }
    }
    let deadline = tokio::time::Instant::now() + UP;
    let lines = loop {
        let text = std::fs::read_to_string(&broker.config.audit.path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["action"] == "node link")
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(lines
        .iter()
        .all(|l| l["kind"] == "authentication" && l["result"] == "failure"));
    let details: Vec<&str> = lines.iter().filter_map(|l| l["detail"].as_str()).collect();
    assert!(
        details.iter().any(|d| d.contains("not a node certificate")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains("invalid peer certificate")),
        "{details:?}"
    );
}
