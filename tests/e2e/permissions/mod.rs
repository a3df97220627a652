//! RabbitMQ's permission table: which of configure / write / read each operation needs on which
//! resource, the exact 403 texts, unanchored patterns, vhost access at connection.open, and topic
//! permissions on routing keys. Users come from the configuration; the `admin` connection sets up
//! what a restricted user must not create itself.

mod declare;
mod routing;
mod topic;
mod topic_hops;

use amq_protocol::protocol::AMQPClass;
use warren_broker::config::UserConfig;
use warren_tests::raw::{queue_declare, NO_PROPERTIES};
use warren_tests::users::user;
use warren_tests::{CloseInfo, Identity, RawClient, TestBroker, Tuning};

const EXCHANGE_DECLARE: (u16, u16) = (40, 10);
const EXCHANGE_DELETE: (u16, u16) = (40, 20);
const EXCHANGE_BIND: (u16, u16) = (40, 30);
const EXCHANGE_UNBIND: (u16, u16) = (40, 40);
const QUEUE_DECLARE: (u16, u16) = (50, 10);
const QUEUE_BIND: (u16, u16) = (50, 20);
const QUEUE_PURGE: (u16, u16) = (50, 30);
const QUEUE_DELETE: (u16, u16) = (50, 40);
const QUEUE_UNBIND: (u16, u16) = (50, 50);
const BASIC_CONSUME: (u16, u16) = (60, 20);
const BASIC_PUBLISH: (u16, u16) = (60, 40);
const BASIC_GET: (u16, u16) = (60, 70);

async fn broker_with(users: Vec<UserConfig>) -> TestBroker {
    TestBroker::start_with(|c| c.users.extend(users)).await
}

/// A negotiated raw connection as `name` (a certificate from the broker's CA) on `vhost`.
async fn login(broker: &TestBroker, name: &str, vhost: &str) -> RawClient {
    let mut raw = RawClient::connect(broker, Identity::Cert(broker.client_cert(name)))
        .await
        .expect("TLS handshake");
    raw.handshake_with(Tuning {
        vhost: vhost.to_string(),
        ..Tuning::default()
    })
    .await;
    raw
}

/// Asserts the broker answered (the channel stayed open).
#[track_caller]
fn granted(what: &str, result: Result<AMQPClass, CloseInfo>) -> AMQPClass {
    result.unwrap_or_else(|close| panic!("{what} was refused: {close:?}"))
}

/// Asserts the operation closed its channel with `403 ACCESS_REFUSED - <text>`.
#[track_caller]
fn refused<T: std::fmt::Debug>(
    result: Result<T, CloseInfo>,
    text: &str,
    (class_id, method_id): (u16, u16),
) {
    assert_eq!(
        result.expect_err("the operation was allowed"),
        CloseInfo::new(
            403,
            &format!("ACCESS_REFUSED - {text}"),
            class_id,
            method_id
        )
    );
}

/// `<access> access to <kind> '<name>' in vhost '/' refused for user '<user>'`
fn denial(access: &str, kind: &str, name: &str, user: &str) -> String {
    format!("{access} access to {kind} '{name}' in vhost '/' refused for user '{user}'")
}

#[tokio::test]
async fn connection_open_needs_a_permission_entry_on_the_vhost() {
    let broker = TestBroker::start_with(|c| {
        c.vhosts.push("other".into());
        c.users.push(user("eve", &[("other", ".*", ".*", ".*")]));
        c.users.push(user("nobody", &[("/", "", "", "")]));
    })
    .await;

    let mut eve = RawClient::connect(&broker, Identity::Cert(broker.client_cert("eve")))
        .await
        .expect("TLS handshake");
    eve.negotiate(&Tuning::default()).await;
    assert_eq!(
        eve.expect_connection_close().await,
        CloseInfo::new(
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'eve'",
            10,
            40
        )
    );
    eve.expect_eof().await;
    // What an application sees: the connection fails to open.
    let (cert, key) = broker.user_cert_files("eve");
    assert!(broker.connect_as(&cert, &key, None).await.is_err());
    // The vhost eve has an entry for opens.
    let mut eve = login(&broker, "eve", "other").await;
    granted(
        "eve declares in other",
        eve.attempt(queue_declare("q")).await,
    );

    // Any entry opens the vhost, even one whose patterns are all empty; then they match nothing.
    let mut nobody = login(&broker, "nobody", "/").await;
    refused(
        nobody.attempt(queue_declare("q")).await,
        &denial("configure", "queue", "q", "nobody"),
        QUEUE_DECLARE,
    );
    refused(
        nobody.attempt_publish("", "q", NO_PROPERTIES, b"x").await,
        &denial("write", "exchange", "amq.default", "nobody"),
        BASIC_PUBLISH,
    );
}

#[tokio::test]
async fn patterns_are_unanchored_regular_expressions() {
    let broker = broker_with(vec![
        user("bob", &[("/", "bob", ".*", ".*")]),
        user("rob", &[("/", "^rob$", ".*", ".*")]),
    ])
    .await;
    let mut bob = login(&broker, "bob", "/").await;
    for name in ["bob", "my-bob-queue", "bobby"] {
        granted(name, bob.attempt(queue_declare(name)).await);
    }
    refused(
        bob.attempt(queue_declare("alice")).await,
        &denial("configure", "queue", "alice", "bob"),
        QUEUE_DECLARE,
    );
    let mut rob = login(&broker, "rob", "/").await;
    granted("rob", rob.attempt(queue_declare("rob")).await);
    refused(
        rob.attempt(queue_declare("robert")).await,
        &denial("configure", "queue", "robert", "rob"),
        QUEUE_DECLARE,
    );
}
