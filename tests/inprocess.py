"""
In-process STOMP clients for the tests of frames and sessions: a
:class:`~stomptw.testing.ClientSession` over the real
:class:`~stomptw.protocol.StompProtocol` on a ``StringTransport``, all on one
``Clock`` (no socket, no reactor). The ``env`` fixture (conftest.py) gives
an :class:`Env`.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.frame import Frame
from stomptw.protocol import StompFactory
from stomptw.testing import ClientSession


class Client(ClientSession):
    """One protocol instance on a StringTransport, seen from the client side."""

    def __init__(
        self, broker: Broker, clock: Clock, config: BrokerConfig, max_message_size: int = 0
    ) -> None:
        self.proto = StompFactory(broker, config, clock).buildProtocol(None)
        # A WebSocket-style limit on what the transport can carry, if any.
        self.proto.max_message_size = max_message_size
        self.proto.makeConnection(StringTransport())
        super().__init__(self.proto.session, self.proto.transport)

    def raw(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting or self.transport.disconnected

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


class Env:
    """A broker on a Clock; :meth:`client` connects clients to it."""

    def __init__(self) -> None:
        self.broker = Broker()
        self.clock = Clock()
        self.config = BrokerConfig()

    def client(self, **config: object) -> Client:
        cfg = BrokerConfig(**config) if config else self.config
        return Client(self.broker, self.clock, cfg)

    def consumer(
        self, ack: str, version: str = "1.2", dest: str = "/queue/q", **extra: str
    ) -> Client:
        """A client connected in ``version``, subscribed to ``dest`` as ``s``."""
        consumer = self.client()
        consumer.connect(version)
        consumer.send("SUBSCRIBE", destination=dest, id="s", ack=ack, **extra)
        return consumer

    def publish(self, count: int, dest: str = "/queue/q") -> None:
        """A new client sends ``count`` messages, with bodies ``0``, ``1``, ..."""
        producer = self.client()
        producer.connect()
        for i in range(count):
            producer.send("SEND", str(i).encode(), destination=dest)


def messages(frames: list[Frame]) -> list[Frame]:
    """The MESSAGE frames of ``frames``."""
    return [f for f in frames if f.command == "MESSAGE"]


def assert_error(client: Client, text: str) -> Frame:
    """The last frame is an ERROR about ``text``, with an explanation, and the broker closes."""
    frames = client.frames()
    assert frames and frames[-1].command == "ERROR", frames
    error = frames[-1]
    assert text in error.headers["message"], error
    assert error.body, "an ERROR explains itself in its body"
    assert b"Traceback" not in error.body
    assert client.closing
    return error
