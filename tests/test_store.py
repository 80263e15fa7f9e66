"""
Unit tests of the message stores (:mod:`stomptw.store`) and of the broker's
delivery policy driven by a :class:`~twisted.internet.task.Clock`: expiry,
delivery counts and dead letters, producer blocking, slow topic subscribers
and restoring what a store holds.

The SQLite store commits in a background thread that reports back with
``reactor.callFromThread``, so its tests run on the real reactor
(``pytest_twisted.ensureDeferred``).
"""

from __future__ import annotations

import itertools
import os
import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from zope.interface.verify import verifyObject

from stomptw.broker import Broker, DestinationFull, Subscription, durable_owner
from stomptw.config import BrokerConfig
from stomptw.interfaces import IMessageConsumer, IMessageStore
from stomptw.store import (
    DB_NAME,
    MemoryStore,
    SQLiteStore,
    StoredMessage,
    StoredState,
    StoreError,
)


def stored(key: int, owner: str = "/queue/a", **kwargs) -> StoredMessage:
    values = {
        "message_id": f"id-{key}",
        "destination": owner,
        "headers": {"x-key": str(key)},
        "body": f"body-{key}".encode(),
    }
    values.update(kwargs)
    return StoredMessage(key, owner, **values)


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


# -- the broker's policy with a Clock -------------------------------------------------------


class FakeConsumer:
    """A minimal IMessageConsumer that records what the broker does to it."""

    def __init__(self) -> None:
        self.writable = True
        self.delivered: list[tuple[str, bytes, int, bool]] = []
        self.blocked: list[str] = []
        self.unblocked: list[str] = []
        self.slow: list[tuple[str, str]] = []
        self._ids = itertools.count(1)

    def deliver(self, sub, message) -> bool:
        self.delivered.append((sub.id, message.body, message.delivery_count, message.redelivered))
        if sub.ack_mode != "auto":
            sub.unacked[str(next(self._ids))] = message
        return True

    def block(self, queue) -> None:
        self.blocked.append(queue.name)

    def unblock(self, queue) -> None:
        self.unblocked.append(queue.name)

    def slow_consumer(self, sub, reason) -> None:
        self.slow.append((sub.id, reason))


def make_broker(store=None, **overrides) -> tuple[Broker, Clock]:
    clock = Clock()
    config = BrokerConfig(store="memory", **overrides)
    broker = Broker(config, store if store is not None else MemoryStore(), clock)
    broker.open()
    return broker, clock


def subscribe(broker, consumer, destination, ack="client-individual", sub_id="s", **kw):
    sub = Subscription(consumer, sub_id, destination, ack, **kw)
    broker.subscribe(sub)
    return sub


def settle(broker, sub, ack: bool = True) -> None:
    """ACK or NACK the oldest unacknowledged message of ``sub``."""
    ack_id = next(iter(sub.unacked))
    messages = [m for _, m in sub.take(ack_id, cumulative=False)]
    (broker.ack if ack else broker.nack)(sub, messages)


def test_fake_consumer_provides_interface():
    assert verifyObject(IMessageConsumer, FakeConsumer(), tentative=True)


def test_sweep_expires_messages_on_the_clock():
    store = MemoryStore()
    broker, clock = make_broker(store, expiry_interval=1.0)
    clock.advance(100)  # now: 100 000 ms
    broker.send("/queue/a", {"expires": "100500", "persistent": "true"}, b"short")
    broker.send("/queue/a", {"expires": "101500"}, b"longer")
    broker.send("/queue/a", {}, b"forever")
    queue = broker.destinations["/queue/a"]
    assert (queue.count, queue.expiring) == (3, 2)
    assert len(store.messages) == 1

    clock.advance(0.4)  # before the next sweep (at 101 s)
    assert broker.stats["expired"] == 0
    clock.advance(0.6)
    assert broker.stats["expired"] == 1
    assert [m.body for m in queue.pending] == [b"longer", b"forever"]
    assert store.messages == {}  # the stored message went with it
    clock.advance(1.0)
    assert broker.stats["expired"] == 2
    assert [m.body for m in queue.pending] == [b"forever"]
    assert (queue.count, queue.expiring) == (1, 0)
    assert broker.stats["dead_lettered"] == 0
    # The sweep keeps running.
    assert [c.getTime() for c in clock.getDelayedCalls()] == [103.0]


