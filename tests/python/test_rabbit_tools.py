"""RabbitMQ's command-line tools as OpenStack's deployment tools run them (issue 15): brokerctl
installed as ``rabbitmqctl`` and ``rabbitmq-diagnostics`` against Warren, RabbitMQ's own against
RabbitMQ (WARREN_TEST_TARGET=rabbitmq), the same command lines and the same expectations: exit
codes and the parsed shapes of what they print.

The command lines are the ones kolla-ansible's health check and precheck, the community.rabbitmq
Ansible modules, openstack-ansible and openstack-helm run."""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import TARGET


def run(broker, tool, *args):
    return broker.rabbit_tool(tool, *args)


def ok(broker, tool, *args) -> str:
    cp = run(broker, tool, *args)
    assert cp.returncode == 0, f"{tool} {' '.join(args)}: {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
    return cp.stdout


def as_json(broker, tool, *args):
    out = ok(broker, tool, *args)
    return json.loads(out)


@pytest.mark.parametrize("check", [
    "ping", "check_running", "check_local_alarms", "check_port_connectivity",
    "check_virtual_hosts", "status"])
def test_kolla_health_check_commands_succeed(broker, check):
    """kolla-ansible's rabbitmq health check: each ``rabbitmq-diagnostics -q`` check exits 0."""
    out = ok(broker, "rabbitmq-diagnostics", "-q", check)
    if check == "ping":
        assert "Ping succeeded" in out


def test_status_as_json_has_what_openstack_ansible_reads(broker):
    status = as_json(broker, "rabbitmqctl", "status", "--formatter", "json")
    assert isinstance(status["rabbitmq_version"], str) and status["rabbitmq_version"].count(".") == 2
    assert isinstance(status["pid"], int)
    assert any(l["protocol"] == "amqp/ssl" and l["port"] == broker.port for l in status["listeners"])
    assert status["alarms"] == []


def test_kolla_precheck_lists_queue_names_and_types(broker):
    conn = broker.pika_connection()
    ch = conn.channel()
    quorum, stream = f"pq-{uuid.uuid4().hex[:8]}", f"ps-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(quorum, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_declare(stream, durable=True, arguments={"x-queue-type": "stream"})
    try:
        rows = as_json(broker, "rabbitmqctl", "list_queues", "--silent", "name", "type",
                       "--formatter", "json")
        assert all(set(r) == {"name", "type"} for r in rows), rows
        types = {r["name"]: r["type"] for r in rows}
        assert (types[quorum], types[stream]) == ("quorum", "stream")
        # The table: no header with --silent, one tab-separated row per queue.
        lines = ok(broker, "rabbitmqctl", "list_queues", "--silent", "name", "type").splitlines()
        assert f"{quorum}\tquorum" in lines and "name\ttype" not in lines
        lines = ok(broker, "rabbitmqctl", "-q", "list_queues", "name", "durable").splitlines()
        assert lines[0] == "name\tdurable" and f"{quorum}\ttrue" in lines
    finally:
        ch.queue_delete(quorum)
        ch.queue_delete(stream)
        conn.close()


def test_the_ansible_user_module_command_lines(broker):
    """community.rabbitmq's rabbitmq_user: add, tag, permit, list as JSON, delete."""
    user = f"svc-{uuid.uuid4().hex[:8]}"
    ok(broker, "rabbitmqctl", "-q", "add_user", user, "not-a-login-on-warren")
    ok(broker, "rabbitmqctl", "-q", "set_user_tags", user, "monitoring")
    users = {u["user"]: u["tags"] for u in as_json(broker, "rabbitmqctl", "-q", "list_users",
                                                      "--formatter", "json")}
    assert users[user] == ["monitoring"]
    assert as_json(broker, "rabbitmqctl", "-q", "list_user_permissions", user,
                   "--formatter", "json") == []
    ok(broker, "rabbitmqctl", "-q", "set_permissions", "-p", "/", user, ".*", "^amq\\.", "^$")
    perms = as_json(broker, "rabbitmqctl", "-q", "list_user_permissions", user, "--formatter", "json")
    assert perms == [{"vhost": "/", "configure": ".*", "write": "^amq\\.", "read": "^$"}]
    listed = as_json(broker, "rabbitmqctl", "-q", "list_permissions", "-p", "/", "--formatter", "json")
    assert {"user": user, "configure": ".*", "write": "^amq\\.", "read": "^$"} in listed
    ok(broker, "rabbitmqctl", "-q", "clear_permissions", "-p", "/", user)
    ok(broker, "rabbitmqctl", "-q", "delete_user", user)
    cp = run(broker, "rabbitmqctl", "-q", "list_user_permissions", user)
    assert cp.returncode != 0
    assert run(broker, "rabbitmqctl", "-q", "delete_user", user).returncode != 0


