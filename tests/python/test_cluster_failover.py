"""A three-node Warren cluster as operators run it (issue 13): three ``warren --config`` processes
made by ``warren --dev --cluster 3``, a pika publisher with confirms and a three-host failover list,
kill -9 of the node hosting the quorum queue (its shard's leader) in the middle of the run, a
consumer on another node afterwards, and the total-queue check: no confirmed message lost, nothing
received that was not published (duplicates are allowed and counted). The killed node then comes
back and catches up.

Warren only (it starts its own processes; the RabbitMQ comparison is the benchmark's)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pika
import pytest

import rabbitmq_target
from conftest import HOST, TARGET, Broker, _warren_exe

pytestmark = pytest.mark.skipif(TARGET != "warren", reason="starts its own Warren cluster")

NODES = 3
SHARDS = 4  # warren --dev --cluster's queue_shards
LINK_OFFSET = 20000
QUEUE = "ha-jobs"


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def shard_of(vhost: str, queue: str) -> int:
    """The shard group of a quorum queue, as Warren computes it (its record name hashed)."""
    record = json.dumps([vhost, queue], separators=(",", ":"), ensure_ascii=False)
    return 1 + _fnv1a(record.encode()) % SHARDS


def _free_base() -> int:
    """A port such that it and the next NODES - 1, and each + LINK_OFFSET, are free."""
    for _ in range(200):
        base = rabbitmq_target.free_port(12000, 12000 + 8000)
        ports = [base + i + off for i in range(NODES) for off in (0, LINK_OFFSET)]
        ok = True
        for p in ports:
            with socket.socket() as s:
                try:
                    s.bind((HOST, p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range for a three-node cluster")


class Cluster:
    def __init__(self, base_dir: Path):
        self.exe = _warren_exe()
        self.data = base_dir / "data"
        self.log = base_dir / "cluster.log"
        self.base = _free_base()
        self.procs: dict[int, subprocess.Popen] = {}

    def port(self, i: int) -> int:
        return self.base + i - 1

    def configure(self) -> None:
        """Runs ``warren --dev --cluster 3`` until every node answers, then stops it: its node
        configurations stay under DATA/n<i>/warren.toml for the test to run node by node."""
        with open(self.log, "ab") as out:
            sup = subprocess.Popen(
                [self.exe, "--dev", "--cluster", str(NODES), "--data-dir", str(self.data),
                 "--listen", f"{HOST}:{self.base}"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            for i in range(1, NODES + 1):
                rabbitmq_target.wait_for_port(HOST, self.port(i), deadline, sup)
        finally:
            sup.send_signal(signal.SIGINT)
            sup.wait(timeout=60)
        for i in range(1, NODES + 1):
            assert (self.data / f"n{i}" / "warren.toml").exists()

    def start(self, i: int) -> None:
        with open(self.log, "ab") as out:
            out.write(f"=== node {i} start\n".encode())
            out.flush()
            self.procs[i] = subprocess.Popen(
                [self.exe, "--config", str(self.data / f"n{i}" / "warren.toml")],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        rabbitmq_target.wait_for_port(HOST, self.port(i), time.monotonic() + 60, self.procs[i])

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def status(self, i: int) -> dict:
        ctl = Path(self.exe).with_name("brokerctl")
        cp = subprocess.run(
            [str(ctl), "--socket", str(self.data / f"n{i}" / "admin.sock"), "--format", "json",
             "cluster", "status"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        assert cp.returncode == 0, cp.stderr
        return json.loads(cp.stdout)

    def group(self, i: int, name: str) -> dict:
        return next(g for g in self.status(i)["groups"] if g["group"] == name)

    def broker(self, i: int) -> Broker:
        return Broker("warren", self.port(i), self.data)

    def params(self, order: list[int]) -> list[pika.ConnectionParameters]:
        return [self.broker(i).pika_params() for i in order]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_a_failed_queue_host_loses_no_confirmed_message(tmp_path, fault):
    """``kill``: kill -9 of the queue's host, the publisher connected to it (HA4). ``pause``:
    SIGSTOP of the host for 10 s, the publisher on another node; SIGCONT, and the old host rejoins
    as a follower (HA5)."""
    cluster = Cluster(tmp_path)
    cluster.configure()
    try:
        for i in range(1, NODES + 1):
            cluster.start(i)
        shard = f"shard-{shard_of('/', QUEUE)}"
        host = wait(lambda: cluster.group(1, shard)["leader"], 30, f"{shard} has a leader")

        survivors = [i for i in range(1, NODES + 1) if i != host]
        # kill: the publisher is on the host, so the kill takes both; pause: it is elsewhere.
        first = [host] if fault == "kill" else [survivors[0]]
        conn = pika.BlockingConnection(cluster.params(first))
        ch = conn.channel()
        ch.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        ch.confirm_delivery()
        published, acked = set(), set()
        total, kill_at = 300, 100
        n = reconnects = nacks = 0
        gap = killed_at = 0.0
        resumed = False
        while n < total:
            if n == kill_at and not killed_at:
                killed_at = time.monotonic()
                if fault == "kill":
                    cluster.kill(host)
                else:
                    cluster.procs[host].send_signal(signal.SIGSTOP)
            if fault == "pause" and killed_at and time.monotonic() - killed_at > 10 and not resumed:
                cluster.procs[host].send_signal(signal.SIGCONT)
                resumed = True
            body = f"m-{n}"
            published.add(body)
            try:
                ch.basic_publish("", QUEUE, body.encode(),
                                 pika.BasicProperties(delivery_mode=2))
                acked.add(body)
                n += 1
                if n == kill_at + 1:
                    gap = time.monotonic() - killed_at
            except pika.exceptions.NackError:
                # No majority behind the queue yet (a new leader is being elected): again.
                nacks += 1
                time.sleep(0.05)
            except (pika.exceptions.AMQPError, OSError):
                # Connection lost or nack: reconnect to a survivor and publish it again.
                try:
                    conn.close()
                except Exception:
                    pass
                conn = wait(lambda: pika.BlockingConnection(cluster.params(survivors)), 30,
                            "a survivor accepts the publisher")
                ch = conn.channel()
                ch.confirm_delivery()
                reconnects += 1
        conn.close()
        assert len(acked) == total
        if fault == "kill":
            assert reconnects >= 1, "the publisher never lost its node: the kill did not take it"
            assert cluster.procs[host].poll() is not None
            # HA4: a client of the killed node confirms again through another host within 10 s.
            assert gap <= 10, f"no confirm for {gap:.1f}s after the kill"
        else:
            # HA5: a new leader (and confirms) within 5 s of the pause, for a client elsewhere.
            assert gap <= 5, f"no confirm for {gap:.1f}s after the pause"
            if not resumed:
                cluster.procs[host].send_signal(signal.SIGCONT)

        # A consumer on a survivor that does not host the queue now takes everything.
        new_host = wait(lambda: (lambda l: l if l in survivors else None)(cluster.group(survivors[0], shard)["leader"]),
                        30, "a new leader among the survivors")
        consumer_node = next(i for i in survivors if i != new_host)
        conn = pika.BlockingConnection(cluster.params([consumer_node]))
        ch = conn.channel()
        ch.basic_qos(prefetch_count=50)
        received: list[str] = []
        deadline = time.monotonic() + 60
        for method, _props, body in ch.consume(QUEUE, inactivity_timeout=3):
            if method is None:
                if set(received) >= acked or time.monotonic() > deadline:
                    break
                continue
            received.append(body.decode())
            ch.basic_ack(method.delivery_tag)
        ch.cancel()
        conn.close()
        lost = acked - set(received)
        unexpected = set(received) - published
        duplicates = len(received) - len(set(received))
        assert not lost, f"{len(lost)} confirmed messages lost: {sorted(lost)[:20]}\n{cluster.output()}"
        assert not unexpected, f"unexpected: {sorted(unexpected)[:20]}"
        print(f"published {len(published)}, confirmed {len(acked)}, received {len(received)}, "
              f"duplicates {duplicates}, publisher reconnects {reconnects}, nacks {nacks}, "
              f"confirm gap after the {fault} {gap:.2f}s")

        # The killed node comes back on its data (the paused one goes on) and catches up: its
        # replica of the shard empties.
        if fault == "kill":
            cluster.start(host)
        wait(lambda: cluster.group(host, shard)["messages"] == 0
             and cluster.group(host, shard)["applied_index"] == cluster.group(new_host, shard)["applied_index"],
             60, "the restarted node catches up")
    finally:
        cluster.stop_all()
