"""
Delayed delivery, the broker's part: holding a message that carries
``AMQ_SCHEDULED_DELAY`` (:class:`~stomptw.scheduled.Scheduler` keeps it) and
routing it when it is due. A base class of
:class:`~stomptw.broker.Broker`, as :class:`~stomptw.lifetime.BrokerLifetime` is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stomptw.model import DestinationError, DestinationFull, Message
from stomptw.scheduled import DELAY_HEADER

if TYPE_CHECKING:
    from stomptw.broker import Broker

__all__ = ["BrokerScheduling"]


class BrokerScheduling:
    """The broker's delayed-delivery methods (see the module docstring)."""

    def _schedule(
        self: Broker, destination: str, headers: dict[str, str], body: bytes, delay_ms: int
    ) -> Message:
        """Hold a message back for ``delay_ms``; raises :class:`DestinationFull` past the limit."""
        limit = self.config.max_scheduled_messages
        if limit and len(self.scheduled) >= limit:
            raise DestinationFull(
                destination,
                f"{len(self.scheduled)} messages are scheduled, the limit is {limit} "
                "(--max-scheduled-messages)",
            )
        due = self.now_ms() + delay_ms
        message = self._accept(destination, headers, body, due)
        self.scheduled.hold(destination, message, due)
        return message

    def _route_due(self: Broker, destination: str, message: Message) -> None:
        """A scheduled message is due: route it as if it were sent now."""
        # Delivered without it: a client that relays its headers must not delay it again.
        message.headers.pop(DELAY_HEADER, None)
        dest = self.destinations.get(destination)
        if dest is None:
            try:
                dest = self.destination(destination)
            except DestinationError:
                # A temporary queue whose connection has ended.
                self.stats["published"] += 1
                self.stats["dropped"] += 1
                return
        self.stats["published"] += 1
        if message.expires and message.expires <= self.now_ms():
            self.expire(None, message)
        else:
            dest.publish(message, None, False)
            if self.on_topic_message is not None and dest.kind == "topic":
                self.on_topic_message(message)
        self._forget_if_idle(dest)

    def deadline_sweep(self: Broker):
        """The broker's shared deadline sweep (:mod:`stomptw.timers`), made on first use."""
        if self.deadlines is None:
            from stomptw.timers import DeadlineSweep, resolution_for

            clock = self.clock
            if clock is None:
                from twisted.internet import reactor as clock
            self.deadlines = DeadlineSweep(clock, resolution_for(self.config.heartbeat_send_ms))
        return self.deadlines
