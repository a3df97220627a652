//! The admin API on its Unix socket, driven as an operator would: the real `brokerctl` for the
//! everyday verbs and their printed output, JSON requests for the rest. Changes apply to open
//! connections at once, deletions close connections with 320, and everything survives a restart.

use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};
use warren_tests::raw::{queue_declare, NO_PROPERTIES};
use warren_tests::users::full_access;
use warren_tests::{CloseInfo, Identity, RawClient, TestBroker, Tuning};

const LOGIN_REFUSED: &str = "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.";

/// Negotiates as `name` (a certificate from the broker's CA) on `vhost`: the raw client and None
/// for open-ok, or the connection.close the broker answered with.
async fn open_as(broker: &TestBroker, name: &str, vhost: &str) -> (RawClient, Option<CloseInfo>) {
    let mut raw = RawClient::connect(broker, Identity::Cert(broker.client_cert(name)))
        .await
        .expect("TLS handshake");
    let tuning = Tuning {
        vhost: vhost.to_string(),
        ..Tuning::default()
    };
    let refused = raw.try_handshake(&tuning).await.err();
    (raw, refused)
}

/// A raw connection as `name` on `vhost` that must open.
async fn login(broker: &TestBroker, name: &str, vhost: &str) -> RawClient {
    let (raw, refused) = open_as(broker, name, vhost).await;
    assert_eq!(refused, None, "{name} could not open vhost {vhost}");
    raw
}

fn names(rows: &Value, key: &str) -> Vec<String> {
    let mut names: Vec<String> = rows
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {rows}"))
        .iter()
        .map(|row| row[key].as_str().unwrap_or_default().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn brokerctl_adds_a_user_who_can_log_in_once_permissions_are_set() {
    let broker = TestBroker::start().await;

    let (_, refused) = open_as(&broker, "bob", "/").await;
    assert_eq!(
        refused,
        Some(CloseInfo::new(403, LOGIN_REFUSED, 0, 0)),
        "bob before add_user"
    );

    assert_eq!(broker.brokerctl(&["add_user", "bob"]).await.ok(), "");
    let (_, refused) = open_as(&broker, "bob", "/").await;
    assert_eq!(
        refused,
        Some(CloseInfo::new(
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'bob'",
            10,
            40
        )),
        "bob without permissions"
    );

    broker
        .brokerctl(&["set_permissions", "-p", "/", "bob", ".*", ".*", ".*"])
        .await
        .ok();
    let client = broker.connect_user("bob").await;
    let ch = client.channel().await;
    ch.declare_queue("bobs").await;
    ch.publish("", "bobs", b"hello").await;
    assert_eq!(
        ch.get("bobs", true).await.expect("a message").body,
        b"hello"
    );
    client.close().await;

    let users = broker.brokerctl(&["list_users"]).await.ok();
    let mut lines: Vec<&str> = users.lines().collect();
    assert_eq!(lines.remove(0), "name\ttags\tpassword", "{users}");
    lines.sort();
    assert_eq!(lines, ["admin\tadministrator\tfalse", "bob\t\tfalse"]);
    let permissions = broker.brokerctl(&["list_permissions"]).await.ok();
    assert_eq!(
        permissions,
        "user\tconfigure\twrite\tread\nadmin\t.*\t.*\t.*\nbob\t.*\t.*\t.*\n"
    );
}

#[tokio::test]
async fn permission_changes_apply_to_open_connections_at_once() {
    let broker = TestBroker::start_with(|c| c.users.push(full_access("bob"))).await;
    let admin = broker.admin();
    let mut bob = login(&broker, "bob", "/").await;
    bob.attempt(queue_declare("q1")).await.expect("q1 allowed");
    bob.attempt_publish("amq.topic", "nova.x", NO_PROPERTIES, b"x")
        .await
        .expect("no topic permission yet");
    // A grant used again and again on one connection must still be re-checked after a change.
    for _ in 0..2 {
        bob.attempt_publish("amq.direct", "k", NO_PROPERTIES, b"x")
            .await
            .expect("write on amq.direct");
    }

    admin
        .set_permissions("/", "bob", ("^bob\\.", "^amq\\.topic$", ".*"))
        .await;
    assert_eq!(
        bob.attempt_publish("amq.direct", "k", NO_PROPERTIES, b"x")
            .await
            .unwrap_err(),
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - write access to exchange 'amq.direct' in vhost '/' refused for user 'bob'",
            60,
            40
        )
    );
    assert_eq!(
        bob.attempt(queue_declare("q2")).await.unwrap_err(),
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - configure access to queue 'q2' in vhost '/' refused for user 'bob'",
            50,
            10
        )
    );
    bob.attempt(queue_declare("bob.q2"))
        .await
        .expect("bob.q2 matches the new pattern");

    admin
        .ok(
            json!({"command": "set_topic_permissions", "vhost": "/", "user": "bob",
                   "exchange": "amq.topic", "write": "^bob\\.", "read": ".*"}),
        )
        .await;
    assert_eq!(
        bob.attempt_publish("amq.topic", "nova.x", NO_PROPERTIES, b"x")
            .await
            .unwrap_err(),
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - write access to topic 'nova.x' in exchange 'amq.topic' in vhost '/' refused for user 'bob'",
            60,
            40
        )
    );
    admin
        .ok(json!({"command": "clear_topic_permissions", "vhost": "/", "user": "bob"}))
        .await;
    bob.attempt_publish("amq.topic", "nova.x", NO_PROPERTIES, b"x")
        .await
        .expect("topic permission cleared");

    admin
        .ok(json!({"command": "clear_permissions", "vhost": "/", "user": "bob"}))
        .await;
    assert_eq!(
        bob.attempt_publish("amq.topic", "nova.x", NO_PROPERTIES, b"x")
            .await
            .unwrap_err(),
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - write access to exchange 'amq.topic' in vhost '/' refused for user 'bob'",
            60,
            40
        ),
        "the last grant outlived clear_permissions"
    );
    assert_eq!(
        bob.attempt(queue_declare("bob.q3")).await.unwrap_err(),
        CloseInfo::new(
            403,
            "ACCESS_REFUSED - configure access to queue 'bob.q3' in vhost '/' refused for user 'bob'",
            50,
            10
        )
    );
    // And a new connection can no longer open the vhost at all.
    let (_, refused) = open_as(&broker, "bob", "/").await;
    assert_eq!(
        refused,
        Some(CloseInfo::new(
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'bob'",
            10,
            40
        ))
    );
}

