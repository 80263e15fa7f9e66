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
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from stomptw import commands, errors
from stomptw.access import SessionAccess
from stomptw.ending import SessionEnding
from stomptw.errors import ProtocolError, limit_details
from stomptw.flow import InputGate
from stomptw.frame import FrameError, FrameParser, FrameTooLarge
from stomptw.interfaces import IDeadlineTarget, IMessageConsumer, IStompTransport
from stomptw.liveness import Liveness
from stomptw.model import Subscription
from stomptw.receipts import Receipts
from stomptw.sessionout import SessionOutput
from stomptw.tempqueues import TempQueues
from stomptw.transactions import Transactions

if TYPE_CHECKING:
    from stomptw.broker import Broker
    from stomptw.config import BrokerConfig
    from stomptw.timers import DeadlineSweep

__all__ = ["ProtocolError", "StompSession"]


@implementer(IMessageConsumer, IDeadlineTarget)
class StompSession(SessionAccess, SessionOutput, SessionEnding):
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

    # Thousands of sessions stay open and idle: slots keep each one's
    # attributes in a fixed array instead of a 1.6 KiB dictionary. The base
    # classes add methods only; their attributes are listed here.
    __slots__ = (
        "_closed_waiters",
        "_max_write",
        "_refusal",
        "_transport_write",
        "ack_ids",
        "broker",
        "bytes_out",
        "client_id",
        "close_reason",
        "closing",
        "config",
        "counters",
        "draining",
        "durable_owner",
        "frames_in",
        "frames_out",
        "gate",
        "handler_work",
        "heartbeat",
        "liveness",
        "needs_sync",
        "now",
        "opened",
        "parser",
        "peer",
        "pending",
        "permissions",
        "receipts",
        "session_id",
        "subscriptions",
        "sweep",
        "temp_queues",
        "transactions",
        "transport",
        "transport_name",
        "user",
        "version",
        "writable",
        "write_allowed",
    )

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
        self._transport_write = transport.write
        # Fixed for the connection's life (a WebSocket message limit, or 0).
        self._max_write = transport.max_message_size
        self.sweep = sweep
        self.now = now
        self.transport_name: str = transport.name
        self.peer: str = transport.peer
        self.version: str | None = None
        self.session_id = ""
        self.client_id = ""
        #: Whose durable subscriptions this session uses: the client-id,
        #: within the user's name when it has one (set by CONNECT).
        self.durable_owner = ""
        self.subscriptions: dict[str, Subscription] = {}
        #: ack id -> subscription, for every unacknowledged delivery.
        self.pending: dict[str, Subscription] = {}
        self.ack_ids = itertools.count(1)
        self.transactions = Transactions(config.max_transaction_bytes)
        self.receipts = Receipts(self._send_receipt, broker.sync, self._store_failed)
        #: A persistent message (or durable subscription) was accepted by the
        #: frame being handled: its RECEIPT waits for the store.
        self.needs_sync = False
        #: The application handlers' work started by the frame being handled
        #: (SENDs to --app-prefix destinations): its RECEIPT waits for it.
        self.handler_work: list[Deferred] = []
        #: The connection's temporary queues (reply-to:/temp-queue/NAME).
        self.temp_queues = TempQueues(self)
        self.writable = True
        self.parser = FrameParser(config.limits)
        # Replies written while over the high-water mark, past this limit,
        # stop reading too (the client does not read either).
        self.gate = InputGate(
            transport, self._resume_frames, max(4 * config.write_high_water, 1024 * 1024)
        )
        #: DISCONNECT (or an ERROR) waits for earlier messages to be stored.
        self.draining = False
        self.closing = False
        #: Why the broker closed, when it did; otherwise the transport says.
        self.close_reason = ""
        self._closed_waiters: list[Deferred] = []
        self.opened = now()
        #: Frames from the client, frames and bytes to it (the parser counts
        #: the bytes from it), and the heart-beats agreed on CONNECT (ms
        #: between beats to send and to expect): for the operator's console.
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self.heartbeat = (0, 0)
        self.liveness = Liveness(self.opened, config.login_timeout, sweep.resolution)
        self.counters = broker.counters
        self._init_access()

    # -- lifecycle ----------------------------------------------------------------

    def connection_made(self) -> None:
        """The transport is open: count the session and start the login clock."""
        self.broker.sessions.add(self)
        self._schedule()
        if self.broker.connection_log.debug:
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
        self._end_access()
        self.broker.sessions.discard(self)
        self.counters.sessions_ended += 1
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if self.log_connection():
            self.log.info(
                "connection closed: peer={peer} transport={transport} session={session} "
                "duration={duration:.1f}s reason={reason}",
                peer=self.peer,
                transport=self.transport_name,
                session=self.session_id or "-",
                duration=self.now() - self.opened,
                reason=self.close_reason or reason,
            )

    def log_connection(self) -> bool:
        """
        Whether a per-connection line may be written now (see
        :class:`~stomptw.logging.ConnectionLogBudget`); logs how many were
        left out before it, if any.
        """
        skipped = self.broker.connection_log.allow(self.now())
        if skipped > 0:
            self.log.info(
                "{skipped} connection log line(s) left out (over --log-connections-per-second)",
                skipped=skipped,
            )
        return skipped >= 0

    def data_received(self, data: bytes) -> None:
        """Bytes from the client, cut anywhere."""
        self.counters.bytes_received += len(data)
        if self.closing or self.draining:
            return
        self.liveness.last_received = self.now()
        self.parser.feed(data)
        self._process()

    def _process(self) -> None:
        """Handle the frames the parser holds, until input is paused."""
        parser = self.parser
        gate = self.gate
        while not (self.closing or gate.paused or self.draining):
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
            commands.handle(self, frame.command, frame.headers, frame.body)

    def connected(self, send_ms: int, receive_ms: int) -> None:
        """
        CONNECT succeeded: stop the login clock, start heart-beats both ways,
        and the clock of credentials that expire.
        """
        now = self.now()
        self.heartbeat = (send_ms, receive_ms)
        self.liveness.connected(send_ms, receive_ms, self.config.heartbeat_grace, now)
        self._start_credentials_clock(now)
        self._schedule()

    def handle_again(self, command: str, headers: dict[str, str], body: bytes) -> None:
        """A frame that waited for an answer (:meth:`wait_for`): handle it now."""
        commands.handle(self, command, headers, body, again=True)

    # -- deadlines ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """The sweep's call: send a heart-beat or time out when due."""
        if self.closing:
            return
        liveness = self.liveness
        if liveness.login_expired(now):
            liveness.login_deadline = None
            self.fail(errors.login_timeout(self.config.login_timeout))
            return
        if liveness.credentials_expired(now):
            self._credentials_expired()
            return
        if liveness.beat_due(now):
            self._write(b"\n")
        if liveness.receive_expired(now, self.gate.paused):
            self._receive_timed_out(now)
            return
        self._schedule()

    def _schedule(self) -> None:
        """Ask the sweep for the earliest deadline this session has."""
        deadline = self.liveness.next_deadline()
        if deadline is None:
            self.sweep.cancel(self)
        else:
            self.sweep.schedule(self, *deadline)

    def _receive_timed_out(self, now: float) -> None:
        silent = self.liveness.silent_for(now)
        self.counters.heartbeat_timeouts += 1
        self.log.info(
            "heart-beat timeout: nothing from {peer} (session {session}) for {seconds:.1f}s",
            peer=self.peer,
            transport=self.transport_name,
            session=self.session_id or "-",
            seconds=silent,
        )
        self.fail(errors.heartbeat_timeout(silent))

    # -- facts ------------------------------------------------------------------------

    def info(self, now: float) -> dict[str, Any]:
        """What the admin API shows about this session at ``now``."""
        return {
            "session_id": self.session_id or None,
            "peer": self.peer,
            "transport": self.transport_name,
            "version": self.version,
            "client_id": self.client_id or None,
            "user": (self.user.name or None) if self.user else None,
            "vhost": self.user.vhost if self.user else None,
            "subscriptions": len(self.subscriptions),
            "connected_seconds": round(max(0.0, now - self.opened), 3),
        }
