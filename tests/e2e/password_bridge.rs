//! The optional PLAIN/AMQPLAIN bridge (`[auth] password_bridge`): a password is accepted only on top
//! of the certificate, for the certificate's own identity, and only when it matches the argon2id hash
//! set with `change_password`. Off by default, when only EXTERNAL is offered.

use amqprs::security::SecurityCredentials;
use serde_json::json;
use warren_broker::config::UserConfig;
use warren_tests::raw::{amqplain_response, plain_response, queue_declare};
use warren_tests::users::full_access;
use warren_tests::{CloseInfo, Identity, RawClient, TestBroker, Tuning};

/// argon2id hashes of `bob-secret`, `carol-secret` and `s3cret` in the broker's PHC format, with
/// small parameters (m=64 KiB, t=1) so the debug-build suite stays fast; `change_password`, which
/// hashes with the broker's own parameters, is exercised once, in
/// [`plain_logs_in_with_the_certificate_identity_and_its_password`].
const BOB_HASH: &str =
    "$argon2id$v=19$m=64,t=1,p=1$UyVP3buDlyFymGHhju0MUA$Sbb3l5xcFmNYF9QF3qNwYIxMYvDd+FK4fAB/7gTQjrM";
const CAROL_HASH: &str =
    "$argon2id$v=19$m=64,t=1,p=1$js5P/h+dQ8XsAS0kCGgiMg$zHA+xI45UOGnhbpmKN3rUThnf0I5HDKrdyxCPDTdEV8";
const S3CRET_HASH: &str =
    "$argon2id$v=19$m=64,t=1,p=1$/p06a1I8N9rdHASSQZx6Lg$+qgGDo/AasPz6Oi78ltqUccA0ZFRZEuUgd0YM/yGyj0";

fn with_password(mut user: UserConfig, hash: &str) -> UserConfig {
    user.password_hash = Some(hash.to_string());
    user
}

fn login_refused(mechanism: &str) -> CloseInfo {
    CloseInfo::new(
        403,
        &format!(
            "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
        ),
        0,
        0,
    )
}

/// A broker with the bridge on, users bob and carol with passwords and dave without one.
async fn bridged() -> TestBroker {
    TestBroker::start_with(|c| {
        c.auth.password_bridge = true;
        c.users.push(with_password(full_access("bob"), BOB_HASH));
        c.users
            .push(with_password(full_access("carol"), CAROL_HASH));
        c.users.push(full_access("dave"));
    })
    .await
}

/// Negotiates with `cert_user`'s certificate using `mechanism` and `response`.
async fn raw_login(
    broker: &TestBroker,
    cert_user: &str,
    mechanism: &str,
    response: Vec<u8>,
) -> (RawClient, Result<(), CloseInfo>) {
    let mut raw = RawClient::connect(broker, Identity::Cert(broker.client_cert(cert_user)))
        .await
        .expect("TLS handshake");
    let result = raw
        .try_handshake(&Tuning {
            mechanism: mechanism.to_string(),
            response,
            ..Tuning::default()
        })
        .await
        .map(|_| ());
    (raw, result)
}

#[tokio::test]
async fn the_bridge_offers_external_plain_and_amqplain() {
    let broker = bridged().await;
    let start = broker.raw().await.start().await;
    assert_eq!(start.mechanisms.as_bytes(), b"EXTERNAL PLAIN AMQPLAIN");
    // EXTERNAL keeps working for everyone.
    let client = broker.connect().await;
    client.close().await;
}

#[tokio::test]
async fn plain_logs_in_with_the_certificate_identity_and_its_password() {
    let broker = bridged().await;
    // The operator sets a new password; the old one stops working at once.
    broker
        .brokerctl(&["change_password", "bob", "new secret"])
        .await
        .ok();
    let (_, result) = raw_login(&broker, "bob", "PLAIN", plain_response("bob", "bob-secret")).await;
    assert_eq!(result, Err(login_refused("PLAIN")), "the old password");
    let (cert, key) = broker.user_cert_files("bob");
    let client = broker
        .connect_with(
            (&cert, &key),
            "/",
            SecurityCredentials::new_plain("bob", "new secret"),
        )
        .await
        .expect("bob logs in with PLAIN");
    let ch = client.channel().await;
    ch.declare_queue_showing_publisher("plain").await;
    ch.publish("", "plain", b"hi").await;
    let got = ch.get("plain", true).await.expect("the message");
    assert_eq!(got.header("x-warren-publisher").as_deref(), Some("bob"));
    client.close().await;
}

