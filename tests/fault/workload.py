"""The fault suite's clients and its total-queue check (HA.md §4, "Workload and checker").

Publishers confirm every message (window 1, persistent), each message a unique id with a body of
256 B–4 KiB derived from the id, so every delivery is checked byte for byte. Every client has the
three nodes as a failover list (its own node first) and, as kombu does, reconnects starting with the
next host of the list after an error. A
publish whose confirm does not come within ``CONFIRM_TIMEOUT`` is given up (its connection is cut,
the outcome is unknown) and the publisher goes on with a new id. Consumers ack manually with a
prefetch of 50. Every operation is recorded (JSONL) for the checker:

* lost       = acked − received: MUST be empty
* unexpected = received − attempted: MUST be empty
* corrupt    = deliveries whose body is not the one published under that id: MUST be empty
* duplicates, recovered (an unknown outcome that arrived): reported only.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pika

QUEUE = "fault-jobs"
CONFIRM_TIMEOUT = 5.0
PREFETCH = 50


def body_of(mid: str) -> bytes:
    """The body published under ``mid``: 256 B to 4 KiB derived from it."""
    digest = hashlib.sha256(mid.encode()).digest()
    size = 256 + int.from_bytes(digest[:2], "big") % (4096 - 256 + 1)
    head = mid.encode() + b"|"
    return (head + digest * (size // len(digest) + 1))[:size]


class Recorder:
    """Appends one JSON object per operation to a file, from any thread."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.out = open(path, "w", buffering=1)

    def __call__(self, **op) -> None:
        op["t"] = round(time.monotonic(), 4)
        line = json.dumps(op, separators=(",", ":"))
        with self.lock:
            self.out.write(line + "\n")

    def close(self) -> None:
        with self.lock:
            self.out.close()


class Endpoints:
    """How clients reach the nodes: TLS with the dev CA's admin certificate, EXTERNAL login."""

    def __init__(self, tls_dir: Path, addrs: dict[int, tuple[str, int]]):
        self.addrs = addrs
        ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
        ctx.load_cert_chain(str(tls_dir / "admin.pem"), str(tls_dir / "admin.key"))
        self.ctx = ctx

    def params(self, order: list[int]) -> list[pika.ConnectionParameters]:
        return [
            pika.ConnectionParameters(
                host=self.addrs[i][0], port=self.addrs[i][1], virtual_host="/",
                credentials=pika.credentials.ExternalCredentials(),
                ssl_options=pika.SSLOptions(self.ctx, "localhost"),
                connection_attempts=1, socket_timeout=3, stack_timeout=6,
                blocked_connection_timeout=10, heartbeat=5)
            for i in order
        ]

    def order(self, first: int) -> list[int]:
        nodes = sorted(self.addrs)
        k = nodes.index(first)
        return nodes[k:] + nodes[:k]

    def after(self, node: int) -> int:
        """The next host of the list after ``node`` (kombu's round-robin failover)."""
        return self.order(node)[1 % len(self.addrs)]

    def connect(self, first: int, stop: threading.Event) -> tuple[pika.BlockingConnection, int]:
        """A connection along the failover list starting at ``first`` (retried until ``stop``)."""
        while not stop.is_set():
            for i in self.order(first):
                try:
                    return pika.BlockingConnection(self.params([i])), i
                except Exception:
                    continue
            stop.wait(0.5)
        raise ConnectionAbortedError("stopped")


def declare(ch) -> None:
    """Declares the queue on the client's own node, as kombu and oslo do before using it: a queue
    declared on another node a moment ago may not have reached this node yet (a publish there
    would be unroutable)."""
    ch.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})


def _cut(conn: pika.BlockingConnection) -> None:
    """Breaks a connection from another thread: its blocked call raises at once."""
    try:
        sock = conn._impl._transport._sock  # pika has no public way to abort a blocked wait
        sock.shutdown(socket.SHUT_RDWR)
    except Exception:
        pass


