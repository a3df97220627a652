//! What stands in front of AMQP: the source-address allowlist and the caps on connections that have
//! not finished negotiating (both checked before any TLS work), certificate revocation lists, reloading
//! TLS material without dropping connections, and the refusal to start with a readable key file.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use warren_broker::config::Config;
use warren_broker::pki::{write_pair, ClientExtras, DevPki};
use warren_broker::Server;
use warren_protocol::constants::PROTOCOL_HEADER;
use warren_tests::certs::{dev_ca, subject};
use warren_tests::raw::{queue_declare, tcp_connect};
use warren_tests::users::full_access;
use warren_tests::{Identity, RawClient, TestBroker, QUIET, TIMEOUT};

const OTHER_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Long enough that a connection closed within [`TIMEOUT`] was closed at once, not timed out.
const SLOW_TLS_TIMEOUT_MS: u64 = 60_000;

/// Whether the broker closes a bare TCP connection within [`TIMEOUT`]; it must send nothing first.
async fn closed_without_a_byte(tcp: &mut TcpStream) -> bool {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(TIMEOUT, async {
        let mut buf = [0u8; 512];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    assert!(received.is_empty(), "the broker sent {received:?}");
    closed
}

/// Asserts the broker keeps a bare TCP connection open (waiting for a TLS ClientHello) for [`QUIET`].
async fn assert_still_open(tcp: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 16];
    if let Ok(read) = tokio::time::timeout(QUIET, tcp.read(&mut buf)).await {
        panic!("{what} was closed or answered: {read:?}");
    }
}

/// A full AMQP handshake as `admin` from `source` (None: 127.0.0.1); panics if refused.
async fn amqp_client_from(broker: &TestBroker, source: Option<IpAddr>) -> RawClient {
    let mut raw = match source {
        Some(ip) => RawClient::connect_from(broker, Identity::Admin, ip).await,
        None => RawClient::connect(broker, Identity::Admin).await,
    }
    .expect("TLS handshake");
    raw.handshake().await;
    raw
}

/// Asserts a client with `identity` gets no AMQP byte: the TLS handshake fails, or (TLS 1.3 checks
/// the client certificate after the client's side of the handshake) the connection closes first.
async fn assert_never_reaches_amqp(broker: &TestBroker, identity: Identity, what: &str) {
    if let Ok(mut raw) = RawClient::connect(broker, identity).await {
        let _ = raw.try_send(PROTOCOL_HEADER).await;
        match raw.read_frame_within(TIMEOUT).await {
            Ok(None) => {}
            Ok(Some(frame)) => panic!(
                "{what} reached AMQP: the broker answered the protocol header with a {:?} frame on channel {}",
                frame.kind, frame.channel
            ),
            Err(()) => panic!("{what}: the broker neither closed the connection nor answered"),
        }
    }
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[tokio::test]
async fn sources_outside_the_allowlist_never_get_a_tls_handshake() {
    let broker = TestBroker::start_with(|c| {
        c.network.allow = vec!["127.0.0.2/32".parse().expect("CIDR")];
        c.limits.tls_handshake_timeout_ms = SLOW_TLS_TIMEOUT_MS;
    })
    .await;

    let mut tcp = tcp_connect(broker.port, None).await.expect("TCP connect");
    assert!(
        closed_without_a_byte(&mut tcp).await,
        "a connection from 127.0.0.1 was kept open"
    );
    assert!(
        RawClient::connect(&broker, Identity::Admin).await.is_err(),
        "a TLS handshake from 127.0.0.1 completed"
    );
    assert!(broker
        .connect_as(&broker.pki.admin_cert, &broker.pki.admin_key, None)
        .await
        .is_err());

    let mut allowed = amqp_client_from(&broker, Some(OTHER_SOURCE)).await;
    allowed
        .attempt(queue_declare("from-127.0.0.2"))
        .await
        .expect("an allowed source gets full service");
    let mut idle = tcp_connect(broker.port, Some(OTHER_SOURCE))
        .await
        .expect("TCP connect");
    assert_still_open(&mut idle, "an idle connection from 127.0.0.2").await;
}

#[tokio::test]
async fn pending_connections_are_capped_and_a_finished_handshake_frees_its_slot() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_pending_connections = 2;
        c.limits.tls_handshake_timeout_ms = SLOW_TLS_TIMEOUT_MS;
    })
    .await;
    let mut idle1 = tcp_connect(broker.port, None).await.expect("TCP");
    // Two clients negotiate in turn while idle1 holds one slot: the second only gets a slot if the
    // first one's was freed at connection.open-ok.
    let mut first = amqp_client_from(&broker, None).await;
    let mut second = amqp_client_from(&broker, None).await;

    let mut idle2 = tcp_connect(broker.port, None).await.expect("TCP");
    let mut idle3 = tcp_connect(broker.port, None).await.expect("TCP");
    assert!(
        closed_without_a_byte(&mut idle3).await,
        "a third pending connection was kept open over max_pending_connections = 2"
    );
    assert_still_open(&mut idle1, "the first pending connection").await;
    assert_still_open(&mut idle2, "the second pending connection").await;
    // Connections past negotiation are unaffected by the cap.
    for raw in [&mut first, &mut second] {
        raw.attempt(queue_declare("q")).await.expect("still served");
    }

    // A pending connection that goes away frees its slot.
    drop(idle1);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut next = tcp_connect(broker.port, None).await.expect("TCP");
        let mut buf = [0u8; 1];
        match tokio::time::timeout(QUIET, next.read(&mut buf)).await {
            Err(_) => break,
            Ok(_) if tokio::time::Instant::now() < deadline => continue,
            Ok(read) => panic!("a slot was not freed when idle1 closed: {read:?}"),
        }
    }
}

