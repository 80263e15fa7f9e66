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
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw.interfaces import IMessageStore
from stomptw.storeformat import (
    DB_NAME,
    LOCK_NAME,
    SCHEMA,
    SCHEMA_VERSION,
    Batch,
    Read,
    StoredMessage,
    StoredPage,
    StoredState,
    StoreError,
    load_all,
    load_windowed,
    select_page,
    write_batch,
)

__all__ = [
    "DB_NAME",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "MemoryStore",
    "SQLiteStore",
    "StoredMessage",
    "StoredPage",
    "StoredState",
    "StoreError",
]

log = Logger()


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


#: After a failed commit, the next one is tried this many seconds later.
RETRY_SECONDS = 1.0


class StoreWriter:
    """
    The one thread that writes :class:`SQLiteStore`'s database, and the
    batches it commits: the writes of a reactor turn gather in
    :attr:`batch`; the thread commits one batch at a time in one
    transaction (:attr:`in_flight`), and what arrives meanwhile waits for
    the next. A commit that fails on the disk (full, I/O error) is kept for
    the next one, tried every :data:`RETRY_SECONDS`; reads of paged
    messages queue behind the commits.

    :param reactor: the reactor whose thread uses the store.
    :param path: the database's path, for the logs.
    :param commit: ``batch -> None``, run in the thread (the store's, so
        that tests can inject faults there).

    :ivar failing: why the last commit failed, until one succeeds again.
    """

    def __init__(self, reactor, path: str, commit: Callable[[Batch], None]) -> None:
        self._reactor = reactor
        self.path = path
        self._commit = commit
        self.batch = Batch()
        self.in_flight: Batch | None = None
        self._scheduled = False
        self.closed = False
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self.batches = 0
        self.last_commit = 0.0
        self.failing: str | None = None
        self.failures = 0
        self._retry = None

    def start(self, conn: sqlite3.Connection) -> None:
        """Start the thread, on the opened database."""
        self._conn = conn
        # A daemon thread: a broker stopped without closing its store is a
        # crash as far as the store knows, and must not hang the process.
        self.thread = threading.Thread(target=self._run, name="stomptw-store", daemon=True)
        self.thread.start()

    def halt(self) -> None:
        """Stop the thread once it has done what it was given."""
        if self.thread is not None:
            self.jobs.put(None)
            self.thread.join()
            self.thread = None

    def cancel_retry(self) -> None:
        """No later retry of a failed commit (closing: one last try now, or none)."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def sync(self) -> defer.Deferred:
        """Fire once everything written so far is committed to disk."""
        d: defer.Deferred = defer.Deferred()
        if self.batch:
            self.batch.waiters.append(d)
            self.schedule()
        elif self.in_flight is not None:
            self.in_flight.waiters.append(d)
        else:
            d.callback(None)
        return d

    def read(self, read: Read) -> defer.Deferred:
        """Run ``read`` in the thread, behind the commits before it."""
        if self.thread is None:
            raise StoreError("the message store is closed")
        self.jobs.put(read)
        return read.deferred

    def schedule(self) -> None:
        """Commit :attr:`batch` soon: at the next reactor turn, or after the one in flight."""
        if self._scheduled or self.in_flight is not None or self._retry is not None:
            return
        self._scheduled = True
        # Start at the next reactor turn, so that everything this turn
        # produces goes into the same transaction.
        self._reactor.callLater(0, self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self.in_flight is not None or not self.batch or self.thread is None:
            if not self.batch:
                waiters, self.batch.waiters = self.batch.waiters, []
                for d in waiters:
                    d.callback(None)
            return
        batch, self.batch = self.batch, Batch()
        self.in_flight = batch
        self.jobs.put((batch, time.monotonic()))

    def _run(self) -> None:
        # The store's thread: commits one batch at a time, reports back to
        # the reactor thread.
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if isinstance(job, Read):
                try:
                    found: object = select_page(self._conn, job)
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

    def _committed(self, result: object, batch: Batch, started: float) -> None:
        self.in_flight = None
        self.last_commit = time.monotonic() - started
        failure = result if isinstance(result, Failure) else None
        waiters = batch.waiters
        batch.waiters = []
        if failure is None:
            self.batches += 1
            if self.failing is not None:
                log.info(
                    "message store writes succeed again ({path}) after {count} failed "
                    "commit(s); nothing that got a RECEIPT was lost",
                    path=self.path,
                    count=self.failures,
                )
                self.failing = None
                self.failures = 0
            for d in waiters:
                d.callback(None)
        else:
            self._failed(failure, batch, waiters)
        if self._retry is None and (self.batch or self.batch.waiters):
            self._start()

    def _failed(self, failure: Failure, batch: Batch, waiters: list[defer.Deferred]) -> None:
        """
        A commit failed (disk full, I/O error): the frames waiting for it get
        their ERROR; its writes are kept for the next commit, tried again
        every :data:`RETRY_SECONDS` until one succeeds.
        """
        why = failure.getErrorMessage()
        self.failures += 1
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
            self.batch.take_back(batch)
            if not self.closed:
                self._retry = self._reactor.callLater(RETRY_SECONDS, self._retry_now)
        else:
            # The batch itself cannot be written (a bug): trying it again would
            # block every later commit behind it.
            log.failure("message store commit failed ({path})", failure, path=self.path)
        for d in waiters:
            d.errback(error)

    def _retry_now(self) -> None:
        self._retry = None
        if self.batch or self.batch.waiters:
            self._start()


@implementer(IMessageStore)
class SQLiteStore:
    """
    The embedded durable store: one SQLite database in WAL mode.

    Writes are collected in a batch on the reactor thread; one background
    thread (:class:`StoreWriter`) commits one batch at a time in one
    transaction, and what arrives meanwhile waits for the next one. A
    message put and removed before its batch is committed (consumed and
    acknowledged at once) never reaches the disk at all.

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
        self._conn: sqlite3.Connection | None = None
        self._lock: int | None = None
        #: The writing thread and its batches.
        self._writer = StoreWriter(reactor, self.path, lambda batch: self._commit(batch))

    @property
    def failing(self) -> str | None:
        """Why the last commit failed, until one succeeds again."""
        return self._writer.failing

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
            conn.executescript(SCHEMA)
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
                messages, pages = load_windowed(conn, window, pageable or (lambda owner: True))
            else:
                messages, pages = load_all(conn), {}
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
        self._writer.start(conn)
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
        batch = self._writer.batch
        batch.puts[message.key] = message
        batch.deletes.discard(message.key)
        self._writer.schedule()

    def set_delivery_count(self, key: int, count: int) -> None:
        batch = self._writer.batch
        put = batch.puts.get(key)
        if put is not None:
            put.delivery_count = count
        elif key not in batch.deletes:
            batch.counts[key] = count
            self._writer.schedule()

    def remove(self, key: int) -> None:
        batch = self._writer.batch
        batch.counts.pop(key, None)
        if batch.puts.pop(key, None) is not None:
            # Put and removed before the commit; but an older commit in
            # flight may be writing it, so delete it as well then.
            if self._writer.in_flight is None or key not in self._writer.in_flight.puts:
                return
        batch.deletes.add(key)
        self._writer.schedule()

    def put_subscription(self, owner: str, client_id: str, name: str, destination: str) -> None:
        self._writer.batch.sub_deletes.discard(owner)
        self._writer.batch.sub_puts[owner] = (client_id, name, destination)
        self._writer.schedule()

    def remove_subscription(self, owner: str) -> None:
        self._writer.batch.sub_puts.pop(owner, None)
        self._writer.batch.sub_deletes.add(owner)
        self._writer.schedule()

    def remove_range(self, owner: str, first_key: int, last_key: int) -> None:
        """Forget ``owner``'s messages from ``first_key`` to ``last_key`` (a purged page)."""
        batch = self._writer.batch
        for key in [k for k, m in batch.puts.items() if m.owner == owner]:
            if first_key <= key <= last_key:
                del batch.puts[key]
                batch.counts.pop(key, None)
        batch.ranges.append((owner, first_key, last_key))
        self._writer.schedule()

    def remove_oldest(self, owner: str, first_key: int, last_key: int, count: int) -> None:
        """Forget the oldest ``count`` of ``owner``'s messages in that key range (drop-head)."""
        oldest = self._writer.batch.oldest
        if oldest and oldest[-1][:3] == (owner, first_key, last_key):
            oldest[-1] = (owner, first_key, last_key, oldest[-1][3] + count)
        else:
            oldest.append((owner, first_key, last_key, count))
        self._writer.schedule()

    def read(self, owner: str, first_key: int, last_key: int, limit: int) -> defer.Deferred:
        """
        Read back up to ``limit`` of ``owner``'s messages from ``first_key``
        to ``last_key``, in key order: a Deferred firing with a list of
        :class:`StoredMessage`. The read runs in the store's thread once what
        was written before it is committed, so it sees every message put so
        far.
        """
        read = Read(owner, first_key, last_key, limit, self._reactor)
        return self.sync().addCallback(lambda _: self._writer.read(read))

    def sync(self) -> defer.Deferred:
        """Fire once everything written so far is committed to disk."""
        return self._writer.sync()

    def close(self) -> defer.Deferred:
        """Commit what is pending, then close the database and its thread."""
        writer = self._writer
        writer.cancel_retry()  # closing: one last try now, not later
        d = self.sync()

        def closed(result: object) -> object:
            writer.closed = True
            writer.cancel_retry()
            writer.halt()
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
        writer = self._writer
        return {
            "batches": writer.batches,
            "last_commit_seconds": writer.last_commit,
            "failed_commits": writer.failures,
        }

    def _commit(self, batch: Batch) -> None:
        # Runs in the store's thread, the only one that writes (a method:
        # tests inject faults here).
        assert self._conn is not None
        write_batch(self._conn, batch)
