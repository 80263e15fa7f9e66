"""
STOMP over WebSocket (RFC 6455), served by Autobahn.

Each WebSocket connection carries one :class:`~stomptw.session.StompSession`
and is itself that session's transport (:class:`StompWebSocketProtocol`).
Simple data frames take a fast path in both directions, with the frame
codec of :mod:`stomptw.wsframes`; everything else is Autobahn's.

:func:`websocket_resource` returns a ``twisted.web`` resource that an
application can mount in its own site; :func:`stomptw.wssite.websocket_site`
is the site the broker serves on its own WebSocket listener, and
:mod:`stomptw.origins` says which browser pages may connect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from stomptw.broker import Broker
from stomptw.coalesce import CoalescingOutput, coalescing
from stomptw.config import BrokerConfig
from stomptw.credentials import certificate_of

# The pages served beside the endpoint; their names stay importable from here.
from stomptw.examplepages import EXAMPLES_DIR, examples_resource
from stomptw.interfaces import IStompTransport
from stomptw.model import format_peer
from stomptw.origins import origin_allowed
from stomptw.protocol import set_high_water, shared_sweep
from stomptw.session import StompSession
from stomptw.wscompress import COMPRESS_MIN, SharedDeflate, accept_deflate
from stomptw.wsframes import (
    FAST_PARTIAL_MAX,
    OPCODE_BINARY,
    frame_header,
    opcode_for,
)
from stomptw.wsframes import unmask as _unmask  # noqa: F401 - the name tests know
from stomptw.wslean import LeanConnection, sharing_class
from stomptw.wsreceive import StreamingReceive

if TYPE_CHECKING:
    from stomptw.listeners import ConnectionLimit

__all__ = [
    "AUTOBAHN_INTERNALS",
    "FAST_PARTIAL_MAX",
    "EXAMPLES_DIR",
    "STOMP_SUBPROTOCOLS",
    "StompWebSocketFactory",
    "StompWebSocketProtocol",
    "examples_resource",
    "origin_allowed",
    "websocket_resource",
]

log = Logger()

#: WebSocket subprotocols for STOMP, most preferred first.
STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")


#: The parts of Autobahn's WebSocketServerProtocol that the fast paths and
#: the transport methods below use beyond its documented API, in one place.
#: A test (tests/test_websocket.py) checks that an open connection has every
#: one of them, so an Autobahn release that moves one fails loudly there;
#: setup.cfg bounds autobahn to the major versions tested.
AUTOBAHN_INTERNALS = (
    "state",
    "STATE_OPEN",
    "STATE_CLOSED",
    "failedByMe",
    "data",
    "current_frame",
    "inside_message",
    "send_queue",
    "_dataReceived",
    "_closeConnection",
    "_perMessageCompress",
    "autoFragmentSize",
    "maskServerFrames",
    "logFrames",
    "logOctets",
    "trackedTimings",
    "utf8validateIncoming",
    "autoPingTimeoutCall",
    "autoPingRestartOnAnyTraffic",
    "_cancelAutoPingTimeoutCall",
    "maxFramePayloadSize",
    "maxMessagePayloadSize",
)


_OPEN = WebSocketServerProtocol.STATE_OPEN


@implementer(IStompTransport, IPushProducer)
class StompWebSocketProtocol(
    CoalescingOutput, StreamingReceive, LeanConnection, WebSocketServerProtocol
):
    """
    An Autobahn WebSocket connection carrying one STOMP session.

    It is the session's :class:`~stomptw.interfaces.IStompTransport`: every
    incoming message, text or binary, is fed to the session as a byte stream
    (one STOMP frame may span several WebSocket messages, and one message may
    hold several frames), and every frame the session writes is sent as one
    WebSocket message, text when it is valid UTF-8 and binary otherwise. It
    is also the socket's push producer once the connection is open.

    What the session writes while a read is handled is sent when the read
    is done, in one block (see :mod:`stomptw.coalesce`).
    """

    #: The STOMP session, while the WebSocket is open.
    session: StompSession | None = None
    name = "ws"
    peer = "?"
    #: The client address it is counted under (with a per-address limit).
    counted_address: str | None = None
    #: The listener's connection limit while this connection counts against it.
    counted: ConnectionLimit | None = None
    #: Whether this connection is registered as the socket's producer.
    producing = False
    #: Whether incoming data frames may bypass Autobahn's frame processing
    #: (no frame or octet logging, no timing tracking; set on open).
    fast_receive = False
    #: Whether outgoing messages may bypass Autobahn's sendMessage (set on open).
    fast_send = False
    _linger: IDelayedCall | None = None

    # Read for every frame in and every message out by the fast paths:
    # slots, read as fast as a connection's own attributes (a value left to
    # the class, see LeanConnection.slim_down, is read about four times slower)
    # and taking no room in its dictionary. Autobahn sets its own before
    # reading them; __init__ sets the broker's.
    __slots__ = (
        "state",
        "current_frame",
        "inside_message",
        "failedByMe",
        "data",
        "maxFramePayloadSize",
        "maxMessagePayloadSize",
        "utf8validateIncoming",
        "autoPingTimeoutCall",
        "autoPingRestartOnAnyTraffic",
        "deflate",
        "deflate_bits",
        "_out",
        "_out_bytes",
    )

    def __init__(self) -> None:
        super().__init__()
        self._out: list[bytes] | None = None
        self._out_bytes = 0
        #: The listener's shared compressor once this connection negotiated
        #: permessage-deflate, and the window the client allows it.
        self.deflate: SharedDeflate | None = None
        self.deflate_bits = 15

    # -- IStompTransport ------------------------------------------------------------

    @property
    def max_message_size(self) -> int:
        """The largest message Autobahn will send (the session checks it)."""
        return self.maxMessagePayloadSize

    @property
    def disconnecting(self) -> bool:
        """True once the WebSocket has left the OPEN state: nothing more is sent."""
        return self.state != _OPEN

    def write(self, data: bytes) -> None:
        """
        Send ``data`` as one WebSocket message: text if it is valid UTF-8,
        binary otherwise.

        In the usual case (no fragmentation, frame logging or queued sync
        data) the single unmasked frame is built here and written straight
        to the socket, which is what Autobahn's ``sendMessage`` would write,
        without its per-message overhead. With permessage-deflate the
        payload is the listener's shared compressor's output (RSV1 set).
        """
        if self.state != _OPEN:
            return
        opcode = opcode_for(data)
        n = len(data)
        if self._send_queue or not self.fast_send or 0 < self.maxMessagePayloadSize < n:
            # Autobahn's own path (which raises PayloadExceededError when over).
            self.sendMessage(data, isBinary=opcode == OPCODE_BINARY)
            return
        deflate = self.deflate
        if deflate is not None and n >= COMPRESS_MIN:
            data = deflate.compress(data, self.deflate_bits)
            n = len(data)
            opcode |= _RSV1
        if n < 65536:
            self.write_out(frame_header(opcode, n) + data)
        else:
            self.flush_output()
            self.transport.writeSequence([frame_header(opcode, n), data])

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        Autobahn's writes (control frames, its own sendMessage) go after the
        held ones, in the same write when nothing asks otherwise: a close
        frame left for a later turn would be dropped when the client's reply
        is read first (Autobahn then aborts the connection).
        """
        out = self._out
        if out is not None:
            if not (sync or chopsize or self._send_queue or self.logOctets):
                out.append(data)
                self._out_bytes += len(data)
                self._count_sent(data)
                return
            self.flush_output()
        super().sendData(data, sync, chopsize)

    def pause_reading(self) -> None:
        """Stop reading from the socket."""
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read from the socket again."""
        if self.transport is not None:
            self.transport.resumeProducing()

    def call_soon(self, f, *args) -> None:
        """Call ``f(*args)`` on the next reactor turn."""
        self.factory.reactor.callLater(0, f, *args)

    def client_certificate(self) -> Any:
        """The client certificate an ``mtls:`` listener verified (wss://), if any."""
        return certificate_of(self.transport)

    def close(self, linger: float) -> None:
        """
        Start the WebSocket closing handshake (after queued messages); drop
        the connection if it has not closed within ``linger`` seconds. The
        close frame joins what the connection holds (see :meth:`sendData`).
        """
        self.release_producer()
        if self.state == self.STATE_OPEN:
            self.sendClose(code=1000)
        elif self.state != self.STATE_CLOSED:
            self.dropConnection(abort=False)
        self._linger = self.factory.reactor.callLater(linger, self._drop)

    def _drop(self) -> None:
        self._linger = None
        if self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

    # -- IPushProducer (registered with the socket once open) ---------------------

    def pauseProducing(self) -> None:
        """The socket's output buffer is over the high-water mark."""
        if self.session is not None:
            self.session.pause_writing()

    def resumeProducing(self) -> None:
        """The output buffer drained: deliver again, coalesced."""
        if self.session is not None:
            coalescing(self.session.resume_writing)

    def stopProducing(self) -> None:
        """The connection is going; :meth:`onClose` cleans up."""

    def release_producer(self) -> None:
        """Unregister this connection as the socket's producer."""
        if self.producing:
            self.producing = False
            transport = self.transport
            if transport is not None and getattr(transport, "producer", True) is not None:
                transport.unregisterProducer()

    # -- Autobahn's side ---------------------------------------------------------

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
            peer = self.transport.getPeer()
            address = getattr(peer, "host", None)
            refusal = limit.refusal(address)
            if refusal is not None:
                limit.refuse(peer, refusal)
                raise ConnectionDeny(503, refusal)
            # Counted from here until the connection is lost (onClose).
            limit.acquire(address)
            self.counted = limit
            self.counted_address = address
        for name in STOMP_SUBPROTOCOLS:
            if name in request.protocols:
                return name
        # A client that offers no STOMP subprotocol is still served.
        return None

    def onOpen(self) -> None:
        # Outgoing frames are built by write() unless an option needs
        # Autobahn's own sendMessage.
        self.fast_receive = not (self.logFrames or self.logOctets or self.trackedTimings)
        self.fast_send = (
            self.fast_receive and not self.autoFragmentSize and not self.maskServerFrames
        )
        factory = self.factory
        pmce = self._perMessageCompress
        if pmce is not None:
            self.deflate = factory.deflate
            self.deflate_bits = pmce.server_max_window_bits
        transport = self.transport
        self.peer = format_peer(transport.getPeer())
        # This connection replaces the HTTP channel it was upgraded from as
        # the socket's producer.
        try:
            transport.registerProducer(self, True)
        except RuntimeError:
            transport.unregisterProducer()
            transport.registerProducer(self, True)
        self.producing = True
        set_high_water(transport, factory.config.write_high_water)
        self.hold_at_most(factory.config.write_high_water)
        self.session = StompSession(
            factory.broker, factory.config, self, factory.sweep, factory.reactor.seconds
        )
        self.session.connection_made()
        self.slim_down()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.drop_output()
        counted, self.counted = self.counted, None
        if counted is not None:
            counted.release(self.counted_address)
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        session, self.session = self.session, None
        if session is not None:
            session.connection_lost(
                f"WebSocket closed, code {code}" + (f": {reason}" if reason else "")
            )


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
        self.broker = broker
        self.config = config
        self.sweep = shared_sweep(broker, config, reactor)
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
        #: The compressor every connection of this listener shares (None
        #: with ``--ws-compression off``: offers are then declined).
        self.deflate: SharedDeflate | None = None
        if config.ws_compression == "on":
            self.deflate = SharedDeflate()
            self.setProtocolOptions(perMessageCompressionAccept=accept_deflate)

    def setProtocolOptions(self, **options: Any) -> None:
        """
        Set Autobahn's options (:meth:`WebSocketServerFactory.setProtocolOptions`)
        for connections made from now on.

        Connections share what they hold alike through a subclass of the
        factory's protocol class (:func:`~stomptw.wslean.sharing_class`),
        made afresh here so that connections already open keep the options
        they opened with, as Autobahn's copies would.
        """
        super().setProtocolOptions(**options)
        self.protocol = sharing_class(self.protocol)


#: The first-byte bit of a compressed message (RFC 7692 "Per-Message Compressed").
_RSV1 = 0x40


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