#[tokio::test]
async fn deleting_a_user_closes_its_connections_with_320() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    admin
        .add_user_with_permissions("bob", "/", (".*", ".*", ".*"))
        .await;
    let mut raw_bob = login(&broker, "bob", "/").await;
    let mut app_bob = broker.connect_user("bob").await;
    let bystander = broker.connect().await;
    let bystander_ch = bystander.channel().await;

    broker.brokerctl(&["delete_user", "bob"]).await.ok();
    assert_eq!(
        raw_bob.expect_connection_close().await,
        CloseInfo::new(320, "CONNECTION_FORCED - user 'bob' is deleted", 0, 0)
    );
    raw_bob.expect_eof().await;
    let close = app_bob.expect_close().await;
    assert_eq!(
        (close.code, close.text.as_str()),
        (320, "CONNECTION_FORCED - user 'bob' is deleted")
    );

    // Other users are not touched; bob cannot come back.
    bystander_ch.declare_queue("still-here").await;
    let (_, refused) = open_as(&broker, "bob", "/").await;
    assert_eq!(refused, Some(CloseInfo::new(403, LOGIN_REFUSED, 0, 0)));
    let connections = admin.ok(json!({"command": "list_connections"})).await;
    assert_eq!(names(&connections, "user"), ["admin"], "{connections}");
    let users = admin.ok(json!({"command": "list_users"})).await;
    assert_eq!(names(&users, "name"), ["admin"]);
}

