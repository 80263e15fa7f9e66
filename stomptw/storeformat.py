"""
The message store's records and its SQLite file: what a stored message,
a page and a store's contents are, the schema, and the SQL that reads and
writes them. :mod:`stomptw.store` has the stores themselves; this is what
they and ``stomptw-store`` (:mod:`stomptw.storecli`) share.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.python.failure import Failure

from stomptw.model import message_size

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "SCHEMA",
    "SCHEMA_VERSION",
    "Batch",
    "Read",
    "StoreError",
    "StoredMessage",
    "StoredPage",
    "StoredState",
    "load_all",
    "load_windowed",
    "select_page",
    "write_batch",
]

#: The database file's name inside the data directory.
DB_NAME = "stomptw.sqlite3"
#: The lock file that keeps a second broker out of the data directory.
LOCK_NAME = "lock"


class StoreError(RuntimeError):
    """The store could not be opened or written."""


@dataclass
class StoredMessage:
    """
    One persistent message as the store keeps it.

    :ivar key: the broker-assigned key, unique in the store; also the order
        messages were accepted in.
    :ivar owner: the queue holding it: a queue's name, or a durable
        subscription's owner name (see :meth:`IMessageStore.put_subscription`).
    :ivar message_id: the ``message-id`` it is delivered with.
    :ivar destination: the destination it was sent to.
    :ivar headers: the headers that travel with it.
    :ivar body: its body.
    :ivar delivery_count: how many deliveries of it have been started.
    :ivar expires: when it expires, in milliseconds since the epoch; 0 never.
    """

    key: int
    owner: str
    message_id: str
    destination: str
    headers: dict[str, str]
    body: bytes
    delivery_count: int = 0
    expires: int = 0


@dataclass
class StoredPage:
    """
    The messages of one queue beyond its in-memory window, left in the store
    when it was opened (see :meth:`SQLiteStore.load`): the queue reads them
    back in key order as its consumers make room.

    :ivar owner: the queue holding them.
    :ivar first_key: the first of their keys.
    :ivar last_key: the last of their keys (keys in between may belong to
        other queues).
    :ivar count: how many there are.
    :ivar size: what they count for against the queue's byte limit.
    :ivar expiring: how many of them have an expiry time.
    """

    owner: str
    first_key: int
    last_key: int
    count: int = 0
    size: int = 0
    expiring: int = 0


@dataclass
class StoredState:
    """
    What a store held when it was opened.

    :ivar messages: the stored messages in key order.
    :ivar subscriptions: durable subscriptions, as
        ``{owner: (client_id, name, destination)}``.
    :ivar unclean: the broker that last used the store did not close it (it
        crashed or was killed): deliveries it started may not be recorded.
    :ivar pages: by owner, the messages left in the store beyond each
        queue's in-memory window (empty unless :meth:`SQLiteStore.load` was
        given a window).
    """

    messages: list[StoredMessage] = field(default_factory=list)
    subscriptions: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    unclean: bool = False
    pages: dict[str, StoredPage] = field(default_factory=dict)

    @property
    def next_key(self) -> int:
        """The first key not used by a stored message."""
        last = self.messages[-1].key if self.messages else 0
        for page in self.pages.values():
            last = max(last, page.last_key)
        return last + 1


SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    key INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    message_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    expires INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_by_owner ON messages(owner, key);
CREATE TABLE IF NOT EXISTS subscriptions (
    owner TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    name TEXT NOT NULL,
    destination TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: The schema version written to ``meta``; a newer one is refused.
SCHEMA_VERSION = 1


def _message(
    key: int,
    owner: str,
    message_id: str,
    destination: str,
    headers: str,
    body: bytes,
    count: int,
    expires: int,
) -> StoredMessage:
    """A ``messages`` row as a :class:`StoredMessage`."""
    return StoredMessage(
        key, owner, message_id, destination, json.loads(headers), bytes(body), count, expires
    )


def load_all(conn: sqlite3.Connection) -> list[StoredMessage]:
    return [
        _message(*row)
        for row in conn.execute(
            "SELECT key, owner, message_id, destination, headers, body, "
            "delivery_count, expires FROM messages ORDER BY key"
        )
    ]


def load_windowed(
    conn: sqlite3.Connection, window: int, pageable: Callable[[str], bool]
) -> tuple[list[StoredMessage], dict[str, StoredPage]]:
    """The first ``window`` messages of each pageable owner, and a page for the rest."""
    held: dict[str, int] = {}
    keys: list[int] = []
    pages: dict[str, StoredPage] = {}
    # length() of a BLOB is read from the row's header: the bodies left on
    # disk are never read here.
    for key, owner, headers, body_length, expires in conn.execute(
        "SELECT key, owner, headers, length(body), expires FROM messages ORDER BY key"
    ):
        if not pageable(owner) or held.get(owner, 0) < window:
            held[owner] = held.get(owner, 0) + 1
            keys.append(key)
            continue
        page = pages.get(owner)
        if page is None:
            page = pages[owner] = StoredPage(owner, key, key)
        page.last_key = key
        page.count += 1
        page.size += message_size(json.loads(headers), b"") + body_length
        if expires:
            page.expiring += 1
    messages: list[StoredMessage] = []
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        marks = ",".join("?" * len(chunk))
        messages.extend(
            _message(*row)
            for row in conn.execute(
                "SELECT key, owner, message_id, destination, headers, body, delivery_count, "
                f"expires FROM messages WHERE key IN ({marks}) ORDER BY key",
                chunk,
            )
        )
    return messages, pages


class Batch:
    """The writes collected since the last commit started."""

    __slots__ = (
        "puts",
        "counts",
        "deletes",
        "ranges",
        "oldest",
        "sub_puts",
        "sub_deletes",
        "waiters",
    )

    def __init__(self) -> None:
        self.puts: dict[int, StoredMessage] = {}
        self.counts: dict[int, int] = {}
        self.deletes: set[int] = set()
        #: ``(owner, first_key, last_key)``: a paged backlog purged.
        self.ranges: list[tuple[str, int, int]] = []
        #: ``(owner, first_key, last_key, count)``: the oldest of a paged
        #: backlog dropped (drop-head).
        self.oldest: list[tuple[str, int, int, int]] = []
        self.sub_puts: dict[str, tuple[str, str, str]] = {}
        self.sub_deletes: set[str] = set()
        self.waiters: list[defer.Deferred] = []

    def __bool__(self) -> bool:
        return bool(
            self.puts
            or self.counts
            or self.deletes
            or self.ranges
            or self.oldest
            or self.sub_puts
            or self.sub_deletes
        )

    def take_back(self, failed: Batch) -> None:
        """
        Put the writes of ``failed``, an older batch whose commit failed,
        under this one's, so that the next commit writes both and the store
        ends up as if the failed commit had worked. What this batch did
        later to the same keys wins.
        """
        for key, message in failed.puts.items():
            if key in self.deletes or key in self.puts:
                continue
            count = self.counts.pop(key, None)
            if count is not None:
                message.delivery_count = count
            self.puts[key] = message
        for key, count in failed.counts.items():
            if key not in self.counts and key not in self.deletes and key not in self.puts:
                self.counts[key] = count
        for key in failed.deletes:
            if key not in self.puts:
                self.deletes.add(key)
                self.counts.pop(key, None)
        self.ranges[:0] = failed.ranges
        self.oldest[:0] = failed.oldest
        for owner, record in failed.sub_puts.items():
            if owner not in self.sub_puts and owner not in self.sub_deletes:
                self.sub_puts[owner] = record
        for owner in failed.sub_deletes:
            if owner not in self.sub_puts:
                self.sub_deletes.add(owner)


class Read:
    """A read of paged messages, for the store's thread."""

    __slots__ = ("owner", "first_key", "last_key", "limit", "deferred")

    def __init__(self, owner: str, first_key: int, last_key: int, limit: int, reactor) -> None:
        self.owner = owner
        self.first_key = first_key
        self.last_key = last_key
        self.limit = limit
        self.deferred: defer.Deferred = defer.Deferred()

    def done(self, result: object) -> None:
        if isinstance(result, Failure):
            self.deferred.errback(result)
        else:
            self.deferred.callback(result)