def test_sweep_forgets_emptied_queue():
    broker, clock = make_broker(expiry_interval=0.5)
    broker.send("/queue/gone", {"expires": "200"}, b"x")
    assert "/queue/gone" in broker.destinations
    clock.advance(0.5)
    assert "/queue/gone" not in broker.destinations
    assert broker.stats["expired"] == 1


def test_message_expired_on_arrival_is_counted_not_queued():
    broker, clock = make_broker()
    clock.advance(10)
    broker.send("/queue/a", {"expires": "9999"}, b"late")
    assert broker.stats["expired"] == 1
    assert broker.stats["published"] == 1
    queue = broker.destinations.get("/queue/a")
    assert queue is None or (queue.count, len(queue.pending)) == (0, 0)


@pytest.mark.parametrize("destination", ["/queue/late", "/topic/late"])
def test_destination_of_message_expired_on_arrival_is_forgotten(destination):
    broker, clock = make_broker(expiry_interval=1.0)
    clock.advance(10)
    broker.send(destination, {"expires": "9999"}, b"late")
    clock.advance(5)  # a few sweeps
    assert broker.stats["expired"] == 1
    assert destination not in broker.destinations


def test_expired_at_dispatch_without_sweep():
    broker, clock = make_broker(expiry_interval=0)
    assert clock.getDelayedCalls() == []
    broker.send("/queue/a", {"expires": "500"}, b"x")
    broker.send("/queue/a", {}, b"y")
    clock.advance(1)
    consumer = FakeConsumer()
    subscribe(broker, consumer, "/queue/a", ack="auto")
    assert [body for _, body, _, _ in consumer.delivered] == [b"y"]
    assert broker.stats["expired"] == 1


def test_default_ttl_uses_the_clock():
    broker, clock = make_broker(default_ttl_ms=2000, expiry_interval=1.0)
    clock.advance(50)
    message = broker.send("/queue/a", {}, b"x")
    assert message.expires == 52_000
    assert message.headers["expires"] == "52000"
    clock.advance(2)
    assert broker.stats["expired"] == 1


def test_expired_message_dead_lettered_when_configured():
    broker, clock = make_broker(dead_letter_expired=True, expiry_interval=1.0)
    original = broker.send(
        "/queue/a", {"expires": "500", "x-user": "u", "persistent": "true"}, b"x"
    )
    clock.advance(1)
    dlq = broker.destinations["/queue/DLQ.a"]
    (dead,) = dlq.pending
    assert dead.body == b"x"
    assert dead.destination == "/queue/DLQ.a"
    assert dead.persistent
    assert dead.expires == 0
    assert "expires" not in dead.headers
    assert dead.headers["x-user"] == "u"
    assert dead.headers["x-first-death-reason"] == "expired"
    assert dead.headers["x-first-death-queue"] == "/queue/a"
    assert dead.headers["x-original-message-id"] == original.message_id
    assert broker.stats["expired"] == 1
    assert broker.stats["dead_lettered"] == 1
    # Stored under the DLQ now, and only there.
    assert [m.owner for m in broker.store.messages.values()] == ["/queue/DLQ.a"]


def test_delivery_limit_moves_message_to_dead_letter_queue():
    broker, _ = make_broker(max_redeliveries=2)
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/queue/a")
    sent = broker.send("/queue/a", {"persistent": "true", "x-user": "u"}, b"m")
    for _ in range(3):
        settle(broker, sub, ack=False)
    assert [(count, redelivered) for _, _, count, redelivered in consumer.delivered] == [
        (1, False),
        (2, True),
        (3, True),
    ]
    assert sub.unacked == {}
    queue = broker.destinations["/queue/a"]
    assert (queue.count, queue.bytes, len(queue.pending)) == (0, 0, 0)
    (dead,) = broker.destinations["/queue/DLQ.a"].pending
    assert dead.headers["x-first-death-reason"] == "delivery_limit"
    assert dead.headers["x-death-reason"] == "delivery_limit"
    assert dead.headers["x-original-message-id"] == sent.message_id
    assert dead.message_id != sent.message_id
    assert dead.persistent and dead.delivery_count == 0
    stats = broker.stats
    assert (stats["nacked"], stats["redelivered"], stats["dead_lettered"]) == (3, 2, 1)
    assert [m.owner for m in broker.store.messages.values()] == ["/queue/DLQ.a"]