#[tokio::test]
async fn vhosts_are_added_and_deleting_one_closes_its_connections() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    broker.brokerctl(&["add_vhost", "v"]).await.ok();
    assert_eq!(broker.brokerctl(&["list_vhosts"]).await.ok(), "/\nv\n");
    admin
        .add_user_with_permissions("bob", "v", (".*", ".*", ".*"))
        .await;
    let (_, refused) = open_as(&broker, "bob", "/").await;
    assert_eq!(
        refused.map(|c| c.code),
        Some(530),
        "bob has no permission on /"
    );
    let mut bob = login(&broker, "bob", "v").await;
    bob.attempt(queue_declare("in-v"))
        .await
        .expect("declare in v");
    let queues = admin
        .ok(json!({"command": "list_queues", "vhost": "v"}))
        .await;
    assert_eq!(names(&queues, "name"), ["in-v"]);
    let on_root = broker.connect().await;
    let on_root_ch = on_root.channel().await;

    broker.brokerctl(&["delete_vhost", "v"]).await.ok();
    assert_eq!(
        bob.expect_connection_close().await,
        CloseInfo::new(320, "CONNECTION_FORCED - vhost 'v' is deleted", 0, 0)
    );
    bob.expect_eof().await;
    on_root_ch.declare_queue("unaffected").await;
    let (_, refused) = open_as(&broker, "bob", "v").await;
    assert_eq!(
        refused,
        Some(CloseInfo::new(
            530,
            "NOT_ALLOWED - vhost v not found",
            10,
            40
        ))
    );
    assert_eq!(broker.brokerctl(&["list_vhosts"]).await.ok(), "/\n");
    assert_eq!(
        admin
            .call(json!({"command": "list_queues", "vhost": "v"}))
            .await,
        Err("no such vhost 'v'".to_string())
    );

    // A new vhost of the same name starts empty, and the old permissions went with the old one.
    admin.ok(json!({"command": "add_vhost", "name": "v"})).await;
    let queues = admin
        .ok(json!({"command": "list_queues", "vhost": "v"}))
        .await;
    assert_eq!(queues, json!([]));
    let (_, refused) = open_as(&broker, "bob", "v").await;
    assert_eq!(
        refused,
        Some(CloseInfo::new(
            530,
            "NOT_ALLOWED - access to vhost 'v' refused for user 'bob'",
            10,
            40
        ))
    );
}