class Publisher(threading.Thread):
    def __init__(self, name: str, first: int, ends: Endpoints, rec: Recorder, stop: threading.Event,
                 interval: float = 0.01):
        super().__init__(name=name, daemon=True)
        self.first, self.ends, self.rec, self.stop = first, ends, rec, stop
        self.interval = interval
        self.seq = 0
        self.started: float | None = None  # the publish in flight, for the watchdog
        self.conn: pika.BlockingConnection | None = None
        self.acks: list[float] = []  # confirm times, for the longest gap

    def run(self) -> None:
        ch = None
        node = self.first
        while not self.stop.is_set():
            if ch is None:
                try:
                    self.conn, node = self.ends.connect(self.first, self.stop)
                    ch = self.conn.channel()
                    declare(ch)
                    ch.confirm_delivery()
                except Exception:
                    ch = None
                    continue
            mid = f"{self.name}-{self.seq}"
            self.seq += 1
            started = time.monotonic()
            self.rec(op="publish", id=mid, node=node)
            self.started = started
            try:
                # Mandatory: a publish the node cannot route is returned, not counted as confirmed.
                ch.basic_publish("", QUEUE, body_of(mid),
                                 pika.BasicProperties(delivery_mode=2, message_id=mid), mandatory=True)
                outcome = "ack"
            except pika.exceptions.NackError:
                outcome = "nack"
            except pika.exceptions.UnroutableError:
                outcome = "unroutable"
            except Exception as e:  # connection lost, cut by the watchdog, channel closed
                outcome = "timeout" if time.monotonic() - started >= CONFIRM_TIMEOUT else "error"
                self.rec(op="error", who=self.name, node=node, error=repr(e)[:200])
                ch = None
            end = time.monotonic()
            self.started = None
            self.rec(op=outcome, id=mid, node=node, start=round(started, 4))
            if outcome == "ack":
                self.acks.append(end)
            if ch is None:
                try:
                    self.conn.close()
                except Exception:
                    pass
                # As kombu does: the next connection tries the next host of the list first.
                self.first = self.ends.after(node)
            self.stop.wait(self.interval if outcome == "ack" else 0.1)
        if ch is not None:
            try:
                self.conn.close()
            except Exception:
                pass