#[tokio::test]
async fn a_tls_client_that_has_not_opened_a_connection_keeps_its_pending_slot() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_pending_connections = 1;
        c.limits.tls_handshake_timeout_ms = SLOW_TLS_TIMEOUT_MS;
    })
    .await;
    // TLS done, AMQP not yet: still unauthenticated, so still pending.
    let mut silent = broker.raw().await;
    let mut next = tcp_connect(broker.port, None).await.expect("TCP");
    assert!(
        closed_without_a_byte(&mut next).await,
        "a second pending connection was kept open over max_pending_connections = 1"
    );
    silent.handshake().await;
    // Now negotiated, it no longer counts.
    let mut after = amqp_client_from(&broker, None).await;
    after
        .attempt(queue_declare("q"))
        .await
        .expect("served once the slot is free");
}

#[tokio::test]
async fn pending_connections_are_capped_per_source_address() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_pending_per_ip = 2;
        c.limits.tls_handshake_timeout_ms = SLOW_TLS_TIMEOUT_MS;
    })
    .await;
    let mut idle1 = tcp_connect(broker.port, None).await.expect("TCP");
    let mut idle2 = tcp_connect(broker.port, None).await.expect("TCP");
    let mut idle3 = tcp_connect(broker.port, None).await.expect("TCP");
    assert!(
        closed_without_a_byte(&mut idle3).await,
        "a third pending connection from 127.0.0.1 was kept open over max_pending_per_ip = 2"
    );
    assert_still_open(&mut idle1, "the first pending connection").await;
    assert_still_open(&mut idle2, "the second pending connection").await;
    // Another source address has its own allowance.
    let mut other = amqp_client_from(&broker, Some(OTHER_SOURCE)).await;
    other
        .attempt(queue_declare("q"))
        .await
        .expect("127.0.0.2 is served");
}

#[tokio::test]
async fn a_revoked_client_certificate_fails_the_tls_handshake() {
    let broker = TestBroker::start_with(|c| {
        let crl = c.data_dir.join("revoked.crl.pem");
        let ca = dev_ca(c);
        let list = ca
            .revocation_list(1, &[1001], warren_broker::pki::Validity::days(1))
            .expect("CRL");
        std::fs::write(&crl, list).expect("write CRL");
        c.tls.crls = vec![crl];
        c.users.push(full_access("bob"));
        c.users.push(full_access("carol"));
    })
    .await;
    let serial = |n| ClientExtras {
        subject_alt_names: Vec::new(),
        serial_number: Some(n),
    };
    let revoked_bob = broker.client_cert_with(subject("bob"), &serial(1001));
    let carol = broker.client_cert_with(subject("carol"), &serial(1002));

    assert_never_reaches_amqp(
        &broker,
        Identity::Cert(revoked_bob.clone()),
        "a revoked certificate",
    )
    .await;
    let (cert, key) = broker.write_pem("revoked-bob", &revoked_bob);
    assert!(broker.connect_as(&cert, &key, None).await.is_err());

    // Other certificates, including a new one for the same user, are unaffected.
    let (cert, key) = broker.write_pem("carol", &carol);
    let client = broker.connect_as(&cert, &key, None).await.expect("carol");
    client.close().await;
    let new_bob = broker.client_cert_with(subject("bob"), &serial(1003));
    let mut raw = RawClient::connect(&broker, Identity::Cert(new_bob))
        .await
        .expect("TLS");
    raw.handshake().await;
    broker.connect().await.close().await;
}

