//! RabbitMQ definitions files: `brokerctl import_definitions` (and `[definitions] load_at_boot`)
//! reads RabbitMQ's export format — tags as a list or a string, passwords and RabbitMQ's hashes
//! ignored with a warning, policies with `ha-*` keys, operator policies as parameters, durable
//! exchanges, queues and bindings — keeping what exists, refusing a malformed file by its JSON path
//! with nothing applied; `brokerctl export_definitions` writes the same format, and a broker
//! rebuilt from its own export exports the same definitions.

use serde_json::{json, Value};
use warren_tests::TestBroker;

fn kolla_file() -> Value {
    json!({
        "rabbit_version": "3.13.7",
        "users": [
            {"name": "openstack", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator", "limits": {}},
            {"name": "monitoring", "password": "secret", "tags": ["monitoring", "management"]}
        ],
        "vhosts": [{"name": "/"}, {"name": "nova", "limits": [], "metadata": {"description": ""}}],
        "permissions": [
            {"user": "openstack", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": "openstack", "vhost": "nova", "configure": ".*", "write": ".*", "read": ".*"}
        ],
        "topic_permissions": [
            {"user": "monitoring", "vhost": "/", "exchange": "amq.topic", "write": "^$", "read": ".*"}
        ],
        "policies": [
            {"vhost": "/", "name": "ha-all", "pattern": "^(?!amq\\.).*", "apply-to": "all",
             "definition": {"ha-mode": "all", "ha-promote-on-shutdown": "always"}, "priority": 0},
            {"vhost": "nova", "name": "ttl", "pattern": "^notifications", "apply-to": "queues",
             "definition": {"message-ttl": 60000}, "priority": 1}
        ],
        "parameters": [
            {"vhost": "/", "component": "operator_policy", "name": "cap",
             "value": {"pattern": ".*", "apply-to": "queues", "definition": {"max-length": 100000}, "priority": 0}},
            {"vhost": "/", "component": "federation-upstream", "name": "x", "value": {}}
        ],
        "global_parameters": [{"name": "cluster_name", "value": "rabbit@control"}],
        "exchanges": [
            {"name": "nova", "vhost": "/", "type": "topic", "durable": true, "auto_delete": false,
             "internal": false, "arguments": {}}
        ],
        "queues": [
            {"name": "conductor", "vhost": "/", "durable": true, "auto_delete": false,
             "arguments": {"x-queue-type": "quorum"}},
            {"name": "notifications.info", "vhost": "nova", "durable": true, "auto_delete": false,
             "arguments": {}}
        ],
        "bindings": [
            {"source": "nova", "vhost": "/", "destination": "conductor", "destination_type": "queue",
             "routing_key": "conductor", "arguments": {}}
        ]
    })
}

async fn import(broker: &TestBroker, doc: &Value) -> warren_tests::admin::CtlOutput {
    let path = broker.dir().join(format!("import-{}.json", rand_name()));
    std::fs::write(&path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    broker
        .brokerctl(&["import_definitions", path.to_str().unwrap()])
        .await
}

fn rand_name() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn export(broker: &TestBroker) -> Value {
    let path = broker.dir().join(format!("export-{}.json", rand_name()));
    broker
        .brokerctl(&["export_definitions", path.to_str().unwrap()])
        .await
        .ok();
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

async fn json_of(broker: &TestBroker, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&broker.brokerctl(&all).await.ok()).unwrap()
}

#[tokio::test]
async fn a_kolla_definitions_file_is_imported_keeping_what_exists() {
    let broker = TestBroker::start().await;
    let out = import(&broker, &kolla_file()).await;
    assert!(out.success, "{out:?}");
    for warning in [
        "users[].password_hash is ignored",
        "users[].password is ignored: the password bridge is off",
        "parameters of component \"federation-upstream\" are ignored",
        "global_parameters is ignored",
        "users[].limits is ignored",
    ] {
        assert!(out.stderr.contains(warning), "{warning}: {}", out.stderr);
    }
    let users = json_of(&broker, &["list_users"]).await;
    let tags = |name: &str| {
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .map(|u| u["tags"].clone())
    };
    assert_eq!(tags("openstack"), Some(json!(["administrator"])));
    assert_eq!(
        tags("monitoring"),
        Some(json!(["monitoring", "management"]))
    );
    let queues = json_of(&broker, &["list_queues"]).await;
    let conductor = queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "conductor")
        .unwrap();
    assert_eq!(conductor["type"], "quorum");
    // As in RabbitMQ, a policy with a key quorum queues do not support (ha-mode) does not apply.
    assert_eq!(conductor["policy"], Value::Null);
    assert_eq!(conductor["operator_policy"], "cap");
    let nova_queues = json_of(&broker, &["list_queues", "-p", "nova"]).await;
    assert_eq!(nova_queues[0]["policy"], "ttl");
    let bindings = json_of(&broker, &["list_bindings"]).await;
    assert!(
        bindings
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["source"] == "nova" && b["destination"] == "conductor"),
        "{bindings}"
    );
    assert_eq!(
        json_of(&broker, &["list_operator_policies"]).await[0]["name"],
        "cap"
    );
    // Imported again: everything exists and is kept; a changed permission stands.
    broker
        .brokerctl(&["set_permissions", "openstack", "^nova", ".*", ".*"])
        .await
        .ok();
    let again = import(&broker, &kolla_file()).await;
    assert!(again.stdout.contains("kept as they were"), "{again:?}");
    let perms = json_of(&broker, &["list_permissions"]).await;
    assert!(
        perms
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["user"] == "openstack" && p["configure"] == "^nova"),
        "{perms}"
    );
}

