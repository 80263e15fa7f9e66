"""
Unit tests of the message stores (:mod:`stomptw.store`): the memory store
and the SQLite store, what they keep across a reopen, their group commits
and ``sync``, and how they fail. What the broker loads from a store is in
test_broker.py; the delivery policy in test_destinations.py and
test_deadletters.py.

The SQLite store commits in a background thread that reports back with
``reactor.callFromThread``, so its tests run on the real reactor
(``pytest_twisted.ensureDeferred``).
"""

from __future__ import annotations

import os
import sqlite3

import pytest
import pytest_twisted
from fakes import stored
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from zope.interface.verify import verifyObject

from stomptw.interfaces import IMessageStore
from stomptw.store import (
    DB_NAME,
    MemoryStore,
    SQLiteStore,
    StoredMessage,
    StoredState,
    StoreError,
)


def rows(directory) -> list[tuple]:
    """The messages table read with an independent SQLite connection."""
    conn = sqlite3.connect(os.path.join(directory, DB_NAME))
    try:
        return conn.execute(
            "SELECT key, owner, delivery_count FROM messages ORDER BY key"
        ).fetchall()
    finally:
        conn.close()


def reopen(directory) -> StoredState:
    """Load ``directory`` with a fresh store, close it, return what it held."""
    store = SQLiteStore(str(directory), reactor)
    state = store.load()
    # Nothing is pending: close() commits nothing and finishes at once.
    assert store.close().called
    return state


@pytest.fixture
def sqlite_store(tmp_path):
    """An opened SQLite store on the real reactor; closed after the test."""
    store = SQLiteStore(str(tmp_path), reactor)
    store.load()
    yield store
    pytest_twisted.blockon(store.close())


class _ClockReactor:
    """
    A reactor for the store whose ``callLater`` is a Clock (the test decides
    when a commit starts) while ``callFromThread`` is the real reactor's.
    """

    def __init__(self) -> None:
        self.clock = Clock()

    def callLater(self, delay, fn, *args, **kwargs):  # noqa: N802 - reactor API
        return self.clock.callLater(delay, fn, *args, **kwargs)

    def callFromThread(self, fn, *args, **kwargs):  # noqa: N802 - reactor API
        reactor.callFromThread(fn, *args, **kwargs)


# -- interfaces ---------------------------------------------------------------------


def test_memory_store_provides_interface():
    assert verifyObject(IMessageStore, MemoryStore())
    assert MemoryStore.durable is False


def test_sqlite_store_provides_interface(tmp_path):
    assert verifyObject(IMessageStore, SQLiteStore(str(tmp_path), reactor))
    assert SQLiteStore.durable is True


def test_sqlite_store_rejects_unknown_sync_mode(tmp_path):
    with pytest.raises(ValueError):
        SQLiteStore(str(tmp_path), reactor, synchronous="sometimes")


# -- StoredState and MemoryStore ------------------------------------------------------------


def test_stored_state_next_key():
    assert StoredState().next_key == 1
    assert StoredState([stored(1), stored(4), stored(7)]).next_key == 8


def test_memory_store_records_and_loads_in_key_order():
    store = MemoryStore()
    for key in (5, 2, 9):
        store.put(stored(key))
    store.set_delivery_count(2, 3)
    store.set_delivery_count(42, 1)  # unknown: ignored
    store.remove(9)
    store.remove(42)  # unknown: ignored
    store.put_subscription("durable:1:c:s", "c", "s", "/topic/t")
    store.put_subscription("durable:1:c:u", "c", "u", "/topic/u")
    store.remove_subscription("durable:1:c:u")
    state = store.load()
    assert [m.key for m in state.messages] == [2, 5]
    assert state.messages[0].delivery_count == 3
    assert state.subscriptions == {"durable:1:c:s": ("c", "s", "/topic/t")}
    assert state.next_key == 6
    assert store.stats()["messages"] == 2
    assert store.sync().called
    assert store.close().called


# -- SQLiteStore -------------------------------------------------------------------------


def test_load_on_empty_directory_creates_it(tmp_path):
    directory = tmp_path / "new" / "data"
    store = SQLiteStore(str(directory), reactor)
    state = store.load()
    try:
        assert state.messages == []
        assert state.subscriptions == {}
        assert state.next_key == 1
        assert (directory / DB_NAME).exists()
    finally:
        assert store.close().called


@pytest_twisted.ensureDeferred
async def test_committed_state_survives_reopen(tmp_path):
    store = SQLiteStore(str(tmp_path), reactor)
    store.load()
    body = b"\x00binary\x00\xff\xfe end\x00"
    store.put(stored(7, headers={"h\u00e9": "v\u00e9:1", "empty": ""}, body=body, expires=123))
    store.put(stored(3, owner="durable:1:c:s", destination="/topic/t"))
    store.put(stored(5))
    store.put(stored(9))
    await store.sync()
    store.set_delivery_count(5, 4)
    store.remove(9)
    store.put_subscription("durable:1:c:s", "c", "s", "/topic/t")
    store.put_subscription("durable:1:c:gone", "c", "gone", "/topic/g")
    await store.sync()
    store.remove_subscription("durable:1:c:gone")
    await store.close()

    state = reopen(tmp_path)
    assert [m.key for m in state.messages] == [3, 5, 7]
    by_key = {m.key: m for m in state.messages}
    seven = by_key[7]
    assert seven == StoredMessage(
        7, "/queue/a", "id-7", "/queue/a", {"h\u00e9": "v\u00e9:1", "empty": ""}, body, 0, 123
    )
    assert isinstance(seven.body, bytes)
    assert by_key[5].delivery_count == 4
    assert by_key[3].owner == "durable:1:c:s"
    assert by_key[3].destination == "/topic/t"
    assert state.subscriptions == {"durable:1:c:s": ("c", "s", "/topic/t")}
    assert state.next_key == 8


