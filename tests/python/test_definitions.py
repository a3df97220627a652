"""RabbitMQ definitions files both ways, with real files: Warren imports what RabbitMQ 3.10's
``rabbitmqctl export_definitions`` wrote (tests/fixtures/definitions/rabbitmq-3.10.8.json: users
with password hashes, a vhost, permissions, topic permissions, policies with ``ha-*``, an operator
policy as RabbitMQ exports it, quorum, classic and stream queues, an alternate exchange, bindings),
and its export of the result is tests/fixtures/definitions/warren-export.json, which RabbitMQ's
``import_definitions`` in turn reads — moving off Warren is as easy as moving on.
Regenerate the Warren fixture with WARREN_WRITE_FIXTURES=1 (after reviewing the difference).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import rabbitmq_target
from conftest import TARGET, WarrenProcess, _warren_exe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "definitions"
FROM_RABBITMQ = FIXTURES / "rabbitmq-3.10.8.json"
FROM_WARREN = FIXTURES / "warren-export.json"


def brokerctl(proc: WarrenProcess, *args: str) -> subprocess.CompletedProcess:
    exe = str(Path(_warren_exe()).with_name("brokerctl"))
    return subprocess.run([exe, "--socket", str(proc.data_dir / "admin.sock"), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(TARGET != "warren", reason="imports into a private warren --dev")
def test_warren_imports_rabbitmqs_export_and_exports_it_again(tmp_path):
    proc = WarrenProcess(_warren_exe(), tmp_path / "data", rabbitmq_target.free_port())
    proc.start()
    try:
        cp = brokerctl(proc, "import_definitions", str(FROM_RABBITMQ))
        assert cp.returncode == 0, cp.stderr
        assert "password_hash is ignored" in cp.stderr
        queues = json.loads(brokerctl(proc, "--format", "json", "list_queues").stdout)
        types = {q["name"]: (q["type"], q["policy"], q["operator_policy"]) for q in queues}
        assert types == {
            "compute": ("classic", "ttl", "cap"),
            "conductor": ("quorum", "ttl", "cap"),
            "nova_fanout": ("stream", None, None),
        }, types
        out = tmp_path / "export.json"
        cp = brokerctl(proc, "export_definitions", str(out))
        assert cp.returncode == 0, cp.stderr
        exported = json.loads(out.read_text())
        exported["product_version"] = "(any)"
        if os.environ.get("WARREN_WRITE_FIXTURES"):
            FROM_WARREN.write_text(json.dumps(exported, indent=2, sort_keys=True) + "\n")
        assert exported == json.loads(FROM_WARREN.read_text())
        # Importing its own export again changes nothing.
        cp = brokerctl(proc, "import_definitions", str(out))
        assert cp.returncode == 0 and "kept as they were" in cp.stdout, cp
    finally:
        proc.stop()


@pytest.mark.skipif(TARGET != "rabbitmq", reason="RabbitMQ's own import_definitions")
def test_rabbitmq_imports_warrens_export(broker, conn_cleanup):
    code, out = broker.ctl("import_definitions", str(FROM_WARREN))
    assert code == 0, out
    code, out = broker.ctl("list_queues", "--silent", "name", "type")
    assert "conductor\tquorum" in out and "nova_fanout\tstream" in out and "compute\tclassic" in out, out
    code, out = broker.ctl("list_users", "--silent")
    assert "openstack" in out and "monitor" in out, out
    code, out = broker.ctl("list_operator_policies", "--silent")
    assert "cap" in out, out


@pytest.fixture
def conn_cleanup(broker):
    """Removes what the imported file created, so the session's other tests are not affected."""
    yield
    for args in [("clear_policy", "ttl"), ("clear_operator_policy", "cap"), ("delete_vhost", "nova"),
                 ("delete_user", "openstack"), ("delete_user", "monitor")]:
        broker.ctl(*args)
    c = broker.pika_connection()
    try:
        ch = c.channel()
        for q in ("conductor", "compute", "nova_fanout"):
            ch.queue_delete(q)
        for x in ("orders", "unrouted", "nova"):
            ch.exchange_delete(x)
    finally:
        c.close()
