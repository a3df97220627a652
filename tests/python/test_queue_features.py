"""Queue features oslo.messaging and kombu rely on, through pika: queue
arguments and their validation, TTLs, queue expiry, dead-lettering (x-death),
length limits, priorities and single active consumer.

Every expectation here is what RabbitMQ 3.10 does (the suite is validated with
WARREN_TEST_TARGET=rabbitmq); reply texts are compared exactly.  Where a
RabbitMQ text differs from what one might guess (x-message-ttl given as a
string, for instance), the test asserts RabbitMQ's real text.
"""

from __future__ import annotations

import datetime
import time

import pika
import pika.exceptions
import pytest

from conftest import DELIVERY_TIMEOUT, amqp_reply_text, wait_until


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


def confirmed(conn):
    """A new channel in confirm mode: a publish returns once the queues have the
    message, so that counts and gets afterwards see it."""
    c = conn.channel()
    c.confirm_delivery()
    return c


def get_all(ch, queue, auto_ack=True, limit=1000):
    out = []
    for _ in range(limit):
        m, p, b = ch.basic_get(queue, auto_ack=auto_ack)
        if m is None:
            return out
        out.append((m, p, b))
    raise AssertionError(f"more than {limit} messages in {queue}")


def bodies(ch, queue):
    return [b for _, _, b in get_all(ch, queue)]


