"""Arguments OpenStack deployments send that Warren accepts on purpose (DESIGN: "never fail a declare
that RabbitMQ would accept"), and the delivery limit Warren honours on every queue type (stream queues: test_streams.py).
Where RabbitMQ 3.10 behaves differently (it ignores x-delivery-limit on classic queues), the test
runs against Warren only.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from conftest import TARGET

warren_only = pytest.mark.skipif(TARGET == "rabbitmq", reason="Warren's own semantics")


@pytest.fixture
def conn(broker):
    c = broker.pika_connection()
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


def test_ha_policy_argument_is_accepted(ch, name):
    q = name("q")
    ch.queue_declare(q, arguments={"x-ha-policy": "all"}, exclusive=True)
    ch.queue_declare(q, arguments={"x-ha-policy": "all"}, exclusive=True)  # an equivalent redeclare


@warren_only
def test_in_memory_limits_are_accepted_on_any_queue(ch, name):
    # oslo.messaging sends them with its quorum options; RabbitMQ 3.10 refuses them on classic
    # queues, Warren accepts and ignores them everywhere (it never fails such a declare).
    q = name("q")
    args = {"x-max-in-memory-length": 10, "x-max-in-memory-bytes": 1000}
    ch.queue_declare(q, arguments=args, exclusive=True)
    ch.queue_declare(q, arguments=args, exclusive=True)


def test_cancel_on_ha_failover_consumer_argument_is_accepted(ch, name):
    q = name("q")
    ch.queue_declare(q, exclusive=True)
    tag = ch.basic_consume(q, lambda *a: None, arguments={"x-cancel-on-ha-failover": True})
    ch.basic_cancel(tag)


def test_quorum_queue_is_accepted_and_keeps_its_type(ch, name):
    q = name("q")
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        # Redeclaring with another type is refused: the queue kept its type.
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare(q, durable=True, arguments={"x-queue-type": "classic"})
        assert e.value.args[0] == 406
        assert "inequivalent arg 'x-queue-type'" in e.value.args[1]
    finally:
        ch2 = ch.connection.channel()
        ch2.queue_delete(q)


@warren_only
def test_delivery_limit_dead_letters_after_that_many_returns(ch, name):
    q, dlq = name("q"), name("dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_declare(q, exclusive=True, arguments={
        "x-delivery-limit": 2, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison")
    for attempt in range(3):
        method, _, body = ch.basic_get(q)
        assert body == b"poison", f"delivery {attempt + 1}"
        ch.basic_nack(method.delivery_tag, requeue=True)
    # The third return exceeds the limit of 2: the message is dead-lettered, not requeued.
    assert ch.basic_get(q)[0] is None
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    assert props.headers["x-first-death-reason"] == "delivery_limit"
