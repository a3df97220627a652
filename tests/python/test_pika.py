"""AMQP 0-9-1 conformance through pika's BlockingConnection.

Every expectation here is what RabbitMQ does (the suite is validated with
WARREN_TEST_TARGET=rabbitmq); reply texts are compared exactly.
"""

from __future__ import annotations

import datetime
import random
import time
from decimal import Decimal

import pika
import pika.exceptions
import pytest

from conftest import DELIVERY_TIMEOUT, TARGET, amqp_reply_text, wait_until


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------

@pytest.fixture
def conn(broker):
    c = broker.pika_connection()
    yield c
    if c.is_open:
        try:
            c.close()
        except Exception:
            pass


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def conn2(broker):
    c = broker.pika_connection()
    yield c
    if c.is_open:
        try:
            c.close()
        except Exception:
            pass


def declare_queue(ch, name, **kw):
    return ch.queue_declare(name, **kw).method.queue


def get_all(ch, queue, auto_ack=True, limit=1000):
    """basic.get until get-empty; returns the list of (method, properties, body)."""
    out = []
    for _ in range(limit):
        m, p, b = ch.basic_get(queue, auto_ack=auto_ack)
        if m is None:
            return out
        out.append((m, p, b))
    raise AssertionError(f"more than {limit} messages in {queue}")


def bodies(ch, queue):
    return [b for _, _, b in get_all(ch, queue)]


