"""
Helpers for testing code that embeds the broker, without sockets.

An application that publishes to the broker, consumes from it or watches
its sessions can test that code against a real :class:`~stomptw.broker.Broker`
on a :class:`~twisted.internet.task.Clock`, with STOMP clients that are
in-memory sessions::

    from stomptw.testing import BrokerOnClock

    def test_orders_reach_the_dashboard():
        env = BrokerOnClock()
        dashboard = env.connect()
        dashboard.send("SUBSCRIBE", destination="/topic/orders", id="1")
        my_app_publish(env.broker, "/topic/orders", b"order 42")
        (message,) = dashboard.frames()
        assert message.body == b"order 42"
        env.advance(30)  # heart-beats and timeouts run on the clock

Everything runs synchronously in the test: a frame sent by a client has been
handled when :meth:`ClientSession.send` returns, and what the broker wrote
is in :meth:`ClientSession.frames`. Work the broker defers to the next
reactor turn runs on :meth:`BrokerOnClock.advance` (``advance(0)`` is
enough).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from zope.interface import implementer

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.encoding import encode_frame
from stomptw.frame import Frame, FrameParser
from stomptw.interfaces import IStompTransport
from stomptw.protocol import shared_sweep
from stomptw.session import StompSession
from stomptw.store import MemoryStore

__all__ = ["BrokerOnClock", "ClientSession", "RecordingTransport"]


@implementer(IStompTransport)
class RecordingTransport:
    """
    An :class:`~stomptw.interfaces.IStompTransport` that keeps everything
    the session asks of it: the bytes written, whether reading is paused,
    and the close (with its linger).

    :param clock: runs :meth:`call_soon` work (on its next ``advance``).
    :param name: the transport label the session logs (``tcp``, ``ws``, ...).
    :param peer: the client address the session reports.
    :param max_message_size: the largest write allowed (a WebSocket
        message limit); 0 for none.
    """

    def __init__(
        self,
        clock: Clock,
        name: str = "test",
        peer: str = "127.0.0.1:0",
        max_message_size: int = 0,
    ) -> None:
        self.clock = clock
        self.name = name
        self.peer = peer
        self.max_message_size = max_message_size
        self.written: list[bytes] = []
        #: False while the session has asked to stop reading.
        self.reading = True
        #: The ``linger`` the session closed with, or None while open.
        self.closed_with: float | None = None
        #: What :meth:`client_certificate` returns.
        self.certificate: Any = None

    @property
    def disconnecting(self) -> bool:
        """True once the session has asked to close."""
        return self.closed_with is not None

    def write(self, data: bytes) -> None:
        """Keep ``data`` (see :meth:`value`)."""
        self.written.append(data)

    def pause_reading(self) -> None:
        """Note that the session stopped reading."""
        self.reading = False

    def resume_reading(self) -> None:
        """Note that the session reads again."""
        self.reading = True

    def call_soon(self, f: Callable[..., Any], *args: Any) -> None:
        """Run ``f(*args)`` on the clock's next ``advance``."""
        self.clock.callLater(0, f, *args)

    def client_certificate(self) -> Any:
        """The certificate given as ``certificate``, if any."""
        return self.certificate

    def close(self, linger: float) -> None:
        """Note the close; :meth:`ClientSession.lose` ends the connection."""
        self.closed_with = linger

    def value(self) -> bytes:
        """Everything written and not yet cleared."""
        return b"".join(self.written)

    def clear(self) -> None:
        """Forget what was written so far."""
        self.written.clear()


class ClientSession:
    """
    One in-memory client connection to the broker: a real
    :class:`~stomptw.session.StompSession` on a :class:`RecordingTransport`,
    seen from the client's side.

    :ivar session: the broker's session for this client.
    :ivar transport: what the session wrote and asked for.
    :ivar version: the STOMP version frames are encoded and parsed in.
    """

    def __init__(self, session: StompSession, transport: RecordingTransport) -> None:
        self.session = session
        self.transport = transport
        self.version = "1.2"
        self._parser = FrameParser(version="1.2")

    def send(self, command: str, body: bytes = b"", **headers: str) -> None:
        """
        Send one frame; header names are keyword arguments with ``_`` for
        ``-`` (``accept_version="1.2"``).
        """
        encoded = {k.replace("_", "-"): v for k, v in headers.items()}
        self.raw(encode_frame(command, encoded, body, self.version, content_length=bool(body)))

    def raw(self, data: bytes) -> None:
        """Send bytes as they are (partial frames, heart-beats, garbage)."""
        self.session.data_received(data)

    def frames(self) -> list[Frame]:
        """The frames the broker wrote since the last call (heart-beats skipped)."""
        data = self.transport.value()
        self.transport.clear()
        self._parser.version = self.version
        self._parser.feed(data)
        out = []
        while (frame := self._parser.next_frame()) is not None:
            out.append(frame)
        return out

    def frame(self) -> Frame:
        """The one frame the broker wrote since the last call (fails on none or more)."""
        frames = self.frames()
        if len(frames) != 1:
            raise AssertionError(f"expected one frame, got {frames!r}")
        return frames[0]

    def connect(self, version: str = "1.2", **headers: str) -> Frame:
        """CONNECT in ``version``; returns the CONNECTED frame (fails on anything else)."""
        self.version = version
        self.send("CONNECT", accept_version=version, host="localhost", **headers)
        frames = self.frames()
        if len(frames) != 1 or frames[0].command != "CONNECTED":
            raise AssertionError(f"expected CONNECTED, got {frames!r}")
        return frames[0]

    @property
    def closing(self) -> bool:
        """True once the broker has closed (or started closing) the connection."""
        return self.transport.disconnecting

    def lose(self, reason: str = "connection lost") -> None:
        """The connection goes away (the client closed it, or it broke)."""
        self.session.connection_lost(reason)


class BrokerOnClock:
    """
    A broker with an in-memory store on a :class:`~twisted.internet.task.Clock`,
    and in-memory client sessions for it.

    :param config: the broker configuration (:class:`BrokerConfig`'s
        defaults with the in-memory store when omitted).
    :param store: the message store (an :class:`IMessageStore`); a fresh
        :class:`~stomptw.store.MemoryStore` when omitted. A test can give one
        that fails, to see what clients get when the disk does.
    :param overrides: :class:`BrokerConfig` fields to change, e.g.
        ``heartbeat_send_ms=100``.

    :ivar broker: the :class:`~stomptw.broker.Broker`.
    :ivar clock: its clock: :meth:`advance` moves it.
    :ivar config: its configuration.
    """

    def __init__(
        self, config: BrokerConfig | None = None, store: Any = None, **overrides: Any
    ) -> None:
        config = config or BrokerConfig(store="memory")
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        self.clock = Clock()
        self.broker = Broker(config, store if store is not None else MemoryStore(), self.clock)
        self.broker.open()
        self._sweep = shared_sweep(self.broker, config, self.clock)

    def connect(self, *, version: str | None = "1.2", **headers: str) -> ClientSession:
        """
        A new client session, connected in ``version`` with the CONNECT
        ``headers`` given (``heart_beat="0,0"`` and the like); with
        ``version=None`` it is opened but not yet connected.
        """
        transport = RecordingTransport(self.clock)
        session = StompSession(self.broker, self.config, transport, self._sweep, self.clock.seconds)
        session.connection_made()
        client = ClientSession(session, transport)
        if version is not None:
            client.connect(version, **headers)
        return client

    def advance(self, seconds: float) -> None:
        """Move the clock: heart-beats, timeouts, expiry and deferred work run."""
        self.clock.advance(seconds)
