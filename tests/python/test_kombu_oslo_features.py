"""Client-library features OpenStack relies on, through kombu and oslo.messaging.

kombu: SimpleQueue/SimpleBuffer round trips across connections, per-message expiration,
priority queues (``Queue(..., max_priority=10)``). oslo.messaging: an RPC caller's reply queue
(``reply_<uuid>``, declared with ``x-expires`` = rabbit_transient_queues_ttl) goes away once the
caller is gone, and a new caller/server pair still works afterwards.

Every expectation holds against RabbitMQ (WARREN_TEST_TARGET=rabbitmq).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

import amqp.exceptions
import pika
import pika.exceptions
import pytest
from kombu import Consumer, Exchange, Producer, Queue

from conftest import DELIVERY_TIMEOUT, RPC_TIMEOUT

#: rabbit_transient_queues_ttl for the oslo tests, in seconds (the option's minimum that is not
#: "never": 0 disables x-expires).
REPLY_QUEUE_TTL = 2
STOP_TIMEOUT = 10


def uid(prefix):
    return f"kombu-oslo.{prefix}.{uuid.uuid4().hex[:10]}"


@pytest.fixture
def conn(broker):
    c = broker.kombu_connection()
    c.connect()
    yield c
    c.release()


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


def drain_quietly(conn, seconds):
    """Processes deliveries for `seconds` (to see that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            conn.drain_events(timeout=min(left, 0.2))
        except socket.timeout:
            pass


def queue_exists(broker, name) -> bool:
    """Passive declare through pika: True if the queue exists, False on 404 with RabbitMQ's text."""
    connection = broker.pika_connection()
    try:
        ch = connection.channel()
        try:
            ch.queue_declare(name, passive=True)
            return True
        except pika.exceptions.ChannelClosedByBroker as e:
            assert (e.reply_code, e.reply_text) == (404, f"NOT_FOUND - no queue '{name}' in vhost '/'")
            return False
    finally:
        if connection.is_open:
            connection.close()


# --------------------------------------------------------------------------
# kombu
# --------------------------------------------------------------------------

def test_simple_queue_round_trip_between_connections(broker, conn):
    name = uid("simple")
    sender = conn.SimpleQueue(name, serializer="json")
    other = broker.kombu_connection()
    receiver = None
    try:
        sender.put({"text": "héllo", "n": [1, 2.5, None]}, headers={"h": "v"}, priority=3)
        sender.put(b"\x00\xff raw", serializer=None, content_type="application/octet-stream",
                   content_encoding="binary")
        other.connect()
        receiver = other.SimpleQueue(name)
        assert receiver.qsize() == 2
        first = receiver.get(block=True, timeout=DELIVERY_TIMEOUT)
        assert first.payload == {"text": "héllo", "n": [1, 2.5, None]}
        assert first.content_type == "application/json"
        assert first.headers == {"h": "v"}
        assert first.properties["priority"] == 3
        assert first.delivery_info["routing_key"] == name
        first.ack()
        second = receiver.get(block=True, timeout=DELIVERY_TIMEOUT)
        assert (second.body, second.content_type) == (b"\x00\xff raw", "application/octet-stream")
        second.ack()
        with pytest.raises(receiver.Empty):
            receiver.get(block=True, timeout=0.3)
        assert receiver.qsize() == 0
    finally:
        if receiver is not None:
            receiver.close()
        sender.close()
        Queue(name, channel=conn.channel()).delete()
        Exchange(name, channel=conn.channel()).delete()
        other.release()


def test_simple_buffer_round_trip(conn):
    # SimpleBuffer: transient queue (auto-delete, not durable) consumed with no_ack
    name = uid("buffer")
    buf = conn.SimpleBuffer(name, serializer="json")
    try:
        for i in range(3):
            buf.put({"i": i})
        got = [buf.get(block=True, timeout=DELIVERY_TIMEOUT).payload["i"] for _ in range(3)]
        assert got == [0, 1, 2]
        with pytest.raises(buf.Empty):
            buf.get(block=True, timeout=0.3)
    finally:
        buf.close()
        Exchange(name, channel=conn.channel()).delete()


def test_per_message_expiration(conn):
    ex = Exchange(uid("ttl-ex"), type="direct", durable=False, auto_delete=True)
    q = Queue(uid("ttl-q"), exchange=ex, routing_key="k", durable=False, auto_delete=False)
    producer = Producer(conn.channel(), exchange=ex, serializer="json")
    q(conn.default_channel).declare()
    try:
        # kombu takes seconds and sends milliseconds
        producer.publish({"n": "short"}, routing_key="k", expiration=0.2, retry=False)
        producer.publish({"n": "forever"}, routing_key="k", retry=False)
        producer.publish({"n": "long"}, routing_key="k", expiration=60, retry=False)
        time.sleep(0.6)  # the first one expires while nobody consumes
        received = []

        def on_message(body, message):
            received.append((body, message))
            message.ack()

        with Consumer(conn, queues=[q], callbacks=[on_message], accept=["json"]):
            drain(conn, received, 2)
            drain_quietly(conn, 0.3)
        assert [b["n"] for b, _ in received] == ["forever", "long"]
        assert "expiration" not in received[0][1].properties
        assert received[1][1].properties["expiration"] == "60000"
        # one that expires while it is the only message queued: gone as well
        producer.publish({"n": "short again"}, routing_key="k", expiration=0.1, retry=False)
        time.sleep(0.4)
        assert q(conn.default_channel).get(no_ack=True) is None
    finally:
        q(conn.default_channel).delete()


def test_priority_queue(conn):
    ex = Exchange(uid("prio-ex"), type="direct", durable=False, auto_delete=True)
    q = Queue(uid("prio-q"), exchange=ex, routing_key="k", durable=False, auto_delete=False,
              max_priority=10)
    bound = q(conn.default_channel)
    bound.declare()
    try:
        producer = Producer(conn.channel(), exchange=ex, serializer="json")
        # (name, priority): above max_priority counts as max_priority, equal priorities keep their
        # order. kombu's Producer.publish always sends a priority (0 when not given).
        sent = [("a", 1), ("b", 9), ("c", None), ("d", 5), ("e", 200), ("f", 9), ("g", 0)]
        for n, p in sent:
            kw = {} if p is None else {"priority": p}
            producer.publish({"n": n}, routing_key="k", retry=False, **kw)
        _, count, consumers = bound.queue_declare(passive=True)
        assert (count, consumers) == (len(sent), 0)

        received = []

        def on_message(body, message):
            received.append((body["n"], message.properties.get("priority")))
            message.ack()

        ch = conn.channel()
        ch.basic_qos(0, 1, False)  # one at a time: each delivery is the best one queued
        with Consumer(ch, queues=[q], callbacks=[on_message], accept=["json"]):
            drain(conn, received, len(sent))
        assert received == [("e", 200), ("b", 9), ("f", 9), ("d", 5), ("a", 1), ("c", 0), ("g", 0)]
        # a priority queue declared again with another max-priority is not equivalent
        with pytest.raises(amqp.exceptions.PreconditionFailed) as ei:
            Queue(q.name, exchange=ex, routing_key="k", durable=False, max_priority=5)(
                conn.channel()).declare()
        assert ei.value.reply_code == 406
        assert ei.value.reply_text == (
            f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue '{q.name}' in vhost '/': "
            "received '5' but current is '10'")
    finally:
        Queue(q.name, channel=conn.channel()).delete()


# --------------------------------------------------------------------------
# oslo.messaging: reply queues expire once their caller is gone
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oslo_conf(broker, tmp_path_factory):
    from oslo_config import cfg
    from oslo_messaging import conffixture

    path = tmp_path_factory.mktemp("oslo-ttl") / "warren-test.conf"
    path.write_text(f"""\
[DEFAULT]
transport_url = {broker.oslo_transport_url}
rpc_response_timeout = {RPC_TIMEOUT}
control_exchange = warren_ttl_test

[oslo_messaging_rabbit]
ssl = True
ssl_ca_file = {broker.ca_file}
ssl_cert_file = {broker.cert_file}
ssl_key_file = {broker.key_file}
rabbit_login_method = EXTERNAL
rabbit_retry_interval = 1
rabbit_retry_backoff = 1
rabbit_interval_max = 2
kombu_reconnect_delay = 0.5
rabbit_transient_queues_ttl = {REPLY_QUEUE_TTL}
""")
    conf = cfg.ConfigOpts()
    conf(args=[], project="warren-test", default_config_files=[str(path)])
    conffixture.ConfFixture(conf)  # registers every oslo.messaging option group on `conf`
    assert conf.oslo_messaging_rabbit.rabbit_transient_queues_ttl == REPLY_QUEUE_TTL
    yield conf
    conf.reset()


class Endpoint:
    def add(self, ctxt, a, b):
        return a + b


def start_server(transport, topic):
    import oslo_messaging as messaging

    server = messaging.get_rpc_server(transport, messaging.Target(topic=topic, server="s1"),
                                      [Endpoint()], executor="threading")
    server.start()
    return server


def stop_server(server):
    server.stop()
    t = threading.Thread(target=server.wait, daemon=True)
    t.start()
    t.join(STOP_TIMEOUT)
    assert not t.is_alive(), f"RPC server did not stop within {STOP_TIMEOUT}s"


def test_rpc_reply_queue_expires_when_the_caller_is_gone(broker, oslo_conf):
    import oslo_messaging as messaging

    topic = f"ttl_{uuid.uuid4().hex[:10]}"
    server_transport = messaging.get_rpc_transport(oslo_conf)
    client_transport = messaging.get_rpc_transport(oslo_conf)
    server = start_server(server_transport, topic)
    try:
        client = messaging.get_rpc_client(client_transport, messaging.Target(topic=topic), timeout=RPC_TIMEOUT)
        assert client.call({}, "add", a=2, b=40) == 42
        # the reply queue the driver declared for this caller (oslo: 'reply_' + uuid4().hex)
        reply_q = client_transport._driver._reply_q
        assert reply_q and reply_q.startswith("reply_"), reply_q
        assert queue_exists(broker, reply_q)
        # while its caller is alive the queue stays, however long it is idle
        time.sleep(REPLY_QUEUE_TTL + 1)
        assert queue_exists(broker, reply_q)
        assert client.call({}, "add", a=1, b=1) == 2

        # The caller goes away: its connections close and the reply queue is unused from now on.
        # It is neither exclusive nor auto-delete, so it outlives its consumer (a caller that
        # reconnects finds it again) until x-expires. A passive declare counts as a use and
        # restarts that timer (RabbitMQ's queue "stat"), so the queue is looked at only twice.
        client_transport.cleanup()
        client_transport = None
        assert queue_exists(broker, reply_q), "the reply queue went away with its consumer"
        time.sleep(REPLY_QUEUE_TTL + 1.5)
        assert not queue_exists(broker, reply_q), (
            f"reply queue {reply_q} still there {REPLY_QUEUE_TTL + 1.5}s after its last use "
            f"(x-expires {REPLY_QUEUE_TTL * 1000} ms)")

        # a new caller (new transport, new reply queue) works with the same server
        client_transport = messaging.get_rpc_transport(oslo_conf)
        client = messaging.get_rpc_client(client_transport, messaging.Target(topic=topic), timeout=RPC_TIMEOUT)
        assert client.call({}, "add", a=20, b=22) == 42
        assert client_transport._driver._reply_q != reply_q
    finally:
        stop_server(server)
        if client_transport is not None:
            client_transport.cleanup()
        server_transport.cleanup()

    # and a completely new client/server pair too
    topic2 = f"ttl2_{uuid.uuid4().hex[:10]}"
    server_transport = messaging.get_rpc_transport(oslo_conf)
    client_transport = messaging.get_rpc_transport(oslo_conf)
    server = start_server(server_transport, topic2)
    try:
        client = messaging.get_rpc_client(client_transport, messaging.Target(topic=topic2), timeout=RPC_TIMEOUT)
        assert client.call({}, "add", a=3, b=4) == 7
    finally:
        stop_server(server)
        client_transport.cleanup()
        server_transport.cleanup()
