"""
Regressions from a review of the delivery guarantees: each test here
demonstrated a broker bug, found by reading the code against docs/delivery.md.
"""

from __future__ import annotations

import queue
import time

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.frame import Frame, FrameParser, encode_frame
from stomptw.protocol import StompFactory
from stomptw.service import BrokerService
from stomptw.store import SQLiteStore


class Client:
    """One protocol instance on a StringTransport, seen from the client side."""

    def __init__(self, broker: Broker, clock: Clock, config: BrokerConfig) -> None:
        self.transport = StringTransport()
        self.proto = StompFactory(broker, config, clock).buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self._parser = FrameParser(version="1.2")

    def send(self, command: str, body: bytes = b"", **headers: str) -> None:
        headers = {k.replace("_", "-"): v for k, v in headers.items()}
        self.proto.dataReceived(
            encode_frame(command, headers, body, "1.2", content_length=bool(body))
        )

    def frames(self) -> list[Frame]:
        data = self.transport.value()
        self.transport.clear()
        self._parser.feed(data)
        out = []
        while (frame := self._parser.next_frame()) is not None:
            out.append(frame)
        return out

    def connect(self, **headers: str) -> None:
        self.send("CONNECT", accept_version="1.2", host="localhost", **headers)
        assert [f.command for f in self.frames()] == ["CONNECTED"]


def messages(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.command == "MESSAGE"]


# -- dead-letter queue templates ------------------------------------------------------


def test_suffix_dead_letter_template_still_dead_letters():
    config = BrokerConfig(dead_letter_queue="/queue/{name}.DLQ", max_redeliveries=0)
    clock = Clock()
    broker = Broker(config, clock=clock)
    consumer = Client(broker, clock, config)
    consumer.connect()
    consumer.send("SUBSCRIBE", id="s", destination="/queue/orders", ack="client-individual")
    consumer.send("SEND", b"hello", destination="/queue/orders")
    (first,) = messages(consumer.frames())
    # max_redeliveries=0: the first NACK sends it to /queue/orders.DLQ.
    consumer.send("NACK", id=first.headers["ack"])
    redelivered = messages(consumer.frames())
    assert redelivered == [], "a message past max-redeliveries was delivered again"
    assert broker.stats["dead_lettered"] == 1
    assert broker.destinations["/queue/orders.DLQ"].count == 1


def test_suffix_dead_letter_template_still_expires():
    config = BrokerConfig(dead_letter_queue="/queue/{name}.DLQ")
    clock = Clock()
    clock.advance(1_700_000_000)
    broker = Broker(config, clock=clock)
    producer = Client(broker, clock, config)
    producer.connect()
    expires = str(int(clock.seconds() * 1000) + 1000)
    producer.send("SEND", b"stale soon", destination="/queue/orders", expires=expires)
    clock.advance(5)
    consumer = Client(broker, clock, config)
    consumer.connect()
    consumer.send("SUBSCRIBE", id="s", destination="/queue/orders")
    assert messages(consumer.frames()) == [], "an expired message was delivered"
    assert broker.stats["expired"] == 1


# -- shutdown ----------------------------------------------------------------------


def test_shutdown_does_not_bounce_unacked_messages_into_the_dlq():
    config = BrokerConfig(max_redeliveries=1)
    clock = Clock()
    broker = Broker(config, clock=clock)
    service = BrokerService(broker, config)
    consumers = []
    for _ in range(3):
        consumer = Client(broker, clock, config)
        consumer.connect()
        consumer.send("SUBSCRIBE", id="s", destination="/queue/work", ack="client-individual")
        consumers.append(consumer)
    producer = Client(broker, clock, config)
    producer.connect()
    for i in range(3):
        producer.send("SEND", f"job {i}".encode(), destination="/queue/work")
    # Round robin: one unacknowledged message on each consumer.
    for consumer in consumers:
        assert len(messages(consumer.frames())) == 1
    service.stopService()
    # Nothing was NACKed and no consumer went away on its own: a broker stop
    # must put the three messages back, not move them to /queue/DLQ.work.
    assert broker.stats["dead_lettered"] == 0
    handed_out = sum(len(messages(c.frames())) for c in consumers)
    assert handed_out == 0, "messages were delivered to sessions being shut down"
    assert broker.destinations["/queue/work"].count == 3
    assert len(broker.destinations["/queue/work"].pending) == 3


