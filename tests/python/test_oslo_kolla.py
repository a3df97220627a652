"""oslo.messaging with the [oslo_messaging_rabbit] settings kolla-ansible generates today
(rabbit_quorum_queue, rabbit_transient_quorum_queue, use_queue_manager, rabbit_stream_fanout with
rabbit_qos_prefetch_count), over TLS with EXTERNAL, against a private ``warren --dev``: RPC calls,
casts, fanout casts (through stream queues) and notifications, and a fanout consumer that
reconnects after a broker restart and resumes its stream after the last offset it saw, losing and
repeating nothing.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from oslo_concurrency import lockutils
from oslo_config import cfg

import oslo_messaging as messaging
from oslo_messaging import conffixture

import rabbitmq_target
from conftest import RPC_TIMEOUT, TARGET, WarrenProcess, _warren_exe

pytestmark = pytest.mark.skipif(TARGET != "warren", reason="restarts a private warren --dev")

STOP_TIMEOUT = 10


@pytest.fixture(scope="module")
def warren(tmp_path_factory):
    base = tmp_path_factory.mktemp("kolla")
    proc = WarrenProcess(_warren_exe(), base / "data", rabbitmq_target.free_port())
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def conf(warren, tmp_path_factory):
    tls = warren.data_dir / "tls"
    path = tmp_path_factory.mktemp("kolla-conf") / "service.conf"
    path.write_text(f"""\
[DEFAULT]
transport_url = rabbit://localhost:{warren.port}/
rpc_response_timeout = {RPC_TIMEOUT}
control_exchange = kolla_test

[oslo_messaging_rabbit]
ssl = True
ssl_ca_file = {tls / "ca.pem"}
ssl_cert_file = {tls / "admin.pem"}
ssl_key_file = {tls / "admin.key"}
rabbit_login_method = EXTERNAL
rabbit_quorum_queue = true
rabbit_transient_quorum_queue = true
use_queue_manager = true
rabbit_stream_fanout = true
rabbit_qos_prefetch_count = 10
rabbit_retry_interval = 1
rabbit_retry_backoff = 1
rabbit_interval_max = 2
kombu_reconnect_delay = 0.5
""")
    # use_queue_manager keeps its counter under an external lock: services set
    # [oslo_concurrency] lock_path, which oslo.concurrency reads from the global configuration.
    lockutils.set_defaults(str(path.parent))
    c = cfg.ConfigOpts()
    c(args=[], project="kolla-test", default_config_files=[str(path)])
    conffixture.ConfFixture(c)
    yield c
    c.reset()


class Endpoint:
    def __init__(self, name):
        self.name = name
        self.casts: list[str] = []
        self.lock = threading.Lock()

    def add(self, ctxt, a, b):
        return a + b

    def whoami(self, ctxt):
        return self.name

    def record(self, ctxt, value):
        with self.lock:
            self.casts.append(value)

    def seen(self):
        with self.lock:
            return list(self.casts)


class Servers:
    def __init__(self):
        self.servers = []

    def start(self, transport, topic, name, endpoint):
        s = messaging.get_rpc_server(transport, messaging.Target(topic=topic, server=name),
                                     [endpoint], executor="threading")
        s.start()
        self.servers.append(s)
        return s

    def stop_all(self):
        for s in self.servers:
            s.stop()
        for s in self.servers:
            t = threading.Thread(target=s.wait, daemon=True)
            t.start()
            t.join(STOP_TIMEOUT)
        self.servers = []


@pytest.fixture
def servers():
    s = Servers()
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def transport(conf):
    t = messaging.get_rpc_transport(conf)
    yield t
    t.cleanup()


def wait_for(predicate, what, timeout=RPC_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def topic(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_calls_casts_fanout_and_notifications_with_kolla_settings(conf, transport, servers):
    t = topic("svc")
    eps = [Endpoint("a"), Endpoint("b")]
    for ep in eps:
        servers.start(transport, t, ep.name, ep)
    client = messaging.get_rpc_client(transport, messaging.Target(topic=t), timeout=RPC_TIMEOUT)
    assert client.call({}, "add", a=40, b=2) == 42
    for ep in eps:
        assert client.prepare(server=ep.name).call({}, "whoami") == ep.name
    client.cast({}, "record", value="one")
    wait_for(lambda: sum(len(ep.seen()) for ep in eps) == 1, "the cast")
    # Fanout goes through the topic's stream queue: every server reads it.
    client.prepare(fanout=True).cast({}, "record", value="all")
    for ep in eps:
        wait_for(lambda ep=ep: "all" in ep.seen(), f"the fanout cast at {ep.name}")
    # Notifications (quorum queues with these settings).
    ntransport = messaging.get_notification_transport(conf)
    got = []

    class Listener:
        def info(self, ctxt, publisher_id, event_type, payload, metadata):
            got.append((event_type, payload))

    targets = [messaging.Target(topic=topic("notifications"))]
    listener = messaging.get_notification_listener(ntransport, targets, [Listener()], executor="threading")
    listener.start()
    try:
        notifier = messaging.Notifier(ntransport, publisher_id="compute.host1", driver="messaging",
                                      topics=[targets[0].topic])
        notifier.info({}, "compute.instance.create.end", {"id": 1})
        wait_for(lambda: got == [("compute.instance.create.end", {"id": 1})], "the notification")
    finally:
        listener.stop()
        listener.wait()
        ntransport.cleanup()


def test_a_fanout_consumer_resumes_its_stream_after_a_broker_restart(warren, transport, servers):
    t = topic("resume")
    ep = Endpoint("s1")
    servers.start(transport, t, "s1", ep)
    client = messaging.get_rpc_client(transport, messaging.Target(topic=t), timeout=RPC_TIMEOUT)
    assert client.call({}, "add", a=1, b=1) == 2
    fanout = client.prepare(fanout=True)
    for i in range(3):
        fanout.cast({}, "record", value=f"m{i}")
    wait_for(lambda: ep.seen() == ["m0", "m1", "m2"], "the first fanout casts")
    warren.stop()
    warren.start()
    # The server reconnects on its own; a call through the restarted broker shows it is back.
    wait_for(lambda: _answers(client), "the RPC server to reconnect", timeout=60)
    for i in range(3, 6):
        fanout.cast({}, "record", value=f"m{i}")
    wait_for(lambda: len(ep.seen()) >= 6, "the fanout casts after the restart")
    time.sleep(1)  # anything repeated would arrive meanwhile
    assert ep.seen() == [f"m{i}" for i in range(6)]


def _answers(client) -> bool:
    try:
        return client.prepare(timeout=3).call({}, "add", a=2, b=2) == 4
    except messaging.MessagingTimeout:
        return False
