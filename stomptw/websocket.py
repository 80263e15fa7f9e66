"""
STOMP over WebSocket (RFC 6455), served by Autobahn.

Each WebSocket connection hosts one :class:`~stomptw.protocol.StompProtocol`
behind a small transport adapter: every incoming message, text or binary,
is fed to the same incremental parser as TCP (one STOMP frame may span
several WebSocket messages, and one message may hold several frames), and
every outgoing frame is sent as one WebSocket message, text when the frame
is valid UTF-8 and binary otherwise.

:func:`websocket_resource` returns a ``twisted.web`` resource that an
application can mount in its own site; :func:`websocket_site` is the site the
broker serves on its own WebSocket listener.
"""

from __future__ import annotations

import fnmatch
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from stomptw import __version__
from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.protocol import StompFactory, StompProtocol

__all__ = [
    "STOMP_SUBPROTOCOLS",
    "StompWebSocketFactory",
    "StompWebSocketProtocol",
    "origin_allowed",
    "websocket_resource",
    "websocket_site",
]

log = Logger()

#: WebSocket subprotocols for STOMP, most preferred first.
STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")


@implementer(ITransport)
class _WebSocketTransport:
    """What a StompProtocol sees as its transport on a WebSocket connection."""

    def __init__(self, ws: StompWebSocketProtocol) -> None:
        self._ws = ws
        #: The largest message Autobahn will send; StompProtocol checks it.
        self.max_message_size = ws.maxMessagePayloadSize

    def write(self, data: bytes) -> None:
        ws = self._ws
        if ws.state != ws.STATE_OPEN:
            return
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            ws.sendMessage(data, isBinary=True)
        else:
            ws.sendMessage(data, isBinary=False)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Start the WebSocket closing handshake (after queued messages)."""
        ws = self._ws
        if ws.state == ws.STATE_OPEN:
            ws.sendClose(code=1000)
        elif ws.state != ws.STATE_CLOSED:
            ws.dropConnection(abort=False)

    @property
    def disconnecting(self) -> bool:
        """True once the WebSocket has left the OPEN state: nothing more is sent."""
        return self._ws.state != self._ws.STATE_OPEN

    def abortConnection(self) -> None:
        """Drop the TCP connection at once."""
        if self._ws.state != self._ws.STATE_CLOSED:
            self._ws.dropConnection(abort=True)

    @property
    def transport(self):
        """The transport under the WebSocket (TCP or TLS)."""
        return self._ws.transport

    def registerProducer(self, producer, streaming: bool) -> None:
        """
        Register ``producer`` with the socket under the WebSocket, replacing
        the HTTP channel the connection was upgraded from.
        """
        transport = self._ws.transport
        try:
            transport.registerProducer(producer, streaming)
        except RuntimeError:
            transport.unregisterProducer()
            transport.registerProducer(producer, streaming)
        self._ws.stomp_producer = producer

    def unregisterProducer(self) -> None:
        """Unregister the producer (a transport with one does not close)."""
        self._ws.release_producer()

    def pauseProducing(self) -> None:
        """Stop reading from the socket."""
        self._ws.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the socket again."""
        if self._ws.transport is not None:
            self._ws.transport.resumeProducing()

    def getPeer(self):
        return self._ws.transport.getPeer()

    def getHost(self):
        return self._ws.transport.getHost()


class StompWebSocketProtocol(WebSocketServerProtocol):
    """An Autobahn WebSocket protocol carrying one STOMP session."""

    stomp: StompProtocol | None = None
    #: The STOMP session registered as producer with the socket, if any.
    stomp_producer = None

    def release_producer(self) -> None:
        """Unregister the STOMP session as the socket's producer."""
        if self.stomp_producer is not None:
            self.stomp_producer = None
            transport = self.transport
            if transport is not None and getattr(transport, "producer", True) is not None:
                transport.unregisterProducer()

    def _closeConnection(self, abort: bool = False) -> None:
        # Autobahn closes the socket here; one with a producer would not close.
        self.release_producer()
        super()._closeConnection(abort)

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """
        Refuse an origin the broker does not allow (HTTP 403), then pick the
        highest STOMP subprotocol the client offers, if any.
        """
        origin = request.origin
        # request.host has the port stripped; the same-host rule needs it.
        host = request.headers.get("host", "")
        if origin and not origin_allowed(origin, host, self.factory.allowed_origins):
            log.info(
                "WebSocket handshake refused: origin {origin} not allowed (peer {peer})",
                origin=origin,
                peer=request.peer,
            )
            raise ConnectionDeny(403, f"origin {origin} is not allowed")
        for name in STOMP_SUBPROTOCOLS:
            if name in request.protocols:
                return name
        # A client that offers no STOMP subprotocol is still served.
        return None

    def onOpen(self) -> None:
        self.stomp = self.factory.stomp_factory.buildProtocol(self.transport.getPeer())
        self.stomp.makeConnection(_WebSocketTransport(self))

    # Messages are not buffered: the payload of every WebSocket frame streams
    # into the STOMP parser as it arrives (after Autobahn's UTF-8 check for
    # text messages), so the STOMP limits bound memory and an oversized STOMP
    # frame is answered with an ERROR whatever the WebSocket framing.

    def onMessageBegin(self, isBinary: bool) -> None:
        self.message_is_binary = isBinary
        self.message_data_total_length = 0

    def onMessageFrameData(self, payload: bytes) -> None:
        if not self.failedByMe and self.stomp is not None:
            self.stomp.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        self.frame_data = None

    def onMessageEnd(self) -> None:
        pass

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        stomp, self.stomp = self.stomp, None
        if stomp is not None:
            why = ConnectionDone if wasClean else ConnectionLost
            text = f"WebSocket closed, code {code}" + (f": {reason}" if reason else "")
            stomp.connectionLost(Failure(why(text)))


