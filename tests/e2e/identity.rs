//! Which part of the client certificate is the user (`[auth] cert_login_from`): the CN (default, a
//! certificate without one is refused), the whole subject DN, or a subject alternative name of a
//! given type and index. The identity a connection got is what `x-warren-publisher` carries.

use warren_broker::config::Config;
use warren_broker::identity::{CertLoginFrom, SanType};
use warren_broker::pki::{ClientExtras, ClientSan, Pem};
use warren_tests::certs::subject;
use warren_tests::users::full_access;
use warren_tests::{Client, CloseInfo, Identity, RawClient, TestBroker, Tuning};

const LOGIN_REFUSED: &str = "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.";

/// Connects with `pem` (amqprs, EXTERNAL); the identity the broker gave the connection is the
/// `x-warren-publisher` of a message it publishes (to a queue that asks for it).
async fn identity_of(broker: &TestBroker, label: &str, pem: &Pem) -> String {
    let (cert, key) = broker.write_pem(label, pem);
    let client: Client = broker
        .connect_as(&cert, &key, None)
        .await
        .unwrap_or_else(|e| panic!("{label} connects: {e}"));
    let ch = client.channel().await;
    let queue = ch.declare_queue_showing_publisher("").await;
    ch.publish("", &queue, b"who am I").await;
    let got = ch.get(&queue, true).await.expect("the message");
    client.close().await;
    got.header("x-warren-publisher")
        .expect("an x-warren-publisher header")
}

/// Asserts a certificate is accepted by TLS but its login is refused with 403.
async fn login_refused(broker: &TestBroker, pem: Pem) {
    let mut raw = RawClient::connect(broker, Identity::Cert(pem))
        .await
        .expect("TLS accepts a certificate from the broker's CA");
    assert_eq!(
        raw.try_handshake(&Tuning::default()).await.unwrap_err(),
        CloseInfo::new(403, LOGIN_REFUSED, 0, 0)
    );
    raw.expect_eof().await;
}

fn san_login(c: &mut Config, san_type: SanType, index: usize) {
    c.auth.cert_login_from = CertLoginFrom::SubjectAlternativeName;
    c.auth.cert_login_san_type = san_type;
    c.auth.cert_login_san_index = index;
}

fn with_sans(sans: Vec<ClientSan>) -> ClientExtras {
    ClientExtras {
        subject_alt_names: sans,
        serial_number: None,
    }
}

#[tokio::test]
async fn the_common_name_is_the_user_by_default() {
    let broker = TestBroker::start_with(|c| c.users.push(full_access("bob"))).await;
    assert_eq!(
        identity_of(&broker, "bob", &broker.client_cert("bob")).await,
        "bob"
    );
}

#[tokio::test]
async fn a_certificate_without_a_cn_is_refused_under_common_name() {
    let broker = TestBroker::start().await;
    login_refused(&broker, broker.client_cert_without_cn()).await;
    // A certificate whose only name is a SAN is no better.
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "Warren");
    let san_only =
        broker.client_cert_with(dn, &with_sans(vec![ClientSan::Dns("admin".to_string())]));
    login_refused(&broker, san_only).await;
}

#[tokio::test]
async fn distinguished_name_makes_the_whole_subject_the_user() {
    let broker = TestBroker::start_with(|c| {
        c.auth.cert_login_from = CertLoginFrom::DistinguishedName;
        c.users.push(full_access("CN=bob,O=Warren"));
        c.users.push(full_access("CN=bob\\, jr,O=Warren"));
        // A user named by CN only no longer matches anything.
        c.users.push(full_access("carol"));
    })
    .await;
    assert_eq!(
        identity_of(&broker, "bob", &broker.client_cert("bob")).await,
        "CN=bob,O=Warren"
    );
    // RFC 4514 escaping of special characters in a value.
    assert_eq!(
        identity_of(&broker, "bob-jr", &broker.client_cert("bob, jr")).await,
        "CN=bob\\, jr,O=Warren"
    );
    login_refused(&broker, broker.client_cert("carol")).await;
    // The dev admin certificate's DN is not a configured user either.
    login_refused(&broker, broker.admin_cert()).await;
}

