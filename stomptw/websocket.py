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
import json
import os
import struct
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import File
from zope.interface import implementer

from stomptw import __version__
from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.protocol import StompFactory, StompProtocol

if TYPE_CHECKING:
    from stomptw.listeners import ConnectionLimit

__all__ = [
    "STOMP_SUBPROTOCOLS",
    "StompWebSocketFactory",
    "StompWebSocketProtocol",
    "examples_resource",
    "origin_allowed",
    "websocket_resource",
    "websocket_site",
]

log = Logger()

#: WebSocket subprotocols for STOMP, most preferred first.
STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")


#: Headers of unmasked server frames with a 16-bit and a 64-bit length.
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")


@implementer(ITransport)
class _WebSocketTransport:
    """What a StompProtocol sees as its transport on a WebSocket connection."""

    def __init__(self, ws: StompWebSocketProtocol) -> None:
        self._ws = ws
        #: The largest message Autobahn will send; StompProtocol checks it.
        self.max_message_size = ws.maxMessagePayloadSize

    def write(self, data: bytes) -> None:
        """
        Send ``data`` as one WebSocket message: text if it is valid UTF-8,
        binary otherwise.

        In the usual case (no compression, fragmentation, frame logging or
        queued sync data) the single unmasked frame is built here and
        written straight to the socket, which is what Autobahn's
        ``sendMessage`` would write, without its per-message overhead.
        """
        ws = self._ws
        if ws.state != ws.STATE_OPEN:
            return
        if data.isascii():
            opcode = 0x81
        else:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                opcode = 0x82
            else:
                opcode = 0x81
        if ws.send_queue or not ws.fast_send:
            ws.sendMessage(data, isBinary=opcode == 0x82)
            return
        n = len(data)
        if n < 126:
            ws.transport.write(bytes((opcode, n)) + data)
        elif 0 < self.max_message_size < n:
            ws.sendMessage(data, isBinary=opcode == 0x82)  # raises PayloadExceededError
        elif n < 65536:
            ws.transport.write(_HEAD16.pack(opcode, 126, n) + data)
        else:
            ws.transport.writeSequence([_HEAD64.pack(opcode, 127, n), data])

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


#: Payloads up to this size are unmasked with one big-integer XOR; longer
#: ones with Autobahn's native masker (whose setup costs more than that XOR).
_INT_UNMASK_MAX = 512


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if n > _INT_UNMASK_MAX:
        return create_xor_masker(mask, n).process(payload)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


#: Largest payload of a frame the fast path waits for when it arrives in
#: pieces; a larger one is handed to Autobahn, which streams its payload to
#: the STOMP parser as it arrives instead of holding all of it.
FAST_PARTIAL_MAX = 65536


def _fast_frames(ws: StompWebSocketProtocol, data: bytes) -> tuple[int, bool]:
    """
    Feed the complete simple data frames at the start of ``data`` to the
    STOMP session (see :meth:`StompWebSocketProtocol.dataReceived`); return
    how many bytes they took, and whether the rest is only the beginning of
    a frame to wait for (its header so far allows the fast path, and its
    payload is at most :data:`FAST_PARTIAL_MAX`).
    """
    size = len(data)
    pos = 0
    frame_limit = ws.maxFramePayloadSize
    message_limit = ws.maxMessagePayloadSize
    validate = ws.utf8validateIncoming
    while True:
        if size - pos < 6:
            # Too short to tell (a masked frame's header is at least 6 bytes):
            # Autobahn, too, would only buffer these bytes.
            return pos, True
        b0 = data[pos]
        if b0 != 0x81 and b0 != 0x82:
            break
        b1 = data[pos + 1]
        if not b1 & 0x80:
            break  # unmasked: Autobahn fails the connection
        n = b1 & 0x7F
        head = pos + 2
        if n == 126:
            n = int.from_bytes(data[head : head + 2], "big")
            if n < 126:
                break
            head += 2
        elif n == 127:
            n = int.from_bytes(data[head : head + 8], "big")
            if n < 65536:
                break
            head += 8
        if (0 < frame_limit < n) or (0 < message_limit < n):
            break
        end = head + 4 + n
        if end > size:
            return pos, head + 4 <= size and n <= FAST_PARTIAL_MAX
        payload = _unmask(data[head + 4 : end], data[head : head + 4]) if n else b""
        if b0 == 0x81 and validate and not payload.isascii():
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # Autobahn closes with 1007
        pos = end
        stomp = ws.stomp
        if stomp is not None:
            stomp.dataReceived(payload)
        if ws.state != ws.STATE_OPEN or ws.failedByMe or ws.stomp is None:
            break
    return pos, False


