"""CI's layer of the cluster fault suite (HA.md §4, HA1): one 60-second run of each fault family
against three Warren processes in a network namespace of its own; every run must lose no confirmed
message, deliver nothing unexpected or corrupt, and pass the family's own checks (run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from nemesis import FAMILIES  # noqa: E402

SECONDS = int(os.environ.get("WARREN_FAULT_SECONDS", "60"))

# Network namespaces, nftables and loop mounts need root (CI runs as root; so does scripts/test.sh
# there). A developer's unprivileged run says so instead of failing.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fault suite needs root (ip netns, nft, mount)")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fault_family_loses_no_confirmed_message(family, tmp_path):
    seed = int(os.environ.get("WARREN_FAULT_SEED", time.time_ns() % 1_000_000))
    out = tmp_path / "out"
    cp = subprocess.run(
        [sys.executable, str(HERE / "run.py"), "--family", family, "--seconds", str(SECONDS),
         "--seed", str(seed), "--out", str(out), "--work", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=SECONDS + 480)
    result_file = out / "result.json"
    assert result_file.exists(), f"the run left no result (seed {seed}):\n{cp.stdout[-4000:]}"
    result = json.loads(result_file.read_text())
    print(cp.stdout.strip().splitlines()[-1])
    if not result["passed"]:
        log = (out / "nodes.log").read_text(errors="replace") if (out / "nodes.log").exists() else ""
        pytest.fail(f"{family} (seed {seed}): {result['failures']}\nevents: {result.get('events')}\n"
                    f"nodes' log (tail):\n{log[-6000:]}")
    assert result["acked"] > 0 and result["lost"] == [] and result["unexpected"] == []
