"""
What the RECEIPTs of the SENDs to the cluster's queues wait for
(:class:`Confirmations`, for :class:`~stomptw.cluster.redissends.Sends`):
Redis's answer to every SEND before them and, with
``--cluster-replicas N``, a ``WAIT N`` written right after those SENDs on
the same connection (it covers every write before it, and its answer comes
after theirs), so that one ``WAIT`` serves every RECEIPT queued behind it.
Too few replicas within ``--cluster-replica-timeout`` fail those RECEIPTs
with :class:`~stomptw.errors.NotReplicated`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomptw.cluster.probe import command
from stomptw.errors import NotReplicated

__all__ = ["Confirmations"]

log = Logger()


class Confirmations:
    """
    The SENDs counted, answered and confirmed, and the RECEIPTs waiting.

    :param node_id: this node's id, for the logs.
    :param replicas: ``--cluster-replicas`` (0: Redis's answer is enough).
    :param replica_timeout: ``--cluster-replica-timeout``.
    :param connection: ``() -> the command connection``, or None while it is down.
    :param held_back: whether SENDs wait to be written (a ``WAIT`` now would
        not cover them).

    :ivar sent: SENDs accepted so far.
    :ivar answered: SENDs Redis answered (or that were given up on).
    """

    def __init__(
        self,
        node_id: str,
        replicas: int,
        replica_timeout: float,
        connection: Callable[[], Any],
        held_back: Callable[[], bool],
    ) -> None:
        self.node_id = node_id
        self.replicas = replicas
        self._replica_timeout = replica_timeout
        # The same WAIT every time (timeout in ms, at least 1: 0 would wait for ever).
        self._wait = command("WAIT", str(replicas), str(max(1, int(replica_timeout * 1000))))
        self._connection = connection
        self._held_back = held_back
        self.sent = 0
        self.answered = 0
        #: With replicas: SENDs confirmed on enough replicas (or given up on),
        #: and SENDs a WAIT written so far covers.
        self._confirmed = 0
        self._wait_upto = 0
        self._waiters: deque[tuple[int, defer.Deferred]] = deque()

    def sync(self) -> defer.Deferred:
        """
        A Deferred that fires once Redis has answered every SEND so far (and,
        with ``replicas``, enough replicas hold them).
        """
        done = self._confirmed if self.replicas else self.answered
        if done >= self.sent:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append((self.sent, d))
        if self.replicas:
            self.wait_for_replicas()
        return d

    def answer(self, count: int) -> None:
        """Redis answered ``count`` more SENDs."""
        self.answered += count
        if self.replicas:
            return  # RECEIPTs wait for the WAIT after them
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.answered:
            waiters.popleft()[1].callback(None)

    def refuse(self, count: int, failure: Failure) -> None:
        """Redis refused ``count`` SENDs: every RECEIPT waiting fails."""
        self.answered += count
        self._fail_all(failure)

    def give_up(self, count: int, failure: Failure) -> None:
        """``count`` SENDs waiting for Redis were dropped: every RECEIPT waiting fails."""
        self.answered += count
        self._confirmed = self._wait_upto = self.answered
        self._fail_all(failure)

    def _fail_all(self, failure: Failure) -> None:
        waiters, self._waiters = self._waiters, deque()
        for _, d in waiters:
            d.errback(failure)

    def resumed(self) -> None:
        """The SENDs that waited are written again: so is the WAIT after them."""
        if self.replicas:
            self._wait_upto = self._confirmed
            self.wait_for_replicas()

    def wait_for_replicas(self) -> None:
        """Write a ``WAIT`` after the SENDs the waiting RECEIPTs need, unless one covers them."""
        if not self._waiters or self._held_back():
            return
        upto = self._waiters[-1][0]
        if self._wait_upto >= upto:
            return
        protocol = self._connection()
        if protocol is None:
            return
        self._wait_upto = upto
        protocol.raw([self._wait], lambda reply: self._replicated(upto, reply))

    def _replicated(self, upto: int, reply: Any) -> None:
        """A ``WAIT``'s answer: how many replicas hold the SENDs up to ``upto``."""
        if isinstance(reply, txredisapi.ConnectionError):
            # Written again once the SENDs are (resumed).
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
        self.wait_for_replicas()
