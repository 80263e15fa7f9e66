"""
The entries of the cluster's queues this node holds, and their way back
to Redis (:class:`Settles`, for
:class:`~stomptw.cluster.redisqueues.RedisQueues`): an acknowledged entry
(or an expired or dead-lettered one) is ``XACK``-ed and ``XDEL``-eted, in
batches once per reactor turn; one given back (no subscriber left here) is
appended again for any node and dropped in one script. Under a queue limit
both go through :class:`~stomptw.cluster.redislimits.ClusterLimits`, which
keeps the queue's bytes. What Redis has not answered is sent again once it
is back, and is not for the liveness checks to claim meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.python.failure import Failure

from stomptw.cluster.redislimits import ClusterLimits

__all__ = ["Settles"]

#: Append an entry again (for any node) and drop the old one, in one step.
_GIVE_BACK = """
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'n', ARGV[2])
redis.call('XACK', KEYS[1], ARGV[3], ARGV[4])
redis.call('XDEL', KEYS[1], ARGV[4])
return 1
"""

#: A give-back: subject, entry id, payload, deliveries, stored length.
_Back = tuple[str, bytes, bytes, int, int]


class Settles:
    """
    The entries this node holds, and their acknowledgements and give-backs.

    :param clock: the reactor's time (a flush is scheduled for the next turn).
    :param connection: ``() -> the command connection``, or None while it is down.
    :param key: ``subject -> stream key``.
    :param group: the consumer group's name.
    :param limits: the cluster-wide queue limits (counted when one is set).

    :ivar given_back: entries handed back for the other nodes.
    """

    def __init__(
        self,
        clock: Any,
        connection: Callable[[], Any],
        key: Callable[[str], str],
        group: str,
        limits: ClusterLimits,
    ) -> None:
        self._clock = clock
        self._connection = connection
        self._key = key
        self._group = group
        self._limits = limits
        self.given_back = 0
        #: Entry ids handed to this node's queues and not yet done with
        #: (with their lengths as stored).
        self._held: dict[str, dict[bytes, int]] = {}
        #: Acknowledgements to send (id: length), and sent but not yet answered.
        self._acks: dict[str, dict[bytes, int]] = {}
        self._unconfirmed: dict[str, set[bytes]] = {}
        #: Entries to give back, kept while Redis is unreachable.
        self._returns: list[_Back] = []
        self._flush_call: Any = None

    def hold(self, subject: str, entry_id: bytes, length: int) -> None:
        """The entry (``length`` bytes as stored) is handed to this node."""
        self._held.setdefault(subject, {})[entry_id] = length

    def done(self, subject: str, entry_id: bytes) -> None:
        """The entry was consumed: acknowledge and delete it (on the next turn)."""
        held = self._held.get(subject)
        length = held.pop(entry_id, 0) if held is not None else 0
        self._acks.setdefault(subject, {})[entry_id] = length
        self._soon()

    def give_back(self, subject: str, entry_id: bytes, payload: bytes, deliveries: int) -> None:
        """The entry goes back to the queue for any node (on the next turn)."""
        held = self._held.get(subject)
        length = held.pop(entry_id, 0) if held is not None else 0
        self._returns.append((subject, entry_id, payload, deliveries, length))
        self._soon()

    def _soon(self) -> None:
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self.flush)

    def stop(self) -> None:
        """No more scheduled flushes (the caller flushes once more if it can)."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()

    def flush(self) -> None:
        """Send what waits: the acknowledgements, then the give-backs."""
        self._flush_call = None
        protocol = self._connection()
        if protocol is None:
            return
        acks, self._acks = self._acks, {}
        limits = self._limits if self._limits.counted else None
        group = self._group
        for subject, ids in acks.items():
            self._unconfirmed.setdefault(subject, set()).update(ids)
            if limits is not None:
                d = limits.settle(protocol, subject, group, ids)
            else:
                key = self._key(subject)
                d = protocol.execute_command("XACK", key, group, *ids)
                protocol.execute_command("XDEL", key, *ids).addErrback(lambda _: None)
            d.addBoth(self._acked, subject, ids)
        returns, self._returns = self._returns, []
        for back in returns:
            subject, entry_id, payload, deliveries, length = back
            self.given_back += 1
            if limits is not None:
                d = limits.give_back(
                    protocol, subject, group, entry_id, payload, deliveries, length
                )
            else:
                d = protocol.eval(
                    _GIVE_BACK, [self._key(subject)], [payload, deliveries, group, entry_id]
                )
            d.addErrback(self._not_given_back, back)

    def _acked(self, result: object, subject: str, ids: dict[bytes, int]) -> None:
        if isinstance(result, Failure):
            # Sent again once Redis is back (the entries stay this node's).
            self._acks.setdefault(subject, {}).update(ids)
            return
        unconfirmed = self._unconfirmed.get(subject)
        if unconfirmed is not None:
            unconfirmed.difference_update(ids)

    def _not_given_back(self, failure: Failure, back: _Back) -> None:
        self._returns.append(back)

    def not_claimable(self, subject: str) -> set[bytes]:
        """
        This node's entries of ``subject`` that are not to be claimed again:
        held by its queue, or acknowledged or given back and not yet
        answered by Redis.
        """
        out = set(self._held.get(subject, ()))
        out.update(self._unconfirmed.get(subject, ()))
        out.update(self._acks.get(subject, ()))
        out.update(back[1] for back in self._returns if back[0] == subject)
        return out
