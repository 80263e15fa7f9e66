"""
STOMP over TCP or TLS: a thin Twisted protocol around a sans-IO
:class:`~stomptw.session.StompSession`.

:class:`StompProtocol` sets the connection up (``TCP_NODELAY``, itself as
the socket's push producer with the broker's high-water mark), feeds the
bytes it reads to the session, and carries out what the session asks
through :class:`~stomptw.interfaces.IStompTransport`: writes, pausing and
resuming reads, and the orderly close with linger (:func:`close_lingering`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw.broker import Broker
from stomptw.coalesce import CoalescingOutput, coalescing
from stomptw.config import BrokerConfig
from stomptw.credentials import certificate_of
from stomptw.errors import ProtocolError
from stomptw.interfaces import IStompTransport
from stomptw.model import format_peer
from stomptw.session import StompSession
from stomptw.timers import DeadlineSweep, resolution_for

__all__ = [
    "ProtocolError",
    "StompFactory",
    "StompProtocol",
    "close_lingering",
    "set_high_water",
    "shared_sweep",
]


@implementer(IStompTransport, IPushProducer)
class StompProtocol(CoalescingOutput, Protocol):
    """
    One STOMP connection over TCP or TLS.

    What the session writes while a read is handled is sent when the read
    is done, in one block (see :mod:`stomptw.coalesce`).

    :ivar session: the connection's :class:`~stomptw.session.StompSession`
        (set once the connection is made).
    """

    session: StompSession | None = None
    #: What :class:`~stomptw.interfaces.IStompTransport` says of a TCP stream.
    max_message_size = 0
    #: Output held until the callback that wrote it ends (CoalescingOutput).
    _out: list[bytes] | None = None
    _out_bytes = 0

    def __init__(
        self,
        broker: Broker,
        config: BrokerConfig,
        clock: IReactorTime,
        transport_name: str = "tcp",
        sweep: DeadlineSweep | None = None,
    ) -> None:
        self.broker = broker
        self.config = config
        self.clock = clock
        self.name = transport_name
        self.peer = "?"
        self._sweep = sweep if sweep is not None else shared_sweep(broker, config, clock)
        self._producer_registered = False
        self._linger: IDelayedCall | None = None

    # -- Twisted's side -----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        try:
            transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # not a TCP socket (a test transport, a UNIX socket)
        try:
            transport.registerProducer(self, True)
        except RuntimeError:
            pass  # the transport has a producer already
        else:
            self._producer_registered = True
            set_high_water(transport, self.config.write_high_water)
        self.hold_at_most(self.config.write_high_water)
        self.peer = format_peer(transport.getPeer())
        self.session = StompSession(self.broker, self.config, self, self._sweep, self.clock.seconds)
        self.session.connection_made()

    def dataReceived(self, data: bytes) -> None:
        coalescing(self.session.data_received, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.drop_output()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        if self.session is not None:
            self.session.connection_lost(
                reason.getErrorMessage() if reason is not None else "connection lost"
            )

    def pauseProducing(self) -> None:
        """The socket's output buffer is over the high-water mark."""
        self.session.pause_writing()

    def resumeProducing(self) -> None:
        """The output buffer drained: deliver again, coalesced."""
        coalescing(self.session.resume_writing)

    def stopProducing(self) -> None:
        """The connection is going; :meth:`connectionLost` cleans up."""

    # -- IStompTransport ---------------------------------------------------------

    @property
    def disconnecting(self) -> bool:
        """True once the transport is closing."""
        return self.transport.disconnecting

    #: Write one frame or heart-beat to the socket (coalesced within a read).
    write = CoalescingOutput.write_out

    def pause_reading(self) -> None:
        """Stop reading from the socket."""
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read from the socket again."""
        self.transport.resumeProducing()

    def call_soon(self, f, *args) -> None:
        """Call ``f(*args)`` on the next reactor turn."""
        self.clock.callLater(0, f, *args)

    def client_certificate(self) -> Any:
        """The client certificate an ``mtls:`` listener verified, if any."""
        return certificate_of(self.transport)

    def close(self, linger: float) -> None:
        """Close in order (see :func:`close_lingering`), dropping after ``linger``."""
        self.flush_output()
        if self._producer_registered:
            # A transport with a producer registered does not close.
            self._producer_registered = False
            self.transport.unregisterProducer()
        self._linger = close_lingering(self.transport, self.clock, linger)


def shared_sweep(broker: Broker, config: BrokerConfig, clock: IReactorTime) -> DeadlineSweep:
    """
    The broker's one deadline sweep for the sessions of every listener,
    created on first use on ``clock`` (see :mod:`stomptw.timers`).
    """
    sweep = getattr(broker, "deadlines", None)
    if sweep is None or sweep.clock is not clock:
        sweep = DeadlineSweep(clock, resolution_for(config.heartbeat_send_ms))
        broker.deadlines = sweep
    return sweep


def set_high_water(transport: object, limit: int) -> None:
    """
    Set the output buffer size at which the socket under ``transport``
    pauses its producer: the transport itself when it is a socket, or the
    socket under a TLS connection.
    """
    if not isinstance(transport, FileDescriptor):
        transport = getattr(transport, "transport", None)
    if isinstance(transport, FileDescriptor):
        transport.bufferSize = limit


def _can_half_close(transport: object) -> bool:
    """
    Whether ``transport`` is a plain TCP connection whose sending side can be
    shut down alone. A TLS transport wraps one and forwards attribute lookups
    to it, so half-closing "through" it would cut the TCP stream under TLS.
    """
    if isinstance(transport, ProtocolWrapper) or ISSLTransport.providedBy(transport):
        return False
    return ITCPTransport.providedBy(transport) and hasattr(transport, "loseWriteConnection")


def close_lingering(transport: ITransport, clock: IReactorTime, linger: float) -> IDelayedCall:
    """
    Close ``transport`` once what was written has gone out, without
    resetting it under that data: a plain TCP connection shuts down its
    sending side first (the caller keeps reading and discarding until the
    peer closes); TLS closes with close_notify. If the peer has not closed
    within ``linger`` seconds, the connection is dropped. Returns that
    timer; cancel it once the connection is gone.
    """
    if _can_half_close(transport):
        transport.loseWriteConnection()
    else:
        transport.loseConnection()
    return clock.callLater(linger, drop, transport)


def drop(transport: ITransport) -> None:
    """Drop ``transport`` at once (abort), or close it if it cannot abort."""
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


class StompFactory(Factory):
    """
    Builds :class:`StompProtocol` instances for one listener.

    :param broker: the broker all sessions talk to.
    :param config: the broker configuration.
    :param clock: the reactor's time interface, for heart-beats and timeouts.
    :param transport_name: a label for logs (``"tcp"``, ``"ws"``, ``"tls"``).
    """

    noisy = False

    def __init__(
        self,
        broker: Broker,
        config: BrokerConfig,
        clock: IReactorTime,
        transport_name: str = "tcp",
    ) -> None:
        self.broker = broker
        self.config = config
        self.clock = clock
        self.transport_name = transport_name
        self.sweep = shared_sweep(broker, config, clock)

    def buildProtocol(self, addr: object) -> StompProtocol:
        proto = StompProtocol(self.broker, self.config, self.clock, self.transport_name, self.sweep)
        proto.factory = self
        return proto
