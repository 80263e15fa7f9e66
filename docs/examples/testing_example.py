"""
A test of an application's own code against a real broker on a Clock, with
stomptw.testing: no sockets, no running reactor. Run it with pytest.
"""

from stomptw.testing import BrokerOnClock


def publish_order(broker, number: int) -> None:
    """The application's own code: it publishes through the broker it embeds."""
    broker.send("/topic/orders", {"content-type": "text/plain"}, b"order %d" % number)


def test_orders_reach_the_dashboard():
    env = BrokerOnClock(heartbeat_send_ms=1000)
    dashboard = env.connect(heart_beat="0,1000")
    dashboard.send("SUBSCRIBE", destination="/topic/orders", id="1")

    publish_order(env.broker, 42)

    (message,) = dashboard.frames()
    assert message.body == b"order 42"
    env.advance(1.0)  # a heart-beat is due
    assert dashboard.transport.value() == b"\n"
