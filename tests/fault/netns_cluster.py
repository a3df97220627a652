"""A three-node Warren cluster inside a network namespace, and the faults done to it.

Runs inside the namespace ``run.py`` made (``ip netns exec``), so its loopback, its nftables table
and its mounts belong to the run alone. Node ``i`` serves AMQP on 127.0.0.1<i>:5671 and its node
links on 127.0.0.1<i>:25672 and dials its peers from its own address, so an nftables rule can cut
one pair of nodes in one direction; clients come from 127.0.0.1 and are never cut. The nodes'
configurations and certificates come from ``warren --dev --cluster 3`` (run once, then rewritten
to these addresses with node certificates reissued for them by ``brokerctl ca issue --node``).

Every process, mount and rule is the run's own: faults touch only pids this object started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

AMQP_PORT = 5671
LINK_PORT = 25672
DEV_PORT = 15671  # where the one-off `warren --dev --cluster` run listens while it writes configs
NFT_TABLE = "wha"


def node_ip(i: int) -> str:
    return f"127.0.0.{10 + i}"


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before {host}:{port} opened")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{host}:{port} did not open within {timeout}s")


def sh(*cmd: str, check: bool = True, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, timeout=timeout, input=input, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class NetnsCluster:
    def __init__(self, work: Path, exe: Path, nodes: int = 3, loop_mounts: bool = False,
                 hold_unsynced: bool = False, spares: int = 0):
        self.work = work
        self.exe = exe
        self.ctl_exe = exe.with_name("brokerctl")
        self.data = work / "data"
        self.tls = self.data / "tls"
        self.nodes = list(range(1, nodes + 1))
        # Ids (and addresses) kept for nodes that join later (the ``members`` family); clients
        # know their addresses from the start, as an operator's host list would.
        self.spares = list(range(nodes + 1, nodes + 1 + spares))
        self.loop_mounts = loop_mounts
        self.hold_unsynced = hold_unsynced
        self.procs: dict[int, subprocess.Popen] = {}
        self.paused: set[int] = set()
        self.frozen: set[int] = set()
        self.mounted: list[Path] = []
        self.log = work / "nodes.log"

    # -- set-up ----------------------------------------------------------------------------------
    def configure(self) -> None:
        sh("ip", "link", "set", "lo", "up")
        with open(self.log, "ab") as out:
            dev = subprocess.Popen(
                [str(self.exe), "--dev", "--cluster", str(len(self.nodes)), "--data-dir", str(self.data),
                 "--listen", f"127.0.0.1:{DEV_PORT}"],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        try:
            for i in self.nodes:
                wait_port("127.0.0.1", DEV_PORT + i - 1, 60, dev)
        finally:
            dev.send_signal(signal.SIGINT)
            dev.wait(timeout=60)
        for i in self.nodes:
            d = self.node_dir(i)
            text = (d / "warren.toml").read_text()
            for j in self.nodes:
                text = text.replace(f'"127.0.0.1:{DEV_PORT + j - 1}"', f'"{node_ip(j)}:{AMQP_PORT}"')
                text = text.replace(f'"127.0.0.1:{DEV_PORT + 20000 + j - 1}"', f'"{node_ip(j)}:{LINK_PORT}"')
            # A fresh cluster: nothing of the one-off run stays (it bootstrapped on other addresses).
            shutil.rmtree(d)
            d.mkdir(mode=0o700)
            if self.loop_mounts:
                image = self.work / f"n{i}.img"
                with open(image, "wb") as f:
                    f.truncate(512 << 20)
                sh("mkfs.ext4", "-q", "-F", str(image), timeout=60)
                sh("mount", "-o", "loop", str(image), str(d))
                self.mounted.append(d)
                d.chmod(0o700)
            (d / "warren.toml").write_text(text)
            for suffix in ("pem", "key"):
                (self.tls / "nodes" / f"n{i}.{suffix}").unlink()
            sh(str(self.ctl_exe), "ca", "issue", "--dir", str(self.tls), "--name", f"n{i}", "--node",
               "--host", node_ip(i), "--out", str(self.tls / "nodes"))
        # Node 1's configuration, the template of a node that joins later.
        self.template = (self.node_dir(1) / "warren.toml").read_text()

    def node_dir(self, i: int) -> Path:
        return self.data / f"n{i}"

    def addrs(self) -> dict[int, tuple[str, int]]:
        return {i: (node_ip(i), AMQP_PORT) for i in self.nodes + self.spares}

    # -- membership ------------------------------------------------------------------------------
    def ctl(self, i: int, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """brokerctl on node ``i``'s admin socket."""
        return sh(str(self.ctl_exe), "--socket", str(self.node_dir(i) / "admin.sock"), *args,
                  check=False, timeout=timeout)

    def join_new(self) -> int:
        """Configures the next spare node to join the cluster (``join = true``, a node certificate
        of its own, every current member in its ``peers``), starts it, and returns its id."""
        k = self.spares.pop(0)
        text, first = self.template, 1
        text = text.replace(f'"{node_ip(first)}:{AMQP_PORT}"', f'"{node_ip(k)}:{AMQP_PORT}"')
        text = re.sub(rf'^listen = "{re.escape(node_ip(first))}:{LINK_PORT}"$',
                      f'listen = "{node_ip(k)}:{LINK_PORT}"', text, flags=re.M)
        text = re.sub(r"^node_id = \d+$", f"node_id = {k}\njoin = true", text, flags=re.M)
        text = text.replace(f"/n{first}/", f"/n{k}/").replace(f'/n{first}"', f'/n{k}"')
        text = text.replace(f"nodes/n{first}.", f"nodes/n{k}.")
        # Its own Prometheus endpoint (node 1's port is node 1's): none, as a copied template's
        # would refuse to start on a taken port.
        text = re.sub(r"^\[metrics\]\n(?:[^\[\n].*\n)*", "", text, flags=re.M)
        peers = "".join(f'[[cluster.peers]]\nid = {i}\nname = "n{i}"\naddr = "{node_ip(i)}:{LINK_PORT}"\n\n'
                        for i in self.nodes + [k])
        text = re.sub(r"(\[\[cluster\.peers\]\]\n(?:[^\[\n].*\n|\n)*)+", peers, text)
        d = self.node_dir(k)
        d.mkdir(mode=0o700)
        (d / "warren.toml").write_text(text)
        sh(str(self.ctl_exe), "ca", "issue", "--dir", str(self.tls), "--name", f"n{k}", "--node",
           "--host", node_ip(k), "--out", str(self.tls / "nodes"))
        # It serves clients only once it is a member: its admin socket says it runs.
        self.start(k, wait=False)
        deadline = time.monotonic() + 60
        while not (d / "admin.sock").exists():
            if self.procs[k].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {k} did not start (status {self.procs[k].poll()})")
            time.sleep(0.1)
        return k

    def wait_serving(self, i: int, timeout: float = 30) -> None:
        wait_port(node_ip(i), AMQP_PORT, timeout, self.procs[i])

    def addr_of(self, i: int) -> str:
        """Node ``i``'s node-link address."""
        return f"{node_ip(i)}:{LINK_PORT}"

    def retire(self, i: int) -> None:
        """A node removed from the cluster: killed, its data wiped, forgotten by this object."""
        self.note(f"retire node {i}")
        proc = self.procs.pop(i)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        self.nodes.remove(i)
        shutil.rmtree(self.node_dir(i), ignore_errors=True)

    # -- processes -------------------------------------------------------------------------------
    def start(self, i: int, wait: bool = True) -> None:
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info,openraft=warn")
        if self.hold_unsynced:
            env["WARREN_TEST_HOLD_UNSYNCED_WRITES"] = "1"
        with open(self.log, "ab") as out:
            out.write(f"=== {time.monotonic():.3f} node {i} start\n".encode())
            out.flush()
            self.procs[i] = subprocess.Popen(
                [str(self.exe), "--config", str(self.node_dir(i) / "warren.toml")],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
        if wait:
            wait_port(node_ip(i), AMQP_PORT, 60, self.procs[i])

    def running(self, i: int) -> bool:
        return i in self.procs and self.procs[i].poll() is None

    def note(self, text: str) -> None:
        with open(self.log, "ab") as out:
            out.write(f"=== {time.monotonic():.3f} {text}\n".encode())

    def kill(self, i: int) -> None:
        self.note(f"kill -9 node {i}")
        if i in self.paused:
            self.resume(i)
        self.procs[i].kill()
        self.procs[i].wait(timeout=30)

    def pause(self, i: int) -> None:
        self.note(f"SIGSTOP node {i}")
        self.procs[i].send_signal(signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i: int) -> None:
        self.note(f"SIGCONT node {i}")
        self.procs[i].send_signal(signal.SIGCONT)
        self.paused.discard(i)

    def freeze(self, i: int) -> None:
        self.note(f"fsfreeze node {i}")
        sh("fsfreeze", "-f", str(self.node_dir(i)))
        self.frozen.add(i)

    def thaw(self, i: int) -> None:
        self.note(f"thaw node {i}")
        sh("fsfreeze", "-u", str(self.node_dir(i)), check=False)
        self.frozen.discard(i)

    # -- network ---------------------------------------------------------------------------------
    def partition(self, cuts: list[tuple[int, int]]) -> None:
        """Drops every packet from node a to node b for each (a, b) in ``cuts``."""
        self.note(f"partition {cuts}")
        rules = "\n".join(f"add rule inet {NFT_TABLE} out ip saddr {node_ip(a)} ip daddr {node_ip(b)} drop"
                          for a, b in cuts)
        self._nft(rules)

    def isolate(self, i: int) -> None:
        others = [j for j in self.nodes if j != i]
        self.partition([(i, j) for j in others] + [(j, i) for j in others])

    def lossy(self, percent: int) -> None:
        """Drops ``percent`` % of the packets between nodes, at random (no netem on these kernels)."""
        self.note(f"lossy {percent}%")
        ips = "{ " + ", ".join(node_ip(i) for i in self.nodes) + " }"
        self._nft(f"add rule inet {NFT_TABLE} out ip saddr {ips} ip daddr {ips} "
                  f"numgen random mod 100 < {percent} drop")

    def _nft(self, rules: str) -> None:
        script = (f"add table inet {NFT_TABLE}\n"
                  f"add chain inet {NFT_TABLE} out {{ type filter hook output priority 0 ; }}\n"
                  f"{rules}\n")
        sh("nft", "-f", "-", input=script)

    def heal(self) -> None:
        self.note("heal")
        sh("nft", "delete", "table", "inet", NFT_TABLE, check=False)

    # -- observation -----------------------------------------------------------------------------
    def status(self, i: int) -> dict | None:
        if not self.running(i) or i in self.paused or i in self.frozen:
            return None
        try:
            cp = sh(str(self.ctl_exe), "--socket", str(self.node_dir(i) / "admin.sock"), "--format", "json",
                    "cluster", "status", check=False, timeout=5)
        except subprocess.TimeoutExpired:
            return None
        if cp.returncode != 0:
            return None
        return json.loads(cp.stdout)

    def shard_of(self, i: int, queue: str) -> str | None:
        """The shard group (``shard-N``) quorum queue ``queue`` of vhost / was placed in, as node
        ``i`` lists it (None until it knows the queue)."""
        cp = self.ctl(i, "--format", "json", "list_queues")
        if cp.returncode != 0:
            return None
        return next((q.get("shard") for q in json.loads(cp.stdout) if q["name"] == queue), None)

    def leader(self, group: str) -> int | None:
        """The leader of ``group`` as the node with the highest term knows it."""
        best = None
        for i in self.nodes:
            st = self.status(i)
            for g in (st or {}).get("groups", []):
                if g["group"] == group and g.get("leader") and (best is None or g["term"] > best[0]):
                    best = (g["term"], g["leader"])
        return best[1] if best else None

    def converged(self) -> dict | None:
        """Each group's applied index and message count, if every node reports the same."""
        seen = None
        for i in self.nodes:
            st = self.status(i)
            if st is None:
                return None
            view = {g["group"]: (g["applied_index"], g.get("messages")) for g in st["groups"]}
            if seen is not None and view != seen:
                return None
            seen = view
        return seen

    # -- tear-down -------------------------------------------------------------------------------
    def stop_all(self) -> dict[int, int]:
        """Undoes every fault, stops every node with SIGTERM; their exit statuses."""
        for i in list(self.frozen):
            self.thaw(i)
        for i in list(self.paused):
            self.resume(i)
        self.heal()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for i, proc in self.procs.items():
            try:
                codes[i] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.dump_stacks(i, "it did not stop on SIGTERM")
                proc.kill()
                codes[i] = proc.wait(timeout=10)
        for d in self.mounted:
            sh("umount", str(d), check=False, timeout=60)
        return codes

    def dump_stacks(self, i: int, why: str) -> None:
        """Every thread's stack of a node, into the log (when gdb is there and it runs)."""
        if shutil.which("gdb") is None or not self.running(i):
            return
        try:
            cp = sh("gdb", "-p", str(self.procs[i].pid), "-batch", "-ex", "thread apply all bt",
                    check=False, timeout=120)
            self.note(f"node {i}: {why}; its threads:\n{cp.stdout[-60000:]}")
        except subprocess.TimeoutExpired:
            pass

    def output(self, tail: int = 8000) -> str:
        return self.log.read_text(errors="replace")[-tail:]
