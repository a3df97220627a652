"""Flow control and resource limits, on a second broker started with limits.

The session broker runs with defaults, so this module starts its own broker
(once for the module) with:

* a memory high-water mark a test can cross,
* max 5 queues and max 3 connections in vhost '/',
* max 2 consumers per channel,
* a 100000-byte max message size.

For Warren that is a TOML file given to ``warren --config`` (reusing the
session broker's ``--dev`` PKI).  For RabbitMQ 3.10 it is a second private
node (rabbitmq_target.RabbitMQNode with extra rabbitmq.conf lines) and
``rabbitmqctl set_vhost_limits``; RabbitMQ 3.10 has no per-channel consumer
limit (``consumer_max_per_channel`` came in a later release), so that single
test runs against Warren only.

Every expectation here is what RabbitMQ does; reply texts are compared exactly.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

import rabbitmq_target
from conftest import DELIVERY_TIMEOUT, HOST, STARTUP_TIMEOUT, TARGET, Broker, amqp_reply_text

pytestmark = pytest.mark.skipif(
    TARGET not in ("warren", "rabbitmq"),
    reason="needs a second broker started by the suite (WARREN_TEST_TARGET=warren or rabbitmq)")

MAX_QUEUES = 5
MAX_CONNECTIONS = 3
MAX_CONSUMERS_PER_CHANNEL = 2
MAX_MESSAGE_SIZE = 100_000
WARREN_MEMORY_HIGH_WATERMARK = 2_000_000
# RabbitMQ measures the memory of the whole Erlang VM (tens of MB when idle),
# so an absolute mark of 2 MB would keep it in alarm from the start.  The
# RabbitMQ node therefore gets its mark at run time, this far above what it
# uses when the test starts.
RABBITMQ_MEMORY_HEADROOM = 30_000_000

# Heartbeat interval of connections to the limited broker.  Now and then (about
# one close in forty here, over TLS) RabbitMQ's reader misses the client's
# close: the connection stays, in state `closed`, and counts against the
# connection limit until the reader gives up, after the heartbeat interval
# (30 s at most).  A short interval keeps that wait short.
LIMITS_HEARTBEAT = 5
SLOT_TIMEOUT = LIMITS_HEARTBEAT + 5  # seconds to wait for a connection slot

# Bodies for the memory test: below max_message_size, big enough to reach the mark quickly.
FLOW_BODY_SIZE = 90_000
FLOW_MAX_MESSAGES = 2_500          # ~225 MB: a bound, far above what either broker needs
FLOW_PACE = 0.005                  # seconds between publishes (~18 MB/s)
FLOW_TIMEOUT = 30                  # seconds, for draining and for connection.unblocked


# --------------------------------------------------------------------------
# the second broker
# --------------------------------------------------------------------------

class WarrenLimitsProcess:
    """`warren --config FILE` with the [limits] under test and the session's dev PKI."""

    def __init__(self, exe: str, base: Path, session_tls: Path):
        self.exe = exe
        self.base = base
        self.session_tls = session_tls
        self.port = rabbitmq_target.free_port()
        self.config_path = base / "warren.toml"
        self.stdout_path = base / "warren-limits.stdout"
        self.stderr_path = base / "warren-limits.stderr"
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        t = self.session_tls
        self.config_path.write_text(f"""\
listen = ["{HOST}:{self.port}"]
data_dir = "{self.base / 'data'}"
vhosts = ["/"]

[tls]
ca_bundle = "{t / 'ca.pem'}"
cert = "{t / 'server.pem'}"
key = "{t / 'server.key'}"

[limits]
memory_high_watermark_bytes = {WARREN_MEMORY_HIGH_WATERMARK}
# The backlog stays in memory so that it raises the alarm (not paged away: see test_paging.py).
memory_paging_ratio = 2.0
queue_memory_budget_bytes = {4 * WARREN_MEMORY_HIGH_WATERMARK}
max_queues_per_vhost = {MAX_QUEUES}
max_connections_per_vhost = {MAX_CONNECTIONS}
max_consumers_per_channel = {MAX_CONSUMERS_PER_CHANNEL}
max_message_size = {MAX_MESSAGE_SIZE}

[[users]]
name = "admin"
tags = ["administrator"]
permissions = [{{ vhost = "/", configure = ".*", write = ".*", read = ".*" }}]
""")

    def start(self) -> None:
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        self.write_config()
        cmd = [self.exe, "--config", str(self.config_path)]
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(cmd, stdout=open(self.stdout_path, "wb"),
                                     stderr=open(self.stderr_path, "wb"),
                                     stdin=subprocess.DEVNULL, env=env)
        try:
            rabbitmq_target.wait_for_port(HOST, self.port, time.monotonic() + STARTUP_TIMEOUT, self.proc)
        except Exception as e:
            out = self.output()
            self.stop()
            raise RuntimeError(f"{' '.join(cmd)}: {e}\n{self.config_path.read_text()}\n{out}") from e

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def output(self) -> str:
        out = []
        for p in (self.stdout_path, self.stderr_path):
            if p.exists():
                out.append(f"--- {p.name} ---\n{p.read_text(errors='replace')[-20000:]}")
        return "\n".join(out)


