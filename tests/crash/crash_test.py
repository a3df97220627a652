#!/usr/bin/env python3
"""Crash test for Warren's durability: N `kill -9` cycles against one data directory.

Every cycle:

1. start ``warren --dev --data-dir WORKDIR/data --listen 127.0.0.1:<free port>``;
2. declare (idempotently) the durable direct exchange ``crash.x`` and two durable
   queues bound to it with the routing key ``k``: ``crash.q1`` (no arguments) and
   ``crash.q2`` (``x-max-priority`` 10 and a 24 h ``x-message-ttl``);
3. run several publisher threads (each its own pika BlockingConnection with
   confirm_delivery) publishing persistent messages whose message_id is a unique
   id ``c{cycle}-p{n}-{i}`` and whose body is that id, ``|`` and a filler of
   0-4096 bytes derived from the id (checked byte for byte on delivery; it makes
   the log roll segments and reclaim space during the run); an id counts as
   *confirmed* only once basic_publish returned without an exception (a
   basic.nack raises NackError);
4. in about 80% of the cycles, run one consumer thread (manual ack, the id is
   recorded before the ack); without it the queues and the log grow, so that
   the next recovery has more to do;
5. in about half of the cycles, a churn thread declares and deletes a
   non-essential durable queue ``crash.scratch`` (short TTL, max-length) and a
   durable exchange ``crash.scratch.x`` bound to ``crash.x`` (its messages are not
   counted);
6. ``kill -9`` the broker at a random moment: sometimes during its own recovery
   right after start, sometimes around the topology declares, mostly during traffic.

At the end (and every ``--check-every`` cycles) the broker is started without
being killed, every counted queue is drained to empty, and:

* lost       = (queue, id) pairs confirmed but never received from that queue: MUST be empty
* unexpected = ids received that were never published: MUST be empty
* corrupt    = deliveries whose body, message_id or delivery_mode is not what was published: MUST be empty
* duplicates = deliveries beyond the first of a (queue, id) pair: allowed, reported

The broker is then stopped with SIGTERM (it must exit 0), started once more and
the queues must still be empty (a message acked before a clean shutdown that
comes back is reported as ``resurrected``; allowed, like a duplicate).

A broker that does not come back after a crash (exits on its own, refuses to
start, or refuses the declares of its own recovered queues with 406) is a failure too.

Output: one line per cycle and a final JSON line
``{"cycles":…, "published":…, "confirmed":…, "received":…, "lost":0, "unexpected":0, "duplicates":…, …}``.
Exit status 0 when nothing was lost, 1 when something was lost or is wrong, 2 on a usage error.
The broker's stdout/stderr of every run are appended to WORKDIR/broker.log
(with ``=== run N ...`` markers); the work directory is kept when the test fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import pika
import pika.exceptions

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
SERVER_NAME = "localhost"

EXCHANGE = "crash.x"
ROUTING_KEY = "k"
#: The counted queues and their arguments.
QUEUES = {
    "crash.q1": {},
    "crash.q2": {"x-max-priority": 10, "x-message-ttl": 86_400_000},
}
SCRATCH_QUEUE = "crash.scratch"
SCRATCH_EXCHANGE = "crash.scratch.x"
SCRATCH_ARGS = {"x-message-ttl": 300, "x-max-length": 200}

STARTUP_TIMEOUT = 30.0      # a broker must accept connections this soon after start
THREAD_JOIN_TIMEOUT = 15.0  # after the kill, every client thread must have ended by then
MAX_PER_PUBLISHER = 20_000  # bound on the publishes of one thread in one cycle
MAX_CHURN_STEPS = 500       # bound on the declare/delete steps of the churn thread in one cycle
DRAIN_IDLE = 1.0            # a drain ends when the queues are empty and nothing came for this long
MAX_FILLER = 4096           # bodies are the id, "|" and up to this many filler bytes (from the id)


def body_of(mid: str) -> bytes:
    """The body published for `mid`: the id, then a filler whose length and content follow from the
    id, so that a delivery can be checked byte for byte and the log grows fast enough to roll
    segments and reclaim space during the test."""
    n = zlib.crc32(mid.encode()) % (MAX_FILLER + 1)
    return mid.encode() + b"|" + bytes((ord("a") + (i + n) % 26) for i in range(n))


def log(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# the broker process
# --------------------------------------------------------------------------

class BrokerFailure(Exception):
    """The broker did something a crash must never cause (not come back, crash on its own, ...)."""


class Broker:
    def __init__(self, exe: str, data_dir: Path, log_path: Path):
        self.exe = exe
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.runs = 0
        self.killed = False
        self.started_at = 0.0
        self._kill_lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def _mark(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(f"=== {text} ===\n")

    def spawn(self, label: str) -> None:
        """Starts the process (does not wait for it to accept connections)."""
        self.runs += 1
        self.killed = False
        self.port = free_port()
        self._mark(f"run {self.runs} ({label}) port {self.port} at {time.strftime('%H:%M:%S')}")
        out = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        cmd = [self.exe, "--dev", "--data-dir", str(self.data_dir), "--listen", f"{HOST}:{self.port}"]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
        out.close()

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> bool:
        """True once the broker accepts TCP connections; False if it was killed by us first.
        Raises BrokerFailure if it exits on its own or does not come up in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if self.killed:
                    return False
                raise BrokerFailure(f"run {self.runs}: the broker exited on its own with status "
                                    f"{self.proc.returncode} while starting")
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.01)
                continue
            tls = self.data_dir / "tls"
            if all((tls / f).exists() for f in ("ca.pem", "admin.pem", "admin.key")):
                return True
            time.sleep(0.01)
        if self.killed:
            return False
        raise BrokerFailure(f"run {self.runs}: the broker did not accept connections within {timeout}s")

    def start(self, label: str, attempts: int = 5) -> None:
        """Starts the broker and waits until it accepts connections (a port taken by someone else
        between free_port() and the bind is retried with another one)."""
        for attempt in range(attempts):
            self.spawn(label)
            try:
                self.wait_ready()
                return
            except BrokerFailure:
                if attempt + 1 < attempts and "Address already in use" in self.log_tail(2000):
                    continue
                raise

    def kill(self) -> None:
        """kill -9 (from the killer timer or the main thread)."""
        with self._kill_lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return
            self.killed = True
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM; the broker must exit 0 within `timeout`."""
        proc = self.proc
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            proc.wait(timeout=10)
            raise BrokerFailure(f"run {self.runs}: the broker did not exit within {timeout}s of SIGTERM")
        if rc != 0:
            raise BrokerFailure(f"run {self.runs}: the broker exited with status {rc} after SIGTERM")
        return rc

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 6000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n:].decode(errors="replace")

    # -- clients ----------------------------------------------------------
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            tls = self.data_dir / "tls"
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls / "ca.pem"))
            ctx.load_cert_chain(str(tls / "admin.pem"), str(tls / "admin.key"))
            self._ssl = ctx
        return self._ssl

    def params(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            host=HOST, port=self.port, virtual_host="/",
            credentials=pika.credentials.ExternalCredentials(),
            ssl_options=pika.SSLOptions(self.ssl_context(), SERVER_NAME),
            connection_attempts=1, socket_timeout=5, stack_timeout=10,
            blocked_connection_timeout=60)

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params())


# --------------------------------------------------------------------------
# bookkeeping
# --------------------------------------------------------------------------

class Ledger:
    """What was published, confirmed and received, over all cycles."""

    def __init__(self):
        self.lock = threading.Lock()
        self.published: dict[str, int] = {}        # id -> broker run it was published in
        self.confirmed: set[str] = set()
        self.nacked: set[str] = set()
        self.received: dict[str, Counter] = {q: Counter() for q in QUEUES}
        self.deliveries = 0
        self.corrupt: list[str] = []
        self.unexpected: list[str] = []
        self.not_redelivered: list[str] = []       # came back after a restart without redelivered
        self.resurrected = 0

    def record_delivery(self, queue: str, run: int, method, props, body: bytes) -> None:
        mid = props.message_id
        with self.lock:
            self.deliveries += 1
            if mid is None:
                mid = body.split(b"|", 1)[0].decode(errors="replace")
            if body != body_of(mid) or props.delivery_mode != 2:
                self.corrupt.append(f"{queue}:{mid!r} body={body[:60]!r}... ({len(body)} bytes)"
                                    f" delivery_mode={props.delivery_mode}")
            pub_run = self.published.get(mid)
            if pub_run is None:
                self.unexpected.append(f"{queue}:{mid}")
            elif pub_run < run and not method.redelivered:
                self.not_redelivered.append(f"{queue}:{mid}")
            self.received[queue][mid] += 1

    def outstanding(self) -> int:
        """Confirmed (queue, id) pairs not received yet (they should be in the queues)."""
        with self.lock:
            return sum(1 for q in QUEUES for mid in self.confirmed if self.received[q][mid] == 0)

    def lost(self) -> list[str]:
        with self.lock:
            return sorted(f"{q}:{mid}" for q in QUEUES for mid in self.confirmed
                          if self.received[q][mid] == 0)

    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for q in QUEUES for n in self.received[q].values() if n > 1)

    def received_ids(self) -> int:
        with self.lock:
            ids = set()
            for q in QUEUES:
                ids.update(self.received[q])
            return len(ids)


# --------------------------------------------------------------------------
# client threads
# --------------------------------------------------------------------------

def quiet_close(conn) -> None:
    try:
        if conn is not None and conn.is_open:
            conn.close()
    except Exception:
        pass


def declare_topology(ch) -> None:
    ch.exchange_declare(EXCHANGE, "direct", durable=True)
    for q, args in QUEUES.items():
        ch.queue_declare(q, durable=True, arguments=args or None)
        ch.queue_bind(q, EXCHANGE, ROUTING_KEY)


class Cycle:
    """The client side of one broker run that gets killed."""

    def __init__(self, broker: Broker, ledger: Ledger, number: int, rng: random.Random, publishers: int):
        self.broker = broker
        self.ledger = ledger
        self.number = number
        self.run = broker.runs
        self.rng = rng
        self.publishers = publishers
        self.stop = threading.Event()
        self.published = 0
        self.confirmed = 0
        self.nacked = 0
        self.received = 0
        self.churn_steps = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.consumer_ready = threading.Event()

    def broker_error(self, where: str, e: BaseException) -> None:
        """An AMQP error the broker sent on purpose: a failure unless it is explained by the kill."""
        if isinstance(e, (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker)):
            with self.lock:
                self.errors.append(f"{where}: {e!r}")

    def publisher(self, n: int, seed: int) -> None:
        rng = random.Random(seed)
        conn = None
        try:
            conn = self.broker.connect()
            ch = conn.channel()
            ch.confirm_delivery()
        except Exception as e:
            self.broker_error(f"publisher {n} setup", e)
            quiet_close(conn)
            return
        try:
            for i in range(MAX_PER_PUBLISHER):
                if self.stop.is_set():
                    break
                mid = f"c{self.number}-p{n}-{i}"
                with self.ledger.lock:
                    self.ledger.published[mid] = self.run
                with self.lock:
                    self.published += 1
                props = pika.BasicProperties(delivery_mode=2, message_id=mid,
                                             priority=rng.randrange(10))
                try:
                    ch.basic_publish(EXCHANGE, ROUTING_KEY, body_of(mid), props)
                except pika.exceptions.NackError:
                    with self.ledger.lock:
                        self.ledger.nacked.add(mid)
                    with self.lock:
                        self.nacked += 1
                    continue
                except Exception as e:
                    self.broker_error(f"publisher {n} publish {mid}", e)
                    break
                with self.ledger.lock:
                    self.ledger.confirmed.add(mid)
                with self.lock:
                    self.confirmed += 1
        finally:
            quiet_close(conn)

    def consumer(self) -> None:
        conn = None
        try:
            conn = self.broker.connect()
            ch = conn.channel()
            ch.basic_qos(prefetch_count=100)

            def on_message(queue, ch, method, props, body):
                self.ledger.record_delivery(queue, self.run, method, props, body)
                with self.lock:
                    self.received += 1
                ch.basic_ack(method.delivery_tag)

            for q in QUEUES:
                ch.basic_consume(q, on_message_callback=lambda c, m, p, b, q=q: on_message(q, c, m, p, b))
            self.consumer_ready.set()
            deadline = time.monotonic() + 600
            while not self.stop.is_set() and time.monotonic() < deadline:
                conn.process_data_events(time_limit=0.1)
        except Exception as e:
            self.broker_error("consumer", e)
        finally:
            self.consumer_ready.set()
            quiet_close(conn)

    def churn(self, seed: int) -> None:
        """Declares and deletes the scratch queue and exchange while the broker runs."""
        rng = random.Random(seed)
        conn = None
        try:
            conn = self.broker.connect()
            ch = conn.channel()
            for _ in range(MAX_CHURN_STEPS):
                if self.stop.is_set():
                    break
                step = rng.randrange(4)
                if step == 0:
                    ch.queue_declare(SCRATCH_QUEUE, durable=True, arguments=SCRATCH_ARGS)
                    ch.queue_bind(SCRATCH_QUEUE, EXCHANGE, ROUTING_KEY)
                elif step == 1:
                    ch.queue_delete(SCRATCH_QUEUE)
                elif step == 2:
                    ch.exchange_declare(SCRATCH_EXCHANGE, "fanout", durable=True)
                    ch.exchange_bind(SCRATCH_EXCHANGE, EXCHANGE, ROUTING_KEY)
                    ch.queue_declare(SCRATCH_QUEUE, durable=True, arguments=SCRATCH_ARGS)
                    ch.queue_bind(SCRATCH_QUEUE, SCRATCH_EXCHANGE, "")
                else:
                    ch.exchange_delete(SCRATCH_EXCHANGE)
                with self.lock:
                    self.churn_steps += 1
                time.sleep(rng.uniform(0, 0.15))
        except Exception as e:
            self.broker_error("churn", e)
        finally:
            quiet_close(conn)


def kill_delay(rng: random.Random) -> tuple[float, str]:
    """When to kill the broker, counted from its spawn."""
    r = rng.random()
    if r < 0.10:
        return rng.uniform(0.0, 0.06), "recovery"
    if r < 0.25:
        return rng.uniform(0.06, 0.4), "startup/declare"
    return rng.uniform(0.4, 2.0), "traffic"


def run_cycle(broker: Broker, ledger: Ledger, number: int, rng: random.Random, publishers: int) -> dict:
    delay, phase = kill_delay(rng)
    churn = rng.random() < 0.5
    # Without a consumer the queues (and the log) grow, so that recovery has more to do.
    consume = rng.random() < 0.8
    broker.spawn(f"cycle {number}, kill after {delay:.3f}s ({phase})")
    timer = threading.Timer(max(0.0, delay - (time.monotonic() - broker.started_at)), broker.kill)
    timer.daemon = True
    timer.start()
    cycle = Cycle(broker, ledger, number, rng, publishers)
    threads: list[threading.Thread] = []
    ready = False
    try:
        ready = broker.wait_ready()
        if ready:
            conn = None
            try:
                conn = broker.connect()
                declare_topology(conn.channel())
            except Exception as e:
                cycle.broker_error("declare", e)
                ready = False
            finally:
                quiet_close(conn)
        if ready:
            if consume:
                threads.append(threading.Thread(target=cycle.consumer, daemon=True, name="consumer"))
            for n in range(publishers):
                threads.append(threading.Thread(target=cycle.publisher, args=(n, rng.getrandbits(32)),
                                                daemon=True, name=f"publisher-{n}"))
            if churn:
                threads.append(threading.Thread(target=cycle.churn, args=(rng.getrandbits(32),),
                                                daemon=True, name="churn"))
            for t in threads:
                t.start()
        rc = broker.wait_exit(timeout=delay + STARTUP_TIMEOUT)
        if rc is None:
            raise BrokerFailure(f"cycle {number}: the broker was not killed in time")
    finally:
        timer.cancel()
        broker.kill()
        broker.ensure_dead()
        cycle.stop.set()
        deadline = time.monotonic() + THREAD_JOIN_TIMEOUT
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
            if t.is_alive():
                cycle.errors.append(f"thread {t.name} still running {THREAD_JOIN_TIMEOUT}s after the kill")
    if broker.proc.returncode != -signal.SIGKILL:
        cycle.errors.append(f"the broker ended with status {broker.proc.returncode}, not by our SIGKILL")
    return {
        "cycle": number, "phase": phase, "delay": delay, "churn": churn, "consume": consume, "ready": ready,
        "published": cycle.published, "confirmed": cycle.confirmed, "nacked": cycle.nacked,
        "received": cycle.received, "churn_steps": cycle.churn_steps, "errors": cycle.errors,
    }


# --------------------------------------------------------------------------
# draining and checking
# --------------------------------------------------------------------------

def drain(broker: Broker, ledger: Ledger, label: str, timeout: float) -> int:
    """Consumes every counted queue to empty on the running broker; returns the deliveries taken."""
    run = broker.runs
    taken = 0
    conn = broker.connect()
    try:
        ch = conn.channel()
        declare_topology(ch)
        ch.basic_qos(prefetch_count=500)
        last = [time.monotonic()]
        counts: dict = {}

        def on_message(queue, ch, method, props, body):
            nonlocal taken
            ledger.record_delivery(queue, run, method, props, body)
            taken += 1
            last[0] = time.monotonic()
            ch.basic_ack(method.delivery_tag)

        for q in QUEUES:
            ch.basic_consume(q, on_message_callback=lambda c, m, p, b, q=q: on_message(q, c, m, p, b))
        deadline = time.monotonic() + timeout
        while True:
            conn.process_data_events(time_limit=0.2)
            if time.monotonic() - last[0] >= DRAIN_IDLE:
                counts = {q: ch.queue_declare(q, passive=True).method.message_count for q in QUEUES}
                if all(n == 0 for n in counts.values()):
                    break
            if time.monotonic() > deadline:
                raise BrokerFailure(f"{label}: queues not drained within {timeout}s: {counts}")
        conn.close()
    finally:
        quiet_close(conn)
    return taken


def check(broker: Broker, ledger: Ledger, label: str) -> dict:
    """Start without a kill, drain, SIGTERM, start again: the queues must stay empty."""
    t0 = time.monotonic()
    broker.start(f"{label}: drain")
    drained = drain(broker, ledger, label, timeout=120)
    broker.terminate()
    broker.start(f"{label}: empty after a clean restart")
    conn = broker.connect()
    try:
        ch = conn.channel()
        counts = {q: ch.queue_declare(q, passive=True).method.message_count for q in QUEUES}
    finally:
        quiet_close(conn)
    again = 0
    if any(counts.values()):
        again = drain(broker, ledger, label + " (after clean restart)", timeout=60)
        ledger.resurrected += again
    broker.terminate()
    return {"drained": drained, "resurrected": again, "seconds": time.monotonic() - t0}


def summary(ledger: Ledger, cycles: int, extra: dict) -> dict:
    out = {
        "cycles": cycles,
        "published": len(ledger.published),
        "confirmed": len(ledger.confirmed),
        "received": ledger.received_ids(),
        "lost": None,
        "unexpected": len(ledger.unexpected),
        "duplicates": ledger.duplicates(),
        "corrupt": len(ledger.corrupt),
        "nacked": len(ledger.nacked),
        "not_redelivered": len(ledger.not_redelivered),
        "resurrected": ledger.resurrected,
        "deliveries": ledger.deliveries,
    }
    out.update(extra)
    return out


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="kill -9 crash test of Warren's durability")
    ap.add_argument("--cycles", type=int, default=20, help="kill -9 cycles (default 20)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    ap.add_argument("--bin", default=os.environ.get("WARREN_BIN") or str(REPO_ROOT / "target" / "debug" / "warren"),
                    help="the warren binary (default $WARREN_BIN or target/debug/warren)")
    ap.add_argument("--workdir", default=None,
                    help="work directory (data dir, broker.log); default: a new temporary directory. "
                         "An existing WORKDIR/data is wiped first.")
    ap.add_argument("--publishers", type=int, default=3, help="publisher threads (default 3)")
    ap.add_argument("--check-every", type=int, default=0,
                    help="also drain and check after every K cycles (default: only at the end)")
    ap.add_argument("--max-seconds", type=float, default=0,
                    help="stop starting new cycles after this many seconds (0: no limit)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory even on success")
    args = ap.parse_args(argv)

    if args.cycles < 0 or args.publishers < 1:
        ap.error("--cycles must be >= 0 and --publishers >= 1")
    if not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        ap.error(f"warren binary not found: {args.bin}")
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    rng = random.Random(seed)
    auto_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="warren-crash-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    log_path = workdir / "broker.log"
    log_path.write_text("")
    log(f"crash test: {args.cycles} cycles, seed {seed}, binary {args.bin}, workdir {workdir}")

    broker = Broker(args.bin, data_dir, log_path)
    ledger = Ledger()
    failures: list[str] = []
    started = time.monotonic()
    done = 0
    checks = 0
    lost_at_checks: set[str] = set()   # confirmed pairs missing after a completed drain
    final_checked = False
    try:
        # Set-up run: creates the dev PKI and the topology, ends with a clean stop.
        broker.start("set-up")
        conn = broker.connect()
        try:
            ch = conn.channel()
            declare_topology(ch)
            for q in QUEUES:
                ch.queue_purge(q)
        finally:
            quiet_close(conn)
        broker.terminate()

        for number in range(1, args.cycles + 1):
            if args.max_seconds and time.monotonic() - started > args.max_seconds:
                log(f"--max-seconds {args.max_seconds} reached after {done} cycles")
                break
            t0 = time.monotonic()
            r = run_cycle(broker, ledger, number, rng, args.publishers)
            done = number
            log(f"cycle {number}: kill at {r['delay']:.3f}s ({r['phase']}{', churn' if r['churn'] else ''}"
                f"{'' if r['consume'] else ', no consumer'}"
                f"{'' if r['ready'] else ', before ready'}) published {r['published']} confirmed {r['confirmed']}"
                f" nacked {r['nacked']} received {r['received']} churn-steps {r['churn_steps']}"
                f" outstanding {ledger.outstanding()} [{time.monotonic() - t0:.2f}s]")
            for e in r["errors"]:
                failures.append(f"cycle {number}: {e}")
                log(f"  ERROR cycle {number}: {e}")
            if args.check_every and number % args.check_every == 0 and number < args.cycles:
                c = check(broker, ledger, f"check after cycle {number}")
                checks += 1
                lost = ledger.lost()
                lost_at_checks.update(lost)
                log(f"check after cycle {number}: drained {c['drained']} resurrected {c['resurrected']}"
                    f" lost {len(lost)} unexpected {len(ledger.unexpected)} [{c['seconds']:.2f}s]")
                if lost or ledger.unexpected or ledger.corrupt:
                    break
        c = check(broker, ledger, "final check")
        checks += 1
        lost_at_checks.update(ledger.lost())
        final_checked = True
        log(f"final check: drained {c['drained']} resurrected {c['resurrected']} [{c['seconds']:.2f}s]")
    except BrokerFailure as e:
        failures.append(str(e))
        log(f"ERROR: {e}")
    except Exception as e:  # a client-side surprise outside a cycle: report it with the broker's log
        failures.append(f"{type(e).__name__}: {e}")
        log(f"ERROR: {type(e).__name__}: {e}")
    finally:
        try:
            broker.ensure_dead()
        except Exception:
            pass

    # Only a completed drain tells what is lost; confirmed messages not received when the run
    # stopped early (a failure) are reported as unchecked.
    lost = sorted(lost_at_checks)
    result = summary(ledger, done, {"seed": seed, "checks": checks, "failures": len(failures),
                                    "seconds": round(time.monotonic() - started, 1),
                                    "workdir": str(workdir)})
    result["lost"] = len(lost)
    if not final_checked:
        result["unchecked_outstanding"] = len(set(ledger.lost()) - lost_at_checks)
    for what, items in (("LOST (confirmed, never received)", lost),
                        ("UNEXPECTED (received, never published)", ledger.unexpected),
                        ("CORRUPT", ledger.corrupt),
                        ("NOT REDELIVERED (came back after a restart with redelivered=False)",
                         ledger.not_redelivered)):
        if items:
            log(f"{what}: {len(items)}: {', '.join(items[:50])}{' ...' if len(items) > 50 else ''}")
    for f in failures:
        log(f"FAILURE: {f}")
    ok = not (lost or ledger.unexpected or ledger.corrupt or failures)
    if not ok:
        log(f"broker output: {log_path}\n--- last lines ---\n{broker.log_tail()}")
    print(json.dumps(result), flush=True)
    if ok and auto_workdir and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
