"""
Paging: a queue keeps at most --queue-memory-window persistent messages
waiting in memory; those behind stay only in the store and are read back in
order as consumers make room, so a backlog is bounded by disk, not memory.

Sans-IO on a Clock with a store that reads back at once; then the SQLite
store on the real reactor (reads in its thread, a restart with a backlog
larger than the window); then a real ``twistd -n stomptw`` whose RSS stays
flat while 80 MiB of persistent messages pile up, drained in order.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest
import pytest_twisted
from clients import encode_frame
from test_memory_bound import MiB, RawClient, start_broker  # noqa: F401 (a fixture)
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.store import MemoryStore, SQLiteStore, StoredPage
from stomptw.testing import BrokerOnClock

WINDOW = 10


class DiskLike(MemoryStore):
    """A memory store that says it is durable, so that queues page to it."""

    durable = True

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self, owner: str, first_key: int, last_key: int, limit: int) -> defer.Deferred:
        self.reads += 1
        return super().read(owner, first_key, last_key, limit)


def paging_env() -> tuple[BrokerOnClock, DiskLike]:
    store = DiskLike()
    return BrokerOnClock(store=store, queue_memory_window=WINDOW), store


def send(client, body: bytes, persistent: bool = True, **headers: str) -> None:
    if persistent:
        headers["persistent"] = "true"
    client.send("SEND", body, destination="/queue/q", **headers)


def drain(env: BrokerOnClock, ack: str = "client-individual", prefetch: int = 0) -> list[bytes]:
    consumer = env.connect()
    extra = {"prefetch-count": str(prefetch)} if prefetch else {}
    consumer.send("SUBSCRIBE", destination="/queue/q", id="1", ack=ack, **extra)
    bodies = []
    while True:
        frames = consumer.frames()
        if not frames:
            break
        for frame in frames:
            assert frame.command == "MESSAGE", frame
            bodies.append(frame.body)
            if ack != "auto":
                consumer.send("ACK", id=frame.headers["ack"])
    return bodies


def test_beyond_the_window_persistent_messages_are_left_to_the_store():
    env, store = paging_env()
    producer = env.connect()
    for n in range(100):
        send(producer, b"%d" % n)
    queue = env.broker.destinations["/queue/q"]
    assert len(queue.pending) == WINDOW
    assert queue.paged == 90 and queue.count == 100
    assert queue.waiting() == 100
    (page,) = queue.tail
    assert isinstance(page, StoredPage) and page.count == 90
    # Every one of them is in the store; the queue holds no object for the paged ones.
    assert len(store.messages) == 100
    assert all(not isinstance(item, type(queue.pending[0])) for item in queue.tail)


def test_a_consumer_gets_every_message_in_order_once():
    env, store = paging_env()
    producer = env.connect()
    for n in range(100):
        send(producer, b"%d" % n)
    assert drain(env) == [b"%d" % n for n in range(100)]
    queue = env.broker.destinations.get("/queue/q")
    assert queue is None or (queue.count == 0 and queue.paged == 0)
    assert store.messages == {}
    # Read back in runs, not one by one.
    assert 1 < store.reads <= 100 // (WINDOW // 2) + 2


def test_non_persistent_messages_keep_their_place_behind_paged_ones():
    env, store = paging_env()
    producer = env.connect()
    expected = []
    for n in range(40):
        persistent = n % 3 != 0
        send(producer, b"%d" % n, persistent=persistent)
        expected.append(b"%d" % n)
    assert drain(env, prefetch=3) == expected


def test_a_higher_priority_message_still_goes_ahead_of_a_paged_backlog():
    env, store = paging_env()
    producer = env.connect()
    send(producer, b"low", priority="1")
    for n in range(30):
        send(producer, b"%d" % n)
    send(producer, b"urgent", priority="9")
    bodies = drain(env, ack="auto")
    assert bodies[0] == b"urgent"
    assert sorted(bodies) == sorted([b"low", b"urgent"] + [b"%d" % n for n in range(30)])


def test_purge_forgets_the_paged_messages_in_the_store_too():
    env, store = paging_env()
    producer = env.connect()
    for n in range(50):
        send(producer, b"%d" % n)
    assert env.broker.purge("/queue/q") == 50
    assert store.messages == {}
    queue = env.broker.destinations.get("/queue/q")
    assert queue is None or (queue.count == 0 and queue.bytes == 0 and not queue.tail)


def test_queue_limits_count_paged_messages():
    store = DiskLike()
    env = BrokerOnClock(store=store, queue_memory_window=WINDOW, max_queue_length=30)
    env.config = env.broker.context.config
    producer = env.connect()
    for n in range(29):
        send(producer, b"%d" % n)
    assert producer.transport.reading
    send(producer, b"29")
    assert not producer.transport.reading  # blocked: 30 held, 20 of them paged
    queue = env.broker.destinations["/queue/q"]
    assert queue.count == 30 and queue.paged == 20


def test_a_durable_subscription_pages_too():
    env, store = paging_env()
    subscriber = env.connect(**{"client-id": "c1"})
    subscriber.send(
        "SUBSCRIBE",
        destination="/topic/t",
        id="d",
        ack="client-individual",
        **{"activemq.subscriptionName": "s"},
    )
    subscriber.send("DISCONNECT")
    subscriber.lose()
    producer = env.connect()
    for n in range(60):
        producer.send("SEND", b"%d" % n, destination="/topic/t", persistent="true")
    (durable,) = env.broker.durables.values()
    assert durable.queue.paged == 60 - WINDOW
    back = env.connect(**{"client-id": "c1"})
    back.send(
        "SUBSCRIBE",
        destination="/topic/t",
        id="d",
        ack="auto",
        **{"activemq.subscriptionName": "s"},
    )
    bodies = []
    while frames := back.frames():
        bodies.extend(f.body for f in frames)
    assert bodies == [b"%d" % n for n in range(60)]


def test_the_memory_store_never_pages():
    env = BrokerOnClock(queue_memory_window=WINDOW)
    producer = env.connect()
    for n in range(50):
        send(producer, b"%d" % n)
    queue = env.broker.destinations["/queue/q"]
    assert len(queue.pending) == 50 and queue.paged == 0


# -- the SQLite store ------------------------------------------------------------------------


def sqlite_broker(tmp_path, window: int = WINDOW) -> Broker:
    config = BrokerConfig(queue_memory_window=window)
    broker = Broker(config, SQLiteStore(str(tmp_path), reactor), reactor)
    broker.open()
    return broker


async def consume(broker: Broker, destination: str, count: int, seconds: float = 20) -> list:
    """Take ``count`` messages of ``destination`` through the Python API (auto ack)."""
    from stomptw.application import Messaging

    got: list[bytes] = []
    subscription = Messaging.of(broker).subscribe(destination, lambda d: got.append(d.body))
    deadline = time.monotonic() + seconds
    while len(got) < count and time.monotonic() < deadline:
        await deferLater(reactor, 0.01, lambda: None)
    subscription.cancel()
    return got


@pytest_twisted.ensureDeferred
async def test_a_backlog_beyond_the_window_is_opened_without_reading_it_all(tmp_path):
    broker = sqlite_broker(tmp_path)
    for n in range(200):
        broker.send("/queue/big", {"persistent": "true"}, b"%d" % n)
    broker.send("/queue/small", {"persistent": "true"}, b"one")
    await broker.sync()
    await broker.store.close()

    again = sqlite_broker(tmp_path)
    try:
        big = again.destinations["/queue/big"]
        assert len(big.pending) == WINDOW and big.paged == 190 and big.count == 200
        assert again.destinations["/queue/small"].count == 1
        # New messages get keys after the paged ones, and wait behind them.
        message = again.send("/queue/big", {"persistent": "true"}, b"200")
        assert message.key > 201
        got = await consume(again, "/queue/big", 201)
        assert got == [b"%d" % n for n in range(201)]
        assert big.count == 0 and big.paged == 0
    finally:
        await again.store.close()


@pytest_twisted.ensureDeferred
async def test_paged_messages_of_a_crashed_broker_are_marked_as_possible_redeliveries(tmp_path):
    broker = sqlite_broker(tmp_path)
    for n in range(30):
        broker.send("/queue/q", {"persistent": "true"}, b"%d" % n)
    await broker.sync()
    # A crash: the store is left without its clean-close mark.
    store = broker.store
    store._writer.halt()
    store._conn.close()
    store._release_lock()

    again = sqlite_broker(tmp_path)
    try:
        from stomptw.application import Messaging

        seen: list[tuple[bytes, bool]] = []
        Messaging.of(again).subscribe("/queue/q", lambda d: seen.append((d.body, d.redelivered)))
        deadline = time.monotonic() + 20
        while len(seen) < 30 and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        assert [body for body, _ in seen] == [b"%d" % n for n in range(30)]
        assert all(redelivered for _, redelivered in seen)
        # Messages of this run are first deliveries, paged or not.
        seen.clear()
        for n in range(30):
            again.send("/queue/q", {"persistent": "true"}, b"new-%d" % n)
        while len(seen) < 30 and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        assert len(seen) == 30 and not any(redelivered for _, redelivered in seen)
    finally:
        await again.store.close()


# -- a real broker -------------------------------------------------------------------------------

BODY = 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
def test_a_real_broker_holds_a_backlog_bigger_than_its_memory_use_and_drains_it_in_order(
    start_broker,  # noqa: F811 (the fixture imported above)
):
    broker = start_broker(
        "--store",
        "sqlite",
        "--max-queue-bytes",
        "0",
        "--queue-memory-window",
        "200",
        "--memory-high-watermark",
        "0",
    )
    baseline = broker.rss()
    count = 20_000  # 78 MiB of bodies
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], broker.rss())
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    producer = RawClient(broker.tcp_port)
    producer.sock.settimeout(60)
    body = b"p" * BODY
    receipts = 0
    for seq in range(count):
        headers = {"destination": "/queue/paged", "persistent": "true", "seq": str(seq)}
        if seq % 500 == 499:
            headers["receipt"] = str(seq)
        producer.sock.sendall(encode_frame("SEND", headers, body))
        if seq % 500 == 499:
            frame = producer.read_frame(time.monotonic() + 60)
            assert frame.command == "RECEIPT", frame
            receipts += 1
    filled_peak = peak[0]
    growth = filled_peak - baseline
    # Without paging the queue would hold over 78 MiB; the window is 0.8 MiB.
    assert growth < 40 * MiB, (baseline / MiB, filled_peak / MiB)

    consumer = RawClient(broker.tcp_port)
    consumer.sock.settimeout(60)
    consumer.send(
        "SUBSCRIBE", {"destination": "/queue/paged", "id": "1", "ack": "client-individual"}
    )
    seen = []
    while len(seen) < count:
        frame = consumer.read_frame(time.monotonic() + 60)
        assert frame.command == "MESSAGE", frame
        seen.append(int(frame.headers["seq"]))
        consumer.send("ACK", {"id": frame.headers["ack"]})
    stop.set()
    assert seen == list(range(count))  # none lost, none twice, in order
    assert peak[0] - baseline < 40 * MiB
    assert "Traceback" not in broker.log()
    producer.sock.close()
    consumer.sock.close()


def test_a_full_durable_subscription_drops_its_oldest_paged_messages():
    store = DiskLike()
    env = BrokerOnClock(store=store, queue_memory_window=WINDOW, max_queue_length=25)
    subscriber = env.connect(**{"client-id": "c1"})
    durable_headers = {"activemq.subscriptionName": "s"}
    subscriber.send("SUBSCRIBE", destination="/topic/t", id="d", ack="auto", **durable_headers)
    subscriber.lose()
    producer = env.connect()
    for n in range(60):
        producer.send("SEND", b"%d" % n, destination="/topic/t", persistent="true")
    (durable,) = env.broker.durables.values()
    queue = durable.queue
    # Held at the limit: the oldest went, in memory first, then from the page.
    assert queue.count == 25
    assert len(store.messages) == 25
    assert env.broker.stats["dropped"] == 35
    back = env.connect(**{"client-id": "c1"})
    back.send("SUBSCRIBE", destination="/topic/t", id="d", ack="auto", **durable_headers)
    bodies = []
    while frames := back.frames():
        bodies.extend(f.body for f in frames)
    assert bodies == [b"%d" % n for n in range(35, 60)]
    assert queue.count == 0 and queue.bytes == 0 and queue.paged == 0
