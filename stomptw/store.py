"""
Message stores: where persistent messages and durable subscriptions live
between restarts.

Two implementations of :class:`~stomptw.interfaces.IMessageStore`:

* :class:`MemoryStore` keeps everything in memory (``--store memory``):
  nothing survives a restart.
* :class:`SQLiteStore` is the embedded durable store (the default): an
  SQLite database in WAL mode under ``--data-dir``. Writes are collected on
  the reactor thread and committed by one background thread, many per
  transaction (group commit), so the reactor never waits for the disk.

The broker calls ``put``/``remove``/``set_delivery_count`` as messages come
and go, and waits on :meth:`sync` before it acknowledges a persistent
message to its producer.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw.interfaces import IMessageStore
from stomptw.model import message_size

__all__ = [
    "MemoryStore",
    "SQLiteStore",
    "StoredMessage",
    "StoredPage",
    "StoredState",
    "StoreError",
]

log = Logger()

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


@implementer(IMessageStore)
class MemoryStore:
    """
    A store that keeps its records in memory: persistence is off, but the
    broker goes through the same calls (and tests can look at ``messages``).
    """

    durable = False

    def __init__(self) -> None:
        self.messages: dict[int, StoredMessage] = {}
        self.subscriptions: dict[str, tuple[str, str, str]] = {}

    def load(self, window: int = 0, pageable: Callable[[str], bool] | None = None) -> StoredState:
        # Everything is in memory anyway: nothing is left behind in pages.
        messages = [self.messages[k] for k in sorted(self.messages)]
        return StoredState(messages, dict(self.subscriptions))

    def read(self, owner: str, first_key: int, last_key: int, limit: int) -> defer.Deferred:
        found = [
            self.messages[k]
            for k in sorted(self.messages)
            if first_key <= k <= last_key and self.messages[k].owner == owner
        ]
        return defer.succeed(found[:limit])

    def remove_range(self, owner: str, first_key: int, last_key: int) -> None:
        for key in [k for k, m in self.messages.items() if m.owner == owner]:
            if first_key <= key <= last_key:
                del self.messages[key]

    def remove_oldest(self, owner: str, first_key: int, last_key: int, count: int) -> None:
        keys = sorted(k for k, m in self.messages.items() if m.owner == owner)
        for key in [k for k in keys if first_key <= k <= last_key][:count]:
            del self.messages[key]

    def put(self, message: StoredMessage) -> None:
        self.messages[message.key] = message

    def set_delivery_count(self, key: int, count: int) -> None:
        stored = self.messages.get(key)
        if stored is not None:
            stored.delivery_count = count

    def remove(self, key: int) -> None:
        self.messages.pop(key, None)

    def put_subscription(self, owner: str, client_id: str, name: str, destination: str) -> None:
        self.subscriptions[owner] = (client_id, name, destination)

    def remove_subscription(self, owner: str) -> None:
        self.subscriptions.pop(owner, None)

    def sync(self) -> defer.Deferred:
        return defer.succeed(None)

    def close(self) -> defer.Deferred:
        return defer.succeed(None)

    def stats(self) -> dict[str, float]:
        return {"messages": len(self.messages), "batches": 0, "last_commit_seconds": 0.0}


_SCHEMA = """
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

#: After a failed commit, the next one is tried this many seconds later.
RETRY_SECONDS = 1.0

#: The schema version written to ``meta``; a newer one is refused.
SCHEMA_VERSION = 1


def _load_all(conn: sqlite3.Connection) -> list[StoredMessage]:
    return [
        StoredMessage(key, owner, mid, dest, json.loads(headers), bytes(body), count, exp)
        for key, owner, mid, dest, headers, body, count, exp in conn.execute(
            "SELECT key, owner, message_id, destination, headers, body, "
            "delivery_count, expires FROM messages ORDER BY key"
        )
    ]


def _load_windowed(
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
            StoredMessage(key, owner, mid, dest, json.loads(headers), bytes(body), count, exp)
            for key, owner, mid, dest, headers, body, count, exp in conn.execute(
                "SELECT key, owner, message_id, destination, headers, body, delivery_count, "
                f"expires FROM messages WHERE key IN ({marks}) ORDER BY key",
                chunk,
            )
        )
    return messages, pages


