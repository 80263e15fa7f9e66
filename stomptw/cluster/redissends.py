"""
The SENDs to the cluster's queues on their way to Redis (:class:`Sends`,
for :class:`~stomptw.cluster.redisqueues.RedisQueues`): one ``XADD`` each,
answered in order on the command connection; a transaction's, sent inside
:meth:`Sends.together`, in one ``MULTI``/``EXEC``, so that Redis stores all
of them or none. RECEIPTs wait for the answers (:meth:`Sends.sync`, kept
by :class:`~stomptw.cluster.redisconfirms.Confirmations`, which also waits
for Redis replicas).
While Redis is unreachable, SENDs are kept (up to :data:`MAX_OUTBOX_BYTES`),
and those whose connection was lost before the answer are sent again once
it is back (a message may then be stored twice, never lost); after
``--cluster-send-timeout`` they are dropped, and the RECEIPTs waiting for
them fail.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomptw.cluster.redisconfirms import Confirmations
from stomptw.cluster.redislimits import ClusterLimits

__all__ = ["MAX_OUTBOX_BYTES", "Sends"]

log = Logger()

#: Bytes of SENDs kept while Redis is unreachable, past which they are refused.
MAX_OUTBOX_BYTES = 64 * 1024 * 1024

_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"

#: What goes to Redis as one: a SEND, ``(subject, payload)``, or a
#: transaction's SENDs, ``(None, [(subject, payload), ...])``.
_Unit = tuple[str, bytes] | tuple[None, list[tuple[str, bytes]]]


def _ignore(reply: object) -> None:
    """The answer to MULTI, or a QUEUED: EXEC's answer says what happened."""


def _xadd_parts(key: str, payload: bytes) -> list[bytes]:
    raw_key = key.encode("utf-8", "surrogatepass")
    head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nm\r\n$%d\r\n" % (
        len(raw_key),
        raw_key,
        len(payload),
    )
    return [head, payload, b"\r\n"]


def _pieces(unit: _Unit) -> list[tuple[str, bytes]]:
    """A unit's SENDs, ``(subject, payload)`` each."""
    subject, payload = unit
    return [unit] if subject is not None else payload  # type: ignore[list-item,return-value]


def _count(unit: _Unit) -> int:
    subject, payload = unit
    return 1 if subject is not None else len(payload)