def test_vhosts_and_policies_as_the_ansible_modules_read_them(broker):
    rows = as_json(broker, "rabbitmqctl", "-q", "list_vhosts", "name", "tracing", "--formatter", "json")
    assert {"name": "/", "tracing": False} in rows
    name = f"ttl-{uuid.uuid4().hex[:8]}"
    ok(broker, "rabbitmqctl", "-q", "set_policy", "--apply-to", "queues", "--priority", "1",
       name, "^ttl\\.", '{"message-ttl":60000}')
    policies = as_json(broker, "rabbitmqctl", "-q", "list_policies", "-p", "/", "--formatter", "json")
    mine = [p for p in policies if p["name"] == name]
    assert len(mine) == 1, policies
    definition = mine[0]["definition"]
    if isinstance(definition, str):  # RabbitMQ 3.10 prints it as a JSON string
        definition = json.loads(definition)
    assert (mine[0]["pattern"], mine[0]["apply-to"], int(mine[0]["priority"]), definition) == (
        "^ttl\\.", "queues", 1, {"message-ttl": 60000})
    ok(broker, "rabbitmqctl", "-q", "clear_policy", name)
    policies = as_json(broker, "rabbitmqctl", "-q", "list_policies", "--formatter", "json")
    assert all(p["name"] != name for p in policies)


def test_feature_flags_and_versions(broker):
    ok(broker, "rabbitmqctl", "-q", "list_feature_flags")
    ok(broker, "rabbitmqctl", "-q", "enable_feature_flag", "all")
    assert ok(broker, "rabbitmqctl", "version").strip().count(".") >= 2


def test_an_unknown_command_is_a_usage_error(broker):
    cp = run(broker, "rabbitmqctl", "no_such_command_at_all")
    assert cp.returncode == 64, (cp.stdout, cp.stderr)


@pytest.mark.skipif(TARGET != "warren", reason="Warren's refusal of password login")
def test_password_commands_say_why_they_fail_without_the_password_bridge(broker):
    user = f"pw-{uuid.uuid4().hex[:8]}"
    ok(broker, "rabbitmqctl", "-q", "add_user", user, "secret")
    for verb in ("authenticate_user", "change_password"):
        cp = run(broker, "rabbitmqctl", verb, user, "secret")
        assert cp.returncode != 0
        assert "certificate" in cp.stderr and "password_bridge" in cp.stderr, cp.stderr
    ok(broker, "rabbitmqctl", "-q", "delete_user", user)
    cp = run(broker, "rabbitmqctl", "stop_app_and_more")
    assert cp.returncode == 64 and "not supported by Warren" in cp.stderr


def test_list_consumers_shows_a_consumers_queue_tag_and_prefetch(broker):
    conn = broker.pika_connection()
    ch = conn.channel()
    queue = f"lc-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(queue, auto_delete=True)
    ch.basic_qos(prefetch_count=7)
    tag = ch.basic_consume(queue, lambda *a: None, consumer_tag=f"tag-{queue}")
    try:
        rows = as_json(broker, "rabbitmqctl", "-q", "list_consumers", "queue_name", "consumer_tag",
                       "ack_required", "prefetch_count", "--formatter", "json")
        assert {"queue_name": queue, "consumer_tag": tag, "ack_required": True,
                "prefetch_count": 7} in rows, rows
    finally:
        conn.close()


def test_stop_app_stops_serving_clients_until_start_app(broker):
    ok(broker, "rabbitmqctl", "-q", "stop_app")
    try:
        cp = run(broker, "rabbitmq-diagnostics", "-q", "check_running")
        assert cp.returncode == 69, (cp.stdout, cp.stderr)
        with pytest.raises(Exception):
            broker.pika_connection().close()
        # The node itself still answers.
        ok(broker, "rabbitmq-diagnostics", "-q", "ping")
    finally:
        ok(broker, "rabbitmqctl", "-q", "start_app")
    ok(broker, "rabbitmq-diagnostics", "-q", "check_running")
    broker.pika_connection().close()


def test_list_channels_counts_consumers_and_unacknowledged_messages(broker):
    conn = broker.pika_connection()
    idle, busy = conn.channel(), conn.channel()
    queue = f"lch-{uuid.uuid4().hex[:8]}"
    busy.queue_declare(queue, auto_delete=True)
    busy.confirm_delivery()
    for i in range(2):
        busy.basic_publish("", queue, f"m{i}".encode())
    busy.basic_qos(prefetch_count=5)
    got = []
    busy.basic_consume(queue, lambda ch, method, props, body: got.append(body))
    deadline = 50
    while len(got) < 2 and deadline:
        conn.process_data_events(time_limit=0.1)
        deadline -= 1
    try:
        rows = as_json(broker, "rabbitmqctl", "-q", "list_channels", "consumer_count",
                       "messages_unacknowledged", "prefetch_count", "confirm", "--formatter", "json")
        assert {"consumer_count": 1, "messages_unacknowledged": 2, "prefetch_count": 5,
                "confirm": True} in rows, rows
        assert {"consumer_count": 0, "messages_unacknowledged": 0, "prefetch_count": 0,
                "confirm": False} in rows, rows
    finally:
        conn.close()