class RabbitMQLimitsNode(rabbitmq_target.RabbitMQNode):
    """A second private RabbitMQ node: its own node name, ports and directories,
    the session node's certificates, and the limits rabbitmq.conf can express."""

    def __init__(self, base: Path, session_tls: Path):
        super().__init__(base)
        self.nodename = f"warrenlimits{os.getpid()}@localhost"
        shutil.copytree(session_tls, self.tls_dir)

    def write_config(self) -> None:
        super().write_config()
        with open(self.base / "rabbitmq.conf", "a") as f:
            f.write(f"max_message_size = {MAX_MESSAGE_SIZE}\n"
                    # erlang:memory(total) falls again once consumed messages are
                    # garbage collected (the process RSS does not), and the alarm
                    # is re-evaluated every 100 ms instead of every 2.5 s.
                    "vm_memory_calculation_strategy = erlang\n"
                    "memory_monitor_interval = 100\n")
        # Queues start paging messages to disk at a fraction of the mark (0.5 by
        # default, below the idle node's own use), which races with the
        # publisher; a ratio above 1 turns paging off (rabbitmq.conf only takes
        # values below 1, advanced.config takes any).
        (self.base / "advanced.config").write_text(
            "[{rabbit, [{vm_memory_high_watermark_paging_ratio, 1.5}]}].\n")

    def start(self, timeout: float = 120) -> None:
        super().start(timeout)
        try:
            self.ctl("set_vhost_limits", "-p", "/",
                     f'{{"max-queues": {MAX_QUEUES}, "max-connections": {MAX_CONNECTIONS}}}')
        except Exception:
            self.stop()
            raise

    def vm_memory(self) -> int:
        return int(self.ctl("eval", "vm_memory_monitor:get_process_memory().").stdout.strip())

    def set_memory_high_watermark(self, absolute: int | None) -> None:
        if absolute is None:
            self.ctl("set_vm_memory_high_watermark", "0.4")
        else:
            self.ctl("set_vm_memory_high_watermark", "absolute", str(absolute))


class LimitsBroker(Broker):
    def __init__(self, kind, port, tls_base, logs, node):
        super().__init__(kind, port, tls_base, logs)
        self.node = node

    def arm_memory_alarm(self) -> None:
        """Make sure a test can cross the memory mark (Warren: configured; RabbitMQ: set now)."""
        if self.kind == "rabbitmq":
            self.node.set_memory_high_watermark(self.node.vm_memory() + RABBITMQ_MEMORY_HEADROOM)

    def memory_report(self) -> str:
        if self.kind != "rabbitmq":
            return f"memory alarm at {WARREN_MEMORY_HIGH_WATERMARK} bytes of messages"
        limit = self.node.ctl("eval", "vm_memory_monitor:get_memory_limit().").stdout.strip()
        alarms = self.node.ctl("eval", "rabbit_alarm:get_alarms().").stdout.strip()
        return f"node memory {self.node.vm_memory()}, limit {limit}, alarms {alarms}"

    def disarm_memory_alarm(self) -> None:
        if self.kind == "rabbitmq":
            self.node.set_memory_high_watermark(None)


@pytest.fixture(scope="module")
def limited(broker, tmp_path_factory):
    """The second broker, with limits (see the module docstring)."""
    base = tmp_path_factory.mktemp(f"limits-{TARGET}")
    if broker.kind == "warren":
        import conftest
        proc = WarrenLimitsProcess(conftest._warren_exe(), base, broker.tls_dir)
        try:
            proc.start()
        except RuntimeError as e:
            pytest.fail(f"warren with limits did not start:\n{e}", pytrace=False)
        b = LimitsBroker("warren", proc.port, broker.data_dir, [proc.stdout_path, proc.stderr_path], proc)
        try:
            yield b
        finally:
            was_alive = proc.alive()
            out = proc.output()
            proc.stop()
            if not was_alive:
                pytest.fail(f"warren with limits exited during the tests:\n{out}", pytrace=False)
    else:
        node = RabbitMQLimitsNode(base, broker.tls_dir)
        try:
            node.start()
        except RuntimeError as e:
            pytest.fail(f"RabbitMQ with limits did not start:\n{e}", pytrace=False)
        b = LimitsBroker("rabbitmq", node.port, node.base, [node.stdout_path, node.stderr_path], node)
        try:
            yield b
        finally:
            node.stop()