#[tokio::test]
async fn listings_show_what_the_broker_holds() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    admin
        .ok(json!({"command": "add_user", "name": "bob", "tags": ["monitoring"]}))
        .await;
    admin
        .set_permissions("/", "bob", ("^bob\\.", ".*", ""))
        .await;
    admin
        .ok(
            json!({"command": "set_topic_permissions", "vhost": "/", "user": "bob",
                   "exchange": "amq.topic", "write": "^{username}\\.", "read": ".*"}),
        )
        .await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("jobs").await;
    ch.queue_bind(amqprs::channel::QueueBindArguments::new(
        "jobs",
        "amq.direct",
        "work",
    ))
    .await
    .expect("bind");
    ch.publish("", "jobs", b"1").await;
    ch.publish("amq.direct", "work", b"2").await;
    let _bob = login(&broker, "bob", "/").await;

    let users = admin.ok(json!({"command": "list_users"})).await;
    let mut users = users.as_array().expect("a list").clone();
    users.sort_by_key(|u| u["name"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        users,
        vec![
            json!({"name": "admin", "tags": ["administrator"], "password": false}),
            json!({"name": "bob", "tags": ["monitoring"], "password": false}),
        ]
    );
    assert_eq!(
        admin.ok(json!({"command": "list_vhosts"})).await,
        json!(["/"])
    );
    let permissions = admin
        .ok(json!({"command": "list_permissions", "vhost": "/"}))
        .await;
    assert!(
        permissions
            .as_array()
            .expect("a list")
            .contains(&json!({"user": "bob", "configure": "^bob\\.", "write": ".*", "read": ""})),
        "{permissions}"
    );
    assert_eq!(
        admin
            .ok(json!({"command": "list_topic_permissions", "vhost": "/"}))
            .await,
        json!([{"user": "bob", "exchange": "amq.topic", "write": "^{username}\\.", "read": ".*"}])
    );
    assert_eq!(
        broker.brokerctl(&["list_queues"]).await.ok(),
        "name\ttype\tmessages\tconsumers\tdurable\texclusive\tauto_delete\tpolicy\njobs\tclassic\t2\t0\tfalse\tfalse\tfalse\t\n"
    );
    let exchanges = admin
        .ok(json!({"command": "list_exchanges", "vhost": "/"}))
        .await;
    let rows = exchanges.as_array().expect("a list");
    for (name, kind) in [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
    ] {
        let row = rows
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {exchanges}"));
        assert_eq!(row["type"], kind, "{row}");
        assert_eq!(row["durable"], true, "{row}");
    }
    let bindings = admin
        .ok(json!({"command": "list_bindings", "vhost": "/"}))
        .await;
    assert!(
        bindings.as_array().expect("a list").contains(&json!({
            "source": "amq.direct", "destination": "jobs",
            "destination_type": "queue", "routing_key": "work"
        })),
        "{bindings}"
    );
    let connections = admin.ok(json!({"command": "list_connections"})).await;
    assert_eq!(
        names(&connections, "user"),
        ["admin", "bob"],
        "{connections}"
    );
    for row in connections.as_array().expect("a list") {
        assert_eq!(row["vhost"], "/", "{row}");
        assert!(
            row["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{row}"
        );
    }
    let status = admin.ok(json!({"command": "status"})).await;
    assert_eq!(status["product"], "Warren", "{status}");
    assert_eq!(status["connections"], 2, "{status}");
    assert_eq!(status["vhosts"], json!(["/"]), "{status}");

    // The socket itself is private to the broker's user.
    let mode = std::fs::metadata(broker.config.admin_socket())
        .expect("admin socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");
    client.close().await;
}

#[tokio::test]
async fn admin_errors_are_reported_and_change_nothing() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    let before = broker.log_segments();

    let failed = broker.brokerctl(&["add_user", "admin"]).await;
    assert!(!failed.success, "{failed:?}");
    assert_eq!(failed.stderr, "Error: user 'admin' already exists\n");
    let failed = broker
        .brokerctl(&["set_permissions", "admin", "(", ".*", ".*"])
        .await;
    assert!(!failed.success, "{failed:?}");
    assert!(
        failed.stderr.starts_with("Error: invalid pattern \"(\""),
        "{failed:?}"
    );

    for (request, error) in [
        (
            json!({"command": "add_user", "name": "admin"}),
            "user 'admin' already exists",
        ),
        (
            json!({"command": "delete_user", "name": "ghost"}),
            "no such user 'ghost'",
        ),
        (
            json!({"command": "set_permissions", "vhost": "/", "user": "ghost",
                   "configure": ".*", "write": ".*", "read": ".*"}),
            "no such user 'ghost'",
        ),
        (
            json!({"command": "set_permissions", "vhost": "nope", "user": "admin",
                   "configure": ".*", "write": ".*", "read": ".*"}),
            "no such vhost 'nope'",
        ),
        (
            json!({"command": "add_vhost", "name": "/"}),
            "vhost '/' already exists",
        ),
        (
            json!({"command": "delete_vhost", "name": "nope"}),
            "no such vhost 'nope'",
        ),
        (
            json!({"command": "add_user", "name": ""}),
            "invalid user name \"\": it is empty",
        ),
        (
            json!({"command": "change_password", "name": "admin", "password": ""}),
            "cannot hash the password: the password is empty",
        ),
    ] {
        assert_eq!(
            admin.call(request.clone()).await,
            Err(error.to_string()),
            "{request}"
        );
    }
    for request in [
        json!({"command": "set_permissions", "vhost": "/", "user": "admin",
               "configure": "[", "write": ".*", "read": ".*"}),
        json!({"command": "set_topic_permissions", "vhost": "/", "user": "admin",
               "exchange": "amq.topic", "write": "(", "read": ".*"}),
    ] {
        let error = admin.call(request.clone()).await.unwrap_err();
        assert!(error.starts_with("invalid pattern"), "{request}: {error}");
    }
    for request in [
        json!({"command": "reboot_the_world"}),
        json!({"command": "add_user"}),
    ] {
        let error = admin.call(request.clone()).await.unwrap_err();
        assert!(error.starts_with("bad request"), "{request}: {error}");
    }

    // Nothing was changed or written, and admin still works with full permissions.
    assert!(
        broker.log_segments() == before,
        "a refused change wrote to the log"
    );
    let client = broker.connect().await;
    let ch = client.channel().await;
    ch.declare_queue("q").await;
    client.close().await;
}

