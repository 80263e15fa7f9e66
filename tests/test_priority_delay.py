"""
Priority (the priority header, 0-9, on queues) and delayed delivery
(ActiveMQ's AMQ_SCHEDULED_DELAY): on a Clock, then across a restart and
with stomp.py.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from stomptw.encoding import encode_frame
from stomptw.testing import BrokerOnClock


def send(client, body: str, destination: str = "/queue/jobs", **headers: str) -> None:
    """SEND with the headers as named (ClientSession.send would turn _ into -)."""
    frame = {"destination": destination, **headers}
    client.raw(encode_frame("SEND", frame, body.encode(), "1.2", content_length=True))


def sqlite_broker(tmp_path):
    """A broker on the SQLite store in ``tmp_path``, on the real reactor, opened."""
    from twisted.internet import reactor

    from stomptw.broker import Broker
    from stomptw.config import BrokerConfig
    from stomptw.store import SQLiteStore

    broker = Broker(
        BrokerConfig(data_dir=str(tmp_path)), SQLiteStore(str(tmp_path), reactor, "normal"), reactor
    )
    broker.open()
    return broker


# -- priority ---------------------------------------------------------------------------


def test_higher_priority_first_and_fifo_within_a_priority():
    env = BrokerOnClock()
    producer = env.connect()
    for body, priority in [("a", "1"), ("b", "9"), ("c", None), ("d", "9"), ("e", "1"), ("f", "5")]:
        if priority is None:
            send(producer, body)  # 4, JMS's default
        else:
            send(producer, body, priority=priority)
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/queue/jobs", id="1")
    frames = consumer.frames()
    assert [f.body for f in frames] == [b"b", b"d", b"f", b"c", b"a", b"e"]
    assert frames[0].headers["priority"] == "9"


def test_a_returned_message_goes_back_to_the_front_of_its_priority():
    env = BrokerOnClock()
    producer = env.connect()
    send(producer, "low", priority="1")
    consumer = env.connect()
    consumer.send(
        "SUBSCRIBE", destination="/queue/jobs", id="1", ack="client", **{"prefetch-count": "1"}
    )
    (low,) = consumer.frames()
    send(producer, "high", priority="8")
    send(producer, "low2", priority="1")
    consumer.send("NACK", id=low.headers["ack"])
    frames = consumer.frames()
    assert [f.body for f in frames] == [b"high"]
    consumer.send("ACK", id=frames[0].headers["ack"])
    (again,) = consumer.frames()
    assert again.body == b"low" and again.headers["redelivered"] == "true"


def test_priority_is_checked():
    env = BrokerOnClock()
    for bad in ("10", "-1", "high", ""):
        client = env.connect()
        send(client, "x", priority=bad, receipt="r")
        error = client.frame()
        assert error.command == "ERROR" and error.headers["receipt-id"] == "r", bad
        assert "priority" in error.headers["message"]


@pytest_twisted.ensureDeferred
async def test_priorities_come_back_in_order_after_a_restart(tmp_path):
    def broker():
        return sqlite_broker(tmp_path)

    first = broker()
    for body, priority in [("a", "2"), ("b", "7"), ("c", "2")]:
        first.send("/queue/jobs", {"persistent": "true", "priority": priority}, body.encode())
    await first.sync()
    await first.close()
    second = broker()
    try:
        queue = second.destinations["/queue/jobs"]
        assert [m.body for m in queue.pending] == [b"b", b"a", b"c"]
    finally:
        await second.close()


# -- delay ------------------------------------------------------------------------------


def test_a_delayed_message_is_held_back_exactly_that_long():
    env = BrokerOnClock()
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/queue/jobs", id="1")
    producer = env.connect()
    send(producer, "later", AMQ_SCHEDULED_DELAY="2000", receipt="r")
    send(producer, "now")
    assert producer.frame().headers["receipt-id"] == "r"
    assert [f.body for f in consumer.frames()] == [b"now"]
    env.advance(1.9)
    assert consumer.frames() == []
    env.advance(0.2)
    (message,) = consumer.frames()
    assert message.body == b"later"
    assert env.broker.stats["published"] == 2


def test_delays_are_kept_in_order_and_go_to_topics_too():
    env = BrokerOnClock()
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/topic/ticks", id="1")
    producer = env.connect()
    for delay in ("300", "100", "200"):
        send(producer, delay, destination="/topic/ticks", AMQ_SCHEDULED_DELAY=delay)
    bodies = []
    for _ in range(4):
        env.advance(0.1)
        bodies += [f.body for f in consumer.frames()]
    assert bodies == [b"100", b"200", b"300"]


def test_the_delay_is_checked_and_bounded():
    env = BrokerOnClock(max_scheduled_messages=2)
    for bad in ("soon", "-5"):
        client = env.connect()
        send(client, "x", AMQ_SCHEDULED_DELAY=bad, receipt="r")
        error = client.frame()
        assert error.command == "ERROR" and "AMQ_SCHEDULED_DELAY" in error.headers["message"]
    client = env.connect()
    send(client, "1", AMQ_SCHEDULED_DELAY="1000")
    send(client, "2", AMQ_SCHEDULED_DELAY="1000")
    send(client, "3", AMQ_SCHEDULED_DELAY="1000", receipt="r")
    error = client.frame()
    assert error.command == "ERROR" and error.headers["receipt-id"] == "r"
    assert "scheduled" in error.headers["message"]
    env.advance(1.1)
    assert env.broker.destinations["/queue/jobs"].count == 2


def test_a_zero_delay_is_no_delay():
    env = BrokerOnClock()
    producer = env.connect()
    send(producer, "x", AMQ_SCHEDULED_DELAY="0")
    assert env.broker.destinations["/queue/jobs"].count == 1


@pytest_twisted.ensureDeferred
async def test_a_delayed_persistent_message_survives_a_restart_and_is_delivered_when_due(
    tmp_path,
):
    from twisted.internet import reactor, task

    def broker():
        return sqlite_broker(tmp_path)

    first = broker()
    first.send("/queue/jobs", {"persistent": "true", "AMQ_SCHEDULED_DELAY": "400"}, b"due soon")
    first.send("/queue/jobs", {"AMQ_SCHEDULED_DELAY": "400"}, b"not persistent")
    await first.sync()
    await first.close()
    second = broker()
    try:
        assert "/queue/jobs" not in second.destinations  # not yet
        for _ in range(200):
            if "/queue/jobs" in second.destinations:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        queue = second.destinations["/queue/jobs"]
        assert [m.body for m in queue.pending] == [b"due soon"]
        await second.sync()
    finally:
        await second.close()
    import sqlite3

    # In its queue now, stored once: the scheduler's record is gone.
    with sqlite3.connect(tmp_path / "stomptw.sqlite3") as db:
        owners = [row[0] for row in db.execute("SELECT owner FROM messages")]
    assert owners == ["/queue/jobs"]


@pytest.mark.parametrize("transport", ["tcp"])
@pytest_twisted.ensureDeferred
async def test_stomp_py_sends_a_delayed_message(make_broker, transport):
    import time

    from twisted.internet.threads import deferToThread

    from tests.clients import StompPyClient, _get

    running = await make_broker()

    def run():
        client = StompPyClient.tcp(running.tcp_port)
        try:
            client.connect()
            client.subscribe("/queue/later", "1")
            sent = time.monotonic()
            client.send(
                "/queue/later", "hello", receipt=True, headers={"AMQ_SCHEDULED_DELAY": "300"}
            )
            message = _get(client.listener.messages, "MESSAGE")
            return message, time.monotonic() - sent
        finally:
            client.close()

    message, waited = await deferToThread(run)
    assert message.body == "hello"
    assert waited >= 0.3


# -- found in review ---------------------------------------------------------------------


def test_the_stores_own_owner_prefixes_are_not_destination_names():
    env = BrokerOnClock()
    for name in ("scheduled:99", "durable:x"):
        client = env.connect()
        send(client, "x", destination=name, persistent="true", receipt="r")
        error = client.frame()
        assert error.command == "ERROR" and error.headers["receipt-id"] == "r", name
        assert "the broker's own" in error.headers["message"]
    assert not env.broker.store.messages


def test_a_priority_the_broker_did_not_check_is_the_default_not_a_crash():
    """What an older store kept, or a caller of Broker.send, cannot poison a queue."""
    env = BrokerOnClock()
    env.broker.send("/queue/jobs", {"priority": "high", "persistent": "true"}, b"odd")
    env.broker.send("/queue/jobs", {"priority": "9"}, b"urgent")
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/queue/jobs", id="1")
    assert [f.body for f in consumer.frames()] == [b"urgent", b"odd"]


def test_a_transactions_delayed_sends_past_the_limit_refuse_all_of_it():
    env = BrokerOnClock(max_scheduled_messages=1)
    client = env.connect()
    client.send("BEGIN", transaction="t")
    for body in ("a", "b"):
        send(client, body, transaction="t", AMQ_SCHEDULED_DELAY="1000")
    send(client, "c", transaction="t")
    client.send("COMMIT", transaction="t", receipt="c")
    error = client.frame()
    assert error.command == "ERROR" and error.headers["message"] == "too many scheduled messages"
    assert b"None of the transaction took effect" in error.body
    env.advance(2)
    assert "/queue/jobs" not in env.broker.destinations and not len(env.broker.scheduled)


def test_a_durable_subscription_keeps_topic_order_whatever_the_priority():
    env = BrokerOnClock()
    client = env.connect(**{"client-id": "app"})
    client.send(
        "SUBSCRIBE",
        destination="/topic/t",
        id="d",
        receipt="s",
        **{"durable-subscription-name": "d"},
    )
    client.frames()
    client.lose()
    producer = env.connect()
    send(producer, "low", destination="/topic/t", priority="1")
    send(producer, "high", destination="/topic/t", priority="9")
    back = env.connect(**{"client-id": "app"})
    back.send("SUBSCRIBE", destination="/topic/t", id="d", **{"durable-subscription-name": "d"})
    assert [f.body for f in back.frames()] == [b"low", b"high"]


def test_a_delayed_message_is_delivered_without_the_delay_header():
    env = BrokerOnClock()
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/queue/jobs", id="1")
    send(env.connect(), "later", AMQ_SCHEDULED_DELAY="100")
    env.advance(0.2)
    (message,) = consumer.frames()
    assert "AMQ_SCHEDULED_DELAY" not in message.headers


def test_after_a_crash_a_held_message_is_not_marked_redelivered():
    from stomptw.broker import Broker
    from stomptw.config import BrokerConfig
    from stomptw.store import MemoryStore, StoredMessage, StoredState

    class Crashed(MemoryStore):
        def load(self) -> StoredState:
            state = super().load()
            return StoredState(state.messages, state.subscriptions, unclean=True)

    env = BrokerOnClock()
    store = Crashed()
    store.put(StoredMessage(1, "scheduled:0", "m-1", "/queue/jobs", {}, b"held", 0, 0))
    broker = Broker(BrokerConfig(store="memory"), store, env.clock)
    broker.open()
    env.clock.advance(1)
    (message,) = broker.destinations["/queue/jobs"].pending
    assert message.delivery_count == 0 and message.body == b"held"