class _Batch:
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

    def take_back(self, failed: _Batch) -> None:
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


class _Read:
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


@implementer(IMessageStore)
class SQLiteStore:
    """
    The embedded durable store: one SQLite database in WAL mode.

    Writes are collected in a batch on the reactor thread. A single
    background thread commits one batch at a time in one transaction; what
    arrives meanwhile waits for the next one. A message put and removed
    before its batch is committed (consumed and acknowledged at once) never
    reaches the disk at all.

    :param directory: the data directory; created if missing.
    :param reactor: the reactor whose thread calls the store.
    :param synchronous: ``"full"`` (each commit is on disk before it is
        reported: survives power loss) or ``"normal"`` (survives a crash of
        the broker process but not of the machine; faster).
    """

    durable = True

    def __init__(self, directory: str, reactor, synchronous: str = "full") -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError("synchronous must be 'full' or 'normal'")
        self.directory = directory
        self.path = os.path.join(directory, DB_NAME)
        self._reactor = reactor
        self._synchronous = synchronous
        self._batch = _Batch()
        self._in_flight: _Batch | None = None
        self._scheduled = False
        self._closed = False
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock: int | None = None
        self._batches = 0
        self._last_commit = 0.0
        self._commit_seconds = 0.0
        #: Why the last commit failed, until one succeeds again.
        self.failing: str | None = None
        self._failures = 0
        self._retry = None

    # -- opening -------------------------------------------------------------------

    def load(self, window: int = 0, pageable: Callable[[str], bool] | None = None) -> StoredState:
        """
        Open (or create) the database and return what it holds. Called once,
        on the reactor thread, before the broker accepts connections.

        With a ``window``, only the first ``window`` messages of each owner
        that ``pageable`` accepts are read into memory; the rest stay in the
        file and are described by one :class:`StoredPage` per owner, so that
        a backlog larger than memory can be opened.
        """
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._take_lock()
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta(name, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} was written by a newer stomptw (schema {row[0]}); "
                    "upgrade stomptw or point --data-dir elsewhere"
                )
            row = conn.execute("SELECT value FROM meta WHERE name='closed'").fetchone()
            unclean = row is not None and row[0] != "1"
            # Until close() says otherwise, this run counts as a crash.
            conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('closed', '0')")
            if window > 0:
                messages, pages = _load_windowed(conn, window, pageable or (lambda owner: True))
            else:
                messages, pages = _load_all(conn), {}
            subscriptions = {
                owner: (client_id, name, dest)
                for owner, client_id, name, dest in conn.execute(
                    "SELECT owner, client_id, name, destination FROM subscriptions"
                )
            }
        except sqlite3.DatabaseError as e:
            self._release_lock()
            raise StoreError(
                f"cannot open the message store at {self.path}: {e}. The file is damaged, "
                "or is not a stomptw store. Copy what is readable into a new store with "
                f"`stomptw-store salvage {self.directory} NEW_DIR` and start with "
                "--data-dir NEW_DIR, or move the file aside to start with an empty store "
                "(docs/operations.md, 'A damaged message store')"
            ) from e
        except (sqlite3.Error, OSError, ValueError) as e:
            self._release_lock()
            raise StoreError(f"cannot open the message store at {self.path}: {e}") from e
        except StoreError:
            self._release_lock()
            raise
        self._conn = conn
        # A daemon thread: a broker stopped without closing its store is a
        # crash as far as the store knows, and must not hang the process.
        self._thread = threading.Thread(target=self._run, name="stomptw-store", daemon=True)
        self._thread.start()
        paged = sum(page.count for page in pages.values())
        log.info(
            "message store {path}: {messages} message(s), {subs} durable subscription(s)"
            "{paged}{unclean}",
            path=self.path,
            messages=len(messages) + paged,
            subs=len(subscriptions),
            paged=f" ({paged} left on disk until consumers need them)" if paged else "",
            unclean="; the last broker did not stop cleanly" if unclean else "",
        )
        return StoredState(messages, subscriptions, unclean, pages)

    def _take_lock(self) -> None:
        path = os.path.join(self.directory, LOCK_NAME)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StoreError(
                f"the data directory {self.directory} is in use by another broker "
                f"(pid {holder}); give each broker its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._lock = fd

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # -- writes (reactor thread) -----------------------------------------------------

    def put(self, message: StoredMessage) -> None:
        batch = self._batch
        batch.puts[message.key] = message
        batch.deletes.discard(message.key)
        self._schedule()

    def set_delivery_count(self, key: int, count: int) -> None:
        batch = self._batch
        put = batch.puts.get(key)
        if put is not None:
            put.delivery_count = count
        elif key not in batch.deletes:
            batch.counts[key] = count
            self._schedule()

    def remove(self, key: int) -> None:
        batch = self._batch
        batch.counts.pop(key, None)
        if batch.puts.pop(key, None) is not None:
            # Put and removed before the commit; but an older commit in
            # flight may be writing it, so delete it as well then.
            if self._in_flight is None or key not in self._in_flight.puts:
                return
        batch.deletes.add(key)
        self._schedule()

    def put_subscription(self, owner: str, client_id: str, name: str, destination: str) -> None:
        self._batch.sub_deletes.discard(owner)
        self._batch.sub_puts[owner] = (client_id, name, destination)
        self._schedule()

    def remove_subscription(self, owner: str) -> None:
        self._batch.sub_puts.pop(owner, None)
        self._batch.sub_deletes.add(owner)
        self._schedule()

    def remove_range(self, owner: str, first_key: int, last_key: int) -> None:
        """Forget ``owner``'s messages from ``first_key`` to ``last_key`` (a purged page)."""
        batch = self._batch
        for key in [k for k, m in batch.puts.items() if m.owner == owner]:
            if first_key <= key <= last_key:
                del batch.puts[key]
                batch.counts.pop(key, None)
        batch.ranges.append((owner, first_key, last_key))
        self._schedule()

    def remove_oldest(self, owner: str, first_key: int, last_key: int, count: int) -> None:
        """Forget the oldest ``count`` of ``owner``'s messages in that key range (drop-head)."""
        oldest = self._batch.oldest
        if oldest and oldest[-1][:3] == (owner, first_key, last_key):
            oldest[-1] = (owner, first_key, last_key, oldest[-1][3] + count)
        else:
            oldest.append((owner, first_key, last_key, count))
        self._schedule()

    def read(self, owner: str, first_key: int, last_key: int, limit: int) -> defer.Deferred:
        """
        Read back up to ``limit`` of ``owner``'s messages from ``first_key``
        to ``last_key``, in key order: a Deferred firing with a list of
        :class:`StoredMessage`. The read runs in the store's thread once what
        was written before it is committed, so it sees every message put so
        far.
        """
        read = _Read(owner, first_key, last_key, limit, self._reactor)

        def start(_: object) -> defer.Deferred:
            if self._thread is None:
                raise StoreError("the message store is closed")
            self._jobs.put(read)
            return read.deferred

        return self.sync().addCallback(start)

    def sync(self) -> defer.Deferred:
        """Fire once everything written so far is committed to disk."""
        d: defer.Deferred = defer.Deferred()
        if self._batch:
            self._batch.waiters.append(d)
            self._schedule()
        elif self._in_flight is not None:
            self._in_flight.waiters.append(d)
        else:
            d.callback(None)
        return d

    def close(self) -> defer.Deferred:
        """Commit what is pending, then close the database and its thread."""
        if self._retry is not None and self._retry.active():
            # Closing: one last try now, not later.
            self._retry.cancel()
            self._retry = None
        d = self.sync()

        def closed(result: object) -> object:
            self._closed = True
            if self._retry is not None and self._retry.active():
                self._retry.cancel()
            self._retry = None
            if self._thread is not None:
                self._jobs.put(None)
                self._thread.join()
                self._thread = None
            if self._conn is not None:
                if result is None:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO meta(name, value) VALUES ('closed', '1')"
                    )
                self._conn.close()
                self._conn = None
            self._release_lock()
            return result

        return d.addBoth(closed)

    def stats(self) -> dict[str, float]:
        """Commit counters: batches committed, the last commit's duration, failures in a row."""
        return {
            "batches": self._batches,
            "last_commit_seconds": self._last_commit,
            "failed_commits": self._failures,
        }

    # -- the writer --------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._scheduled or self._in_flight is not None or self._retry is not None:
            return
        self._scheduled = True
        # Start at the next reactor turn, so that everything this turn
        # produces goes into the same transaction.
        self._reactor.callLater(0, self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._in_flight is not None or not self._batch or self._thread is None:
            if not self._batch:
                waiters, self._batch.waiters = self._batch.waiters, []
                for d in waiters:
                    d.callback(None)
            return
        batch, self._batch = self._batch, _Batch()
        self._in_flight = batch
        self._jobs.put((batch, time.monotonic()))

    def _run(self) -> None:
        # The store's thread: commits one batch at a time, reports back to
        # the reactor thread.
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if isinstance(job, _Read):
                try:
                    found: object = self._select(job)
                except BaseException:
                    found = Failure()
                self._reactor.callFromThread(job.done, found)
                continue
            batch, started = job
            try:
                self._commit(batch)
                result: object = None
            except BaseException:
                result = Failure()
            self._reactor.callFromThread(self._committed, result, batch, started)

    def _select(self, job: _Read) -> list[StoredMessage]:
        # Runs in the store's thread, between two commits.
        conn = self._conn
        assert conn is not None
        return [
            StoredMessage(key, job.owner, mid, dest, json.loads(headers), bytes(body), count, exp)
            for key, mid, dest, headers, body, count, exp in conn.execute(
                "SELECT key, message_id, destination, headers, body, delivery_count, expires "
                "FROM messages WHERE owner = ? AND key BETWEEN ? AND ? ORDER BY key LIMIT ?",
                (job.owner, job.first_key, job.last_key, job.limit),
            )
        ]

    def _commit(self, batch: _Batch) -> None:
        # Runs in the store's thread, the only one that writes.
        conn = self._conn
        assert conn is not None
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

    def _committed(self, result: object, batch: _Batch, started: float) -> None:
        self._in_flight = None
        self._last_commit = time.monotonic() - started
        failure = result if isinstance(result, Failure) else None
        waiters = batch.waiters
        batch.waiters = []
        if failure is None:
            self._batches += 1
            if self.failing is not None:
                log.info(
                    "message store writes succeed again ({path}) after {count} failed "
                    "commit(s); nothing that got a RECEIPT was lost",
                    path=self.path,
                    count=self._failures,
                )
                self.failing = None
                self._failures = 0
            for d in waiters:
                d.callback(None)
        else:
            self._failed(failure, batch, waiters)
        if self._retry is None and (self._batch or self._batch.waiters):
            self._start()

    def _failed(self, failure: Failure, batch: _Batch, waiters: list[defer.Deferred]) -> None:
        """
        A commit failed (disk full, I/O error): the frames waiting for it get
        their ERROR; its writes are kept for the next commit, tried again
        every :data:`RETRY_SECONDS` until one succeeds.
        """
        why = failure.getErrorMessage()
        self._failures += 1
        if self.failing is None:
            log.error(
                "message store commit failed ({path}): {why}; persistent messages get an "
                "ERROR instead of a RECEIPT until writes succeed again (tried every "
                "{retry:g} s); everything else goes on",
                path=self.path,
                why=why,
                retry=RETRY_SECONDS,
            )
        self.failing = why
        error = Failure(StoreError(f"message store commit failed: {why}"))
        if failure.check(sqlite3.OperationalError, OSError):
            # The disk or the file system: its writes may work next time.
            self._batch.take_back(batch)
            if not self._closed:
                self._retry = self._reactor.callLater(RETRY_SECONDS, self._retry_now)
        else:
            # The batch itself cannot be written (a bug): trying it again would
            # block every later commit behind it.
            log.failure("message store commit failed ({path})", failure, path=self.path)
        for d in waiters:
            d.errback(error)

    def _retry_now(self) -> None:
        self._retry = None
        if self._batch or self._batch.waiters:
            self._start()
