"""
Frames written while one reactor callback runs, coalesced per connection.

A read from one client can make the broker write to many connections: a
topic message to each of its subscribers, a queue's messages to their
consumers, a RECEIPT. Handed to Twisted one by one, each write costs a call
chain, registers the socket for writing, and waits for the reactor's next
turn to be sent, where each connection's send is one more event to dispatch.

Instead, while a callback that handles input runs (:func:`coalescing`), a
connection keeps what is written to it (:class:`CoalescingOutput`). When
the outermost such callback returns, every connection written to sends its
frames as one block, straight to the socket when Twisted holds nothing
for it (:func:`write_now`). What the socket does not take goes to Twisted's
buffer, whose high-water mark pauses the session as before. A connection
holding :data:`FLUSH_AT` bytes (or its ``--write-high-water``, if lower)
sends them at once, so a fan-out never holds more than that per
connection before flow control sees it.

Writes outside such a callback (heart-beats and other timers, store and
cluster callbacks) go to Twisted's buffer directly, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import tcp
from twisted.logger import Logger

__all__ = [
    "BATCH",
    "FLUSH_AT",
    "TWISTED_INTERNALS",
    "CoalescingOutput",
    "coalescing",
    "write_now",
]

#: A connection holding this many bytes sends them without waiting for the
#: callback to end.
FLUSH_AT = 64 * 1024

#: What :func:`write_now` reads of a Twisted TCP connection beyond its
#: documented API; tests/test_coalesce.py checks that a connection has every
#: one, and setup.cfg bounds twisted to the versions tested.
TWISTED_INTERNALS = (
    "TLS",
    "connected",
    "disconnecting",
    "dataBuffer",
    "_tempDataBuffer",
    "_writeDisconnecting",
    "_aborting",
    "writeSomeData",
)

_T = TypeVar("_T")

log = Logger()


class OutputBatch:
    """
    The callbacks running now that coalesce output (``depth``), and the
    connections holding output for the end of the outermost one
    (``waiting``).
    """

    __slots__ = ("depth", "waiting")

    def __init__(self) -> None:
        self.depth = 0
        self.waiting: list[CoalescingOutput] = []

    def flush(self) -> None:
        """Send what every waiting connection holds."""
        while self.waiting:
            waiting, self.waiting = self.waiting, []
            for connection in waiting:
                try:
                    connection.flush_output()
                except Exception:
                    # One connection's failure must not strand the others'
                    # output, nor end the connection whose read is handled.
                    log.failure("could not send a connection's output")


#: The reactor thread's batch: the broker and its connections run there.
BATCH = OutputBatch()


def coalescing(f: Callable[..., _T], *args: Any) -> _T:
    """
    Call ``f(*args)`` with output coalesced: what it writes to any
    :class:`CoalescingOutput` connection is sent when the outermost such
    call returns (or raises).
    """
    batch = BATCH
    batch.depth += 1
    try:
        return f(*args)
    finally:
        batch.depth -= 1
        if not batch.depth and batch.waiting:
            batch.flush()


def write_now(transport: Any, data: bytes) -> None:
    """
    Write ``data`` to a Twisted ``transport``: straight to the socket when
    it is a plain TCP connection with nothing already waiting in Twisted's
    buffer (so the order of bytes is kept), the rest, or everything on any
    other transport (TLS, a wrapper), through ``transport.write``.
    """
    if (
        isinstance(transport, tcp.Connection)
        and not transport.TLS
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._aborting
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        sent = transport.writeSomeData(data)
        if type(sent) is int:
            if sent >= len(data):
                return
            data = data[sent:]
        # A lost connection: Twisted's write path finds it and closes.
    transport.write(data)


class CoalescingOutput:
    """
    A connection whose writes are held while a :func:`coalescing` callback
    runs (see the module docstring). The class using it starts ``_out`` at
    None and ``_out_bytes`` at 0 (as class defaults or in ``__init__``), and
    has a Twisted ``transport``.
    """

    __slots__ = ()

    #: Bytes held that make the connection send at once: :data:`FLUSH_AT`,
    #: or a lower ``--write-high-water`` (see :meth:`hold_at_most`).
    flush_at = FLUSH_AT

    _out: list[bytes] | None
    _out_bytes: int
    transport: Any

    def hold_at_most(self, write_high_water: int) -> None:
        """Hold at most ``write_high_water`` bytes in a batch (when under FLUSH_AT)."""
        held = min(FLUSH_AT, max(write_high_water, 1))
        if held != self.flush_at:
            self.flush_at = held

    def write_out(self, data: bytes) -> None:
        """Write ``data`` (bytes for the socket): held in a batch, otherwise to Twisted."""
        if BATCH.depth:
            out = self._out
            if out is None:
                self._out = [data]
                self._out_bytes = len(data)
                BATCH.waiting.append(self)
                return
            out.append(data)
            self._out_bytes += len(data)
            if self._out_bytes >= self.flush_at:
                self.flush_output()
            return
        transport = self.transport
        if transport is not None:
            transport.write(data)

    def flush_output(self) -> None:
        """Send what this connection holds, if anything (before a close, and at a batch's end)."""
        out = self._out
        if out is None:
            return
        self._out = None
        self._out_bytes = 0
        transport = self.transport
        if transport is not None:
            # One bytes item is joined without a copy.
            write_now(transport, b"".join(out))

    def drop_output(self) -> None:
        """The connection is gone: forget what it holds."""
        self._out = None
        self._out_bytes = 0