def get_one(ch, queue, timeout=DELIVERY_TIMEOUT, auto_ack=True):
    """basic.get until a message comes (dead-lettering and expiry are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        m, p, b = ch.basic_get(queue, auto_ack=auto_ack)
        if m is not None:
            return m, p, b
        if time.monotonic() > deadline:
            raise AssertionError(f"no message in {queue} after {timeout}s")
        time.sleep(0.02)


def pump(conn, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)


class Collector:
    """basic.consume into a list, with bounded waits."""

    def __init__(self, ch, queue, auto_ack=False, **kw):
        self.ch = ch
        self.msgs = []
        self.tag = ch.basic_consume(queue, self._on, auto_ack=auto_ack, **kw)

    def _on(self, ch, method, props, body):
        self.msgs.append((method, props, body))

    @property
    def bodies(self):
        return [b for _, _, b in self.msgs]

    def wait_for(self, n, timeout=DELIVERY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while len(self.msgs) < n and time.monotonic() < deadline:
            self.ch.connection.process_data_events(time_limit=0.02)
        assert len(self.msgs) >= n, f"expected {n} deliveries, got {len(self.msgs)} after {timeout}s"
        return self.msgs


def expect_channel_error(code, text):
    return _ChannelErrorCheck(code, text)


class _ChannelErrorCheck:
    def __init__(self, code, text):
        self.code, self.text = code, text
        self._raises = pytest.raises(pika.exceptions.ChannelClosedByBroker)

    def __enter__(self):
        self.info = self._raises.__enter__()
        return self.info

    def __exit__(self, et, ev, tb):
        if et is not None and not issubclass(et, pika.exceptions.ChannelClosedByBroker) \
                and issubclass(et, pika.exceptions.AMQPError):
            raise AssertionError(f"expected ChannelClosedByBroker: ({self.code}) {self.text!r}, "
                                 f"got {ev!r}") from ev
        r = self._raises.__exit__(et, ev, tb)
        e = self.info.value
        assert (e.reply_code, e.reply_text) == (self.code, amqp_reply_text(self.text))
        return r


def queue_exists(conn, q):
    c = conn.channel()
    try:
        c.queue_declare(q, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404, e
        return False
    c.close()
    return True


def queue_gone(pch, q):
    """Whether `q` no longer exists, seen through a mandatory publish on the
    confirm channel `pch` (a passive queue.declare would count as a use of
    the queue and restart its x-expires timer; a publish does not)."""
    try:
        pch.basic_publish("", q, b"probe", mandatory=True)
    except pika.exceptions.UnroutableError:
        return True
    return False


def without_last_death(headers):
    """Warren also writes x-last-death-* (as RabbitMQ 3.13 does; 3.10 does not):
    neither their presence nor their absence is asserted."""
    return {k: v for k, v in (headers or {}).items() if not k.startswith("x-last-death-")}


DEATH_FIELDS = {"count", "reason", "queue", "time", "exchange", "routing-keys"}


def check_death(entry, *, count, reason, queue, exchange, routing_keys, original_expiration=None):
    """One x-death entry, exactly as RabbitMQ 3.10 writes it."""
    fields = set(DEATH_FIELDS)
    if original_expiration is not None:
        fields.add("original-expiration")
    assert set(entry) == fields, entry
    expected = {"count": count, "reason": reason, "queue": queue, "exchange": exchange,
                "routing-keys": routing_keys}
    if original_expiration is not None:
        expected["original-expiration"] = original_expiration
    assert {k: v for k, v in entry.items() if k != "time"} == expected
    t = entry["time"]
    assert isinstance(t, datetime.datetime), repr(t)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - t.astimezone(datetime.timezone.utc)).total_seconds()) < 60, t


def first_death(queue, reason, exchange):
    return {"x-first-death-queue": queue, "x-first-death-reason": reason,
            "x-first-death-exchange": exchange}


# --------------------------------------------------------------------------
# queue arguments: validation
# --------------------------------------------------------------------------

INVALID_ARGUMENTS = [
    # RabbitMQ 3.10 (and 3.13) checks x-message-ttl and x-max-length with
    # check_non_neg_int_arg, whose type error is this quoted string.
    ({"x-message-ttl": "abc"}, "x-message-ttl", '"expected integer, got longstr"'),
    ({"x-message-ttl": -1}, "x-message-ttl", "{value_negative,-1}"),
    ({"x-expires": 0}, "x-expires", "{value_zero,0}"),
    ({"x-expires": -5}, "x-expires", "{value_negative,-5}"),
    ({"x-max-length": -1}, "x-max-length", "{value_negative,-1}"),
    ({"x-max-length": "x"}, "x-max-length", '"expected integer, got longstr"'),
    ({"x-max-length-bytes": -3}, "x-max-length-bytes", "{value_negative,-3}"),
    ({"x-max-priority": 300}, "x-max-priority", "{max_value_exceeded,300}"),
    ({"x-max-priority": 256}, "x-max-priority", "{max_value_exceeded,256}"),
    ({"x-max-priority": -1}, "x-max-priority", "{value_negative,-1}"),
    ({"x-overflow": "bogus"}, "x-overflow", "invalid_overflow"),
    ({"x-dead-letter-routing-key": "k"}, "x-dead-letter-routing-key", "routing_key_but_no_dlx_defined"),
    ({"x-queue-type": "bogus"}, "x-queue-type", "\"unsupported queue type 'bogus'\""),
    ({"x-single-active-consumer": "yes"}, "x-single-active-consumer", "{unacceptable_type,longstr}"),
]


@pytest.mark.parametrize("args,arg,reason", INVALID_ARGUMENTS,
                         ids=[f"{a}={v!r}" for (d, a, _) in INVALID_ARGUMENTS for v in [d[a]]])
def test_invalid_queue_argument(conn, ch, name, args, arg, reason):
    q = name("q")
    with expect_channel_error(406, f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/': {reason}"):
        ch.queue_declare(q, arguments=args)
    assert not queue_exists(conn, q)


def test_dead_letter_exchange_of_wrong_type(ch, name):
    q = name("q")
    with expect_channel_error(406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg "
                                   f"'x-dead-letter-exchange' in queue '{q}' in vhost '/'"):
        ch.queue_declare(q, arguments={"x-dead-letter-exchange": 5})


def test_largest_max_priority_accepted(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 255})


def test_unknown_x_arguments_ignored(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-foo": "a", "x-bar": 1, "x-warren-nonsense": True})
    # not part of the equivalence check either
    ch.queue_declare(q, exclusive=True, arguments={"x-foo": "b"})
    ch.queue_declare(q, exclusive=True)
    pch = confirmed(conn)
    pch.basic_publish("", q, b"works")
    assert bodies(ch, q) == [b"works"]


# --------------------------------------------------------------------------
# queue arguments: equivalence on redeclare
# --------------------------------------------------------------------------

def _inequivalent(arg, q, detail):
    return f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{q}' in vhost '/': {detail}"


REDECLARES = [
    ({"x-message-ttl": 1000}, {"x-message-ttl": 2000}, "x-message-ttl", "received '2000' but current is '1000'"),
    ({"x-message-ttl": 1000}, {}, "x-message-ttl",
     "received none but current is the value '1000' of type 'signedint'"),
    ({}, {"x-message-ttl": 1000}, "x-message-ttl",
     "received the value '1000' of type 'signedint' but current is none"),
    # the equivalence check comes before validation: a string is a different value
    ({"x-message-ttl": 1000}, {"x-message-ttl": "1000"}, "x-message-ttl",
     "received '1000' but current is '1000'"),
    ({"x-dead-letter-exchange": "a"}, {"x-dead-letter-exchange": "b"}, "x-dead-letter-exchange",
     "received 'b' but current is 'a'"),
    ({"x-dead-letter-exchange": "a"}, {}, "x-dead-letter-exchange",
     "received none but current is the value 'a' of type 'longstr'"),
    ({}, {"x-dead-letter-exchange": "b"}, "x-dead-letter-exchange",
     "received the value 'b' of type 'longstr' but current is none"),
    ({"x-max-length": 5}, {"x-max-length": 6}, "x-max-length", "received '6' but current is '5'"),
    ({"x-expires": 10000}, {"x-expires": 20000}, "x-expires", "received '20000' but current is '10000'"),
    ({"x-max-priority": 5}, {}, "x-max-priority",
     "received none but current is the value '5' of type 'signedint'"),
]


@pytest.mark.parametrize("first,second,arg,detail", REDECLARES,
                         ids=[f"{a}:{f.get(a)!r}->{s.get(a)!r}" for f, s, a, _ in REDECLARES])
def test_redeclare_with_different_argument(conn, ch, name, first, second, arg, detail):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments=first)
    with expect_channel_error(406, _inequivalent(arg, q, detail)):
        ch.queue_declare(q, exclusive=True, arguments=second)
    # the queue is unchanged and the same declaration still works
    conn.channel().queue_declare(q, exclusive=True, arguments=first)


def test_redeclare_with_same_arguments_in_other_order(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 1000, "x-max-length": 3})
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 3, "x-message-ttl": 1000})


def test_classic_queue_type_equivalent_to_none(ch, name):
    q1, q2 = name("a"), name("b")
    ch.queue_declare(q1, exclusive=True, arguments={"x-queue-type": "classic"})
    ch.queue_declare(q1, exclusive=True)
    ch.queue_declare(q2, exclusive=True)
    ch.queue_declare(q2, exclusive=True, arguments={"x-queue-type": "classic"})


def test_quorum_queue_accepted_when_durable(conn, ch, name):
    # RabbitMQ 3.10 refuses quorum queues that are not durable, or exclusive,
    # or auto-delete; only the durable shared queue is tested here.
    q = name("quorum")
    ok = ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        assert ok.method.queue == q
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
        pch = confirmed(conn)
        pch.basic_publish("", q, b"replicated", pika.BasicProperties(delivery_mode=2))
        m, _, body = get_one(ch, q)
        assert body == b"replicated"
        with expect_channel_error(406, _inequivalent(
                "x-queue-type", q, "received none but current is the value 'quorum' of type 'longstr'")):
            ch.queue_declare(q, durable=True)
    finally:
        conn.channel().queue_delete(q)


def test_classic_queue_redeclared_as_quorum(conn, ch, name):
    q = name("classic")
    ch.queue_declare(q, durable=True)
    try:
        with expect_channel_error(406, _inequivalent(
                "x-queue-type", q, "received the value 'quorum' of type 'longstr' but current is none")):
            ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    finally:
        conn.channel().queue_delete(q)


QQ = {"x-queue-type": "quorum"}


@pytest.mark.parametrize("flags, refused", [
    (dict(durable=False), "non-durable"),
    (dict(durable=True, exclusive=True), "exclusive-owner"),
    (dict(durable=True, auto_delete=True), "auto-delete"),
    # Several at once: auto-delete, then exclusive-owner, then non-durable (rabbit_quorum_queue).
    (dict(durable=False, exclusive=True), "exclusive-owner"),
    (dict(durable=False, exclusive=True, auto_delete=True), "auto-delete"),
])
def test_quorum_queue_declare_properties_refused(ch, name, flags, refused):
    q = name("qq")
    with expect_channel_error(406, f"PRECONDITION_FAILED - invalid property '{refused}' for queue '{q}' in vhost '/'"):
        ch.queue_declare(q, arguments=QQ, **flags)


def test_quorum_queue_cannot_be_server_named(ch):
    with expect_channel_error(406, "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"):
        ch.queue_declare("", durable=True, arguments=QQ)


@pytest.mark.parametrize("args, arg, reason", [
    ({"x-max-priority": 5}, "x-max-priority", None),
    ({"x-queue-mode": "lazy"}, "x-queue-mode", None),
    ({"x-quorum-initial-group-size": 0}, "x-quorum-initial-group-size", "{value_zero,0}"),
    ({"x-quorum-initial-group-size": "3"}, "x-quorum-initial-group-size", '"expected integer, got longstr"'),
    ({"x-dead-letter-strategy": "sometimes"}, "x-dead-letter-strategy", "invalid_dlx_strategy"),
    ({"x-queue-leader-locator": "nearest"}, "x-queue-leader-locator", "invalid_queue_locator_arg"),
])
def test_quorum_queue_arguments_refused(ch, name, args, arg, reason):
    q = name("qq")
    detail = (f"of queue type rabbit_quorum_queue" if reason is None else None)
    text = (f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/' {detail}" if reason is None
            else f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/': {reason}")
    with expect_channel_error(406, text):
        ch.queue_declare(q, durable=True, arguments={**QQ, **args})


def test_quorum_queue_own_arguments_accepted(conn, ch, name):
    q = name("qq")
    args = {**QQ, "x-quorum-initial-group-size": 3, "x-dead-letter-strategy": "at-most-once",
            "x-queue-leader-locator": "balanced", "x-single-active-consumer": True}
    ch.queue_declare(q, durable=True, arguments=args)
    conn.channel().queue_delete(q)


def test_quorum_queue_refuses_global_qos_consumers(broker, name):
    conn = broker.pika_connection()
    try:
        ch = conn.channel()
        q = name("qq")
        ch.queue_declare(q, durable=True, arguments=QQ)
        ch.basic_qos(prefetch_count=10, global_qos=True)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            ch.basic_consume(q, lambda *a: None)
            conn.process_data_events(time_limit=1)
        assert (e.value.reply_code, e.value.reply_text) == (
            540, f"NOT_IMPLEMENTED - queue '{q}' in vhost '/' does not support global qos")
    finally:
        if conn.is_open:
            conn.close()
    cleanup = broker.pika_connection()
    cleanup.channel().queue_delete(q)
    cleanup.close()


@pytest.mark.parametrize("flag", ["if_unused", "if_empty"])
def test_quorum_queue_conditional_delete_refused(broker, name, flag):
    conn = broker.pika_connection()
    q = name("qq")
    try:
        ch = conn.channel()
        ch.queue_declare(q, durable=True, arguments=QQ)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            ch.queue_delete(q, **{flag: True})
        text = flag.replace("_", "-")
        assert (e.value.reply_code, e.value.reply_text) == (
            540, f"NOT_IMPLEMENTED - cannot delete queue '{q}' in vhost '/'. "
                 f"queue.delete operations with {text} flag set are not supported by quorum queues")
    finally:
        if conn.is_open:
            conn.close()
    cleanup = broker.pika_connection()
    cleanup.channel().queue_delete(q)
    cleanup.close()


def test_quorum_queue_deliveries_carry_the_delivery_count(conn, ch, name):
    q = name("qq")
    ch.queue_declare(q, durable=True, arguments=QQ)
    try:
        confirmed(conn).basic_publish("", q, b"m", pika.BasicProperties(headers={"app": "nova"}))
        # basic.get always carries it, 0 included; a return counts one.
        m, p, _ = get_one(ch, q, auto_ack=False)
        assert (p.headers["x-delivery-count"], m.redelivered) == (0, False)
        assert p.headers["app"] == "nova"
        ch.basic_nack(m.delivery_tag, requeue=True)
        m, p, _ = get_one(ch, q, auto_ack=False)
        assert (p.headers["x-delivery-count"], m.redelivered) == (1, True)
        ch.basic_reject(m.delivery_tag, requeue=True)
        # A consumer's delivery carries it once the message came back.
        got = []
        ch.basic_consume(q, lambda c, m, p, b: got.append((m, p)))
        wait_until(lambda: (conn.process_data_events(time_limit=0.05), got)[1], what="a delivery")
        m, p = got[0]
        assert (p.headers["x-delivery-count"], m.redelivered) == (2, True)
        ch.basic_ack(m.delivery_tag)
        # A fresh message's first delivery has none.
        confirmed(conn).basic_publish("", q, b"fresh")
        wait_until(lambda: (conn.process_data_events(time_limit=0.05), len(got) > 1)[1], what="a second delivery")
        m, p = got[1]
        assert "x-delivery-count" not in (p.headers or {}) and not m.redelivered
        ch.basic_ack(m.delivery_tag)
    finally:
        conn.channel().queue_delete(q)


def test_quorum_queue_with_single_active_consumer_refuses_basic_get(conn, ch, name):
    q = name("qq")
    ch.queue_declare(q, durable=True, arguments={**QQ, "x-single-active-consumer": True})
    try:
        with expect_channel_error(405, f"RESOURCE_LOCKED - cannot obtain access to locked queue '{q}' in vhost '/'. "
                                       "basic.get operations are not supported by quorum queues with single active consumer"):
            ch.basic_get(q)
    finally:
        conn.channel().queue_delete(q)


# --------------------------------------------------------------------------
# TTL
# --------------------------------------------------------------------------

def test_per_message_expiration(conn, ch, name):
    # oslo.messaging sets `expiration` on every RPC request and reply
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    pch = confirmed(conn)
    pch.basic_publish("", q, b"short", pika.BasicProperties(expiration="50"))
    pch.basic_publish("", q, b"long", pika.BasicProperties(expiration="60000"))
    pch.basic_publish("", q, b"forever")
    time.sleep(0.25)
    got = get_all(ch, q)
    assert [b for _, _, b in got] == [b"long", b"forever"]
    assert [p.expiration for _, p, _ in got] == ["60000", None]


def test_queue_message_ttl(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 300})
    pch = confirmed(conn)
    pch.basic_publish("", q, b"a")
    pch.basic_publish("", q, b"b")
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    wait_until(lambda: ch.queue_declare(q, passive=True).method.message_count == 0,
               what="queue TTL to drop the messages")
    assert ch.basic_get(q, auto_ack=True)[0] is None
    pch.basic_publish("", q, b"fresh")
    assert bodies(ch, q) == [b"fresh"]


@pytest.mark.parametrize("queue_ttl,expiration", [(60000, "50"), (50, "60000")],
                         ids=["message-ttl-smaller", "queue-ttl-smaller"])
def test_smaller_of_queue_and_message_ttl_wins(conn, ch, name, queue_ttl, expiration):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": queue_ttl})
    pch = confirmed(conn)
    pch.basic_publish("", q, b"dies", pika.BasicProperties(expiration=expiration))
    pch.basic_publish("", q, b"lives", pika.BasicProperties(expiration="60000"))
    time.sleep(0.25)
    if queue_ttl < 60000:
        assert bodies(ch, q) == []
    else:
        assert bodies(ch, q) == [b"lives"]


def test_expired_messages_never_delivered_to_consumer(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    pch = confirmed(conn)
    pch.basic_publish("", q, b"first", pika.BasicProperties(expiration="60000"))
    pch.basic_publish("", q, b"expires", pika.BasicProperties(expiration="100"))
    pch.basic_publish("", q, b"last")
    cch = conn.channel()
    cch.basic_qos(prefetch_count=1)
    col = Collector(cch, q)
    col.wait_for(1)
    assert col.bodies == [b"first"]
    time.sleep(0.3)  # "expires" expires while the consumer is busy with "first"
    cch.basic_ack(col.msgs[0][0].delivery_tag)
    col.wait_for(2)
    pump(conn, 0.2)
    assert col.bodies == [b"first", b"last"]


def test_expiration_zero_goes_only_to_a_waiting_consumer(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    pch = confirmed(conn)
    pch.basic_publish("", q, b"nobody waits", pika.BasicProperties(expiration="0"))
    assert ch.basic_get(q, auto_ack=True)[0] is None
    col = Collector(conn.channel(), q, auto_ack=True)
    pch.basic_publish("", q, b"consumer waits", pika.BasicProperties(expiration="0"))
    col.wait_for(1, timeout=2)
    pump(conn, 0.1)
    assert col.bodies == [b"consumer waits"]
    assert col.msgs[0][1].expiration == "0"


INVALID_EXPIRATIONS = [
    ("abc", "no_integer"),
    ("-1", "{value_negative,-1}"),
    ("", "no_integer"),
    ("1.5", '{leftover_string,".5"}'),
    (" 5", "no_integer"),
]


@pytest.mark.parametrize("expiration,reason", INVALID_EXPIRATIONS, ids=[repr(e) for e, _ in INVALID_EXPIRATIONS])
def test_invalid_expiration(conn, ch, name, expiration, reason):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    with expect_channel_error(406, f"PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}"):
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration=expiration))
        ch.queue_declare(q, passive=True)  # sync point
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 0


# --------------------------------------------------------------------------
# x-expires
# --------------------------------------------------------------------------

def test_unused_queue_expires(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, arguments={"x-expires": 300})
    pch = confirmed(conn)
    assert not queue_gone(pch, q)
    started = time.monotonic()
    wait_until(lambda: queue_gone(pch, q), timeout=DELIVERY_TIMEOUT, interval=0.05,
               what="the queue to expire")
    assert time.monotonic() - started > 0.2
    assert not queue_exists(conn, q)


def test_consumer_keeps_expiring_queue_alive(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, arguments={"x-expires": 300})
    pch = confirmed(conn)
    cch = conn.channel()
    tag = cch.basic_consume(q, lambda *a: None, auto_ack=True)
    pump(conn, 0.9)
    assert not queue_gone(pch, q)
    cch.basic_cancel(tag)
    wait_until(lambda: queue_gone(pch, q), timeout=DELIVERY_TIMEOUT, interval=0.05,
               what="the queue to expire once unused")


def test_basic_get_keeps_expiring_queue_alive(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, arguments={"x-expires": 400})
    pch = confirmed(conn)
    for _ in range(9):
        ch.basic_get(q, auto_ack=True)
        time.sleep(0.1)
    assert not queue_gone(pch, q)
    wait_until(lambda: queue_gone(pch, q), timeout=DELIVERY_TIMEOUT, interval=0.05,
               what="the queue to expire once unused")


def test_redeclare_keeps_expiring_queue_alive(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, arguments={"x-expires": 400})
    pch = confirmed(conn)
    for _ in range(9):
        ch.queue_declare(q, arguments={"x-expires": 400})
        time.sleep(0.1)
    assert not queue_gone(pch, q)
    wait_until(lambda: queue_gone(pch, q), timeout=DELIVERY_TIMEOUT, interval=0.05,
               what="the queue to expire once unused")


def test_deleting_consumed_queue_cancels_consumer(broker, conn, ch, name):
    assert conn._impl.server_capabilities.get("consumer_cancel_notify") is True
    q = name("q")
    ch.queue_declare(q)
    cancels = []
    ch.add_on_cancel_callback(lambda frame: cancels.append(frame.method))
    tag = ch.basic_consume(q, lambda *a: None)
    other = broker.pika_connection()
    try:
        other.channel().queue_delete(q)
    finally:
        other.close()
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while not cancels and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    assert len(cancels) == 1
    assert isinstance(cancels[0], pika.spec.Basic.Cancel)
    assert cancels[0].consumer_tag == tag
    # the channel is still open and usable
    assert ch.is_open
    ch.queue_declare(name("after"), exclusive=True)


# --------------------------------------------------------------------------
# dead-lettering
# --------------------------------------------------------------------------

def test_x_death_when_per_message_ttl_expires(conn, ch, name):
    q, dlq = name("q"), name("dlq")
    ex, dlx = name("ex"), name("dlx")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    ch.exchange_declare(dlx, "fanout", auto_delete=True)
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, ex, "rk")
    pch = confirmed(conn)
    pch.basic_publish(ex, "rk", b"will expire",
                      pika.BasicProperties(expiration="50", headers={"app": "nova"}, message_id="m1"))
    m, p, body = get_one(ch, dlq)
    assert body == b"will expire"
    assert (m.exchange, m.routing_key) == (dlx, "rk")  # re-published with the original routing key
    assert p.expiration is None                        # the per-message TTL is removed...
    assert p.message_id == "m1"
    h = without_last_death(p.headers)
    deaths = h.pop("x-death")
    assert len(deaths) == 1
    check_death(deaths[0], count=1, reason="expired", queue=q, exchange=ex, routing_keys=["rk"],
                original_expiration="50")           # ...and kept here
    assert h == {"app": "nova", **first_death(q, "expired", ex)}


def test_x_death_when_queue_ttl_expires(conn, ch, name):
    q, dlq = name("q"), name("dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    pch = confirmed(conn)
    pch.basic_publish("", q, b"will expire")
    m, p, body = get_one(ch, dlq)
    assert (m.exchange, m.routing_key) == ("", dlq)
    h = without_last_death(p.headers)
    deaths = h.pop("x-death")
    assert len(deaths) == 1
    check_death(deaths[0], count=1, reason="expired", queue=q, exchange="", routing_keys=[q])
    assert h == first_death(q, "expired", "")


@pytest.mark.parametrize("how", ["reject", "nack"])
def test_x_death_when_rejected(conn, ch, name, how):
    q, dlq = name("q"), name("dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.queue_bind(q, "amq.direct", "orig")
    pch = confirmed(conn)
    pch.basic_publish("amq.direct", "orig", b"unwanted", pika.BasicProperties(headers={"k": "v"}))
    m, _, _ = get_one(ch, q, auto_ack=False)
    if how == "reject":
        ch.basic_reject(m.delivery_tag, requeue=False)
    else:
        ch.basic_nack(m.delivery_tag, requeue=False)
    m, p, body = get_one(ch, dlq)
    assert body == b"unwanted"
    assert (m.exchange, m.routing_key) == ("", dlq)   # x-dead-letter-routing-key overrides the key
    h = without_last_death(p.headers)
    deaths = h.pop("x-death")
    assert len(deaths) == 1
    check_death(deaths[0], count=1, reason="rejected", queue=q, exchange="amq.direct", routing_keys=["orig"])
    assert h == {"k": "v", **first_death(q, "rejected", "amq.direct")}
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_nack_multiple_dead_letters_each(conn, ch, name):
    q, dlq = name("q"), name("dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    pch = confirmed(conn)
    for i in range(3):
        pch.basic_publish("", q, b"%d" % i)
    tags = [get_one(ch, q, auto_ack=False)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=False)
    got = [get_one(ch, dlq)[2] for _ in range(3)]
    assert got == [b"0", b"1", b"2"]


def test_requeue_does_not_dead_letter(conn, ch, name):
    q, dlq = name("q"), name("dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    pch = confirmed(conn)
    pch.basic_publish("", q, b"again")
    m, _, _ = get_one(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, p, body = get_one(ch, q)
    assert (body, m.redelivered) == (b"again", True)
    assert p.headers is None
    assert ch.basic_get(dlq, auto_ack=True)[0] is None


def test_dead_letter_exchange_with_original_routing_key(conn, ch, name):
    q, dlq_a, dlq_b = name("q"), name("dlq-a"), name("dlq-b")
    dlx = name("dlx")
    ch.exchange_declare(dlx, "direct", auto_delete=True)
    ch.queue_declare(dlq_a, exclusive=True)
    ch.queue_declare(dlq_b, exclusive=True)
    ch.queue_bind(dlq_a, dlx, "a")
    ch.queue_bind(dlq_b, dlx, "b")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(q, "amq.direct", "a")
    ch.queue_bind(q, "amq.direct", "b")
    pch = confirmed(conn)
    pch.basic_publish("amq.direct", "b", b"to b")
    m, _, _ = get_one(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    m, p, body = get_one(ch, dlq_b)
    assert (m.exchange, m.routing_key, body) == (dlx, "b", b"to b")
    assert ch.basic_get(dlq_a, auto_ack=True)[0] is None


def test_bcc_header_is_not_delivered(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, "amq.direct", "k1")
    ch.queue_bind(q, "amq.direct", "k3")
    pch = confirmed(conn)
    pch.basic_publish("amq.direct", "k1", b"cc", pika.BasicProperties(headers={"CC": ["k2"], "BCC": ["k3"]}))
    m, p, _ = get_one(ch, q)
    assert p.headers == {"CC": ["k2"]}
    assert ch.basic_get(q, auto_ack=True)[0] is None  # routed to k1 and k3, delivered once


def _dead_letter_with_cc(conn, ch, name, dlrk):
    """Publish with CC to a queue bound under both keys, reject it, return the dead letter."""
    q, dlq = name("q"), name("dlq")
    dlx = name("dlx")
    ch.exchange_declare(dlx, "direct", auto_delete=True)
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_bind(dlq, dlx, dlrk or "k1")
    args = {"x-dead-letter-exchange": dlx}
    if dlrk:
        args["x-dead-letter-routing-key"] = dlrk
    ch.queue_declare(q, exclusive=True, arguments=args)
    ch.queue_bind(q, "amq.direct", "k1")
    ch.queue_bind(q, "amq.direct", "k2")
    pch = confirmed(conn)
    pch.basic_publish("amq.direct", "k1", b"cc", pika.BasicProperties(headers={"CC": ["k2"]}))
    m, _, _ = get_one(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    assert ch.basic_get(q, auto_ack=True)[0] is None  # routed once, dead-lettered once
    m, p, _ = get_one(ch, dlq)
    pump(conn, 0.05)
    assert ch.basic_get(dlq, auto_ack=True)[0] is None
    return q, m, p


def test_x_death_routing_keys_include_cc(conn, ch, name):
    q, m, p = _dead_letter_with_cc(conn, ch, name, None)
    deaths = p.headers["x-death"]
    check_death(deaths[0], count=1, reason="rejected", queue=q, exchange="amq.direct", routing_keys=["k1", "k2"])
    # re-published with its original routing key and CC
    assert m.routing_key == "k1"
    assert p.headers["CC"] == ["k2"]


def test_dead_letter_routing_key_drops_cc(conn, ch, name):
    q, m, p = _dead_letter_with_cc(conn, ch, name, "dl")
    assert m.routing_key == "dl"
    assert "CC" not in p.headers, p.headers
    h = without_last_death(p.headers)
    deaths = h.pop("x-death")
    check_death(deaths[0], count=1, reason="rejected", queue=q, exchange="amq.direct", routing_keys=["k1", "k2"])
    assert h == first_death(q, "rejected", "amq.direct")


def test_dead_letter_exchange_missing_drops_message(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-dead-letter-exchange": name("missing")})
    pch = confirmed(conn)
    pch.basic_publish("", q, b"nowhere to go")
    m, _, _ = get_one(ch, q, auto_ack=False)
    ch.basic_reject(m.delivery_tag, requeue=False)
    pump(conn, 0.1)
    assert ch.is_open
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_x_death_count_increments_around_a_reject_cycle(conn, ch, name):
    """q1 and q2 dead-letter into each other; every hop is a reject, so the
    message may go around again, and the (queue, reason) entry that comes back
    is counted up and moved to the front."""
    q1, q2 = name("q1"), name("q2")
    ch.queue_declare(q1, exclusive=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q2})
    ch.queue_declare(q2, exclusive=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q1})
    pch = confirmed(conn)
    pch.basic_publish("", q1, b"round and round")
    for q in (q1, q2, q1):
        m, _, _ = get_one(ch, q, auto_ack=False)
        ch.basic_nack(m.delivery_tag, requeue=False)
    m, p, body = get_one(ch, q2)
    assert (body, m.exchange, m.routing_key) == (b"round and round", "", q2)
    h = without_last_death(p.headers)
    deaths = h.pop("x-death")
    assert len(deaths) == 2, deaths
    check_death(deaths[0], count=2, reason="rejected", queue=q1, exchange="", routing_keys=[q1])
    check_death(deaths[1], count=1, reason="rejected", queue=q2, exchange="", routing_keys=[q2])
    assert h == first_death(q1, "rejected", "")


def test_ttl_dead_letter_cycle_is_dropped(conn, ch, name):
    """q1 --expired--> q2 --expired--> fanout to q1 and an observer: the copy
    for q1 would close a cycle of expiries and is dropped (no endless loop),
    the observer, not in the cycle, gets its copy."""
    q1, q2, obs, fan = name("q1"), name("q2"), name("obs"), name("fan")
    ch.exchange_declare(fan, "fanout", auto_delete=True)
    ch.queue_declare(obs, exclusive=True)
    ch.queue_declare(q1, exclusive=True, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q2})
    ch.queue_declare(q2, exclusive=True, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": fan})
    ch.queue_bind(q1, fan)
    ch.queue_bind(obs, fan)
    pch = confirmed(conn)
    pch.basic_publish("", q1, b"loop")
    m, p, body = get_one(ch, obs)
    assert body == b"loop"
    deaths = p.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [(q2, "expired", 1), (q1, "expired", 1)]
    time.sleep(0.4)  # several TTLs: a looping message would show up again
    assert ch.basic_get(obs, auto_ack=True)[0] is None
    for q in (q1, q2):
        assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_dead_letter_cycle_with_a_reject_goes_around_again(conn, ch, name):
    """q1 --rejected--> q2 --expired--> q1: the cycle contains a reject, so the
    message comes back to q1 (and would again)."""
    q1, q2 = name("q1"), name("q2")
    ch.queue_declare(q1, exclusive=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q2})
    ch.queue_declare(q2, exclusive=True, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": q1})
    pch = confirmed(conn)
    pch.basic_publish("", q1, b"again and again", pika.BasicProperties(expiration="60000"))
    for _ in range(2):
        m, _, _ = get_one(ch, q1, auto_ack=False)
        ch.basic_reject(m.delivery_tag, requeue=False)
    m, p, body = get_one(ch, q1)
    assert body == b"again and again"
    assert p.expiration is None
    h = without_last_death(p.headers)
    deaths = h.pop("x-death")
    assert len(deaths) == 2, deaths
    check_death(deaths[0], count=2, reason="expired", queue=q2, exchange="", routing_keys=[q2])
    check_death(deaths[1], count=2, reason="rejected", queue=q1, exchange="", routing_keys=[q1],
                original_expiration="60000")
    assert h == first_death(q1, "rejected", "")


# --------------------------------------------------------------------------
# length limits
# --------------------------------------------------------------------------

def test_max_length_drops_head(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 2})
    pch = confirmed(conn)
    for i in range(5):
        pch.basic_publish("", q, b"%d" % i)
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    assert bodies(ch, q) == [b"3", b"4"]


def test_max_length_dead_letters_dropped_head(conn, ch, name):
    q, dlq = name("q"), name("dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments={
        "x-max-length": 1, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    pch = confirmed(conn)
    for i in range(3):
        pch.basic_publish("", q, b"%d" % i)
    got = [get_one(ch, dlq) for _ in range(2)]
    assert [b for _, _, b in got] == [b"0", b"1"]
    p = got[0][1]
    h = without_last_death(p.headers)
    deaths = h.pop("x-death")
    assert len(deaths) == 1
    check_death(deaths[0], count=1, reason="maxlen", queue=q, exchange="", routing_keys=[q])
    assert h == first_death(q, "maxlen", "")
    assert bodies(ch, q) == [b"2"]


def test_max_length_bytes_drops_head(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length-bytes": 10})
    pch = confirmed(conn)
    for b in (b"aaaa", b"bbbb", b"cccc", b"dd"):
        pch.basic_publish("", q, b)
    assert bodies(ch, q) == [b"bbbb", b"cccc", b"dd"]


def test_max_length_bytes_dead_letters_with_maxlen(conn, ch, name):
    q, dlq = name("q"), name("dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments={
        "x-max-length-bytes": 6, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    pch = confirmed(conn)
    for b in (b"111", b"222", b"333"):
        pch.basic_publish("", q, b)
    m, p, body = get_one(ch, dlq)
    assert body == b"111"
    assert p.headers["x-death"][0]["reason"] == "maxlen"
    assert bodies(ch, q) == [b"222", b"333"]


def test_reject_publish_nacks_and_keeps_old_messages(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    pch = confirmed(conn)
    pch.basic_publish("", q, b"1")
    pch.basic_publish("", q, b"2")
    with pytest.raises(pika.exceptions.NackError):
        pch.basic_publish("", q, b"3")
    assert bodies(ch, q) == [b"1", b"2"]
    pch.basic_publish("", q, b"4")  # room again
    assert bodies(ch, q) == [b"4"]


def test_reject_publish_without_confirms_drops_new_message(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", q, b"kept")
    ch.basic_publish("", q, b"dropped")
    pump(conn, 0.1)
    assert ch.is_open
    assert bodies(ch, q) == [b"kept"]


def test_reject_publish_dlx_dead_letters_the_rejected_message(conn, ch, name):
    q, dlq = name("q"), name("dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments={
        "x-max-length": 1, "x-overflow": "reject-publish-dlx",
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    pch = confirmed(conn)
    pch.basic_publish("", q, b"old")
    with pytest.raises(pika.exceptions.NackError):
        pch.basic_publish("", q, b"new")
    m, p, body = get_one(ch, dlq)
    assert body == b"new"
    h = without_last_death(p.headers)
    deaths = h.pop("x-death")
    check_death(deaths[0], count=1, reason="maxlen", queue=q, exchange="", routing_keys=[q])
    assert h == first_death(q, "maxlen", "")
    assert bodies(ch, q) == [b"old"]


# --------------------------------------------------------------------------
# priorities
# --------------------------------------------------------------------------

def test_priority_queue_order(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 5})
    pch = confirmed(conn)
    # priorities above the maximum count as the maximum; no priority is 0
    for body, prio in [("a", 1), ("b", None), ("c", 5), ("d", 9), ("e", 3), ("f", 5), ("g", 0), ("h", 200)]:
        pch.basic_publish("", q, body.encode(), pika.BasicProperties(priority=prio))
    got = get_all(ch, q)
    assert [b.decode() for _, _, b in got] == ["c", "d", "f", "h", "e", "a", "b", "g"]
    # the property is delivered as published
    assert [p.priority for _, p, _ in got] == [5, 9, 5, 200, 3, 1, None, 0]


def test_priority_queue_to_consumer(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 10})
    pch = confirmed(conn)
    for i, prio in enumerate([0, 10, 5, 10, 0]):
        pch.basic_publish("", q, b"%d" % i, pika.BasicProperties(priority=prio))
    col = Collector(conn.channel(), q, auto_ack=True)
    col.wait_for(5)
    assert col.bodies == [b"1", b"3", b"2", b"0", b"4"]


def test_queue_without_max_priority_ignores_priority(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    pch = confirmed(conn)
    for i, prio in enumerate([0, 9, 5]):
        pch.basic_publish("", q, b"%d" % i, pika.BasicProperties(priority=prio))
    assert bodies(ch, q) == [b"0", b"1", b"2"]


def test_consumer_priority(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    low = conn.channel()
    low.basic_qos(prefetch_count=10)
    high = conn.channel()
    high.basic_qos(prefetch_count=2)
    low_col = Collector(low, q)  # registered first
    high_col = Collector(high, q, arguments={"x-priority": 10})
    pch = confirmed(conn)
    for i in range(5):
        pch.basic_publish("", q, b"%d" % i)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while len(low_col.msgs) + len(high_col.msgs) < 5 and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)
    pump(conn, 0.1)
    # the high-priority consumer gets messages while it has prefetch room, the rest go to the other
    assert high_col.bodies == [b"0", b"1"]
    assert low_col.bodies == [b"2", b"3", b"4"]
    # once it has room again it is first again
    high.basic_ack(high_col.msgs[-1][0].delivery_tag, multiple=True)
    pch.basic_publish("", q, b"5")
    high_col.wait_for(3)
    pump(conn, 0.1)
    assert high_col.bodies[2:] == [b"5"]
    assert len(low_col.msgs) == 3


# --------------------------------------------------------------------------
# single active consumer
# --------------------------------------------------------------------------

def test_single_active_consumer(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-single-active-consumer": True})
    first_ch, second_ch = conn.channel(), conn.channel()
    first = Collector(first_ch, q, auto_ack=True)
    second = Collector(second_ch, q, auto_ack=True)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2
    pch = confirmed(conn)
    for i in range(4):
        pch.basic_publish("", q, b"%d" % i)
    first.wait_for(4)
    pump(conn, 0.2)
    # only the first consumer receives
    assert first.bodies == [b"0", b"1", b"2", b"3"]
    assert second.msgs == []
    # after it cancels, the next one gets the rest
    first_ch.basic_cancel(first.tag)
    for i in range(4, 7):
        pch.basic_publish("", q, b"%d" % i)
    second.wait_for(3)
    pump(conn, 0.1)
    assert second.bodies == [b"4", b"5", b"6"]
    assert len(first.msgs) == 4


def test_single_active_consumer_channel_close_hands_over_unacked(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-single-active-consumer": True})
    first_ch, second_ch = conn.channel(), conn.channel()
    first_ch.basic_qos(prefetch_count=2)
    first = Collector(first_ch, q)
    second = Collector(second_ch, q, auto_ack=True)
    pch = confirmed(conn)
    for i in range(5):
        pch.basic_publish("", q, b"%d" % i)
    first.wait_for(2)
    pump(conn, 0.2)
    # the active consumer's prefetch is full: the others still wait
    assert first.bodies == [b"0", b"1"]
    assert second.msgs == []
    first_ch.close()
    second.wait_for(5)
    assert second.bodies == [b"0", b"1", b"2", b"3", b"4"]
    assert [m.redelivered for m, _, _ in second.msgs] == [True, True, False, False, False]
