"""Paging: a queue whose backlog passes its memory budget keeps only counters for the rest in memory
and reads the messages back from spill files, so a ``notifications.info`` queue that nobody consumes
can grow without growing the broker's RSS.

* ``test_unconsumed_backlog_does_not_grow_rss``: a broker with
  ``queue_memory_budget_bytes`` = 4 MiB takes 200,000 transient 1 KiB notifications (200 MB) into a
  queue nobody consumes. Its RSS stays under 80 MiB (it starts near 11 MiB; unbounded, the backlog
  alone would be over 250 MiB), brokerctl shows the messages paged out, and a consumer then receives
  every message, in order, intact, while RSS stays bounded; the spill files are gone at the end.
* ``test_paged_persistent_messages_survive_a_restart``: 100,000 persistent 1 KiB messages in a
  durable queue past its budget come back after a restart, all of them, in order, flagged
  redelivered, and recovering them does not take the broker's RSS past the same bound (the log is
  read back in batches and paged out again).

Warren only: the budget is Warren's configuration, and RSS is read from /proc for the broker process.
"""

from __future__ import annotations

import json
import time

import pika
import pytest

from conftest import TARGET
from test_durability import WarrenNode, node_config

pytestmark = pytest.mark.skipif(TARGET != "warren", reason="Warren's configuration and process")

BUDGET = 4 << 20
BACKLOG = 200_000
BODY = 1024
RSS_LIMIT_MIB = 80


def _config(data_dir, tls_dir, budget=BUDGET):
    return node_config(data_dir, tls_dir, queue_memory_budget_bytes=budget)


@pytest.fixture
def paging_node(tmp_path, broker):
    """A Warren broker with a 4 MiB queue memory budget (and the session broker's dev PKI)."""
    base = tmp_path / "node"
    base.mkdir()
    data = tmp_path / "data"
    node = WarrenNode(base, data_dir=data, config=_config(data, broker.tls_dir),
                      tls_base=broker.tls_dir.parent)
    try:
        yield node
    finally:
        node.kill()
        print(f"--- {node.log_path} ---\n{node.output()}")


def rss_mib(node: WarrenNode) -> float:
    with open(f"/proc/{node.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def queue_row(node: WarrenNode, name: str) -> dict:
    rows = json.loads(node.ctl("list_queues", "--format", "json"))
    return next(r for r in rows if r["name"] == name)


def body(i: int) -> bytes:
    head = f"{i:010d}|".encode()
    return head + bytes((i + k) % 251 for k in range(BODY - len(head)))


def wait_for_count(node: WarrenNode, name: str, count: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        row = queue_row(node, name)
        if row["messages"] >= count or time.monotonic() > deadline:
            return row
        time.sleep(0.2)


def consume_in_order(ch, queue: str, count: int, check_rss=None, persistent=False):
    """Consumes `count` messages with manual acks (prefetch 500), checking order and content."""
    ch.basic_qos(prefetch_count=500)
    state = {"next": 0, "redelivered": 0, "peak": 0.0}

    def on_message(channel, method, props, data):
        i = state["next"]
        assert data == body(i), f"message {i} differs (got {data[:11]!r})"
        if persistent:
            assert props.delivery_mode == 2
        state["redelivered"] += int(method.redelivered)
        state["next"] = i + 1
        if i % 100 == 99 or i + 1 == count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if check_rss and i % 10_000 == 0:
            state["peak"] = max(state["peak"], check_rss())
        if i + 1 == count:
            channel.stop_consuming()

    ch.basic_consume(queue, on_message)
    deadline = time.monotonic() + 300
    while state["next"] < count and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=1)
    if ch.consumer_tags:
        ch.stop_consuming()
    assert state["next"] == count, f"received {state['next']} of {count}"
    return state


def test_unconsumed_backlog_does_not_grow_rss(paging_node):
    node = paging_node
    node.start()
    b = node.broker()
    conn = b.pika_connection()
    try:
        ch = conn.channel()
        ch.queue_declare("notifications.info")
        start_rss = rss_mib(node)
        peak = start_rss
        for i in range(BACKLOG):
            ch.basic_publish("", "notifications.info", body(i))
            if i % 20_000 == 0:
                peak = max(peak, rss_mib(node))
        row = wait_for_count(node, "notifications.info", BACKLOG)
        peak = max(peak, rss_mib(node))
        assert row["messages"] == BACKLOG, row
        assert row["messages_paged_out"] > BACKLOG * 0.9, row
        spill = sum(f.stat().st_size for f in (node.data_dir / "spill").iterdir())
        assert spill > BACKLOG * BODY, f"the backlog is on disk ({spill} bytes of spill files)"
        print(f"RSS at start {start_rss:.1f} MiB, peak while filling {peak:.1f} MiB; "
              f"{row['messages_paged_out']} of {BACKLOG} paged, {spill >> 20} MiB of spill files")
        assert peak < RSS_LIMIT_MIB, f"RSS grew to {peak:.1f} MiB with a {BUDGET >> 20} MiB budget"

        state = consume_in_order(ch, "notifications.info", BACKLOG, check_rss=lambda: rss_mib(node))
        print(f"peak RSS while draining {state['peak']:.1f} MiB")
        assert state["peak"] < RSS_LIMIT_MIB
        row = queue_row(node, "notifications.info")
        assert (row["messages"], row["messages_paged_out"]) == (0, 0), row
        left = sum(f.stat().st_size for f in (node.data_dir / "spill").iterdir())
        assert left == 0, f"{left} bytes of spill files left after the drain"
    finally:
        if conn.is_open:
            conn.close()
    assert node.stop() == 0


def test_paged_persistent_messages_survive_a_restart(paging_node):
    node = paging_node
    count = 100_000
    node.config = _config(node.data_dir, node.tls_base / "tls", budget=1 << 20)
    node.start()
    conn = node.broker().pika_connection()
    ch = conn.channel()
    ch.queue_declare("paged.durable", durable=True)
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(count):
        # No confirms (pika's blocking channel would wait for each): SIGTERM flushes the log anyway.
        ch.basic_publish("", "paged.durable", body(i), props)
    row = wait_for_count(node, "paged.durable", count)
    assert row["messages"] == count and row["messages_paged_out"] > count * 0.8, row
    conn.close()
    assert node.stop() == 0

    node.start()
    row = wait_for_count(node, "paged.durable", count)
    assert row["messages"] == count, row
    after = rss_mib(node)
    print(f"RSS after recovering {count} persistent messages ({count * BODY >> 20} MiB): {after:.1f} MiB")
    assert after < RSS_LIMIT_MIB, "recovery reads the log back in batches and pages past the budget"
    conn = node.broker().pika_connection()
    try:
        state = consume_in_order(conn.channel(), "paged.durable", count, persistent=True)
        assert state["redelivered"] == count, "recovered messages are flagged redelivered"
    finally:
        conn.close()
    assert node.stop() == 0
