"""
The broker's expiry sweep: every ``expiry_interval`` seconds, the expired
messages waiting in any queue are taken out.

A queue drops an expired message when it comes to deliver it, so the sweep
is for the queues nobody consumes from: without it their expired messages
would stay, counting against the queue's limits (and holding its producers
blocked), until a subscriber came.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from stomptw.interfaces import IDestination
    from stomptw.model import DurableSubscription

__all__ = ["ExpirySweep"]


class ExpirySweep:
    """
    A timer that expires the pending messages of every queue, those of
    durable subscriptions included, then lets the broker forget the queues
    left idle.

    :param clock: the reactor's time; None sweeps nothing.
    :param interval: seconds between sweeps; 0 sweeps nothing.
    :param now_ms: ``() -> int``, the time in milliseconds since the epoch.
    :param destinations: the broker's destinations, by name (read at each
        sweep).
    :param durables: the broker's durable subscriptions, by owner (read at
        each sweep).
    :param forget_if_idle: lets the broker forget a destination left idle.
    """

    def __init__(
        self,
        clock: IReactorTime | None,
        interval: float,
        now_ms: Callable[[], int],
        destinations: dict[str, IDestination],
        durables: dict[str, DurableSubscription],
        forget_if_idle: Callable[[IDestination], None],
    ) -> None:
        self._clock = clock
        self._interval = interval
        self._now_ms = now_ms
        self._destinations = destinations
        self._durables = durables
        self._forget_if_idle = forget_if_idle
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Sweep every ``interval`` seconds from now on (with a clock and an interval)."""
        if self._clock is not None and self._interval > 0:
            self._call = self._clock.callLater(self._interval, self._sweep)

    def stop(self) -> None:
        """Sweep no more."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _sweep(self) -> None:
        self._call = None
        now = self._now_ms()
        # Queues, and streams with an age limit.
        queues = [d for d in self._destinations.values() if hasattr(d, "expire")]
        queues.extend(d.queue for d in self._durables.values())
        for queue in queues:
            if queue.expiring:
                queue.expire(now)
        for queue in queues:
            self._forget_if_idle(queue)
        if self._clock is not None:
            self._call = self._clock.callLater(self._interval, self._sweep)
