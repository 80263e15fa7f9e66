"""
How a queue hands its messages out (:class:`QueueDispatch`): round robin
over the subscriptions ready to take one (``prefetch-count`` and the
connection's output decide, in :meth:`~stomptw.model.Subscription.is_ready`),
waiting messages in priority order, and returned ones back at the head or,
past ``--max-redeliveries``, to the dead-letter queue. A base class of
:class:`~stomptw.destinations.Queue`, as :class:`~stomptw.destinations.QueueLimits`
and :class:`~stomptw.paging.QueuePaging` are: it runs for every message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stomptw.model import DEFAULT_PRIORITY, priority_of

if TYPE_CHECKING:
    from stomptw.destinations import Queue
    from stomptw.model import Message, Subscription

__all__ = ["QueueDispatch"]

# No subscription has declined yet in this pass (a set is made for the first).
_NONE_DECLINED: frozenset[int] = frozenset()


class QueueDispatch:
    """A queue's delivery order and dispatch (see the module docstring)."""

    def _enqueue(self: Queue, message: Message) -> None:
        """Behind every waiting message of its priority or higher, ahead of lower ones."""
        pending = self.pending
        if not self.priorities:
            pending.append(message)
            return
        priority = priority_of(message)
        if not self._prioritized:
            if priority == DEFAULT_PRIORITY:
                pending.append(message)
                return
            self._prioritized = True
        index = len(pending)
        while index and priority_of(pending[index - 1]) < priority:
            index -= 1
        pending.insert(index, message)

    def _requeue(self: Queue, message: Message) -> None:
        """A returned message: ahead of every waiting message of its priority."""
        pending = self.pending
        if not self._prioritized:
            pending.appendleft(message)
            return
        priority = priority_of(message)
        index, end = 0, len(pending)
        while index < end and priority_of(pending[index]) > priority:
            index += 1
        pending.insert(index, message)

    def _return(self: Queue, messages: list[Message]) -> None:
        limit = self.context.config.max_redeliveries
        if self.context.stopping:
            # Returned because the broker stops: not the message's fault.
            limit = -1
        for message in reversed(messages):
            if limit >= 0 and message.delivery_count > limit and not self.dead_letter:
                self._release(message)
                self.context.dead_letter(self, message, "delivery_limit")
            else:
                self._requeue(message)
        self._dispatch()
        self._check_room()

    def _dispatch(self: Queue) -> None:
        # A delivery may re-enter (a consumer acking synchronously); the
        # outer loop picks up whatever changed.
        if self._dispatching or self.context.stopping:
            return
        self._dispatching = True
        # Subscriptions that declined a message sit out the rest of this pass.
        declined: frozenset[int] | set[int] = _NONE_DECLINED
        stats = self.context.stats
        store = self.context.store
        now_ms = 0
        released = False
        try:
            pending = self.pending
            while pending and self.subscriptions:
                sub = self._pick(declined)
                if sub is None:
                    break
                message = pending.popleft()
                if message.expires and not self.dead_letter:
                    now_ms = now_ms or self.context.now_ms()
                    if message.expires <= now_ms:
                        self._release(message)
                        self.context.expire(self, message)
                        released = True
                        continue
                message.delivery_count += 1
                if not sub.consumer.deliver(sub, message):
                    # The consumer could not take it: the message keeps its
                    # place for the others.
                    message.delivery_count -= 1
                    pending.appendleft(message)
                    if declined is _NONE_DECLINED:
                        declined = set()
                    declined.add(id(sub))
                    continue
                stats["delivered"] += 1
                self.messages_out += 1
                self.bytes_out += len(message.body)
                if message.delivery_count > 1:
                    stats["redelivered"] += 1
                if sub.ack_mode == "auto":
                    self._release(message)
                    released = True
                elif message.key:
                    store.set_delivery_count(message.key, message.delivery_count)
        finally:
            self._dispatching = False
        if released:
            self._check_room()
        if self.tail and len(self.pending) < self.window // 2 + 1:
            self._read_ahead()

    def _pick(self: Queue, declined: frozenset[int] | set[int]) -> Subscription | None:
        subs = self.subscriptions
        count = len(subs)
        if count == 1:
            sub = subs[0]
            if sub.is_ready() and id(sub) not in declined:
                self._next = 1
                return sub
            return None
        start = self._next % count
        for offset in range(count):
            i = (start + offset) % count
            sub = subs[i]
            if sub.is_ready() and id(sub) not in declined:
                self._next = i + 1
                return sub
        return None
