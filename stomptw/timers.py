"""
One shared, bucketed deadline sweep for every session of a broker.

A broker with tens of thousands of connections would otherwise keep two or
three ``callLater`` timers per connection (heart-beats out, heart-beats in,
the login timeout), each rescheduled on the reactor's heap. Here a session
asks for one deadline at a time; deadlines fall into buckets of
``resolution`` seconds, and a single reactor timer fires for the earliest
non-empty bucket, calling ``tick(now)`` on every target in it. A target
works out what is really due from its own timestamps (last frame sent and
received), so traffic never needs to move a deadline: a tick that finds
nothing due just asks for the next one.

Two kinds of deadline:

- **early** (a heart-beat the broker promised): the bucket is rounded down,
  so the target is called up to ``resolution`` before the deadline and never
  after it (on a reactor that is on time);
- **late** (a timeout): rounded up, so the target is never called before the
  deadline and at most ``resolution`` after it.
"""

from __future__ import annotations

import heapq
import math

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from stomptw.interfaces import IDeadlineTarget

__all__ = ["DEFAULT_RESOLUTION", "DeadlineSweep", "resolution_for"]

log = Logger()

#: Bucket width in seconds: how early a heart-beat may go out, and how late a
#: timeout may be noticed.
DEFAULT_RESOLUTION = 0.025

#: Slack for float rounding at a bucket's boundary, as a share of a bucket.
_EPSILON = 1e-6


def resolution_for(heartbeat_send_ms: int) -> float:
    """
    The bucket width for a broker that sends heart-beats at least every
    ``heartbeat_send_ms`` (its ``sx``; negotiated intervals are never
    shorter): at most a quarter of that interval, so that a beat sent a
    bucket early still leaves three quarters of the interval between beats.
    """
    if heartbeat_send_ms > 0:
        return min(DEFAULT_RESOLUTION, heartbeat_send_ms / 4000.0)
    return DEFAULT_RESOLUTION


class DeadlineSweep:
    """
    Deadlines of many targets on one reactor timer.

    :param clock: the reactor's time (a ``Clock`` in tests).
    :param resolution: the bucket width in seconds.
    """

    def __init__(self, clock: IReactorTime, resolution: float = DEFAULT_RESOLUTION) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self.clock = clock
        self.resolution = resolution
        self._buckets: dict[int, dict[IDeadlineTarget, None]] = {}
        self._slots: dict[IDeadlineTarget, int] = {}
        self._heap: list[int] = []
        self._call: IDelayedCall | None = None
        self._call_slot: int | None = None
        # The slot being fired, while targets are called.
        self._firing: int | None = None

    def __len__(self) -> int:
        """How many targets wait for a deadline."""
        return len(self._slots)

    def schedule(self, target: IDeadlineTarget, when: float, early: bool = False) -> None:
        """
        Call ``target.tick(now)`` at ``when`` (seconds on the clock):
        up to one bucket before it if ``early``, else up to one bucket after
        it. Replaces the target's earlier deadline, if any.
        """
        scaled = when / self.resolution
        slot = math.floor(scaled + _EPSILON) if early else math.ceil(scaled - _EPSILON)
        if self._firing is not None and slot <= self._firing:
            slot = self._firing + 1
        old = self._slots.get(target)
        if old == slot:
            return
        if old is not None:
            self._buckets[old].pop(target, None)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            heapq.heappush(self._heap, slot)
        bucket[target] = None
        self._slots[target] = slot
        if self._firing is None and (self._call_slot is None or slot < self._call_slot):
            self._arm()

    def cancel(self, target: IDeadlineTarget) -> None:
        """Forget ``target``'s deadline, if it has one."""
        slot = self._slots.pop(target, None)
        if slot is None:
            return
        bucket = self._buckets[slot]
        bucket.pop(target, None)
        if not bucket and slot == self._call_slot and self._firing is None:
            # Nothing left to fire for: no reactor timer waits in vain.
            self._arm()

    def stop(self) -> None:
        """Forget every deadline and cancel the reactor timer."""
        self._buckets.clear()
        self._slots.clear()
        self._heap.clear()
        self._disarm()

    def _disarm(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._call_slot = None

    def _arm(self) -> None:
        """Set the reactor timer for the earliest non-empty bucket."""
        heap, buckets = self._heap, self._buckets
        while heap and not buckets.get(heap[0]):
            buckets.pop(heapq.heappop(heap), None)
        if not heap:
            self._disarm()
            return
        slot = heap[0]
        if self._call_slot == slot and self._call is not None and self._call.active():
            return
        self._disarm()
        delay = max(0.0, slot * self.resolution - self.clock.seconds())
        self._call = self.clock.callLater(delay, self._fire)
        self._call_slot = slot

    def _fire(self) -> None:
        self._call = None
        self._call_slot = None
        now = self.clock.seconds()
        current = math.floor(now / self.resolution + _EPSILON)
        heap, buckets, slots = self._heap, self._buckets, self._slots
        self._firing = current
        try:
            while heap and heap[0] <= current:
                bucket = buckets.pop(heapq.heappop(heap), None)
                if not bucket:
                    continue
                for target in bucket:
                    del slots[target]
                for target in bucket:
                    try:
                        target.tick(now)
                    except Exception:
                        log.failure("deadline of {target!r} failed", target=target)
        finally:
            self._firing = None
        self._arm()
