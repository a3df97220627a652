"""The fault families (HA.md §4, "Nemeses"). Each runs fault cycles against the cluster until its
deadline and leaves every fault undone when it returns; the events it logs (monotonic time, what,
node) let the checker judge what happened while a fault was on.

* ``kill``: kill -9 of the queue's host or of a random node, restarted 8 s later.
* ``pause``: SIGSTOP of the queue's host for 10 s, then SIGCONT.
* ``partition``: the queue's host or a random node cut off from both peers (both directions) for
  10 s, then healed.
* ``lossy``: 10 % of the packets between nodes dropped at random for 15 s.
* ``fsfreeze``: the queue's host's data directory (its own loop-mounted ext4) frozen for 15 s.
* ``powerloss``: every node killed at once while holding unsynced writes in memory (a coordinated
  power failure), then all restarted.
* ``members`` (HA12): a node is replaced under load, again and again: a new node (a new id) starts
  with ``join = true`` and is added with ``brokerctl cluster add_node``, then the queue's host or a
  random older node is removed with ``remove_node`` on another node, killed and wiped.

Matrix only (their cycles are long):

* ``slowfollower`` (HA6): a follower of the queue's shard paused for 60 s under load, then resumed;
  the host's RSS is sampled before and after, and the follower's catch-up timed.
* ``longdown`` (HA8): a follower killed, kept down for 120 s, restarted; its catch-up timed.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from netns_cluster import NetnsCluster

FAMILIES = ("kill", "pause", "partition", "lossy", "fsfreeze", "powerloss", "members")
# How long a membership change may take (a new node's catch-up in every group, under load).
CHANGE_TIMEOUT = 150
LONG_FAMILIES = ("slowfollower", "longdown")


class Nemesis:
    def __init__(self, cluster: NetnsCluster, family: str, rng: random.Random,
                 host_of: Callable[[], int | None], group: str):
        assert family in FAMILIES + LONG_FAMILIES, family
        self.cluster, self.family, self.rng, self.host_of = cluster, family, rng, host_of
        self.group = group
        self.events: list[dict] = []
        self.cycle = 0

    def log(self, what: str, node: int | None = None) -> None:
        """Notes a fault event, with the queue's host as the nodes that can answer see it."""
        self.events.append({"t": round(time.monotonic(), 3), "what": what, "node": node,
                            "host": self.host_of()})
        self.cluster.note(f"nemesis: {what} {node or ''}")

    def target(self) -> int:
        """The queue's host on even cycles, a random node on odd ones."""
        host = self.host_of() if self.cycle % 2 == 0 else None
        return host or self.rng.choice(self.cluster.nodes)

    def sleep_until(self, deadline: float) -> None:
        time.sleep(max(0.0, deadline - time.monotonic()))

    def run(self, until: float) -> None:
        step = getattr(self, f"_{self.family}")
        while time.monotonic() < until - 12:
            step(until)
            self.cycle += 1
        self.sleep_until(until)

    def _kill(self, until: float) -> None:
        node = self.target()
        self.log("kill", node)
        self.cluster.kill(node)
        time.sleep(8)
        self.log("restart", node)
        self.cluster.start(node, wait=False)
        time.sleep(8)

    def _pause(self, until: float) -> None:
        node = self.target() if self.cycle % 2 == 0 else self.host_of() or self.target()
        self.log("pause", node)
        self.cluster.pause(node)
        time.sleep(10)
        self.log("resume", node)
        self.cluster.resume(node)
        time.sleep(8)

    def _partition(self, until: float) -> None:
        node = self.target()
        self.log("isolate", node)
        self.cluster.isolate(node)
        time.sleep(10)
        self.log("heal", node)
        self.cluster.heal()
        time.sleep(8)

    def _lossy(self, until: float) -> None:
        self.log("lossy")
        self.cluster.lossy(10)
        time.sleep(15)
        self.log("heal")
        self.cluster.heal()
        time.sleep(5)

    def _fsfreeze(self, until: float) -> None:
        node = self.host_of() or self.target()
        self.log("freeze", node)
        self.cluster.freeze(node)
        time.sleep(10)
        self.log("frozen 10 s", node)
        time.sleep(5)
        self.log("thaw", node)
        self.cluster.thaw(node)
        time.sleep(8)

    def follower(self) -> int:
        host = self.host_of()
        return self.rng.choice([i for i in self.cluster.nodes if i != host])

    def rss_kib(self, node: int | None) -> int | None:
        try:
            status = open(f"/proc/{self.cluster.procs[node].pid}/status").read()
            return int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:")))
        except (KeyError, OSError, StopIteration, ValueError):
            return None

    def caught_up(self, node: int, group: str, limit: float) -> float | None:
        """Seconds until ``node`` has applied what the leader of ``group`` had applied when this
        was called: everything it missed (None: not within ``limit``). Not the leader's index of
        the moment: under load a follower learns each commit a round trip later, so it is never
        quite there."""
        start = time.monotonic()
        idx = lambda st: next((g["applied_index"] for g in (st or {}).get("groups", [])
                               if g["group"] == group), None)
        target = None
        while time.monotonic() - start < limit:
            if target is None:
                target = idx(self.cluster.status(self.host_of() or node))
            mine = idx(self.cluster.status(node))
            if target is not None and mine is not None and mine >= target:
                return round(time.monotonic() - start, 2)
            time.sleep(0.5)
        return None

    def _slowfollower(self, until: float) -> None:
        node, host = self.follower(), self.host_of()
        self.events.append({"t": round(time.monotonic(), 3), "what": "rss-before", "node": host,
                            "rss_kib": self.rss_kib(host)})
        self.log("pause", node)
        self.cluster.pause(node)
        time.sleep(60)
        self.events.append({"t": round(time.monotonic(), 3), "what": "rss-after", "node": host,
                            "rss_kib": self.rss_kib(host)})
        self.log("resume", node)
        self.cluster.resume(node)
        self.events.append({"t": round(time.monotonic(), 3), "what": "caught-up", "node": node,
                            "seconds": self.caught_up(node, self.group, 60)})
        time.sleep(5)

    def _longdown(self, until: float) -> None:
        node = self.follower()
        self.log("kill", node)
        self.cluster.kill(node)
        time.sleep(120)
        self.log("restart", node)
        self.cluster.start(node, wait=False)
        self.events.append({"t": round(time.monotonic(), 3), "what": "caught-up", "node": node,
                            "seconds": self.caught_up(node, self.group, 90)})
        time.sleep(5)

    def _members(self, until: float) -> None:
        old = list(self.cluster.nodes)
        new = self.cluster.join_new()
        self.log("join", new)
        by = self.rng.choice(old)
        cp = self.cluster.ctl(by, "cluster", "add_node", str(new), f"n{new}",
                              f"{self.cluster.addr_of(new)}", timeout=CHANGE_TIMEOUT)
        if cp.returncode != 0:
            self.log(f"membership change failed: add_node {new} on node {by}: {cp.stderr.strip()}", new)
            return
        self.cluster.nodes.append(new)
        self.log("added", new)
        self.cluster.wait_serving(new)
        time.sleep(3)
        victim = self.target() if self.cycle % 2 == 0 else self.rng.choice(old)
        if victim == new:
            victim = self.rng.choice(old)
        by = self.rng.choice([i for i in self.cluster.nodes if i != victim])
        self.log("remove", victim)
        cp = self.cluster.ctl(by, "cluster", "remove_node", str(victim), timeout=CHANGE_TIMEOUT)
        if cp.returncode != 0:
            self.log(f"membership change failed: remove_node {victim} on node {by}: {cp.stderr.strip()}",
                     victim)
            return
        self.log("removed", victim)
        self.cluster.retire(victim)
        time.sleep(8)

    def _powerloss(self, until: float) -> None:
        time.sleep(self.rng.uniform(2, 6))
        self.log("power-loss")
        for i in self.cluster.nodes:
            self.cluster.procs[i].kill()
        for i in self.cluster.nodes:
            self.cluster.procs[i].wait(timeout=30)
        time.sleep(2)
        self.log("power-on")
        for i in self.cluster.nodes:
            self.cluster.start(i, wait=False)
        time.sleep(12)
