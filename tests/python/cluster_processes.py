"""A three-node Warren cluster as operators run it, for the cluster tests of this suite: three
``warren --config`` processes made by ``warren --dev --cluster 3`` on 127.0.0.1, started, killed
and inspected (``brokerctl cluster status``) one by one. The fault families (partitions, pauses,
frozen disks, power loss) run in a network namespace of their own: tests/fault."""

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
LINK_OFFSET = 20000
QUEUE = "ha-jobs"


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

    def queues(self, i: int) -> list[dict]:
        """``brokerctl list_queues`` on node ``i`` (vhost /), as JSON."""
        ctl = Path(self.exe).with_name("brokerctl")
        cp = subprocess.run(
            [str(ctl), "--socket", str(self.data / f"n{i}" / "admin.sock"), "--format", "json",
             "list_queues"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
        assert cp.returncode == 0, cp.stderr
        return json.loads(cp.stdout)

    def name(self, i: int) -> str:
        """Node ``i``'s name (its certificate's CN)."""
        return self.status(i)["nodes"][0]["name"]

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
