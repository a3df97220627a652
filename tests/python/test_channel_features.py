"""Transactions, exchange features, consumer rules and connection.update-secret,
through pika (py-amqp where pika refuses to send the frame under test).

Every expectation here is what RabbitMQ 3.10 does (the suite is validated with
WARREN_TEST_TARGET=rabbitmq); reply texts are compared exactly.
"""

from __future__ import annotations

import time
import uuid

import amqp
import amqp.exceptions
import pika
import pika.exceptions
import pytest

from conftest import DELIVERY_TIMEOUT, TARGET, amqp_reply_text


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


def get_n(ch, queue, n, timeout=1.0):
    """basic.get until `n` messages came (requeueing on channel close is
    asynchronous), or until `timeout`; then whatever else is there."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m, p, b = ch.basic_get(queue, auto_ack=True)
        if m is None:
            time.sleep(0.02)
        else:
            out.append((m, p, b))
    return out + get_all(ch, queue)


def pump(conn, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)


def expect_channel_error(code, text):
    return _ErrorCheck(pika.exceptions.ChannelClosedByBroker, code, text)


def expect_connection_error(code, text):
    return _ErrorCheck(pika.exceptions.ConnectionClosedByBroker, code, text)


class _ErrorCheck:
    def __init__(self, cls, code, text):
        self.cls, self.code, self.text = cls, code, text
        self._raises = pytest.raises(cls)

    def __enter__(self):
        self.info = self._raises.__enter__()
        return self.info

    def __exit__(self, et, ev, tb):
        if et is not None and not issubclass(et, self.cls) and issubclass(et, pika.exceptions.AMQPError):
            raise AssertionError(f"expected {self.cls.__name__}: ({self.code}) {self.text!r}, "
                                 f"got {ev!r}") from ev
        r = self._raises.__exit__(et, ev, tb)
        e = self.info.value
        assert (e.reply_code, e.reply_text) == (self.code, amqp_reply_text(self.text))
        return r


def exchange_exists(conn, ex):
    c = conn.channel()
    try:
        c.exchange_declare(ex, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404, e
        return False
    c.close()
    return True


# --------------------------------------------------------------------------
# transactions
# --------------------------------------------------------------------------

def test_tx_publishes_invisible_until_commit(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    tx = conn.channel()
    tx.tx_select()
    tx.basic_publish("", q, b"1")
    tx.basic_publish("", q, b"2")
    tx.queue_declare(q, passive=True)  # the publishes have reached the broker
    pump(conn, 0.1)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.basic_get(q, auto_ack=True)[0] is None
    tx.tx_commit()
    assert bodies(ch, q) == [b"1", b"2"]


def test_tx_rollback_discards_publishes(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    tx = conn.channel()
    tx.tx_select()
    tx.basic_publish("", q, b"rolled back")
    tx.tx_rollback()
    tx.tx_commit()  # nothing left to commit
    assert ch.basic_get(q, auto_ack=True)[0] is None
    # the channel stays transactional
    tx.basic_publish("", q, b"committed")
    tx.queue_declare(q, passive=True)
    assert ch.basic_get(q, auto_ack=True)[0] is None
    tx.tx_commit()
    assert bodies(ch, q) == [b"committed"]


def test_tx_uncommitted_publishes_dropped_when_channel_closes(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    tx = conn.channel()
    tx.tx_select()
    tx.basic_publish("", q, b"never")
    tx.close()
    pump(conn, 0.1)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def _two_unacked(conn, ch, q):
    pch = confirmed(conn)
    pch.basic_publish("", q, b"a")
    pch.basic_publish("", q, b"b")
    tx = conn.channel()
    tx.tx_select()
    tags = []
    for _ in range(2):
        m, _, _ = tx.basic_get(q, auto_ack=False)
        tags.append(m.delivery_tag)
    return tx, tags


def test_tx_acks_take_effect_on_commit(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    tx, tags = _two_unacked(conn, ch, q)
    tx.basic_ack(tags[0])
    tx.basic_ack(tags[1])
    tx.tx_commit()
    tx.close()
    pump(conn, 0.1)
    assert ch.basic_get(q, auto_ack=True)[0] is None


def test_tx_acks_without_commit_are_void_when_channel_closes(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    tx, tags = _two_unacked(conn, ch, q)
    tx.basic_ack(tags[1], multiple=True)
    tx.close()
    got = get_n(ch, q, 2)
    assert [(b, m.redelivered) for m, _, b in got] == [(b"a", True), (b"b", True)]


def test_tx_rollback_leaves_acked_messages_unacked(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    tx, tags = _two_unacked(conn, ch, q)
    tx.basic_ack(tags[0])
    tx.basic_ack(tags[1])
    tx.tx_rollback()
    # still unacked: the delivery tags are valid, and an ack of one is committed
    tx.basic_ack(tags[0])
    tx.tx_commit()
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    # the other one comes back when the channel closes
    tx.close()
    got = get_n(ch, q, 1)
    assert [(b, m.redelivered) for m, _, b in got] == [(b"b", True)]


def test_tx_reject_requeue_takes_effect_on_commit(conn, ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    pch = confirmed(conn)
    pch.basic_publish("", q, b"x")
    tx = conn.channel()
    tx.tx_select()
    m, _, _ = tx.basic_get(q, auto_ack=False)
    tx.basic_reject(m.delivery_tag, requeue=True)
    tx.queue_declare(q, passive=True)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    tx.tx_commit()
    got = get_all(ch, q)
    assert [(b, m.redelivered) for m, _, b in got] == [(b"x", True)]


def test_tx_commit_applies_publishes_and_acks_together(conn, ch, name):
    src, dst = name("src"), name("dst")
    ch.queue_declare(src, exclusive=True)
    ch.queue_declare(dst, exclusive=True)
    pch = confirmed(conn)
    pch.basic_publish("", src, b"work")
    tx = conn.channel()
    tx.tx_select()
    m, _, body = tx.basic_get(src, auto_ack=False)
    tx.basic_publish("", dst, body + b" done")
    tx.basic_ack(m.delivery_tag)
    tx.tx_commit()
    tx.close()
    pump(conn, 0.1)
    assert bodies(ch, src) == []
    assert bodies(ch, dst) == [b"work done"]


def test_confirm_select_on_tx_channel_refused(ch):
    ch.tx_select()
    with expect_channel_error(406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode"):
        ch.confirm_delivery()


def test_tx_select_on_confirm_channel_refused(ch):
    ch.confirm_delivery()
    with expect_channel_error(406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode"):
        ch.tx_select()


def test_tx_select_twice_is_fine(ch):
    ch.tx_select()
    ch.tx_select()
    ch.tx_commit()
    ch.tx_rollback()


def test_tx_rollback_without_select(ch):
    with expect_channel_error(406, "PRECONDITION_FAILED - channel is not transactional"):
        ch.tx_rollback()


# --------------------------------------------------------------------------
# exchanges
# --------------------------------------------------------------------------

def test_alternate_exchange_takes_unroutable_messages(conn, ch, name):
    main, ae = name("main"), name("ae")
    q, aq = name("q"), name("aq")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.queue_declare(aq, exclusive=True)
    ch.queue_bind(aq, ae)
    ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": ae})
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, main, "k")
    pch = confirmed(conn)
    returned = []
    pch.add_on_return_callback(lambda *a: returned.append(a))
    pch.basic_publish(main, "k", b"routed", mandatory=True)
    # not returned: the alternate exchange routed it (pika would raise UnroutableError)
    pch.basic_publish(main, "other", b"unroutable", mandatory=True,
                      properties=pika.BasicProperties(headers={"h": 1}))
    pump(conn, 0.1)
    assert returned == []
    assert bodies(ch, q) == [b"routed"]
    got = get_all(ch, aq)
    assert [(m.exchange, m.routing_key, b) for m, _, b in got] == [(main, "other", b"unroutable")]
    assert got[0][1].headers == {"h": 1}


def test_alternate_exchanges_chain(conn, ch, name):
    main, ae1, ae2 = name("main"), name("ae1"), name("ae2")
    q1, q2 = name("q1"), name("q2")
    ch.exchange_declare(ae2, "fanout", auto_delete=True)
    ch.exchange_declare(ae1, "direct", auto_delete=True, arguments={"alternate-exchange": ae2})
    ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": ae1})
    ch.queue_declare(q1, exclusive=True)
    ch.queue_declare(q2, exclusive=True)
    ch.queue_bind(q1, ae1, "k1")
    ch.queue_bind(q2, ae2)
    pch = confirmed(conn)
    pch.basic_publish(main, "k1", b"to ae1", mandatory=True)
    pch.basic_publish(main, "zz", b"to ae2", mandatory=True)
    assert bodies(ch, q1) == [b"to ae1"]
    assert bodies(ch, q2) == [b"to ae2"]


def test_missing_alternate_exchange_mandatory_returned(conn, ch, name):
    main = name("main")
    ch.exchange_declare(main, "direct", auto_delete=True, arguments={"alternate-exchange": name("missing")})
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, main, "k")  # keeps the auto-delete exchange alive
    pch = confirmed(conn)
    returned = []
    pch.add_on_return_callback(lambda c, method, props, body: returned.append((method, body)))
    with pytest.raises(pika.exceptions.UnroutableError):
        pch.basic_publish(main, "x", b"lost", mandatory=True)
    pump(conn, 0.05)
    assert [(m.reply_code, m.reply_text, m.exchange, m.routing_key, b) for m, b in returned] == \
        [(312, "NO_ROUTE", main, "x", b"lost")]


def test_redeclare_exchange_with_different_alternate_exchange(ch, name):
    main, ae = name("main"), name("ae")
    ch.exchange_declare(main, "direct", auto_delete=False, arguments={"alternate-exchange": ae})
    try:
        with expect_channel_error(406, f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange "
                                       f"'{main}' in vhost '/': received 'zz' but current is '{ae}'"):
            ch.exchange_declare(main, "direct", auto_delete=False, arguments={"alternate-exchange": "zz"})
    finally:
        ch.connection.channel().exchange_delete(main)


def test_publish_to_internal_exchange_refused(conn, ch, name):
    ex = name("internal")
    ch.exchange_declare(ex, "direct", auto_delete=False, internal=True)
    try:
        with expect_channel_error(403, f"ACCESS_REFUSED - cannot publish to internal exchange '{ex}' in vhost '/'"):
            ch.basic_publish(ex, "k", b"x")
            ch.exchange_declare(ex, passive=True)  # sync point
    finally:
        conn.channel().exchange_delete(ex)


def test_internal_exchange_reachable_through_bindings_and_alternate_exchange(conn, ch, name):
    src, internal, other = name("src"), name("internal"), name("other")
    q = name("q")
    ch.exchange_declare(src, "topic", auto_delete=True)
    ch.exchange_declare(internal, "direct", auto_delete=True, internal=True)
    ch.exchange_declare(other, "direct", auto_delete=True, arguments={"alternate-exchange": internal})
    ch.exchange_bind(internal, src, "#")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, internal, "a.b")
    pch = confirmed(conn)
    pch.basic_publish(src, "a.b", b"via binding")
    pch.basic_publish(other, "a.b", b"via alternate exchange")
    assert bodies(ch, q) == [b"via binding", b"via alternate exchange"]


def test_exchange_to_exchange_binding(conn, ch, name):
    src, dst = name("src"), name("dst")
    q_dst, q_src = name("qdst"), name("qsrc")
    ch.exchange_declare(src, "topic", auto_delete=True)
    ch.exchange_declare(dst, "direct", auto_delete=True)
    ch.exchange_bind(dst, src, "a.*")
    ch.queue_declare(q_dst, exclusive=True)
    ch.queue_bind(q_dst, dst, "a.b")
    ch.queue_declare(q_src, exclusive=True)
    ch.queue_bind(q_src, src, "#")
    pch = confirmed(conn)
    pch.basic_publish(src, "a.b", b"1")  # src -> dst -> q_dst, and src -> q_src
    pch.basic_publish(src, "a.c", b"2")  # src -> dst (no queue for a.c), and src -> q_src
    pch.basic_publish(src, "b.b", b"3")  # not to dst
    assert bodies(ch, q_dst) == [b"1"]
    assert bodies(ch, q_src) == [b"1", b"2", b"3"]
    # a queue reached along two paths gets one copy
    ch.queue_bind(q_dst, src, "a.b")
    pch.basic_publish(src, "a.b", b"once")
    assert bodies(ch, q_dst) == [b"once"]
    ch.exchange_unbind(dst, src, "a.*")
    ch.queue_unbind(q_dst, src, "a.b")
    pch.basic_publish(src, "a.b", b"4")
    assert bodies(ch, q_dst) == []


def test_exchange_binding_cycle_delivers_once(conn, ch, name):
    x1, x2, q = name("x1"), name("x2"), name("q")
    ch.exchange_declare(x1, "fanout", auto_delete=True)
    ch.exchange_declare(x2, "fanout", auto_delete=True)
    ch.exchange_bind(x2, x1)
    ch.exchange_bind(x1, x2)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x2)
    pch = confirmed(conn)
    pch.basic_publish(x1, "", b"cycle")
    assert bodies(ch, q) == [b"cycle"]


def test_auto_delete_exchange_deleted_when_last_queue_binding_removed(conn, ch, name):
    ex, q1, q2 = name("ad"), name("q1"), name("q2")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    assert exchange_exists(conn, ex)  # never bound: stays
    ch.queue_declare(q1, exclusive=True)
    ch.queue_declare(q2, exclusive=True)
    ch.queue_bind(q1, ex, "k")
    ch.queue_bind(q2, ex, "k")
    ch.queue_unbind(q1, ex, "k")
    assert exchange_exists(conn, ex)
    ch.queue_unbind(q2, ex, "k")
    assert not exchange_exists(conn, ex)


def test_auto_delete_exchange_deleted_with_its_last_bound_queue(conn, ch, name):
    ex, q = name("ad"), name("q")
    ch.exchange_declare(ex, "direct", auto_delete=True)
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, ex, "k1")
    ch.queue_bind(q, ex, "k2")
    ch.queue_delete(q)
    assert not exchange_exists(conn, ex)


def test_auto_delete_exchange_deleted_when_exclusive_queue_goes(broker, conn, name):
    ex = name("ad")
    other = broker.pika_connection()
    try:
        och = other.channel()
        och.exchange_declare(ex, "direct", auto_delete=True)
        q = och.queue_declare("", exclusive=True).method.queue
        och.queue_bind(q, ex, "k")
    finally:
        other.close()
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while exchange_exists(conn, ex):
        assert time.monotonic() < deadline, "auto-delete exchange still there"
        time.sleep(0.05)


def test_auto_delete_exchange_as_source_and_destination_of_exchange_bindings(conn, ch, name):
    ad, other = name("ad"), name("other")
    ch.exchange_declare(other, "fanout", auto_delete=False)
    try:
        # as the source: deleted with its last binding
        ch.exchange_declare(ad, "direct", auto_delete=True)
        ch.exchange_bind(other, ad, "k")
        ch.exchange_unbind(other, ad, "k")
        assert not exchange_exists(conn, ad)
        # as the destination: a binding to it is not one of its bindings
        ch.exchange_declare(ad, "direct", auto_delete=True)
        ch.exchange_bind(ad, other, "")
        ch.exchange_unbind(ad, other, "")
        assert exchange_exists(conn, ad)
        ch.exchange_delete(ad)
    finally:
        conn.channel().exchange_delete(other)


def test_unknown_exchange_type(conn, ch):
    # RabbitMQ 3.10 answers "invalid exchange type" for a name that happens to
    # be an existing Erlang atom ('foo', say), "unknown exchange type" for any
    # other; a fresh random name is always the latter.  In 3.10 it is a
    # connection error, 503 COMMAND_INVALID (3.13 made it a channel error,
    # 406 PRECONDITION_FAILED, with the same text).
    # Warren follows 3.13 (a channel error); the reference RabbitMQ here is Debian's 3.10.
    kind = f"t{uuid.uuid4().hex[:10]}"
    if TARGET == "rabbitmq":
        with expect_connection_error(503, f"COMMAND_INVALID - unknown exchange type '{kind}'"):
            ch.exchange_declare(f"ex-{kind}", kind)
        assert not conn.is_open
    else:
        with expect_channel_error(406, f"PRECONDITION_FAILED - unknown exchange type '{kind}'"):
            ch.exchange_declare(f"ex-{kind}", kind)
        assert conn.is_open


# --------------------------------------------------------------------------
# consumers
# --------------------------------------------------------------------------

def test_exclusive_consume_refused_while_another_connection_consumes(broker, conn, ch, name):
    q = name("q")
    ch.queue_declare(q, auto_delete=False)
    try:
        ch.basic_consume(q, lambda *a: None)
        other = broker.pika_connection()
        try:
            with expect_channel_error(403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"):
                other.channel().basic_consume(q, lambda *a: None, exclusive=True)
        finally:
            other.close()
    finally:
        conn.channel().queue_delete(q)


def test_exclusive_consumer_blocks_others_until_cancelled(broker, conn, ch, name):
    q = name("q")
    ch.queue_declare(q, auto_delete=False)
    try:
        tag = ch.basic_consume(q, lambda *a: None, exclusive=True)
        other = broker.pika_connection()
        try:
            with expect_channel_error(403, f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"):
                other.channel().basic_consume(q, lambda *a: None)
            ch.basic_cancel(tag)
            # free again, for exclusive consumers too
            other.channel().basic_consume(q, lambda *a: None, exclusive=True)
        finally:
            other.close()
    finally:
        conn.channel().queue_delete(q)


def test_consumer_tag_reuse_on_one_channel_is_a_connection_error(broker):
    # pika refuses to send a duplicate tag itself; py-amqp sends it
    c = broker.amqp_connection()
    try:
        ch = c.channel()
        q = ch.queue_declare(f"t.tagreuse.{uuid.uuid4().hex[:8]}", exclusive=True).queue
        ch.basic_consume(q, consumer_tag="mine", callback=lambda m: None)
        # the same tag on another channel, and again after a cancel, is fine
        c.channel().basic_consume(q, consumer_tag="mine", callback=lambda m: None)
        ch.basic_cancel("mine")
        ch.basic_consume(q, consumer_tag="mine", callback=lambda m: None)
        with pytest.raises(amqp.exceptions.NotAllowed) as ei:
            ch.basic_consume(q, consumer_tag="mine", callback=lambda m: None)
        assert (ei.value.reply_code, ei.value.reply_text) == (
            530, amqp_reply_text("NOT_ALLOWED - attempt to reuse consumer tag 'mine'"))
        assert not c.connected
    finally:
        c.collect()


# --------------------------------------------------------------------------
# connection.update-secret
# --------------------------------------------------------------------------

def test_update_secret_answered(conn, name):
    # BlockingConnection.update_secret returns once update-secret-ok arrives
    conn.update_secret("a-new-token", "token rotation")
    assert conn.is_open
    ch = conn.channel()
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"still works")
    assert bodies(ch, q) == [b"still works"]


# --------------------------------------------------------------------------
# channel_max and crossed channel.close (client fidelity)
# --------------------------------------------------------------------------

def test_channel_max_counts_open_channels_not_their_numbers(broker):
    """RabbitMQ limits how many channels are open: any number 1..65535 may be used while fewer
    than channel_max are open; one more closes the connection with 530."""
    c = broker.pika_connection(channel_max=3)
    try:
        first = c.channel(channel_number=1)
        c.channel(channel_number=65535)
        c.channel(channel_number=40000)
        first.close()
        c.channel(channel_number=1000)
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            c.channel(channel_number=7)
        assert (e.value.reply_code, e.value.reply_text) == (
            530, "NOT_ALLOWED - number of channels opened (3) has reached the negotiated channel_max (3)")
    finally:
        if c.is_open:
            c.close()


def test_closing_right_after_a_refused_publish_is_a_normal_close(broker, name):
    """The broker closes the channel (404 no exchange) while pika closes it too: both sides' closes
    cross, and the connection still closes cleanly (no 504 for pika's late close-ok)."""
    for _ in range(10):
        c = broker.pika_connection()
        ch = c.channel()
        ch.basic_publish(name("missing"), "k", b"x")
        c.close()
        assert c.is_closed
    c = broker.pika_connection()
    ch = c.channel()
    ch.basic_publish(name("missing"), "k", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.close()
    c.process_data_events(time_limit=0.2)
    assert c.is_open, "one channel's close must not take the connection down"
    c.channel().queue_declare(name("alive"), exclusive=True)
    c.close()