#[tokio::test]
async fn a_reload_applies_new_tls_material_to_new_connections_only() {
    let broker = TestBroker::start_with(|c| {
        let crl = c.data_dir.join("crl.pem");
        let ca = dev_ca(c);
        let empty = ca
            .revocation_list(1, &[], warren_broker::pki::Validity::days(1))
            .expect("CRL");
        std::fs::write(&crl, empty).expect("write CRL");
        c.tls.crls = vec![crl];
        c.users.push(full_access("bob"));
    })
    .await;
    let bob_pem = broker.client_cert_with(
        subject("bob"),
        &ClientExtras {
            subject_alt_names: Vec::new(),
            serial_number: Some(2001),
        },
    );
    // bob is connected twice before the reload: raw, and as an application.
    let mut raw_bob = RawClient::connect(&broker, Identity::Cert(bob_pem.clone()))
        .await
        .expect("TLS");
    raw_bob.handshake().await;
    let (cert, key) = broker.write_pem("bob", &bob_pem);
    let app_bob = broker.connect_as(&cert, &key, None).await.expect("bob");
    let app_ch = app_bob.channel().await;
    let old_server = raw_bob.server_certificate();
    assert_eq!(
        old_server,
        der(&std::fs::read_to_string(&broker.pki.server_cert).expect("server.pem"))
    );

    let new_server = broker.server_cert();
    write_pair(&broker.pki.server_cert, &broker.pki.server_key, &new_server).expect("write");
    std::fs::write(broker.path("crl.pem"), broker.revocation_list(2, &[2001])).expect("CRL");
    broker.server.reload_tls().expect("reload");

    let mut fresh = broker.raw().await;
    assert_eq!(
        fresh.server_certificate(),
        der(&new_server.cert),
        "a new connection still sees the old server certificate"
    );
    fresh.handshake().await;
    assert_never_reaches_amqp(
        &broker,
        Identity::Cert(bob_pem.clone()),
        "a certificate revoked by the reloaded CRL",
    )
    .await;

    // The connections opened before the reload carry on.
    raw_bob
        .attempt(queue_declare("before-reload"))
        .await
        .expect("the raw connection still works");
    app_ch.declare_queue("app").await;
    app_ch.publish("", "app", b"still here").await;
    assert_eq!(
        app_ch.get("app", true).await.expect("a message").body,
        b"still here"
    );
    app_bob.close().await;
}

#[tokio::test]
async fn a_failed_reload_keeps_the_running_configuration() {
    let broker = TestBroker::start_with(|c| {
        let crl = c.data_dir.join("crl.pem");
        let ca = dev_ca(c);
        let list = ca
            .revocation_list(1, &[3001], warren_broker::pki::Validity::days(1))
            .expect("CRL");
        std::fs::write(&crl, list).expect("write CRL");
        c.tls.crls = vec![crl];
        c.users.push(full_access("bob"));
    })
    .await;
    let revoked = broker.client_cert_with(
        subject("bob"),
        &ClientExtras {
            subject_alt_names: Vec::new(),
            serial_number: Some(3001),
        },
    );
    let served = broker.raw().await.server_certificate();
    let pki = broker.pki.clone();
    let good_cert = std::fs::read_to_string(&pki.server_cert).expect("server.pem");
    let good_key = std::fs::read_to_string(&pki.server_key).expect("server.key");
    let crl_path = broker.path("crl.pem");
    let good_crl = std::fs::read_to_string(&crl_path).expect("crl.pem");

    let assert_unchanged = |what: &'static str| {
        let broker = &broker;
        let revoked = revoked.clone();
        let served = served.clone();
        async move {
            let mut raw = broker.raw().await;
            assert_eq!(raw.server_certificate(), served, "after {what}");
            raw.handshake().await;
            let label = format!("a revoked certificate, after {what},");
            assert_never_reaches_amqp(broker, Identity::Cert(revoked), &label).await;
        }
    };

    // A server certificate file that holds no certificate.
    std::fs::write(&pki.server_cert, "not a certificate\n").expect("write");
    let error = broker.server.reload_tls().expect_err("reload of garbage");
    assert!(
        error
            .to_string()
            .contains(&pki.server_cert.display().to_string()),
        "{error}"
    );
    assert_unchanged("a broken server.pem").await;
    std::fs::write(&pki.server_cert, &good_cert).expect("restore");

    // A key other users can read.
    std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let error = broker
        .server
        .reload_tls()
        .expect_err("reload of a 0644 key");
    assert!(error.to_string().contains("chmod 600"), "{error}");
    assert_unchanged("a readable key").await;
    write_private(&pki.server_key, &good_key);

    // A CRL file that holds no CRL must not silently switch revocation off.
    std::fs::write(&crl_path, "not a CRL\n").expect("write");
    let reloaded = broker.server.reload_tls();
    // Whatever the reload answered, revocation must still be in force.
    assert_unchanged("a reload with a CRL file holding no CRL").await;
    let error = reloaded.expect_err("a reload with a CRL file holding no CRL succeeded");
    assert!(
        error.to_string().contains(&crl_path.display().to_string()),
        "the error names the CRL file: {error}"
    );
    std::fs::write(&crl_path, &good_crl).expect("restore");
    broker
        .server
        .reload_tls()
        .expect("reload of the good files");
    assert_unchanged("restoring the files").await;
}