#[tokio::test]
async fn an_email_subject_alternative_name_is_the_user() {
    let broker = TestBroker::start_with(|c| {
        san_login(c, SanType::Email, 0);
        c.users.push(full_access("bob@example.com"));
        c.users.push(full_access("cn-only"));
    })
    .await;
    let bob = broker.client_cert_with(
        subject("not-the-user"),
        &with_sans(vec![
            ClientSan::Dns("bob.example".to_string()),
            ClientSan::Email("bob@example.com".to_string()),
        ]),
    );
    assert_eq!(identity_of(&broker, "bob", &bob).await, "bob@example.com");
    // No email SAN at all: refused, even though the CN is a configured user.
    login_refused(&broker, broker.client_cert("cn-only")).await;
    let dns_only = broker.client_cert_with(
        subject("cn-only"),
        &with_sans(vec![ClientSan::Dns("bob@example.com".to_string())]),
    );
    login_refused(&broker, dns_only).await;
}

#[tokio::test]
async fn a_uri_subject_alternative_name_is_the_user() {
    let broker = TestBroker::start_with(|c| {
        san_login(c, SanType::Uri, 0);
        c.users.push(full_access("spiffe://warren.example/nova"));
    })
    .await;
    let nova = broker.client_cert_with(
        subject("nova"),
        &with_sans(vec![
            ClientSan::Email("nova@example.com".to_string()),
            ClientSan::Uri("spiffe://warren.example/nova".to_string()),
        ]),
    );
    assert_eq!(
        identity_of(&broker, "nova", &nova).await,
        "spiffe://warren.example/nova"
    );
    login_refused(
        &broker,
        broker.client_cert_with(
            subject("spiffe://warren.example/nova"),
            &with_sans(vec![ClientSan::Dns("nova.example".to_string())]),
        ),
    )
    .await;
}

#[tokio::test]
async fn the_san_index_counts_names_of_the_chosen_type_only() {
    let broker = TestBroker::start_with(|c| {
        san_login(c, SanType::Dns, 1);
        c.users.push(full_access("second.example"));
        c.users.push(full_access("first.example"));
    })
    .await;
    let two = broker.client_cert_with(
        subject("cn"),
        &with_sans(vec![
            ClientSan::Dns("first.example".to_string()),
            ClientSan::Email("between@example.com".to_string()),
            ClientSan::Dns("second.example".to_string()),
        ]),
    );
    assert_eq!(identity_of(&broker, "two", &two).await, "second.example");
    // Only one DNS name: there is no index 1.
    let one = broker.client_cert_with(
        subject("first.example"),
        &with_sans(vec![ClientSan::Dns("first.example".to_string())]),
    );
    login_refused(&broker, one).await;
}

/// PROBE F12: invisible characters (a bidirectional override, a line separator, a zero-width space)
/// in a certificate's name are refused like control characters, and brokerctl cannot create such a
/// user or vhost: "admin\u{202e}" must never pass for a user an operator reads as "admin".
#[tokio::test]
async fn names_with_invisible_characters_are_refused() {
    let broker = TestBroker::start().await;
    for cn in ["admin\u{202e}", "ad\u{2028}min", "ad\u{200b}min"] {
        login_refused(&broker, broker.client_cert(cn)).await;
    }
    let admin = broker.admin();
    for (command, name) in [
        ("add_user", "ev\u{202e}il"),
        ("add_user", "a\u{2029}b"),
        ("add_vhost", "v\u{feff}"),
    ] {
        let refused = admin
            .call(serde_json::json!({"command": command, "name": name}))
            .await
            .expect_err("an invisible character is refused");
        assert!(
            refused.contains("invisible"),
            "{command} {name:?}: {refused}"
        );
    }
}
