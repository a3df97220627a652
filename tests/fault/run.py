#!/usr/bin/env python3
"""One run of the cluster fault suite: three Warren nodes in a network namespace of their own,
confirming publishers and consumers through pika with a three-host failover list, one fault family
cycled for ``--seconds``, then the total-queue check (see README.md).

    run.py --family kill --seconds 60 [--seed N] [--out DIR] [--bin target/debug/warren]

Needs root (``ip netns``, nftables, loop mounts). Prints one JSON line with the result and writes it
to OUT/result.json with the run's operations (ops.jsonl) and the nodes' output (nodes.log). Exit
status 0 only when the run passed: nothing lost, unexpected or corrupt, no confirm to a cut-off
node during a partition (HA2), every replica at the same applied index afterwards (HA3), every
publisher confirming again within 10 s of the last heal (HA3), and every node stopping cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from nemesis import FAMILIES, LONG_FAMILIES  # noqa: E402

ELECTION_MAX = 2.0  # seconds: a cut-off leader's lease has lapsed by then
CONFIRM_JOIN = 15  # seconds a stopping publisher may take to finish its last publish


def outside(args: argparse.Namespace) -> int:
    """Makes the namespace, runs this script inside it, removes it (and anything left in it)."""
    name = f"wha-{os.getpid()}"
    # A SIGTERM (a CI timeout) still removes the namespace and whatever runs in it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        cmd = ["ip", "netns", "exec", name, sys.executable, __file__, "--inside", *sys.argv[1:]]
        return subprocess.run(cmd, timeout=args.seconds + 600).returncode
    finally:
        pids = subprocess.run(["ip", "netns", "pids", name], stdout=subprocess.PIPE, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], check=False)


def gaps(times: list[float], start: float, end: float) -> float:
    """The longest time without a confirm between ``start`` and ``end``."""
    points = [start] + sorted(t for t in times if start <= t <= end) + [end]
    return max(b - a for a, b in zip(points, points[1:]))


def inside(args: argparse.Namespace) -> int:
    from netns_cluster import NetnsCluster
    from nemesis import Nemesis
    from workload import (QUEUE, Consumer, Endpoints, Publisher, Recorder, Watchdog, check, drain, probe)
    import pika

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="warren-fault-", dir=args.work))
    rng = random.Random(args.seed)
    cluster = NetnsCluster(work, Path(args.bin).resolve(), loop_mounts=args.family == "fsfreeze",
                           hold_unsynced=args.family == "powerloss",
                           spares=min(200, max(4, args.seconds // 8)) if args.family == "members" else 0)
    result: dict = {"family": args.family, "seconds": args.seconds, "seed": args.seed, "failures": []}
    failures = result["failures"]
    group = None
    rec = Recorder(out / "ops.jsonl")
    try:
        cluster.configure()
        for i in cluster.nodes:
            cluster.start(i, wait=False)
        ends = Endpoints(cluster.tls, cluster.addrs())
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = pika.BlockingConnection(ends.params([1]))
                conn.channel().queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
                conn.close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        # The shard its declaration placed it in (one node 1 leads, if it leads one).
        while group is None:
            assert time.monotonic() < deadline, "node 1 does not list the queue's shard"
            group = cluster.shard_of(1, QUEUE)
            time.sleep(0.1 if group is None else 0)
        while cluster.leader(group) is None:
            assert time.monotonic() < deadline, f"{group} has no leader"
            time.sleep(0.2)

        pub_stop, con_stop = threading.Event(), threading.Event()
        pubs = [Publisher(f"p{i}", i, ends, rec, pub_stop) for i in cluster.nodes]
        cons = [Consumer(f"c{i}", i, ends, rec, con_stop) for i in cluster.nodes[1:]]
        for t in pubs + cons + [Watchdog(pubs, pub_stop)]:
            t.start()
        t0 = time.monotonic()
        end = t0 + args.seconds
        time.sleep(5)
        nemesis = Nemesis(cluster, args.family, rng, lambda: cluster.leader(group), group)
        nemesis.run(end - 5)
        healed = time.monotonic()
        for i in cluster.nodes:
            if not cluster.running(i):
                cluster.start(i, wait=False)
        cluster.heal()
        time.sleep(max(0.0, end - time.monotonic()))
        pub_stop.set()
        for p in pubs:
            p.join(timeout=CONFIRM_JOIN)
        stopped = time.monotonic()

        # HA3: every publisher confirms again within 10 s of the last fault's end.
        for p in pubs:
            after = [t for t in p.acks if t >= healed]
            if not after or after[0] - healed > 10:
                failures.append(f"{p.name} did not confirm within 10 s of the heal")
        result["longest_confirm_gap_s"] = round(max(gaps(p.acks, t0 + 5, stopped) for p in pubs), 2)
        result["longest_gap_any_publisher_s"] = round(gaps(sum((p.acks for p in pubs), []), t0 + 5, stopped), 2)
        result["events"] = nemesis.events
        # HA4/HA5: a failed node stops the cluster's confirms only until a new leader is elected
        # and the publishers have moved (the bar is 5 s; 10 s here leaves room for a loaded CI box).
        if result["longest_gap_any_publisher_s"] > 10:
            failures.append(f"no publisher confirmed anything for {result['longest_gap_any_publisher_s']} s")

        wait_until = time.monotonic() + 60
        view = None
        while time.monotonic() < wait_until:
            view = cluster.converged()
            if view:
                break
            time.sleep(0.5)
        if not view:
            failures.append("the replicas did not reach the same applied index within 60 s")
            # What each node reports, to see which group lags where.
            result["statuses"] = {i: (cluster.status(i) or {}).get("groups") for i in cluster.nodes}
            for i in cluster.nodes:
                cluster.dump_stacks(i, "its replicas did not converge")
        result["converged"] = view
        # Every consumer is fed again once the faults are over (a subscription lost to a fault
        # would starve its consumer while the others take everything).
        starved = probe(ends, rec, rng.choice(cluster.nodes), cons)
        if starved:
            failures.append(f"consumers {starved} received none of the messages published after the faults")
        con_stop.set()
        for c in cons:
            c.join(timeout=15)

        ops = [json.loads(l) for l in (out / "ops.jsonl").read_text().splitlines()]
        acked = {op["id"] for op in ops if op["op"] == "ack"}
        received = {op["id"] for op in ops if op["op"] == "deliver"}
        drain(ends, rec, rng.choice(cluster.nodes), acked, received)
        rec.close()
        checked = check(out / "ops.jsonl")
        result.update(checked)
        for key in ("lost", "unexpected", "corrupt"):
            if checked[key]:
                failures.append(f"{len(checked[key])} {key}: {checked[key][:10]}")
        long_family_checks(out / "ops.jsonl", nemesis.events, result, failures)
        for e in nemesis.events:
            if e["what"].startswith("membership change failed"):
                failures.append(f"HA12: {e['what']}")
            # HA7: a frozen host's leadership has moved to another node within 10 s.
            if e["what"] == "frozen 10 s" and e["host"] in (e["node"], None):
                failures.append(f"HA7: node {e['node']}'s disk frozen 10 s and the queue's host is {e['host']}")
        violations = minority_confirms(out / "ops.jsonl", nemesis.events)
        result["minority_confirms"] = len(violations)
        if violations:
            failures.append(f"HA2: {len(violations)} confirms from a cut-off node: {violations[:5]}")
    except Exception as e:  # the harness or the cluster broke: a failed run, with the cause
        failures.append(f"run aborted: {e!r}")
    finally:
        codes = cluster.stop_all()
        result["exit_codes"] = codes
        bad = {i: c for i, c in codes.items() if c != 0}
        if bad:
            failures.append(f"nodes did not stop cleanly on SIGTERM: {bad}")
        try:
            (out / "nodes.log").write_text(cluster.log.read_text(errors="replace"))
        except OSError:
            pass
        if not args.keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    result["passed"] = not failures
    summary = {k: (len(v) if isinstance(v, list) and k in ("lost", "unexpected", "corrupt") else v)
               for k, v in result.items() if k not in ("events", "converged")}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(summary))
    return 0 if result["passed"] else 1



def long_family_checks(ops_path: Path, events: list[dict], result: dict, failures: list[str]) -> None:
    """HA6 and HA8: a paused follower must not slow the leader's confirms (p99 during the pause
    against the 20 s before, publishers on other nodes) or grow the leader's memory by more than
    64 MiB, and must catch up within 30 s of SIGCONT; a follower down 120 s within 60 s of its
    restart."""
    caught = [e for e in events if e["what"] == "caught-up"]
    if not caught:
        return
    result["catch_up_s"] = [e["seconds"] for e in caught]
    limit = 30 if result["family"] == "slowfollower" else 60
    for e in caught:
        if e["seconds"] is None or e["seconds"] > limit:
            failures.append(f"node {e['node']} did not catch up within {limit} s ({e['seconds']})")
    before = {e["node"]: e["rss_kib"] for e in events if e["what"] == "rss-before"}
    after = [e for e in events if e["what"] == "rss-after"]
    growth = [(e["rss_kib"] - before.get(e["node"], e["rss_kib"])) // 1024 for e in after
              if e["rss_kib"] is not None and before.get(e["node"]) is not None]
    if growth:
        result["leader_rss_growth_mib"] = growth
        if max(growth) > 64:
            failures.append(f"HA6: the leader's RSS grew {max(growth)} MiB during a follower's pause")
    pauses = [(e["t"], e["node"]) for e in events if e["what"] == "pause"]
    if not pauses:
        return
    starts = {}
    lat_before, lat_during = [], []
    for line in ops_path.read_text().splitlines():
        op = json.loads(line)
        if op["op"] == "ack":
            for t, node in pauses:
                if op["node"] == node:
                    continue
                if t - 20 <= op["start"] < t:
                    lat_before.append(op["t"] - op["start"])
                elif t <= op["start"] < t + 60:
                    lat_during.append(op["t"] - op["start"])
    if lat_before and lat_during:
        p99 = lambda xs: sorted(xs)[int(0.99 * (len(xs) - 1))]
        result["confirm_p99_ms_before_during"] = [round(1000 * p99(lat_before), 1),
                                                  round(1000 * p99(lat_during), 1)]


def minority_confirms(ops_path: Path, events: list[dict]) -> list[str]:
    """HA2: publishes through a node cut off from both peers, issued once its lease has lapsed and
    confirmed before the heal."""
    windows = []
    cut = None
    for e in events:
        if e["what"] == "isolate":
            cut = e
        elif e["what"] == "heal" and cut is not None:
            windows.append((cut["node"], cut["t"] + ELECTION_MAX, e["t"]))
            cut = None
    if not windows:
        return []
    bad = []
    for line in ops_path.read_text().splitlines():
        op = json.loads(line)
        if op["op"] != "ack":
            continue
        for node, start, heal in windows:
            if op["node"] == node and op["start"] >= start and op["t"] <= heal:
                bad.append(op["id"])
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=FAMILIES + LONG_FAMILIES)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", default=None, help="where results go (default: a new temporary directory)")
    ap.add_argument("--work", default=None, help="where the nodes' data goes (default: the system temp dir)")
    ap.add_argument("--bin", default=os.environ.get("WARREN_BIN", str(REPO / "target/debug/warren")))
    ap.add_argument("--keep", action="store_true", help="keep the nodes' data directories")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.family in LONG_FAMILIES and args.seconds < 180:
        ap.error(f"--family {args.family} needs --seconds 180 or more (one cycle is over 2 minutes)")
    if args.seconds < 30:
        ap.error("--seconds must be at least 30 (warm-up, one fault cycle, heal)")
    if "--seed" not in sys.argv:
        sys.argv += ["--seed", str(args.seed)]
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix=f"warren-fault-{args.family}-")
        sys.argv += ["--out", args.out]
    return inside(args) if args.inside else outside(args)


if __name__ == "__main__":
    sys.exit(main())
