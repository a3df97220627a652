"""What a service manager and a log pipeline see of Warren (issue 15 points 3 and 4): systemd's
readiness protocol (READY=1 only once clients can connect, STOPPING=1 at shutdown) and RabbitMQ's
log line format on stderr and in a log file that logrotate can rotate. Warren only."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import conftest
from conftest import TARGET
from service_broker import ServiceBroker

pytestmark = pytest.mark.skipif(TARGET == "rabbitmq", reason="Warren's service integration")

# The expression fluent-bit's and Google ops-agent's RabbitMQ parsers use for 3.9+ log files.
RABBITMQ_LINE = re.compile(
    r"^(?P<time>\d+-\d+-\d+ \d+:\d+:\d+\.\d+\+\d+:\d+) \[(?P<level>\w+)\] <(?P<pid>\d+\.\d+\.\d+)> "
    r"(?P<message>.*)$")
# RabbitMQ 3.8's (lager) line: YYYY-MM-DD HH:MM:SS.mmm [level] <pid> message.
LAGER_LINE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3} \[(debug|info|warning|error)\] "
                        r"<0\.\d+\.0> .*$")


def test_ready_is_sent_once_clients_can_connect_and_stopping_at_shutdown(broker, tmp_path):
    notify_path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(3 * conftest.STARTUP_TIMEOUT)
    service = ServiceBroker(conftest._warren_exe(), tmp_path / "root", broker,
                            env={"NOTIFY_SOCKET": str(notify_path)})
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "rabbitmqctl").symlink_to(Path(conftest._warren_exe()).with_name("brokerctl"))
    waiter = None
    try:
        service.start(wait=False)
        # `rabbitmqctl wait PIDFILE`, as init scripts and kolla run it, started before the broker is up.
        waiter = subprocess.Popen([str(tools / "rabbitmqctl"), "wait", "--timeout", "60",
                                   str(service.run_dir / "warren.pid")],
                                  env=dict(os.environ, WARREN_ADMIN_SOCKET=str(service.state / "admin.sock")),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        message = listener.recv(4096).decode()
        # At the moment READY=1 arrives the AMQP port accepts connections: nothing was polled.
        probe = socket.create_connection((conftest.HOST, service.port), timeout=5)
        probe.close()
        fields = dict(line.split("=", 1) for line in message.splitlines())
        assert fields["READY"] == "1", message
        assert fields["MAINPID"] == str(service.proc.pid), message
        assert str(service.port) in fields["STATUS"], message
        assert (service.run_dir / "warren.pid").read_text().strip() == str(service.proc.pid)
        out, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 0, (out, err)
        assert f"pid is {service.proc.pid}" in out, out
        conn = service.client().pika_connection()
        conn.channel().queue_declare("", exclusive=True)
        conn.close()
        service.signal(signal.SIGTERM)
        stopping = listener.recv(4096).decode()
        assert "STOPPING=1" in stopping.splitlines(), stopping
        assert service.proc.wait(30) == 0, service.output()
    finally:
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
        service.stop()
        listener.close()


def test_ready_reaches_an_abstract_notify_socket(broker, tmp_path):
    """An abstract NOTIFY_SOCKET (``@name``, as systemd in a container may use) works too."""
    name = f"warren-test-notify-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(3 * conftest.STARTUP_TIMEOUT)
    service = ServiceBroker(conftest._warren_exe(), tmp_path / "root", broker,
                            env={"NOTIFY_SOCKET": "@" + name})
    try:
        service.start(wait=False)
        assert "READY=1" in listener.recv(4096).decode().splitlines()
    finally:
        service.stop()
        listener.close()


def test_rabbitmq_log_format_on_stderr_and_in_a_rotated_log_file(broker, tmp_path):
    root = tmp_path / "root"
    log_file = root / "var" / "log" / "warren" / "warren.log"
    service = ServiceBroker(conftest._warren_exe(), root, broker, extra_toml=f"""
[log]
format = "rabbitmq"
file = "{log_file}"
""")
    try:
        service.start()
        client = service.client()
        conn = client.pika_connection()
        conn.close()
        conftest.wait_until(lambda: "listening" in log_file.read_text(), what="the log file")
        # logrotate's create mode: move the file away, then SIGHUP (systemctl reload).
        rotated = log_file.with_name("warren.log.1")
        log_file.rename(rotated)
        service.signal(signal.SIGHUP)
        conftest.wait_until(lambda: log_file.exists() and "SIGHUP" in log_file.read_text(),
                            what="a new log file after SIGHUP")
        assert oct(log_file.stat().st_mode & 0o777) == "0o640"
    finally:
        assert service.stop() == 0, service.output()
    for name, text in (("stderr", service.stderr()), ("file", rotated.read_text()),
                       ("reopened file", log_file.read_text())):
        lines = [l for l in text.splitlines() if l.strip()]
        assert lines, name
        for line in lines:
            m = RABBITMQ_LINE.match(line)
            assert m, f"{name}: {line!r}"
            assert m["level"] in ("debug", "info", "warning", "error"), line
            assert m["pid"] == f"0.{service.proc.pid}.0", line
    # The audit trail keeps its JSON objects on stderr, behind the same prefix.
    audit = [l for l in service.stderr().splitlines() if " audit {" in l]
    assert audit, service.stderr()[-2000:]
    import json
    record = json.loads(RABBITMQ_LINE.match(audit[0])["message"].removeprefix("audit "))
    assert record["kind"] == "authentication" and record["user"] == "admin", record
    assert "shutting down" in log_file.read_text()
    assert "listening" in rotated.read_text() and "listening" not in log_file.read_text()


def test_the_rabbitmq_3_8_format_and_a_clear_error_for_an_unknown_one(broker, tmp_path):
    service = ServiceBroker(conftest._warren_exe(), tmp_path / "root", broker,
                            extra_toml='\n[log]\nformat = "rabbitmq-3.8"\n')
    try:
        service.start()
    finally:
        assert service.stop() == 0, service.output()
    lines = [l for l in service.stderr().splitlines() if l.strip()]
    assert lines and all(LAGER_LINE.match(l) for l in lines), lines[:5]

    bad = ServiceBroker(conftest._warren_exe(), tmp_path / "bad", broker,
                        extra_toml='\n[log]\nformat = "syslog"\n')
    bad.write_layout()
    cp = subprocess.run([bad.exe, "--config", str(bad.config_path)], capture_output=True, text=True,
                        timeout=30)
    assert cp.returncode != 0
    assert "unknown variant `syslog`" in cp.stderr and "rabbitmq-3.8" in cp.stderr, cp.stderr