@pytest.fixture(autouse=True)
def _limited_broker_output(request):
    """Print what the second broker wrote during the test (pytest shows it for failures)."""
    if "limited" not in request.fixturenames:
        yield
        return
    b = request.getfixturevalue("limited")
    sizes = b.log_sizes()
    yield
    text = b.log_since(sizes)
    if text:
        print(f"second broker output during this test:\n{text}")


class Connections:
    """Connections to the limited broker, all closed at the end of the test."""

    def __init__(self, b: LimitsBroker):
        self.b = b
        self.open: list[pika.BlockingConnection] = []

    def new(self, **kw) -> pika.BlockingConnection:
        kw.setdefault("heartbeat", LIMITS_HEARTBEAT)
        c = self.b.pika_connection(**kw)
        self.open.append(c)
        return c

    def close_all(self) -> None:
        for c in self.open:
            if c.is_open:
                try:
                    c.close()
                except Exception:
                    pass
        self.open.clear()


@pytest.fixture
def conns(limited):
    cs = Connections(limited)
    yield cs
    cs.close_all()


def refusal(e: BaseException) -> tuple[int, str] | None:
    """(reply code, reply text) of a connection.close the broker sent in reply
    to connection.open.  pika reports it as ProbableAccessDeniedError whose
    argument is repr(ConnectionClosedByBroker(code, text))."""
    if isinstance(e, pika.exceptions.ConnectionClosedByBroker):
        return e.reply_code, e.reply_text
    if isinstance(e, pika.exceptions.ProbableAccessDeniedError) and e.args:
        m = re.fullmatch(r"ConnectionClosedByBroker: \((\d+)\) (.*)", str(e.args[0]), re.S)
        if m:
            return int(m.group(1)), ast.literal_eval(m.group(2))
    return None


def connect_when_slots_free(conns: Connections, timeout: float = SLOT_TIMEOUT, **kw) -> pika.BlockingConnection:
    """A connection to the limited broker, retrying while the connection limit
    refuses it.  A connection closed a moment ago may still count against the
    limit: RabbitMQ updates its connection tracking asynchronously, and now and
    then keeps a closed connection for a heartbeat interval (see
    LIMITS_HEARTBEAT)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return conns.new(**kw)
        except pika.exceptions.AMQPConnectionError as e:
            r = refusal(e)
            if r is None or r[0] != 530 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def declare_when_room(c: pika.BlockingConnection, queues: list[str], **kw):
    """Declare all `queues` on a fresh channel of `c` and return the channel.
    Exclusive queues of connections closed by the previous test may still
    count against the queue limit for a moment (RabbitMQ deletes them
    asynchronously): retry, within bounds."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        ch = c.channel()
        try:
            for q in queues:
                ch.queue_declare(q, **kw)
            return ch
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code != 406 or "queue limit" not in e.reply_text or time.monotonic() > deadline:
                raise
            if ch.is_open:
                ch.close()
            ch = c.channel()
            for q in queues:
                ch.queue_delete(q)
            ch.close()
            time.sleep(0.1)


# --------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------

def test_connection_limit_per_vhost(limited, conns):
    first = [connect_when_slots_free(conns) for _ in range(MAX_CONNECTIONS)]
    with pytest.raises(pika.exceptions.AMQPConnectionError) as ei:
        conns.new()
    assert refusal(ei.value) == (530, amqp_reply_text(
        f"NOT_ALLOWED - access to vhost '/' refused for user 'admin': connection limit ({MAX_CONNECTIONS}) is reached")), \
        repr(ei.value)
    for c in first:
        assert c.is_open
    # closing one frees a slot
    first[0].close()
    c = connect_when_slots_free(conns)
    assert c.channel().is_open


def test_message_larger_than_max_message_size_refused(limited, conns, name):
    c = connect_when_slots_free(conns)
    ch = c.channel()
    q = name("size")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x" * MAX_MESSAGE_SIZE)  # exactly the limit is fine
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.basic_publish("", q, b"x" * (MAX_MESSAGE_SIZE + 1))
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == amqp_reply_text(
        f"PRECONDITION_FAILED - message size {MAX_MESSAGE_SIZE + 1} is larger than "
        f"configured max size {MAX_MESSAGE_SIZE}")
    ch2 = c.channel()
    m, _, body = ch2.basic_get(q, auto_ack=True)
    assert body == b"x" * MAX_MESSAGE_SIZE
    assert ch2.basic_get(q, auto_ack=True)[0] is None


