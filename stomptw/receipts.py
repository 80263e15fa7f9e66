"""
RECEIPTs in frame order, each sent once what its frame did is safe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["Receipts"]


#: The RECEIPTs of a session that owes none (shared, never appended to).
_NOTHING_WAITING: Any = ()


class Receipts:
    """
    The RECEIPTs a session owes, in the order of the frames that asked.

    A frame that accepted persistent messages (or stored a durable
    subscription) is receipted only once the store has them, and every
    later RECEIPT waits behind it, so a client that sees a RECEIPT knows
    every earlier frame took effect too.

    :param send: sends one RECEIPT frame for a receipt id.
    :param sync: ``() -> Deferred`` that fires once everything accepted so
        far is stored.
    :param failed: called with the receipt id and the failure when the
        store could not write; the waiting RECEIPTs are then dropped.
    """

    # One per session: slots instead of a dictionary each.
    __slots__ = ("_drained", "_failed", "_send", "_sync", "_waiting", "open")

    def __init__(
        self,
        send: Callable[[str], None],
        sync: Callable[[], Deferred],
        failed: Callable[[str, Failure], None],
    ) -> None:
        self._send = send
        self._sync = sync
        self._failed = failed
        # [receipt id, ready to send], oldest first; an empty deque takes
        # about 600 bytes, so an idle session has none until it needs one.
        self._waiting: deque[list] = _NOTHING_WAITING
        self._drained: list[Deferred] = []
        #: False once the session is closing: nothing more is sent.
        self.open = True

    def __bool__(self) -> bool:
        """True while some RECEIPT waits for the store."""
        return bool(self._waiting)

    def add(self, receipt: str | None, needs_sync: bool, after: Deferred | None = None) -> None:
        """
        Owe a RECEIPT for ``receipt``; after a store sync if ``needs_sync``.

        ``after`` (an application handler's work) delays it further: it
        fires True to send the RECEIPT once due, or False to drop it because
        the frame failed after all (its ERROR carries the receipt id). It
        must not fail. A ``receipt`` of None sends nothing but holds back
        the RECEIPTs after it all the same.
        """
        if not needs_sync and after is None and not self._waiting:
            if receipt is not None:
                self._send(receipt)
            return
        # [receipt id or None, ready to send, waits for a handler]
        entry = [receipt, not needs_sync and after is None, after is not None]
        if self._waiting is _NOTHING_WAITING:
            self._waiting = deque()
        self._waiting.append(entry)
        if after is not None:
            if needs_sync:
                after.addCallback(lambda keep: self._sync().addCallback(lambda _: keep))
            after.addCallbacks(
                self._settled, self._store_failed, callbackArgs=(entry,), errbackArgs=(entry,)
            )
        elif needs_sync:
            self._sync().addCallbacks(
                self._stored, self._store_failed, callbackArgs=(entry,), errbackArgs=(entry,)
            )

    def drained(self) -> Deferred:
        """A Deferred that fires once no RECEIPT waits any more (now, if none does)."""
        d: Deferred = Deferred()
        if self._waiting:
            self._drained.append(d)
        else:
            d.callback(None)
        return d

    def _settled(self, keep: bool, entry: list) -> None:
        if keep:
            self._stored(None, entry)
            return
        # The frame failed: neither its RECEIPT nor any later one is owed
        # (the session ends with an ERROR, after the RECEIPTs before it).
        waiting = self._waiting
        if any(e is entry for e in waiting):
            while waiting.pop() is not entry:
                pass
        self._flush()

    def forget_handlers(self) -> None:
        """
        The session ends: RECEIPTs that wait for an application handler will
        never be sent; those that wait for the store still are.
        """
        for entry in self._waiting:
            if entry[2] and not entry[1]:
                entry[0] = None
                entry[1] = True
        self._flush()

    def _stored(self, result: object, entry: list) -> None:
        entry[1] = True
        self._flush()

    def _flush(self) -> None:
        """Send the RECEIPTs at the head that are due; tell who waits once none is left."""
        waiting = self._waiting
        while waiting and waiting[0][1]:
            receipt = waiting.popleft()[0]
            if self.open and receipt is not None:
                self._send(receipt)
        if not waiting:
            self._fire_drained()

    def _store_failed(self, failure: Failure, entry: list) -> None:
        self._waiting = _NOTHING_WAITING
        if self.open:
            self._failed(entry[0], failure)
        self._fire_drained()

    def _fire_drained(self) -> None:
        drained, self._drained = self._drained, []
        for d in drained:
            d.callback(None)