#[tokio::test]
async fn definitions_persist_across_a_restart() {
    let broker = TestBroker::start().await;
    let admin = broker.admin();
    admin
        .ok(json!({"command": "add_user", "name": "bob", "tags": ["monitoring"]}))
        .await;
    admin.ok(json!({"command": "add_vhost", "name": "v"})).await;
    admin.set_permissions("v", "bob", (".*", ".*", ".*")).await;
    admin
        .ok(
            json!({"command": "set_topic_permissions", "vhost": "v", "user": "bob",
                   "exchange": "amq.topic", "write": "^bob\\.", "read": ".*"}),
        )
        .await;
    admin
        .ok(json!({"command": "change_password", "name": "bob", "password": "correct horse"}))
        .await;
    admin
        .add_user_with_permissions("carol", "/", (".*", ".*", ".*"))
        .await;
    admin
        .ok(json!({"command": "delete_user", "name": "carol"}))
        .await;

    // The definitions are commands in the log: owner-only files, a hash, never the password.
    let segments = broker.log_segments();
    let stored: Vec<u8> = segments
        .iter()
        .flat_map(|(bytes, _)| bytes.clone())
        .collect();
    assert!(segments.iter().all(|(_, mode)| *mode == 0o600), "log modes");
    let text = String::from_utf8_lossy(&stored);
    assert!(text.contains("$argon2id$"), "no password hash in the log");
    assert!(
        !text.contains("correct horse"),
        "a password in plain text in the log"
    );
    assert!(!broker.path("definitions.json").exists());

    let broker = broker.restart().await;
    let admin = broker.admin();
    let users = admin.ok(json!({"command": "list_users"})).await;
    let mut users = users.as_array().expect("a list").clone();
    users.sort_by_key(|u| u["name"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        users,
        vec![
            json!({"name": "admin", "tags": ["administrator"], "password": false}),
            json!({"name": "bob", "tags": ["monitoring"], "password": true}),
        ]
    );
    assert_eq!(
        admin.ok(json!({"command": "list_vhosts"})).await,
        json!(["/", "v"])
    );
    assert_eq!(
        admin
            .ok(json!({"command": "list_permissions", "vhost": "v"}))
            .await,
        json!([{"user": "bob", "configure": ".*", "write": ".*", "read": ".*"}])
    );
    let mut bob = login(&broker, "bob", "v").await;
    bob.attempt(queue_declare("after-restart"))
        .await
        .expect("bob's permissions on v survived");
    assert_eq!(
        bob.attempt_publish("amq.topic", "nova.x", NO_PROPERTIES, b"x")
            .await
            .unwrap_err()
            .text,
        "ACCESS_REFUSED - write access to topic 'nova.x' in exchange 'amq.topic' in vhost 'v' refused for user 'bob'"
    );
    let (_, refused) = open_as(&broker, "carol", "/").await;
    assert_eq!(refused, Some(CloseInfo::new(403, LOGIN_REFUSED, 0, 0)));
    assert!(
        broker.log_segments().iter().all(|(_, mode)| *mode == 0o600),
        "log modes after restart"
    );
}

/// Users of the configuration file are created at the first start only: what brokerctl changes or
/// deletes afterwards stands across restarts (issue 11 point 4).
#[tokio::test]
async fn configured_users_are_seeded_not_reimposed() {
    let broker = TestBroker::start_with(|c| {
        c.users.push(warren_tests::users::full_access("nova"));
        c.users.push(warren_tests::users::full_access("glance"));
    })
    .await;
    let admin = broker.admin();
    admin
        .set_permissions("/", "nova", ("^nova", "^nova", "^nova"))
        .await;
    admin
        .ok(json!({"command": "delete_user", "name": "glance"}))
        .await;

    let broker = broker.restart().await;
    let admin = broker.admin();
    let users = admin.ok(json!({"command": "list_users"})).await;
    let names: Vec<&str> = users
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|u| u["name"].as_str().or(u["user"].as_str()))
        .collect();
    assert!(names.contains(&"nova"), "{users}");
    assert!(
        !names.contains(&"glance"),
        "a deleted user came back: {users}"
    );
    let perms = admin
        .ok(json!({"command": "list_permissions", "vhost": "/"}))
        .await;
    let nova = perms
        .as_array()
        .expect("a list")
        .iter()
        .find(|p| p["user"] == "nova")
        .unwrap_or_else(|| panic!("nova has no permissions: {perms}"));
    assert_eq!(
        (&nova["configure"], &nova["write"], &nova["read"]),
        (&json!("^nova"), &json!("^nova"), &json!("^nova")),
        "brokerctl's permissions were replaced by the file's: {perms}"
    );
}