def test_unsubscribe_return_counts_towards_the_limit():
    broker, _ = make_broker(max_redeliveries=1)
    broker.send("/queue/a", {}, b"m")
    for n in range(2):
        consumer = FakeConsumer()
        sub = subscribe(broker, consumer, "/queue/a", sub_id=f"s{n}")
        assert consumer.delivered[0][2] == n + 1
        broker.unsubscribe(sub)
    assert "/queue/a" not in broker.destinations
    assert len(broker.destinations["/queue/DLQ.a"].pending) == 1
    assert broker.stats["dead_lettered"] == 1


def test_delivery_count_is_stored_for_unacked_persistent_messages():
    store = MemoryStore()
    broker, _ = make_broker(store)
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/queue/a")
    broker.send("/queue/a", {"persistent": "true"}, b"m")
    (key,) = store.messages
    assert store.messages[key].delivery_count == 1
    settle(broker, sub, ack=False)
    assert store.messages[key].delivery_count == 2
    settle(broker, sub)
    assert store.messages == {}


def test_dead_letter_queue_messages_never_die_again():
    broker, _ = make_broker(max_redeliveries=0)
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/queue/a")
    broker.send("/queue/a", {}, b"m")
    settle(broker, sub, ack=False)
    broker.unsubscribe(sub)
    dead_consumer = FakeConsumer()
    dead_sub = subscribe(broker, dead_consumer, "/queue/DLQ.a", sub_id="d")
    for _ in range(5):
        settle(broker, dead_sub, ack=False)
    assert [c for _, _, c, _ in dead_consumer.delivered] == [1, 2, 3, 4, 5, 6]
    assert broker.stats["dead_lettered"] == 1
    assert broker.stats["dropped"] == 0


def test_no_dead_letter_queue_drops():
    broker, _ = make_broker(max_redeliveries=0, dead_letter_queue="")
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/queue/a")
    broker.send("/queue/a", {}, b"m")
    settle(broker, sub, ack=False)
    assert broker.stats["dropped"] == 1
    assert broker.stats["dead_lettered"] == 0
    assert list(broker.destinations) == ["/queue/a"]
    assert broker.destinations["/queue/a"].count == 0


def test_full_queue_blocks_producer_until_below_resume_mark():
    broker, _ = make_broker(max_queue_length=10, overflow="block")
    producer = FakeConsumer()
    for i in range(10):
        broker.send("/queue/a", {}, b"%d" % i, producer)
    assert producer.blocked == ["/queue/a"]
    assert broker.stats["producers_blocked"] == 1
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/queue/a", prefetch=0)
    assert len(consumer.delivered) == 10
    settle(broker, sub)  # 9 held: still not under 90 %
    assert producer.unblocked == []
    settle(broker, sub)  # 8 held
    assert producer.unblocked == ["/queue/a"]


def test_full_queue_rejects_with_reject_policy():
    broker, _ = make_broker(max_queue_length=2, overflow="reject")
    broker.send("/queue/a", {}, b"1")
    broker.send("/queue/a", {}, b"2")
    with pytest.raises(DestinationFull) as info:
        broker.send("/queue/a", {}, b"3")
    assert info.value.name == "/queue/a"
    assert "2 messages" in info.value.reason
    assert broker.stats["rejected"] == 1
    assert [m.body for m in broker.destinations["/queue/a"].pending] == [b"1", b"2"]