class Collector:
    """basic.consume into a list, with bounded waits."""

    def __init__(self, ch, queue, auto_ack=False, **kw):
        self.ch = ch
        self.msgs = []
        self.tag = ch.basic_consume(queue, self._on, auto_ack=auto_ack, **kw)

    def _on(self, ch, method, props, body):
        self.msgs.append((method, props, body))

    def wait_for(self, n, timeout=DELIVERY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while len(self.msgs) < n and time.monotonic() < deadline:
            self.ch.connection.process_data_events(time_limit=0.05)
        assert len(self.msgs) >= n, f"expected {n} deliveries, got {len(self.msgs)} after {timeout}s"
        return self.msgs

    def settle(self, seconds=0.3):
        """Process events for a while (to see that nothing more arrives)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.ch.connection.process_data_events(time_limit=0.05)
        return self.msgs


def expect_channel_error(code, text=None):
    return _ChannelErrorCheck(code, text)


class _ChannelErrorCheck:
    def __init__(self, code, text):
        self.code, self.text = code, text
        self._raises = pytest.raises(pika.exceptions.ChannelClosedByBroker)

    def __enter__(self):
        self.info = self._raises.__enter__()
        return self.info

    def __exit__(self, *exc):
        r = self._raises.__exit__(*exc)
        e = self.info.value
        assert e.reply_code == self.code, f"reply code {e.reply_code} ({e.reply_text!r}), expected {self.code}"
        if self.text is not None:
            assert e.reply_text == amqp_reply_text(self.text)
        return r


def body_of(size, seed=0):
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------

HEADERS = {
    "str": "héllo wörld",
    "empty_str": "",
    "int": 42,
    "neg": -7,
    "zero": 0,
    "int32_max": 2**31 - 1,
    "big": 2**40,
    "big_neg": -(2**50),
    "true": True,
    "false": False,
    "bytes": b"\x00\x01\xfe\xffraw",
    "decimal": Decimal("3.14"),
    "none": None,
    "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "array": [1, "two", b"three", True, [4, [5, "six"]], {"k": "v"}, None],
    "empty_array": [],
    "nested": {"a": {"b": {"c": [1, 2, {"d": "e"}], "flag": False}}, "empty": {}},
}


def full_properties(**over):
    props = dict(
        content_type="application/x-warren-test",
        content_encoding="identity",
        headers=HEADERS,
        delivery_mode=2,
        priority=7,
        correlation_id="corr-123",
        reply_to="reply.queue",
        expiration="600000",
        message_id="msg-\u00e9-1",
        timestamp=1_700_000_123,
        type="test.event",
        user_id="admin",
        app_id="warren-conformance",
    )
    props.update(over)
    return pika.BasicProperties(**props)


PROPERTY_NAMES = ["content_type", "content_encoding", "headers", "delivery_mode", "priority",
                  "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
                  "user_id", "app_id"]


def assert_same_properties(got, sent):
    for attr in PROPERTY_NAMES:
        assert getattr(got, attr) == getattr(sent, attr), attr


def test_roundtrip_keeps_every_property_consume(ch, name):
    ex, q = name("ex"), name("q")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    declare_queue(ch, q, exclusive=True)
    ch.queue_bind(q, ex, routing_key="rk.1")
    sent = full_properties()
    body = b"\x00hello\xffworld\r\n" * 3
    ch.basic_publish(ex, "rk.1", body, properties=sent)
    c = Collector(ch, q)
    method, props, got = c.wait_for(1)[0]
    assert got == body
    assert_same_properties(props, sent)
    assert method.exchange == ex
    assert method.routing_key == "rk.1"
    assert method.redelivered is False
    assert method.consumer_tag == c.tag
    assert method.delivery_tag == 1
    ch.basic_ack(method.delivery_tag)


def test_roundtrip_keeps_every_property_get(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    sent = full_properties(priority=0, delivery_mode=1, headers={"x": [{"y": b"z"}]})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"payload", properties=sent)
    ch.basic_publish("", q, b"second")
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"payload"
    assert_same_properties(props, sent)
    assert method.exchange == ""
    assert method.routing_key == q
    assert method.message_count == 1
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"second"
    # no properties were sent: none come back
    for attr in PROPERTY_NAMES:
        assert getattr(props, attr) is None, attr
    assert method.message_count == 0


def test_bodies_of_every_size_byte_for_byte(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    frame_max = conn._impl.params.frame_max
    chunk = frame_max - 8  # body payload per frame
    sizes = [0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk, 2 * chunk + 1, 300 * 1024, 1024 * 1024 + 3]
    payloads = [body_of(s, seed=s) for s in sizes]
    ch.confirm_delivery()
    for p in payloads:
        ch.basic_publish("", q, p, properties=pika.BasicProperties(message_id=str(len(p))))
    # half through basic.get, half through basic.consume
    got = []
    for _ in range(4):
        m, props, b = ch.basic_get(q, auto_ack=True)
        assert m is not None
        got.append((props.message_id, b))
    c = Collector(ch, q, auto_ack=True)
    for _, props, b in c.wait_for(len(sizes) - 4):
        got.append((props.message_id, b))
    assert [mid for mid, _ in got] == [str(s) for s in sizes]
    for (mid, b), p in zip(got, payloads):
        assert len(b) == len(p), mid
        assert b == p, f"body of {mid} bytes differs"


def test_large_body_with_headers_and_small_frame_max(broker, name):
    # A client-chosen small frame_max forces many body frames.
    c = broker.pika_connection(frame_max=4096)
    try:
        assert c._impl.params.frame_max == 4096
        ch = c.channel()
        q = declare_queue(ch, name(), exclusive=True)
        big = body_of(300 * 1024, seed=7)
        props = pika.BasicProperties(headers={"k": "v" * 1000}, content_type="application/octet-stream")
        ch.confirm_delivery()
        ch.basic_publish("", q, big, properties=props)
        m, p, b = ch.basic_get(q, auto_ack=True)
        assert b == big
        assert p.headers == {"k": "v" * 1000}
    finally:
        c.close()


def test_server_named_queue(ch):
    r = ch.queue_declare("", exclusive=True)
    q = r.method.queue
    assert q.startswith("amq.gen-"), q
    assert r.method.message_count == 0 and r.method.consumer_count == 0
    ch.confirm_delivery()
    ch.basic_publish("", q, b"to server-named")
    m, _, b = ch.basic_get(q, auto_ack=True)
    assert b == b"to server-named"
    # A second server-named queue gets a different name.
    assert ch.queue_declare("", exclusive=True).method.queue != q


def test_queue_declare_ok_counts(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    ch2 = conn.channel()
    ch2.basic_qos(prefetch_count=1)
    c = Collector(ch2, q)
    c.wait_for(1)  # prefetch 1: one delivered and unacked, two ready

    def counts():
        ok = ch.queue_declare(q, passive=True).method
        return (ok.queue, ok.message_count, ok.consumer_count)
    wait_until(lambda: counts() == (q, 2, 1), what="queue.declare-ok with 2 messages and 1 consumer")


# --------------------------------------------------------------------------
# exchanges and routing
# --------------------------------------------------------------------------

def test_default_exchange_routes_by_queue_name(ch, name):
    q1 = declare_queue(ch, name(), exclusive=True)
    q2 = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q1, b"one")
    ch.basic_publish("", q2, b"two")
    ch.basic_publish("", name("nobody"), b"dropped")
    assert bodies(ch, q1) == [b"one"]
    assert bodies(ch, q2) == [b"two"]


def test_binding_to_default_exchange_refused(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    with expect_channel_error(403, "ACCESS_REFUSED - operation not permitted on the default exchange"):
        ch.queue_bind(q, "", routing_key="x")


def test_direct_exchange(ch, name):
    ex = name("direct")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    qa, qb, qab = (declare_queue(ch, name(s), exclusive=True) for s in "a b ab".split())
    ch.queue_bind(qa, ex, "a")
    ch.queue_bind(qb, ex, "b")
    ch.queue_bind(qab, ex, "a")
    ch.queue_bind(qab, ex, "b")
    ch.queue_bind(qab, ex, "b")  # duplicate binding is a no-op
    ch.confirm_delivery()
    for rk in ["a", "b", "c", "", "A"]:
        ch.basic_publish(ex, rk, rk.encode() or b"<empty>")
    assert bodies(ch, qa) == [b"a"]
    assert bodies(ch, qb) == [b"b"]
    assert bodies(ch, qab) == [b"a", b"b"]  # once each despite the duplicate binding
    ch.queue_unbind(qab, ex, "a")
    ch.basic_publish(ex, "a", b"a2")
    assert bodies(ch, qab) == []
    assert bodies(ch, qa) == [b"a2"]


def test_fanout_exchange_ignores_routing_key(ch, name):
    ex = name("fanout")
    ch.exchange_declare(ex, "fanout", auto_delete=True)
    qs = [declare_queue(ch, name(), exclusive=True) for _ in range(3)]
    for q in qs:
        ch.queue_bind(q, ex, routing_key=name("ignored"))
    ch.confirm_delivery()
    ch.basic_publish(ex, "anything", b"f1")
    ch.basic_publish(ex, "", b"f2")
    for q in qs:
        assert bodies(ch, q) == [b"f1", b"f2"]


TOPIC_KEYS = ["", "a", "b", "a.b", "a.c", "b.b", "a.b.c", "a..c", ".b", "a.", ".", "x.a.b", "c.a.b.c",
              "a.b.b.c", "a.x.y.c", "alpha.beta"]

TOPIC_CASES = {
    "#": set(TOPIC_KEYS),
    "#.#": set(TOPIC_KEYS),
    "a.#": {"a", "a.b", "a.c", "a.b.c", "a..c", "a.", "a.b.b.c", "a.x.y.c"},
    "#.c": {"a.c", "a.b.c", "a..c", "c.a.b.c", "a.b.b.c", "a.x.y.c"},
    "a.#.c": {"a.c", "a.b.c", "a..c", "a.b.b.c", "a.x.y.c"},
    "*.b": {"a.b", "b.b", ".b"},
    "a.*": {"a.b", "a.c", "a."},
    "*": {"a", "b"},
    "*.*": {"a.b", "a.c", "b.b", ".b", "a.", ".", "alpha.beta"},
    "a.*.c": {"a.b.c", "a..c"},
    "*.#": set(TOPIC_KEYS) - {""},
    "#.b.#": {"b", "a.b", "b.b", "a.b.c", ".b", "x.a.b", "c.a.b.c", "a.b.b.c"},
    "a.b": {"a.b"},
    "": {""},
    "alpha.beta": {"alpha.beta"},
}


@pytest.mark.parametrize("exchange_kind", ["own", "amq.topic"])
def test_topic_exchange_patterns(ch, name, exchange_kind):
    if exchange_kind == "own":
        ex = name("topic")
        ch.exchange_declare(ex, "topic", auto_delete=True)
    else:
        ex = "amq.topic"
    prefix = name("k")  # keeps amq.topic traffic of other tests apart
    queues = {}
    for pattern in TOPIC_CASES:
        q = declare_queue(ch, name(), exclusive=True)
        bk = pattern if exchange_kind == "own" else f"{prefix}.{pattern}" if pattern else prefix
        ch.queue_bind(q, ex, routing_key=bk)
        queues[pattern] = q
    ch.confirm_delivery()
    for key in TOPIC_KEYS:
        rk = key if exchange_kind == "own" else f"{prefix}.{key}" if key else prefix
        ch.basic_publish(ex, rk, key.encode())
    failures = []
    for pattern, want in TOPIC_CASES.items():
        if exchange_kind != "own" and pattern in ("#", "#.#", "*.#", "#.b.#", "#.c", "*", "*.*", "*.b"):
            continue  # with a prefix these patterns mean something else; covered by "own"
        got = bodies(ch, queues[pattern])
        got_keys = [b.decode() for b in got]
        want_ordered = [k for k in TOPIC_KEYS if k in want]
        if got_keys != want_ordered:
            failures.append(f"pattern {pattern!r}: got {got_keys}, expected {want_ordered}")
    assert not failures, "\n".join(failures)


def test_topic_binding_matches_once(ch, name):
    ex = name("topic")
    ch.exchange_declare(ex, "topic", auto_delete=True)
    q = declare_queue(ch, name(), exclusive=True)
    for bk in ["a.*", "#", "a.b", "*.b"]:
        ch.queue_bind(q, ex, routing_key=bk)
    ch.confirm_delivery()
    ch.basic_publish(ex, "a.b", b"once")
    assert bodies(ch, q) == [b"once"]


HEADER_MESSAGES = [
    ("ab", {"a": 1, "b": "x"}),
    ("abc", {"a": 1, "b": "x", "c": True}),
    ("a", {"a": 1}),
    ("b", {"b": "x"}),
    ("a_wrong", {"a": 2, "b": "x"}),
    ("c", {"c": True}),
    ("none", None),
    ("empty", {}),
]


@pytest.mark.parametrize("exchange_kind", ["own", "amq.headers", "amq.match"])
def test_headers_exchange(ch, name, exchange_kind):
    if exchange_kind == "own":
        ex = name("headers")
        ch.exchange_declare(ex, "headers", auto_delete=True)
    else:
        ex = exchange_kind
    tag = name("tag")  # every binding also requires this, so that parallel users of amq.* don't interfere
    q_all = declare_queue(ch, name("all"), exclusive=True)
    q_any = declare_queue(ch, name("any"), exclusive=True)
    q_default = declare_queue(ch, name("default"), exclusive=True)
    q_only_tag = declare_queue(ch, name("only"), exclusive=True)
    ch.queue_bind(q_all, ex, arguments={"x-match": "all", "a": 1, "b": "x", "tag": tag})
    ch.queue_bind(q_default, ex, arguments={"a": 1, "b": "x", "tag": tag})  # x-match defaults to all
    ch.queue_bind(q_only_tag, ex, arguments={"x-match": "all", "tag": tag})
    ch.queue_bind(q_any, ex, arguments={"x-match": "any", "a": 1, "b": "x"})
    ch.confirm_delivery()
    for label, headers in HEADER_MESSAGES:
        h = None if headers is None else dict(headers, tag=tag)
        if label in ("none", "empty"):
            h = headers
        ch.basic_publish(ex, "ignored.routing.key", label.encode(), properties=pika.BasicProperties(headers=h))
    assert bodies(ch, q_all) == [b"ab", b"abc"]
    assert bodies(ch, q_default) == [b"ab", b"abc"]
    assert bodies(ch, q_only_tag) == [b"ab", b"abc", b"a", b"b", b"a_wrong", b"c"]
    # x-match any (on amq.headers/amq.match other tests' messages may arrive: filter to ours)
    ours = {label.encode() for label, _ in HEADER_MESSAGES}
    assert [b for b in bodies(ch, q_any) if b in ours] == [b"ab", b"abc", b"a", b"b", b"a_wrong"]


def test_builtin_exchanges_exist(ch):
    for ex, kind in [("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
                     ("amq.headers", "headers"), ("amq.match", "headers")]:
        ch.exchange_declare(ex, kind, passive=True)


def test_builtin_exchange_redeclare(conn, ch):
    # amq.* exchanges that exist may be redeclared when equivalent (queues may not)
    ch.exchange_declare("amq.direct", "direct", durable=True)
    with expect_channel_error(406, "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange 'amq.direct' "
                                   "in vhost '/': received 'false' but current is 'true'"):
        ch.exchange_declare("amq.direct", "direct", durable=False)


def test_system_exchanges_cannot_be_deleted(conn):
    default = "ACCESS_REFUSED - operation not permitted on the default exchange"
    with expect_channel_error(403, default):
        conn.channel().exchange_declare("", "direct", passive=True)
    with expect_channel_error(403, default):
        conn.channel().exchange_declare("", "direct")
    with expect_channel_error(403, default):
        conn.channel().exchange_delete("")
    with expect_channel_error(403, "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' "
                                   "not allowed"):
        conn.channel().exchange_delete("amq.direct")
    conn.channel().exchange_declare("amq.direct", "direct", passive=True)  # still there


def test_builtin_direct_and_fanout_route(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.queue_bind(q, "amq.direct", routing_key=q)
    ch.queue_bind(q, "amq.fanout")
    ch.confirm_delivery()
    ch.basic_publish("amq.direct", q, b"via amq.direct")
    ch.basic_publish("amq.direct", name("other"), b"not for us")
    got = bodies(ch, q)
    # amq.fanout may carry other tests' messages only if they bound to it; this
    # test publishes nothing to it, so only amq.direct traffic is expected.
    assert got == [b"via amq.direct"]
    ch.queue_unbind(q, "amq.fanout")
    ch.basic_publish("amq.fanout", "", b"after unbind")
    assert bodies(ch, q) == []


def test_publish_to_missing_exchange(ch, name):
    ex = name("missing")
    ch.confirm_delivery()
    with expect_channel_error(404, f"NOT_FOUND - no exchange '{ex}' in vhost '/'"):
        ch.basic_publish(ex, "rk", b"x")


def test_exchange_redeclare_different_type(ch, name):
    ex = name()
    ch.exchange_declare(ex, "direct", auto_delete=True)
    ch.exchange_declare(ex, "direct", auto_delete=True)  # equivalent: fine
    with expect_channel_error(406, f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{ex}' "
                                   f"in vhost '/': received 'fanout' but current is 'direct'"):
        ch.exchange_declare(ex, "fanout", auto_delete=True)


def test_exchange_passive_declare_missing(ch, name):
    ex = name()
    with expect_channel_error(404, f"NOT_FOUND - no exchange '{ex}' in vhost '/'"):
        ch.exchange_declare(ex, "direct", passive=True)


def test_exchange_declare_reserved_prefix(ch):
    with expect_channel_error(403, "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'"):
        ch.exchange_declare("amq.foo", "direct")


def test_exchange_delete_if_unused(conn, ch, name):
    ex = name()
    ch.exchange_declare(ex, "fanout")
    q = declare_queue(ch, name(), exclusive=True)
    ch.queue_bind(q, ex)
    with expect_channel_error(406, f"PRECONDITION_FAILED - exchange '{ex}' in vhost '/' in use"):
        ch.exchange_delete(ex, if_unused=True)
    ch = conn.channel()
    ch.queue_unbind(q, ex)
    ch.exchange_delete(ex, if_unused=True)
    with expect_channel_error(404, f"NOT_FOUND - no exchange '{ex}' in vhost '/'"):
        ch.exchange_declare(ex, "fanout", passive=True)
    # deleting a missing exchange is not an error
    ch = conn.channel()
    ch.exchange_delete(name("never-existed"))


def test_exchange_delete_removes_bindings(ch, name):
    ex = name()
    ch.exchange_declare(ex, "fanout")
    q = declare_queue(ch, name(), exclusive=True)
    ch.queue_bind(q, ex)
    ch.exchange_delete(ex)
    ch.exchange_declare(ex, "fanout")
    ch.confirm_delivery()
    ch.basic_publish(ex, "", b"x")
    assert bodies(ch, q) == []
    ch.exchange_delete(ex)


def test_exchange_to_exchange_bindings(ch, name):
    src, mid, dst = name("src"), name("mid"), name("dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(mid, "direct")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(destination=mid, source=src, routing_key="a.*")
    ch.exchange_bind(destination=dst, source=mid, routing_key="a.x")
    q_mid = declare_queue(ch, name("qmid"), exclusive=True)
    q_dst = declare_queue(ch, name("qdst"), exclusive=True)
    ch.queue_bind(q_mid, mid, routing_key="a.y")
    ch.queue_bind(q_dst, dst)
    # a cycle must not duplicate or loop
    ch.exchange_bind(destination=src, source=dst, routing_key="a.x")
    ch.confirm_delivery()
    ch.basic_publish(src, "a.x", b"ax")
    ch.basic_publish(src, "a.y", b"ay")
    ch.basic_publish(src, "b.x", b"bx")
    assert bodies(ch, q_dst) == [b"ax"]
    assert bodies(ch, q_mid) == [b"ay"]
    ch.exchange_unbind(destination=mid, source=src, routing_key="a.*")
    ch.basic_publish(src, "a.x", b"ax2")
    assert bodies(ch, q_dst) == []
    ch.basic_publish(mid, "a.x", b"direct to mid")
    assert bodies(ch, q_dst) == [b"direct to mid"]
    ch.exchange_unbind(destination=src, source=dst, routing_key="a.x")
    for ex in (src, mid, dst):
        ch.exchange_delete(ex)


def test_auto_delete_exchange_deleted_with_last_binding(conn, ch, name):
    ex, ex2 = name("ad"), name("ad2")
    ch.exchange_declare(ex, "fanout", auto_delete=True)
    ch.exchange_declare(ex2, "fanout", auto_delete=True)
    q = declare_queue(ch, name(), exclusive=True)
    ch.exchange_declare(ex, "fanout", passive=True)  # no bindings yet: still there
    ch.queue_bind(q, ex)
    ch.exchange_bind(destination=ex, source=ex2)  # ex is only a destination here
    ch.queue_unbind(q, ex)
    with expect_channel_error(404, f"NOT_FOUND - no exchange '{ex}' in vhost '/'"):
        ch.exchange_declare(ex, "fanout", passive=True)


def test_exchange_bind_missing_source(ch, name):
    dst = name("dst")
    missing = name("missing")
    ch.exchange_declare(dst, "fanout", auto_delete=True)
    with expect_channel_error(404, f"NOT_FOUND - no exchange '{missing}' in vhost '/'"):
        ch.exchange_bind(destination=dst, source=missing, routing_key="")


def test_queue_bind_missing_queue_or_exchange(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    missing_q, missing_ex = name("noq"), name("noex")
    with expect_channel_error(404, f"NOT_FOUND - no queue '{missing_q}' in vhost '/'"):
        ch.queue_bind(missing_q, "amq.direct", routing_key="x")
    ch = conn.channel()
    with expect_channel_error(404, f"NOT_FOUND - no exchange '{missing_ex}' in vhost '/'"):
        ch.queue_bind(q, missing_ex, routing_key="x")


def test_alternate_exchange(ch, name):
    ex, ae = name("ex"), name("ae")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.exchange_declare(ex, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    q, q_ae = declare_queue(ch, name(), exclusive=True), declare_queue(ch, name("ae"), exclusive=True)
    ch.queue_bind(q, ex, "known")
    ch.queue_bind(q_ae, ae)
    ch.confirm_delivery()
    ch.basic_publish(ex, "known", b"routed")
    ch.basic_publish(ex, "unknown", b"to ae", mandatory=True)  # routed via AE: no basic.return
    assert bodies(ch, q) == [b"routed"]
    assert bodies(ch, q_ae) == [b"to ae"]


# --------------------------------------------------------------------------
# basic.get, acks, nacks, rejects, qos, recover
# --------------------------------------------------------------------------

def test_basic_get_and_get_empty(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    assert ch.basic_get(q) == (None, None, None)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"g%d" % i)
    counts = []
    for i in range(3):
        m, _, b = ch.basic_get(q, auto_ack=True)
        assert b == b"g%d" % i
        assert m.redelivered is False
        counts.append(m.message_count)
    assert counts == [2, 1, 0]
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)


def test_basic_get_missing_queue(ch, name):
    q = name()
    with expect_channel_error(404, f"NOT_FOUND - no queue '{q}' in vhost '/'"):
        ch.basic_get(q)


def test_manual_ack_and_delivery_tags(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]
    ch.basic_ack(2)
    ch.basic_ack(1)
    ch.basic_ack(3)
    ch.close()
    ch = conn.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_ack_multiple(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    c = Collector(ch, q)
    msgs = c.wait_for(5)
    ch.basic_ack(msgs[3][0].delivery_tag, multiple=True)  # acks 1..4
    ch.close()
    ch = conn.channel()
    left = get_all(ch, q)
    assert [b for _, _, b in left] == [b"4"]
    assert left[0][0].redelivered is True


def test_ack_zero_multiple_acks_everything(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_ack(0, multiple=True)
    ch.close()
    ch = conn.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_reject_and_nack_requeue_keep_order_and_set_redelivered(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", q, b"m%d" % i)
    got = [ch.basic_get(q) for _ in range(3)]
    assert [b for _, _, b in got] == [b"m0", b"m1", b"m2"]
    ch.basic_reject(got[0][0].delivery_tag, requeue=True)
    ch.basic_nack(got[2][0].delivery_tag, multiple=False, requeue=True)
    ch.basic_nack(got[1][0].delivery_tag, multiple=False, requeue=True)
    again = get_all(ch, q)
    assert [b for _, _, b in again] == [b"m0", b"m1", b"m2", b"m3"]
    assert [m.redelivered for m, _, _ in again] == [True, True, True, False]


def test_nack_multiple_and_discard(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(6):
        ch.basic_publish("", q, b"m%d" % i)
    got = [ch.basic_get(q) for _ in range(6)]
    ch.basic_nack(got[2][0].delivery_tag, multiple=True, requeue=True)   # m0..m2 back
    ch.basic_reject(got[3][0].delivery_tag, requeue=False)               # m3 dropped
    ch.basic_nack(got[5][0].delivery_tag, multiple=True, requeue=False)  # m4, m5 dropped
    again = get_all(ch, q)
    assert [b for _, _, b in again] == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for m, _, _ in again)


def test_consume_reject_requeue_redelivers_in_order(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"c%d" % i)
    c = Collector(ch, q)
    first = c.wait_for(3)[:3]
    ch.basic_cancel(c.tag)
    for m, _, _ in first:
        ch.basic_reject(m.delivery_tag, requeue=True)
    c2 = Collector(ch, q)
    second = c2.wait_for(3)
    assert [b for _, _, b in second] == [b"c0", b"c1", b"c2"]
    assert all(m.redelivered for m, _, _ in second)
    assert [m.delivery_tag for m, _, _ in second] == [4, 5, 6]


def test_unknown_delivery_tag(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    with expect_channel_error(406, "PRECONDITION_FAILED - unknown delivery tag 7"):
        ch.basic_ack(7)
        ch.queue_declare(q, passive=True)  # sync point: the error arrives asynchronously


def test_double_ack_is_unknown_delivery_tag(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    m, _, _ = ch.basic_get(q)
    ch.basic_ack(m.delivery_tag)
    with expect_channel_error(406, f"PRECONDITION_FAILED - unknown delivery tag {m.delivery_tag}"):
        ch.basic_ack(m.delivery_tag)
        ch.queue_declare(q, passive=True)


def test_ack_of_auto_acked_delivery_is_unknown(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    m, _, _ = ch.basic_get(q, auto_ack=True)
    with expect_channel_error(406, f"PRECONDITION_FAILED - unknown delivery tag {m.delivery_tag}"):
        ch.basic_reject(m.delivery_tag, requeue=True)
        ch.queue_declare(q, passive=True)


def test_qos_prefetch_count(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.basic_qos(prefetch_count=2)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"p%d" % i)
    c = Collector(ch, q)
    c.wait_for(2)
    assert len(c.settle(0.5)) == 2, "more than prefetch_count unacked deliveries"
    ch.basic_ack(c.msgs[0][0].delivery_tag)
    c.wait_for(3)
    assert len(c.settle(0.3)) == 3
    ch.basic_ack(c.msgs[2][0].delivery_tag, multiple=True)
    c.wait_for(5)
    assert [b for _, _, b in c.msgs] == [b"p0", b"p1", b"p2", b"p3", b"p4"]
    assert len(c.settle(0.2)) == 5


def test_qos_prefetch_is_per_consumer(ch, name):
    q1 = declare_queue(ch, name(), exclusive=True)
    q2 = declare_queue(ch, name(), exclusive=True)
    ch.basic_qos(prefetch_count=1)  # global=False: a limit for each new consumer
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q1, b"a%d" % i)
        ch.basic_publish("", q2, b"b%d" % i)
    c1, c2 = Collector(ch, q1), Collector(ch, q2)
    c1.wait_for(1)
    c2.wait_for(1)
    c1.settle(0.4)
    assert len(c1.msgs) == 1 and len(c2.msgs) == 1


def test_qos_does_not_limit_auto_ack_or_get(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.basic_qos(prefetch_count=1)
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", q, b"%d" % i)
    assert ch.basic_get(q)[2] == b"0"
    assert ch.basic_get(q)[2] == b"1"  # basic.get ignores prefetch
    c = Collector(ch, q, auto_ack=True)
    assert len(c.wait_for(2)) == 2


def test_basic_recover_requeue(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"r%d" % i)
    c = Collector(ch, q)
    c.wait_for(3)
    assert all(m.redelivered is False for m, _, _ in c.msgs)
    ch.basic_recover(requeue=True)
    c.wait_for(6)
    again = c.msgs[3:]
    assert [b for _, _, b in again] == [b"r0", b"r1", b"r2"]
    assert all(m.redelivered for m, _, _ in again)
    ch.basic_ack(0, multiple=True)


def test_unacked_requeued_when_channel_closes(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish("", q, b"u%d" % i)
    ch2 = conn.channel()
    c = Collector(ch2, q)
    c.wait_for(4)
    ch2.basic_ack(c.msgs[1][0].delivery_tag)  # u1 is settled
    ch2.close()
    left = get_all(ch, q)
    assert [b for _, _, b in left] == [b"u0", b"u2", b"u3"]
    assert all(m.redelivered for m, _, _ in left)


def test_unacked_requeued_when_connection_closes(broker, ch, name):
    q = declare_queue(ch, name())
    try:
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", q, b"v%d" % i)
        other = broker.pika_connection()
        och = other.channel()
        got = [och.basic_get(q) for _ in range(2)]
        assert [b for _, _, b in got] == [b"v0", b"v1"]
        other.close()
        # the queue process requeues asynchronously after the connection is gone
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while ch.queue_declare(q, passive=True).method.message_count < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        left = get_all(ch, q)
        assert [b for _, _, b in left] == [b"v0", b"v1", b"v2"]
        assert [m.redelivered for m, _, _ in left] == [True, True, False]
    finally:
        ch.queue_delete(q)


# --------------------------------------------------------------------------
# publisher confirms and mandatory
# --------------------------------------------------------------------------

def test_confirm_mandatory_unroutable(ch, name):
    ch.confirm_delivery()
    rk = name("nowhere")
    with pytest.raises(pika.exceptions.UnroutableError) as ei:
        ch.basic_publish("", rk, b"lost", mandatory=True,
                         properties=pika.BasicProperties(message_id="m1", headers={"h": 1}))
    returned = ei.value.messages
    assert len(returned) == 1
    r = returned[0]
    assert r.method.reply_code == 312
    assert r.method.reply_text == "NO_ROUTE"
    assert r.method.exchange == ""
    assert r.method.routing_key == rk
    assert r.body == b"lost"
    assert r.properties.message_id == "m1"
    assert r.properties.headers == {"h": 1}
    # channel still usable; routable mandatory publishes and unroutable
    # non-mandatory ones are simply confirmed
    q = declare_queue(ch, name(), exclusive=True)
    ch.basic_publish("", q, b"ok", mandatory=True)
    ch.basic_publish("", rk, b"dropped silently")
    assert bodies(ch, q) == [b"ok"]


def test_mandatory_unroutable_via_exchange(ch, name):
    ex = name("direct")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    q = declare_queue(ch, name(), exclusive=True)
    ch.queue_bind(q, ex, "yes")
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as ei:
        ch.basic_publish(ex, "no", b"x", mandatory=True)
    m = ei.value.messages[0].method
    assert (m.reply_code, m.reply_text, m.exchange, m.routing_key) == (312, "NO_ROUTE", ex, "no")


def test_mandatory_return_without_confirms(ch, name):
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, body)))
    rk = name("nowhere")
    ch.basic_publish("", rk, b"bounce", mandatory=True)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while not returned and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.05)
    assert returned, "no basic.return"
    method, body = returned[0]
    assert (method.reply_code, method.reply_text, method.routing_key, body) == (312, "NO_ROUTE", rk, b"bounce")


def test_many_confirms(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", q, b"%d" % i)
    assert ch.queue_declare(q, passive=True).method.message_count == 200
    assert ch.queue_purge(q).method.message_count == 200


def test_user_id_must_match(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"ok", properties=pika.BasicProperties(user_id="admin"))
    with expect_channel_error(406, "PRECONDITION_FAILED - user_id property set to 'mallory' "
                                   "but authenticated user was 'admin'"):
        ch.basic_publish("", q, b"bad", properties=pika.BasicProperties(user_id="mallory"))


# --------------------------------------------------------------------------
# queue declaration rules and errors
# --------------------------------------------------------------------------

def test_passive_declare_missing_queue(ch, name):
    q = name()
    with expect_channel_error(404, f"NOT_FOUND - no queue '{q}' in vhost '/'"):
        ch.queue_declare(q, passive=True)


def test_redeclare_with_different_durable(conn, ch, name):
    q = name()
    declare_queue(ch, q, durable=False)
    try:
        declare_queue(ch, q, durable=False)  # equivalent: fine
        with expect_channel_error(406, f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' "
                                       f"in vhost '/': received 'true' but current is 'false'"):
            ch.queue_declare(q, durable=True)
    finally:
        conn.channel().queue_delete(q)


def test_redeclare_with_different_auto_delete(conn, ch, name):
    q = name()
    declare_queue(ch, q, durable=False, auto_delete=False)
    try:
        with expect_channel_error(406, f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{q}' "
                                       f"in vhost '/': received 'true' but current is 'false'"):
            ch.queue_declare(q, auto_delete=True)
    finally:
        conn.channel().queue_delete(q)


def test_redeclare_passive_ignores_other_fields(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ok = ch.queue_declare(q, passive=True, durable=True, auto_delete=True)
    assert ok.method.queue == q


def test_long_reply_text_is_truncated(ch):
    q = "long-" + "x" * 240
    expected = f"NOT_FOUND - no queue '{q}' in vhost '/'"[:252] + "..."
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
        ch.queue_declare(q, passive=True)
    assert (ei.value.reply_code, ei.value.reply_text) == (404, expected)
    assert len(ei.value.reply_text) == 255


def test_declare_reserved_prefix(ch):
    with expect_channel_error(403, "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'"):
        ch.queue_declare("amq.foo")


def test_redeclare_server_named_queue_is_refused(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    # non-passive declares of any amq.* name are refused, even the queue's own name
    with expect_channel_error(403, f"ACCESS_REFUSED - queue name '{q}' contains reserved prefix 'amq.*'"):
        ch.queue_declare(q, exclusive=True)


def test_redeclare_server_named_queue_passively(ch):
    q = ch.queue_declare("", exclusive=True).method.queue
    assert ch.queue_declare(q, passive=True).method.queue == q


def test_exclusive_queues_are_never_durable(conn, ch, name):
    # RabbitMQ declares exclusive queues as transient whatever durable says,
    # so redeclaring with the other durable value is equivalent.
    q = declare_queue(ch, name(), exclusive=True, durable=True)
    declare_queue(ch, q, exclusive=True, durable=False)
    declare_queue(ch, q, exclusive=True, durable=True)


def test_exclusive_property_must_match(conn, ch, conn2, name):
    q = declare_queue(ch, name("ex"), exclusive=True)
    locked = (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. "
              "It could be originally declared on another connection or the exclusive property value "
              "does not match that of the original declaration.")
    with expect_channel_error(405, locked):
        ch.queue_declare(q, exclusive=False)  # same connection, exclusive differs
    shared = name("shared")
    c2 = conn2.channel()
    declare_queue(c2, shared)
    try:
        c = conn.channel()
        with expect_channel_error(405, locked.replace(q, shared)):
            c.queue_declare(shared, exclusive=True)
    finally:
        conn2.channel().queue_delete(shared)


def test_exclusive_queue_locked_for_other_connections(conn, ch, conn2, name):
    q = declare_queue(ch, name(), exclusive=True)
    locked = (f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. "
              "It could be originally declared on another connection or the exclusive property value "
              "does not match that of the original declaration.")
    ops = [
        ("declare", lambda c: c.queue_declare(q, exclusive=True)),
        ("declare non-exclusive", lambda c: c.queue_declare(q)),
        ("passive", lambda c: c.queue_declare(q, passive=True)),
        ("consume", lambda c: c.basic_consume(q, lambda *a: None)),
        ("get", lambda c: c.basic_get(q)),
        ("purge", lambda c: c.queue_purge(q)),
        ("delete", lambda c: c.queue_delete(q)),
    ]
    for what, op in ops:
        other = conn2.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as ei:
            op(other)
        assert (ei.value.reply_code, ei.value.reply_text) == (405, amqp_reply_text(locked)), what
    # the owner still uses it
    ch.confirm_delivery()
    ch.basic_publish("", q, b"mine")
    assert bodies(ch, q) == [b"mine"]
    # anyone may publish to it
    other = conn2.channel()
    other.confirm_delivery()
    other.basic_publish("", q, b"from other")
    assert bodies(ch, q) == [b"from other"]


def test_exclusive_queue_deleted_with_its_connection(broker, conn2, name):
    c = broker.pika_connection()
    q = declare_queue(c.channel(), name(), exclusive=True)
    c.close()
    missing = f"NOT_FOUND - no queue '{q}' in vhost '/'"
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        other = conn2.channel()
        try:
            other.queue_declare(q, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert (e.reply_code, e.reply_text) == (404, missing)
            break
        assert time.monotonic() < deadline, "exclusive queue survived its connection"
        other.close()
        time.sleep(0.05)


def test_auto_delete_queue_deleted_after_last_consumer(conn, ch, name):
    q = declare_queue(ch, name(), auto_delete=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        c = conn.channel()
        try:
            c.queue_declare(q, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert (e.reply_code, e.reply_text) == (404, f"NOT_FOUND - no queue '{q}' in vhost '/'")
            break
        assert time.monotonic() < deadline, "auto-delete queue survived its last consumer"
        c.close()
        time.sleep(0.05)


def test_queue_delete_if_empty_and_if_unused(conn, ch, name):
    q = declare_queue(ch, name())
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    ch.basic_publish("", q, b"y")
    with expect_channel_error(406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"):
        ch.queue_delete(q, if_empty=True)
    ch = conn.channel()
    tag = ch.basic_consume(q, lambda *a: None, auto_ack=False)
    other = conn.channel()
    with expect_channel_error(406, f"PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"):
        other.queue_delete(q, if_unused=True)
    ch.basic_cancel(tag)
    ch.close()  # requeues the two deliveries
    ch = conn.channel()
    ok = ch.queue_delete(q, if_unused=True)
    assert ok.method.message_count == 2
    with expect_channel_error(404, f"NOT_FOUND - no queue '{q}' in vhost '/'"):
        ch.queue_declare(q, passive=True)
    # deleting a missing queue is fine and reports zero messages
    ch = conn.channel()
    assert ch.queue_delete(name("never-existed")).method.message_count == 0


def test_queue_purge(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(7):
        ch.basic_publish("", q, b"%d" % i)
    assert ch.queue_purge(q).method.message_count == 7
    assert ch.queue_purge(q).method.message_count == 0
    assert ch.basic_get(q) == (None, None, None)


def test_purge_keeps_unacked(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    ch2 = conn.channel()
    m, _, _ = ch2.basic_get(q)  # one unacked
    assert ch.queue_purge(q).method.message_count == 2
    ch2.close()  # the unacked one comes back
    left = get_all(ch, q)
    assert [b for _, _, b in left] == [b"0"]


def test_queue_purge_missing(ch, name):
    q = name()
    with expect_channel_error(404, f"NOT_FOUND - no queue '{q}' in vhost '/'"):
        ch.queue_purge(q)


# --------------------------------------------------------------------------
# consumers
# --------------------------------------------------------------------------

def test_consumer_cancel(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.confirm_delivery()
    c = Collector(ch, q, auto_ack=True)
    ch.basic_publish("", q, b"before")
    c.wait_for(1)
    ch.basic_cancel(c.tag)
    ch.basic_publish("", q, b"after")
    assert len(c.settle(0.3)) == 1
    assert bodies(ch, q) == [b"after"]
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0


def test_consumer_tags(ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    t1 = ch.basic_consume(q, lambda *a: None, consumer_tag="my-tag")
    assert t1 == "my-tag"
    with pytest.raises(pika.exceptions.DuplicateConsumerTag):
        ch.basic_consume(q, lambda *a: None, consumer_tag="my-tag")  # rejected by pika itself


def test_server_generated_consumer_tag(ch, name):
    # pika always sends its own tag; a raw empty tag is tested in test_pyamqp.py
    q = declare_queue(ch, name(), exclusive=True)
    tag = ch.basic_consume(q, lambda *a: None)
    assert tag
    ch.basic_cancel(tag)


def test_consume_missing_queue(ch, name):
    q = name()
    with expect_channel_error(404, f"NOT_FOUND - no queue '{q}' in vhost '/'"):
        ch.basic_consume(q, lambda *a: None)


def test_round_robin_between_consumers(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch_a, ch_b = conn.channel(), conn.channel()
    ca, cb = Collector(ch_a, q, auto_ack=True), Collector(ch_b, q, auto_ack=True)
    ch.confirm_delivery()
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while len(ca.msgs) + len(cb.msgs) < 10 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert len(ca.msgs) + len(cb.msgs) == 10
    assert len(ca.msgs) == 5 and len(cb.msgs) == 5
    assert sorted([int(b) for _, _, b in ca.msgs + cb.msgs]) == list(range(10))


def test_exclusive_consumer_refuses_others(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    in_use = f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"
    other = conn.channel()
    with expect_channel_error(403, in_use):
        other.basic_consume(q, lambda *a: None)
    other = conn.channel()
    with expect_channel_error(403, in_use):
        other.basic_consume(q, lambda *a: None, exclusive=True)


def test_exclusive_consumer_refused_when_queue_has_consumers(conn, ch, name):
    q = declare_queue(ch, name(), exclusive=True)
    ch.basic_consume(q, lambda *a: None)
    other = conn.channel()
    with expect_channel_error(403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"):
        other.basic_consume(q, lambda *a: None, exclusive=True)


def test_consumer_cancelled_by_broker_when_queue_deleted(conn, ch, name):
    q = declare_queue(ch, name())
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while not cancelled and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert cancelled == [tag]
    assert ch.is_open


def test_channel_error_leaves_connection_usable(conn, ch, name):
    with expect_channel_error(404):
        ch.queue_declare(name(), passive=True)
    assert conn.is_open
    ch2 = conn.channel()
    q = declare_queue(ch2, name(), exclusive=True)
    ch2.confirm_delivery()
    ch2.basic_publish("", q, b"still works")
    assert bodies(ch2, q) == [b"still works"]


def test_many_channels(conn, name):
    chans = [conn.channel() for _ in range(20)]
    nums = {c.channel_number for c in chans}
    assert len(nums) == 20
    q = declare_queue(chans[0], name(), exclusive=True)
    for i, c in enumerate(chans):
        c.confirm_delivery()
        c.basic_publish("", q, b"%d" % i)
    assert sorted(int(b) for b in bodies(chans[-1], q)) == list(range(20))
    for c in chans:
        c.close()


@pytest.mark.skipif(TARGET == "rabbitmq", reason="Warren's publisher identity; RabbitMQ has none")
def test_publisher_identity_cannot_be_forged_and_is_given_on_request(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    forged = pika.BasicProperties(headers={"x-warren-publisher": "nova-compute", "k": 1})
    ch.basic_publish("", q, b"x", properties=forged)
    ch.basic_publish("", q, b"y", properties=forged)
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"x"
    assert props.headers == {"k": 1}, "the forged header is gone; nobody asked for the real one"
    got = []
    tag = ch.basic_consume(q, lambda c, m, p, b: got.append(p), auto_ack=True,
                           arguments={"x-warren-publisher": True})
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while not got and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=0.1)
    ch.basic_cancel(tag)
    assert got and got[0].headers == {"k": 1, "x-warren-publisher": "admin"}
