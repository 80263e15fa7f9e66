"""
Whether a session reads from its client: the holds that stop it.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Any

from stomptw.interfaces import IStompTransport

__all__ = ["InputGate"]


#: No destination holds the client back (shared by every idle session).
_NONE: frozenset[Any] = frozenset()


class InputGate:
    """
    Reading from one client stops while something holds it, and starts
    again once nothing does:

    - a destination the client publishes to is full (or, for a topic, a
      subscriber is at its backlog limit) and has blocked it;
    - the client does not read what the broker writes: RECEIPTs and other
      replies written while the transport is over its high-water mark pass
      ``output_limit`` bytes.

    :param transport: asked to pause and resume reading.
    :param resumed: called on a later turn once reading resumes, to handle
        the frames already read (never from inside the destination that let
        the client go).
    :param output_limit: unsent reply bytes that stop reading.
    """

    # One per session: slots instead of a dictionary each.
    __slots__ = (
        "_output_full",
        "_resumed",
        "_transport",
        "_unsent",
        "blockers",
        "open",
        "output_limit",
        "paused",
    )

    def __init__(
        self, transport: IStompTransport, resumed: Callable[[], None], output_limit: int
    ) -> None:
        self._transport = transport
        self._resumed = resumed
        self.output_limit = output_limit
        #: The destinations holding the client back (a set of its own once
        #: one does: most sessions are never held).
        self.blockers: Set[Any] = _NONE
        #: True while reading is paused.
        self.paused = False
        #: False once the session is closing: nothing changes any more.
        self.open = True
        self._unsent = 0
        self._output_full = False

    def block(self, queue: Any) -> bool:
        """``queue`` holds the client back; True if nothing did before."""
        first = not self.blockers
        if first:
            self.blockers = {queue}
        else:
            self.blockers.add(queue)
        self._update()
        return first

    def unblock(self, queue: Any) -> None:
        """``queue`` lets the client go."""
        blockers = self.blockers
        if queue in blockers:
            blockers.discard(queue)
            if not blockers:
                self.blockers = _NONE
        self._update()

    def unsent(self, size: int) -> None:
        """``size`` bytes were written while the transport is over its high-water mark."""
        self._unsent += size
        if self._unsent > self.output_limit and not self._output_full:
            self._output_full = True
            self._update()

    def drained(self) -> None:
        """The transport's output drained below its high-water mark."""
        self._unsent = 0
        if self._output_full:
            self._output_full = False
            self._update()

    def release(self) -> Set[Any]:
        """
        The session ends: forget every hold; return the destinations that
        held the client.
        """
        self.open = False
        blockers, self.blockers = self.blockers, _NONE
        return blockers

    def reopen(self) -> None:
        """The session is closing: read (and discard) again if paused."""
        if self.paused:
            self.paused = False
            self._transport.resume_reading()

    def _update(self) -> None:
        hold = bool(self.blockers) or self._output_full
        if hold == self.paused or not self.open:
            return
        self.paused = hold
        if hold:
            self._transport.pause_reading()
            return
        self._transport.resume_reading()
        self._transport.call_soon(self._resumed)
