"""Warren's Prometheus endpoint (issue 15 point 2): /metrics and /metrics/per-object in the text
exposition format with rabbitmq_prometheus's names, counting real client traffic, and accepted
by Prometheus's own checker (``promtool check metrics``, from Debian's prometheus package)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from conftest import TARGET

pytestmark = pytest.mark.skipif(TARGET != "warren", reason="Warren's own metrics listener")


def metrics_url(broker) -> str:
    for path in broker.log_paths:
        if os.path.exists(path):
            m = re.search(r"Prometheus metrics: (http://\S+/metrics)", open(path, errors="replace").read())
            if m:
                return m.group(1)
    pytest.fail("warren --dev did not print its metrics URL")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def value(text: str, name: str, **labels) -> float:
    """The value of the sample `name` whose labels include `labels`."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample_labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}")[0]))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found or os.geteuid() != 0:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], env=env, timeout=600, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "prometheus"], env=env,
                   timeout=900, stdout=subprocess.DEVNULL)
    return shutil.which("promtool")


def test_metrics_count_real_traffic_under_rabbitmqs_names(broker):
    url = metrics_url(broker)
    before = scrape(url)
    received0 = value(before, "rabbitmq_global_messages_received_total", protocol="amqp091")
    conn = broker.pika_connection()
    ch = conn.channel()
    queue = f"prom-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(queue)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", queue, b"x" * 100)
    ch.basic_publish("", f"nowhere-{queue}", b"dropped")
    method, _, _ = ch.basic_get(queue, auto_ack=False)
    ch.basic_ack(method.delivery_tag)
    ch.basic_get(queue, auto_ack=False)  # left unacknowledged
    try:
        deadline = time.monotonic() + 10
        while True:
            text = scrape(url)
            if value(text, "rabbitmq_global_messages_acknowledged_total", protocol="amqp091") >= 1:
                break
            assert time.monotonic() < deadline, "the ack is not counted"
            time.sleep(0.1)
        assert value(text, "rabbitmq_global_messages_received_total", protocol="amqp091") >= received0 + 4
        assert value(text, "rabbitmq_global_messages_confirmed_total", protocol="amqp091") >= 4
        assert value(text, "rabbitmq_global_messages_unroutable_dropped_total", protocol="amqp091") >= 1
        assert value(text, "rabbitmq_global_messages_delivered_get_manual_ack_total", protocol="amqp091") >= 2
        assert value(text, "rabbitmq_message_size_bytes_bucket", protocol="amqp091", le="256") >= 3
        assert value(text, "rabbitmq_connections") >= 1
        assert value(text, "rabbitmq_channels") >= 1
        assert value(text, "rabbitmq_identity_info") == 1
        assert value(text, "rabbitmq_build_info") == 1
        assert value(text, "rabbitmq_process_open_fds") > 0
        assert value(text, "rabbitmq_process_resident_memory_bytes") > 0
        assert value(text, "rabbitmq_disk_space_available_bytes") > 0
        assert value(text, "rabbitmq_alarms_memory_used_watermark") == 0
        assert value(text, "rabbitmq_auth_attempts_succeeded_total", protocol="amqp091") >= 1
        # Per object: this queue's ready and unacknowledged messages, by vhost and queue.
        per = scrape(url + "/per-object")
        assert value(per, "rabbitmq_queue_messages_ready", vhost="/", queue=queue) == 1
        assert value(per, "rabbitmq_queue_messages_unacked", vhost="/", queue=queue) == 1
        assert value(per, "rabbitmq_queue_messages", vhost="/", queue=queue) == 2
        # Aggregated: one sample without labels.
        assert value(text, "rabbitmq_queue_messages_ready") >= 1
    finally:
        ch.queue_delete(queue)
        conn.close()


