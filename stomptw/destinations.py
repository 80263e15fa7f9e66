"""
Destinations: queues (each message to one subscriber) and topics (each
message to every subscriber).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from zope.interface import implementer

from stomptw.interfaces import IDestination

if TYPE_CHECKING:
    from stomptw.broker import Message, Subscription


@implementer(IDestination)
class Queue:
    """
    A point-to-point destination.

    Each message goes to exactly one subscriber, chosen round robin among
    those ready to take one (a subscription with a ``prefetch-count`` is not
    ready while that many of its messages are unacknowledged). Messages that
    arrive while nobody can take them wait in the queue, in order.

    Messages returned unacknowledged (the subscriber unsubscribed, went away,
    or NACKed them) go back to the head of the queue, marked redelivered, and
    are delivered again, to another subscriber when one is ready.
    """

    kind = "queue"

    def __init__(self, name: str) -> None:
        self.name = name
        self.pending: deque[Message] = deque()
        self.subscriptions: list[Subscription] = []
        self._next = 0
        self._dispatching = False

    def publish(self, message: Message) -> None:
        self.pending.append(message)
        self._dispatch()

    def subscribe(self, subscription: Subscription) -> None:
        self.subscriptions.append(subscription)
        self._dispatch()

    def unsubscribe(self, subscription: Subscription) -> None:
        try:
            index = self.subscriptions.index(subscription)
        except ValueError:
            return
        del self.subscriptions[index]
        if index < self._next:
            self._next -= 1
        returned = list(subscription.unacked.values())
        subscription.unacked.clear()
        self._requeue(returned)

    def acked(self, subscription: Subscription, messages: list[Message]) -> None:
        self._dispatch()

    def nacked(self, subscription: Subscription, messages: list[Message]) -> None:
        self._requeue(messages)

    def ready(self, subscription: Subscription) -> None:
        self._dispatch()

    def is_idle(self) -> bool:
        # Mid-dispatch a message may be out of ``pending`` for a moment.
        return not self.pending and not self.subscriptions and not self._dispatching

    def _requeue(self, messages: list[Message]) -> None:
        for message in reversed(messages):
            message.redelivered = True
            self.pending.appendleft(message)
        self._dispatch()

    def _dispatch(self) -> None:
        # A delivery may re-enter (a consumer acking synchronously); the
        # outer loop picks up whatever changed.
        if self._dispatching:
            return
        self._dispatching = True
        # Subscriptions that declined a message sit out the rest of this pass.
        declined: set[int] = set()
        try:
            pending = self.pending
            while pending and self.subscriptions:
                sub = self._pick(declined)
                if sub is None:
                    break
                message = pending.popleft()
                if not sub.deliver(message):
                    # The consumer could not take it: the message keeps its
                    # place for the others.
                    pending.appendleft(message)
                    declined.add(id(sub))
        finally:
            self._dispatching = False

    def _pick(self, declined: set[int]) -> Subscription | None:
        subs = self.subscriptions
        count = len(subs)
        start = self._next % count
        for offset in range(count):
            i = (start + offset) % count
            sub = subs[i]
            if sub.is_ready() and id(sub) not in declined:
                self._next = i + 1
                return sub
        return None


@implementer(IDestination)
class Topic:
    """
    A publish-subscribe destination.

    Each message goes to every current subscriber; a topic keeps nothing for
    subscribers that are not there. A topic message that a subscriber NACKs,
    or leaves unacknowledged when it goes away, is dropped: nobody else was
    meant to receive that copy.
    """

    kind = "topic"

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscriptions: list[Subscription] = []

    def publish(self, message: Message) -> None:
        for sub in tuple(self.subscriptions):
            if sub.active:
                sub.deliver(message)

    def subscribe(self, subscription: Subscription) -> None:
        self.subscriptions.append(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        try:
            self.subscriptions.remove(subscription)
        except ValueError:
            pass
        subscription.unacked.clear()

    def acked(self, subscription: Subscription, messages: list[Message]) -> None:
        pass

    def nacked(self, subscription: Subscription, messages: list[Message]) -> None:
        pass

    def ready(self, subscription: Subscription) -> None:
        pass

    def is_idle(self) -> bool:
        return not self.subscriptions