#[tokio::test]
async fn a_malformed_file_is_refused_by_its_json_path_and_nothing_is_applied() {
    let broker = TestBroker::start().await;
    let before = export(&broker).await;
    for (doc, path) in [
        (
            json!({"users": [{"name": "ok"}, {"name": 5}]}),
            "$.users[1].name: expected a string",
        ),
        (
            json!({"vhosts": [{"name": "v"}], "permissions": [{"user": "nobody", "vhost": "v", "configure": ".*", "write": ".*", "read": ".*"}]}),
            "$.permissions[0].user: no such user 'nobody'",
        ),
        (
            json!({"users": [{"name": "u"}], "policies": [{"vhost": "/", "name": "p", "pattern": ".*", "definition": {"message-ttl": -1}}]}),
            "$.policies[0]: -1 is not a valid message TTL",
        ),
        (
            json!({"queues": [{"name": "q", "vhost": "/", "durable": true, "arguments": {"x-max-length": "ten"}}]}),
            "$.queues[0].arguments: PRECONDITION_FAILED - invalid arg 'x-max-length'",
        ),
        (
            json!({"queues": [{"name": "q", "vhost": "/"}], "bindings": [{"source": "missing", "vhost": "/", "destination": "q", "destination_type": "queue", "routing_key": ""}]}),
            "$.bindings[0].source: no exchange 'missing' in vhost '/'",
        ),
        (json!([1, 2]), "$: expected an object"),
    ] {
        let out = import(&broker, &doc).await;
        assert!(!out.success, "{doc}");
        assert!(out.stderr.contains(path), "{path}: {out:?}");
    }
    let path = broker.dir().join("not-json.json");
    std::fs::write(&path, "{\"users\": [").unwrap();
    let out = broker
        .brokerctl(&["import_definitions", path.to_str().unwrap()])
        .await;
    assert!(
        !out.success && out.stderr.contains("is not JSON"),
        "{out:?}"
    );
    assert_eq!(
        export(&broker).await,
        before,
        "nothing of the refused files was applied"
    );
}

#[tokio::test]
async fn a_broker_rebuilt_from_its_export_exports_the_same_and_load_at_boot_applies_a_file() {
    let first = TestBroker::start().await;
    assert!(import(&first, &kolla_file()).await.success);
    let exported = export(&first).await;
    assert_eq!(exported["product_name"], "Warren");
    assert!(exported["users"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["password_hash"] == ""));
    assert!(exported["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| !x["name"].as_str().unwrap().starts_with("amq.")));
    let path = first.dir().join("boot.json");
    std::fs::write(&path, serde_json::to_vec(&exported).unwrap()).unwrap();
    let second = TestBroker::start_with(|c| c.definitions.load_at_boot = Some(path.clone())).await;
    let mut again = export(&second).await;
    let mut want = exported.clone();
    // The boot broker has its own configured users (the dev admin) beside the imported ones.
    for doc in [&mut again, &mut want] {
        doc["users"]
            .as_array_mut()
            .unwrap()
            .sort_by_key(|u| u["name"].as_str().unwrap().to_string());
        doc["permissions"]
            .as_array_mut()
            .unwrap()
            .sort_by_key(|p| format!("{}{}", p["user"], p["vhost"]));
    }
    assert_eq!(again["queues"], want["queues"]);
    assert_eq!(again["exchanges"], want["exchanges"]);
    assert_eq!(again["bindings"], want["bindings"]);
    assert_eq!(again["policies"], want["policies"]);
    assert_eq!(again["parameters"], want["parameters"]);
    assert_eq!(again["users"], want["users"]);
}
