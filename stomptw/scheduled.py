"""
Delayed delivery: a SEND with ``AMQ_SCHEDULED_DELAY`` (milliseconds,
ActiveMQ's header) is held back that long, then routed as if sent then.

The broker's :class:`Scheduler` keeps the held messages in due order and
asks the broker's shared deadline sweep (:mod:`stomptw.timers`) for the
earliest due time, so that a thousand delayed messages cost one reactor
timer, on the broker's (injectable) clock. A ``timeout``-kind deadline is
never early and at most one sweep bucket (25 ms) late. A persistent delayed
message is stored as held by the scheduler (owner ``scheduled:DUE_MS``) and,
after a restart, delivered when due, or at once if its time has passed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from zope.interface import implementer

from stomptw.interfaces import IDeadlineTarget
from stomptw.model import Message
from stomptw.store import StoredMessage

if TYPE_CHECKING:
    from stomptw.model import DestinationContext

__all__ = ["DELAY_HEADER", "SCHEDULED_OWNER", "Scheduler", "parse_delay"]

DELAY_HEADER = "AMQ_SCHEDULED_DELAY"
#: The store owner of a held message: ``scheduled:`` and its due time in ms.
SCHEDULED_OWNER = "scheduled:"


def parse_delay(value: str) -> int:
    """The header's milliseconds; ``ValueError`` unless a non-negative integer."""
    if not value.isdigit():
        raise ValueError(
            f"AMQ_SCHEDULED_DELAY must be a whole number of milliseconds, got {value[:40]!r}"
        )
    return int(value)


@implementer(IDeadlineTarget)
class Scheduler:
    """
    The messages held back until their due time, and the timer for the
    earliest.

    :param context: what the broker's destinations see (store, clock, keys).
    :param route: ``(destination, message) -> None``: route a message now.
    :param sweep: ``() -> DeadlineSweep``: the broker's shared sweep.
    """

    def __init__(
        self,
        context: DestinationContext,
        route: Callable[[str, Message], None],
        sweep: Callable[[], object],
    ) -> None:
        self.context = context
        self._route = route
        self._sweep = sweep
        self._heap: list[tuple[int, int, str, Message]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, destination: str, message: Message, due_ms: int) -> None:
        """Keep ``message`` for ``destination`` until ``due_ms`` (stored if persistent)."""
        if message.persistent:
            key = message.key = self.context.new_key()
            self.context.store.put(
                StoredMessage(
                    key,
                    f"{SCHEDULED_OWNER}{due_ms}",
                    message.message_id,
                    destination,
                    message.headers,
                    message.body,
                    0,
                    message.expires,
                )
            )
        self._push(due_ms, destination, message)

    def restore(self, destination: str, message: Message, owner: str) -> None:
        """Take back a held message loaded from the store (at startup)."""
        self._push(int(owner[len(SCHEDULED_OWNER) :]), destination, message)

    def _push(self, due_ms: int, destination: str, message: Message) -> None:
        first = not self._heap or due_ms < self._heap[0][0]
        heapq.heappush(self._heap, (due_ms, next(self._order), destination, message))
        if first:
            self._arm()

    def _arm(self) -> None:
        sweep = self._sweep()
        if self._heap:
            sweep.schedule(self, self._heap[0][0] / 1000.0)
        else:
            sweep.cancel(self)

    def tick(self, now: float) -> None:
        """The sweep's call: route every message now due, then wait for the next."""
        now_ms = self.context.now_ms()
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            _, _, destination, message = heapq.heappop(heap)
            if message.key:
                # Stored again by its queue, under a key of its own.
                self.context.store.remove(message.key)
                message.key = 0
            self._route(destination, message)
        if heap:
            self._arm()

    def stop(self) -> None:
        """Hold everything where it is (the broker stops; stored ones come back)."""
        if self._heap:
            self._sweep().cancel(self)