#[tokio::test]
async fn amqplain_logs_in_with_the_certificate_identity_and_its_password() {
    let broker = bridged().await;
    let (mut raw, result) = raw_login(
        &broker,
        "bob",
        "AMQPLAIN",
        amqplain_response("bob", "bob-secret"),
    )
    .await;
    result.expect("bob logs in with AMQPLAIN");
    raw.attempt(queue_declare("amqplain"))
        .await
        .expect("and works as bob");
    raw.close().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let broker = bridged().await;
    for (mechanism, response) in [
        ("PLAIN", plain_response("bob", "wrong")),
        ("AMQPLAIN", amqplain_response("bob", "wrong")),
        ("PLAIN", plain_response("bob", "")),
        ("PLAIN", plain_response("bob", "carol-secret")),
    ] {
        let (mut raw, result) = raw_login(&broker, "bob", mechanism, response).await;
        assert_eq!(result, Err(login_refused(mechanism)), "{mechanism}");
        raw.expect_eof().await;
    }
    let (cert, key) = broker.user_cert_files("bob");
    let app = broker
        .connect_with(
            (&cert, &key),
            "/",
            SecurityCredentials::new_plain("bob", "wrong"),
        )
        .await;
    assert!(app.is_err(), "amqprs logged in with a wrong password");
}

#[tokio::test]
async fn another_users_name_with_its_right_password_is_refused() {
    let broker = bridged().await;
    for (mechanism, response) in [
        ("PLAIN", plain_response("carol", "carol-secret")),
        ("AMQPLAIN", amqplain_response("carol", "carol-secret")),
    ] {
        let (_, result) = raw_login(&broker, "bob", mechanism, response).await;
        assert_eq!(result, Err(login_refused(mechanism)), "{mechanism}");
    }
    // carol's own certificate with the same credentials is fine.
    let (_, result) = raw_login(
        &broker,
        "carol",
        "PLAIN",
        plain_response("carol", "carol-secret"),
    )
    .await;
    result.expect("carol logs in with her own certificate");
}

#[tokio::test]
async fn a_user_without_a_password_cannot_use_the_bridge() {
    let broker = bridged().await;
    let (_, result) = raw_login(&broker, "dave", "PLAIN", plain_response("dave", "")).await;
    assert_eq!(result, Err(login_refused("PLAIN")));
    let (_, result) = raw_login(&broker, "dave", "PLAIN", plain_response("dave", "x")).await;
    assert_eq!(result, Err(login_refused("PLAIN")));

    broker
        .admin()
        .ok(json!({"command": "clear_password", "name": "bob"}))
        .await;
    let (_, result) = raw_login(&broker, "bob", "PLAIN", plain_response("bob", "bob-secret")).await;
    assert_eq!(result, Err(login_refused("PLAIN")), "after clear_password");
}

#[tokio::test]
async fn without_the_bridge_only_external_is_offered_and_plain_is_refused() {
    let broker = TestBroker::start_with(|c| {
        for user in c.users.iter_mut().filter(|u| u.name == "admin") {
            user.password_hash = Some(S3CRET_HASH.to_string());
        }
    })
    .await;
    let start = broker.raw().await.start().await;
    assert_eq!(start.mechanisms.as_bytes(), b"EXTERNAL");
    for (mechanism, response) in [
        ("PLAIN", plain_response("admin", "s3cret")),
        ("AMQPLAIN", amqplain_response("admin", "s3cret")),
    ] {
        let mut raw = broker.raw().await;
        let result = raw
            .try_handshake(&Tuning {
                mechanism: mechanism.to_string(),
                response,
                ..Tuning::default()
            })
            .await;
        assert_eq!(result.unwrap_err(), login_refused(mechanism), "{mechanism}");
    }
    let app = broker
        .connect_with(
            (&broker.pki.admin_cert, &broker.pki.admin_key),
            "/",
            SecurityCredentials::new_plain("admin", "s3cret"),
        )
        .await;
    assert!(
        app.is_err(),
        "amqprs logged in with PLAIN without the bridge"
    );
}
