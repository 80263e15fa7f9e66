"""
A session's open transactions: what each will do on COMMIT, and the room
it will need.
"""

from __future__ import annotations

from collections.abc import Callable

from stomptw.errors import ProtocolError, require

__all__ = ["Transactions"]

#: One deferred action of a transaction: a callable and its arguments.
Action = tuple[Callable[..., None], tuple]


class Transactions:
    """
    The open transactions of one session.

    Each holds the actions (publishes, acks, nacks) it will take on COMMIT,
    in frame order. SENDs are tallied as they arrive, per destination, so
    that COMMIT can check every destination's room at once (all or
    nothing) without sizing every message again; the bytes held in all
    open transactions are bounded by ``max_bytes``.

    :param max_bytes: the most bytes of messages all open transactions may
        hold (``--max-transaction-bytes``); 0 means no limit.
    """

    # One per session: slots instead of a dictionary each.
    __slots__ = ("_actions", "_room", "bytes", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._actions: dict[str, list[Action]] = {}
        # Per transaction: destination -> [messages, bytes] it will send.
        self._room: dict[str, dict[str, list[int]]] = {}
        #: Bytes of messages held in all open transactions.
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._actions)

    def begin(self, headers: dict[str, str]) -> None:
        """BEGIN: open the transaction the frame names."""
        name = require(headers, "BEGIN", "transaction")
        if name in self._actions:
            raise ProtocolError(
                f"transaction {name!r} is already open",
                "BEGIN must name a transaction that is not already in progress on this connection.",
            )
        self._actions[name] = []

    def named(self, headers: dict[str, str]) -> list[Action] | None:
        """
        The actions of the transaction a frame's ``transaction`` header
        names; None when it names none. Raises :class:`ProtocolError` for a
        transaction that is not open.
        """
        name = headers.get("transaction")
        if name is None:
            return None
        actions = self._actions.get(name)
        if actions is None:
            raise ProtocolError(
                f"unknown transaction {name!r}",
                "The frame names a transaction that was not started with BEGIN on this "
                "connection, or that has already been committed or aborted.",
            )
        return actions

    def hold(self, name: str, destination: str, size: int) -> None:
        """Tally a SEND of ``size`` bytes to ``destination`` in transaction ``name``."""
        limit = self.max_bytes
        if limit and self.bytes + size > limit:
            raise ProtocolError(
                "transaction too large",
                f"The open transactions of this connection would hold more than {limit} "
                "bytes of messages; COMMIT smaller transactions, or ask the operator to "
                "raise --max-transaction-bytes.",
            )
        self.bytes += size
        room = self._room.setdefault(name, {}).setdefault(destination, [0, 0])
        room[0] += 1
        room[1] += size

    def end(self, command: str, headers: dict[str, str]) -> tuple[list[Action], dict]:
        """
        COMMIT or ABORT: close the transaction the frame names; return its
        actions and, per destination, ``[messages, bytes]`` it was to send.
        """
        name = require(headers, command, "transaction")
        actions = self.named(headers)
        del self._actions[name]
        room = self._room.pop(name, {})
        self.bytes -= sum(size for _, size in room.values())
        return actions, room

    def clear(self) -> None:
        """Abort every open transaction (the session ends)."""
        self._actions.clear()
        self._room.clear()
        self.bytes = 0