/// A dev data directory ready for `Server::new`, with `adjust` applied to its configuration.
fn prepared(adjust: impl FnOnce(&DevPki, &mut Config)) -> (tempfile::TempDir, Arc<Config>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (pki, _) = DevPki::ensure(&dir.path().join("tls")).expect("dev PKI");
    let mut config = Config::dev(dir.path(), "127.0.0.1:0".parse().expect("address"));
    adjust(&pki, &mut config);
    config.validate().expect("valid configuration");
    (dir, Arc::new(config))
}

fn start_error(config: Arc<Config>) -> String {
    match Server::new(config) {
        Ok(_) => panic!("the broker started"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn the_broker_refuses_to_start_with_a_key_others_can_read() {
    let mut key = None;
    let (_dir, config) = prepared(|pki, _| {
        std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        key = Some(pki.server_key.clone());
    });
    let key = key.expect("key path").display().to_string();
    let error = start_error(config);
    assert!(
        error.contains(&key) && error.contains("chmod 600"),
        "the refusal must name {key} and `chmod 600`: {error}"
    );
}

#[tokio::test]
async fn the_broker_refuses_to_start_with_a_crl_file_holding_no_crl() {
    let (dir, config) = prepared(|_, c| {
        let crl = c.data_dir.join("crl.pem");
        std::fs::write(&crl, "not a CRL\n").expect("write");
        c.tls.crls = vec![crl];
    });
    let error = start_error(config);
    let crl = dir.path().join("crl.pem").display().to_string();
    assert!(error.contains(&crl), "the refusal must name {crl}: {error}");
}

#[tokio::test]
async fn a_flood_of_idle_tcp_and_tls_connections_does_not_stop_an_open_client_publishing() {
    let broker = TestBroker::start_with(|c| {
        c.limits.max_pending_connections = 16;
        c.limits.max_pending_per_ip = 8;
        c.limits.tls_handshake_timeout_ms = SLOW_TLS_TIMEOUT_MS;
    })
    .await;
    let mut publisher = broker.raw_open().await;
    publisher.open_channel(1).await;
    publisher.call(1, queue_declare("flooded")).await;
    publisher.call(1, warren_tests::raw::confirm_select()).await;

    // The flood: idle TCP connections and TLS sessions that never speak AMQP, far past the caps.
    let mut idle = Vec::new();
    for _ in 0..40 {
        if let Ok(tcp) = tcp_connect(broker.port, None).await {
            idle.push(tcp);
        }
    }
    let mut silent_tls = Vec::new();
    for _ in 0..4 {
        if let Ok(raw) = RawClient::connect(&broker, Identity::Admin).await {
            silent_tls.push(raw);
        }
    }

    // The negotiated client is not a pending connection: it keeps publishing and getting confirms.
    for _ in 0..100 {
        publisher
            .publish(1, "", "flooded", false, &[0, 0], b"still here")
            .await;
    }
    let mut confirmed = 0;
    while confirmed < 100 {
        match publisher.expect_method(1).await {
            amq_protocol::protocol::AMQPClass::Basic(
                amq_protocol::protocol::basic::AMQPMethod::Ack(ack),
            ) => {
                confirmed = ack.delivery_tag;
            }
            other => panic!("expected publisher confirms, got {other:?}"),
        }
    }
    // The flood is still held at the cap: one more idle connection is closed at once.
    let mut one_more = tcp_connect(broker.port, None).await.expect("TCP");
    assert!(
        closed_without_a_byte(&mut one_more).await,
        "an idle connection past max_pending_per_ip was kept open during the flood"
    );
    drop((idle, silent_tls));
}
