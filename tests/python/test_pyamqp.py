"""AMQP 0-9-1 conformance through py-amqp (the transport under kombu and
oslo.messaging)."""

from __future__ import annotations

import socket
import time
import uuid
from decimal import Decimal

import amqp
import amqp.exceptions
import pytest

from conftest import DELIVERY_TIMEOUT, TARGET, amqp_reply_text


@pytest.fixture
def conn(broker):
    c = broker.amqp_connection(confirm_publish=True)
    yield c
    try:
        c.close()
    except Exception:
        c.collect()


@pytest.fixture
def ch(conn):
    return conn.channel()


def new_queue(ch, **kw):
    """Declare a uniquely named queue (server-named queues have their own test)."""
    kw.setdefault("exclusive", True)
    name = f"pyamqp.{uuid.uuid4().hex[:12]}"
    ok = ch.queue_declare(name, **kw)
    assert ok.queue == name
    return name


def get_all(ch, queue, no_ack=True, limit=1000):
    out = []
    for _ in range(limit):
        m = ch.basic_get(queue, no_ack=no_ack)
        if m is None:
            return out
        out.append(m)
    raise AssertionError("too many messages")


def drain_until(conn, predicate, timeout=DELIVERY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        left = deadline - time.monotonic()
        assert left > 0, f"timed out after {timeout}s"
        try:
            conn.drain_events(timeout=min(left, 0.5))
        except socket.timeout:
            pass


def check_error(excinfo, cls, code, text, method_sig=None):
    e = excinfo.value
    assert isinstance(e, cls), repr(e)
    assert e.reply_code == code
    assert e.reply_text == amqp_reply_text(text)
    if method_sig is not None:
        assert tuple(e.method_sig) == method_sig


# --------------------------------------------------------------------------
# connection
# --------------------------------------------------------------------------

def test_connection_start_advertises_external_and_capabilities(conn):
    assert conn.mechanisms == [b"EXTERNAL"]
    caps = conn.server_properties.get("capabilities", {})
    for cap in ["publisher_confirms", "exchange_exchange_bindings", "basic.nack", "consumer_cancel_notify",
                "connection.blocked", "consumer_priorities", "authentication_failure_close",
                "per_consumer_qos"]:
        assert caps.get(cap) is True, cap
    if TARGET == "warren":
        # Warren advertises only what it implements: no direct reply-to pseudo-queue (yet).
        assert "direct_reply_to" not in caps
    assert conn.version_major == 0 and conn.version_minor == 9


def test_negotiated_limits(conn):
    # RabbitMQ 3.x defaults: frame_max 131072, channel_max 2047, heartbeat 60.
    assert conn.frame_max == 131072
    assert conn.channel_max == 2047


# --------------------------------------------------------------------------
# publish / get / consume
# --------------------------------------------------------------------------

HEADERS = {
    "str": "héllo",
    "int": 7,
    "neg": -123456,
    "big": 2**40,
    "float": 2.5,
    "bool": True,
    "decimal": Decimal("-12.345"),
    "list": [1, "x", 2.25, False, {"in": ["list"]}],
    "table": {"nested": {"deeper": 1}},
    "none": None,
}


def test_publish_get_roundtrip(ch):
    q = new_queue(ch, exclusive=True)
    msg = amqp.Message(
        b"\x00binary\xff body",
        content_type="text/plain", content_encoding="utf-8",
        application_headers=HEADERS, delivery_mode=2, priority=3,
        correlation_id="c-1", reply_to="r", expiration="60000", message_id="m-1",
        timestamp=1_600_000_000, type="kind", user_id="admin", app_id="pyamqp-test")
    ch.basic_publish(msg, exchange="", routing_key=q)
    got = ch.basic_get(q, no_ack=False)
    assert got is not None
    assert got.body == b"\x00binary\xff body"
    # What was sent, and nothing else.
    assert got.properties == msg.properties
    assert got.delivery_info["routing_key"] == q
    assert got.delivery_info["exchange"] == ""
    assert got.delivery_info["redelivered"] is False
    assert got.delivery_info["message_count"] == 0
    ch.basic_ack(got.delivery_tag)
    assert ch.basic_get(q) is None


def full_message(body: bytes) -> amqp.Message:
    return amqp.Message(
        body, content_type="application/json", content_encoding="utf-8",
        application_headers=HEADERS, delivery_mode=2, priority=5, correlation_id="c-2",
        reply_to="reply-q", expiration="30000", message_id="m-2", timestamp=1_700_000_000,
        type="rpc", user_id="admin", app_id="nova")


def test_consumers_and_returns_get_exactly_the_properties_sent(conn, ch):
    """Compared whole, as client code that checks properties does: nothing added, nothing lost
    (on RabbitMQ and on Warren alike)."""
    q = new_queue(ch, exclusive=True)
    sent = full_message(b"consumed")
    ch.basic_publish(sent, routing_key=q)
    got = []
    tag = ch.basic_consume(q, callback=got.append, no_ack=True)
    drain_until(conn, lambda: got)
    ch.basic_cancel(tag)
    assert got[0].body == "consumed"  # py-amqp decodes a utf-8 body
    assert got[0].properties == sent.properties

    returned = []
    ch.events["basic_return"].add(lambda exc, exchange, routing_key, message: returned.append(message))
    ch.basic_publish(full_message(b"returned"), exchange="amq.direct", routing_key="nobody-home",
                     mandatory=True)
    drain_until(conn, lambda: returned)
    assert returned[0].body == "returned"
    assert returned[0].properties == full_message(b"").properties


def test_large_body(ch):
    q = new_queue(ch, exclusive=True)
    body = bytes(range(256)) * 1200  # 300 KiB, several frames
    ch.basic_publish(amqp.Message(body), routing_key=q)
    ch.basic_publish(amqp.Message(b""), routing_key=q)
    assert ch.basic_get(q, no_ack=True).body == body
    empty = ch.basic_get(q, no_ack=True).body
    assert len(empty) == 0  # py-amqp gives '' (str) for a message without body frames


def test_consume_drain_events_and_ack(conn, ch):
    q = new_queue(ch, exclusive=True, auto_delete=False)
    got = []
    tag = ch.basic_consume(q, callback=got.append)
    assert tag.startswith("amq.ctag-"), tag  # server-generated consumer tag
    for i in range(3):
        ch.basic_publish(amqp.Message(b"%d" % i), routing_key=q)
    drain_until(conn, lambda: len(got) == 3)
    assert [m.body for m in got] == [b"0", b"1", b"2"]
    assert all(m.delivery_info["consumer_tag"] == tag for m in got)
    assert [m.delivery_tag for m in got] == [1, 2, 3]
    ch.basic_ack(3, multiple=True)
    with pytest.raises(socket.timeout):
        conn.drain_events(timeout=0.3)
    ch.basic_cancel(tag)
    assert ch.queue_declare(q, passive=True).consumer_count == 0


def test_consumer_cancel_notification(conn, ch):
    q = new_queue(ch, auto_delete=False, exclusive=True)
    cancelled = []
    tag = ch.basic_consume(q, callback=lambda m: None, on_cancel=cancelled.append)
    conn.channel().queue_delete(q)
    drain_until(conn, lambda: cancelled)
    assert cancelled == [tag]


def test_confirm_publish_mandatory_unroutable_returns_312(conn, ch):
    returned = []
    ch.events["basic_return"].add(lambda exc, exchange, routing_key, message:
                                  returned.append((exc.reply_code, exc.reply_text, exchange, routing_key,
                                                   message.body)))
    ch.basic_publish(amqp.Message(b"nowhere"), exchange="", routing_key="no-such-queue-pyamqp",
                     mandatory=True)
    # basic.return comes before basic.ack, so it was handled while waiting for the confirm
    assert returned == [(312, "NO_ROUTE", "", "no-such-queue-pyamqp", b"nowhere")]


def test_confirm_publish_mandatory_unroutable_raises_without_handler(conn, ch):
    with pytest.raises(amqp.exceptions.ChannelError) as ei:
        ch.basic_publish(amqp.Message(b"nowhere"), exchange="amq.direct", routing_key="nobody-home",
                         mandatory=True)
    assert ei.value.reply_code == 312
    assert ei.value.reply_text == "NO_ROUTE"


def test_server_named_queue_and_counts(ch):
    ok = ch.queue_declare("", exclusive=True)
    assert ok.queue.startswith("amq.gen-")
    for i in range(4):
        ch.basic_publish(amqp.Message(b"x"), routing_key=ok.queue)
    ok2 = ch.queue_declare(ok.queue, passive=True)
    assert (ok2.message_count, ok2.consumer_count) == (4, 0)
    assert ch.queue_purge(ok.queue) == 4


def test_per_message_ttl_expires(ch):
    q = new_queue(ch, exclusive=True)
    ch.basic_publish(amqp.Message(b"short", expiration="1"), routing_key=q)
    ch.basic_publish(amqp.Message(b"long", expiration="60000"), routing_key=q)
    time.sleep(0.2)
    assert [m.body for m in get_all(ch, q)] == [b"long"]


def test_queue_ttl_and_dead_lettering(ch):
    dlq = new_queue(ch, exclusive=True)
    q = new_queue(ch, exclusive=True, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.basic_publish(amqp.Message(b"will die", application_headers={"keep": "me"}), routing_key=q)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    m = None
    while m is None and time.monotonic() < deadline:
        m = ch.basic_get(dlq, no_ack=True)
        if m is None:
            time.sleep(0.05)
    assert m is not None, "message was not dead-lettered"
    assert m.body == b"will die"
    assert m.delivery_info["routing_key"] == dlq
    h = m.headers
    assert h["keep"] == "me"
    death = h["x-death"][0]
    assert death["reason"] == "expired"
    assert death["queue"] == q
    assert death["count"] == 1
    assert death["exchange"] == ""
    assert death["routing-keys"] == [q]
    assert h["x-first-death-reason"] == "expired"
    assert h["x-first-death-queue"] == q
    assert h["x-first-death-exchange"] == ""


def test_reject_dead_letters(ch):
    dlx = "pyamqp-dlx-" + str(time.monotonic_ns())
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    dlq = new_queue(ch, exclusive=True)
    ch.queue_bind(dlq, dlx)
    q = new_queue(ch, exclusive=True, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish(amqp.Message(b"rejected"), routing_key=q)
    m = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    d = None
    while d is None and time.monotonic() < deadline:
        d = ch.basic_get(dlq, no_ack=True)
        if d is None:
            time.sleep(0.05)
    assert d is not None and d.body == b"rejected"
    assert d.headers["x-death"][0]["reason"] == "rejected"
    assert d.delivery_info["exchange"] == dlx
    assert d.delivery_info["routing_key"] == q


def test_max_length_drops_head(ch):
    q = new_queue(ch, exclusive=True, arguments={"x-max-length": 2})
    for i in range(5):
        ch.basic_publish(amqp.Message(b"%d" % i), routing_key=q)
    assert [m.body for m in get_all(ch, q)] == [b"3", b"4"]


def test_transactions(conn, ch):
    q = new_queue(conn.channel(), exclusive=True)
    tx = conn.channel()
    tx.tx_select()
    tx._basic_publish(amqp.Message(b"rolled back"), routing_key=q)
    tx.tx_rollback()
    tx._basic_publish(amqp.Message(b"committed"), routing_key=q)
    assert ch.basic_get(q, no_ack=True) is None  # not before commit
    tx.tx_commit()
    assert [m.body for m in get_all(ch, q)] == [b"committed"]
    with pytest.raises(amqp.exceptions.PreconditionFailed) as ei:
        tx.confirm_select()
    check_error(ei, amqp.exceptions.PreconditionFailed, 406,
                "PRECONDITION_FAILED - cannot switch from tx to confirm mode")


def test_tx_commit_without_select(conn):
    c = conn.channel()
    with pytest.raises(amqp.exceptions.PreconditionFailed) as ei:
        c.tx_commit()
    check_error(ei, amqp.exceptions.PreconditionFailed, 406, "PRECONDITION_FAILED - channel is not transactional",
                (90, 20))


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

def test_channel_errors_have_codes_texts_and_methods(conn):
    name = "pyamqp-missing-" + str(time.monotonic_ns())
    c = conn.channel()
    with pytest.raises(amqp.exceptions.NotFound) as ei:
        c.queue_declare(name, passive=True)
    check_error(ei, amqp.exceptions.NotFound, 404, f"NOT_FOUND - no queue '{name}' in vhost '/'", (50, 10))

    c = conn.channel()
    with pytest.raises(amqp.exceptions.NotFound) as ei:
        c.exchange_declare(name, "direct", passive=True)
    check_error(ei, amqp.exceptions.NotFound, 404, f"NOT_FOUND - no exchange '{name}' in vhost '/'", (40, 10))

    c = conn.channel()
    with pytest.raises(amqp.exceptions.AccessRefused) as ei:
        c.queue_declare("amq.pyamqp", auto_delete=False)
    check_error(ei, amqp.exceptions.AccessRefused, 403,
                "ACCESS_REFUSED - queue name 'amq.pyamqp' contains reserved prefix 'amq.*'", (50, 10))

    c = conn.channel()
    c.queue_declare(name, durable=False, auto_delete=False)
    with pytest.raises(amqp.exceptions.PreconditionFailed) as ei:
        c.queue_declare(name, durable=True, auto_delete=False)
    check_error(ei, amqp.exceptions.PreconditionFailed, 406,
                f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost '/': "
                f"received 'true' but current is 'false'", (50, 10))

    c = conn.channel()
    c.basic_ack(7)
    with pytest.raises(amqp.exceptions.PreconditionFailed) as ei:
        c.queue_declare(name, passive=True)  # the error arrives asynchronously
    check_error(ei, amqp.exceptions.PreconditionFailed, 406, "PRECONDITION_FAILED - unknown delivery tag 7",
                (60, 80))

    # the connection survived all of that
    assert conn.connected
    assert conn.channel().queue_declare(name, passive=True).queue == name
    assert conn.channel().queue_delete(name) == 0


def test_inequivalent_queue_argument(conn):
    c = conn.channel()
    q = "pyamqp-args-" + str(time.monotonic_ns())
    c.queue_declare(q, exclusive=True, arguments={"x-max-length": 10})
    with pytest.raises(amqp.exceptions.PreconditionFailed) as ei:
        c.queue_declare(q, exclusive=True, arguments={"x-max-length": 20})
    check_error(ei, amqp.exceptions.PreconditionFailed, 406,
                f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': "
                f"received '20' but current is '10'", (50, 10))

    # an argument present on one side only is reported with its type
    c = conn.channel()
    with pytest.raises(amqp.exceptions.PreconditionFailed) as ei:
        c.queue_declare(q, exclusive=True, arguments={"x-max-length": 10, "x-message-ttl": 500})
    check_error(ei, amqp.exceptions.PreconditionFailed, 406,
                f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': "
                f"received the value '500' of type 'signedint' but current is none", (50, 10))

    # arguments RabbitMQ does not know are not compared
    c = conn.channel()
    assert c.queue_declare(q, exclusive=True, arguments={"x-max-length": 10, "x-custom": "anything"}).queue == q


def test_resource_locked_from_other_connection(broker, conn, ch):
    q = new_queue(ch, exclusive=True)
    other = broker.amqp_connection()
    try:
        with pytest.raises(amqp.exceptions.ResourceLocked) as ei:
            other.channel().basic_consume(q, callback=lambda m: None)
        check_error(ei, amqp.exceptions.ResourceLocked, 405,
                    f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. "
                    "It could be originally declared on another connection or the exclusive property value "
                    "does not match that of the original declaration.", (60, 20))
    finally:
        other.close()


def test_reused_consumer_tag_is_a_connection_error(broker):
    c = broker.amqp_connection()
    try:
        ch = c.channel()
        q = new_queue(ch, exclusive=True)
        ch.basic_consume(q, consumer_tag="same", callback=lambda m: None)
        with pytest.raises(amqp.exceptions.NotAllowed) as ei:
            ch.basic_consume(q, consumer_tag="same", callback=lambda m: None)
        check_error(ei, amqp.exceptions.NotAllowed, 530, "NOT_ALLOWED - attempt to reuse consumer tag 'same'",
                    (60, 20))
        assert not c.connected
    finally:
        c.collect()


def test_recover_without_requeue_not_implemented(broker):
    c = broker.amqp_connection()
    try:
        ch = c.channel()
        with pytest.raises(amqp.exceptions.AMQPNotImplementedError) as ei:
            ch.basic_recover(requeue=False)
            new_queue(ch)  # sync point in case the error arrives late
        check_error(ei, amqp.exceptions.AMQPNotImplementedError, 540, "NOT_IMPLEMENTED - requeue=false")
    finally:
        c.collect()


def test_publish_to_missing_exchange(conn):
    c = conn.channel()
    ex = "pyamqp-noex-" + str(time.monotonic_ns())
    with pytest.raises(amqp.exceptions.NotFound) as ei:
        c.basic_publish(amqp.Message(b"x"), exchange=ex, routing_key="k")
    check_error(ei, amqp.exceptions.NotFound, 404, f"NOT_FOUND - no exchange '{ex}' in vhost '/'", (60, 40))
