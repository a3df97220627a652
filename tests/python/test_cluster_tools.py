"""rabbitmqctl / rabbitmq-diagnostics on a Warren cluster (issue 15 point 1, `cluster_status` "with
the cluster when it exists"): every node lists the three members by the names the cluster knows
them by, a node that is down is a disk node but not a running one, and the tools name the node they
talk to the same way. Warren only (RabbitMQ's own clustering is compared in benches/quorum.sh)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cluster_processes import NODES, Cluster, wait
from conftest import TARGET

pytestmark = pytest.mark.skipif(TARGET != "warren", reason="a Warren cluster")


def tool(cluster: Cluster, tools: Path, name: str, i: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WARREN_ADMIN_SOCKET=str(cluster.data / f"n{i}" / "admin.sock"))
    return subprocess.run([str(tools / name), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_cluster_status_lists_the_members_by_their_names(tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    cluster = Cluster(tmp_path)
    for name in ("rabbitmqctl", "rabbitmq-diagnostics"):
        (tools / name).symlink_to(Path(cluster.exe).with_name("brokerctl"))
    cluster.configure()
    try:
        for i in range(1, NODES + 1):
            cluster.start(i)
        names = {i: cluster.name(i) for i in range(1, NODES + 1)}
        assert len(set(names.values())) == NODES, names

        def status(i: int) -> dict:
            cp = tool(cluster, tools, "rabbitmqctl", i, "cluster_status", "--formatter", "json")
            assert cp.returncode == 0, cp.stderr
            return json.loads(cp.stdout)

        def all_running() -> bool:
            return all(sorted(status(i)["running_nodes"]) == sorted(names.values())
                       for i in range(1, NODES + 1))

        wait(all_running, 30, "every node listing every member as running")
        for i in range(1, NODES + 1):
            s = status(i)
            assert sorted(s["disk_nodes"]) == sorted(names.values()), s
            cp = tool(cluster, tools, "rabbitmqctl", i, "cluster_status")
            assert cp.returncode == 0 and f"Cluster status of node {names[i]} ..." in cp.stdout, cp.stdout
            cp = tool(cluster, tools, "rabbitmq-diagnostics", i, "check_running")
            assert cp.returncode == 0, cp.stderr
            assert f"RabbitMQ on node {names[i]} is fully booted and running" in cp.stdout, cp.stdout

        cluster.kill(3)
        wait(lambda: sorted(status(1)["running_nodes"]) == sorted([names[1], names[2]]), 30,
             "node 3 no longer running")
        s = status(2)
        assert names[3] in s["disk_nodes"], s
        # The stopped node's own tools cannot reach it: RabbitMQ's "unavailable" exit code.
        cp = tool(cluster, tools, "rabbitmq-diagnostics", 3, "-q", "ping")
        assert cp.returncode == 69, (cp.returncode, cp.stdout, cp.stderr)
    finally:
        cluster.stop_all()