/// PROBE F10: a queue name with tabs or newlines cannot forge rows or columns in brokerctl's tables.
#[tokio::test]
async fn table_output_escapes_names() {
    let broker = TestBroker::start().await;
    let client = broker.connect().await;
    let ch = client.channel().await;
    for name in [
        "evil\t999\t0\ttrue\nfakequeue",
        "alice.x\nbob.private",
        "back\\slash",
    ] {
        ch.declare_queue(name).await;
    }
    let table = broker.brokerctl(&["list_queues"]).await.ok();
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next())
        .collect();
    for forged in ["fakequeue", "bob.private"] {
        assert!(!names.contains(&forged), "a forged row: {table}");
    }
    assert!(
        names.contains(&"evil\\t999\\t0\\ttrue\\nfakequeue"),
        "{table}"
    );
    assert!(names.contains(&"alice.x\\nbob.private"), "{table}");
    assert!(
        names.contains(&"back\\slash"),
        "backslashes as rabbitmqctl prints them: {table}"
    );
    let header_columns = table.lines().next().unwrap_or_default().split('\t').count();
    assert!(
        table
            .lines()
            .all(|l| l.split('\t').count() == header_columns),
        "every row has the header's columns: {table}"
    );
    client.close().await;
}

/// PROBE F13: change_password reads the password from standard input when it is not given, so it
/// appears neither in `ps` nor in the shell history.
#[tokio::test]
async fn change_password_reads_the_password_from_standard_input() {
    let broker =
        TestBroker::start_with(|c| c.users.push(warren_tests::users::full_access("bob"))).await;
    broker
        .brokerctl_with_input(&["change_password", "bob"], b"s3cret from stdin\n")
        .await
        .ok();
    let stored: Vec<u8> = broker
        .log_segments()
        .into_iter()
        .flat_map(|(b, _)| b)
        .collect();
    assert!(
        String::from_utf8_lossy(&stored).contains("$argon2id$"),
        "no hash in the log"
    );
    let empty = broker
        .brokerctl_with_input(&["change_password", "bob"], b"")
        .await;
    assert!(
        !empty.success && empty.stderr.contains("no password"),
        "{empty:?}"
    );
}

/// PROBE F14: a peer the admin socket refuses (neither root nor the broker's user) is told why,
/// instead of seeing "connection reset by peer".
#[tokio::test]
async fn a_refused_admin_peer_is_told_why() {
    use std::os::unix::fs::PermissionsExt;
    let broker = TestBroker::start().await;
    let socket = broker.config.admin_socket();
    // Only the SO_PEERCRED check stands between another user and the socket now.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let output = tokio::process::Command::new(warren_tests::admin::brokerctl_path().await)
        .arg("--socket")
        .arg(&socket)
        .arg("list_users")
        .uid(4242)
        .output()
        .await
        .expect("brokerctl runs as uid 4242");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("refused: uid 4242 is neither root nor the broker's user"),
        "{stderr}"
    );
}
