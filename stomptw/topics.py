"""
Topics: each message to every subscriber, with a bounded backlog per
subscriber that cannot keep up and a policy for when it is full.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.logger import Logger
from zope.interface import implementer

from stomptw.destinations import RESUME_BELOW
from stomptw.interfaces import IDestination
from stomptw.model import NO_BACKLOG

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from stomptw.interfaces import IMessageConsumer
    from stomptw.model import DestinationContext, DurableSubscription, Message, Subscription

__all__ = ["Topic"]

log = Logger()


@implementer(IDestination)
class Topic:
    """
    A publish-subscribe destination.

    Each message goes to every current subscriber, and a copy to each of the
    topic's durable subscriptions (which keep it while their subscriber is
    away). A topic message that a subscriber NACKs, or leaves
    unacknowledged when it goes away, is dropped: nobody else was meant to
    receive that copy.

    A subscriber that cannot take a message now (its connection is over the
    output high-water mark, or its ``prefetch-count`` is used up) gets it
    later from its backlog, which holds up to ``slow_topic_limit``
    messages. There ``slow_topic_policy`` applies:

    - ``block``: a producer whose message takes a backlog to the limit is
      blocked (the broker stops reading from its connection) until every
      backlog of the topic is back under :data:`RESUME_BELOW` of the limit.
      Backlogs of the producer's own subscriptions never block it (it would
      wait for itself). A subscription that stays that far behind for
      ``slow_topic_timeout`` seconds is disconnected as with ``disconnect``;
      one whose backlog reaches twice the limit anyway (from producers that
      were not blocked) loses its oldest messages as with ``drop-oldest``.
    - ``drop-oldest`` drops the oldest waiting message (and counts it).
    - ``disconnect`` ends the subscriber's session with an ERROR.
    """

    kind = "topic"
    #: Traffic through the topic (for the operator's console): messages and
    #: body bytes published to it and delivered from it (each copy).
    messages_in = bytes_in = messages_out = bytes_out = 0
    #: Every subscriber gets the same MESSAGE but for its subscription and
    #: ack headers: the shared parts are encoded once for all of them.
    shares_encodings = True

    def __init__(self, name: str, context: DestinationContext) -> None:
        self.name = name
        self.context = context
        self.subscriptions: list[Subscription] = []
        self.durables: dict[str, DurableSubscription] = {}
        #: Producers blocked (policy ``block``) until every backlog but their
        #: own is back under :data:`RESUME_BELOW` of the limit.
        self.blocked: set[IMessageConsumer] = set()
        #: Subscriptions whose backlog is at :data:`RESUME_BELOW` of the
        #: limit or more (policy ``block``).
        self._heavy: set[Subscription] = set()
        #: Subscriptions of ``_heavy`` that reached the limit, and the timer
        #: that disconnects them unless they catch up in time.
        self._stuck: dict[Subscription, IDelayedCall | None] = {}

    def publish(
        self, message: Message, producer: IMessageConsumer | None = None, reject: bool = True
    ) -> None:
        self.messages_in += 1
        self.bytes_in += len(message.body)
        delivered = 0
        for sub in tuple(self.subscriptions):
            if not sub.active:
                continue
            if sub.backlog or not sub.is_ready():
                self._hold_back(sub, message)
                if sub.backlog and sub.is_ready():
                    self.ready(sub)
            elif sub.consumer.deliver(sub, message):
                delivered += 1
        if delivered:
            self.context.stats["delivered"] += delivered
            self.messages_out += delivered
            self.bytes_out += delivered * len(message.body)
        for durable in tuple(self.durables.values()):
            durable.queue.publish(message.copy())
        if self._stuck and producer is not None and producer not in self.blocked:
            self._block(producer)

    def _hold_back(self, sub: Subscription, message: Message) -> None:
        backlog = sub.backlog
        if backlog is NO_BACKLOG:
            backlog = sub.backlog = deque()
        backlog.append(message)
        config = self.context.config
        limit = config.slow_topic_limit
        policy = config.slow_topic_policy
        if policy == "block":
            size = len(backlog)
            if size >= limit * RESUME_BELOW:
                self._heavy.add(sub)
                if size >= limit and sub not in self._stuck:
                    self._stick(sub)
            if size <= 2 * limit:
                return
            # Producers that could not be blocked took it this far: bound
            # the memory as drop-oldest does.
        elif len(backlog) <= limit:
            return
        stats = self.context.stats
        if policy == "disconnect":
            self._disconnect_slow(
                sub,
                f"subscription {sub.id!r} to {self.name} fell more than {limit} messages behind",
            )
            return
        backlog.popleft()
        stats["dropped"] += 1
        stats["slow_consumer_dropped"] += 1
        if not sub.dropped:
            self._log_slow(sub, "drop-oldest", "dropping its oldest messages")
        sub.dropped += 1

    def _disconnect_slow(self, sub: Subscription, reason: str, what: str = "") -> None:
        """End ``sub``'s session with an ERROR ``slow consumer`` saying ``reason``."""
        self.context.stats["slow_consumer_disconnected"] += 1
        self._log_slow(sub, "disconnect", what or "disconnecting it")
        if sub.backlog:  # NO_BACKLOG has nothing to clear
            sub.backlog.clear()
        if sub in self._heavy:
            self._lighten(sub)
        sub.consumer.slow_consumer(sub, reason)

    def _log_slow(self, sub: Subscription, action: str, what: str) -> None:
        log.warn(
            "slow consumer: subscription {sub} to {topic} (session {session}) is "
            "{behind} messages behind (limit {limit}); {what}",
            sub=sub.id,
            topic=self.name,
            session=getattr(sub.consumer, "session_id", "") or "-",
            behind=len(sub.backlog),
            limit=self.context.config.slow_topic_limit,
            action=action,
            what=what,
        )

    # -- policy "block" ----------------------------------------------------------------

    def _block(self, producer: IMessageConsumer) -> None:
        """Block ``producer`` unless only its own subscriptions are stuck."""
        if all(sub.consumer is producer for sub in self._stuck):
            # Only its own backlogs are full: blocked, it would wait for
            # itself. The 2x bound applies instead.
            return
        self.blocked.add(producer)
        self.context.stats["producers_blocked"] += 1
        producer.block(self)

    def _stick(self, sub: Subscription) -> None:
        """``sub``'s backlog reached the limit: start its timeout."""
        timeout = self.context.config.slow_topic_timeout
        clock = self.context.clock
        timer = None
        if timeout > 0 and clock is not None:
            timer = clock.callLater(timeout, self._timed_out, sub)
        self._stuck[sub] = timer

    def _lighten(self, sub: Subscription) -> None:
        """``sub``'s backlog is back under the resume mark (or gone)."""
        self._heavy.discard(sub)
        timer = self._stuck.pop(sub, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._check_room()

    def _check_room(self) -> None:
        """Let go of the producers that no other backlog holds any more."""
        if not self.blocked:
            return
        heavy = self._heavy
        for producer in list(self.blocked):
            if all(sub.consumer is producer for sub in heavy):
                self.blocked.discard(producer)
                producer.unblock(self)

    def _timed_out(self, sub: Subscription) -> None:
        """``sub`` stayed at the limit for ``slow_topic_timeout`` seconds."""
        self._stuck[sub] = None
        if sub not in self.subscriptions or not sub.active:
            self._lighten(sub)
            return
        timeout = self.context.config.slow_topic_timeout
        self._disconnect_slow(
            sub,
            f"subscription {sub.id!r} to {self.name} stayed "
            f"{self.context.config.slow_topic_limit} messages behind for {timeout:g} "
            "seconds, holding its publishers blocked",
            f"it held its publishers blocked for {timeout:g} seconds; disconnecting it",
        )

    def subscribe(self, subscription: Subscription) -> None:
        if subscription.ack_mode != "auto" and not subscription.prefetch:
            # Unacknowledged topic messages are bounded too: beyond this
            # many, the slow-subscriber backlog and its policy take over.
            subscription.prefetch = self.context.config.slow_topic_limit
        self.subscriptions.append(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        try:
            self.subscriptions.remove(subscription)
        except ValueError:
            pass
        subscription.unacked.clear()
        if subscription.backlog:  # NO_BACKLOG has nothing to clear
            subscription.backlog.clear()
        if subscription in self._heavy:
            self._lighten(subscription)

    def acked(self, subscription: Subscription, messages: list[Message]) -> None:
        self.ready(subscription)

    def nacked(self, subscription: Subscription, messages: list[Message]) -> None:
        self.ready(subscription)

    def ready(self, subscription: Subscription) -> None:
        backlog = subscription.backlog
        context = self.context
        stats = context.stats
        now_ms = 0
        consumer = subscription.consumer
        while backlog and subscription.is_ready() and not context.stopping:
            message = backlog.popleft()
            if message.expires:
                now_ms = now_ms or context.now_ms()
                if message.expires <= now_ms:
                    # Expired while it waited for this subscriber.
                    context.expire(None, message)
                    continue
            if consumer.deliver(subscription, message):
                stats["delivered"] += 1
                self.messages_out += 1
                self.bytes_out += len(message.body)
        if (
            subscription in self._heavy
            and len(backlog) < context.config.slow_topic_limit * RESUME_BELOW
        ):
            self._lighten(subscription)

    def is_idle(self) -> bool:
        return not self.subscriptions and not self.durables and not self.blocked
