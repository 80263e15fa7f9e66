"""
The SENDs to the cluster's queues on their way to Redis (:class:`Sends`,
for :class:`~stomptw.cluster.redisqueues.RedisQueues`): one ``XADD`` each,
answered in order on the command connection; a transaction's, sent inside
:meth:`Sends.together`, in one ``MULTI``/``EXEC``, so that Redis stores all
of them or none. RECEIPTs wait for the answers (:meth:`Sends.sync`).
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

from stomptw.cluster.redislimits import ClusterLimits
from stomptw.errors import NotReplicated

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


def _count(unit: _Unit) -> int:
    subject, payload = unit
    return 1 if subject is not None else len(payload)


def _size(unit: _Unit) -> int:
    subject, payload = unit
    if subject is not None:
        return len(payload)  # type: ignore[arg-type]
    return sum(len(p) for _, p in payload)  # type: ignore[union-attr]


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
        #: SENDs accepted, and answered by Redis; RECEIPTs wait on these.
        self._sent = 0
        self._answered = 0
        self._waiters: deque[tuple[int, defer.Deferred]] = deque()
        #: The SENDs of the transaction being committed, while one is.
        self._together: list[tuple[str, bytes]] | None = None
        self.replicas = replicas
        self._replica_timeout = replica_timeout
        self._connection = connection
        #: With replicas: SENDs confirmed on enough replicas (or given up on),
        #: and SENDs a WAIT written so far covers.
        self._confirmed = 0
        self._wait_upto = 0
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
            self._sent += _count(unit)
            if not self._waiting_since:
                self._waiting_since = self._clock.seconds()
            self._outbox.append(unit)
            self._outbox_bytes += size
            return
        self._sent += _count(unit)
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
        self._answered += _count(unit)
        limits = self._limits
        if limits is not None:
            self._count_answer(limits, unit, reply)
        if self.replicas:
            return  # RECEIPTs wait for the WAIT after it
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._answered:
            waiters.popleft()[1].callback(None)

    @staticmethod
    def _count_answer(limits: ClusterLimits, unit: _Unit, reply: Any) -> None:
        subject, payload = unit
        if subject is not None:
            limits.answered(subject, len(payload), reply)  # type: ignore[arg-type]
            return
        answers = reply if isinstance(reply, list) else []
        for index, (one, body) in enumerate(payload):  # type: ignore[arg-type]
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
        subject, payload = unit
        pieces = [(subject, payload)] if subject is not None else payload
        for one, body in pieces:  # type: ignore[union-attr]
            limits.unsent(one, len(body))  # type: ignore[arg-type]
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
            subject, payload = unit
            pieces = [(subject, payload)] if subject is not None else payload
            for one, body in pieces:  # type: ignore[union-attr]
                limits.unsent(one, len(body))  # type: ignore[arg-type]
        if failure.check(txredisapi.ConnectionError):
            # Whether Redis stored it is unknown: sent again once Redis is
            # back (a message may then be stored twice, never lost; a
            # transaction's all again, or all for the first time).
            self._resend.append(unit)
            self._outbox_bytes += _size(unit)
            if not self._waiting_since:
                self._waiting_since = self._clock.seconds()
            return
        self._answered += _count(unit)
        subject, payload = unit
        log.error(
            "cluster: Redis refused {what} for {queue}: {error}",
            what="a queue message" if subject is not None else "a transaction's queue messages",
            queue=subject if subject is not None else ", ".join(sorted({s for s, _ in payload})),
            error=failure.getErrorMessage(),
        )
        waiters, self._waiters = self._waiters, deque()
        for _, d in waiters:
            d.errback(failure)

    def sync(self) -> defer.Deferred:
        """
        A Deferred that fires once Redis has answered every SEND so far (and,
        with ``replicas``, enough replicas hold them).
        """
        done = self._confirmed if self.replicas else self._answered
        if done >= self._sent:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((self._sent, d))
        if self.replicas:
            self._wait_for_replicas()
        return d

    # -- replicas ------------------------------------------------------------------------

    def _wait_for_replicas(self) -> None:
        """
        Write a ``WAIT`` after the SENDs the waiting RECEIPTs need (on the
        same connection: it covers every write before it, and its answer
        comes after theirs).
        """
        if not self._waiters or self._outbox or self._resend:
            return
        upto = self._waiters[-1][0]
        if self._wait_upto >= upto:
            return  # a WAIT written already covers them
        protocol = self._connection()
        if protocol is None:
            return
        self._wait_upto = upto
        timeout = b"%d" % max(1, int(self._replica_timeout * 1000))
        replicas = b"%d" % self.replicas
        command = b"*3\r\n$4\r\nWAIT\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(replicas),
            replicas,
            len(timeout),
            timeout,
        )
        protocol.raw([command], lambda reply: self._replicated(upto, reply))

    def _replicated(self, upto: int, reply: Any) -> None:
        """A ``WAIT``'s answer: how many replicas hold the SENDs up to ``upto``."""
        if isinstance(reply, txredisapi.ConnectionError):
            # Written again once the SENDs are (resume).
            self._wait_upto = min(self._wait_upto, self._confirmed)
            return
        self._confirmed = max(self._confirmed, upto)
        failure = None
        if isinstance(reply, Exception):
            failure = Failure(reply)
        elif int(reply) < self.replicas:
            failure = Failure(
                NotReplicated(
                    f"only {int(reply)} of {self.replicas} Redis replicas confirmed a "
                    f"persistent message within {self._replica_timeout:g} s"
                )
            )
            log.warn(
                "cluster: node {node}: only {got} of {wanted} Redis replicas confirmed "
                "persistent messages within {timeout:g} s; their producers get an ERROR",
                node=self.node_id,
                got=int(reply),
                wanted=self.replicas,
                timeout=self._replica_timeout,
            )
        waiters = self._waiters
        while waiters and waiters[0][0] <= upto:
            d = waiters.popleft()[1]
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)
        self._wait_for_replicas()

    def resume(self, protocol: Any) -> None:
        """Redis is back: send what waited, in order."""
        outbox, self._outbox = self._outbox, deque()
        resend, self._resend = self._resend, deque()
        self._outbox_bytes = 0
        self._waiting_since = 0.0
        for unit in [*resend, *outbox]:
            self._write(protocol, unit)
        if self.replicas:
            self._wait_upto = self._confirmed
            self._wait_for_replicas()

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
        self._answered += dropped
        self._confirmed = self._wait_upto = self._answered
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
