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
    from stomptw.store import StoredMessage, StoredState

__all__ = ["restore", "revive"]


def restore(
    state: StoredState,
    durables: Durables,
    destination: Callable[[str], IDestination],
    store: IMessageStore,
    scheduled: Callable[[str, Message, str], None] | None = None,
) -> int:
    """
    Recreate the durable subscriptions of ``state``, then put each stored
    message back in its queue, in key order, and behind them the pages of
    messages left in the store; return how many messages went back.

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
    unclean_below = state.next_key if state.unclean else 0
    for stored in state.messages:
        held = stored.owner.startswith(SCHEDULED_OWNER)
        message = revive(stored, unclean_below)
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
    for owner, page in state.pages.items():
        durable = durables.by_owner.get(owner)
        if durable is not None:
            durable.queue.restore_page(page)
        elif owner.startswith("durable:"):
            store.remove_range(owner, page.first_key, page.last_key)
            continue
        else:
            destination(owner).restore_page(page)
        restored += page.count
    return restored


def revive(stored: StoredMessage, unclean_below: int = 0) -> Message:
    """
    The live message for a stored one. A key under ``unclean_below`` was
    stored by a broker that crashed: nobody knows which of its deliveries
    had started (they are recorded lazily), so a message never marked
    delivered is said to be a possible redelivery; a message the scheduler
    held had not been delivered at all.
    """
    count = stored.delivery_count
    if stored.key < unclean_below and not count and not stored.owner.startswith(SCHEDULED_OWNER):
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
    return message
