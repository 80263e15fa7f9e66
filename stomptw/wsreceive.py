"""
What a STOMP-over-WebSocket connection reads (:class:`StreamingReceive`, a
base of :class:`~stomptw.websocket.StompWebSocketProtocol`): complete simple
data frames go straight to the STOMP session, with the output they cause
coalesced (:mod:`stomptw.coalesce`); everything else goes to Autobahn,
whose data frames stream into the same session as they arrive.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol

from stomptw.coalesce import coalescing
from stomptw.wsframes import FAST_PARTIAL_MAX, read_simple_frames

__all__ = ["FAST_PARTIAL_MAX", "StreamingReceive"]

_OPEN = WebSocketServerProtocol.STATE_OPEN


class StreamingReceive:
    """
    The receiving side of the broker's WebSocket connection. It uses
    Autobahn's connection state (``state``, ``current_frame``, ``data`` and
    the rest, see :data:`stomptw.websocket.AUTOBAHN_INTERNALS`) and the
    connection's ``session`` and ``fast_receive``.
    """

    __slots__ = ()

    session: Any
    fast_receive: bool

    def dataReceived(self, data: bytes) -> None:
        """Take bytes from the socket, with the output they cause coalesced."""
        coalescing(self._receive, data)

    def _receive(self, data: bytes) -> None:
        """
        Complete, unfragmented data frames go straight to the STOMP session;
        everything else goes to Autobahn.

        The fast path handles only what Autobahn would handle the same way
        with nothing to remember: an open connection between messages, and
        the simple frames of :func:`stomptw.wsframes.read_simple_frames`. The
        start of such a frame (up to :data:`FAST_PARTIAL_MAX` of payload)
        waits in the buffer for the rest, as a pipelining client's writes are
        cut anywhere by TCP. At the first frame that is anything else (a
        control frame, a fragment, a larger partial frame, an oversized or
        invalid one) the rest goes, unchanged, to Autobahn's own frame
        processing, which then sees exactly the bytes it would have seen, so
        closing handshakes, pings, limits (close code 1009) and protocol
        errors behave as before.
        """
        if (
            self.state != _OPEN
            or self.current_frame is not None
            or self.inside_message
            or self.failedByMe
            or self.session is None
            or not self.fast_receive
        ):
            self._dataReceived(data)
            return
        if self.data:
            data = self.data + data
            self.data = b""
        found = read_simple_frames(
            data, self.maxFramePayloadSize, self.maxMessagePayloadSize, self.utf8validateIncoming
        )
        pos = 0
        wait = found.wait
        for payload, end in found.payloads:
            pos = end
            session = self.session
            if session is not None:
                session.data_received(payload)
            if self.state != _OPEN or self.failedByMe or self.session is None:
                wait = False
                break
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
        if not self.failedByMe and self.session is not None:
            self.session.data_received(payload)

    def onMessageFrameEnd(self) -> None:
        self.frame_data = None

    def onMessageEnd(self) -> None:
        pass
