"""
The SENDs to the cluster's queues on their way to Redis (:class:`Sends`,
for :class:`~stomptw.cluster.redisqueues.RedisQueues`): one ``XADD`` each,
answered in order on the command connection. RECEIPTs wait for the answers
(:meth:`Sends.sync`). While Redis is unreachable, SENDs are kept (up to
:data:`MAX_OUTBOX_BYTES`), and those whose connection was lost before the
answer are sent again once it is back (a message may then be stored twice,
never lost); after ``--cluster-send-timeout`` they are dropped, and the
RECEIPTs waiting for them fail.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["MAX_OUTBOX_BYTES", "Sends"]

log = Logger()

#: Bytes of SENDs kept while Redis is unreachable, past which they are refused.
MAX_OUTBOX_BYTES = 64 * 1024 * 1024


class Sends:
    """
    The SENDs to the cluster's queues.

    :param clock: the reactor's time.
    :param node_id: this node's id, for the logs.
    :param send_timeout: ``--cluster-send-timeout``.
    :param register: ``(protocol, subject)``: note the queue in Redis's
        registry of queues (once per connection).
    :param key: ``subject -> stream key``.
    :param gave_up: called with the reason when waiting SENDs are dropped.

    :ivar dropped: SENDs dropped because Redis stayed unreachable too long.
    """

    def __init__(
        self,
        clock: Any,
        node_id: str,
        send_timeout: float,
        register: Callable[[Any, str], None],
        key: Callable[[str], str],
        gave_up: Callable[[str], None],
    ) -> None:
        self._clock = clock
        self.node_id = node_id
        self.send_timeout = send_timeout
        self._register = register
        self._key = key
        self._gave_up = gave_up
        self.dropped = 0
        #: SENDs kept while Redis is unreachable, and their size.
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_bytes = 0
        #: When SENDs started waiting for Redis to come back (0: none wait).
        self._waiting_since = 0.0
        #: SENDs written to Redis and not yet answered, oldest first; and
        #: those whose connection was lost before the answer, to send again.
        self._in_flight: deque[tuple[str, bytes]] = deque()
        self._resend: deque[tuple[str, bytes]] = deque()
        #: SENDs accepted, and answered by Redis; RECEIPTs wait on these.
        self._sent = 0
        self._answered = 0
        self._waiters: deque[tuple[int, defer.Deferred]] = deque()

    def add(self, protocol: Any, subject: str, payload: bytes) -> None:
        """
        Send ``payload`` to the queue ``subject`` on ``protocol`` (None while
        Redis is unreachable: kept for later). Raises :class:`OverflowError`
        when it cannot be kept.
        """
        if protocol is None or self._outbox or self._resend:
            if self._outbox_bytes + len(payload) > MAX_OUTBOX_BYTES:
                raise OverflowError(
                    f"{MAX_OUTBOX_BYTES // (1024 * 1024)} MiB of messages wait for the "
                    "cluster's Redis to come back"
                )
            self._sent += 1
            if not self._waiting_since:
                self._waiting_since = self._clock.seconds()
            self._outbox.append((subject, payload))
            self._outbox_bytes += len(payload)
            return
        self._sent += 1
        self._xadd(protocol, subject, payload)

    def _xadd(self, protocol: Any, subject: str, payload: bytes) -> None:
        self._register(protocol, subject)
        self._in_flight.append((subject, payload))
        raw = getattr(protocol, "raw", None)
        if raw is None:
            d = protocol.execute_command("XADD", self._key(subject), "*", "m", payload)
            d.addCallbacks(self._added, self._not_added)
            return
        key = self._key(subject).encode("utf-8", "surrogatepass")
        head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nm\r\n$%d\r\n" % (
            len(key),
            key,
            len(payload),
        )
        raw([head, payload, b"\r\n"], self._answered_now)

    def _answered_now(self, reply: Any) -> None:
        """A raw XADD's answer: its entry id, or an exception."""
        if isinstance(reply, Exception):
            self._not_added(Failure(reply))
        else:
            self._added(reply)

    def _added(self, _: object) -> None:
        self._in_flight.popleft()
        self._answered += 1
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._answered:
            waiters.popleft()[1].callback(None)

    def _not_added(self, failure: Failure) -> None:
        subject, payload = self._in_flight.popleft()
        if failure.check(txredisapi.ConnectionError):
            # Whether Redis stored it is unknown: sent again once Redis is
            # back (a message may then be stored twice, never lost).
            self._resend.append((subject, payload))
            self._outbox_bytes += len(payload)
            if not self._waiting_since:
                self._waiting_since = self._clock.seconds()
            return
        self._answered += 1
        log.error(
            "cluster: Redis refused a queue message for {queue}: {error}",
            queue=subject,
            error=failure.getErrorMessage(),
        )
        waiters, self._waiters = self._waiters, deque()
        for _, d in waiters:
            d.errback(failure)

    def sync(self) -> defer.Deferred:
        """A Deferred that fires once Redis has answered every SEND so far."""
        if self._answered >= self._sent:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((self._sent, d))
        return d

    def resume(self, protocol: Any) -> None:
        """Redis is back: send what waited, in order."""
        outbox, self._outbox = self._outbox, deque()
        resend, self._resend = self._resend, deque()
        self._outbox_bytes = 0
        self._waiting_since = 0.0
        for subject, payload in [*resend, *outbox]:
            self._xadd(protocol, subject, payload)

    def give_up_if_late(self) -> None:
        """SENDs that waited ``send_timeout`` for Redis are dropped, and their producers told."""
        if not self._waiting_since:
            return
        waited = self._clock.seconds() - self._waiting_since
        if waited < self.send_timeout:
            return
        dropped = len(self._outbox) + len(self._resend)
        self._outbox.clear()
        self._resend.clear()
        self._outbox_bytes = 0
        self._waiting_since = 0.0
        self._answered += dropped
        self.dropped += dropped
        why = f"the cluster's Redis has been unreachable for {waited:.0f} s"
        log.warn(
            "cluster: node {node} dropped {count} queue messages that waited {seconds:.0f} s "
            "for Redis; their producers get an ERROR",
            node=self.node_id,
            count=dropped,
            seconds=waited,
        )
        waiters, self._waiters = self._waiters, deque()
        for _, d in waiters:
            d.errback(Failure(ConnectionError(why)))
        self._gave_up(why)
