"""Stream queues (``x-queue-type: stream``) as oslo.messaging's ``rabbit_stream_fanout`` uses them,
run against Warren and RabbitMQ alike: the declare rules and texts, consumers that need a prefetch
and manual acks, ``x-stream-offset`` (first, last, next, an offset, a timestamp, an interval) with
the offset carried in every delivery's headers, independent readers, nothing removed by acks, and
the refusals of basic.get, basic.nack/reject, automatic acks and global qos.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pika
import pika.exceptions
import pytest


@pytest.fixture
def conn(broker):
    c = broker.pika_connection()
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def stream(conn, name):
    """A stream queue, deleted afterwards."""
    q = name("s")
    conn.channel().queue_declare(q, durable=True, arguments={"x-queue-type": "stream"})
    yield q
    if conn.is_open:
        conn.channel().queue_delete(q)


def publish(ch, q, bodies):
    ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish("", q, b, pika.BasicProperties(delivery_mode=2))


def read(conn, q, n, offset=None, prefetch=10, timeout=10.0):
    """Consumes `n` messages from `q` starting at `offset`; (body, x-stream-offset) pairs."""
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    got = []
    args = {} if offset is None else {"x-stream-offset": offset}

    def on_message(c, method, props, body):
        got.append((body.decode(), props.headers["x-stream-offset"]))
        c.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(q, on_message, arguments=args)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    ch.basic_cancel(tag)
    ch.close()
    return got


def closed(e):
    return e.value.args[0], e.value.args[1]


def test_a_stream_is_read_from_any_offset_and_each_delivery_says_its_offset(conn, ch, stream):
    publish(ch, stream, [f"m{i}" for i in range(10)])
    everything = read(conn, stream, 10, "first")
    assert [b for b, _ in everything] == [f"m{i}" for i in range(10)]
    offsets = [o for _, o in everything]
    assert offsets == list(range(offsets[0], offsets[0] + 10))
    # Resuming after the last offset seen (what oslo does after a reconnect).
    assert read(conn, stream, 3, offsets[6] + 1) == everything[7:]
    # Acks removed nothing: a second reader reads it all again.
    assert read(conn, stream, 10, "first") == everything
    # "last" starts at the last chunk: what it reads is the newest messages, ending with the last.
    last = read(conn, stream, 10, "last", timeout=1.5)
    assert last and last == everything[-len(last):]


def test_next_is_the_default_and_reads_only_what_comes_after(conn, ch, stream):
    publish(ch, stream, ["old"])
    rch = conn.channel()
    rch.basic_qos(prefetch_count=5)
    got = []
    rch.basic_consume(stream, lambda c, m, p, b: (got.append(b), c.basic_ack(m.delivery_tag)))
    conn.process_data_events(time_limit=0.5)
    publish(ch, stream, ["new"])
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    conn.process_data_events(time_limit=0.3)
    assert got == [b"new"]


def test_a_timestamp_and_an_interval_start_at_the_messages_published_since(conn, ch, stream):
    publish(ch, stream, ["before"])
    time.sleep(1.5)
    since = int(time.time())
    time.sleep(1.1)
    publish(ch, stream, ["after1", "after2"])
    got = read(conn, stream, 2, datetime.fromtimestamp(since, tz=timezone.utc))
    assert [b for b, _ in got] == ["after1", "after2"]
    got = read(conn, stream, 3, "1m")
    assert [b for b, _ in got] == ["before", "after1", "after2"]


def test_prefetch_bounds_what_a_stream_consumer_holds(conn, ch, stream):
    publish(ch, stream, [f"m{i}" for i in range(20)])
    rch = conn.channel()
    rch.basic_qos(prefetch_count=3)
    held = []
    rch.basic_consume(stream, lambda c, m, p, b: held.append(m.delivery_tag),
                      arguments={"x-stream-offset": "first"})
    conn.process_data_events(time_limit=1.0)
    assert len(held) == 3
    rch.basic_ack(held[-1], multiple=True)
    conn.process_data_events(time_limit=1.0)
    assert len(held) == 6


def test_declare_rules_and_texts(ch, name):
    q = name("s")
    for flags, prop in [({"exclusive": True}, "exclusive-owner"), ({"auto_delete": True}, "auto-delete"),
                        ({}, "non-durable")]:
        c = ch.connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            c.queue_declare(q, durable=not flags == {}, arguments={"x-queue-type": "stream"}, **flags)
        assert closed(e) == (406, f"PRECONDITION_FAILED - invalid property '{prop}' for queue '{q}' in vhost '/'")
    c = ch.connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.queue_declare(q, durable=True, arguments={"x-queue-type": "stream", "x-message-ttl": 1000})
    assert closed(e) == (406, f"PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue '{q}' in vhost '/' "
                              "of queue type rabbit_stream_queue")
    c = ch.connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.queue_declare(q, durable=True, arguments={"x-queue-type": "stream", "x-max-age": "10x"})
    assert closed(e) == (406, f"PRECONDITION_FAILED - invalid arg 'x-max-age' for queue '{q}' in vhost '/': "
                              "invalid_max_age")
    c = ch.connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.queue_declare(q, durable=True, arguments={"x-queue-type": "stream",
                                                     "x-stream-max-segment-size-bytes": 4_000_000_000})
    assert closed(e) == (406, "PRECONDITION_FAILED - Exceeded max value for x-stream-max-segment-size-bytes")
    # What oslo.messaging declares (rabbit_transient_queues_ttl as x-max-age) is accepted, twice.
    c = ch.connection.channel()
    args = {"x-queue-type": "stream", "x-max-age": "1800s"}
    c.queue_declare(q, durable=True, arguments=args)
    c.queue_declare(q, durable=True, arguments=args)
    c.queue_delete(q)


def test_consumers_need_a_prefetch_and_manual_acks(conn, stream):
    c = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.basic_consume(stream, lambda *a: None)
    assert closed(e) == (406, f"PRECONDITION_FAILED - consumer prefetch count is not set for "
                              f"'queue '{stream}' in vhost '/''")
    c = conn.channel()
    c.basic_qos(prefetch_count=10)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c.basic_consume(stream, lambda *a: None, arguments={"x-stream-offset": "10x"})
    assert closed(e) == (406, f"PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue '{stream}' in "
                              "vhost '/': {invalid_stream_offset_arg,{longstr,<<\"10x\">>}}")


def test_automatic_acks_are_refused_with_540(broker, stream):
    c = broker.pika_connection()
    ch = c.channel()
    ch.basic_qos(prefetch_count=10)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        ch.basic_consume(stream, lambda *a: None, auto_ack=True)
        c.process_data_events(time_limit=2)
    assert closed(e) == (540, f"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream "
                              f"queues queue '{stream}' in vhost '/'")


def test_basic_get_is_refused_with_540(broker, stream):
    c = broker.pika_connection()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        c.channel().basic_get(stream)
        c.process_data_events(time_limit=2)
    assert closed(e) == (540, f"NOT_IMPLEMENTED - basic.get not supported by stream queues queue "
                              f"'{stream}' in vhost '/'")


def test_nack_is_refused_with_540(broker, stream):
    c = broker.pika_connection()
    ch = c.channel()
    publish(ch, stream, ["m"])
    rch = c.channel()
    rch.basic_qos(prefetch_count=1)
    tags = []
    rch.basic_consume(stream, lambda cc, m, p, b: tags.append(m.delivery_tag),
                      arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + 10
    while not tags and time.monotonic() < deadline:
        c.process_data_events(time_limit=0.1)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        rch.basic_nack(tags[0], requeue=True)
        c.process_data_events(time_limit=2)
    assert closed(e) == (540, f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream "
                              f"queues queue '{stream}' in vhost '/'")