@pytest_twisted.ensureDeferred
async def test_close_commits_what_is_pending(tmp_path):
    store = SQLiteStore(str(tmp_path), reactor)
    store.load()
    store.put(stored(1))
    store.put_subscription("durable:1:c:s", "c", "s", "/topic/t")
    await store.close()
    state = reopen(tmp_path)
    assert [m.key for m in state.messages] == [1]
    assert list(state.subscriptions) == ["durable:1:c:s"]


@pytest_twisted.ensureDeferred
async def test_puts_in_one_reactor_turn_are_one_commit(sqlite_store, tmp_path):
    before = sqlite_store.stats()["batches"]
    for key in range(1, 201):
        sqlite_store.put(stored(key))
    waiters = [sqlite_store.sync() for _ in range(3)]
    assert not any(d.called for d in waiters)
    for d in waiters:
        await d
    stats = sqlite_store.stats()
    assert stats["batches"] == before + 1
    assert stats["last_commit_seconds"] >= 0
    assert len(rows(tmp_path)) == 200

    # The next turn's writes are the next batch.
    for key in range(201, 211):
        sqlite_store.set_delivery_count(key - 200, 2)
        sqlite_store.put(stored(key))
    await sqlite_store.sync()
    assert sqlite_store.stats()["batches"] == before + 2
    table = rows(tmp_path)
    assert len(table) == 210
    assert [count for _, _, count in table[:10]] == [2] * 10


@pytest_twisted.ensureDeferred
async def test_put_then_remove_before_commit_writes_nothing(sqlite_store, tmp_path):
    before = sqlite_store.stats()["batches"]
    sqlite_store.put(stored(1))
    sqlite_store.set_delivery_count(1, 1)
    sqlite_store.remove(1)
    await sqlite_store.sync()
    assert sqlite_store.stats()["batches"] == before
    assert rows(tmp_path) == []
    await sqlite_store.close()
    assert reopen(tmp_path).messages == []


@pytest_twisted.ensureDeferred
async def test_remove_while_its_put_is_being_committed(tmp_path):
    fake = _ClockReactor()
    store = SQLiteStore(str(tmp_path), fake)
    store.load()
    try:
        store.put(stored(1))
        fake.clock.advance(0)  # the batch goes to the writer thread
        store.remove(1)  # its put may be on disk already: delete it too
        await store.sync()
        assert rows(tmp_path) == []
        assert store.stats()["batches"] == 2
    finally:
        store.put(stored(2))
        closing = store.close()
        fake.clock.advance(0)
        await closing
    assert [m.key for m in reopen(tmp_path).messages] == [2]


@pytest_twisted.ensureDeferred
async def test_sync_fires_after_the_commit(sqlite_store, tmp_path):
    sqlite_store.put(stored(1))
    d = sqlite_store.sync()
    assert not d.called
    assert rows(tmp_path) == []
    await d
    assert rows(tmp_path) == [(1, "/queue/a", 0)]


def test_sync_with_nothing_pending_fires_at_once(sqlite_store):
    d = sqlite_store.sync()
    assert d.called
    assert sqlite_store.stats()["batches"] == 0


@pytest_twisted.ensureDeferred
async def test_sync_waits_for_commit_in_flight(sqlite_store, tmp_path):
    sqlite_store.put(stored(1))
    await deferLater(reactor, 0, lambda: None)
    # Nothing new is pending, but a commit may still be under way.
    d = sqlite_store.sync()
    await d
    assert rows(tmp_path) == [(1, "/queue/a", 0)]


@pytest_twisted.ensureDeferred
async def test_failed_commit_fails_sync_with_store_error(sqlite_store, tmp_path):
    sqlite_store.put(stored(1, headers={"bad": object()}))  # not JSON
    with pytest.raises(StoreError):
        await sqlite_store.sync()
    # The store carries on with the next batch.
    sqlite_store.put(stored(2))
    await sqlite_store.sync()
    assert rows(tmp_path) == [(2, "/queue/a", 0)]


@pytest_twisted.ensureDeferred
async def test_newer_schema_is_refused(tmp_path):
    store = SQLiteStore(str(tmp_path), reactor)
    store.load()
    await store.close()
    conn = sqlite3.connect(os.path.join(tmp_path, DB_NAME))
    with conn:
        conn.execute("UPDATE meta SET value = '999' WHERE name = 'schema'")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(str(tmp_path), reactor).load()


def test_unwritable_directory_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError):
        SQLiteStore(str(blocker / "data"), reactor).load()


def test_corrupt_database_is_a_store_error(tmp_path):
    (tmp_path / DB_NAME).write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StoreError):
        SQLiteStore(str(tmp_path), reactor).load()