def test_versions_alarms_startup_and_a_single_nodes_cluster_status(broker):
    # (`--version` is 3.13's spelling; the 3.10 of the differential run knows only `version`.)
    for spelling in (["--version"] if TARGET == "warren" else []) + ["version"]:
        out = ok(broker, "rabbitmqctl", spelling).strip()
        assert out.count(".") == 2 and out[0].isdigit(), out
    ok(broker, "rabbitmq-diagnostics", "-q", "check_alarms")
    ok(broker, "rabbitmqctl", "-q", "await_startup")
    status = as_json(broker, "rabbitmqctl", "-q", "cluster_status", "--formatter", "json")
    assert len(status["running_nodes"]) == 1 and status["running_nodes"] == status["disk_nodes"], status


def test_exchanges_bindings_and_topic_permissions_as_listed(broker):
    vhost = f"vh-{uuid.uuid4().hex[:8]}"
    user = f"tp-{uuid.uuid4().hex[:8]}"
    ok(broker, "rabbitmqctl", "-q", "add_vhost", vhost)
    try:
        assert {"name": vhost, "tracing": False} in as_json(
            broker, "rabbitmqctl", "-q", "list_vhosts", "name", "tracing", "--formatter", "json")
        exchanges = as_json(broker, "rabbitmqctl", "-q", "list_exchanges", "-p", vhost, "name", "type",
                            "--formatter", "json")
        assert {"name": "amq.topic", "type": "topic"} in exchanges, exchanges
        ok(broker, "rabbitmqctl", "-q", "add_user", user, "unused")
        ok(broker, "rabbitmqctl", "-q", "set_topic_permissions", "-p", vhost, user, "amq.topic",
           "^nova\\.", "^nova\\.")
        rows = as_json(broker, "rabbitmqctl", "-q", "list_user_topic_permissions", user,
                       "--formatter", "json")
        assert rows == [{"vhost": vhost, "exchange": "amq.topic", "write": "^nova\\.",
                         "read": "^nova\\."}], rows
        ok(broker, "rabbitmqctl", "-q", "delete_user", user)
    finally:
        ok(broker, "rabbitmqctl", "-q", "delete_vhost", vhost)
    names = [v["name"] for v in as_json(broker, "rabbitmqctl", "-q", "list_vhosts", "--formatter", "json")]
    assert vhost not in names

    conn = broker.pika_connection()
    ch = conn.channel()
    queue = f"lb-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(queue)
    ch.queue_bind(queue, "amq.topic", routing_key=f"{queue}.#")
    ch.confirm_delivery()
    for _ in range(3):
        ch.basic_publish("", queue, b"x")
    try:
        bindings = as_json(broker, "rabbitmqctl", "-q", "list_bindings", "source_name",
                           "destination_name", "destination_kind", "routing_key", "--formatter", "json")
        assert {"source_name": "amq.topic", "destination_name": queue, "destination_kind": "queue",
                "routing_key": f"{queue}.#"} in bindings, bindings
        out = ok(broker, "rabbitmqctl", "purge_queue", queue)
        assert queue in out
        counts = {r["name"]: r["messages"] for r in as_json(
            broker, "rabbitmqctl", "-q", "list_queues", "name", "messages", "--formatter", "json")}
        assert counts[queue] == 0, counts
        ok(broker, "rabbitmqctl", "-q", "delete_queue", queue)
        names = [r["name"] for r in as_json(broker, "rabbitmqctl", "-q", "list_queues", "name",
                                            "--formatter", "json")]
        assert queue not in names
    finally:
        conn.close()


def test_list_connections_and_close_connection(broker):
    conn = broker.pika_connection()
    try:
        # As a script closes them: the table's pids (RabbitMQ's `<rabbit@host.N.M>`, Warren's
        # peer address), which close_connection takes.
        lines = ok(broker, "rabbitmqctl", "--silent", "list_connections", "pid", "user", "peer_host",
                   "state").splitlines()
        rows = [dict(zip(("pid", "user", "peer_host", "state"), l.split("\t"))) for l in lines]
        mine = [r for r in rows if r["user"] == "admin" and r["peer_host"] == "127.0.0.1"
                and r["state"] == "running"]
        assert mine, rows
        for row in mine:
            ok(broker, "rabbitmqctl", "-q", "close_connection", row["pid"], "closed by the test")
        with pytest.raises(Exception):
            for _ in range(50):
                conn.process_data_events(time_limit=0.1)
                conn.channel()
    finally:
        if conn.is_open:
            conn.close()


def test_definitions_export_and_import(broker, tmp_path):
    user = f"def-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "definitions.json"
    ok(broker, "rabbitmqctl", "-q", "export_definitions", str(path))
    exported = json.loads(path.read_text())
    assert {"users", "vhosts", "permissions", "queues", "exchanges", "bindings"} <= set(exported)
    exported["users"].append({"name": user, "tags": [], "password_hash": "",
                              "hashing_algorithm": "rabbit_password_hashing_sha256"})
    path.write_text(json.dumps(exported))
    ok(broker, "rabbitmqctl", "-q", "import_definitions", str(path))
    try:
        users = [u["user"] for u in as_json(broker, "rabbitmqctl", "-q", "list_users", "--formatter", "json")]
        assert user in users
    finally:
        ok(broker, "rabbitmqctl", "-q", "delete_user", user)