class StompWebSocketProtocol(WebSocketServerProtocol):
    """An Autobahn WebSocket protocol carrying one STOMP session."""

    stomp: StompProtocol | None = None
    #: The listener's connection limit while this connection counts against it.
    counted: ConnectionLimit | None = None
    #: The STOMP session registered as producer with the socket, if any.
    stomp_producer = None
    #: Whether incoming data frames may bypass Autobahn's frame processing
    #: (no frame or octet logging, no timing tracking; set on open).
    fast_receive = False
    #: Whether outgoing messages may bypass Autobahn's sendMessage (set on open).
    fast_send = False

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
        Refuse an origin the broker does not allow (HTTP 403) and a
        connection over the listener's limit (HTTP 503), then pick the
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
        limit = self.factory.connection_limit
        if limit is not None:
            if limit.full:
                limit.refuse(self.transport.getPeer())
                raise ConnectionDeny(
                    503, f"too many connections on this listener (limit {limit.limit})"
                )
            # Counted from here until the connection is lost (onClose).
            limit.acquire()
            self.counted = limit
        for name in STOMP_SUBPROTOCOLS:
            if name in request.protocols:
                return name
        # A client that offers no STOMP subprotocol is still served.
        return None

    def onOpen(self) -> None:
        # Outgoing frames are built by _WebSocketTransport.write unless an
        # option needs Autobahn's own sendMessage.
        self.fast_receive = not (self.logFrames or self.logOctets or self.trackedTimings)
        self.fast_send = (
            self.fast_receive
            and self._perMessageCompress is None
            and not self.autoFragmentSize
            and not self.maskServerFrames
        )
        self.stomp = self.factory.stomp_factory.buildProtocol(self.transport.getPeer())
        self.stomp.makeConnection(_WebSocketTransport(self))

    def dataReceived(self, data: bytes) -> None:
        """
        Take bytes from the socket: complete, unfragmented data frames go
        straight to the STOMP session; everything else goes to Autobahn.

        The fast path handles only what Autobahn would handle the same way
        with nothing to remember: an open connection between messages, and
        frames with FIN set, no RSV bits, opcode text or binary, masked,
        a minimally encoded length within the frame and message limits, all
        of it buffered, and (for text) valid UTF-8. The start of such a frame
        (up to :data:`FAST_PARTIAL_MAX` of payload) waits in the buffer for
        the rest, as a pipelining client's writes are cut anywhere by TCP.
        It stops at the first frame that is anything else (a control frame,
        a fragment, a larger partial frame, an oversized or invalid one)
        and hands the rest, unchanged,
        to Autobahn's own frame processing, which then sees exactly the
        bytes it would have seen, so closing handshakes, pings, limits
        (close code 1009) and protocol errors behave as before. Autobahn's
        per-frame cost (a masker object, per-frame callbacks and eager
        debug logging) was most of the broker's CPU time per message.
        """
        if (
            self.state != self.STATE_OPEN
            or self.current_frame is not None
            or self.inside_message
            or self.failedByMe
            or self.stomp is None
            or not self.fast_receive
        ):
            self._dataReceived(data)
            return
        if self.data:
            data = self.data + data
            self.data = b""
        pos, wait = _fast_frames(self, data)
        if pos and self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            # As Autobahn does at the end of every data frame.
            self._cancelAutoPingTimeoutCall()
        if pos < len(data):
            rest = data[pos:] if pos else data
            if wait:
                # The start of a frame the fast path will take once it is
                # whole: keep it in Autobahn's own buffer, where Autobahn
                # would find it if the next bytes go its way.
                self.data = rest
            else:
                self._dataReceived(rest)

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
        counted, self.counted = self.counted, None
        if counted is not None:
            counted.release()
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

    :param connection_limit: the listener's connection limit, if any: a
        handshake over it is refused with HTTP 503.
    """

    protocol = StompWebSocketProtocol

    def __init__(
        self,
        broker: Broker,
        config: BrokerConfig,
        reactor: IReactorTime,
        connection_limit: ConnectionLimit | None = None,
    ) -> None:
        super().__init__(server=config.server_name, reactor=reactor)
        self.connection_limit = connection_limit
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
    broker: Broker,
    config: BrokerConfig,
    reactor: IReactorTime,
    connection_limit: ConnectionLimit | None = None,
) -> WebSocketResource:
    """
    Return a ``twisted.web`` resource serving STOMP over WebSocket.

    Mount it wherever an application wants the endpoint, e.g.
    ``root.putChild(b"stomp", websocket_resource(broker, config, reactor))``.
    With ``connection_limit``, handshakes over that limit are refused with
    HTTP 503 (:mod:`stomptw.listeners`).
    """
    return WebSocketResource(StompWebSocketFactory(broker, config, reactor, connection_limit))


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


#: The directory of the example pages inside the package.
EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")

#: Sent with every example page and file: nothing is fetched from elsewhere,
#: scripts come only from the broker, and WebSocket connections may go to
#: any broker (the live feed example takes a URL).
_EXAMPLE_HEADERS = {
    b"content-security-policy": (
        b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-cache",
}


class _ExampleConfig(Resource):
    """``config.js``: tells the example pages where the STOMP endpoint is."""

    isLeaf = True

    def __init__(self, ws_path: str) -> None:
        super().__init__()
        self._body = f"window.STOMPTW_WS_PATH = {json.dumps(ws_path)};\n".encode()

    def render_GET(self, request) -> bytes:
        for name, value in _EXAMPLE_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
        return self._body


class _ExampleFiles(File):
    """The example pages, with no directory listings and safe headers."""

    contentTypes = {
        **File.contentTypes,
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".html": "text/html; charset=utf-8",
        ".png": "image/png",
    }

    def directoryListing(self):
        return notFound(brief="No such page.")

    def render_GET(self, request):
        for name, value in _EXAMPLE_HEADERS.items():
            request.setHeader(name, value)
        return super().render_GET(request)

    def createSimilarFile(self, path):
        similar = super().createSimilarFile(path)
        similar.contentTypes = self.contentTypes
        return similar


def examples_resource(config: BrokerConfig) -> Resource:
    """
    Return the live examples (a chat room, a work queue and a frame
    inspector, plain HTML and JavaScript) as a ``twisted.web`` resource.

    The pages connect to ``config.ws_path`` on the host that served them;
    mount the STOMP endpoint there (:func:`websocket_resource`), e.g. as a
    child of this resource, which is what :func:`websocket_site` does.
    """
    root = _ExampleFiles(EXAMPLES_DIR, defaultType="application/octet-stream")
    root.indexNames = ["index.html"]
    root.putChild(b"config.js", _ExampleConfig(config.ws_path))
    return root


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
    root = examples_resource(config) if config.examples else _Index(config.ws_path)
    parent: Resource = root
    for segment in segments[:-1]:
        child = Resource()
        parent.putChild(segment, child)
        parent = child
    parent.putChild(segments[-1], websocket_resource(broker, config, reactor, connection_limit))
    # An HTTP request (a WebSocket handshake before it reaches Autobahn)
    # that stalls for the handshake timeout is dropped; twisted.web's own
    # default would keep it for a minute. Once a request has arrived, this
    # idle timeout is off (and never comes back on an upgraded connection).
    site = Site(root, timeout=config.ws_open_handshake_timeout)
    site.noisy = False
    site.displayTracebacks = False
    return site
