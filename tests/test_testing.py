"""
The public testing helpers (:mod:`stomptw.testing`) as an embedding
application uses them: a broker on a Clock, in-memory clients, and the
application's own code publishing through the broker.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from stomptw.testing import BrokerOnClock

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "testing_example.py"


def test_clients_exchange_messages_through_a_queue_and_a_topic():
    env = BrokerOnClock()
    a, b = env.connect(), env.connect(version="1.1")
    a.send("SUBSCRIBE", destination="/topic/news", id="n")
    b.send("SUBSCRIBE", destination="/queue/jobs", id="j", ack="client")
    b.send("SEND", b"headline", destination="/topic/news")
    a.send("SEND", b"job", destination="/queue/jobs")
    (news,) = a.frames()
    assert news.body == b"headline" and news.headers["subscription"] == "n"
    (job,) = b.frames()
    assert job.body == b"job"
    b.send("ACK", subscription="j", message_id=job.headers["message-id"])
    assert env.broker.destinations["/queue/jobs"].count == 0  # acknowledged


def test_application_code_publishes_to_a_client():
    env = BrokerOnClock()
    dashboard = env.connect()
    dashboard.send("SUBSCRIBE", destination="/topic/orders", id="1")

    def publish_order(broker, number: int) -> None:  # the application's code
        broker.send("/topic/orders", {"content-type": "text/plain"}, b"order %d" % number)

    publish_order(env.broker, 42)
    (message,) = dashboard.frames()
    assert message.body == b"order 42"
    assert message.headers["content-type"] == "text/plain"


def test_the_clock_drives_heart_beats_and_timeouts():
    env = BrokerOnClock(heartbeat_send_ms=1000, heartbeat_receive_ms=1000)
    client = env.connect(heart_beat="1000,1000")
    client.transport.clear()
    env.advance(1.0)
    assert client.transport.value() == b"\n"
    env.advance(3.0)  # the client sent nothing for three intervals
    (error,) = client.frames()
    assert error.headers["message"] == "heart-beat timeout"
    assert client.closing


def test_config_overrides_and_a_failed_connect_are_reported():
    env = BrokerOnClock(server_name="test-broker")
    connected = env.connect()
    assert connected.frames() == []
    client = env.connect(version=None)
    with pytest.raises(AssertionError, match="expected CONNECTED"):
        client.connect("2.0")
    assert env.config.server_name == "test-broker"


def test_the_example_in_the_embedding_docs_passes():
    namespace = runpy.run_path(str(EXAMPLE))
    namespace["test_orders_reach_the_dashboard"]()