class StompWebSocketFactory(WebSocketServerFactory):
    """
    Builds STOMP-over-WebSocket connections for one broker.

    Autobahn's options are set explicitly from the broker configuration:
    message and frame payloads are bounded (``ws_message_limit``, derived from
    the STOMP frame limit), a connection over the bound is closed with code
    1009 through the closing handshake, the HTML status page is off,
    handshake and ping timeouts are configured.
    """

    protocol = StompWebSocketProtocol

    def __init__(self, broker: Broker, config: BrokerConfig, reactor: IReactorTime) -> None:
        super().__init__(server=config.server_name, reactor=reactor)
        self.stomp_factory = StompFactory(broker, config, reactor, "ws")
        self.allowed_origins = list(config.allowed_origins)
        limit = config.ws_message_limit
        self.setProtocolOptions(
            webStatus=False,
            failByDrop=False,
            maxFramePayloadSize=limit,
            maxMessagePayloadSize=limit,
            openHandshakeTimeout=config.ws_open_handshake_timeout,
            closeHandshakeTimeout=config.ws_close_handshake_timeout,
            autoPingInterval=config.ws_ping_interval,
            autoPingTimeout=config.ws_ping_timeout,
            tcpNoDelay=True,
            # Origins are checked in onConnect (same host, loopback or the
            # configured patterns), answered with 403.
            allowedOrigins=["*"],
            allowNullOrigin=True,
        )


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def origin_allowed(origin: str, host: str, patterns: list[str]) -> bool:
    """
    Whether a browser page from ``origin`` may open a STOMP session.

    Allowed: a page served by the same host and port the client connected to
    (the ``Host`` header), a page on a loopback address (``localhost`` and
    ``*.localhost``, ``127.0.0.1``, ``[::1]``, any port), and any origin
    matching one of
    ``patterns`` (shell-style wildcards on ``scheme://host[:port]``, e.g.
    ``https://*.example.com``; ``*`` allows every origin, ``null`` the null
    origin of local files and sandboxed frames).
    """
    origin = origin.strip().lower()
    for pattern in patterns:
        if fnmatch.fnmatchcase(origin, pattern.strip().lower()):
            return True
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
    except ValueError:
        return False
    if not hostname:
        return False
    if hostname in _LOOPBACK_HOSTS or hostname.endswith(".localhost"):
        return True
    return bool(host) and parts.netloc == host.strip().lower()


def websocket_resource(
    broker: Broker, config: BrokerConfig, reactor: IReactorTime
) -> WebSocketResource:
    """
    Return a ``twisted.web`` resource serving STOMP over WebSocket.

    Mount it wherever an application wants the endpoint, e.g.
    ``root.putChild(b"stomp", websocket_resource(broker, config, reactor))``.
    """
    return WebSocketResource(StompWebSocketFactory(broker, config, reactor))


class _Index(Resource):
    """A plain page at ``/`` that says where the STOMP endpoint is."""

    isLeaf = False

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def getChild(self, path: bytes, request):
        if path == b"":
            return self
        return Resource.getChild(self, path, request)

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            f"stomptw {__version__}: STOMP over WebSocket is served at {self._path}\n"
            "(subprotocols v12.stomp, v11.stomp, v10.stomp).\n"
        ).encode()


def websocket_site(broker: Broker, config: BrokerConfig, reactor: IReactorTime) -> Site:
    """
    Return the site the broker's WebSocket listener serves: the STOMP
    endpoint at ``config.ws_path`` and a short text page at ``/``.
    """
    segments = [s.encode("utf-8") for s in config.ws_path.strip("/").split("/") if s]
    if not segments:
        raise ValueError("ws_path must name a path below /, e.g. /ws")
    root = _Index(config.ws_path)
    parent: Resource = root
    for segment in segments[:-1]:
        child = Resource()
        parent.putChild(segment, child)
        parent = child
    parent.putChild(segments[-1], websocket_resource(broker, config, reactor))
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
