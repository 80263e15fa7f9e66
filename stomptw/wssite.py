"""
The ``twisted.web`` site of the broker's own WebSocket listener: the STOMP
endpoint at ``--ws-path`` (:func:`stomptw.websocket.websocket_resource`),
the example pages at ``/``, and a deadline on every HTTP request, so that a
handshake cannot trickle in forever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.examplepages import IndexPage, examples_resource
from stomptw.model import format_peer
from stomptw.websocket import websocket_resource

if TYPE_CHECKING:
    from stomptw.listeners import ConnectionLimit

__all__ = ["websocket_site"]

log = Logger()


class _DeadlineChannel(HTTPChannel):
    """
    An HTTP connection that must deliver each request, headers and body,
    within the site's ``request_deadline`` seconds of starting it, however it
    trickles. twisted.web's idle timeout is reset by every byte, so a client
    sending one byte a second would otherwise hold the connection forever.
    A WebSocket upgrade is a request like any other: once it has arrived,
    Autobahn's opening handshake timeout and then the STOMP login timeout
    take over, both absolute too.
    """

    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        super().connectionMade()
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        site = self.site
        self._deadline = site.clock.callLater(site.request_deadline, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def allContentReceived(self) -> None:  # noqa: N802
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:  # noqa: N802
        super().requestDone(request)
        if self.transport is not None and not self._handlingRequest:
            self._arm()  # the next request on this connection has the same time

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self._disarm()
        super().connectionLost(reason)

    def _too_slow(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None or getattr(transport, "protocol", self) is not self:
            return  # upgraded: the WebSocket has the connection now
        log.info(
            "HTTP request from {peer} not complete after {seconds}s: connection dropped",
            peer=format_peer(transport.getPeer()),
            seconds=self.site.request_deadline,
        )
        transport.abortConnection()


class _DeadlineSite(Site):
    """A :class:`Site` whose connections have :class:`_DeadlineChannel`'s deadline."""

    protocol = _DeadlineChannel

    def __init__(self, resource: Resource, clock: IReactorTime, request_deadline: float) -> None:
        super().__init__(resource, timeout=request_deadline)
        self.clock = clock
        self.request_deadline = request_deadline


def websocket_site(
    broker: Broker,
    config: BrokerConfig,
    reactor: IReactorTime,
    connection_limit: ConnectionLimit | None = None,
) -> Site:
    """
    Return the site the broker's WebSocket listener serves: the STOMP
    endpoint at ``config.ws_path`` and, at ``/``, the live examples
    (:func:`examples_resource`), or a one-line text page when
    ``config.examples`` is off. WebSocket connections count against
    ``connection_limit`` when given (one per listener).
    """
    segments = [s.encode("utf-8") for s in config.ws_path.strip("/").split("/") if s]
    if not segments:
        raise ValueError("ws_path must name a path below /, e.g. /ws")
    root = examples_resource(config) if config.examples else IndexPage(config.ws_path)
    parent: Resource = root
    for segment in segments[:-1]:
        child = Resource()
        parent.putChild(segment, child)
        parent = child
    parent.putChild(segments[-1], websocket_resource(broker, config, reactor, connection_limit))
    # An HTTP request (a WebSocket handshake before it reaches Autobahn) that
    # is not complete within the handshake timeout is dropped, trickling or
    # not; twisted.web's idle timeout alone would keep a trickle forever.
    site = _DeadlineSite(root, reactor, config.ws_open_handshake_timeout)
    site.noisy = False
    site.displayTracebacks = False
    return site
