"""
Paging: a queue keeps at most ``queue_memory_window`` persistent messages
waiting in memory; those behind stay only in the message store, as
:class:`~stomptw.store.StoredPage` runs (a count and a key range), and are
read back in key order, in the store's thread, when fewer than half the
window are left. A backlog is then bounded by disk, not by memory.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.python.failure import Failure

from stomptw.model import DEFAULT_PRIORITY, priority_of
from stomptw.store import StoredMessage, StoredPage

if TYPE_CHECKING:
    from stomptw.model import DestinationContext, Message

__all__ = ["QueuePaging"]

log = Logger()


class QueuePaging:
    """
    The paging part of :class:`~stomptw.destinations.Queue`: a base class,
    as :class:`~stomptw.destinations.QueueLimits` is, because its checks run
    for every message published and delivered.

    :ivar window: persistent messages kept waiting in memory before the rest
        page; 0 never pages (a store that is not on disk).
    :ivar tail: what waits behind ``pending`` once the queue pages, in
        order: runs of paged persistent messages, and the in-memory
        messages that arrived between them.
    :ivar paged: how many messages are in the store only.
    """

    name: str
    context: DestinationContext
    pending: deque[Message]
    count: int
    bytes: int
    expiring: int
    _prioritized: bool

    def _start_paging(self) -> None:
        """Called once by the queue's constructor."""
        self.window = self.context.config.queue_memory_window if self.context.store.durable else 0
        self.tail: deque[Message | StoredPage] = deque()
        self.paged = 0
        self._reading = False

    def restore_page(self, page: StoredPage) -> None:
        """Take back, at startup, messages the store kept beyond the window (read later)."""
        self.count += page.count
        self.bytes += page.size
        self.expiring += page.expiring
        self.paged += page.count
        self.tail.append(page)

    def waiting(self) -> int:
        """Messages waiting for a subscriber: in memory and paged."""
        return len(self.pending) + sum(
            item.count if isinstance(item, StoredPage) else 1 for item in self.tail
        )

    # -- paging ------------------------------------------------------------------------

    def _behind(self, message: Message) -> None:
        """
        The queue pages: ``message`` waits behind the paged ones. A persistent
        one is left to the store alone; another stays in memory, in its
        place. One of a higher priority than the default still goes ahead.
        """
        if self._prioritized and priority_of(message) > DEFAULT_PRIORITY:
            self._enqueue(message)
            return
        tail = self.tail
        if not message.key:
            tail.append(message)
            return
        page = tail[-1] if tail else None
        if not isinstance(page, StoredPage):
            page = StoredPage(self.name, message.key, message.key)
            tail.append(page)
        page.last_key = message.key
        page.count += 1
        page.size += message.size
        if message.expires:
            page.expiring += 1
        self.paged += 1

    def _read_ahead(self) -> None:
        """
        Under half the window in memory: move what waits behind into
        ``pending``, reading paged messages back from the store, in order.
        """
        low = max(self.window // 2, 1)
        tail = self.tail
        pending = self.pending
        while tail and len(pending) < low and not self._reading:
            head = tail[0]
            if not isinstance(head, StoredPage):
                pending.append(tail.popleft())
                continue
            self._reading = True
            limit = min(head.count, max(self.window - len(pending), 1))
            self.context.store.read(self.name, head.first_key, head.last_key, limit).addCallbacks(
                self._read_back, self._read_failed, callbackArgs=(head,), errbackArgs=(head,)
            )

    def _read_back(self, found: list[StoredMessage], page: StoredPage) -> None:
        self._reading = False
        if not self.tail or self.tail[0] is not page:
            return  # purged meanwhile
        pending = self.pending
        revive = self.context.revive
        size = expiring = 0
        for stored in found:
            message = revive(stored)
            size += message.size
            expiring += bool(message.expires)
            pending.append(message)
        page.count -= len(found)
        page.size -= size
        page.expiring -= expiring
        self.paged -= len(found)
        if found:
            page.first_key = found[-1].key + 1
        if page.count <= 0 or not found or page.first_key > page.last_key:
            self.tail.popleft()
            if page.count > 0:
                # The store lost them (never expected): forget them here too.
                log.error(
                    "{name}: {count} paged message(s) are missing from the message store",
                    name=self.name,
                    count=page.count,
                )
            # What the page still counts for: missing messages, or what the
            # estimates of dropped ones (drop-head) left over.
            self.count -= page.count
            self.bytes -= page.size
            self.expiring -= page.expiring
            self.paged -= page.count
            self._check_room()
        self._dispatch()

    def _drop_paged(self) -> None:
        """drop-head with nothing in memory: drop the oldest message waiting behind."""
        head = self.tail[0]
        if not isinstance(head, StoredPage):
            self._release(self.tail.popleft())
            return
        # Its size is not known without reading it: count the page's mean,
        # and settle the difference when the page is used up.
        size = head.size // head.count
        self.context.store.remove_oldest(self.name, head.first_key, head.last_key, 1)
        head.count -= 1
        head.size -= size
        self.count -= 1
        self.bytes -= size
        self.paged -= 1
        if head.expiring > head.count:
            head.expiring -= 1
            self.expiring -= 1
        if not head.count:
            self.tail.popleft()
            self.bytes -= head.size
            self.expiring -= head.expiring

    def _read_failed(self, failure: Failure, page: StoredPage) -> None:
        self._reading = False
        log.error(
            "{name}: cannot read paged messages back from the message store: {why}; "
            "trying again in a second",
            name=self.name,
            why=failure.getErrorMessage(),
        )
        clock = self.context.clock
        if clock is not None and not self.context.stopping:
            clock.callLater(1.0, self._dispatch)
