"""
The broker's send path: accepting a message (its id, expiry and
persistence), routing it to its destination, and what a RECEIPT or a COMMIT
waits for (:meth:`BrokerSending.sync`, :meth:`BrokerSending.all_or_nothing`).
A base class of :class:`~stomptw.broker.Broker`, which keeps the registry of
destinations and subscriptions, as
:class:`~stomptw.brokerschedule.BrokerScheduling` and
:class:`~stomptw.lifetime.BrokerLifetime` are.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from stomptw.deferreds import both
from stomptw.destinations import Queue
from stomptw.model import QUEUE_PREFIX, DestinationError, Message
from stomptw.scheduled import DELAY_HEADER
from stomptw.tempqueues import REPLY_PREFIX

if TYPE_CHECKING:
    from stomptw.broker import Broker
    from stomptw.interfaces import IMessageConsumer

__all__ = ["BrokerSending"]


class BrokerSending:
    """The broker's send path (see the module docstring)."""

    def sync(self: Broker) -> Any:
        """A Deferred that fires once every message accepted so far is stored."""
        stored = self.store.sync()
        if self.cluster_sync is None:
            return stored
        return both(stored, self.cluster_sync())

    def all_or_nothing(self: Broker) -> Any:
        """
        A context manager for a COMMIT: within it, the messages sent to the
        cluster's queues are stored by the cluster all together or not at all.
        """
        if self.cluster_together is None:
            return nullcontext()
        return self.cluster_together()

    def send(
        self: Broker,
        destination: str,
        headers: dict[str, str],
        body: bytes,
        producer: IMessageConsumer | None = None,
        reject: bool = True,
    ) -> Message:
        """
        Accept a message for ``destination`` and route it.

        ``persistent:true`` makes a queue store it; ``expires`` (milliseconds
        since the epoch, already checked to be digits) or the broker's
        default TTL bound how long it may wait. Raises
        :class:`DestinationFull` if the destination refuses it (only when
        ``reject``; a transaction checks its destinations beforehand with
        :meth:`check_room`).
        """
        dest = self.destinations.get(destination)
        if dest is None:
            if destination.startswith(REPLY_PREFIX):
                # Its connection has ended: nothing takes the message.
                self.stats["published"] += 1
                self.stats["dropped"] += 1
                return Message(self.new_message_id(), destination, headers, body)
            dest = self.destination(destination)
        delay = headers.get(DELAY_HEADER)
        if delay and delay.isdigit() and int(delay) > 0:
            return self._schedule(destination, headers, body, int(delay))
        now = self.now_ms()
        message = self._accept(destination, headers, body, now)
        # Only a sender's expiry time can already be past.
        expired = bool(message.expires) and message.expires <= now
        if expired:
            # Accepted, but never delivered.
            self.stats["published"] += 1
            self.expire(None, message)
            self._forget_if_idle(dest)
            return message
        dest.publish(message, producer, reject)
        self.stats["published"] += 1
        if self.on_topic_message is not None and dest.kind == "topic":
            self.on_topic_message(message)
        self._forget_if_idle(dest)
        return message

    def route_remote(self: Broker, message: Message) -> None:
        """
        Deliver a topic message another node of the cluster accepted to this
        node's subscribers and durable subscriptions of its topic, without
        passing it on again. A topic nobody here subscribes to is not made.
        """
        dest = self.destinations.get(message.destination)
        if dest is None or dest.kind != "topic":
            return
        if not message.expires or message.expires > self.now_ms():
            dest.publish(message, None, False)
        self._forget_if_idle(dest)

    def _accept(
        self: Broker, destination: str, headers: dict[str, str], body: bytes, routed_ms: int
    ) -> Message:
        """A new message; ``--default-ttl`` counts from ``routed_ms`` when it has no ``expires``."""
        raw = headers.get("expires")
        expires = int(raw) if raw else 0
        ttl = self.config.default_ttl_ms
        if not expires and ttl:
            expires = routed_ms + ttl
            headers["expires"] = str(expires)
        return Message(
            self.new_message_id(),
            destination,
            headers,
            body,
            persistent=headers.get("persistent") == "true",
            expires=expires,
        )

    def purge(self: Broker, name: str) -> Any:
        """
        Drop every message waiting in the queue ``name`` (not those delivered
        and unacknowledged); return how many, or, for a queue that spans a
        cluster, a Deferred that fires with how many. Raises
        :class:`KeyError` if there is no such destination,
        :class:`DestinationError` for a topic.
        """
        dest = self.destinations.get(name)
        if dest is None:
            if self.make_queue is None or not name.startswith(QUEUE_PREFIX):
                raise KeyError(name)
            # Unknown here, but a cluster queue's messages may wait in the cluster.
            dest = self.destination(name)
        if not isinstance(dest, Queue):
            raise DestinationError(f"{name} is a {dest.kind}; only queues hold messages")
        dropped = dest.purge_all()
        self._forget_if_idle(dest)
        return dropped

    def check_room(self: Broker, destination: str, count: int = 0, size: int = 0) -> None:
        """
        Raise :class:`DestinationFull` if ``destination`` refuses messages
        now, or (with ``count``) if ``count`` messages of ``size`` bytes in
        all would take it over its limits.
        """
        if destination.startswith(REPLY_PREFIX) and destination not in self.destinations:
            return  # its connection has ended: the message will be dropped
        dest = self.destination(destination)
        try:
            if isinstance(dest, Queue):
                dest.check_room(count, size)
        finally:
            self._forget_if_idle(dest)
