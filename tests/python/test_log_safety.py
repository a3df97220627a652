"""Nothing a client chooses is written raw into the broker log (PROBE F9): a vhost name with a
newline in connection.open, or a queue name with one in a refused declare, shows up escaped, so it
cannot forge a log line. Warren only (it reads its own broker's log)."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from conftest import TARGET
from test_durability import WarrenNode

pytestmark = pytest.mark.skipif(TARGET == "rabbitmq", reason="reads Warren's own log")

FAKE = "2026-12-05T12:00:00.000000Z  INFO warren: FAKE admin login ok"


def test_client_chosen_names_cannot_forge_log_lines(tmp_path):
    node = WarrenNode(tmp_path)
    node.start()
    try:
        broker = node.broker()
        params = broker.pika_params()
        params.virtual_host = "nope\n" + FAKE
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(params)
        c = broker.pika_connection()
        ch = c.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.queue_declare("amq.x\n" + FAKE)
        c.close()
        node.stop()
        lines = node.output().splitlines()
        assert not any(line.startswith(FAKE) for line in lines), "a forged line reached the log"
        assert any("nope\\n2026-12-05" in line for line in lines), "the refusal is logged, escaped"
    finally:
        node.kill()