def _size(unit: _Unit) -> int:
    return sum(len(payload) for _, payload in _pieces(unit))


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
    :param limits: the cluster-wide queue limits (SENDs are counted when one is set).
    :param replicas: ``--cluster-replicas``: RECEIPTs wait (``WAIT``) until
        that many Redis replicas hold every SEND before them.
    :param replica_timeout: ``--cluster-replica-timeout``.
    :param connection: ``() -> the command connection``, or None while it is down.

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
        limits: ClusterLimits | None = None,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        connection: Callable[[], Any] = lambda: None,
    ) -> None:
        self._clock = clock
        #: With a queue limit set, SENDs go through its counting script.
        self._limits = limits if limits is not None and limits.counted else None
        self.node_id = node_id
        self.send_timeout = send_timeout
        self._register = register
        self._key = key
        self._gave_up = gave_up
        self.dropped = 0
        #: SENDs kept while Redis is unreachable, and their size.
        self._outbox: deque[_Unit] = deque()
        self._outbox_bytes = 0
        #: When SENDs started waiting for Redis to come back (0: none wait).
        self._waiting_since = 0.0
        #: SENDs written to Redis and not yet answered, oldest first; and
        #: those whose connection was lost before the answer, to send again.
        self._in_flight: deque[_Unit] = deque()
        self._resend: deque[_Unit] = deque()
        #: What the RECEIPTs wait for.
        self.confirms = Confirmations(
            node_id,
            replicas,
            replica_timeout,
            connection,
            lambda: bool(self._outbox or self._resend),
        )
        #: The SENDs of the transaction being committed, while one is.
        self._together: list[tuple[str, bytes]] | None = None
        self._connection = connection
        self._together_bytes = 0
        #: Whether the SEND script is being loaded again (after SCRIPT FLUSH).
        self._reloading = False

    @contextmanager
    def together(self, protocol: Callable[[], Any]) -> Iterator[None]:
        """
        Within this context, SENDs are gathered, and on leaving it go to
        Redis in one ``MULTI``/``EXEC`` (on ``protocol()``, the connection
        then), so that Redis stores all of them or none: a COMMIT's.
        """
        if self._together is not None:
            yield  # already gathering
            return
        self._together = gathered = []
        self._together_bytes = 0
        try:
            yield
        finally:
            self._together = None
            if len(gathered) == 1:
                self._unit(protocol(), gathered[0])
            elif gathered:
                self._unit(protocol(), (None, gathered))

    def add(self, protocol: Any, subject: str, payload: bytes) -> None:
        """
        Send ``payload`` to the queue ``subject`` on ``protocol`` (None while
        Redis is unreachable: kept for later). Raises :class:`OverflowError`
        when it cannot be kept.
        """
        together = self._together
        if together is not None:
            self._check_room(self._together_bytes + len(payload))
            self._together_bytes += len(payload)
            together.append((subject, payload))
            return
        self._unit(protocol, (subject, payload))

    def _check_room(self, size: int) -> None:
        """Raise :class:`OverflowError` if ``size`` more bytes cannot be kept for later."""
        if self._outbox_bytes + size > MAX_OUTBOX_BYTES:
            raise OverflowError(
                f"{MAX_OUTBOX_BYTES // (1024 * 1024)} MiB of messages wait for the "
                "cluster's Redis to come back"
            )

    def _unit(self, protocol: Any, unit: _Unit) -> None:
        if protocol is None or self._outbox or self._resend:
            size = _size(unit)
            self._check_room(size)
            self.confirms.sent += _count(unit)
            if not self._waiting_since:
                self._waiting_since = self._clock.seconds()
            self._outbox.append(unit)
            self._outbox_bytes += size
            return
        self.confirms.sent += _count(unit)
        self._write(protocol, unit)

    def _write(self, protocol: Any, unit: _Unit) -> None:
        subject, payload = unit
        self._in_flight.append(unit)
        limits = self._limits
        if subject is not None:
            self._register(protocol, subject)
            if limits is not None:
                parts = limits.add_parts(subject, payload)  # type: ignore[arg-type]
            else:
                parts = _xadd_parts(self._key(subject), payload)  # type: ignore[arg-type]
            protocol.raw(parts, self._answered_now)
            return
        parts = [_MULTI]
        for one, body in payload:  # type: ignore[union-attr]
            self._register(protocol, one)
            if limits is not None:
                parts += limits.add_parts(one, body)
            else:
                parts += _xadd_parts(self._key(one), body)
        parts.append(_EXEC)
        protocol.raw(parts, self._answered_now, before=[_ignore] * (len(payload) + 1))

    def _answered_now(self, reply: Any) -> None:
        """A raw XADD's answer: its entry id, or an exception."""
        if isinstance(reply, Exception):
            if self._limits is not None and str(reply).startswith("NOSCRIPT"):
                self._again(self._in_flight.popleft())
                return
            self._not_added(Failure(reply))
        else:
            self._added(reply)

    def _added(self, reply: Any) -> None:
        unit = self._in_flight.popleft()
        limits = self._limits
        if limits is not None:
            self._count_answer(limits, unit, reply)
        self.confirms.answer(_count(unit))

    @staticmethod
    def _count_answer(limits: ClusterLimits, unit: _Unit, reply: Any) -> None:
        subject, payload = unit
        if subject is not None:
            limits.answered(subject, len(payload), reply)  # type: ignore[arg-type]
            return
        answers = reply if isinstance(reply, list) else []
        for index, (one, body) in enumerate(_pieces(unit)):
            answer = answers[index] if index < len(answers) else None
            limits.answered(one, len(body), answer)

    def _again(self, unit: _Unit) -> None:
        """
        Redis forgot the SEND script (SCRIPT FLUSH): load it, and send the
        unit again. Every SEND written before the load fails the same way
        and comes here in turn, so they keep their order.
        """
        limits = self._limits
        protocol = self._connection()
        if protocol is None or limits is None:
            self._in_flight.appendleft(unit)
            self._not_added(Failure(txredisapi.ConnectionError("the SEND script is gone")))
            return
        for one, body in _pieces(unit):
            limits.unsent(one, len(body))
        if not self._reloading:
            self._reloading = True

            def loaded(_: object) -> None:
                self._reloading = False

            limits.load(protocol).addBoth(loaded)
        self._write(protocol, unit)

    def _not_added(self, failure: Failure) -> None:
        unit = self._in_flight.popleft()
        limits = self._limits
        if limits is not None:
            for one, body in _pieces(unit):
                limits.unsent(one, len(body))
        if failure.check(txredisapi.ConnectionError):
            # Whether Redis stored it is unknown: sent again once Redis is
            # back (a message may then be stored twice, never lost; a
            # transaction's all again, or all for the first time).
            self._resend.append(unit)
            self._outbox_bytes += _size(unit)
            if not self._waiting_since:
                self._waiting_since = self._clock.seconds()
            return
        subject, payload = unit
        log.error(
            "cluster: Redis refused {what} for {queue}: {error}",
            what="a queue message" if subject is not None else "a transaction's queue messages",
            queue=subject if subject is not None else ", ".join(sorted({s for s, _ in payload})),
            error=failure.getErrorMessage(),
        )
        self.confirms.refuse(_count(unit), failure)

    def sync(self) -> defer.Deferred:
        """A Deferred that fires once Redis has answered (and confirmed) every SEND so far."""
        return self.confirms.sync()

    def resume(self, protocol: Any) -> None:
        """Redis is back: send what waited, in order."""
        outbox, self._outbox = self._outbox, deque()
        resend, self._resend = self._resend, deque()
        self._outbox_bytes = 0
        self._waiting_since = 0.0
        for unit in [*resend, *outbox]:
            self._write(protocol, unit)
        self.confirms.resumed()

    def give_up_if_late(self) -> None:
        """SENDs that waited ``send_timeout`` for Redis are dropped, and their producers told."""
        if not self._waiting_since:
            return
        waited = self._clock.seconds() - self._waiting_since
        if waited < self.send_timeout:
            return
        dropped = sum(map(_count, self._outbox)) + sum(map(_count, self._resend))
        self._outbox.clear()
        self._resend.clear()
        self._outbox_bytes = 0
        self._waiting_since = 0.0
        self.dropped += dropped
        why = f"the cluster's Redis has been unreachable for {waited:.0f} s"
        log.warn(
            "cluster: node {node} dropped {count} queue messages that waited {seconds:.0f} s "
            "for Redis; their producers get an ERROR",
            node=self.node_id,
            count=dropped,
            seconds=waited,
        )
        self.confirms.give_up(dropped, Failure(ConnectionError(why)))
        self._gave_up(why)
