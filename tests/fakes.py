"""
The broker on a Clock without sessions: a fake
:class:`~stomptw.interfaces.IMessageConsumer` that records what the broker
does to it, and helpers to subscribe it and settle its messages.
"""

from __future__ import annotations

import itertools

from twisted.internet.task import Clock

from stomptw.broker import Broker, Subscription
from stomptw.config import BrokerConfig
from stomptw.store import MemoryStore, StoredMessage


class FakeConsumer:
    """A minimal IMessageConsumer that records what the broker does to it."""

    def __init__(self) -> None:
        self.writable = True
        self.delivered: list[tuple[str, bytes, int, bool]] = []
        self.blocked: list[str] = []
        self.unblocked: list[str] = []
        self.slow: list[tuple[str, str]] = []
        self._ids = itertools.count(1)

    def deliver(self, sub, message) -> bool:
        self.delivered.append((sub.id, message.body, message.delivery_count, message.redelivered))
        if sub.ack_mode != "auto":
            sub.unacked[str(next(self._ids))] = message
        return True

    def block(self, queue) -> None:
        self.blocked.append(queue.name)

    def unblock(self, queue) -> None:
        self.unblocked.append(queue.name)

    def slow_consumer(self, sub, reason) -> None:
        self.slow.append((sub.id, reason))


def make_broker(store=None, **overrides) -> tuple[Broker, Clock]:
    clock = Clock()
    config = BrokerConfig(store="memory", **overrides)
    broker = Broker(config, store if store is not None else MemoryStore(), clock)
    broker.open()
    return broker, clock


def subscribe(broker, consumer, destination, ack="client-individual", sub_id="s", **kw):
    sub = Subscription(consumer, sub_id, destination, ack, **kw)
    broker.subscribe(sub)
    return sub


def settle(broker, sub, ack: bool = True) -> None:
    """ACK or NACK the oldest unacknowledged message of ``sub``."""
    ack_id = next(iter(sub.unacked))
    messages = [m for _, m in sub.take(ack_id, cumulative=False)]
    (broker.ack if ack else broker.nack)(sub, messages)


def stored(key: int, owner: str = "/queue/a", **kwargs) -> StoredMessage:
    values = {
        "message_id": f"id-{key}",
        "destination": owner,
        "headers": {"x-key": str(key)},
        "body": f"body-{key}".encode(),
    }
    values.update(kwargs)
    return StoredMessage(key, owner, **values)
