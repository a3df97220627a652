"""Conformance through kombu (pyamqp transport, TLS, SASL EXTERNAL)."""

from __future__ import annotations

import socket
import time
import uuid

import amqp.exceptions
import pytest
from kombu import Consumer, Exchange, Producer, Queue, binding

from conftest import DELIVERY_TIMEOUT


@pytest.fixture
def conn(broker):
    c = broker.kombu_connection()
    c.connect()
    yield c
    c.release()


def uid(prefix):
    return f"kombu.{prefix}.{uuid.uuid4().hex[:10]}"


def drain(conn, received, n, timeout=DELIVERY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while len(received) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"expected {n} messages, got {len(received)} after {timeout}s"
        try:
            conn.drain_events(timeout=min(left, 0.5))
        except socket.timeout:
            pass
    return received


def test_connect_with_external_auth(conn):
    assert conn.connected
    assert conn.transport.driver_name == "py-amqp"
    assert conn.connection.mechanisms == [b"EXTERNAL"]
    # kombu uses py-amqp underneath: TLS, server certificate verified for "localhost"
    assert ("DNS", "localhost") in conn.connection.transport.sock.getpeercert()["subjectAltName"]


def test_producer_consumer_json_roundtrip(conn):
    ex = Exchange(uid("direct"), type="direct", durable=False, auto_delete=True)
    q = Queue(uid("q"), exchange=ex, routing_key="jobs", durable=False, auto_delete=True)
    received = []

    def on_message(body, message):
        received.append((body, message))
        message.ack()

    with Consumer(conn, queues=[q], callbacks=[on_message], accept=["json"]):
        producer = Producer(conn.channel(), exchange=ex, serializer="json")
        producer.publish({"n": 1, "text": "héllo", "list": [1, 2, {"x": None}]}, routing_key="jobs",
                         headers={"h-int": 5, "h-str": "v", "h-nested": {"a": [True, False]}},
                         priority=4, correlation_id="kombu-corr", reply_to="kombu-reply",
                         expiration=60, retry=False)
        producer.publish({"n": 2}, routing_key="other-key", retry=False)  # not bound: dropped
        producer.publish({"n": 3}, routing_key="jobs", retry=False)
        drain(conn, received, 2)
    (body, message), (body3, _) = received
    assert body == {"n": 1, "text": "héllo", "list": [1, 2, {"x": None}]}
    assert body3 == {"n": 3}
    assert message.content_type == "application/json"
    assert message.content_encoding == "utf-8"
    assert message.headers == {"h-int": 5, "h-str": "v", "h-nested": {"a": [True, False]}}
    assert message.properties["priority"] == 4
    assert message.properties["correlation_id"] == "kombu-corr"
    assert message.properties["reply_to"] == "kombu-reply"
    assert message.properties["expiration"] == "60000"  # kombu sends seconds * 1000
    assert message.delivery_info["routing_key"] == "jobs"
    assert message.delivery_info["exchange"] == ex.name
    assert message.delivery_info["redelivered"] is False


def test_raw_bytes_and_compression(conn):
    q = Queue(uid("raw"), exclusive=True)
    payload = bytes(range(256)) * 1024  # 256 KiB, crosses frames
    received = []
    with Consumer(conn, queues=[q], callbacks=[lambda b, m: (received.append((b, m)), m.ack())],
                  accept=["application/data", "json"]):
        p = Producer(conn.channel())
        p.publish(payload, routing_key=q.name, content_type="application/data", content_encoding="binary",
                  retry=False)
        p.publish({"zipped": "x" * 10000}, routing_key=q.name, serializer="json", compression="zlib",
                  retry=False)
        drain(conn, received, 2)
    (raw, raw_msg), (zipped, zmsg) = received
    assert raw == payload
    assert raw_msg.content_type == "application/data"
    assert zipped == {"zipped": "x" * 10000}
    assert zmsg.headers["compression"] == "application/x-gzip"  # sent compressed, kombu decompressed it


def test_simple_queue_put_get(conn):
    name = uid("simple")
    sq = conn.SimpleQueue(name, serializer="json")
    try:
        assert sq.qsize() == 0
        with pytest.raises(sq.Empty):
            sq.get_nowait()
        for i in range(3):
            sq.put({"i": i})
        assert sq.qsize() == 3
        got = []
        for _ in range(3):
            m = sq.get(block=True, timeout=DELIVERY_TIMEOUT)
            got.append(m.payload["i"])
            m.ack()
        assert got == [0, 1, 2]
        with pytest.raises(sq.Empty):
            sq.get(block=True, timeout=0.3)
    finally:
        sq.close()
        Queue(name, channel=conn.channel()).delete()


def test_simple_queue_requeue(conn):
    name = uid("simple-requeue")
    sq = conn.SimpleQueue(name, serializer="json")
    try:
        sq.put("only")
        m = sq.get(timeout=DELIVERY_TIMEOUT)
        assert m.payload == "only" and not m.delivery_info["redelivered"]
        m.requeue()
        again = sq.get(timeout=DELIVERY_TIMEOUT)
        assert again.payload == "only" and again.delivery_info["redelivered"]
        again.ack()
        with pytest.raises(sq.Empty):
            sq.get(timeout=0.3)
    finally:
        sq.close()
        Queue(name, channel=conn.channel()).delete()


def test_drain_events_timeout(conn):
    q = Queue(uid("idle"), exclusive=True)
    with Consumer(conn, queues=[q], callbacks=[lambda b, m: m.ack()]):
        t0 = time.monotonic()
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.5)
        assert 0.4 < time.monotonic() - t0 < 3


