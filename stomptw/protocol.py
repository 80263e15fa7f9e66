"""
The STOMP session: bytes in, frames through the codec, broker calls out.

:class:`StompProtocol` is a Twisted protocol used for every transport: TCP
connects it to a socket directly; WebSocket hosts it behind a small adapter
(:mod:`stomptw.websocket`). It keeps the per-connection state (version,
subscriptions, unacknowledged messages, transactions) and schedules
heart-beats and timeouts on an injected ``IReactorTime``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw.broker import (
    ACK_MODES,
    Broker,
    DestinationError,
    DestinationFull,
    Message,
    Subscription,
    message_size,
)
from stomptw.config import SUPPORTED_VERSIONS, BrokerConfig
from stomptw.destinations import Topic
from stomptw.frame import (
    FrameError,
    FrameParser,
    FrameTooLarge,
    encode_frame,
    encode_message,
    message_parts,
)
from stomptw.interfaces import IMessageConsumer

__all__ = ["ProtocolError", "StompFactory", "StompProtocol"]

#: Headers of a SEND frame that do not travel on to MESSAGE frames; the
#: broker sets its own ``destination``, ``message-id``, ``subscription``,
#: ``ack``, ``content-length`` and ``redelivered``.
NOT_FORWARDED = frozenset(
    {
        "destination",
        "message-id",
        "subscription",
        "ack",
        "content-length",
        "transaction",
        "receipt",
        "redelivered",
    }
)

#: Client frames that may carry a body.
_BODY_ALLOWED = frozenset({"SEND"})


class ProtocolError(Exception):
    """
    A client broke the protocol; the session ends with an ERROR frame.

    :ivar message: a one-line summary for the ERROR's ``message`` header.
    :ivar details: the ERROR's body: what went wrong and how to fix it.
    :ivar headers: extra ERROR headers (``version`` on a failed negotiation).
    """

    def __init__(self, message: str, details: str = "", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


def _require(frame_headers: dict[str, str], command: str, name: str) -> str:
    value = frame_headers.get(name)
    if value is None or value == "":
        raise ProtocolError(
            f"{command} frame is missing the required '{name}' header",
            f"Every {command} frame must carry a non-empty '{name}' header.",
        )
    return value


#: SUBSCRIBE/UNSUBSCRIBE headers that name a durable topic subscription, in
#: order of precedence (ActiveMQ Artemis, then ActiveMQ Classic).
_DURABLE_NAME_HEADERS = (
    "durable-subscriber-name",
    "durable-subscription-name",
    "activemq.subscriptionName",
)


def _durable_name(headers: dict[str, str], sub_id: str | None) -> str | None:
    """
    The durable subscription a SUBSCRIBE or UNSUBSCRIBE names, if any: one of
    :data:`_DURABLE_NAME_HEADERS`, or (RabbitMQ's convention) the ``id`` when
    ``durable:true`` (or the older ``persistent:true``) is set and
    ``auto-delete`` is not ``true``.
    """
    for name in _DURABLE_NAME_HEADERS:
        value = headers.get(name)
        if value:
            return value
    if (headers.get("durable") == "true" or headers.get("persistent") == "true") and headers.get(
        "auto-delete"
    ) != "true":
        return sub_id or None
    return None


@implementer(IMessageConsumer, IPushProducer)
class StompProtocol(Protocol):
    """
    One STOMP client connection.

    :ivar version: the negotiated protocol version, ``None`` before CONNECT.
    :ivar session_id: the session identifier sent in CONNECTED.
    :ivar subscriptions: the client's subscriptions by id.
    """

    log = Logger()

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
        self.version: str | None = None
        self.session_id: str = ""
        self.subscriptions: dict[str, Subscription] = {}
        #: The CONNECT frame's ``client-id`` (durable subscriptions belong to it).
        self.client_id = ""
        #: False while the transport's output buffer is over the high-water mark.
        self.writable = True
        self._producer_registered = False
        # Queues that are full and stop this client's input until they have room.
        self._blockers: set[object] = set()
        self._reading_paused = False
        # Output written while the transport is over its high-water mark; past
        # _output_limit the broker stops reading (the client does not read).
        self._unsent = 0
        self._output_full = False
        self._output_limit = max(4 * config.write_high_water, 1024 * 1024)
        # Bytes held in open transactions, in all and per transaction.
        self._tx_bytes = 0
        # Per open transaction: destination -> [messages, bytes] it will send.
        self._tx_room: dict[str, dict[str, list[int]]] = {}
        # A persistent message was accepted by the frame being handled.
        self._needs_sync = False
        # RECEIPTs in frame order: [receipt id, ready to send].
        self._receipts: deque[list] = deque()
        # DISCONNECT is waiting for earlier messages to be stored.
        self._draining = False
        # ack id -> subscription, for every unacknowledged delivery.
        self._pending: dict[str, Subscription] = {}
        self._ack_ids = itertools.count(1)
        self._transactions: dict[str, list[tuple[Callable[..., None], tuple]]] = {}
        self._closing = False
        self._peer = "?"
        self._opened = 0.0
        self._last_received = 0.0
        self._last_sent = 0.0
        self._max_write = 0
        self._send_interval = 0.0
        self._receive_timeout = 0.0
        self._login_timer = None
        self._send_timer = None
        self._receive_timer = None
        self._linger_timer = None
        # Why the broker closed, when it did; otherwise the transport says.
        self._close_reason = ""
        self._closed_waiters: list[Deferred] = []
        self.parser = FrameParser(config.limits)
        # Traffic counters for metrics (shared by every session).
        self._counters = broker.counters
        self._handlers: dict[str, Callable] = {
            "SEND": self._on_send,
            "SUBSCRIBE": self._on_subscribe,
            "UNSUBSCRIBE": self._on_unsubscribe,
            "ACK": self._on_ack,
            "NACK": self._on_nack,
            "BEGIN": self._on_begin,
            "COMMIT": self._on_commit,
            "ABORT": self._on_abort,
            "DISCONNECT": self._on_disconnect,
        }

    # -- connection lifecycle -------------------------------------------------

    def connectionMade(self) -> None:
        now = self.clock.seconds()
        self._opened = self._last_received = self._last_sent = now
        # A WebSocket transport bounds the size of what it can send.
        self._max_write = getattr(self.transport, "max_message_size", 0)
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            try:
                register(self, True)
            except RuntimeError:
                pass
            else:
                self._producer_registered = True
                _set_high_water(self.transport, self.config.write_high_water)
        peer = self.transport.getPeer()
        self._peer = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
        self.broker.sessions.add(self)
        self._login_timer = self.clock.callLater(self.config.login_timeout, self._login_timed_out)
        self.log.debug(
            "connection opened from {peer} over {transport}",
            peer=self._peer,
            transport=self.transport_name,
        )

    def connectionLost(self, reason: Failure = None) -> None:
        self._closing = True
        self._cancel_timers("_linger_timer")
        self._end_session()
        self.broker.sessions.discard(self)
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self.log.info(
            "connection closed: peer={peer} transport={transport} session={session} "
            "duration={duration:.1f}s reason={reason}",
            peer=self._peer,
            transport=self.transport_name,
            session=self.session_id or "-",
            duration=self.clock.seconds() - self._opened,
            reason=self._close_reason
            or (reason.getErrorMessage() if reason is not None else "connection lost"),
        )

    def dataReceived(self, data: bytes) -> None:
        self._counters.bytes_received += len(data)
        if self._closing or self._draining:
            return
        self._last_received = self.clock.seconds()
        self.parser.feed(data)
        self._process()

    def _process(self) -> None:
        """Handle the frames the parser holds, until input is paused."""
        parser = self.parser
        while not (self._closing or self._reading_paused or self._draining):
            try:
                frame = parser.next_frame()
            except FrameError as e:
                details = (
                    _limit_details(e)
                    if isinstance(e, FrameTooLarge)
                    else (e.details or "The frame could not be parsed.")
                )
                self._fail(ProtocolError(e.message, details), receipt=e.headers.get("receipt"))
                return
            if frame is None:
                return
            self._handle(frame.command, frame.headers, frame.body)

    # -- dispatch ---------------------------------------------------------------

    def _handle(self, command: str, headers: dict[str, str], body: bytes) -> None:
        received = self._counters.frames_received
        if command in received:
            received[command] += 1
        else:
            received["OTHER"] += 1
        try:
            if body and command not in _BODY_ALLOWED:
                raise ProtocolError(
                    f"{command} frame must not have a body",
                    "Only SEND frames may carry a body.",
                )
            if self.version is None:
                if command in ("CONNECT", "STOMP"):
                    self._on_connect(headers)
                    return
                raise ProtocolError(
                    f"{command} received before CONNECT",
                    "The first frame on a connection must be CONNECT or STOMP.",
                )
            handler = self._handlers.get(command)
            if handler is None:
                if command in ("CONNECT", "STOMP"):
                    raise ProtocolError(
                        "already connected",
                        f"This session has already been established; a second {command} "
                        "is not allowed. Open a new connection instead.",
                    )
                raise ProtocolError(
                    f"unknown command {command[:40]!r}",
                    "Client frames are SEND, SUBSCRIBE, UNSUBSCRIBE, BEGIN, COMMIT, ABORT, "
                    "ACK, NACK and DISCONNECT (plus CONNECT or STOMP to start).",
                )
            handler(headers, body)
        except ProtocolError as e:
            self._fail(e, receipt=headers.get("receipt"))
            return
        except Exception:
            # A broker bug must not leave the session in an unknown state:
            # log it in full, tell the client in words, and close.
            self.log.failure(
                "internal error handling {command} from {peer}",
                command=command,
                peer=self._peer,
                transport=self.transport_name,
                session=self.session_id or "-",
            )
            error = ProtocolError(
                "internal broker error",
                f"The broker failed while processing a {command} frame. This is a bug in "
                "the broker, not in the client; it has been logged.",
            )
            self._fail(error, receipt=headers.get("receipt"))
            return
        needs_sync, self._needs_sync = self._needs_sync, False
        receipt = headers.get("receipt")
        if receipt is not None and command != "DISCONNECT" and not self._closing:
            # Even when this frame made the session fail (an ERROR waiting for
            # the store): it took effect, and its RECEIPT goes out first.
            self._receipt(receipt, needs_sync)

    def _receipt(self, receipt: str, needs_sync: bool) -> None:
        """
        Send a RECEIPT, in frame order; for a frame that accepted persistent
        messages, once the store has them.
        """
        if not needs_sync and not self._receipts:
            self._send("RECEIPT", {"receipt-id": receipt})
            return
        entry = [receipt, not needs_sync]
        self._receipts.append(entry)
        if needs_sync:
            self.broker.sync().addCallbacks(
                self._stored, self._store_failed, callbackArgs=(entry,), errbackArgs=(entry,)
            )

    def _stored(self, result: object, entry: list) -> None:
        entry[1] = True
        receipts = self._receipts
        while receipts and receipts[0][1]:
            receipt = receipts.popleft()[0]
            if not self._closing:
                self._send("RECEIPT", {"receipt-id": receipt})

    def _store_failed(self, failure: Failure, entry: list) -> None:
        self._receipts.clear()
        if not self._closing:
            self._fail(
                ProtocolError(
                    "message could not be stored",
                    "The broker could not write a persistent message to its store: "
                    f"{failure.getErrorMessage()}. Messages without a RECEIPT may not have "
                    "been accepted; send them again.",
                ),
                receipt=entry[0],
            )

    # -- flow control ------------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's output buffer is over the high-water mark."""
        self.writable = False

    def resumeProducing(self) -> None:
        """The output buffer drained: take messages again."""
        self.writable = True
        self._unsent = 0
        if self._output_full:
            self._output_full = False
            self._update_reading()
        for sub in list(self.subscriptions.values()):
            if not self.writable:
                break
            self.broker.ready(sub)

    def stopProducing(self) -> None:
        """The connection is going; :meth:`connectionLost` cleans up."""

    def block(self, queue: object) -> None:
        """Stop reading from this client until ``queue`` has room."""
        if not self._blockers:
            kind = getattr(queue, "kind", "queue")
            self.log.info(
                "producer {peer} (session {session}) blocked: {queue} is full"
                if kind == "queue"
                else "producer {peer} (session {session}) blocked: a subscriber of {queue} "
                "is --slow-topic-limit messages behind",
                peer=self._peer,
                transport=self.transport_name,
                session=self.session_id or "-",
                queue=getattr(queue, "name", queue),
            )
        self._blockers.add(queue)
        self._update_reading()

    def unblock(self, queue: object) -> None:
        """``queue`` has room again; read on once no queue blocks this client."""
        self._blockers.discard(queue)
        self._update_reading()

    def _update_reading(self) -> None:
        """Pause or resume reading from the client as the holds on it say."""
        hold = bool(self._blockers) or self._output_full
        if hold == self._reading_paused or self._closing:
            return
        self._reading_paused = hold
        if hold:
            pause = getattr(self.transport, "pauseProducing", None)
            if pause is not None:
                pause()
            return
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None:
            resume()
        # Frames already read wait in the parser; not from inside the queue.
        self.clock.callLater(0, self._resume_frames)

    def _resume_frames(self) -> None:
        if not self._closing and not self._reading_paused:
            self._last_received = self.clock.seconds()
            self._process()

    def slow_consumer(self, subscription: Subscription, reason: str) -> None:
        """The broker's slow-consumer policy ends this session."""
        if not self._closing:
            self._fail(
                ProtocolError(
                    "slow consumer",
                    f"{reason}; the broker's policy for topic subscribers that stay slow is "
                    "to disconnect them. Read faster, or use a queue.",
                ),
                reason=f"slow consumer: {reason}",
            )

    # -- sending ------------------------------------------------------------------

    def _send(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        self._counters.frames_sent[command] += 1
        self._write(
            encode_frame(command, headers, body, self.version or "1.0", content_length=bool(body))
        )

    def _write(self, data: bytes) -> None:
        """Write one frame (or heart-beat) and note when, for the heart-beat timer."""
        self.transport.write(data)
        self._counters.bytes_sent += len(data)
        self._last_sent = self.clock.seconds()
        if not self.writable:
            # Not messages (they wait), but RECEIPTs and the like: a client
            # that sends and never reads must not make the broker buffer them
            # without bound.
            self._unsent += len(data)
            if self._unsent > self._output_limit and not self._output_full:
                self._output_full = True
                self._update_reading()

    def deliver(self, subscription: Subscription, message: Message) -> bool:
        """
        Send ``message`` to the client as a MESSAGE frame.

        Return False, having sent nothing, when this connection cannot carry
        it: the session is closing, or the frame is larger than the
        transport's message limit (a WebSocket connection then ends with an
        ERROR). A queue then keeps the message for another subscriber; a
        topic drops this subscriber's copy.
        """
        if self._closing or self._draining or self.transport.disconnecting:
            return False
        version = self.version or "1.0"
        ack_id = None
        if subscription.ack_mode != "auto":
            ack_id = str(next(self._ack_ids))
        count = message.delivery_count
        # The parts every delivery of a topic message shares are encoded
        # once for all its subscribers. Not kept for a queue message (nor a
        # durable subscription's copy), which is delivered once as a rule:
        # the encoded copy would double the memory its body holds.
        encoded = message.encoded
        if encoded is not None and encoded[0] == version:
            parts = encoded[1]
        else:
            parts = message_parts(
                message.message_id, message.destination, message.headers, message.body, version
            )
            if isinstance(subscription.target, Topic):
                message.encoded = (version, parts)
        if parts is not None:
            data = encode_message(
                parts,
                subscription.id,
                version,
                ack_id if version == "1.2" else None,
                count > 1,
                count - 1 if count else 0,
            )
        else:
            # The sender's headers override per-delivery ones: the general path.
            headers = {
                "subscription": subscription.id,
                "message-id": message.message_id,
                "destination": message.destination,
            }
            if ack_id is not None and version == "1.2":
                headers["ack"] = ack_id
            if count > 1:
                headers["redelivered"] = "true"
            headers["x-delivery-count"] = str(count - 1) if count else "0"
            headers.update(message.headers)
            data = encode_frame("MESSAGE", headers, message.body, version)
        limit = self._max_write
        if limit and len(data) > limit:
            self._fail(
                ProtocolError(
                    "message too large for this connection",
                    f"A {len(data)}-byte MESSAGE frame for subscription {subscription.id!r} is "
                    f"over this connection's WebSocket message limit of {limit} bytes. The "
                    "message stays with the broker for other subscribers.",
                )
            )
            return False
        if ack_id is not None:
            subscription.unacked[ack_id] = message
            self._pending[ack_id] = subscription
        self._counters.frames_sent["MESSAGE"] += 1
        self._write(data)
        return True

    # -- closing ------------------------------------------------------------------

    def shutdown(self) -> Deferred:
        """
        End the session because the broker is stopping: an ERROR saying so,
        then the same orderly close as after any ERROR (bounded by
        ``close_linger``). The Deferred fires once the connection is gone.
        """
        return self._close_with(
            ProtocolError(
                "broker is shutting down",
                "The broker is stopping and closes every connection; reconnect "
                "later. Unacknowledged messages go back to their queues.",
            ),
            "broker shutdown",
        )

    def close_by_operator(self, reason: str = "") -> Deferred:
        """
        End the session because an operator asked to (the admin API): an
        ERROR "closed by the operator" (its body says ``reason`` when given),
        then the usual orderly close. Fires once the connection is gone.
        """
        details = "An operator closed this connection through the broker's admin API."
        if reason:
            details += f" Reason: {reason}"
        return self._close_with(
            ProtocolError("closed by the operator", details),
            "closed by the operator" + (f": {reason}" if reason else ""),
        )

    def _close_with(self, error: ProtocolError, reason: str) -> Deferred:
        """End the session with ``error``; a Deferred that fires once it is gone."""
        done: Deferred = Deferred()
        if self in self.broker.sessions:
            self._closed_waiters.append(done)
            if not self._closing:
                self._fail(error, reason=reason)
        else:
            done.callback(None)
        return done

    def _fail(self, error: ProtocolError, reason: str = "", receipt: str | None = None) -> None:
        """
        Send an ERROR frame for ``error`` (with ``receipt-id`` when the failing
        frame asked for ``receipt``), then close the connection.

        RECEIPTs still waiting for the store go out first: the client must
        know which of its persistent messages were accepted.
        """
        if self._receipts:
            # No frame is read meanwhile. Check again on the next reactor
            # turn, when every RECEIPT of this commit has gone out.
            self._draining = True
            self.broker.sync().addBoth(
                lambda _: self.clock.callLater(0, self._fail, error, reason, receipt)
            )
            return
        if self._closing:
            return
        if not reason:
            self.log.info(
                "protocol error from {peer} (session {session}): {error}",
                peer=self._peer,
                transport=self.transport_name,
                session=self.session_id or "-",
                error=error.message,
            )
        headers = {"message": error.message}
        headers.update(error.headers)
        if receipt is not None:
            headers.setdefault("receipt-id", receipt)
        headers["content-type"] = "text/plain"
        body = (error.details or error.message).encode("utf-8")
        if not body.endswith(b"\n"):
            body += b"\n"
        self._send("ERROR", headers, body)
        self._close_reason = reason or f"protocol error: {error.message}"
        self._close_gracefully()

    def _close_gracefully(self) -> None:
        """
        Stop reading frames and close once everything written has gone out.

        On TCP the write side is shut down first (the peer sees end of
        stream after the last frame) and whatever the peer still sends is
        read and discarded, so that the close never resets the connection
        under the frames just written. If the peer does not close within
        ``close_linger`` seconds, the connection is dropped.
        """
        if self._closing:
            return
        self._closing = True
        self._end_session()
        transport = self.transport
        if self._producer_registered:
            # A transport with a producer registered does not close.
            self._producer_registered = False
            transport.unregisterProducer()
        if self._reading_paused:
            # Read (and discard) again, so that the client's close is seen.
            self._reading_paused = False
            resume = getattr(transport, "resumeProducing", None)
            if resume is not None:
                resume()
        self._linger_timer = close_lingering(transport, self.clock, self.config.close_linger)

    def _cancel_timers(self, *extra: str) -> None:
        for name in ("_login_timer", "_send_timer", "_receive_timer", *extra):
            timer = getattr(self, name)
            if timer is not None and timer.active():
                timer.cancel()
            setattr(self, name, None)

    def _end_session(self) -> None:
        """
        Release what the session holds, once: open transactions are aborted,
        subscriptions end and their unacknowledged messages go back to their
        queues. Done as soon as the broker decides to close, so that no
        message is handed to a connection that is going away.
        """
        self._cancel_timers()
        self._transactions.clear()
        self._tx_room.clear()
        self._tx_bytes = 0
        blockers, self._blockers = self._blockers, set()
        for queue in blockers:
            queue.blocked.discard(self)
        subs = list(self.subscriptions.values())
        self.subscriptions.clear()
        self._pending.clear()
        # Detach every subscription before any message is requeued, so that
        # what one returns is never handed to a sibling on this same session.
        for sub in subs:
            sub.active = False
        for sub in subs:
            self.broker.unsubscribe(sub)

    def _login_timed_out(self) -> None:
        self._login_timer = None
        self._fail(
            ProtocolError(
                "no CONNECT frame received in time",
                f"A client must send CONNECT or STOMP within {self.config.login_timeout:g} "
                "seconds of opening the connection.",
            )
        )

    # -- heart-beats ------------------------------------------------------------------

    def _start_heartbeats(self, send_ms: int, receive_ms: int) -> None:
        if send_ms:
            # Beats go out ahead of the deadline so that reactor latency
            # never makes one late.
            self._send_interval = send_ms / 1000.0 * 0.75
            self._send_timer = self.clock.callLater(self._send_interval, self._send_heartbeat)
        if receive_ms:
            self._receive_timeout = receive_ms / 1000.0 * self.config.heartbeat_grace
            self._receive_timer = self.clock.callLater(self._receive_timeout, self._check_receive)

    def _send_heartbeat(self) -> None:
        now = self.clock.seconds()
        due = self._last_sent + self._send_interval
        if now >= due - 1e-6:
            self._write(b"\n")
            due = now + self._send_interval
        self._send_timer = self.clock.callLater(due - now, self._send_heartbeat)

    def _check_receive(self) -> None:
        now = self.clock.seconds()
        deadline = self._last_received + self._receive_timeout
        if self._reading_paused:
            # The broker itself stopped reading (a full queue): the client
            # is not to blame for the silence.
            deadline = now + self._receive_timeout
        elif now >= deadline - 1e-6:
            self._receive_timer = None
            self._counters.heartbeat_timeouts += 1
            self.log.info(
                "heart-beat timeout: nothing from {peer} (session {session}) for {seconds:.1f}s",
                peer=self._peer,
                transport=self.transport_name,
                session=self.session_id or "-",
                seconds=now - self._last_received,
            )
            self._fail(
                ProtocolError(
                    "heart-beat timeout",
                    f"Nothing arrived from the client for {now - self._last_received:.1f} "
                    "seconds although heart-beats were agreed in CONNECT/CONNECTED.",
                )
            )
            return
        self._receive_timer = self.clock.callLater(deadline - now, self._check_receive)

    # -- frame handlers -------------------------------------------------------------

    def _on_connect(self, headers: dict[str, str]) -> None:
        accept = headers.get("accept-version")
        offered = ["1.0"] if accept is None else [v.strip() for v in accept.split(",")]
        common = [v for v in SUPPORTED_VERSIONS if v in offered]
        if not common:
            raise ProtocolError(
                "unsupported protocol version",
                f"The client accepts STOMP versions {accept!r}; this broker speaks "
                + ", ".join(reversed(SUPPORTED_VERSIONS))
                + ".",
                {"version": ",".join(reversed(SUPPORTED_VERSIONS))},
            )
        version = common[0]
        send_ms = receive_ms = 0
        if version != "1.0":
            cx, cy = _parse_heartbeat(headers.get("heart-beat", "0,0"))
            sx, sy = self.config.heartbeat_send_ms, self.config.heartbeat_receive_ms
            send_ms = 0 if (sx == 0 or cy == 0) else max(sx, cy)
            receive_ms = 0 if (cx == 0 or sy == 0) else max(cx, sy)
        self.version = version
        self.client_id = headers.get("client-id", "")
        self.parser.version = version
        self.session_id = self.broker.new_session_id()
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None
        connected = {
            "version": version,
            "server": self.config.server_name,
            "session": self.session_id,
        }
        if version != "1.0":
            connected["heart-beat"] = f"{send_ms},{receive_ms}"
        self._send("CONNECTED", connected)
        self._start_heartbeats(send_ms, receive_ms)
        self.log.info(
            "session {session} established: peer={peer} transport={transport} "
            "version={version} heart-beat={send_ms},{receive_ms}",
            session=self.session_id,
            peer=self._peer,
            transport=self.transport_name,
            version=version,
            send_ms=send_ms,
            receive_ms=receive_ms,
        )

    def _transaction(self, headers: dict[str, str]) -> list | None:
        name = headers.get("transaction")
        if name is None:
            return None
        actions = self._transactions.get(name)
        if actions is None:
            raise ProtocolError(
                f"unknown transaction {name!r}",
                "The frame names a transaction that was not started with BEGIN on this "
                "connection, or that has already been committed or aborted.",
            )
        return actions

    def _on_send(self, headers: dict[str, str], body: bytes) -> None:
        destination = _require(headers, "SEND", "destination")
        if destination not in self.broker.destinations:
            # A destination that exists has passed this check.
            try:
                self.broker.check_destination(destination)
            except DestinationError as e:
                raise ProtocolError(f"invalid destination: {e}", _DESTINATION_HELP) from None
        expires = headers.get("expires")
        if expires is not None and not expires.isdigit():
            raise ProtocolError(
                f"invalid expires header {expires[:40]!r}",
                "expires must be a time in milliseconds since the epoch (0 means never).",
            )
        forwarded = {k: v for k, v in headers.items() if k not in NOT_FORWARDED}
        actions = self._transaction(headers)
        if actions is not None:
            self._hold_in_transaction(
                headers["transaction"], destination, message_size(forwarded, body)
            )
            actions.append((self._publish, (destination, forwarded, body)))
        else:
            self._publish(destination, forwarded, body)

    def _hold_in_transaction(self, name: str, destination: str, size: int) -> None:
        limit = self.config.max_transaction_bytes
        if limit and self._tx_bytes + size > limit:
            raise ProtocolError(
                "transaction too large",
                f"The open transactions of this connection would hold more than {limit} "
                "bytes of messages; COMMIT smaller transactions, or ask the operator to "
                "raise --max-transaction-bytes.",
            )
        self._tx_bytes += size
        room = self._tx_room.setdefault(name, {}).setdefault(destination, [0, 0])
        room[0] += 1
        room[1] += size

    def _close_transaction(self, name: str) -> dict[str, list[int]]:
        """Forget transaction ``name``; return what it was to send, per destination."""
        del self._transactions[name]
        room = self._tx_room.pop(name, {})
        self._tx_bytes -= sum(size for _, size in room.values())
        return room

    def _publish(
        self, destination: str, headers: dict[str, str], body: bytes, reject: bool = True
    ) -> None:
        try:
            message = self.broker.send(destination, headers, body, self, reject)
        except DestinationFull as e:
            raise _full(destination, e) from None
        if message.persistent:
            self._needs_sync = True

    def _on_subscribe(self, headers: dict[str, str], body: bytes) -> None:
        destination = _require(headers, "SUBSCRIBE", "destination")
        sub_id = headers.get("id")
        if not sub_id:
            if self.version != "1.0":
                _require(headers, "SUBSCRIBE", "id")
            sub_id = destination
        if sub_id in self.subscriptions:
            raise ProtocolError(
                f"subscription id {sub_id!r} is already in use",
                "Each SUBSCRIBE on a connection needs its own id; UNSUBSCRIBE the old one first.",
            )
        ack = headers.get("ack", "auto")
        if ack not in ACK_MODES:
            raise ProtocolError(
                f"invalid ack mode {ack!r}",
                "The ack header of SUBSCRIBE must be auto, client or client-individual.",
            )
        prefetch = self.config.default_prefetch
        raw = headers.get("prefetch-count")
        if raw is not None:
            if not raw.isdigit():
                raise ProtocolError(
                    f"invalid prefetch-count {raw!r}",
                    "prefetch-count must be a non-negative integer (0 means no limit).",
                )
            prefetch = int(raw)
        try:
            self.broker.check_destination(destination)
        except DestinationError as e:
            raise ProtocolError(f"invalid destination: {e}", _DESTINATION_HELP) from None
        durable = None
        if destination.startswith("/topic/"):
            name = _durable_name(headers, sub_id)
            if name is not None:
                durable = (self.client_id, name)
        sub = Subscription(self, sub_id, destination, ack, prefetch, durable)
        # Registered first: delivering at once may end the session, which
        # must then find and release this subscription too.
        self.subscriptions[sub_id] = sub
        if durable is not None:
            # Its RECEIPT says the subscription is stored.
            self._needs_sync = True
        try:
            self.broker.subscribe(sub)
        except DestinationError as e:
            self.subscriptions.pop(sub_id, None)
            raise ProtocolError(
                str(e),
                "A durable subscription takes one subscriber at a time; close the other "
                "connection, or use another subscription name or client-id.",
            ) from None

    def _on_unsubscribe(self, headers: dict[str, str], body: bytes) -> None:
        sub_id = headers.get("id")
        if not sub_id and self.version == "1.0":
            sub_id = headers.get("destination")
        if not sub_id:
            _require(headers, "UNSUBSCRIBE", "id")
        sub = self.subscriptions.pop(sub_id, None)
        durable = _durable_name(headers, sub_id)
        if sub is not None:
            for ack_id in sub.unacked:
                self._pending.pop(ack_id, None)
            self.broker.unsubscribe(sub)
        removed = durable is not None and self.broker.remove_durable(self.client_id, durable)
        if removed:
            self._needs_sync = True
        if sub is None and not removed:
            raise ProtocolError(
                f"no subscription with id {sub_id!r}",
                "UNSUBSCRIBE must name the id of an active subscription on this connection"
                + (
                    f", or a durable subscription of client-id {self.client_id!r}."
                    if durable is not None
                    else "."
                ),
            )

    def _find_delivery(self, command: str, headers: dict[str, str]) -> tuple[Subscription, str]:
        """Return the subscription and ack id an ACK or NACK refers to."""
        if self.version == "1.2":
            ack_id = _require(headers, command, "id")
            sub = self._pending.get(ack_id)
            if sub is None:
                raise ProtocolError(
                    f"{command} for unknown ack id {ack_id!r}",
                    f"The id of {command} must be the ack header of a MESSAGE received on this "
                    "connection in a client ack mode and not yet acknowledged.",
                )
            return sub, ack_id
        message_id = _require(headers, command, "message-id")
        sub_id = headers.get("subscription")
        if self.version == "1.1" and not sub_id:
            _require(headers, command, "subscription")
        if sub_id:
            sub = self.subscriptions.get(sub_id)
            candidates = [sub] if sub is not None else []
        else:
            candidates = list(self.subscriptions.values())
        for sub in candidates:
            for key, message in sub.unacked.items():
                if message.message_id == message_id:
                    return sub, key
        raise ProtocolError(
            f"{command} for unknown message {message_id!r}",
            f"{command} must name a message received on this connection in a client ack "
            "mode and not yet acknowledged.",
        )

    def _on_ack(self, headers: dict[str, str], body: bytes) -> None:
        sub, ack_id = self._find_delivery("ACK", headers)
        actions = self._transaction(headers)
        if actions is not None:
            actions.append((self._settle, (sub, ack_id, True)))
        else:
            self._settle(sub, ack_id, True)

    def _on_nack(self, headers: dict[str, str], body: bytes) -> None:
        if self.version == "1.0":
            raise ProtocolError(
                "NACK is not part of STOMP 1.0",
                "STOMP 1.0 has no NACK frame; connect with accept-version 1.1 or 1.2 to use it.",
            )
        sub, ack_id = self._find_delivery("NACK", headers)
        actions = self._transaction(headers)
        if actions is not None:
            actions.append((self._settle, (sub, ack_id, False)))
        else:
            self._settle(sub, ack_id, False)

    def _settle(self, sub: Subscription, ack_id: str, ack: bool) -> None:
        # ``client`` mode is cumulative for ACK and NACK alike.
        taken = sub.take(ack_id, cumulative=sub.ack_mode == "client")
        if not taken:
            return
        pending = self._pending
        for key, _ in taken:
            pending.pop(key, None)
        messages = [message for _, message in taken]
        if ack:
            self.broker.ack(sub, messages)
        else:
            self.broker.nack(sub, messages)

    def _on_begin(self, headers: dict[str, str], body: bytes) -> None:
        name = _require(headers, "BEGIN", "transaction")
        if name in self._transactions:
            raise ProtocolError(
                f"transaction {name!r} is already open",
                "BEGIN must name a transaction that is not already in progress on this connection.",
            )
        self._transactions[name] = []

    def _on_commit(self, headers: dict[str, str], body: bytes) -> None:
        name = _require(headers, "COMMIT", "transaction")
        actions = self._transaction(headers)
        needed = self._close_transaction(name)
        # All or nothing: a full queue refuses the whole transaction before
        # any of it takes effect (and then takes all of it).
        for destination, (count, size) in needed.items():
            try:
                self.broker.check_room(destination, count, size)
            except DestinationFull as e:
                raise _full(destination, e, " None of the transaction took effect.") from None
        for action, args in actions:
            if action == self._publish:
                self._publish(*args, reject=False)
            else:
                action(*args)

    def _on_abort(self, headers: dict[str, str], body: bytes) -> None:
        name = _require(headers, "ABORT", "transaction")
        self._transaction(headers)
        self._close_transaction(name)

    def _on_disconnect(self, headers: dict[str, str], body: bytes) -> None:
        receipt = headers.get("receipt")
        self._close_reason = "client sent DISCONNECT"
        if self._receipts:
            # Earlier persistent messages are still being stored: their
            # RECEIPTs, then this one, then the close.
            self._draining = True
            self.broker.sync().addBoth(lambda _: self._finish_disconnect(receipt))
        else:
            self._finish_disconnect(receipt)

    def _finish_disconnect(self, receipt: str | None) -> None:
        if self._closing:
            return
        if receipt is not None:
            self._send("RECEIPT", {"receipt-id": receipt})
        self._close_gracefully()


def _full(destination: str, error: DestinationFull, more: str = "") -> ProtocolError:
    return ProtocolError(
        f"destination {destination} is full",
        f"The message was not accepted: {error}. The broker is configured to refuse "
        "messages for a full queue; send again once consumers have caught up." + more,
    )


def _set_high_water(transport: object, limit: int) -> None:
    """
    Set the output buffer size at which the socket under ``transport``
    (through TLS or WebSocket layers) pauses its producer.
    """
    for _ in range(4):
        if isinstance(transport, FileDescriptor):
            transport.bufferSize = limit
            return
        transport = getattr(transport, "transport", None)
        if transport is None:
            return


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
    peer closes); TLS closes with close_notify, WebSocket with its closing
    handshake. If the peer has not closed within ``linger`` seconds, the
    connection is dropped. Returns that timer; cancel it once the
    connection is gone.
    """
    if _can_half_close(transport):
        transport.loseWriteConnection()
    else:
        transport.loseConnection()
    return clock.callLater(linger, _drop, transport)


def _drop(transport: ITransport) -> None:
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


_DESTINATION_HELP = (
    "Destinations are named /queue/NAME (each message to one subscriber) or "
    "/topic/NAME (each message to every subscriber)."
)


def _parse_heartbeat(value: str) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) == 2:
        a, b = parts[0].strip(), parts[1].strip()
        if a.isdigit() and b.isdigit():
            return int(a), int(b)
    raise ProtocolError(
        f"invalid heart-beat header {value!r}",
        "heart-beat must be two non-negative integers separated by a comma, e.g. 10000,10000.",
    )


def _limit_details(error: FrameTooLarge) -> str:
    return (
        f"The frame was refused because it is over the broker's {error.limit} limit "
        f"({error.value}). Send smaller frames, or ask the operator to raise the limit."
    )


class StompFactory(Factory):
    """
    Builds :class:`StompProtocol` instances for one transport.

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

    def buildProtocol(self, addr: object) -> StompProtocol:
        proto = StompProtocol(self.broker, self.config, self.clock, self.transport_name)
        proto.factory = self
        return proto
