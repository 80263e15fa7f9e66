"""
Startup: putting back what the message store held when the broker last ran.

The broker calls :func:`restore` once, from :meth:`~stomptw.broker.Broker.open`,
before it accepts clients. It is a step of its own because it is the only
place that turns store records back into live objects, and the rules for
that (a crash makes every message a possible redelivery; a message of a
removed durable subscription is forgotten) concern nothing else the broker
does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from stomptw.model import Message
from stomptw.scheduled import SCHEDULED_OWNER

if TYPE_CHECKING:
    from stomptw.durables import Durables
    from stomptw.interfaces import IDestination, IMessageStore
    from stomptw.store import StoredState

__all__ = ["restore"]


def restore(
    state: StoredState,
    durables: Durables,
    destination: Callable[[str], IDestination],
    store: IMessageStore,
    scheduled: Callable[[str, Message, str], None] | None = None,
) -> int:
    """
    Recreate the durable subscriptions of ``state``, then put each stored
    message back in its queue, in key order; return how many messages went
    back.

    :param state: what the store held when it was opened.
    :param durables: the broker's durable subscriptions, to recreate them in
        (without storing them again).
    :param destination: ``name -> destination``, creating it if needed.
    :param store: the store ``state`` came from; a message whose durable
        subscription was removed is deleted from it.
    :param scheduled: ``(destination, message, owner)``: take back a message
        held by the scheduler (owner ``scheduled:DUE_MS``).
    """
    for owner, (client_id, name, topic) in state.subscriptions.items():
        durables.make(owner, client_id, name, topic, persist=False)
    restored = 0
    for stored in state.messages:
        count = stored.delivery_count
        held = stored.owner.startswith(SCHEDULED_OWNER)
        if state.unclean and not count and not held:
            # After a crash nobody knows which deliveries had started
            # (they are recorded lazily): say it may be a redelivery.
            count = 1
        message = Message(
            stored.message_id,
            stored.destination,
            stored.headers,
            stored.body,
            persistent=True,
            expires=stored.expires,
            delivery_count=count,
        )
        message.key = stored.key
        durable = durables.by_owner.get(stored.owner)
        if durable is not None:
            queue = durable.queue
        elif held and scheduled is not None:
            scheduled(stored.destination, message, stored.owner)
            restored += 1
            continue
        elif stored.owner.startswith("durable:"):
            # Its subscription was removed; it was to be forgotten.
            store.remove(stored.key)
            continue
        else:
            queue = destination(stored.owner)
        queue.restore(message)
        restored += 1
    return restored
