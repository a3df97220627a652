"""oslo.messaging on a three-node Warren cluster as OpenStack deploys it (issue 13, HA11): quorum
queues for topics and notifications (``rabbit_quorum_queue``), reply and fanout queues as quorum
queues too (``rabbit_transient_quorum_queue``) or as classic queues on the node the service is
connected to, three hosts in the transport URL, and kill -9 of a node while calls, casts and
notifications go on: calls succeed again within the failover window, and every notification the
notifier sent arrives.

Warren only (it starts its own processes)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from oslo_config import cfg

import oslo_messaging as messaging
from oslo_messaging import conffixture

from conftest import TARGET
from cluster_processes import NODES, Cluster, wait

pytestmark = pytest.mark.skipif(TARGET != "warren", reason="starts its own Warren cluster")

CALL_TIMEOUT = 5
#: A call issued right after the kill may time out while a new leader takes the queue over.
FAILOVER = 30


class Endpoint:
    def __init__(self):
        self.casts = []

    def add(self, ctxt, a, b):
        return a + b

    def record(self, ctxt, value):
        self.casts.append(value)


class Notifications:
    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            self.seen.append(payload["n"])
        return messaging.NotificationResult.HANDLED


def conf_for(cluster: Cluster, tmp_path, transient_quorum: bool, first: int = 1,
             kolla: str = ""):
    """A service's configuration: the transport URL lists every node, ``first`` first (where
    kombu connects); ``kolla`` adds settings to [oslo_messaging_rabbit]."""
    broker = cluster.broker(1)
    order = [first] + [i for i in range(1, NODES + 1) if i != first]
    hosts = ",".join(f"{broker.server_name}:{cluster.port(i)}" for i in order)
    path = tmp_path / f"oslo-{first}.conf"
    path.write_text(f"""\
[DEFAULT]
transport_url = rabbit://{hosts}/
rpc_response_timeout = {CALL_TIMEOUT}
control_exchange = warren_ha

