//! Revocation that cannot be turned against the broker (PROBE F4, F7, F8): a CRL must verify against
//! the CA bundle before it is used, at start and on reload (a forged one would otherwise fail every
//! handshake, a total lockout); an expired CRL is refused or warned about as configured; a reload may
//! not go back to an older CRL; every handshake refused for its certificate is in the audit log.

use std::path::{Path, PathBuf};

use warren_broker::config::Config;
use warren_broker::crl::ExpiredCrl;
use warren_broker::pki::{CertificateAuthority, ClientExtras, Validity};
use warren_broker::Server;
use warren_protocol::constants::PROTOCOL_HEADER;
use warren_tests::certs::{dev_ca, foreign_client_cert, subject};
use warren_tests::users::full_access;
use warren_tests::{Identity, RawClient, TestBroker, TIMEOUT};

fn revoking(ca: &CertificateAuthority, number: u64, serials: &[u64], validity: Validity) -> String {
    ca.revocation_list(number, serials, validity).expect("CRL")
}

fn write_crl(config: &Config, text: &str) -> PathBuf {
    let path = config.data_dir.join("crl.pem");
    std::fs::write(&path, text).expect("write CRL");
    path
}

/// A CA with the dev CA's name but its own key: what signs a forged CRL.
fn impostor() -> CertificateAuthority {
    CertificateAuthority::create("Warren dev CA").expect("impostor CA")
}

fn past() -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity {
        not_before: now - time::Duration::days(31),
        not_after: now - time::Duration::days(1),
    }
}

fn with_serial(serial: u64) -> ClientExtras {
    ClientExtras {
        subject_alt_names: Vec::new(),
        serial_number: Some(serial),
    }
}

/// True when a client with `identity` never gets an AMQP byte back.
async fn refused(broker: &TestBroker, identity: Identity) -> bool {
    let Ok(mut raw) = RawClient::connect(broker, identity).await else {
        return true;
    };
    let _ = raw.try_send(PROTOCOL_HEADER).await;
    matches!(raw.read_frame_within(TIMEOUT).await, Ok(None))
}

async fn admin_still_logs_in(broker: &TestBroker, what: &str) {
    let mut raw = RawClient::connect(broker, Identity::Admin)
        .await
        .unwrap_or_else(|e| panic!("admin's TLS handshake after {what}: {e}"));
    raw.handshake().await;
}

fn start_error(config: Config) -> String {
    match Server::new(std::sync::Arc::new(config)) {
        Ok(_) => panic!("the broker started"),
        Err(e) => format!("{e:#}"),
    }
}

fn prepared(adjust: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().expect("temporary directory");
    warren_broker::pki::DevPki::ensure(&dir.path().join("tls")).expect("dev PKI");
    let mut config = Config::dev(dir.path(), "127.0.0.1:0".parse().expect("address"));
    adjust(&mut config);
    (dir, config)
}

#[tokio::test]
async fn a_crl_not_signed_by_the_ca_is_refused_at_start_and_on_reload() {
    let (_dir, config) = prepared(|c| {
        let path = write_crl(c, &revoking(&impostor(), 1, &[], Validity::days(30)));
        c.tls.crls = vec![path];
    });
    let error = start_error(config);
    assert!(
        error.contains("signature does not verify") && error.contains("crl.pem"),
        "{error}"
    );

    let broker = TestBroker::start_with(|c| {
        let ca = dev_ca(c);
        let path = write_crl(c, &revoking(&ca, 1, &[4001], Validity::days(30)));
        c.tls.crls = vec![path];
        c.users.push(full_access("bob"));
    })
    .await;
    let revoked = broker.client_cert_with(subject("bob"), &with_serial(4001));
    assert!(refused(&broker, Identity::Cert(revoked.clone())).await);
    std::fs::write(
        broker.path("crl.pem"),
        revoking(&impostor(), 2, &[], Validity::days(30)),
    )
    .expect("write forged CRL");
    let error = broker.server.reload_tls().expect_err("a forged CRL");
    assert!(
        error.to_string().contains("signature does not verify"),
        "{error}"
    );
    // The running configuration stays: nobody is locked out, the revocation still holds.
    admin_still_logs_in(&broker, "a refused forged CRL").await;
    assert!(refused(&broker, Identity::Cert(revoked)).await);
}