def select_page(conn: sqlite3.Connection | None, read: Read) -> list[StoredMessage]:
    """What ``read`` asks for, in key order (the store's thread, between two commits)."""
    assert conn is not None
    return [
        _message(key, read.owner, *rest)
        for key, *rest in conn.execute(
            "SELECT key, message_id, destination, headers, body, delivery_count, expires "
            "FROM messages WHERE owner = ? AND key BETWEEN ? AND ? ORDER BY key LIMIT ?",
            (read.owner, read.first_key, read.last_key, read.limit),
        )
    ]


def write_batch(conn: sqlite3.Connection, batch: Batch) -> None:
    """Write ``batch`` in one transaction (the store's thread; rolled back on failure)."""
    conn.execute("BEGIN")
    try:
        if batch.puts:
            conn.executemany(
                "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        m.key,
                        m.owner,
                        m.message_id,
                        m.destination,
                        json.dumps(m.headers, separators=(",", ":")),
                        m.body,
                        m.delivery_count,
                        m.expires,
                    )
                    for m in batch.puts.values()
                ],
            )
        if batch.counts:
            conn.executemany(
                "UPDATE messages SET delivery_count = ? WHERE key = ?",
                [(count, key) for key, count in batch.counts.items()],
            )
        if batch.deletes:
            conn.executemany(
                "DELETE FROM messages WHERE key = ?", [(key,) for key in batch.deletes]
            )
        if batch.ranges:
            conn.executemany(
                "DELETE FROM messages WHERE owner = ? AND key BETWEEN ? AND ?", batch.ranges
            )
        for owner, first, last, count in batch.oldest:
            conn.execute(
                "DELETE FROM messages WHERE key IN (SELECT key FROM messages "
                "WHERE owner = ? AND key BETWEEN ? AND ? ORDER BY key LIMIT ?)",
                (owner, first, last, count),
            )
        if batch.sub_puts:
            conn.executemany(
                "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?)",
                [(owner, *rest) for owner, rest in batch.sub_puts.items()],
            )
        if batch.sub_deletes:
            conn.executemany(
                "DELETE FROM subscriptions WHERE owner = ?",
                [(owner,) for owner in batch.sub_deletes],
            )
        conn.execute("COMMIT")
    except BaseException:
        # SQLite has rolled back by itself after some errors (a full disk).
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
