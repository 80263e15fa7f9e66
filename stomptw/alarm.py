"""
What the broker's alarms (:mod:`stomptw.memalarm`, :mod:`stomptw.diskalarm`)
have in common: a measurement taken every ``interval`` seconds on the
broker's clock, and the publishing connections held while the alarm is
raised, read again together when it clears.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

__all__ = ["Alarm"]


class Alarm:
    """
    An alarm measured every ``interval`` seconds by :meth:`check`.

    :ivar limit: what it measures against; 0 turns it off.
    :ivar active: True while it is raised.
    :ivar blocked: the producers held until it clears.
    """

    #: What a held producer's log line calls it.
    name = "an alarm"
    #: ``memory`` or ``disk``: the label in metrics and the admin API.
    kind = ""

    def __init__(self, limit: int, clock: IReactorTime, interval: float) -> None:
        self.limit = limit
        self.interval = interval
        self.active = False
        self.blocked: set[Any] = set()
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def check(self) -> None:
        """Measure; raise or clear the alarm."""
        raise NotImplementedError

    def start(self) -> None:
        """Measure now, then every ``interval`` seconds."""
        if self.limit and not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Measure no more."""
        if self._loop.running:
            self._loop.stop()

    def hold(self, producer: Any) -> None:
        """``producer`` published during the alarm: stop reading from it."""
        if producer not in self.blocked:
            self.blocked.add(producer)
            producer.block(self)

    def _release_all(self) -> None:
        """The alarm cleared: read every held producer again."""
        blocked, self.blocked = self.blocked, set()
        for producer in blocked:
            producer.unblock(self)