def test_queue_limit_per_vhost(limited, conns, name):
    c = connect_when_slots_free(conns)
    names = [name(f"lim{i}") for i in range(MAX_QUEUES)]
    ch = declare_when_room(c, names, exclusive=True)
    # redeclaring an existing queue is not a new queue
    ch.queue_declare(names[0], exclusive=True)
    extra = name("x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(extra, exclusive=True)
    assert ei.value.reply_code == 406
    assert ei.value.reply_text == amqp_reply_text(
        f"PRECONDITION_FAILED - cannot declare queue '{extra}': queue limit in vhost '/' ({MAX_QUEUES}) is reached")
    # deleting one makes room again
    ch = c.channel()
    ch.queue_delete(names[0])
    ch.queue_declare(extra, exclusive=True)
    for q in names[1:] + [extra]:
        ch.queue_delete(q)


@pytest.mark.skipif(TARGET != "warren",
                    reason="RabbitMQ 3.10 has no per-channel consumer limit (consumer_max_per_channel "
                           "is a later addition), so this is checked against Warren only")
def test_consumer_limit_per_channel(limited, conns, name):
    c = connect_when_slots_free(conns)
    ch = c.channel()
    q = name("cons")
    ch.queue_declare(q, exclusive=True)
    for i in range(MAX_CONSUMERS_PER_CHANNEL):
        ch.basic_consume(q, lambda *a: None, consumer_tag=f"c{i}")
    # another channel has its own allowance
    other = c.channel()
    other.basic_consume(q, lambda *a: None, consumer_tag="other")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as ei:
        ch.basic_consume(q, lambda *a: None, consumer_tag="one-too-many")
    assert ei.value.reply_code == 530
    assert ei.value.reply_text == amqp_reply_text(
        f"NOT_ALLOWED - reached maximum ({MAX_CONSUMERS_PER_CHANNEL}) of consumers per channel")


def test_connection_blocked_capability_advertised(limited, conns):
    c = connect_when_slots_free(conns)
    caps = c._impl.server_capabilities
    assert caps.get("connection.blocked") is True
    assert caps.get("consumer_cancel_notify") is True


# --------------------------------------------------------------------------
# memory alarm: connection.blocked / connection.unblocked
# --------------------------------------------------------------------------

def test_memory_alarm_blocks_publisher_consumer_drains_then_unblocked(limited, conns, name):
    q = name("flow")
    events: list[str] = []
    pub = connect_when_slots_free(conns, blocked_connection_timeout=FLOW_TIMEOUT + 10)
    pub.add_on_connection_blocked_callback(lambda c, m: events.append("blocked"))
    pub.add_on_connection_unblocked_callback(lambda c, m: events.append("unblocked"))
    pch = pub.channel()
    pch.queue_declare(q)
    cons = connect_when_slots_free(conns)
    cch = cons.channel()
    limited.arm_memory_alarm()
    try:
        # Publish big bodies with nobody consuming until the broker says blocked
        # (paced: RabbitMQ looks at its memory every 100 ms and could take in
        # hundreds of MB before it does).
        sent = 0
        while "blocked" not in events and sent < FLOW_MAX_MESSAGES:
            pch.basic_publish("", q, sent.to_bytes(4, "big") + bytes(FLOW_BODY_SIZE - 4))
            sent += 1
            pub.process_data_events(time_limit=FLOW_PACE)
        assert events[:1] == ["blocked"], \
            f"no connection.blocked after {sent} messages of {FLOW_BODY_SIZE} bytes (events {events}; {limited.memory_report()})"
        assert "unblocked" not in events

        # A consumer on another connection drains the queue; then the publisher is released.
        received: list[int] = []

        def on_message(ch, method, props, body):
            received.append(int.from_bytes(body[:4], "big"))
            ch.basic_ack(method.delivery_tag)

        cch.basic_qos(prefetch_count=50)
        tag = cch.basic_consume(q, on_message)
        deadline = time.monotonic() + FLOW_TIMEOUT
        while (len(received) < sent or "unblocked" not in events) and time.monotonic() < deadline:
            cons.process_data_events(time_limit=0.05)
            pub.process_data_events(time_limit=0)
        assert len(received) == sent, f"consumer got {len(received)} of {sent} messages"
        assert events == ["blocked", "unblocked"], events

        # The publisher can publish again, and nothing it published was lost.
        pch.confirm_delivery()
        pch.basic_publish("", q, sent.to_bytes(4, "big") + b"after")
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while len(received) < sent + 1 and time.monotonic() < deadline:
            cons.process_data_events(time_limit=0.05)
        assert received == list(range(sent + 1))
        cch.basic_cancel(tag)
        cch.queue_delete(q)
        q = None
    finally:
        limited.disarm_memory_alarm()
        if q is not None:  # failed half-way: leave no queue for the queue limit
            conns.close_all()
            try:
                connect_when_slots_free(conns).channel().queue_delete(q)
            except Exception:
                pass