class Consumer(threading.Thread):
    def __init__(self, name: str, first: int, ends: Endpoints, rec: Recorder, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.first, self.ends, self.rec, self.stop = first, ends, rec, stop
        self.last = time.monotonic()
        self.probes = 0  # probe messages received (see ``probe``)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, node = self.ends.connect(self.first, self.stop)
            except ConnectionAbortedError:
                return
            try:
                ch = conn.channel()
                declare(ch)
                ch.basic_qos(prefetch_count=PREFETCH)
                for method, props, body in ch.consume(QUEUE, inactivity_timeout=1):
                    if self.stop.is_set():
                        break
                    if method is None:
                        continue
                    self.rec(op="deliver", id=props.message_id, node=node,
                             redelivered=method.redelivered, ok=body == body_of(props.message_id or ""))
                    ch.basic_ack(method.delivery_tag)
                    self.last = time.monotonic()
                    if (props.message_id or "").startswith("probe-"):
                        self.probes += 1
                conn.close()
            except Exception as e:
                self.rec(op="error", who=self.name, node=node, error=repr(e)[:200])
                try:
                    conn.close()
                except Exception:
                    pass
                self.first = self.ends.after(node)
                self.stop.wait(0.3)


class Watchdog(threading.Thread):
    """Gives up a publish whose confirm has not come within ``CONFIRM_TIMEOUT``."""

    def __init__(self, publishers: list[Publisher], stop: threading.Event):
        super().__init__(name="watchdog", daemon=True)
        self.publishers, self.stop = publishers, stop

    def run(self) -> None:
        while not self.stop.wait(0.1):
            now = time.monotonic()
            for p in self.publishers:
                started, conn = p.started, p.conn
                if started is not None and conn is not None and now - started > CONFIRM_TIMEOUT:
                    _cut(conn)


def probe(ends: Endpoints, rec: Recorder, node: int, consumers: list, limit: float = 20.0) -> list[str]:
    """After the faults: publishes 10 confirmed messages a second from ``node`` until every consumer
    has received one of them, or ``limit`` seconds passed; returns the names of the consumers that
    received none (each should: a consumer whose node lost its feed from the queue's host for good
    gets nothing while the others take everything)."""
    stop = threading.Event()
    deadline = time.monotonic() + limit
    seq, ch, conn = 0, None, None
    while time.monotonic() < deadline and any(c.probes == 0 for c in consumers):
        try:
            if ch is None:
                conn, node = ends.connect(node, stop)
                ch = conn.channel()
                ch.confirm_delivery()
            for _ in range(10):
                mid = f"probe-{seq}"
                seq += 1
                rec(op="publish", id=mid, node=node)
                start = time.monotonic()
                ch.basic_publish("", QUEUE, body_of(mid),
                                 pika.BasicProperties(delivery_mode=2, message_id=mid), mandatory=True)
                rec(op="ack", id=mid, node=node, start=round(start, 4))
        except Exception as e:
            rec(op="error", who="probe", node=node, error=repr(e)[:200])
            ch = None
        time.sleep(1)
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass
    return [c.name for c in consumers if c.probes == 0]


def drain(ends: Endpoints, rec: Recorder, node: int, acked: set[str], received: set[str],
          quiet: float = 3.0, limit: float = 90.0) -> None:
    """Takes everything left in the queue from one fresh consumer on ``node``: stops after
    ``quiet`` seconds without a delivery once every acked id was received (by the run's consumers
    or this one), or after ``limit``."""
    seen = set(received)
    deadline = time.monotonic() + limit
    stop = threading.Event()
    while time.monotonic() < deadline:
        try:
            conn, at = ends.connect(node, stop)
            ch = conn.channel()
            ch.basic_qos(prefetch_count=PREFETCH)
            idle_since = time.monotonic()
            for method, props, body in ch.consume(QUEUE, inactivity_timeout=0.5):
                now = time.monotonic()
                if method is None:
                    done = acked <= seen or now > deadline
                    if done and now - idle_since >= quiet:
                        break
                    if now > deadline:
                        break
                    continue
                idle_since = now
                seen.add(props.message_id)
                rec(op="deliver", id=props.message_id, node=at, redelivered=method.redelivered,
                    ok=body == body_of(props.message_id or ""), drain=True)
                ch.basic_ack(method.delivery_tag)
            conn.close()
            return
        except Exception as e:
            rec(op="error", who="drain", node=node, error=repr(e)[:200])
            time.sleep(1)


def check(ops_path: Path) -> dict:
    """The total-queue check over the operations of one run."""
    attempted, acked, unknown = set(), set(), set()
    received: dict[str, int] = {}
    corrupt, outcomes = [], {}
    for line in ops_path.read_text().splitlines():
        op = json.loads(line)
        kind = op["op"]
        if kind == "publish":
            attempted.add(op["id"])
        elif kind in ("ack", "nack", "timeout", "error", "unroutable"):
            if "id" in op:
                outcomes[kind] = outcomes.get(kind, 0) + 1
                if kind == "ack":
                    acked.add(op["id"])
                elif kind in ("timeout", "error"):
                    unknown.add(op["id"])
        elif kind == "deliver":
            received[op["id"]] = received.get(op["id"], 0) + 1
            if not op["ok"]:
                corrupt.append(op["id"])
    got = set(received)
    return {
        "attempted": len(attempted),
        "acked": len(acked),
        "outcomes": outcomes,
        "received": len(got),
        "lost": sorted(acked - got),
        "unexpected": sorted(got - attempted),
        "corrupt": sorted(set(corrupt)),
        "duplicates": sum(n - 1 for n in received.values()),
        "recovered": len(unknown & got),
    }
