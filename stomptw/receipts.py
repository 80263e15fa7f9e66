"""
RECEIPTs in frame order, each sent once what its frame did is safe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["Receipts"]


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

    def __init__(
        self,
        send: Callable[[str], None],
        sync: Callable[[], Deferred],
        failed: Callable[[str, Failure], None],
    ) -> None:
        self._send = send
        self._sync = sync
        self._failed = failed
        # [receipt id, ready to send], oldest first.
        self._waiting: deque[list] = deque()
        #: False once the session is closing: nothing more is sent.
        self.open = True

    def __bool__(self) -> bool:
        """True while some RECEIPT waits for the store."""
        return bool(self._waiting)

    def add(self, receipt: str, needs_sync: bool) -> None:
        """Owe a RECEIPT for ``receipt``; after a store sync if ``needs_sync``."""
        if not needs_sync and not self._waiting:
            self._send(receipt)
            return
        entry = [receipt, not needs_sync]
        self._waiting.append(entry)
        if needs_sync:
            self._sync().addCallbacks(
                self._stored, self._store_failed, callbackArgs=(entry,), errbackArgs=(entry,)
            )

    def _stored(self, result: object, entry: list) -> None:
        entry[1] = True
        waiting = self._waiting
        while waiting and waiting[0][1]:
            receipt = waiting.popleft()[0]
            if self.open:
                self._send(receipt)

    def _store_failed(self, failure: Failure, entry: list) -> None:
        self._waiting.clear()
        if self.open:
            self._failed(entry[0], failure)
