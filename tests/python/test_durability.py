"""Durability: what survives a restart or a crash, graceful shutdown, and a full disk.

Every test here starts its own broker (never the session broker), because it
stops, kills or restarts it:

* ``test_crash_cycles``: tests/crash/crash_test.py with 20 ``kill -9`` cycles
  (``WARREN_CRASH_CYCLES`` to change); nothing confirmed may be lost.
* ``test_restart_preserves_definitions``: durable exchanges (every type, with an
  alternate-exchange), durable queues with arguments, queue, exchange-to-exchange
  and headers bindings, vhosts/users/permissions made with brokerctl; after a
  SIGTERM and a start on the same data directory they are all there and behave
  (passive declares, routing, equivalence checks), transient objects and
  non-persistent messages are gone, persistent messages in durable queues are
  back with redelivered=True.
* ``test_sigterm_closes_clients_with_320_and_keeps_confirmed``: SIGTERM closes
  every connection with 320 CONNECTION_FORCED and keeps every confirmed message.
* ``test_disk_full_*``: the data directory on a 16 MiB tmpfs with
  ``disk_free_limit_bytes`` = 4 MiB: the broker never acks a message it could not
  store (nack or connection.blocked instead), publishers are released once
  consumers free space, and a restart (clean, or after kill -9 on the full disk)
  loses nothing that was acked.

Targets: everything runs against Warren (``WARREN_TEST_TARGET=warren``). The
SIGTERM test also runs against RabbitMQ (a private node it restarts); the others
need Warren's binary, ``kill -9``, brokerctl or Warren's configuration and are
skipped there. With ``external`` every test is skipped (the suite cannot restart
a broker it did not start). The disk-full tests need root (``mount -t tmpfs``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

import rabbitmq_target
from conftest import HOST, REPO_ROOT, STARTUP_TIMEOUT, TARGET, Broker, wait_until

CRASH_SCRIPT = REPO_ROOT / "tests" / "crash" / "crash_test.py"

warren_only = pytest.mark.skipif(
    TARGET != "warren",
    reason="needs a Warren broker the suite starts itself (kill -9, brokerctl, Warren's configuration)")

#: RabbitMQ's text for the connection.close sent to clients at shutdown (Warren sends the same).
SHUTDOWN_TEXT = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"

DISK_SIZE = 16 << 20                 # the tmpfs holding the data directory
DISK_FREE_LIMIT = 4 << 20            # disk_free_limit_bytes
DISK_BODY = 100_000                  # message size in the disk-full tests
DISK_MAX_PUBLISHES = 2_000           # bound on the publishes of one disk-full test (200 MB)
DISK_NACK_PAUSE = 0.02               # after a nack, so that the 1 s disk check catches up
DISK_BLOCK_TIMEOUT = 30              # seconds until the publisher must have been blocked
DISK_UNBLOCK_TIMEOUT = 15            # seconds from the drain until connection.unblocked


# --------------------------------------------------------------------------
# private, restartable brokers
# --------------------------------------------------------------------------

class WarrenNode:
    """A Warren broker on its own data directory that a test can stop (SIGTERM), kill (-9) and start
    again. ``--dev`` by default; with ``config`` (a function of the port returning TOML) it runs
    ``warren --config``. Every start takes a new port; the output of all runs is appended to one file."""

    def __init__(self, base: Path, data_dir: Path | None = None, config=None, tls_base: Path | None = None):
        import conftest
        self.exe = conftest._warren_exe()
        self.base = base
        self.data_dir = data_dir or base / "data"
        self.config = config
        self.tls_base = tls_base or self.data_dir  # the directory holding tls/
        self.log_path = base / "warren.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.runs = 0

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        self.runs += 1
        self.port = rabbitmq_target.free_port()
        if self.config is None:
            cmd = [self.exe, "--dev", "--data-dir", str(self.data_dir), "--listen", f"{HOST}:{self.port}"]
        else:
            path = self.base / "warren.toml"
            path.write_text(self.config(self.port))
            cmd = [self.exe, "--config", str(path)]
        with open(self.log_path, "ab") as out:
            out.write(f"=== run {self.runs}: {' '.join(cmd)}\n".encode())
            out.flush()
            env = dict(os.environ)
            env.setdefault("RUST_BACKTRACE", "1")
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        try:
            rabbitmq_target.wait_for_port(HOST, self.port, deadline, self.proc)
            tls = self.tls_base / "tls"
            while not all((tls / f).exists() for f in ("ca.pem", "admin.pem", "admin.key")):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{tls} has no client certificate")
                time.sleep(0.05)
        except Exception as e:
            self.kill()
            raise RuntimeError(f"warren run {self.runs} did not start: {e}\n{self.output()}") from e

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM; returns the exit status (fails the test if the broker does not exit in time)."""
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            pytest.fail(f"warren did not exit within {timeout}s of SIGTERM\n{self.output()}", pytrace=False)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def broker(self) -> Broker:
        return Broker("warren", self.port, self.tls_base, [self.log_path])

    def ctl(self, *args: str) -> str:
        exe = Path(self.exe).with_name("brokerctl")
        if not exe.exists():
            exe = REPO_ROOT / "target" / "debug" / "brokerctl"
        cp = subprocess.run([str(exe), "--socket", str(self.data_dir / "admin.sock"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        assert cp.returncode == 0, f"brokerctl {' '.join(args)}: {cp.returncode}\n{cp.stdout}{cp.stderr}"
        return cp.stdout

    def output(self, limit: int = 30000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-limit:]


class RabbitMQRestartableNode(rabbitmq_target.RabbitMQNode):
    """A private RabbitMQ node (its own name and ports) that can be stopped and started again on the
    same mnesia directory; users are set up on the first start only."""

    def __init__(self, base: Path):
        super().__init__(base)
        self.nodename = f"warrendurability{os.getpid()}@localhost"
        self.runs = 0

    def start(self, timeout: float = 120) -> None:
        self.runs += 1
        if self.runs == 1:
            super().start(timeout)
            return
        exe = rabbitmq_target.ensure_installed()
        self.write_config()
        self.proc = subprocess.Popen(
            [exe], env=self.env(), cwd=str(self.base),
            stdout=open(self.stdout_path, "ab"), stderr=open(self.stderr_path, "ab"),
            stdin=subprocess.DEVNULL, start_new_session=True)
        cp = self.ctl("wait", "--timeout", str(int(timeout)), str(self.base / "rabbitmq.pid"),
                      timeout=timeout + 10, check=False)
        if cp.returncode != 0 or self.proc.poll() is not None:
            out = self.output()
            super().stop()
            raise RuntimeError(f"RabbitMQ did not start again: {cp.stdout}\n{out}")
        rabbitmq_target.wait_for_port(HOST, self.port, time.monotonic() + timeout, self.proc)

    def stop(self, timeout: float = 60) -> int:
        proc = self.proc
        super().stop(timeout)
        return proc.returncode if proc is not None else None

    def broker(self) -> Broker:
        return Broker("rabbitmq", self.port, self.base, [self.stdout_path, self.stderr_path])


@pytest.fixture
def nodes(tmp_path):
    """Makes private brokers; stops them at the end and prints their output (shown for failures)."""
    made = []

    def make(kind: str = "warren", **kw):
        base = tmp_path / f"node{len(made)}"
        base.mkdir()
        node = WarrenNode(base, **kw) if kind == "warren" else RabbitMQRestartableNode(base)
        made.append(node)
        return node

    yield make
    for node in made:
        try:
            if isinstance(node, WarrenNode):
                node.kill()
                print(f"--- {node.log_path} ---\n{node.output()}")
            else:
                node.stop()
                print(node.output())
        except Exception as e:  # keep stopping the others
            print(f"stopping {node}: {e!r}")


def close_quietly(*conns) -> None:
    for c in conns:
        try:
            if c is not None and c.is_open:
                c.close()
        except Exception:
            pass


def drain_queue(ch, queue: str, limit: int = 100_000):
    """basic_get with ack until the queue is empty: [(method, properties, body)]."""
    out = []
    for _ in range(limit):
        method, props, body = ch.basic_get(queue, auto_ack=False)
        if method is None:
            return out
        out.append((method, props, body))
        ch.basic_ack(method.delivery_tag)
    raise AssertionError(f"{queue}: more than {limit} messages")


def expect_channel_error(conn, code: int, fn, text: str | None = None):
    """Runs fn(channel) on a new channel and expects the broker to close it with `code`."""
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        fn(ch)
    assert ei.value.reply_code == code, ei.value
    if text is not None:
        assert text in ei.value.reply_text, ei.value
    return ei.value


def wait_closed_by_broker(conn, timeout: float = 10.0) -> pika.exceptions.ConnectionClosedByBroker:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn.process_data_events(time_limit=0.1)
        except pika.exceptions.ConnectionClosedByBroker as e:
            return e
    raise AssertionError(f"connection not closed by the broker within {timeout}s")


# --------------------------------------------------------------------------
# (a) the crash test
# --------------------------------------------------------------------------

CRASH_CYCLES = int(os.environ.get("WARREN_CRASH_CYCLES", "20"))


@warren_only
@pytest.mark.timeout(120 + 6 * CRASH_CYCLES)
def test_crash_cycles(tmp_path):
    import conftest
    cycles = CRASH_CYCLES
    cmd = [sys.executable, str(CRASH_SCRIPT), "--cycles", str(cycles), "--bin", conftest._warren_exe(),
           "--workdir", str(tmp_path / "crash")]
    if os.environ.get("WARREN_CRASH_SEED"):
        cmd += ["--seed", os.environ["WARREN_CRASH_SEED"]]
    cp = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        timeout=120 + 6 * cycles)
    lines = [line for line in cp.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result line\n{cp.stdout[-20000:]}"
    result = json.loads(lines[-1])
    report = f"{' '.join(cmd)}\n{cp.stdout[-20000:]}"
    assert result["lost"] == 0, report
    assert result["unexpected"] == 0, report
    assert result["corrupt"] == 0, report
    assert cp.returncode == 0, report
    assert result["cycles"] == cycles, report
    assert result["confirmed"] > 0, report
    print(lines[-1])


# --------------------------------------------------------------------------
# (b) definitions, vhosts, users and messages survive a restart
# --------------------------------------------------------------------------

EXCHANGES = {
    # name: (type, arguments, internal)
    "d.ae": ("fanout", None, False),
    "d.direct": ("direct", {"alternate-exchange": "d.ae"}, False),
    "d.fanout": ("fanout", None, False),
    "d.topic": ("topic", None, False),
    "d.headers": ("headers", {"alternate-exchange": "d.ae"}, False),
    "d.inner": ("fanout", None, True),
    "d.dlx": ("direct", None, False),
}
QUEUES = {
    "d.q.ttl": {"x-message-ttl": 60_000},
    "d.q.maxlen": {"x-max-length": 2},
    "d.q.dlx": {"x-dead-letter-exchange": "d.dlx", "x-dead-letter-routing-key": "dead"},
    "d.q.prio": {"x-max-priority": 5},
    "d.q.ae": None,
    "d.q.fanout": None,
    "d.q.topic": None,
    "d.q.headers": None,
    "d.q.inner": None,
    "d.q.dead": None,
    "d.q.msgs": None,
}
HEADERS_BINDING = {"x-match": "all", "h1": "v1", "h2": 2}
# (queue, exchange, routing key, arguments)
QUEUE_BINDINGS = [
    ("d.q.ttl", "d.direct", "ttl", None),
    ("d.q.maxlen", "d.direct", "maxlen", None),
    ("d.q.dlx", "d.direct", "dlx", None),
    ("d.q.prio", "d.direct", "prio", None),
    ("d.q.msgs", "d.direct", "msgs", None),
    ("d.q.fanout", "d.fanout", "", None),
    ("d.q.topic", "d.topic", "a.*.c", None),
    ("d.q.headers", "d.headers", "", HEADERS_BINDING),
    ("d.q.ae", "d.ae", "", None),
    ("d.q.inner", "d.inner", "", None),
    ("d.q.dead", "d.dlx", "dead", None),
]
VHOST = "durability-vh"
# Inequivalent redeclares after the restart: (what, declare with different arguments, the argument named)
INEQUIVALENT = [
    ("d.q.ttl", lambda ch: ch.queue_declare("d.q.ttl", durable=True, arguments={"x-message-ttl": 1000}),
     "x-message-ttl"),
    ("d.q.ttl", lambda ch: ch.queue_declare("d.q.ttl", durable=False, arguments={"x-message-ttl": 60_000}),
     "durable"),
    ("d.q.maxlen", lambda ch: ch.queue_declare("d.q.maxlen", durable=True, arguments={"x-max-length": 3}),
     "x-max-length"),
    ("d.q.dlx", lambda ch: ch.queue_declare("d.q.dlx", durable=True, arguments={
        "x-dead-letter-exchange": "other", "x-dead-letter-routing-key": "dead"}), "x-dead-letter-exchange"),
    ("d.q.prio", lambda ch: ch.queue_declare("d.q.prio", durable=True, arguments={"x-max-priority": 9}),
     "x-max-priority"),
    ("d.direct", lambda ch: ch.exchange_declare("d.direct", "direct", durable=True,
                                                arguments={"alternate-exchange": "other"}), "alternate-exchange"),
    ("d.direct", lambda ch: ch.exchange_declare("d.direct", "fanout", durable=True,
                                                arguments={"alternate-exchange": "d.ae"}), "type"),
    ("d.topic", lambda ch: ch.exchange_declare("d.topic", "topic", durable=False), "durable"),
]


def _declare_definitions(ch) -> None:
    for x, (kind, args, internal) in EXCHANGES.items():
        ch.exchange_declare(x, kind, durable=True, internal=internal, arguments=args)
    for q, args in QUEUES.items():
        ch.queue_declare(q, durable=True, arguments=args)
    for q, x, key, args in QUEUE_BINDINGS:
        ch.queue_bind(q, x, key, arguments=args)
    ch.exchange_bind("d.inner", "d.topic", "e2e.#")   # exchange to exchange
    # Transient objects, and durable ones deleted again: none of them may come back.
    ch.exchange_declare("t.x", "direct", durable=False)
    ch.queue_declare("t.q", durable=False)
    ch.queue_bind("t.q", "d.direct", "t")              # a durable exchange bound to a transient queue
    ch.queue_bind("t.q", "t.x", "t")
    ch.exchange_declare("d.x.gone", "topic", durable=True)
    ch.queue_declare("d.q.gone", durable=True)
    ch.queue_bind("d.q.gone", "d.x.gone", "#")
    ch.queue_delete("d.q.gone")
    ch.exchange_delete("d.x.gone")
    ch.queue_bind("d.q.fanout", "d.direct", "unbound")
    ch.queue_unbind("d.q.fanout", "d.direct", "unbound")


def _lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.strip()}


def _listing(node: WarrenNode) -> dict[str, set[str]]:
    out = {
        "users": _lines(node.ctl("list_users")),
        "vhosts": _lines(node.ctl("list_vhosts")),
    }
    for vh in ("/", VHOST):
        out[f"permissions {vh}"] = _lines(node.ctl("list_permissions", "-p", vh))
        out[f"exchanges {vh}"] = _lines(node.ctl("list_exchanges", "-p", vh))
        out[f"bindings {vh}"] = _lines(node.ctl("list_bindings", "-p", vh))
    return out


def _carol_params(node: WarrenNode, b: Broker) -> pika.ConnectionParameters:
    """User carol (added with brokerctl, certificate from `brokerctl ca issue-client`) in VHOST."""
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=b.ca_file)
    ctx.load_cert_chain(str(node.base / "carol" / "carol.pem"), str(node.base / "carol" / "carol.key"))
    return pika.ConnectionParameters(
        host=b.host, port=b.port, virtual_host=VHOST, credentials=pika.credentials.ExternalCredentials(),
        ssl_options=pika.SSLOptions(ctx, b.server_name), connection_attempts=1,
        socket_timeout=10, stack_timeout=20)


@warren_only
def test_restart_preserves_definitions(nodes):
    node = nodes()
    node.start()
    b = node.broker()

    # -- vhosts, users, permissions through the admin socket ----------------------
    node.ctl("add_vhost", VHOST)
    node.ctl("add_user", "carol", "--tag", "monitoring")
    node.ctl("set_permissions", "-p", VHOST, "carol", "^c-.*", r"^(c-.*|amq\.default)$", "^c-.*")
    node.ctl("ca", "issue-client", "carol", "--dir", str(node.data_dir / "tls"), "--out", str(node.base / "carol"))

    conn = b.pika_connection()
    ch = conn.channel()
    _declare_definitions(ch)
    pub = conn.channel()
    pub.confirm_delivery()
    persistent = pika.BasicProperties(delivery_mode=2)
    m3_props = pika.BasicProperties(delivery_mode=2, content_type="text/plain", correlation_id="corr-3",
                                    message_id="id-3", priority=3, headers={"k": "v", "n": 7})
    pub.basic_publish("d.direct", "msgs", b"m1", persistent)
    pub.basic_publish("d.direct", "msgs", b"m2", persistent)
    pub.basic_publish("d.direct", "msgs", b"t1", pika.BasicProperties(delivery_mode=1))
    pub.basic_publish("d.direct", "msgs", b"m3", m3_props)
    pub.basic_publish("", "t.q", b"in a transient queue", persistent)
    method, _, body = ch.basic_get("d.q.msgs", auto_ack=False)
    assert body == b"m1"
    ch.basic_ack(method.delivery_tag)                  # acked: must not come back
    method, _, body = ch.basic_get("d.q.msgs", auto_ack=False)
    assert body == b"m2" and not method.redelivered    # unacked when the broker stops: comes back

    # carol, in her vhost: a durable queue with a persistent message.
    vconn = pika.BlockingConnection(_carol_params(node, b))
    vch = vconn.channel()
    vch.confirm_delivery()
    vch.queue_declare("c-q", durable=True, arguments={"x-max-length": 10})
    vch.basic_publish("", "c-q", b"in the other vhost", persistent)
    close_quietly(vconn)

    before = _listing(node)
    assert any(line.startswith("carol\tmonitoring") for line in before["users"]), before["users"]
    assert VHOST in before["vhosts"], before["vhosts"]
    assert "carol\t^c-.*\t^(c-.*|amq\\.default)$\t^c-.*" in before[f"permissions {VHOST}"], before
    assert any(line.startswith("t.x\t") for line in before["exchanges /"]), before["exchanges /"]

    assert node.stop() == 0
    close_quietly(conn)
    node.start()
    b = node.broker()

    # -- brokerctl: the same users, vhosts, permissions; transient objects gone ---
    after = _listing(node)
    expected = {k: {line for line in v if "t.x" not in line.split("\t")[:2] and "t.q" not in line.split("\t")[:2]}
                for k, v in before.items()}
    for k in before:
        assert after[k] == expected[k], (k, sorted(after[k]), sorted(expected[k]))

    conn = b.pika_connection()
    try:
        # -- passive declares ------------------------------------------------------
        ch = conn.channel()
        for x in EXCHANGES:
            ch.exchange_declare(x, passive=True)
        counts = {q: ch.queue_declare(q, passive=True).method.message_count for q in QUEUES}
        assert counts == {**{q: 0 for q in QUEUES}, "d.q.msgs": 2}, counts
        for gone in ("t.x", "d.x.gone"):
            expect_channel_error(conn, 404, lambda c, gone=gone: c.exchange_declare(gone, passive=True),
                                 f"no exchange '{gone}' in vhost '/'")
        for gone in ("t.q", "d.q.gone"):
            expect_channel_error(conn, 404, lambda c, gone=gone: c.queue_declare(gone, passive=True),
                                 f"no queue '{gone}' in vhost '/'")

        # -- redeclares: equivalent ones pass, inequivalent ones are refused -------
        ch = conn.channel()
        for x, (kind, args, internal) in EXCHANGES.items():
            ch.exchange_declare(x, kind, durable=True, internal=internal, arguments=args)
        for q, args in QUEUES.items():
            ch.queue_declare(q, durable=True, arguments=args)
        for what, declare, arg in INEQUIVALENT:
            expect_channel_error(conn, 406, declare, f"inequivalent arg '{arg}' for ")

        # -- the persistent messages, back with redelivered=True ---------------------
        ch = conn.channel()
        got = drain_queue(ch, "d.q.msgs")
        assert [body for _, _, body in got] == [b"m2", b"m3"], got
        assert all(m.redelivered for m, _, _ in got), got
        p3 = got[1][1]
        assert (p3.delivery_mode, p3.content_type, p3.correlation_id, p3.message_id, p3.priority) == \
            (2, "text/plain", "corr-3", "id-3", 3)
        assert p3.headers == {"k": "v", "n": 7}, p3.headers

        # -- routing through every restored exchange and binding ---------------------
        pub = conn.channel()
        pub.confirm_delivery()

        def publish(x, key, body, **props):
            pub.basic_publish(x, key, body, pika.BasicProperties(**props))

        def bodies(q):
            return [body for _, _, body in drain_queue(ch, q)]

        publish("d.direct", "ttl", b"direct")
        publish("d.direct", "nowhere", b"to the alternate exchange")
        publish("d.direct", "unbound", b"unbound before the restart")
        publish("d.direct", "t", b"to the transient queue's old binding")
        publish("d.fanout", "any", b"fanout")
        publish("d.topic", "a.b.c", b"topic")
        publish("d.topic", "a.b.d", b"topic, no match")
        publish("d.topic", "e2e.x", b"exchange to exchange")
        publish("d.headers", "", b"headers match", headers={"h1": "v1", "h2": 2})
        publish("d.headers", "", b"headers, no match", headers={"h1": "v1"})
        for n in (b"1", b"2", b"3"):
            publish("d.direct", "maxlen", n)
        publish("d.direct", "prio", b"low", priority=1)
        publish("d.direct", "prio", b"high", priority=5)
        publish("d.direct", "dlx", b"dead letter")

        assert bodies("d.q.ttl") == [b"direct"]
        assert bodies("d.q.fanout") == [b"fanout"]
        assert bodies("d.q.topic") == [b"topic"]
        assert bodies("d.q.inner") == [b"exchange to exchange"]
        assert bodies("d.q.headers") == [b"headers match"]
        assert sorted(bodies("d.q.ae")) == sorted([b"to the alternate exchange", b"unbound before the restart",
                                                   b"to the transient queue's old binding",
                                                   b"headers, no match"])
        assert bodies("d.q.maxlen") == [b"2", b"3"]           # x-max-length 2, drop-head
        assert bodies("d.q.prio") == [b"high", b"low"]        # x-max-priority
        method, _, body = ch.basic_get("d.q.dlx", auto_ack=False)
        assert body == b"dead letter"
        ch.basic_reject(method.delivery_tag, requeue=False)   # x-dead-letter-exchange
        def dead_letter():
            got = ch.basic_get("d.q.dead", auto_ack=True)
            return got if got[0] is not None else None
        dead = wait_until(dead_letter, what="the dead letter")
        assert dead[2] == b"dead letter"
        death = dead[1].headers["x-death"][0]
        assert (death["queue"], death["reason"], death["exchange"]) == ("d.q.dlx", "rejected", "d.direct"), death

        # -- the other vhost, as carol: her user and permissions work after the restart ---
        vconn = pika.BlockingConnection(_carol_params(node, b))
        try:
            vch = vconn.channel()
            vch.queue_declare("c-q", durable=True, arguments={"x-max-length": 10})
            got = drain_queue(vch, "c-q")
            assert [body for _, _, body in got] == [b"in the other vhost"] and got[0][0].redelivered, got
            e = expect_channel_error(vconn, 403, lambda c: c.queue_declare("x-q", durable=True))
            assert e.reply_text == (f"ACCESS_REFUSED - configure access to queue 'x-q' in vhost '{VHOST}' "
                                    f"refused for user 'carol'"), e
        finally:
            close_quietly(vconn)
    finally:
        close_quietly(conn)
    assert node.stop() == 0


# --------------------------------------------------------------------------
# (c) SIGTERM: 320 to every client, nothing confirmed lost
# --------------------------------------------------------------------------

@pytest.mark.skipif(TARGET not in ("warren", "rabbitmq"),
                    reason="restarts a broker the suite starts itself (WARREN_TEST_TARGET=warren or rabbitmq)")
def test_sigterm_closes_clients_with_320_and_keeps_confirmed(nodes):
    node = nodes(TARGET)
    node.start()
    b = node.broker()
    queue = "sigterm.q"
    publisher = b.pika_connection()
    consumer = b.pika_connection()
    idle = b.pika_connection()
    streamer = b.pika_connection()
    try:
        ch = publisher.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        confirmed = []
        for i in range(200):
            ch.basic_publish("", queue, f"before-{i}".encode(), pika.BasicProperties(delivery_mode=2))
            confirmed.append(f"before-{i}")

        # A consumer holding 10 unacked deliveries when the broker stops.
        cch = consumer.channel()
        cch.basic_qos(prefetch_count=10)
        held = []
        cch.basic_consume(queue, lambda c, m, p, body: held.append(body.decode()))
        wait_until(lambda: (consumer.process_data_events(time_limit=0.05), len(held) >= 10)[1],
                   timeout=10, what="10 deliveries")

        # A publisher still publishing (with confirms) when SIGTERM arrives.
        streamed: list[str] = []
        stream_error: list[BaseException] = []
        started = threading.Event()

        def stream():
            try:
                sch = streamer.channel()
                sch.confirm_delivery()
                for i in range(100_000):
                    body = f"during-{i}"
                    sch.basic_publish("", queue, body.encode(), pika.BasicProperties(delivery_mode=2))
                    streamed.append(body)
                    if i == 20:
                        started.set()
            except BaseException as e:
                stream_error.append(e)
            finally:
                started.set()

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        assert started.wait(10)
        rc_holder = []
        stopper = threading.Thread(target=lambda: rc_holder.append(node.stop()), daemon=True)
        stopper.start()
        closes = {name: wait_closed_by_broker(c, timeout=30)
                  for name, c in (("publisher", publisher), ("consumer", consumer), ("idle", idle))}
        t.join(30)
        assert not t.is_alive(), "the publishing thread did not end after the shutdown"
        stopper.join(70)
        assert rc_holder and rc_holder[0] == 0, f"exit status {rc_holder}"
        assert stream_error, "the streaming publisher saw no error"
        if TARGET == "rabbitmq" and isinstance(stream_error[0], pika.exceptions.StreamLostError):
            # RabbitMQ 3.10 sometimes shuts the TLS session while a confirming publisher's write is
            # in flight, so pika sees EOF before the 320 close (seen once in the differential run
            # of 2026-12-05). Warren must always send the close first.
            pass
        else:
            assert isinstance(stream_error[0], pika.exceptions.ConnectionClosedByBroker), stream_error
            closes["streamer"] = stream_error[0]
        for name, e in closes.items():
            assert (e.reply_code, e.reply_text) == (320, SHUTDOWN_TEXT), (name, e)
    finally:
        close_quietly(publisher, consumer, idle, streamer)

    node.start()
    conn = node.broker().pika_connection()
    try:
        ch = conn.channel()
        got = drain_queue(ch, queue)
    finally:
        close_quietly(conn)
    bodies = [body.decode() for _, _, body in got]
    missing = set(confirmed + streamed) - set(bodies)
    assert not missing, f"{len(missing)} confirmed messages lost: {sorted(missing)[:20]}"
    unexpected = {x for x in bodies if not x.startswith(("before-", "during-"))}
    assert not unexpected, unexpected
    assert len(bodies) == len(set(bodies)), "duplicates after a clean shutdown"
    redelivered = {body.decode() for m, _, body in got if m.redelivered}
    assert set(held) <= redelivered, "deliveries unacked at the shutdown must come back redelivered"
    if TARGET == "warren":
        # Warren marks every message recovered from the log as redelivered.
        assert redelivered == set(bodies)
    assert node.stop() == 0


# --------------------------------------------------------------------------
# (d) a full disk
# --------------------------------------------------------------------------

def node_config(data_dir: Path, session_tls: Path, **limits):
    """warren --config (a function of the port, for WarrenNode) with `data_dir`, the session's dev
    PKI, the user admin, and `limits` as the [limits] table."""
    table = "\n".join(f"{k} = {v}" for k, v in limits.items())

    def config(port: int) -> str:
        t = session_tls
        return f"""\
listen = ["{HOST}:{port}"]
data_dir = "{data_dir}"
vhosts = ["/"]

[tls]
ca_bundle = "{t / 'ca.pem'}"
cert = "{t / 'server.pem'}"
key = "{t / 'server.key'}"

[limits]
{table}

[[users]]
name = "admin"
tags = ["administrator"]
permissions = [{{ vhost = "/", configure = ".*", write = ".*", read = ".*" }}]
"""
    return config


def _disk_config(disk: Path, session_tls: Path):
    """warren --config with the data directory on `disk` and disk_free_limit_bytes = 4 MiB."""
    return node_config(disk, session_tls, disk_free_limit_bytes=DISK_FREE_LIMIT)


@pytest.fixture
def disk_node(tmp_path, broker):
    """A Warren broker (not started) whose data directory is a 16 MiB tmpfs (root only), with
    disk_free_limit_bytes = 4 MiB and the session broker's dev PKI. At the end the broker is killed,
    its output printed (shown for failures) and the tmpfs unmounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    # mode=0700: the broker refuses a data directory that group or others may write.
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(mnt)],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
    if cp.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {cp.stdout.strip()}")
    node = None
    try:
        base = tmp_path / "node"
        base.mkdir()
        node = WarrenNode(base, data_dir=mnt, config=_disk_config(mnt, broker.tls_dir),
                          tls_base=broker.tls_dir.parent)
        yield node
    finally:
        if node is not None:
            node.kill()
            print(f"--- {node.log_path} ---\n{node.output()}")
        for attempt in range(20):
            cp = subprocess.run(["umount", str(mnt)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=30)
            if cp.returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(mnt)], timeout=30)
            raise AssertionError(f"could not unmount {mnt}: {cp.stdout}")


class DiskPublisher:
    """Publishes 100 kB persistent messages with confirms from one connection (in a thread) until told
    to stop, the bound is reached or the connection fails; records acks and nacks.

    It follows connection.blocked / unblocked as a pika client should: pika's BlockingConnection runs
    those callbacks from process_data_events (not while basic_publish waits for its confirm), so the
    loop calls it before every publish and, while blocked, waits in it instead of publishing. A
    broker sends connection.blocked after the burst that holds a publish and before that publish's
    confirm, so the publisher never has a publish waiting for a confirm while it is blocked."""

    def __init__(self, b: Broker, queue: str, prefix: str):
        self.conn = b.pika_connection(blocked_connection_timeout=600)
        self.blocked = threading.Event()      # connection.blocked was received (ever)
        self.unblocked = threading.Event()    # connection.unblocked was received (ever)
        self.is_blocked = False
        self.conn.add_on_connection_blocked_callback(self._on_blocked)
        self.conn.add_on_connection_unblocked_callback(self._on_unblocked)
        self.ch = self.conn.channel()
        self.ch.queue_declare(queue, durable=True)
        self.ch.confirm_delivery()
        self.queue = queue
        self.prefix = prefix
        self.published: list[str] = []
        self.acked: list[str] = []
        self.nacked: list[str] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_blocked(self, *args):
        self.is_blocked = True
        self.blocked.set()

    def _on_unblocked(self, *args):
        self.is_blocked = False
        self.unblocked.set()

    def _run(self):
        deadline = time.monotonic() + 120
        try:
            i = 0
            while i < DISK_MAX_PUBLISHES and not self.stop.is_set() and time.monotonic() < deadline:
                self.conn.process_data_events(time_limit=0)
                if self.is_blocked:
                    self.conn.process_data_events(time_limit=0.1)
                    continue
                mid = f"{self.prefix}-{i}"
                i += 1
                self.published.append(mid)
                body = mid.encode().ljust(DISK_BODY, b".")
                try:
                    self.ch.basic_publish("", self.queue, body,
                                          pika.BasicProperties(delivery_mode=2, message_id=mid))
                except pika.exceptions.NackError:
                    self.nacked.append(mid)
                    self.conn.process_data_events(time_limit=DISK_NACK_PAUSE)
                    continue
                self.acked.append(mid)
        except BaseException as e:
            self.error = e

    def start(self):
        self.thread.start()
        return self

    def finish(self, node: WarrenNode) -> None:
        """Stops the thread (killing the broker if it is stuck waiting for a confirm) and closes the
        connection; pika connections are not thread-safe, so never while the thread runs."""
        self.stop.set()
        self.thread.join(5)
        if self.thread.is_alive():
            node.kill()
            self.thread.join(10)
        if not self.thread.is_alive():
            # A blocked connection is not read, so connection.close-ok may never come: close from a
            # helper thread and give up after a while (killing the broker ends it).
            closer = threading.Thread(target=close_quietly, args=(self.conn,), daemon=True)
            closer.start()
            closer.join(5)


def _check_bodies(got) -> list[str]:
    ids = []
    for _, props, body in got:
        mid = props.message_id
        assert body == mid.encode().ljust(DISK_BODY, b"."), f"{mid}: body changed ({len(body)} bytes)"
        ids.append(mid)
    return ids


@warren_only
def test_disk_full_blocks_publisher_until_consumers_free_space(disk_node):
    node = disk_node
    node.start()
    b = node.broker()
    pub = DiskPublisher(b, "disk.q", "m").start()
    consumer = None
    try:
        assert pub.blocked.wait(DISK_BLOCK_TIMEOUT), \
            f"no connection.blocked within {DISK_BLOCK_TIMEOUT}s: acked {len(pub.acked)} nacked " \
            f"{len(pub.nacked)} error {pub.error!r}"
        time.sleep(0.5)
        acked_when_blocked = list(pub.acked)
        # The disk holds 16 MiB: more acks than that cannot all have been stored.
        assert len(acked_when_blocked) * DISK_BODY <= DISK_SIZE, \
            f"{len(acked_when_blocked)} messages of {DISK_BODY} bytes acked on a {DISK_SIZE}-byte disk"
        assert pub.error is None, pub.error

        # Another connection (a consumer: never blocked) takes and acks everything.
        consumer = b.pika_connection()
        cch = consumer.channel()
        consumed = _check_bodies(drain_queue(cch, "disk.q"))
        assert set(acked_when_blocked) <= set(consumed), set(acked_when_blocked) - set(consumed)
        assert pub.unblocked.wait(DISK_UNBLOCK_TIMEOUT), \
            f"no connection.unblocked within {DISK_UNBLOCK_TIMEOUT}s of draining the queue"

        # Unblocked: the publisher gets acks again.
        n = len(pub.acked)
        wait_until(lambda: len(pub.acked) >= n + 20 or pub.error or not pub.thread.is_alive(),
                   timeout=30, what="20 more acks after connection.unblocked")
        pub.finish(node)
        assert not pub.thread.is_alive(), "the publisher is stuck waiting for a confirm"
        assert pub.error is None, pub.error
        assert len(pub.acked) >= n + 20, (n, len(pub.acked), len(pub.nacked))
        close_quietly(consumer)

        expected = set(pub.acked) - set(consumed)
        assert expected
        assert node.stop() == 0
        node.start()
        consumer = node.broker().pika_connection()
        present = _check_bodies(drain_queue(consumer.channel(), "disk.q"))
        lost = expected - set(present)
        assert not lost, f"{len(lost)} acked messages lost after the restart: {sorted(lost)[:20]}"
        assert set(present) <= set(pub.published), set(present) - set(pub.published)
    finally:
        pub.finish(node)
        close_quietly(consumer)
    assert node.stop() == 0


@warren_only
def test_disk_full_kill9_keeps_every_acked_message(disk_node):
    node = disk_node
    node.start()
    b = node.broker()
    pub = DiskPublisher(b, "disk.q", "k").start()
    consumer = None
    try:
        assert pub.blocked.wait(DISK_BLOCK_TIMEOUT), \
            f"no connection.blocked within {DISK_BLOCK_TIMEOUT}s: acked {len(pub.acked)} nacked " \
            f"{len(pub.nacked)} error {pub.error!r}"
        time.sleep(0.5)
        assert pub.acked, "nothing was acked before the disk filled"

        # kill -9 with the disk (nearly) full, start again on the same full disk.
        node.kill()
        pub.finish(node)
        acked = list(pub.acked)   # an ack may have arrived before the kill
        node.start()
        b = node.broker()
        consumer = b.pika_connection()
        present = _check_bodies(drain_queue(consumer.channel(), "disk.q"))
        lost = set(acked) - set(present)
        assert not lost, (f"{len(lost)} of {len(acked)} acked messages lost after kill -9 on a full disk "
                          f"({len(pub.nacked)} nacked): {sorted(lost, key=lambda m: int(m[2:]))[:20]}")
        assert len(acked) * DISK_BODY <= DISK_SIZE, \
            f"{len(acked)} messages of {DISK_BODY} bytes acked on a {DISK_SIZE}-byte disk"
        assert set(present) <= set(pub.published), set(present) - set(pub.published)
        assert len(present) == len(set(present)), "duplicates"

        # Drained: space comes back and a new publisher gets acks.
        pub2 = DiskPublisher(b, "disk.q", "after").start()
        wait_until(lambda: len(pub2.acked) >= 10 or pub2.error or not pub2.thread.is_alive(),
                   timeout=DISK_UNBLOCK_TIMEOUT + 10, what="acks once the disk has room again")
        pub2.finish(node)
        assert pub2.error is None, pub2.error
        assert len(pub2.acked) >= 10, (len(pub2.acked), len(pub2.nacked), pub2.blocked.is_set())
    finally:
        pub.finish(node)
        close_quietly(consumer)
    assert node.stop() == 0