def test_queue_byte_limit_counts_body_headers_and_overhead():
    broker, _ = make_broker(max_queue_bytes=2000, overflow="reject")
    message = broker.send("/queue/a", {"ab": "cd"}, b"x" * 100)
    assert message.size == 100 + 4 + 512
    queue = broker.destinations["/queue/a"]
    broker.send("/queue/a", {}, b"y" * 1000)  # 616 < 2000: accepted
    assert queue.bytes == 616 + 1512
    with pytest.raises(DestinationFull):
        broker.send("/queue/a", {}, b"")


@pytest.mark.parametrize("policy", ["drop-oldest", "disconnect"])
def test_slow_topic_subscriber(policy):
    broker, _ = make_broker(slow_topic_limit=3, slow_topic_policy=policy)
    slow, fast = FakeConsumer(), FakeConsumer()
    slow.writable = False
    slow_sub = subscribe(broker, slow, "/topic/t", ack="auto", sub_id="slow")
    subscribe(broker, fast, "/topic/t", ack="auto", sub_id="fast")
    for i in range(5):
        broker.send("/topic/t", {}, b"%d" % i)
    assert [body for _, body, _, _ in fast.delivered] == [b"0", b"1", b"2", b"3", b"4"]
    assert slow.delivered == []
    if policy == "drop-oldest":
        assert [m.body for m in slow_sub.backlog] == [b"2", b"3", b"4"]
        assert broker.stats["slow_consumer_dropped"] == 2
        assert slow.slow == []
        slow.writable = True
        broker.ready(slow_sub)
        assert [body for _, body, _, _ in slow.delivered] == [b"2", b"3", b"4"]
    else:
        assert len(slow.slow) == 1
        assert slow.slow[0][0] == "slow"
        assert "/topic/t" in slow.slow[0][1]
        assert broker.stats["slow_consumer_disconnected"] == 1


def test_restore_from_store():
    store = MemoryStore()
    owner = durable_owner("cid", "sub")
    store.put_subscription(owner, "cid", "sub", "/topic/t")
    store.put(stored(3, "/queue/r", body=b"third", delivery_count=0))
    store.put(stored(1, "/queue/r", body=b"first", delivery_count=2))
    store.put(stored(2, owner, destination="/topic/t", body=b"durable", delivery_count=1))
    gone = durable_owner("cid", "removed")
    store.put(stored(4, gone, destination="/topic/t", body=b"orphan"))
    broker, _ = make_broker(store)

    queue = broker.destinations["/queue/r"]
    assert [(m.body, m.delivery_count, m.key) for m in queue.pending] == [
        (b"first", 2, 1),
        (b"third", 0, 3),
    ]
    assert all(m.persistent for m in queue.pending)
    assert queue.count == 2
    durable = broker.durables[owner]
    assert (durable.client_id, durable.name, durable.topic) == ("cid", "sub", "/topic/t")
    assert [m.body for m in durable.queue.pending] == [b"durable"]
    assert broker.destinations["/topic/t"].durables == {owner: durable}
    assert 4 not in store.messages  # its subscription is gone
    assert broker.new_key() == 5

    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/queue/r")
    assert consumer.delivered == [("s", b"first", 3, True), ("s", b"third", 1, False)]
    assert store.messages[1].delivery_count == 3
    settle(broker, sub)
    assert 1 not in store.messages

    durable_consumer = FakeConsumer()
    subscribe(
        broker, durable_consumer, "/topic/t", ack="auto", sub_id="sub", durable=("cid", "sub")
    )
    assert durable_consumer.delivered == [("sub", b"durable", 2, True)]
    assert 2 not in store.messages


def test_held_back_topic_message_that_expired_is_not_delivered():
    broker, clock = make_broker()
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/topic/t", prefetch=1)
    broker.send("/topic/t", {}, b"m1")
    broker.send("/topic/t", {"expires": "500"}, b"m2")  # held back: prefetch used up
    broker.send("/topic/t", {}, b"m3")
    clock.advance(1)
    settle(broker, sub)
    settle(broker, sub)
    assert [body for _, body, _, _ in consumer.delivered] == [b"m1", b"m3"]
    assert broker.stats["expired"] == 1
