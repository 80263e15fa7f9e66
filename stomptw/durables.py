"""
Durable topic subscriptions: a queue per subscription, fed by its topic,
that keeps what is published while the subscriber is away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stomptw.destinations import DestinationContext, Queue
from stomptw.interfaces import IDestination, IMessageStore
from stomptw.model import DestinationError, DurableSubscription, Subscription, durable_owner
from stomptw.topics import Topic

__all__ = ["Durables"]


class Durables:
    """
    The broker's durable subscriptions, by their store name (``owner``).

    Each belongs to a ``client-id`` and has a name; it takes one subscriber
    at a time. Subscribing under the same name to another topic replaces
    it; UNSUBSCRIBE with the durable name (or the admin API) deletes it and
    its messages.

    :param context: what the subscriptions' queues see of the broker.
    :param store: where the subscriptions are kept across restarts.
    :param destination: ``name -> destination``, creating it if needed.
    :param unsubscribe: ends a subscription (its unacknowledged messages
        go back to the queue).
    :param forget_if_idle: lets the broker forget a destination left idle.

    :ivar by_owner: owner -> :class:`~stomptw.model.DurableSubscription`.
    """

    def __init__(
        self,
        context: DestinationContext,
        store: IMessageStore,
        destination: Callable[[str], IDestination],
        unsubscribe: Callable[[Subscription], None],
        forget_if_idle: Callable[[IDestination], None],
    ) -> None:
        self.by_owner: dict[str, DurableSubscription] = {}
        self._context = context
        self._store = store
        self._destination = destination
        self._unsubscribe = unsubscribe
        self._forget_if_idle = forget_if_idle
        #: In a cluster, what keeps the subscriptions across the nodes
        #: (:class:`stomptw.cluster.node.ClusterDurables`): it makes their
        #: queues, and hears of each attach and removal. None on a single node.
        self.cluster: Any = None

    def attach(self, subscription: Subscription) -> Queue:
        """
        The queue of the durable subscription ``subscription`` names,
        created on first use; raises :class:`DestinationError` if another
        session is attached to it already.
        """
        client_id, name = subscription.durable
        owner = durable_owner(client_id, name)
        durable = self.by_owner.get(owner)
        if durable is not None and durable.topic != subscription.destination:
            # Subscribing under the same name to another topic replaces it.
            self.remove(client_id, name)
            durable = None
        if durable is None:
            durable = self.make(owner, client_id, name, subscription.destination)
        elif durable.queue.subscriptions:
            raise DestinationError(
                f"durable subscription {name!r} of client-id {client_id!r} is in use "
                "by another connection"
            )
        if self.cluster is not None:
            self.cluster.attached(durable)
        return durable.queue

    def remove(self, client_id: str, name: str) -> bool:
        """
        Delete the durable subscription ``name`` of ``client_id`` and the
        messages it holds; False if there is none.
        """
        owner = durable_owner(client_id, name)
        durable = self.by_owner.pop(owner, None)
        if durable is None:
            return False
        for sub in list(durable.queue.subscriptions):
            self._unsubscribe(sub)
        durable.queue.purge()
        if self.cluster is not None:
            self.cluster.removed(durable)
            return True
        topic = self._destination(durable.topic)
        if isinstance(topic, Topic):
            topic.durables.pop(owner, None)
            self._forget_if_idle(topic)
        self._store.remove_subscription(owner)
        return True

    def make(
        self, owner: str, client_id: str, name: str, topic_name: str, persist: bool = True
    ) -> DurableSubscription:
        """A new durable subscription to ``topic_name`` (stored unless restoring)."""
        if self.cluster is not None:
            # The cluster's: fed by its topic's log in the cluster, not here.
            queue = self.cluster.make_queue(owner, topic_name)
            durable = DurableSubscription(owner, client_id, name, topic_name, queue)
            self.by_owner[owner] = durable
            return durable
        queue = Queue(owner, self._context, overflow="drop-head", priorities=False)
        durable = DurableSubscription(owner, client_id, name, topic_name, queue)
        self.by_owner[owner] = durable
        topic = self._destination(topic_name)
        topic.durables[owner] = durable
        if persist:
            self._store.put_subscription(owner, client_id, name, topic_name)
        return durable