[oslo_messaging_rabbit]
ssl = True
ssl_ca_file = {broker.ca_file}
ssl_cert_file = {broker.cert_file}
ssl_key_file = {broker.key_file}
rabbit_login_method = EXTERNAL
rabbit_quorum_queue = True
rabbit_transient_quorum_queue = {transient_quorum}
rabbit_retry_interval = 1
rabbit_retry_backoff = 1
rabbit_interval_max = 2
kombu_reconnect_delay = 0.5
heartbeat_timeout_threshold = 10
{kolla}""")
    conf = cfg.ConfigOpts()
    conf(args=[], project="warren-ha", default_config_files=[str(path)])
    conffixture.ConfFixture(conf)
    return conf


def call_until_ok(client, deadline: float, **kw) -> int:
    last = None
    while time.monotonic() < deadline:
        try:
            return client.call({}, "add", **kw)
        except (messaging.MessagingTimeout, messaging.MessageDeliveryFailure) as e:
            last = e
    raise AssertionError(f"no call succeeded in time: {last!r}")


@pytest.mark.parametrize("victim,transient_quorum", [
    ("topic-host", True), ("first-host", True), ("reply-home", False)])
def test_openstack_services_keep_working_when_a_node_is_killed(tmp_path, victim, transient_quorum):
    """``topic-host``: the node hosting the RPC topic's queue; ``first-host``: the first host of
    the transport URL, where kombu connects the services first; ``reply-home``, with classic reply
    and fanout queues: the home of the RPC client's reply queue (the node it is connected to), so
    the client declares it again on the node it fails over to."""
    cluster = Cluster(tmp_path)
    cluster.configure()
    started = []
    transports = []
    try:
        for i in range(1, NODES + 1):
            cluster.start(i)
        conf = conf_for(cluster, tmp_path, transient_quorum)
        rpc = messaging.get_rpc_transport(conf)
        notify = messaging.get_notification_transport(conf)
        transports += [rpc, notify]
        topic = f"compute_{uuid.uuid4().hex[:8]}"
        ep = Endpoint()
        server = messaging.get_rpc_server(rpc, messaging.Target(topic=topic, server="c1"), [ep],
                                          executor="threading")
        server.start()
        started.append(server)
        notes = Notifications()
        listener = messaging.get_notification_listener(
            notify, [messaging.Target(topic="notifications")], [notes], executor="threading")
        listener.start()
        started.append(listener)
        client = messaging.get_rpc_client(rpc, messaging.Target(topic=topic), timeout=CALL_TIMEOUT)
        notifier = messaging.Notifier(notify, publisher_id="compute.c1", driver="messaging",
                                      topics=["notifications"])

        assert call_until_ok(client, time.monotonic() + FAILOVER, a=2, b=40) == 42
        sent = []
        for n in range(50):
            notifier.info({}, "compute.instance.update", {"n": n})
            sent.append(n)
        client.cast({}, "record", value="before")

        # The node hosting the topic's queue (oslo's topic queue is named after the topic).
        shard = wait(lambda: next((q["shard"] for q in cluster.queues(1) if q["name"] == topic), None),
                     30, "node 1 lists the topic queue's shard")
        host = wait(lambda: cluster.group(1, shard)["leader"], 30, f"{shard} has a leader")
        if victim == "first-host":
            host = 1
        if victim == "reply-home":
            # The RPC client's reply queue is a classic queue whose home is the node the client
            # is connected to: that node is killed.
            replies = [q for q in cluster.queues(2) if q["name"].startswith("reply_")]
            assert [q["type"] for q in replies] == ["classic"], replies
            names = {cluster.name(i): i for i in range(1, NODES + 1)}
            host = names[replies[0]["node"]]
        cluster.kill(host)
        killed = time.monotonic()
        assert call_until_ok(client, killed + FAILOVER, a=1, b=2) == 3
        recovered = time.monotonic() - killed
        client.cast({}, "record", value="after")
        for n in range(50, 100):
            notifier.info({}, "compute.instance.update", {"n": n})
            sent.append(n)

        wait(lambda: set(notes.seen) >= set(sent), 60,
             f"every notification arrives (missing {sorted(set(sent) - set(notes.seen))[:10]})")
        wait(lambda: {"before", "after"} <= set(ep.casts), 30, "both casts arrive")
        print(f"calls work again {recovered:.2f}s after kill -9 of node {host}; "
              f"notifications sent {len(sent)}, received {len(notes.seen)} "
              f"(duplicates {len(notes.seen) - len(set(notes.seen))})")
    finally:
        for s in started:
            s.stop()
        for s in started:
            t = threading.Thread(target=s.wait, daemon=True)
            t.start()
            t.join(10)
        for t in transports:
            t.cleanup()
        cluster.stop_all()


#: What kolla-ansible adds to the settings above today (test_oslo_kolla.py runs them on one node).
KOLLA = """\
use_queue_manager = true
rabbit_stream_fanout = true
rabbit_qos_prefetch_count = 10
"""


def test_kolla_stream_fanout_reaches_servers_connected_to_every_node(tmp_path):
    """kolla's settings on a cluster: the topic's fanout is one stream queue, whose home is the
    node whose client declared it; servers connected to other nodes read it there, and a client
    connected to a third node publishes to it."""
    from oslo_concurrency import lockutils

    lockutils.set_defaults(str(tmp_path))
    cluster = Cluster(tmp_path)
    cluster.configure()
    started = []
    transports = []
    try:
        for i in range(1, NODES + 1):
            cluster.start(i)
        rpc = {}
        for first in range(1, NODES + 1):
            rpc[first] = messaging.get_rpc_transport(
                conf_for(cluster, tmp_path, True, first=first, kolla=KOLLA))
            transports.append(rpc[first])
        topic = f"compute_{uuid.uuid4().hex[:8]}"
        eps = {}
        for node in (2, 3):
            eps[node] = Endpoint()
            server = messaging.get_rpc_server(
                rpc[node], messaging.Target(topic=topic, server=f"c{node}"), [eps[node]],
                executor="threading")
            server.start()
            started.append(server)
        client = messaging.get_rpc_client(rpc[1], messaging.Target(topic=topic),
                                          timeout=CALL_TIMEOUT)
        assert call_until_ok(client, time.monotonic() + FAILOVER, a=2, b=40) == 42
        streams = [q for q in cluster.queues(1) if q["type"] == "stream"]
        assert [q["name"] for q in streams] == [f"{topic}_fanout"], streams
        # Its home is the node of whichever connection declared it first (kombu may also have
        # moved a service to another host): every server not on the home reads it there.
        names = {cluster.name(i): i for i in range(1, NODES + 1)}
        home = names[streams[0]["node"]]
        print(f"the fanout stream's home is node {home}; servers on nodes 2 and 3")
        fanout = client.prepare(fanout=True)
        sent = [f"m{i}" for i in range(20)]
        for value in sent:
            fanout.cast({}, "record", value=value)
        for node, ep in eps.items():
            wait(lambda ep=ep: len(ep.casts) >= len(sent), 30, f"the fanout casts at c{node}")
        time.sleep(1)  # anything repeated would arrive meanwhile
        for ep in eps.values():
            assert ep.casts == sent
    finally:
        for s in started:
            s.stop()
        for s in started:
            t = threading.Thread(target=s.wait, daemon=True)
            t.start()
            t.join(10)
        for t in transports:
            t.cleanup()
        cluster.stop_all()
