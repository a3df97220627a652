"""Policies set with the broker's command-line tool (``rabbitmqctl set_policy`` on RabbitMQ,
``brokerctl set_policy`` on Warren: the same verbs and flags), run against both: a length limit by
policy on new and existing queues, the queue's own lower argument winning, an operator policy
lowering it further, the highest priority applying, a dead-letter exchange by policy and the
queue's own winning, OpenStack's negative-lookahead pattern, and validation refusals.
"""

from __future__ import annotations

import re
import time

import pika
import pytest


@pytest.fixture
def conn(broker):
    c = broker.pika_connection()
    yield c
    if c.is_open:
        c.close()


@pytest.fixture
def ch(conn):
    c = conn.channel()
    c.confirm_delivery()
    return c


@pytest.fixture
def policies(broker):
    """Sets policies for the test and clears them afterwards."""
    made = []

    def set_policy(name, pattern, definition, *flags, operator=False):
        verb = "set_operator_policy" if operator else "set_policy"
        code, out = broker.ctl(verb, *flags, name, pattern, definition)
        assert code == 0, out
        made.append((name, operator))

    yield set_policy
    for name, operator in made:
        broker.ctl("clear_operator_policy" if operator else "clear_policy", name)


def prefix_of(q):
    """The part of a name the `name` fixture gives every queue of a test, as a pattern."""
    return re.escape(q.rsplit(".", 2)[0] + ".")


def fill(ch, q, n):
    for i in range(n):
        ch.basic_publish("", q, f"m{i}".encode())


def count(ch, q):
    return ch.queue_declare(q, passive=True).method.message_count


def settle(predicate, timeout=10.0):
    """Policies reach queues asynchronously on RabbitMQ: waits for `predicate`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the policy did not take effect"
        time.sleep(0.1)


def test_a_length_limit_by_policy_applies_to_existing_and_new_queues(ch, name, policies):
    before, after, own = name("before"), name("after"), name("own")
    prefix = prefix_of(before)
    for q in (before, own):
        ch.queue_declare(q, exclusive=True,
                         arguments={"x-max-length": 2} if q == own else None)
    fill(ch, before, 5)
    # OpenStack's negative lookahead, kept to this test's queues.
    policies("limit", rf"^(?!{prefix}\d+\.skip){prefix}", '{"max-length":3}', "--apply-to", "queues")
    settle(lambda: count(ch, before) == 3)
    ch.queue_declare(after, exclusive=True)
    skip = name("skip")
    ch.queue_declare(skip, exclusive=True)
    fill(ch, after, 5)
    fill(ch, own, 5)
    fill(ch, skip, 5)
    assert (count(ch, after), count(ch, own), count(ch, skip)) == (3, 2, 5)
    # An operator policy lower still wins; a higher-priority policy replaces the first.
    policies("cap", rf"^{prefix}\d+\.after$", '{"max-length":1}', operator=True)
    settle(lambda: count(ch, after) == 1)
    policies("wider", rf"^{prefix}", '{"max-length":4}', "--priority", "9", "--apply-to", "queues")
    fill(ch, before, 5)
    settle(lambda: count(ch, before) == 4)


def test_dead_lettering_by_policy_and_the_queues_own_exchange_wins(ch, name, policies):
    work, own, dlq, own_dlq = name("work"), name("own"), name("dlq"), name("own-dlq")
    prefix = prefix_of(work)
    for q in (dlq, own_dlq):
        ch.queue_declare(q, exclusive=True)
    policies("dl", rf"^{prefix}\d+\.(work|own)$",
             f'{{"message-ttl":50,"dead-letter-exchange":"","dead-letter-routing-key":"{dlq}"}}',
             "--apply-to", "queues")
    ch.queue_declare(work, exclusive=True)
    ch.queue_declare(own, exclusive=True, arguments={"x-dead-letter-exchange": "",
                                                     "x-dead-letter-routing-key": own_dlq})
    settle(lambda: True)
    time.sleep(0.5)  # RabbitMQ applies a policy to a new queue a moment after its declare
    fill(ch, work, 2)
    fill(ch, own, 1)
    settle(lambda: (count(ch, dlq), count(ch, own_dlq)) == (2, 1))


def test_invalid_policies_are_refused(broker):
    for definition, text in [
        ('{"message-ttl":-1}', "-1 is not a valid message TTL"),
        ('{"foo":"bar"}', "are not recognised policy settings"),
    ]:
        code, out = broker.ctl("set_policy", "bad", ".*", definition)
        assert code != 0, out
        assert text in out, out
    code, out = broker.ctl("set_policy", "--apply-to", "nothing", "bad", ".*", '{"max-length":1}')
    assert code != 0 and "apply-to 'nothing' unrecognised" in out, out


def test_an_alternate_exchange_by_policy_and_the_exchanges_own_argument_wins(ch, name, policies):
    orders, billing, ae, own_ae = name("orders"), name("billing"), name("ae"), name("own-ae")
    unrouted, own_unrouted = name("unrouted"), name("own-unrouted")
    ch.exchange_declare(ae, "fanout", auto_delete=True)
    ch.exchange_declare(own_ae, "fanout", auto_delete=True)
    ch.exchange_declare(orders, "direct", auto_delete=True)
    ch.exchange_declare(billing, "direct", auto_delete=True, arguments={"alternate-exchange": own_ae})
    for q, x in ((unrouted, ae), (own_unrouted, own_ae)):
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, x)
    policies("ae", rf"^{prefix_of(orders)}\d+\.(orders|billing)$", f'{{"alternate-exchange":"{ae}"}}',
             "--apply-to", "exchanges")

    def routed():
        ch.basic_publish(orders, "nobody", b"x")
        return count(ch, unrouted) > 0

    settle(routed)  # RabbitMQ applies the policy a moment after set_policy returns
    ch.basic_publish(billing, "nobody", b"x")
    settle(lambda: count(ch, own_unrouted) == 1)
    assert count(ch, own_unrouted) == 1