def test_every_way_a_queue_goes_is_a_deletion(broker):
    """rabbitmq_queues_deleted_total counts queue.delete and also what RabbitMQ counts besides:
    x-expires, auto-delete after the last consumer, an exclusive queue's connection closing."""
    url = metrics_url(broker)

    def deleted() -> float:
        return value(scrape(url), "rabbitmq_queues_deleted_total")

    def counted(before: float, what: str) -> float:
        deadline = time.monotonic() + 10
        while (now := deleted()) < before + 1:
            assert time.monotonic() < deadline, f"{what} is not counted as a deletion"
            time.sleep(0.05)
        return now

    tag = uuid.uuid4().hex[:8]
    conn = broker.pika_connection()
    ch = conn.channel()
    n = deleted()
    ch.queue_declare(f"prom-del-{tag}")
    ch.queue_delete(f"prom-del-{tag}")
    n = counted(n, "queue.delete")
    ch.queue_declare(f"prom-exp-{tag}", arguments={"x-expires": 200})
    n = counted(n, "x-expires")
    ch.queue_declare(f"prom-auto-{tag}", auto_delete=True)
    consumer = ch.basic_consume(f"prom-auto-{tag}", lambda *a: None)
    ch.basic_cancel(consumer)
    n = counted(n, "auto-delete")
    other = broker.pika_connection()
    other.channel().queue_declare(f"prom-excl-{tag}", exclusive=True)
    other.close()
    counted(n, "an exclusive queue's owner closing")
    conn.close()


def test_promtool_accepts_both_endpoints(broker):
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed and cannot be installed here")
    url = metrics_url(broker)
    for path in ("", "/per-object"):
        text = scrape(url + path)
        cp = subprocess.run([tool, "check", "metrics"], input=text, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        assert cp.returncode == 0, f"promtool check metrics {path}:\n{cp.stdout}"


def test_other_paths_and_methods_are_refused(broker):
    url = metrics_url(broker)
    base = url.rsplit("/metrics", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(base + "/api/overview", timeout=10)
    assert e.value.code == 404
    req = urllib.request.Request(url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405


def test_a_prometheus_server_scrapes_warren_and_the_dashboard_queries_return_series(broker, tmp_path):
    """A real Prometheus (Debian's) scrapes Warren on loopback; PromQL from Grafana's
    RabbitMQ-Overview dashboard (every panel joins on rabbitmq_identity_info) and from RabbitMQ's
    alert rules returns series for it."""
    if promtool() is None or shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed and cannot be installed here")
    import json as _json
    import socket

    target = metrics_url(broker).split("//", 1)[1].rsplit("/metrics", 1)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "prometheus.yml").write_text(f"""\
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: warren
    static_configs:
      - targets: ["{target}"]
""")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn = broker.pika_connection()
    ch = conn.channel()
    queue = f"prom-dash-{uuid.uuid4().hex[:8]}"
    ch.queue_declare(queue)
    ch.basic_publish("", queue, b"ready")

    def query(promql: str) -> list:
        q = urllib.parse.quote(promql)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={q}", timeout=10) as r:
            body = _json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if query('rabbitmq_identity_info{job="warren"}'):
                    break
            except (OSError, urllib.error.URLError):
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped Warren"
            time.sleep(0.5)
        time.sleep(2.5)  # two more scrapes, for rate()
        join = "* on(instance, job) group_left(rabbitmq_cluster, rabbitmq_node) rabbitmq_identity_info"
        dashboard = [
            f"sum(rabbitmq_queue_messages_ready {join})",
            f"sum(rabbitmq_queue_messages_unacked {join})",
            f"sum(rate(rabbitmq_global_messages_received_total[60s]) {join})",
            f"sum(rabbitmq_connections {join}) by(rabbitmq_node)",
            f"sum(rabbitmq_queues {join}) by(rabbitmq_node)",
            f"sum(rabbitmq_process_resident_memory_bytes {join}) by(rabbitmq_node)",
            f"(rabbitmq_resident_memory_limit_bytes {join}) - (rabbitmq_process_resident_memory_bytes {join})",
            f"rabbitmq_disk_space_available_bytes {join}",
            f"(rabbitmq_process_max_fds {join}) - (rabbitmq_process_open_fds {join})",
        ]
        for promql in dashboard:
            assert query(promql), f"no series for {promql}"
        assert query(f"sum(rabbitmq_queue_messages_ready {join})")[0]["value"][1] != "0"
        # RabbitMQ's alert rules evaluate (no alarm: no series, but a valid query).
        for rule in ("rabbitmq_alarms_memory_used_watermark > 0",
                     "rabbitmq_alarms_free_disk_space_watermark > 0",
                     "rabbitmq_alarms_file_descriptor_limit > 0"):
            assert query(rule) == []
    finally:
        ch.queue_delete(queue)
        conn.close()
        proc.terminate()
        proc.wait(timeout=30)