#[tokio::test]
async fn an_expired_crl_is_refused_or_warned_about_as_configured() {
    let (_dir, config) = prepared(|c| {
        let ca = dev_ca(c);
        let path = write_crl(c, &revoking(&ca, 1, &[5001], past()));
        c.tls.crls = vec![path];
        c.tls.crl_expired = ExpiredCrl::Refuse;
    });
    let error = start_error(config);
    assert!(error.contains("expired"), "{error}");

    // "warn": it is used (its revocations hold) and the broker starts.
    let broker = TestBroker::start_with(|c| {
        let ca = dev_ca(c);
        let path = write_crl(c, &revoking(&ca, 1, &[5001], past()));
        c.tls.crls = vec![path];
        c.tls.crl_expired = ExpiredCrl::Warn;
        c.users.push(full_access("bob"));
    })
    .await;
    let revoked = broker.client_cert_with(subject("bob"), &with_serial(5001));
    assert!(refused(&broker, Identity::Cert(revoked)).await);
    admin_still_logs_in(&broker, "an expired CRL under warn").await;
}

#[tokio::test]
async fn a_reload_cannot_roll_back_to_an_older_crl() {
    let broker = TestBroker::start_with(|c| {
        let ca = dev_ca(c);
        let path = write_crl(c, &revoking(&ca, 5, &[6001], Validity::days(30)));
        c.tls.crls = vec![path];
        c.users.push(full_access("bob"));
    })
    .await;
    let ca = dev_ca(&broker.config);
    let revoked = broker.client_cert_with(subject("bob"), &with_serial(6001));
    // An older CRL, validly signed, from before bob's certificate was revoked.
    std::fs::write(
        broker.path("crl.pem"),
        revoking(&ca, 4, &[], Validity::days(30)),
    )
    .expect("write older CRL");
    let error = broker.server.reload_tls().expect_err("an older CRL");
    assert!(error.to_string().contains("lower than"), "{error}");
    assert!(refused(&broker, Identity::Cert(revoked.clone())).await);
    // Nor can a restart: the number in force is kept in the data directory (the CRL check comes
    // before the data directory's lock, so this start fails on the CRL alone).
    let error = start_error((*broker.config).clone());
    assert!(error.contains("lower than"), "{error}");

    // A newer one is taken.
    std::fs::write(
        broker.path("crl.pem"),
        revoking(&ca, 6, &[6001, 6002], Validity::days(30)),
    )
    .expect("write newer CRL");
    broker.server.reload_tls().expect("a newer CRL");
    assert!(refused(&broker, Identity::Cert(revoked)).await);
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[tokio::test]
async fn handshakes_refused_for_their_certificate_are_audited() {
    let broker = TestBroker::start_with(|c| {
        let ca = dev_ca(c);
        let path = write_crl(c, &revoking(&ca, 1, &[7001], Validity::days(30)));
        c.tls.crls = vec![path];
        c.users.push(full_access("bob"));
    })
    .await;
    let revoked = broker.client_cert_with(subject("bob"), &with_serial(7001));
    assert!(refused(&broker, Identity::Cert(revoked)).await);
    assert!(refused(&broker, Identity::Cert(foreign_client_cert("bob"))).await);
    assert!(refused(&broker, Identity::None).await);
    let audit = std::path::PathBuf::from(&broker.config.audit.path);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let tls_failures = loop {
        let found: Vec<String> = audit_lines(&audit)
            .into_iter()
            .filter(|l| l["action"] == "tls handshake" && l["result"] == "failure")
            .map(|l| l["detail"].as_str().unwrap_or_default().to_string())
            .collect();
        if found.len() >= 3 || tokio::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(tls_failures.len(), 3, "{tls_failures:?}");
    let all = tls_failures.join(" | ");
    assert!(all.contains("Revoked"), "{all}");
    assert!(
        all.contains("UnknownIssuer") || all.contains("BadSignature"),
        "{all}"
    );
    assert!(all.contains("no certificates"), "{all}");
}
