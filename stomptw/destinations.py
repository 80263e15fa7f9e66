"""
Queues: each message to one subscriber, with limits, redelivery and paging
(:mod:`stomptw.paging`). Topics are in :mod:`stomptw.topics`, streams in
:mod:`stomptw.streams`.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from stomptw.interfaces import IDestination
from stomptw.model import DestinationContext, DestinationFull
from stomptw.paging import QueuePaging
from stomptw.queuedispatch import QueueDispatch
from stomptw.store import StoredMessage, StoredPage

if TYPE_CHECKING:
    from stomptw.interfaces import IMessageConsumer
    from stomptw.model import Message, Subscription

__all__ = ["DestinationContext", "DestinationFull", "Queue", "QueueLimits"]

log = Logger()

#: A blocked producer is let go when its queue (or every subscriber backlog
#: of its topic) is back under this share of its limits, so that it does not
#: flap at the edge.
RESUME_BELOW = 0.9


class QueueLimits:
    """
    What a queue holds against its limits (``max_queue_length`` and
    ``max_queue_bytes``, pending and unacknowledged messages together), and
    the producers blocked until it has room again (under
    :data:`RESUME_BELOW` of the limits, so that they do not flap at the
    edge). A base class of :class:`Queue`: its methods run for every message,
    so they are the queue's own methods, not a separate object's.

    :ivar count: messages held.
    :ivar bytes: what they count for (:attr:`~stomptw.model.Message.size`).
    :ivar expiring: how many held messages have an expiry time.
    :ivar blocked: producers blocked until the queue has room.
    """

    def __init__(self, name: str, context: DestinationContext) -> None:
        self.name = name
        self.context = context
        self.count = 0
        self.bytes = 0
        self.expiring = 0
        self.blocked: set[IMessageConsumer] = set()

    def _at(self, share: float = 1.0) -> bool:
        """Whether the queue holds ``share`` of its count or byte limit, or more."""
        config = self.context.config
        return bool(
            (config.max_queue_length and self.count >= config.max_queue_length * share)
            or (config.max_queue_bytes and self.bytes >= config.max_queue_bytes * share)
        )

    def is_full(self) -> bool:
        """Whether the queue is at its message count or byte limit."""
        # _at(1.0), written out: a SEND asks twice.
        config = self.context.config
        return bool(
            (config.max_queue_length and self.count >= config.max_queue_length)
            or (config.max_queue_bytes and self.bytes >= config.max_queue_bytes)
        )

    def _has_room(self) -> bool:
        return not self._at(RESUME_BELOW)

    def _hold(self, message: Message) -> None:
        self.count += 1
        self.bytes += message.size
        if message.expires:
            self.expiring += 1

    def _forget(self, message: Message) -> None:
        """``message`` no longer counts against the queue's limits."""
        self.count -= 1
        self.bytes -= message.size
        if message.expires:
            self.expiring -= 1

    def _release(self, message: Message) -> None:
        """``message`` leaves the queue for good."""
        self._forget(message)
        if message.key:
            self.context.store.remove(message.key)
            message.key = 0

    def _check_room(self) -> None:
        if self.blocked and self._has_room():
            blocked, self.blocked = self.blocked, set()
            for producer in blocked:
                producer.unblock(self)

    def check_room(self, count: int = 0, size: int = 0) -> None:
        """
        Raise :class:`DestinationFull` if this queue refuses messages now
        or, given ``count``, if ``count`` more messages of ``size`` bytes in
        all would take it over its limits (a transaction's).
        """
        if self.overflow != "reject":
            return
        held, held_bytes = self._held()
        config = self.context.config
        if count:
            full = (config.max_queue_length and held + count > config.max_queue_length) or (
                config.max_queue_bytes and held_bytes + size > config.max_queue_bytes
            )
        else:
            full = self.is_full()
        if full:
            self.context.stats["rejected"] += 1
            raise DestinationFull(self.name, self._limit_reached(held, held_bytes, count, size))

    #: Where the counts of :meth:`_held` come from, for the ERROR's words.
    _scope = ""

    def _held(self) -> tuple[int, int]:
        """The messages and bytes counted against the limits."""
        return self.count, self.bytes

    def _limit_reached(self, held: int, held_bytes: int, count: int = 0, size: int = 0) -> str:
        config = self.context.config
        more = f" and {count} more" if count else ""
        if config.max_queue_length and held + count > config.max_queue_length - (not count):
            return f"{held} messages{self._scope}{more}, the limit is {config.max_queue_length}"
        more = f" and {size} more" if count else ""
        return f"{held_bytes} bytes held{self._scope}{more}, the limit is {config.max_queue_bytes}"


