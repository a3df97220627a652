//! A data directory written by an earlier Warren opens in today's broker with every queue, argument,
//! binding, message, user and permission in it: an upgrade must never lose one. The fixture
//! (tests/fixtures/data-dir-v1, written by its `populate.py`) is the storage format of 2026-12:
//! definition keys as JSON arrays in the command log, definitions.json for vhosts, users and
//! permissions, stored messages in format 2. A change of format keeps this test passing: since the
//! metadata commands (issue 12), the first start imports and rewrites the old records, and the
//! second start reads only commands.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use amqprs::channel::QueueDeclareArguments;
use amqprs::security::SecurityCredentials;
use warren_broker::meta::{codec, MetaCommand};
use warren_broker::persist::Durability;
use warren_tests::client::bodies;
use warren_tests::features::{int, table, text, with_headers};
use warren_tests::TestBroker;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/data-dir-v1");

/// Replaces the fresh broker's definitions and log with the fixture's (the PKI stays the test's).
fn install_fixture(dir: &Path) {
    let log = dir.join("log");
    std::fs::remove_dir_all(&log).expect("remove the fresh log");
    std::fs::create_dir(&log).expect("log directory");
    let fixture = Path::new(FIXTURE);
    let mut files = vec![("definitions.json".to_string(), dir.join("definitions.json"))];
    for entry in std::fs::read_dir(fixture.join("log")).expect("fixture log") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        files.push((format!("log/{name}"), log.join(&name)));
    }
    for (from, to) in files {
        std::fs::copy(fixture.join(&from), &to).expect("copy the fixture");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

/// nova's permissions in the fixture's `openstack` vhost, as brokerctl lists them.
async fn assert_novas_permissions(broker: &TestBroker) {
    let permissions = broker
        .brokerctl(&["list_permissions", "-p", "openstack"])
        .await
        .ok();
    assert!(
        permissions.contains("nova\t^nova\t^(nova|amq\\.topic)\t^nova"),
        "{permissions}"
    );
}

async fn admin_on_openstack(broker: &TestBroker) -> warren_tests::client::Client {
    broker
        .connect_with(
            (&broker.pki.admin_cert, &broker.pki.admin_key),
            "openstack",
            SecurityCredentials::new_external(),
        )
        .await
        .expect("admin connects to openstack")
}

#[tokio::test]
async fn the_data_directory_of_2026_12_opens_with_everything_in_it() {
    let broker = TestBroker::start()
        .await
        .restart_after(install_fixture)
        .await;

    // Users and permissions (definitions.json).
    assert_novas_permissions(&broker).await;
    let topics = broker
        .brokerctl(&["list_topic_permissions", "-p", "openstack"])
        .await
        .ok();
    assert!(
        topics.contains("nova\tamq.topic\t^nova\\.\t^nova\\."),
        "{topics}"
    );

    let client = admin_on_openstack(&broker).await;
    let ch = client.channel().await;

    // Every durable queue with its messages (persistent ones only; the deleted queue stays gone).
    // "retry-me" was published on 2026-12-05 with a day to live: since its day passed it is
    // dead-lettered into nova.dead when the queue is restored, as RabbitMQ does, and kept either way.
    let retry_expired = ch.message_count("nova.retry").await == 0;
    for (queue, count) in [
        ("nova.scheduler", 3),
        ("nova.dead", if retry_expired { 2 } else { 1 }),
        ("nova.retry", if retry_expired { 0 } else { 1 }),
        ("nova.fan", 1),
        ("nova.hdr", 1),
        ("nova.unrouted", 1),
        ("nova.lazy", 3),
    ] {
        assert_eq!(ch.message_count(queue).await, count, "{queue}");
    }
    let mut passive = QueueDeclareArguments::new("nova.gone");
    passive.passive(true);
    assert_eq!(
        ch.try_declare(passive).await.expect_err("nova.gone").code,
        404
    );

    // Arguments kept: redeclaring with them is equivalent, without them is not.
    let ch = client.channel().await;
    let mut same = QueueDeclareArguments::durable_client_named("nova.scheduler");
    same.arguments(table([
        ("x-max-priority", int(5)),
        ("x-max-length", int(1000)),
    ]));
    assert_eq!(ch.declare(same).await.1, 3);
    let mut durable = QueueDeclareArguments::durable_client_named("nova.retry");
    durable.arguments(table([("x-message-ttl", int(1))]));
    assert_eq!(
        ch.try_declare(durable)
            .await
            .expect_err("inequivalent")
            .code,
        406
    );

    // Messages as published: priority order, properties and headers, publisher recorded.
    let ch = client.channel().await;
    let sched = ch.drain("nova.scheduler").await;
    assert_eq!(bodies(&sched), ["sched-1", "sched-2", "sched-0"]);
    let first = &sched[0];
    assert_eq!(first.properties.priority(), Some(5));
    assert_eq!(
        first.properties.content_type().map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        first.properties.message_id().map(String::as_str),
        Some("m1")
    );
    assert_eq!(first.header("s").as_deref(), Some("text"));
    let dead = ch.get_one("nova.dead", true).await;
    assert_eq!(dead.body, b"already-dead");
    assert_eq!(
        dead.properties.correlation_id().map(String::as_str),
        Some("c1")
    );
    assert_eq!(
        bodies(&ch.drain("nova.lazy").await),
        ["lazy-0", "lazy-1", "lazy-2"]
    );
    if retry_expired {
        let expired = ch.get_one("nova.dead", true).await;
        assert_eq!(expired.body, b"retry-me");
        assert_eq!(
            expired.header("x-first-death-reason").as_deref(),
            Some("expired")
        );
    } else {
        assert_eq!(ch.get_one("nova.retry", true).await.body, b"retry-me");
    }

    // Bindings still route: topic, exchange-to-exchange, headers, alternate exchange.
    ch.publish("nova", "nova.scheduler.again", b"t").await;
    ch.publish("nova", "nova.fan.again", b"f").await;
    ch.publish_with(
        "nova.headers",
        "",
        with_headers(table([("service", text("nova"))])),
        b"h",
        false,
    )
    .await;
    ch.publish("nova.direct", "nowhere", b"ae").await;
    assert_eq!(ch.get_one("nova.scheduler", true).await.body, b"t");
    assert_eq!(bodies(&ch.drain("nova.fan").await), ["fanned", "f"]);
    assert_eq!(bodies(&ch.drain("nova.hdr").await), ["by-headers", "h"]);
    assert_eq!(bodies(&ch.drain("nova.unrouted").await), ["unrouted", "ae"]);
    client.close().await;

    // The first start rewrote everything as metadata commands: definitions.json was imported and
    // renamed, every definition record in the log is a command, and the next start finds it all.
    let broker = broker
        .restart_after(|dir| {
            assert!(!dir.join("definitions.json").exists());
            assert!(dir.join("definitions.json.imported").exists());
            let (log, recovered) = Durability::open(dir).expect("open the log");
            drop(log);
            let mut users = 0;
            for (key, value) in &recovered.definitions {
                let command = codec::decode(value)
                    .unwrap_or_else(|e| panic!("{key} is still an old record: {e}"));
                users += usize::from(matches!(command, MetaCommand::AddUser { .. }));
            }
            assert!(users >= 2, "the fixture's users are commands in the log");
        })
        .await;
    assert_novas_permissions(&broker).await;
    let client = admin_on_openstack(&broker).await;
    let ch = client.channel().await;
    ch.publish("nova", "nova.fan.after", b"again").await;
    assert_eq!(bodies(&ch.drain("nova.fan").await), ["again"]);
    ch.publish("nova.direct", "nowhere", b"ae2").await;
    assert_eq!(bodies(&ch.drain("nova.unrouted").await), ["ae2"]);
    client.close().await;
}
