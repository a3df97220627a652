//! The audit log (`[audit] path`): one JSON object per line for every login success and failure,
//! every authorisation denial (with the text the client saw) and every administrative change, each
//! with time, kind, action, user, source and result.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::{json, Value};
use warren_tests::raw::{queue_declare, NO_PROPERTIES};
use warren_tests::users::{topic, user};
use warren_tests::{Identity, RawClient, TestBroker, Tuning};

const FIELDS: [&str; 6] = ["time", "kind", "action", "user", "source", "result"];

async fn audited_broker(adjust: impl FnOnce(&mut warren_broker::config::Config)) -> TestBroker {
    TestBroker::start_with(|c| {
        c.audit.path = c.data_dir.join("audit.jsonl").display().to_string();
        adjust(c);
    })
    .await
}

fn audit_path(broker: &TestBroker) -> PathBuf {
    PathBuf::from(&broker.config.audit.path)
}

/// Every line of the audit log, each checked to be one JSON object with the common fields.
fn audit_lines(broker: &TestBroker) -> Vec<Value> {
    let text = std::fs::read_to_string(audit_path(broker)).expect("the audit log exists");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a partial last line: {text:?}"
    );
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit line {line:?} is not JSON: {e}"));
            for field in FIELDS {
                assert!(v[field].is_string(), "audit line without {field}: {line}");
            }
            let time = v["time"].as_str().unwrap_or_default();
            assert!(
                time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
                "time is not RFC 3339 UTC: {line}"
            );
            v
        })
        .collect()
}

/// The lines whose fields equal every (key, value) of `pattern`.
fn matching(lines: &[Value], pattern: &Value) -> Vec<Value> {
    let pattern = pattern.as_object().expect("an object pattern");
    lines
        .iter()
        .filter(|line| pattern.iter().all(|(k, v)| &line[k] == v))
        .cloned()
        .collect()
}

#[track_caller]
fn exactly_one(lines: &[Value], pattern: Value) -> Value {
    let found = matching(lines, &pattern);
    assert_eq!(
        found.len(),
        1,
        "expected one audit line like {pattern}, found {found:?} in {lines:#?}"
    );
    found[0].clone()
}

#[tokio::test]
async fn logins_are_audited_as_successes_and_failures() {
    let broker = audited_broker(|_| {}).await;
    let mut admin = RawClient::connect(&broker, Identity::Admin)
        .await
        .expect("TLS");
    admin.handshake().await;
    let admin_source = admin.local_addr().to_string();
    let mut mallory = RawClient::connect(&broker, Identity::Cert(broker.client_cert("mallory")))
        .await
        .expect("TLS");
    let mallory_source = mallory.local_addr().to_string();
    mallory
        .try_handshake(&Tuning::default())
        .await
        .expect_err("mallory is no user");

    let lines = audit_lines(&broker);
    exactly_one(
        &lines,
        json!({"kind": "authentication", "action": "login", "user": "admin",
               "source": admin_source, "result": "success"}),
    );
    exactly_one(
        &lines,
        json!({"kind": "authentication", "action": "login", "user": "mallory",
               "source": mallory_source, "result": "failure"}),
    );
    // A certificate without an identity is audited too, as a failure from its address.
    let mut anonymous =
        RawClient::connect(&broker, Identity::Cert(broker.client_cert_without_cn()))
            .await
            .expect("TLS");
    let anonymous_source = anonymous.local_addr().to_string();
    anonymous
        .try_handshake(&Tuning::default())
        .await
        .expect_err("no CN");
    exactly_one(
        &audit_lines(&broker),
        json!({"kind": "authentication", "source": anonymous_source, "result": "failure"}),
    );

    let mode = std::fs::metadata(audit_path(&broker))
        .expect("audit log")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "audit log mode {mode:o}");
}

