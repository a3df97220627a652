"""oslo.messaging over the `rabbit` driver (kombu + py-amqp), TLS and SASL EXTERNAL.

The driver options are set the way OpenStack services set them: an oslo.config
file with an [oslo_messaging_rabbit] section read by a ConfigOpts.  The
transport URL carries no user name: with rabbit_login_method = EXTERNAL the
driver hands kombu an empty user that py-amqp's EXTERNAL mechanism ignores.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from oslo_config import cfg

import oslo_messaging as messaging
from oslo_messaging import conffixture

from conftest import RPC_TIMEOUT

STOP_TIMEOUT = 10


@pytest.fixture(scope="module")
def oslo_conf(broker, tmp_path_factory):
    path = tmp_path_factory.mktemp("oslo") / "warren-test.conf"
    path.write_text(f"""\
[DEFAULT]
transport_url = {broker.oslo_transport_url}
rpc_response_timeout = {RPC_TIMEOUT}
control_exchange = warren_test

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
""")
    conf = cfg.ConfigOpts()
    conf(args=[], project="warren-test", default_config_files=[str(path)])
    # oslo.messaging 18.3 registers its [oslo_messaging_metrics] and
    # [oslo_messaging_tracing] options only on the global cfg.CONF, yet reads
    # them from the ConfigOpts it is given; its ConfFixture registers every
    # option group on a ConfigOpts (constructing it is enough).
    conffixture.ConfFixture(conf)
    yield conf
    conf.reset()


@pytest.fixture(scope="module")
def rpc_transport(oslo_conf):
    t = messaging.get_rpc_transport(oslo_conf)
    yield t
    t.cleanup()


@pytest.fixture(scope="module")
def notify_transport(oslo_conf):
    t = messaging.get_notification_transport(oslo_conf)
    yield t
    t.cleanup()


def topic(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class CalcEndpoint:
    def __init__(self, server_name):
        self.server_name = server_name
        self.casts = []
        self.cast_event = threading.Event()

    def add(self, ctxt, a, b):
        return a + b

    def echo(self, ctxt, value):
        return {"value": value, "server": self.server_name, "ctxt_user": ctxt.get("user")}

    def fail(self, ctxt, why):
        raise ValueError(why)

    def record(self, ctxt, value):
        self.casts.append(value)
        self.cast_event.set()


class Servers:
    """Starts RPC/notification servers and always stops them."""

    def __init__(self):
        self.servers = []

    def start(self, server):
        server.start()
        self.servers.append(server)
        return server

    def stop_all(self):
        errors = []
        for s in self.servers:
            try:
                s.stop()
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)
        for s in self.servers:
            t = threading.Thread(target=s.wait, daemon=True)
            t.start()
            t.join(STOP_TIMEOUT)
            if t.is_alive():
                errors.append(RuntimeError(f"{s} did not stop within {STOP_TIMEOUT}s"))
        self.servers = []
        if errors:
            raise errors[0]


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.stop_all()


def rpc_server(transport, topic_name, server_name, endpoint):
    target = messaging.Target(topic=topic_name, server=server_name)
    return messaging.get_rpc_server(transport, target, [endpoint], executor="threading")


def wait_for(predicate, timeout=RPC_TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_rpc_call_and_cast(rpc_transport, servers):
    t = topic("calc")
    ep = CalcEndpoint("s1")
    servers.start(rpc_server(rpc_transport, t, "s1", ep))
    client = messaging.get_rpc_client(rpc_transport, messaging.Target(topic=t), timeout=RPC_TIMEOUT)
    assert client.call({}, "add", a=2, b=40) == 42
    big = "x" * 300_000  # larger than one frame
    assert client.call({"user": "alice"}, "echo", value={"nested": [1, 2.5, None, big]}) == {
        "value": {"nested": [1, 2.5, None, big]}, "server": "s1", "ctxt_user": "alice"}
    client.cast({}, "record", value="cast-1")
    assert ep.cast_event.wait(RPC_TIMEOUT), "cast not received"
    assert ep.casts == ["cast-1"]
    # a call directed at one server by name
    assert client.prepare(server="s1").call({}, "add", a=1, b=1) == 2


def test_transport_url_with_user_name(broker, oslo_conf, servers):
    # Warren's --dev instructions put the user in the URL; with EXTERNAL the
    # certificate decides, and the URL's user name is not used.
    url = f"rabbit://admin@{broker.server_name}:{broker.port}/"
    transport = messaging.get_rpc_transport(oslo_conf, url=url)
    try:
        t = topic("userurl")
        servers.start(rpc_server(transport, t, "s1", CalcEndpoint("s1")))
        client = messaging.get_rpc_client(transport, messaging.Target(topic=t), timeout=RPC_TIMEOUT)
        assert client.call({}, "add", a=20, b=22) == 42
    finally:
        servers.stop_all()
        transport.cleanup()


def test_rpc_call_remote_exception(rpc_transport, servers):
    t = topic("fail")
    servers.start(rpc_server(rpc_transport, t, "s1", CalcEndpoint("s1")))
    client = messaging.get_rpc_client(rpc_transport, messaging.Target(topic=t), timeout=RPC_TIMEOUT)
    with pytest.raises(ValueError) as ei:
        client.call({}, "fail", why="on purpose")
    assert "on purpose" in str(ei.value)


def test_rpc_call_times_out_without_server(rpc_transport):
    client = messaging.get_rpc_client(rpc_transport, messaging.Target(topic=topic("nobody")), timeout=1)
    t0 = time.monotonic()
    with pytest.raises(messaging.MessagingTimeout):
        client.call({}, "add", a=1, b=2)
    assert time.monotonic() - t0 < 1 + RPC_TIMEOUT


def test_rpc_fanout_cast_reaches_every_server(rpc_transport, servers):
    t = topic("fan")
    eps = [CalcEndpoint("a"), CalcEndpoint("b")]
    for ep in eps:
        servers.start(rpc_server(rpc_transport, t, ep.server_name, ep))
    client = messaging.get_rpc_client(rpc_transport, messaging.Target(topic=t), timeout=RPC_TIMEOUT)
    # the fanout queues are declared when the servers start consuming: make sure both are up
    for ep in eps:
        assert client.prepare(server=ep.server_name).call({}, "echo", value=1)["server"] == ep.server_name
    client.prepare(fanout=True).cast({}, "record", value="to everyone")
    for ep in eps:
        assert ep.cast_event.wait(RPC_TIMEOUT), f"fanout cast did not reach server {ep.server_name}"
    assert [ep.casts for ep in eps] == [["to everyone"], ["to everyone"]]


def test_rpc_calls_are_load_balanced_between_servers(rpc_transport, servers):
    t = topic("lb")
    eps = [CalcEndpoint("a"), CalcEndpoint("b")]
    for ep in eps:
        servers.start(rpc_server(rpc_transport, t, ep.server_name, ep))
    client = messaging.get_rpc_client(rpc_transport, messaging.Target(topic=t), timeout=RPC_TIMEOUT)
    for ep in eps:  # both consuming
        client.prepare(server=ep.server_name).call({}, "add", a=0, b=0)
    seen = {client.call({}, "echo", value=i)["server"] for i in range(6)}
    assert seen == {"a", "b"}


class NotificationCollector:
    def __init__(self):
        self.events = []
        self.received = threading.Event()

    def _record(self, priority, ctxt, publisher_id, event_type, payload, metadata):
        self.events.append((priority, publisher_id, event_type, payload, metadata))
        self.received.set()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record("info", ctxt, publisher_id, event_type, payload, metadata)

    def error(self, ctxt, publisher_id, event_type, payload, metadata):
        self._record("error", ctxt, publisher_id, event_type, payload, metadata)


def test_notifications(notify_transport, servers):
    t = topic("notifications")
    collector = NotificationCollector()
    listener = messaging.get_notification_listener(
        notify_transport, [messaging.Target(topic=t)], [collector], executor="threading")
    servers.start(listener)
    notifier = messaging.Notifier(notify_transport, publisher_id="warren.test", driver="messaging", topics=[t])
    payload = {"id": 7, "name": "instance-1", "tags": ["a", "b"], "ratio": 0.5}
    notifier.info({}, "compute.instance.create.end", payload)
    notifier.error({}, "compute.instance.create.error", {"reason": "boom"})
    wait_for(lambda: len(collector.events) >= 2, what="two notifications")
    (p1, pub1, ev1, pay1, meta1), (p2, pub2, ev2, pay2, _) = collector.events
    assert (p1, pub1, ev1, pay1) == ("info", "warren.test", "compute.instance.create.end", payload)
    assert (p2, pub2, ev2, pay2) == ("error", "warren.test", "compute.instance.create.error", {"reason": "boom"})
    assert "message_id" in meta1 and "timestamp" in meta1


def test_notifications_queued_before_listener_starts(notify_transport, servers):
    # The notifier declares <topic>.<priority> itself, so notifications sent
    # before any listener exists wait in that queue.
    t = topic("early")
    notifier = messaging.Notifier(notify_transport, publisher_id="warren.early", driver="messaging", topics=[t])
    notifier.info({}, "early.event", {"n": 1})
    collector = NotificationCollector()
    servers.start(messaging.get_notification_listener(
        notify_transport, [messaging.Target(topic=t)], [collector], executor="threading"))
    assert collector.received.wait(RPC_TIMEOUT), "queued notification not delivered"
    assert collector.events[0][2:4] == ("early.event", {"n": 1})
