"""
Per-listener connection limits.

Every STOMP and WebSocket listener counts its own connections against
``BrokerConfig.max_connections`` with a :class:`ConnectionLimit` (the admin
listener is not limited):

- On a STOMP listener (``tcp:``, ``ssl:``, any endpoint given to ``--tcp``)
  every accepted connection counts, from the moment it is accepted (before
  the TLS handshake and before CONNECT) until it is closed. A connection over
  the limit gets one ERROR frame ("too many connections on this listener
  (limit N)") and is closed; no session is created for it.
- On a WebSocket listener (``--ws``) a connection counts once its opening
  handshake has been accepted, until it is closed. A handshake over the limit
  is refused with HTTP 503. Plain HTTP requests (the page at ``/``) and
  handshakes still in progress do not count; they are bounded by the
  handshake timeout instead.

Refusals are logged at most once per :data:`LOG_INTERVAL` seconds per
listener, with the number refused since the last message.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.encoding import encode_frame
from stomptw.model import format_peer
from stomptw.protocol import StompFactory, StompProtocol, close_lingering

__all__ = ["LOG_INTERVAL", "ConnectionLimit", "LimitedStompFactory"]

log = Logger()

#: Seconds between two log messages about refused connections on a listener.
LOG_INTERVAL = 10.0


class ConnectionLimit:
    """
    The open connections of one listener, against a limit.

    :ivar limit: the most connections at once; 0 means no limit.
    :ivar description: the listener's endpoint string, for logs.
    :ivar count: connections open now.
    :ivar refused: connections refused since the listener started.
    """

    def __init__(
        self,
        limit: int,
        description: str,
        clock: IReactorTime,
        on_refused: Callable[[], None] | None = None,
        per_ip: int = 0,
    ) -> None:
        """
        :param limit: the most connections at once; 0 means no limit.
        :param description: the listener's endpoint string, for logs.
        :param clock: the time source of the log rate limit.
        :param on_refused: called for every refused connection (the broker
            counts them in its stats).
        :param per_ip: the most connections at once from one address; 0
            means no limit.
        """
        if limit < 0 or per_ip < 0:
            raise ValueError("the connection limit must not be negative")
        self.limit = limit
        self.per_ip = per_ip
        #: Open connections by client address (with ``per_ip``).
        self.by_address: dict[str, int] = {}
        self.description = description
        self.count = 0
        self.refused = 0
        self._clock = clock
        self._on_refused = on_refused
        self._unlogged = 0
        self._last_log: float | None = None

    @property
    def full(self) -> bool:
        """Whether one more connection would be over the limit."""
        return bool(self.limit) and self.count >= self.limit

    def refusal(self, address: str | None) -> str | None:
        """Why one more connection from ``address`` is refused; None if it is not."""
        if self.full:
            return f"too many connections on this listener (limit {self.limit})"
        if self.per_ip and address and self.by_address.get(address, 0) >= self.per_ip:
            return f"too many connections from {address} (limit {self.per_ip} per address)"
        return None

    def acquire(self, address: str | None = None) -> None:
        """Count one more open connection (from ``address``)."""
        self.count += 1
        if self.per_ip and address:
            self.by_address[address] = self.by_address.get(address, 0) + 1

    def release(self, address: str | None = None) -> None:
        """Count one connection fewer (it closed)."""
        if self.count > 0:
            self.count -= 1
        if self.per_ip and address:
            left = self.by_address.get(address, 0) - 1
            if left > 0:
                self.by_address[address] = left
            else:
                self.by_address.pop(address, None)

    def refuse(self, peer: object, reason: str = "") -> None:
        """Count (and log, rate-limited) a connection refused from ``peer``."""
        self.refused += 1
        self._unlogged += 1
        if self._on_refused is not None:
            self._on_refused()
        now = self._clock.seconds()
        if self._last_log is not None and now - self._last_log < LOG_INTERVAL:
            return
        log.warn(
            "refused {refused} connection(s) on {endpoint}: {reason} (last from {peer}); "
            "raise --max-connections (or --max-connections-per-ip) and the file "
            "descriptor limit if this is expected",
            refused=self._unlogged,
            endpoint=self.description,
            reason=reason or f"limit of {self.limit} connections reached",
            limit=self.limit,
            peer=format_peer(peer),
        )
        self._unlogged = 0
        self._last_log = now


class _CountedStompProtocol(StompProtocol):
    """A STOMP session that its listener's :class:`ConnectionLimit` counts."""

    limit: ConnectionLimit | None = None
    address: str | None = None

    def connectionLost(self, reason: Failure = None) -> None:
        limit, self.limit = self.limit, None
        if limit is not None:
            limit.release(self.address)
        super().connectionLost(reason)


class _RefusedStompProtocol(Protocol):
    """
    A connection over the limit: one ERROR frame, then an orderly close.

    As after any ERROR, the write side of a plain TCP connection is shut down
    first and whatever the client sends (its CONNECT) is discarded, so that
    the close does not reset the connection under the ERROR frame; the
    connection is dropped if the client has not closed within
    ``close_linger`` seconds.
    """

    def __init__(self, message: str, clock: IReactorTime, linger: float) -> None:
        self._message = message
        self._clock = clock
        self._linger = linger
        self._timer = None

    def connectionMade(self) -> None:
        message = self._message
        body = (f"The broker refused this connection: {message}. Try again later.\n").encode()
        self.transport.write(
            encode_frame(
                "ERROR", {"message": message, "content-type": "text/plain"}, body, version="1.0"
            )
        )
        self._timer = close_lingering(self.transport, self._clock, self._linger)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class LimitedStompFactory(StompFactory):
    """
    A :class:`~stomptw.protocol.StompFactory` for one listener whose
    connections count against ``limit`` (see the module docstring).
    """

    def __init__(
        self,
        broker: Broker,
        config: BrokerConfig,
        clock: IReactorTime,
        transport_name: str,
        limit: ConnectionLimit,
    ) -> None:
        super().__init__(broker, config, clock, transport_name)
        self.limit = limit

    def buildProtocol(self, addr: object) -> Protocol:
        limit = self.limit
        address = getattr(addr, "host", None)
        refusal = limit.refusal(address)
        if refusal is not None:
            limit.refuse(addr, refusal)
            return _RefusedStompProtocol(refusal, self.clock, self.config.close_linger)
        proto = _CountedStompProtocol(
            self.broker, self.config, self.clock, self.transport_name, self.sweep
        )
        proto.factory = self
        limit.acquire(address)
        proto.limit = limit
        proto.address = address
        return proto


def require_tls_version(endpoint: object, version: str) -> object:
    """
    ``endpoint`` made to refuse TLS older than ``version`` (``"1.2"`` or
    ``"1.3"``) when it is a TLS server endpoint (``ssl:``, ``mtls:``);
    other endpoints are returned as they are. Twisted's own default minimum
    is TLS 1.0, and a machine's OpenSSL configuration may or may not raise it.
    """
    from OpenSSL import SSL

    factory = getattr(endpoint, "_sslContextFactory", None)
    if factory is not None:
        wanted = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}[version]
        # Twisted's CertificateOptions makes its context once and keeps it for
        # every connection: setting the floor on it here is setting it for all.
        factory.getContext().set_min_proto_version(wanted)
    return endpoint
