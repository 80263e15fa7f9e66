"""
Temporary queues for request/reply, as RabbitMQ's STOMP names them.

A client that sends with ``reply-to:/temp-queue/NAME`` (or subscribes to
``/temp-queue/NAME``) gets a queue private to its connection. The broker
forwards ``reply-to`` rewritten to the queue's public name,
``/reply-queue/<random>``, which anyone may send to and nobody else may
subscribe to; replies reach the client as MESSAGEs whose ``destination`` is
the name it used. Without a subscription of its own, the client is
subscribed at the first such SEND (id ``/temp-queue/NAME``, ``ack:auto``).
The queue and what it holds go when the connection ends; a reply sent after
that is dropped, as RabbitMQ drops what no queue takes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from stomptw.destinations import Queue
from stomptw.interfaces import IMessageConsumer
from stomptw.model import DestinationError, Message

if TYPE_CHECKING:
    from stomptw.broker import Broker

__all__ = ["REPLY_PREFIX", "TEMP_PREFIX", "TempQueue", "TempQueues"]

#: What a client calls its temporary queues.
TEMP_PREFIX = "/temp-queue/"
#: The public names the broker gives them.
REPLY_PREFIX = "/reply-queue/"


class TempQueue(Queue):
    """
    One connection's temporary queue: an ordinary queue in the broker under
    its public name, that delivers under the owner's name for it and keeps
    nothing in the store (it cannot outlive the connection).

    :ivar alias: the owner's name for it (``/temp-queue/NAME``).
    :ivar owner: the session it belongs to.
    """

    def __init__(self, name: str, alias: str, owner: IMessageConsumer, broker: Broker) -> None:
        super().__init__(name, broker.context)
        self.alias = alias
        self.owner = owner
        self._open = True

    def publish(
        self, message: Message, producer: IMessageConsumer | None = None, reject: bool = True
    ) -> None:
        message.destination = self.alias
        message.persistent = False
        super().publish(message, producer, reject)

    def is_idle(self) -> bool:
        # Kept while its connection lasts, subscribed or not.
        return not self._open and super().is_idle()

    def close(self) -> int:
        """The connection ended: drop what is waiting; return how many."""
        self._open = False
        return self.purge()


class TempQueues:
    """A session's temporary queues, by the name it uses."""

    # One per session: slots instead of a dictionary each.
    __slots__ = ("queues", "session")

    def __init__(self, session: IMessageConsumer) -> None:
        self.session = session
        self.queues: dict[str, TempQueue] = {}

    def queue(self, broker: Broker, alias: str) -> TempQueue:
        """The temporary queue ``alias`` names, made on first use."""
        queue = self.queues.get(alias)
        if queue is None:
            if len(alias) == len(TEMP_PREFIX):
                raise DestinationError(f"destination {alias!r} has no name after the prefix")
            name = REPLY_PREFIX + os.urandom(12).hex()
            queue = TempQueue(name, alias, self.session, broker)
            broker.destinations[name] = queue
            self.queues[alias] = queue
        return queue

    def close(self, broker: Broker) -> None:
        """The connection ended (its subscriptions already have): drop every queue."""
        queues, self.queues = self.queues, {}
        for queue in queues.values():
            dropped = queue.close()
            broker.stats["dropped"] += dropped
            if broker.destinations.get(queue.name) is queue:
                del broker.destinations[queue.name]