@implementer(IDestination)
class Queue(QueueLimits, QueuePaging, QueueDispatch):
    """
    A point-to-point destination.

    Each message goes to exactly one subscriber, chosen round robin among
    those ready to take one (a subscription is not ready while its
    connection's output is over the high-water mark, or while
    ``prefetch-count`` messages are unacknowledged). Messages that arrive
    while nobody can take them wait in the queue, in order.

    Messages returned unacknowledged (the subscriber unsubscribed, went away,
    or NACKed them) go back to the head of the queue and are delivered
    again, marked redelivered, to another subscriber when one is ready;
    after ``max_redeliveries`` returns they go to the dead-letter queue.
    Persistent messages stay in the broker's store until acknowledged.

    The queue holds at most ``max_queue_length`` messages and
    ``max_queue_bytes`` bytes (pending and unacknowledged together). At the
    limit its ``overflow`` policy applies: ``block`` stops reading from the
    producers that send to it until there is room, ``reject`` refuses the
    message (:class:`DestinationFull`), ``drop-head`` drops the oldest
    pending messages (used for durable subscriptions).
    """

    kind = "queue"
    #: Traffic through the queue (for the operator's console): messages and
    #: body bytes published to it and delivered from it.
    messages_in = bytes_in = messages_out = bytes_out = 0
    #: A queue message is delivered once as a rule: an encoded copy kept for
    #: later deliveries would double the memory its body holds.
    shares_encodings = False

    def __init__(
        self,
        name: str,
        context: DestinationContext,
        overflow: str | None = None,
        dead_letter: bool = False,
        priorities: bool = True,
    ) -> None:
        super().__init__(name, context)
        #: Whether waiting messages are ordered by priority (not for a
        #: durable subscription's queue: topics ignore priority).
        self.priorities = priorities
        self.overflow = overflow or context.config.overflow
        #: A dead-letter queue: its messages never die again.
        self.dead_letter = dead_letter
        self.pending: deque[Message] = deque()
        self.subscriptions: list[Subscription] = []
        self._next = 0
        self._dispatching = False
        #: Whether a message with a priority other than the default was held:
        #: until then ``pending`` is plain FIFO, appended to in O(1).
        self._prioritized = False
        self._start_paging()

    # -- IDestination ------------------------------------------------------------------

    def publish(
        self, message: Message, producer: IMessageConsumer | None = None, reject: bool = True
    ) -> None:
        if self.is_full():
            if reject:
                self.check_room()
            if self.overflow == "drop-head":
                while (self.pending or self.tail) and self.is_full():
                    if self.pending:
                        self._release(self.pending.popleft())
                    else:
                        self._drop_paged()
                    self.context.stats["dropped"] += 1
        self._hold(message)
        self.messages_in += 1
        self.bytes_in += len(message.body)
        if message.persistent:
            key = message.key = self.context.new_key()
            self.context.store.put(
                StoredMessage(
                    key,
                    self.name,
                    message.message_id,
                    message.destination,
                    message.headers,
                    message.body,
                    message.delivery_count,
                    message.expires,
                )
            )
        if self.window and (self.tail or (message.key and len(self.pending) >= self.window)):
            self._behind(message)
        else:
            self._enqueue(message)
        self._dispatch()
        if producer is not None and self.overflow == "block" and self.is_full():
            if self._consumes(producer) and not self._at(2):
                # Blocking it would also stop the ACKs that make room.
                return
            if producer not in self.blocked:
                self.blocked.add(producer)
                self.context.stats["producers_blocked"] += 1
                producer.block(self)

    def _consumes(self, session: IMessageConsumer) -> bool:
        """Whether ``session`` holds unacknowledged messages of this queue."""
        return any(sub.consumer is session and sub.unacked for sub in self.subscriptions)

    def restore(self, message: Message) -> None:
        """Take back a message loaded from the store (at startup)."""
        self._hold(message)
        self._enqueue(message)

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
        self._return(returned)

    def acked(self, subscription: Subscription, messages: list[Message]) -> None:
        for message in messages:
            self._release(message)
        self._dispatch()
        self._check_room()

    def nacked(self, subscription: Subscription, messages: list[Message]) -> None:
        self._return(messages)

    def ready(self, subscription: Subscription) -> None:
        self._dispatch()

    def is_idle(self) -> bool:
        # Mid-dispatch a message may be out of ``pending`` for a moment.
        return (
            not self.pending
            and not self.subscriptions
            and not self._dispatching
            and not self.count
            and not self.blocked
            and not self.tail
            and not self._reading
        )

    # -- housekeeping ------------------------------------------------------------------

    def expire(self, now_ms: int) -> None:
        """Take out every pending message whose time is up."""
        keep: deque[Message] = deque()
        expired = []
        for message in self.pending:
            if message.expires and message.expires <= now_ms and not self.dead_letter:
                expired.append(message)
            else:
                keep.append(message)
        if expired:
            self.pending = keep
            for message in expired:
                self._release(message)
                self.context.expire(self, message)
            self._check_room()

    def purge_all(self) -> Any:
        """
        Drop every waiting message wherever it waits: here, on a single
        node; a queue that spans a cluster answers with a Deferred.
        """
        return self.purge()

    def purge(self) -> int:
        """Drop every pending message; return how many."""
        dropped = list(self.pending)
        self.pending.clear()
        for message in dropped:
            self._release(message)
        purged = len(dropped)
        while self.tail:
            item = self.tail.popleft()
            if isinstance(item, StoredPage):
                self.context.store.remove_range(self.name, item.first_key, item.last_key)
                self.count -= item.count
                self.bytes -= item.size
                self.expiring -= item.expiring
                self.paged -= item.count
                purged += item.count
            else:
                self._release(item)
                purged += 1
        self._check_room()
        return purged