# -- flow control ------------------------------------------------------------------


def test_blocked_producer_can_still_ack_its_own_messages():
    config = BrokerConfig(max_queue_length=2, heartbeat_receive_ms=0)
    clock = Clock()
    broker = Broker(config, clock=clock)
    client = Client(broker, clock, config)
    client.connect()
    client.send("SUBSCRIBE", id="s", destination="/queue/loop", ack="client-individual")
    client.send("SEND", b"a", destination="/queue/loop")
    client.send("SEND", b"b", destination="/queue/loop")
    got = messages(client.frames())
    assert len(got) == 2
    queue_ = broker.destinations["/queue/loop"]
    assert queue_.is_full()
    for frame in got:
        client.send("ACK", id=frame.headers["ack"], receipt=f"ack-{frame.headers['ack']}")
    clock.advance(60)
    receipts = [f for f in client.frames() if f.command == "RECEIPT"]
    assert len(receipts) == 2, "the ACKs were never read"
    assert queue_.count == 0


# -- ERROR after RECEIPTs ------------------------------------------------------------


class _ThreadReactor(Clock):
    """A Clock whose callFromThread queues calls for the test to run."""

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: queue.SimpleQueue = queue.SimpleQueue()

    def callFromThread(self, fn, *args, **kwargs):  # noqa: N802 - reactor API
        self.from_thread.put((fn, args, kwargs))

    def pump(self, deadline: float = 5.0) -> None:
        """Start the pending commit and run its completion on 'the reactor'."""
        self.advance(0)
        fn, args, kwargs = self.from_thread.get(timeout=deadline)
        fn(*args, **kwargs)
        self.advance(0)


def test_error_deferred_behind_receipts_is_sent(tmp_path):
    config = BrokerConfig(slow_topic_limit=1, slow_topic_policy="disconnect")
    reactor = _ThreadReactor()
    store = SQLiteStore(str(tmp_path), reactor)
    broker = Broker(config, store, clock=reactor)
    broker.open()
    try:
        client = Client(broker, reactor, config)
        client.connect()
        client.send(
            "SUBSCRIBE",
            id="t",
            destination="/topic/news",
            ack="client-individual",
            prefetch_count="1",
        )
        client.send("SEND", b"m1", destination="/topic/news")  # delivered, unacked
        client.send("SEND", b"m2", destination="/topic/news")  # backlog: 1
        client.send("SEND", b"p", destination="/queue/q", persistent="true", receipt="r1")
        # Backlog 2 > slow_topic_limit: this session is a slow consumer.
        client.send("SEND", b"m3", destination="/topic/news", persistent="true", receipt="r2")
        reactor.pump()
        deadline = time.monotonic() + 5
        frames = client.frames()
        while not any(f.command == "ERROR" for f in frames) and time.monotonic() < deadline:
            try:
                fn, args, kwargs = reactor.from_thread.get(timeout=0.1)
            except queue.Empty:
                reactor.advance(0)
                continue
            fn(*args, **kwargs)
            reactor.advance(0)
            frames += client.frames()
        commands = [f.command for f in frames if f.command != "MESSAGE"]
        assert commands == ["RECEIPT", "RECEIPT", "ERROR"], commands
        assert client.transport.disconnecting
    finally:
        d = broker.close()
        while not d.called:
            try:
                fn, args, kwargs = reactor.from_thread.get(timeout=5)
            except queue.Empty:
                break
            fn(*args, **kwargs)
            reactor.advance(0)
