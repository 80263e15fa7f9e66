"""
The STOMP session, sans-IO: bytes in, frames through the codec, broker
calls and writes out.

A :class:`StompSession` is one client's whole STOMP conversation: version
negotiation, subscriptions and pending acknowledgements, transactions,
RECEIPTs in order, flow control, heart-beats and timeouts, and the orderly
close. It never sees the reactor or a socket. Its transport
(:class:`~stomptw.interfaces.IStompTransport`: TCP, TLS or WebSocket) feeds
it with :meth:`~StompSession.data_received` and carries out what it asks:
writes, pausing and resuming reads, the close. Time comes from an injected
``now()``; deadlines go to a shared :class:`~stomptw.timers.DeadlineSweep`,
which calls :meth:`~StompSession.tick` when one is due.

What each client frame does is in :mod:`stomptw.commands`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw import commands
from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.errors import ProtocolError, limit_details
from stomptw.frame import FrameError, FrameParser, FrameTooLarge, encode_frame
from stomptw.interfaces import IDeadlineTarget, IMessageConsumer, IStompTransport
from stomptw.model import Message, Subscription, encode_delivery
from stomptw.receipts import Receipts
from stomptw.timers import DeadlineSweep
from stomptw.transactions import Transactions

__all__ = ["ProtocolError", "StompSession"]

#: Client frames that may carry a body.
_BODY_ALLOWED = frozenset({"SEND"})

#: Slack for float rounding when a deadline is compared with the time.
_EPSILON = 1e-6


@implementer(IMessageConsumer, IDeadlineTarget)
class StompSession:
    """
    One STOMP client connection, on any transport.

    :ivar version: the negotiated protocol version, ``None`` before CONNECT.
    :ivar session_id: the session identifier sent in CONNECTED.
    :ivar subscriptions: the client's subscriptions by id.
    :ivar client_id: the CONNECT frame's ``client-id`` (durable
        subscriptions belong to it).
    :ivar peer: the client's address, ``host:port``.
    :ivar opened: when the connection was opened, on the session's clock.
    :ivar writable: False while the transport's output is over its
        high-water mark: nothing is delivered until it drains.
    """

    log = Logger()

    def __init__(
        self,
        broker: Broker,
        config: BrokerConfig,
        transport: IStompTransport,
        sweep: DeadlineSweep,
        now: Callable[[], float],
    ) -> None:
        self.broker = broker
        self.config = config
        self.transport = transport
        self.sweep = sweep
        self.now = now
        self.transport_name: str = transport.name
        self.peer: str = transport.peer
        self.version: str | None = None
        self.session_id = ""
        self.client_id = ""
        self.subscriptions: dict[str, Subscription] = {}
        #: ack id -> subscription, for every unacknowledged delivery.
        self.pending: dict[str, Subscription] = {}
        self.ack_ids = itertools.count(1)
        self.transactions = Transactions(config.max_transaction_bytes)
        self.receipts = Receipts(self._send_receipt, broker.sync, self._store_failed)
        #: A persistent message (or durable subscription) was accepted by the
        #: frame being handled: its RECEIPT waits for the store.
        self.needs_sync = False
        self.writable = True
        self.parser = FrameParser(config.limits)
        # Queues (and topics) that are full and stop this client's input.
        self._blockers: set[Any] = set()
        self._reading_paused = False
        # Output written while over the high-water mark; past _output_limit
        # the broker stops reading (the client does not read either).
        self._unsent = 0
        self._output_full = False
        self._output_limit = max(4 * config.write_high_water, 1024 * 1024)
        #: DISCONNECT (or an ERROR) waits for earlier messages to be stored.
        self.draining = False
        self.closing = False
        #: Why the broker closed, when it did; otherwise the transport says.
        self.close_reason = ""
        self._closed_waiters: list[Deferred] = []
        self.opened = self._last_received = self._last_sent = now()
        self._login_deadline: float | None = None
        self._send_interval = 0.0
        self._receive_timeout = 0.0
        self._receive_from = 0.0
        self._counters = broker.counters

    # -- lifecycle ----------------------------------------------------------------

    def connection_made(self) -> None:
        """The transport is open: count the session and start the login clock."""
        self.broker.sessions.add(self)
        self._login_deadline = self.opened + self.config.login_timeout
        self._schedule()
        self.log.debug(
            "connection opened from {peer} over {transport}",
            peer=self.peer,
            transport=self.transport_name,
        )

    def connection_lost(self, reason: str) -> None:
        """The transport is gone (``reason`` says why, if the broker did not close it)."""
        self.closing = True
        self.receipts.open = False
        self._end_session()
        self.broker.sessions.discard(self)
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self.log.info(
            "connection closed: peer={peer} transport={transport} session={session} "
            "duration={duration:.1f}s reason={reason}",
            peer=self.peer,
            transport=self.transport_name,
            session=self.session_id or "-",
            duration=self.now() - self.opened,
            reason=self.close_reason or reason,
        )

    def data_received(self, data: bytes) -> None:
        """Bytes from the client, cut anywhere."""
        self._counters.bytes_received += len(data)
        if self.closing or self.draining:
            return
        self._last_received = self.now()
        self.parser.feed(data)
        self._process()

    def _process(self) -> None:
        """Handle the frames the parser holds, until input is paused."""
        parser = self.parser
        while not (self.closing or self._reading_paused or self.draining):
            try:
                frame = parser.next_frame()
            except FrameError as e:
                details = (
                    limit_details(e)
                    if isinstance(e, FrameTooLarge)
                    else (e.details or "The frame could not be parsed.")
                )
                self.fail(ProtocolError(e.message, details), receipt=e.headers.get("receipt"))
                return
            if frame is None:
                return
            self._handle(frame.command, frame.headers, frame.body)

    def _handle(self, command: str, headers: dict[str, str], body: bytes) -> None:
        received = self._counters.frames_received
        received[command if command in received else "OTHER"] += 1
        try:
            if body and command not in _BODY_ALLOWED:
                raise ProtocolError(
                    f"{command} frame must not have a body",
                    "Only SEND frames may carry a body.",
                )
            commands.dispatch(self, command, headers, body)
        except ProtocolError as e:
            self.fail(e, receipt=headers.get("receipt"))
            return
        except Exception:
            # A broker bug must not leave the session in an unknown state:
            # log it in full, tell the client in words, and close.
            self.log.failure(
                "internal error handling {command} from {peer}",
                command=command,
                peer=self.peer,
                transport=self.transport_name,
                session=self.session_id or "-",
            )
            error = ProtocolError(
                "internal broker error",
                f"The broker failed while processing a {command} frame. This is a bug in "
                "the broker, not in the client; it has been logged.",
            )
            self.fail(error, receipt=headers.get("receipt"))
            return
        needs_sync, self.needs_sync = self.needs_sync, False
        receipt = headers.get("receipt")
        if receipt is not None and command != "DISCONNECT" and not self.closing:
            # Even when this frame made the session fail (an ERROR waiting for
            # the store): it took effect, and its RECEIPT goes out first.
            self.receipts.add(receipt, needs_sync)

    def connected(self, send_ms: int, receive_ms: int) -> None:
        """CONNECT succeeded: stop the login clock, start heart-beats both ways."""
        self._login_deadline = None
        if send_ms:
            # Beats go out ahead of the deadline so that reactor latency
            # never makes one late.
            self._send_interval = send_ms / 1000.0 * 0.75
        if receive_ms:
            self._receive_timeout = receive_ms / 1000.0 * self.config.heartbeat_grace
        self._receive_from = self.now()
        self._schedule()

    # -- deadlines ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """The sweep's call: send a heart-beat or time out when due."""
        if self.closing:
            return
        if self._login_deadline is not None and now >= self._login_deadline - _EPSILON:
            self._login_deadline = None
            self.fail(
                ProtocolError(
                    "no CONNECT frame received in time",
                    f"A client must send CONNECT or STOMP within {self.config.login_timeout:g} "
                    "seconds of opening the connection.",
                )
            )
            return
        interval = self._send_interval
        if interval and now >= self._last_sent + interval - self.sweep.resolution - _EPSILON:
            self._write(b"\n")
        if self._receive_timeout:
            if self._reading_paused:
                # The broker itself stopped reading (a full queue): the client
                # is not to blame for the silence.
                self._receive_from = now
            elif now >= self._receive_deadline() - _EPSILON:
                self._receive_timed_out(now)
                return
        self._schedule()

    def _receive_deadline(self) -> float:
        return max(self._last_received, self._receive_from) + self._receive_timeout

    def _schedule(self) -> None:
        """Ask the sweep for the earliest deadline this session has."""
        when: float | None = self._login_deadline
        early = False
        if self._send_interval:
            beat = self._last_sent + self._send_interval
            if when is None or beat < when:
                when, early = beat, True
        if self._receive_timeout:
            deadline = self._receive_deadline()
            if when is None or deadline < when:
                when, early = deadline, False
        if when is None:
            self.sweep.cancel(self)
        else:
            self.sweep.schedule(self, when, early)

    def _receive_timed_out(self, now: float) -> None:
        silent = now - self._last_received
        self._counters.heartbeat_timeouts += 1
        self.log.info(
            "heart-beat timeout: nothing from {peer} (session {session}) for {seconds:.1f}s",
            peer=self.peer,
            transport=self.transport_name,
            session=self.session_id or "-",
            seconds=silent,
        )
        self.fail(
            ProtocolError(
                "heart-beat timeout",
                f"Nothing arrived from the client for {silent:.1f} "
                "seconds although heart-beats were agreed in CONNECT/CONNECTED.",
            )
        )

    # -- flow control ------------------------------------------------------------------

    def pause_writing(self) -> None:
        """The transport's output buffer is over the high-water mark."""
        self.writable = False

    def resume_writing(self) -> None:
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

    def block(self, queue: Any) -> None:
        """Stop reading from this client until ``queue`` has room."""
        if not self._blockers:
            kind = getattr(queue, "kind", "queue")
            self.log.info(
                "producer {peer} (session {session}) blocked: {queue} is full"
                if kind == "queue"
                else "producer {peer} (session {session}) blocked: a subscriber of {queue} "
                "is --slow-topic-limit messages behind",
                peer=self.peer,
                transport=self.transport_name,
                session=self.session_id or "-",
                queue=getattr(queue, "name", queue),
            )
        self._blockers.add(queue)
        self._update_reading()

    def unblock(self, queue: Any) -> None:
        """``queue`` has room again; read on once no queue blocks this client."""
        self._blockers.discard(queue)
        self._update_reading()

    def _update_reading(self) -> None:
        """Pause or resume reading from the client as the holds on it say."""
        hold = bool(self._blockers) or self._output_full
        if hold == self._reading_paused or self.closing:
            return
        self._reading_paused = hold
        if hold:
            self.transport.pause_reading()
            return
        self.transport.resume_reading()
        # Frames already read wait in the parser; not from inside the queue.
        self.transport.call_soon(self._resume_frames)

    def _resume_frames(self) -> None:
        if not self.closing and not self._reading_paused:
            self._last_received = self.now()
            self._process()

    def slow_consumer(self, subscription: Subscription, reason: str) -> None:
        """The broker's slow-consumer policy ends this session."""
        if not self.closing:
            self.fail(
                ProtocolError(
                    "slow consumer",
                    f"{reason}; the broker's policy for topic subscribers that stay slow is "
                    "to disconnect them. Read faster, or use a queue.",
                ),
                reason=f"slow consumer: {reason}",
            )

    # -- sending ------------------------------------------------------------------

    def send_frame(self, command: str, headers: dict[str, str], body: bytes = b"") -> None:
        """Encode and write one frame in the session's version."""
        self._counters.frames_sent[command] += 1
        self._write(
            encode_frame(command, headers, body, self.version or "1.0", content_length=bool(body))
        )

    def _send_receipt(self, receipt: str) -> None:
        self.send_frame("RECEIPT", {"receipt-id": receipt})

    def _write(self, data: bytes) -> None:
        """Write one frame (or heart-beat) and note when, for heart-beats."""
        self.transport.write(data)
        self._counters.bytes_sent += len(data)
        self._last_sent = self.now()
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
        if self.closing or self.draining or self.transport.disconnecting:
            return False
        ack_id = None if subscription.ack_mode == "auto" else str(next(self.ack_ids))
        data = encode_delivery(subscription, message, self.version or "1.0", ack_id)
        limit = self.transport.max_message_size
        if limit and len(data) > limit:
            self.fail(
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
            self.pending[ack_id] = subscription
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
        if self not in self.broker.sessions:
            return succeed(None)
        done: Deferred = Deferred()
        self._closed_waiters.append(done)
        if not self.closing:
            self.fail(error, reason=reason)
        return done

    def _store_failed(self, receipt: str, failure: Failure) -> None:
        self.fail(
            ProtocolError(
                "message could not be stored",
                "The broker could not write a persistent message to its store: "
                f"{failure.getErrorMessage()}. Messages without a RECEIPT may not have "
                "been accepted; send them again.",
            ),
            receipt=receipt,
        )

    def fail(self, error: ProtocolError, reason: str = "", receipt: str | None = None) -> None:
        """
        Send an ERROR frame for ``error`` (with ``receipt-id`` when the failing
        frame asked for ``receipt``), then close the connection.

        RECEIPTs still waiting for the store go out first: the client must
        know which of its persistent messages were accepted.
        """
        if self.receipts:
            # No frame is read meanwhile. Check again on the next turn, when
            # every RECEIPT of this commit has gone out.
            self.draining = True
            self.broker.sync().addBoth(
                lambda _: self.transport.call_soon(self.fail, error, reason, receipt)
            )
            return
        if self.closing:
            return
        if not reason:
            self.log.info(
                "protocol error from {peer} (session {session}): {error}",
                peer=self.peer,
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
        self.send_frame("ERROR", headers, body)
        self.close_reason = reason or f"protocol error: {error.message}"
        self.close_gracefully()

    def close_gracefully(self) -> None:
        """
        Stop reading frames and close once everything written has gone out
        (the transport's orderly close, bounded by ``close_linger``).
        """
        if self.closing:
            return
        self.closing = True
        self.receipts.open = False
        self._end_session()
        if self._reading_paused:
            # Read (and discard) again, so that the client's close is seen.
            self._reading_paused = False
            self.transport.resume_reading()
        self.transport.close(self.config.close_linger)

    def _end_session(self) -> None:
        """
        Release what the session holds, once: open transactions are aborted,
        subscriptions end and their unacknowledged messages go back to their
        queues. Done as soon as the broker decides to close, so that no
        message is handed to a connection that is going away.
        """
        self.sweep.cancel(self)
        self._login_deadline = None
        self._send_interval = self._receive_timeout = 0.0
        self.transactions.clear()
        blockers, self._blockers = self._blockers, set()
        for queue in blockers:
            queue.blocked.discard(self)
        subs = list(self.subscriptions.values())
        self.subscriptions.clear()
        self.pending.clear()
        # Detach every subscription before any message is requeued, so that
        # what one returns is never handed to a sibling on this same session.
        for sub in subs:
            sub.active = False
        for sub in subs:
            self.broker.unsubscribe(sub)

    # -- facts ------------------------------------------------------------------------

    def info(self, now: float) -> dict[str, Any]:
        """What the admin API shows about this session at ``now``."""
        return {
            "session_id": self.session_id or None,
            "peer": self.peer,
            "transport": self.transport_name,
            "version": self.version,
            "client_id": self.client_id or None,
            "subscriptions": len(self.subscriptions),
            "connected_seconds": round(max(0.0, now - self.opened), 3),
        }