def test_topic_exchange_routing(conn):
    ex = Exchange(uid("topic"), type="topic", durable=False, auto_delete=True)
    errors = Queue(uid("errors"), exchange=ex, routing_key="logs.*.error", exclusive=True)
    everything = Queue(uid("all"), exchange=ex, routing_key="logs.#", exclusive=True)
    multi = Queue(uid("multi"), exclusive=True,
                  bindings=[binding(ex, routing_key="logs.db.*"), binding(ex, routing_key="*.*.warning")])
    got = {errors.name: [], everything.name: [], multi.name: []}

    def collector(qname):
        return lambda body, message: (got[qname].append(body), message.ack())

    consumers = [Consumer(conn.channel(), queues=[q], callbacks=[collector(q.name)], accept=["json"])
                 for q in (errors, everything, multi)]
    for c in consumers:
        c.consume()
    try:
        p = Producer(conn.channel(), exchange=ex, serializer="json")
        keys = ["logs.web.error", "logs.db.error", "logs.db.info", "logs", "logs.web.warning",
                "other.web.error", "logs.web.error.extra"]
        for k in keys:
            p.publish(k, routing_key=k, retry=False)
        drain(conn, got[everything.name], 6)
        drain(conn, got[errors.name], 2)
        drain(conn, got[multi.name], 3)
        # let anything unexpected arrive
        try:
            conn.drain_events(timeout=0.3)
        except socket.timeout:
            pass
    finally:
        for c in consumers:
            c.cancel()
    assert got[errors.name] == ["logs.web.error", "logs.db.error"]
    assert got[everything.name] == ["logs.web.error", "logs.db.error", "logs.db.info", "logs",
                                    "logs.web.warning", "logs.web.error.extra"]
    assert got[multi.name] == ["logs.db.error", "logs.db.info", "logs.web.warning"]


def test_fanout_to_two_queues(conn):
    ex = Exchange(uid("fanout"), type="fanout", durable=False, auto_delete=True)
    q1 = Queue(uid("f1"), exchange=ex, exclusive=True)
    q2 = Queue(uid("f2"), exchange=ex, exclusive=True)
    r1, r2 = [], []
    with Consumer(conn, queues=[q1], callbacks=[lambda b, m: (r1.append(b), m.ack())], accept=["json"]), \
            Consumer(conn, queues=[q2], callbacks=[lambda b, m: (r2.append(b), m.ack())], accept=["json"]):
        Producer(conn.channel(), exchange=ex, serializer="json").publish("to all", routing_key="x", retry=False)
        drain(conn, r1, 1)
        drain(conn, r2, 1)
    assert r1 == r2 == ["to all"]


def test_prefetch_and_reject(conn):
    q = Queue(uid("prefetch"), exclusive=True)
    received = []
    consumer = Consumer(conn, queues=[q], callbacks=[lambda b, m: received.append((b, m))],
                        accept=["json"], prefetch_count=1)
    with consumer:
        p = Producer(conn.channel(), serializer="json")
        for i in range(3):
            p.publish(i, routing_key=q.name, retry=False)
        drain(conn, received, 1)
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.4)  # prefetch 1: nothing more until ack
        assert len(received) == 1
        received[0][1].reject(requeue=True)
        drain(conn, received, 2)
        body, msg = received[1]
        assert body == 0 and msg.delivery_info["redelivered"] is True
        msg.ack()
        drain(conn, received, 3)
        received[2][1].ack()
        drain(conn, received, 4)
        received[3][1].ack()
    assert [b for b, _ in received] == [0, 0, 1, 2]


def test_passive_declare_missing_queue_raises(conn):
    name = uid("missing")
    with pytest.raises(amqp.exceptions.NotFound) as ei:
        Queue(name, channel=conn.channel()).queue_declare(passive=True)
    assert ei.value.reply_code == 404
    assert ei.value.reply_text == f"NOT_FOUND - no queue '{name}' in vhost '/'"


def test_delivered_properties_are_exactly_those_sent(conn):
    """kombu's Message.properties and headers, compared whole against what kombu put on the wire
    (on RabbitMQ and on Warren alike): the broker adds nothing and drops nothing."""
    sent_headers = {"h-int": 5, "h-str": "v", "h-nested": {"a": [True, False]}, "x-trace": "t-1"}
    q = Queue(uid("exact"), exchange=Exchange(uid("exact-ex"), type="direct", auto_delete=True),
              routing_key="k", auto_delete=True)
    received = []
    with Consumer(conn, queues=[q], callbacks=[lambda body, m: (received.append(m), m.ack())],
                  accept=["json"]):
        producer = Producer(conn.channel(), exchange=q.exchange, serializer="json")
        producer.publish({"n": 1}, routing_key="k", headers=sent_headers, priority=3,
                         correlation_id="corr", reply_to="reply", message_id="m-1",
                         timestamp=1_700_000_000, type="kind", app_id="nova", retry=False)
        drain(conn, received, 1)
    m = received[0]
    assert m.headers == sent_headers
    assert {k: v for k, v in m.properties.items() if k != "application_headers"} == {
        "content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2, "priority": 3,
        "correlation_id": "corr", "reply_to": "reply", "message_id": "m-1",
        "timestamp": 1_700_000_000, "type": "kind", "app_id": "nova",
    }, m.properties


def test_mandatory_publish_to_nowhere_is_returned(conn):
    returned = []
    ch = conn.channel()
    p = Producer(ch, serializer="json", on_return=lambda exc, exchange, routing_key, message:
                 returned.append((exc.reply_code, exc.reply_text, routing_key)))
    p.publish("x", routing_key=uid("nowhere"), mandatory=True, retry=False)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while not returned and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.2)
        except socket.timeout:
            pass
    assert returned and returned[0][:2] == (312, "NO_ROUTE")