#[tokio::test]
async fn authorisation_denials_are_audited_with_the_text_the_client_saw() {
    let broker = audited_broker(|c| {
        c.vhosts.push("other".into());
        let mut bob = user("bob", &[("/", "^bob\\.", ".*", ".*")]);
        bob.topic_permissions = vec![topic("/", "amq.topic", "^bob\\.", ".*")];
        c.users.push(bob);
    })
    .await;
    let mut bob = RawClient::connect(&broker, Identity::Cert(broker.client_cert("bob")))
        .await
        .expect("TLS");
    bob.handshake().await;
    let source = bob.local_addr().to_string();
    let refusal = bob
        .attempt(queue_declare("q"))
        .await
        .expect_err("configure on q");
    let topic_refusal = bob
        .attempt_publish("amq.topic", "nova.x", NO_PROPERTIES, b"x")
        .await
        .expect_err("topic write");
    bob.attempt(queue_declare("bob.q"))
        .await
        .expect("an allowed declare");

    let mut elsewhere = RawClient::connect(&broker, Identity::Cert(broker.client_cert("bob")))
        .await
        .expect("TLS");
    let elsewhere_source = elsewhere.local_addr().to_string();
    let vhost_refusal = elsewhere
        .try_handshake(&Tuning {
            vhost: "other".into(),
            ..Tuning::default()
        })
        .await
        .expect_err("bob has no permission on other");

    let lines = audit_lines(&broker);
    let denials = matching(&lines, &json!({"kind": "authorisation"}));
    assert_eq!(
        denials.len(),
        3,
        "one line per denial, none for what was allowed: {denials:#?}"
    );
    for (refusal, source, vhost) in [
        (&refusal, &source, "/"),
        (&topic_refusal, &source, "/"),
        (&vhost_refusal, &elsewhere_source, "other"),
    ] {
        // The reply text, with or without its `ACCESS_REFUSED - ` prefix, as the action or detail.
        let full = refusal.text.as_str();
        let text = full.split_once(" - ").map_or(full, |(_, t)| t);
        let says = |v: &Value| v == text || v == full;
        let found: Vec<_> = denials
            .iter()
            .filter(|d| says(&d["action"]) || says(&d["detail"]))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "no audit line with {full:?} in {denials:#?}"
        );
        let line = found[0];
        assert_eq!(
            (
                &line["user"],
                &line["source"],
                &line["result"],
                &line["vhost"]
            ),
            (
                &json!("bob"),
                &json!(source),
                &json!("denied"),
                &json!(vhost)
            ),
            "{line}"
        );
    }
}

#[tokio::test]
async fn admin_changes_are_audited_and_listings_are_not() {
    let broker = audited_broker(|_| {}).await;
    let admin = broker.admin();
    admin
        .ok(json!({"command": "add_user", "name": "bob"}))
        .await;
    admin.set_permissions("/", "bob", (".*", ".*", ".*")).await;
    admin
        .ok(json!({"command": "change_password", "name": "bob", "password": "hunter2-secret"}))
        .await;
    let failed = admin
        .call(json!({"command": "add_user", "name": "admin"}))
        .await
        .expect_err("admin exists");
    admin.ok(json!({"command": "list_users"})).await;
    admin.ok(json!({"command": "list_connections"})).await;
    admin.ok(json!({"command": "status"})).await;

    let lines = audit_lines(&broker);
    let changes = matching(&lines, &json!({"kind": "admin"}));
    assert_eq!(changes.len(), 4, "{changes:#?}");
    let uid = format!("uid {}", own_uid());
    for line in &changes {
        assert_eq!(
            (&line["user"], &line["source"]),
            (&json!(uid), &json!("admin-socket")),
            "{line}"
        );
    }
    let successes = matching(&changes, &json!({"result": "success"}));
    assert_eq!(successes.len(), 3, "{changes:#?}");
    for line in &successes {
        let action = line["action"].as_str().unwrap_or_default();
        assert!(
            action.contains("bob"),
            "the action names its subject: {line}"
        );
    }
    let failure = exactly_one(&changes, json!({"result": "failure"}));
    let failure_text = failure.to_string();
    assert!(
        failure_text.contains(&failed) && failure_text.contains("admin"),
        "the failure line carries the error {failed:?}: {failure}"
    );
    let whole = std::fs::read_to_string(audit_path(&broker)).expect("audit log");
    assert!(
        !whole.contains("hunter2-secret"),
        "the audit log holds a password: {whole}"
    );
}

/// This process's uid (the owner of /proc/self), which the admin socket reports for its peers.
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

#[tokio::test]
async fn an_audit_log_that_cannot_be_opened_stops_the_start() {
    let dir = tempfile::tempdir().expect("temporary directory");
    warren_broker::pki::DevPki::ensure(&dir.path().join("tls")).expect("dev PKI");
    let mut config =
        warren_broker::config::Config::dev(dir.path(), "127.0.0.1:0".parse().expect("address"));
    let path = dir.path().join("missing-directory").join("audit.jsonl");
    config.audit.path = path.display().to_string();
    match warren_broker::Server::new(std::sync::Arc::new(config)) {
        Ok(_) => panic!("the broker started without its audit log"),
        Err(e) => {
            let error = format!("{e:#}");
            assert!(
                error.contains(&path.display().to_string()),
                "the refusal names the audit log: {error}"
            );
        }
    }
}
