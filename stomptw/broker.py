"""
The broker: a registry of destinations and the routing between them.

It knows nothing of sockets or of STOMP's wire format; client sessions talk
to it through :class:`Subscription` objects and the
:class:`~stomptw.interfaces.IMessageConsumer` interface.
"""

from __future__ import annotations

import itertools
import os

from stomptw.destinations import Queue, Topic
from stomptw.interfaces import IDestination, IMessageConsumer

__all__ = ["ACK_MODES", "Broker", "DestinationError", "Message", "Subscription"]

#: The acknowledgement modes a subscription may ask for.
ACK_MODES = ("auto", "client", "client-individual")

QUEUE_PREFIX = "/queue/"
TOPIC_PREFIX = "/topic/"


class DestinationError(ValueError):
    """A destination name the broker cannot route to."""


class Message:
    """
    A message accepted by the broker.

    :ivar message_id: unique for the broker's lifetime and across restarts.
    :ivar destination: the destination it was sent to.
    :ivar headers: the sender's headers that travel with it (``content-type``
        and user headers), without the per-delivery ones.
    :ivar body: the body bytes.
    :ivar redelivered: true once it has been handed out and came back.
    """

    __slots__ = ("message_id", "destination", "headers", "body", "redelivered")

    def __init__(
        self, message_id: str, destination: str, headers: dict[str, str], body: bytes
    ) -> None:
        self.message_id = message_id
        self.destination = destination
        self.headers = headers
        self.body = body
        self.redelivered = False

    def __repr__(self) -> str:
        return f"<Message {self.message_id} to {self.destination}>"


class Subscription:
    """
    One client subscription to one destination.

    :ivar consumer: the session that receives the messages.
    :ivar id: the subscription id the client chose.
    :ivar destination: the destination's name.
    :ivar ack_mode: one of :data:`ACK_MODES`.
    :ivar prefetch: the most unacknowledged messages it may hold in a client
        mode; 0 means no limit.
    :ivar unacked: ack id -> message, in delivery order, for messages
        delivered in a client mode and not yet acknowledged.
    :ivar active: False once the subscription is being torn down; it then
        receives nothing more.
    """

    __slots__ = (
        "consumer",
        "id",
        "destination",
        "ack_mode",
        "prefetch",
        "unacked",
        "target",
        "active",
    )

    def __init__(
        self,
        consumer: IMessageConsumer,
        id: str,
        destination: str,
        ack_mode: str = "auto",
        prefetch: int = 0,
    ) -> None:
        if ack_mode not in ACK_MODES:
            raise ValueError(f"unknown ack mode {ack_mode!r}")
        self.consumer = consumer
        self.id = id
        self.destination = destination
        self.ack_mode = ack_mode
        self.prefetch = prefetch
        self.unacked: dict[str, Message] = {}
        self.target: IDestination | None = None
        self.active = True

    def is_ready(self) -> bool:
        """Whether this subscription may be handed another message now."""
        if not self.active:
            return False
        return self.prefetch <= 0 or self.ack_mode == "auto" or len(self.unacked) < self.prefetch

    def deliver(self, message: Message) -> bool:
        """Pass ``message`` to the consumer; False if it could not take it."""
        return self.consumer.deliver(self, message)

    def take(self, ack_id: str, cumulative: bool) -> list[tuple[str, Message]]:
        """
        Remove and return ``(ack id, message)`` for the unacknowledged
        message ``ack_id`` and, when ``cumulative``, for every message
        delivered before it.
        """
        unacked = self.unacked
        if ack_id not in unacked:
            return []
        if not cumulative:
            return [(ack_id, unacked.pop(ack_id))]
        taken = []
        for key in list(unacked):
            taken.append((key, unacked.pop(key)))
            if key == ack_id:
                break
        return taken


class Broker:
    """
    Routes messages between client sessions.

    Destinations are created on first use: names starting with ``/topic/``
    are topics; ``/queue/`` names, and any other name, are queues (as in
    ActiveMQ). A destination that holds nothing and has no subscribers is
    forgotten.
    """

    def __init__(self) -> None:
        self.destinations: dict[str, IDestination] = {}
        # Message ids stay unique across restarts thanks to the random prefix.
        self._prefix = os.urandom(6).hex()
        self._message_ids = itertools.count(1)
        self._session_ids = itertools.count(1)
        self.sessions: set[object] = set()

    def new_session_id(self) -> str:
        """A session identifier for a new client connection."""
        return f"{self._prefix}-{next(self._session_ids)}"

    @staticmethod
    def check_destination(name: str) -> None:
        """
        Raise :class:`DestinationError` if ``name`` cannot be routed to.
        """
        if not name:
            raise DestinationError("destination is empty")
        for prefix in (QUEUE_PREFIX, TOPIC_PREFIX):
            if name.startswith(prefix) and len(name) == len(prefix):
                raise DestinationError(f"destination {name!r} has no name after the prefix")

    def destination(self, name: str) -> IDestination:
        """Return the destination called ``name``, creating it if needed."""
        dest = self.destinations.get(name)
        if dest is None:
            self.check_destination(name)
            dest = Topic(name) if name.startswith(TOPIC_PREFIX) else Queue(name)
            self.destinations[name] = dest
        return dest

    def send(self, destination: str, headers: dict[str, str], body: bytes) -> Message:
        """Accept a message for ``destination`` and route it."""
        message = Message(f"{self._prefix}-{next(self._message_ids)}", destination, headers, body)
        dest = self.destination(destination)
        dest.publish(message)
        self._forget_if_idle(dest)
        return message

    def subscribe(self, subscription: Subscription) -> None:
        """Start delivering messages from its destination to ``subscription``."""
        dest = self.destination(subscription.destination)
        subscription.target = dest
        dest.subscribe(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        """
        Stop ``subscription``. Its unacknowledged messages go back to their
        queue (redelivered); on a topic they are dropped.
        """
        subscription.active = False
        dest = subscription.target
        if dest is None:
            return
        subscription.target = None
        dest.unsubscribe(subscription)
        self._forget_if_idle(dest)

    def ack(self, subscription: Subscription, messages: list[Message]) -> None:
        """``messages``, taken from ``subscription.unacked``, are done with."""
        if subscription.target is not None and messages:
            subscription.target.acked(subscription, messages)

    def nack(self, subscription: Subscription, messages: list[Message]) -> None:
        """``messages``, taken from ``subscription.unacked``, were refused."""
        if subscription.target is not None and messages:
            subscription.target.nacked(subscription, messages)

    def _forget_if_idle(self, dest: IDestination) -> None:
        if dest.is_idle() and self.destinations.get(dest.name) is dest:
            del self.destinations[dest.name]
