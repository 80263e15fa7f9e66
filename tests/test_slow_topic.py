"""
Slow topic subscribers under ``--slow-topic-policy block`` (the default): a
publisher whose message takes a subscriber's backlog to
``--slow-topic-limit`` is blocked (the broker stops reading from it) until
every backlog is back under 90% of the limit; a subscriber that holds it
blocked for ``--slow-topic-timeout`` seconds is disconnected; past twice the
limit the oldest messages are dropped anyway. ``drop-oldest`` and
``disconnect`` never block.

The broker's logic is tested on :class:`~stomptw.broker.Broker` objects with
fake consumers and a :class:`~twisted.internet.task.Clock`; then end to end
on a real broker, with a raw-socket subscriber that stops reading (the
broker's side of its socket has a small, fixed send buffer, as in
``test_delivery``).
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import pytest_twisted
from clients import TIMEOUT, ClientPool, run_clients, wait_until
from test_delivery import (
    KIB,
    _raw_frames_until_closed,
    _stalled_raw_subscriber,
    stats,
    topic_name,
)
from twisted.internet.task import Clock
from twisted.python import usage

from stomptw.broker import Broker, Subscription
from stomptw.config import BrokerConfig
from stomptw.store import MemoryStore
from stomptw.tap import Options

# -- the broker's logic, with a Clock ------------------------------------------------------


class Consumer:
    """
    A fake IMessageConsumer: records deliveries, blocks and slow-consumer
    verdicts. ``budget`` (when not None) is how many more messages it takes
    before its output is "full" (``writable`` turns False).
    """

    def __init__(self, writable: bool = True) -> None:
        self.writable = writable
        self.budget: int | None = None
        self.delivered: list[bytes] = []
        self.blocked: list[str] = []
        self.unblocked: list[str] = []
        self.slow: list[tuple[str, str]] = []
        self._ids = itertools.count(1)

    def deliver(self, sub: Subscription, message) -> bool:
        self.delivered.append(message.body)
        if self.budget is not None:
            self.budget -= 1
            if self.budget <= 0:
                self.writable = False
        return True

    def block(self, queue) -> None:
        self.blocked.append(queue.name)

    def unblock(self, queue) -> None:
        self.unblocked.append(queue.name)

    def slow_consumer(self, sub: Subscription, reason: str) -> None:
        self.slow.append((sub.id, reason))

    @property
    def is_blocked(self) -> bool:
        return len(self.blocked) > len(self.unblocked)

    def drain(self, broker: Broker, sub: Subscription, count: int | None = None) -> None:
        """Its output drains: take ``count`` messages (all, if None)."""
        self.budget = count
        self.writable = True
        broker.ready(sub)


def make_broker(**overrides) -> tuple[Broker, Clock]:
    clock = Clock()
    broker = Broker(BrokerConfig(store="memory", **overrides), MemoryStore(), clock)
    broker.open()
    return broker, clock


def subscribe(broker: Broker, consumer: Consumer, topic: str = "/topic/t", sub_id: str = "s"):
    sub = Subscription(consumer, sub_id, topic, "auto")
    broker.subscribe(sub)
    return sub


def publish(broker: Broker, producer, count: int, start: int = 0, topic: str = "/topic/t"):
    for i in range(start, start + count):
        broker.send(topic, {}, b"%d" % i, producer)


def bodies(start: int, stop: int) -> list[bytes]:
    return [b"%d" % i for i in range(start, stop)]


def test_block_is_the_default():
    config = BrokerConfig()
    assert config.slow_topic_policy == "block"
    assert config.slow_topic_timeout == 30.0


def test_block_then_resume_under_90_percent():
    broker, _ = make_broker(slow_topic_limit=10)
    slow, fast, producer = Consumer(writable=False), Consumer(), Consumer()
    slow_sub = subscribe(broker, slow, sub_id="slow")
    subscribe(broker, fast, sub_id="fast")
    publish(broker, producer, 9)
    assert producer.blocked == []
    # The 10th message reaches the limit: accepted, then the producer waits.
    publish(broker, producer, 1, start=9)
    assert producer.blocked == ["/topic/t"]
    assert broker.stats["producers_blocked"] == 1
    assert len(slow_sub.backlog) == 10
    # Frames already read still get in (and block nobody twice).
    publish(broker, producer, 2, start=10)
    assert producer.blocked == ["/topic/t"]
    assert broker.stats["producers_blocked"] == 1
    # Back to 9 (not under 90% of 10): still blocked.
    slow.drain(broker, slow_sub, 3)
    assert len(slow_sub.backlog) == 9
    assert producer.unblocked == []
    slow.drain(broker, slow_sub, 1)
    assert len(slow_sub.backlog) == 8
    assert producer.unblocked == ["/topic/t"]
    slow.drain(broker, slow_sub)
    assert slow.delivered == fast.delivered == bodies(0, 12)
    assert broker.stats["slow_consumer_dropped"] == 0
    assert broker.stats["dropped"] == 0


def test_resume_waits_for_every_backlog():
    broker, _ = make_broker(slow_topic_limit=10)
    a, b, producer = Consumer(writable=False), Consumer(writable=False), Consumer()
    sub_a = subscribe(broker, a, sub_id="a")
    subscribe(broker, b, sub_id="b")
    publish(broker, producer, 10)
    assert producer.is_blocked
    a.drain(broker, sub_a)
    # b is still at the limit.
    assert producer.is_blocked
    b_sub = broker.destinations["/topic/t"].subscriptions[1]
    b.drain(broker, b_sub, 2)
    assert len(b_sub.backlog) == 8
    assert not producer.is_blocked


def test_publisher_not_blocked_by_its_own_backlog():
    broker, _ = make_broker(slow_topic_limit=10)
    producer = Consumer(writable=False)
    own = subscribe(broker, producer, sub_id="own")
    publish(broker, producer, 20)
    # It would wait for itself: not blocked, and nothing lost up to 2x.
    assert producer.blocked == []
    assert broker.stats["producers_blocked"] == 0
    assert len(own.backlog) == 20
    producer.drain(broker, own)
    assert producer.delivered == bodies(0, 20)


def test_self_subscriber_blocked_by_another_then_let_go_despite_its_own():
    broker, _ = make_broker(slow_topic_limit=10)
    producer, other = Consumer(writable=False), Consumer(writable=False)
    own = subscribe(broker, producer, sub_id="own")
    other_sub = subscribe(broker, other, sub_id="other")
    publish(broker, producer, 10)
    assert producer.is_blocked
    # Only its own backlog is still full: it must not wait for itself.
    other.drain(broker, other_sub)
    assert not producer.is_blocked
    assert len(own.backlog) == 10


def test_twice_the_limit_drops_oldest():
    broker, _ = make_broker(slow_topic_limit=10)
    slow = Consumer(writable=False)
    slow_sub = subscribe(broker, slow)
    # No producer to block (as the admin API publishes): the 2x bound holds.
    publish(broker, None, 25)
    assert len(slow_sub.backlog) == 20
    assert broker.stats["slow_consumer_dropped"] == 5
    assert broker.stats["producers_blocked"] == 0
    slow.drain(broker, slow_sub)
    assert slow.delivered == bodies(5, 25)


def test_timeout_disconnects_the_stuck_subscriber_and_lets_producers_go():
    broker, clock = make_broker(slow_topic_limit=10, slow_topic_timeout=30)
    slow, fast, producer = Consumer(writable=False), Consumer(), Consumer()
    slow_sub = subscribe(broker, slow, sub_id="slow")
    subscribe(broker, fast, sub_id="fast")
    publish(broker, producer, 10)
    assert producer.is_blocked
    clock.advance(29)
    assert slow.slow == []
    clock.advance(1)
    assert len(slow.slow) == 1
    sub_id, reason = slow.slow[0]
    assert sub_id == "slow"
    assert "/topic/t" in reason and "30 seconds" in reason
    assert broker.stats["slow_consumer_disconnected"] == 1
    assert not producer.is_blocked
    assert slow_sub.backlog == type(slow_sub.backlog)()
    # The session goes (as the protocol does on slow_consumer).
    broker.unsubscribe(slow_sub)
    publish(broker, producer, 5, start=10)
    assert fast.delivered == bodies(0, 15)
    assert producer.blocked == ["/topic/t"]


def test_catching_up_in_time_cancels_the_timeout():
    broker, clock = make_broker(slow_topic_limit=10, slow_topic_timeout=30)
    slow, producer = Consumer(writable=False), Consumer()
    slow_sub = subscribe(broker, slow)
    publish(broker, producer, 10)
    clock.advance(20)
    slow.drain(broker, slow_sub)
    assert not producer.is_blocked
    clock.advance(100)
    assert slow.slow == []
    assert broker.stats["slow_consumer_disconnected"] == 0
    assert all(c.func.__name__ != "_timed_out" for c in clock.getDelayedCalls())


def test_timeout_zero_never_disconnects():
    broker, clock = make_broker(slow_topic_limit=10, slow_topic_timeout=0)
    slow, producer = Consumer(writable=False), Consumer()
    subscribe(broker, slow)
    publish(broker, producer, 10)
    clock.advance(3600)
    assert slow.slow == []
    assert producer.is_blocked


def test_unsubscribing_the_stuck_subscriber_lets_producers_go():
    broker, clock = make_broker(slow_topic_limit=10)
    slow, producer = Consumer(writable=False), Consumer()
    slow_sub = subscribe(broker, slow)
    publish(broker, producer, 10)
    assert producer.is_blocked
    broker.unsubscribe(slow_sub)
    assert not producer.is_blocked
    # Its timer went with it.
    clock.advance(100)
    assert slow.slow == []
    assert "/topic/t" not in broker.destinations


@pytest.mark.parametrize("policy", ["drop-oldest", "disconnect"])
def test_other_policies_never_block(policy):
    broker, clock = make_broker(slow_topic_limit=3, slow_topic_policy=policy)
    slow, producer = Consumer(writable=False), Consumer()
    slow_sub = subscribe(broker, slow, sub_id="slow")
    publish(broker, producer, 5)
    assert producer.blocked == []
    assert broker.stats["producers_blocked"] == 0
    clock.advance(100)
    if policy == "drop-oldest":
        assert [m.body for m in slow_sub.backlog] == bodies(2, 5)
        assert broker.stats["slow_consumer_dropped"] == 2
        assert slow.slow == []
    else:
        assert len(slow.slow) == 1
        assert "fell more than 3 messages behind" in slow.slow[0][1]
        assert broker.stats["slow_consumer_disconnected"] == 1


def test_options():
    options = Options()
    options.parseOptions(["--slow-topic-timeout", "2.5"])
    assert options.config.slow_topic_timeout == 2.5
    assert options.config.slow_topic_policy == "block"
    options = Options()
    options.parseOptions(["--slow-topic-policy", "drop-oldest", "--slow-topic-timeout", "0"])
    assert options.config.slow_topic_policy == "drop-oldest"
    assert options.config.slow_topic_timeout == 0
    with pytest.raises(usage.UsageError, match="--slow-topic-policy"):
        Options().parseOptions(["--slow-topic-policy", "wait"])
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--slow-topic-timeout", "-1"])


# -- end to end ---------------------------------------------------------------------------

BODY = 64 * KIB
LIMIT = 10


def _body(seq: int) -> bytes:
    return f"{seq:06d}".encode() + b"x" * (BODY - 6)


def _raw_producer(pool: ClientPool, port: int, dest: str, total: int, done: threading.Event):
    """
    A raw-socket producer that sends ``total`` messages (the last with a
    receipt) from its own thread, as fast as the broker reads them; ``done``
    is set once the receipt arrives.
    """
    raw = pool.raw(port)
    raw.connect()
    raw.sock.settimeout(4 * TIMEOUT)

    def push():
        for seq in range(total):
            headers = {"destination": dest, "seq": str(seq)}
            if seq == total - 1:
                headers["receipt"] = "last"
            raw.send("SEND", headers, _body(seq))
        frame = raw.read_frame()
        assert frame.command == "RECEIPT", frame
        done.set()

    thread = threading.Thread(target=push, daemon=True)
    thread.start()
    return raw, thread


def _read_messages(raw, count: int) -> list[int]:
    seqs = []
    while len(seqs) < count:
        frame = raw.read_frame()
        assert frame.command == "MESSAGE", frame
        seqs.append(int(frame.headers["seq"]))
    return seqs


def _published_settles(running, below: int) -> int:
    """Wait until the broker stops taking messages (under ``below``); return the count."""
    last = -1
    while True:
        now = stats(running)["published"]
        if now == last:
            assert now < below, now
            return now
        last = now
        time.sleep(0.3)


def _publisher_blocked_by_stalled_subscriber(pool: ClientPool, running, dest: str, total: int):
    """
    A subscriber that never reads, one that does (stomp.py), and a raw
    producer of ``total`` messages, started and blocked by the first;
    returns (stalled, reader, done, producer thread).
    """
    stalled = _stalled_raw_subscriber(pool, running, dest)
    reader = pool.tcp(running.tcp_port)
    reader.subscribe(dest)
    done = threading.Event()
    _, thread = _raw_producer(pool, running.tcp_port, dest, total, done)
    wait_until(lambda: stats(running)["producers_blocked"] > 0, "producer blocked")
    return stalled, reader, done, thread


@pytest_twisted.ensureDeferred
async def test_fast_publisher_is_paused_and_nothing_is_lost(make_broker):
    running = await make_broker(write_high_water=16 * KIB, slow_topic_limit=LIMIT)
    dest = topic_name("block")
    total = 80

    def scenario(pool: ClientPool):
        stalled, reader, done, thread = _publisher_blocked_by_stalled_subscriber(
            pool, running, dest, total
        )
        # The broker stopped reading from the producer: its SENDs wait.
        published = _published_settles(running, total)
        assert published <= 2 * LIMIT + 8, published
        assert not done.is_set()
        # The reader got what was published, no more.
        got = [int(m.headers["seq"]) for m in reader.next_messages(published)]
        assert got == list(range(published))
        # The stalled subscriber reads: everything flows, nothing dropped.
        assert _read_messages(stalled, total) == list(range(total))
        assert done.wait(TIMEOUT), "the producer's receipt"
        thread.join(TIMEOUT)
        got += [int(m.headers["seq"]) for m in reader.next_messages(total - published)]
        assert got == list(range(total))
        s = stats(running)
        assert s["published"] == total
        assert s["slow_consumer_dropped"] == s["dropped"] == 0
        assert s["slow_consumer_disconnected"] == 0

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_publisher_that_subscribes_to_its_topic_does_not_deadlock(make_broker):
    running = await make_broker(write_high_water=16 * KIB, slow_topic_limit=LIMIT)
    dest = topic_name("self")
    total = 2 * LIMIT - 4

    def scenario(pool: ClientPool):
        # It subscribes, then publishes without reading: what it sends piles
        # up for itself only; the broker must keep reading from it.
        raw = _stalled_raw_subscriber(pool, running, dest)
        for seq in range(total):
            headers = {"destination": dest, "seq": str(seq)}
            if seq == total - 1:
                headers["receipt"] = "last"
            raw.send("SEND", headers, _body(seq))
        seqs = []
        while True:
            frame = raw.read_frame()
            if frame.command == "RECEIPT":
                break
            assert frame.command == "MESSAGE", frame
            seqs.append(int(frame.headers["seq"]))
        seqs += _read_messages(raw, total - len(seqs))
        assert seqs == list(range(total))
        s = stats(running)
        assert s["producers_blocked"] == 0
        assert s["slow_consumer_dropped"] == 0

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_subscribing_publisher_blocked_by_another_reads_its_own(make_broker):
    running = await make_broker(write_high_water=16 * KIB, slow_topic_limit=LIMIT)
    dest = topic_name("selfother")
    total = 60

    def scenario(pool: ClientPool):
        stalled = _stalled_raw_subscriber(pool, running, dest)
        # A stomp.py client reads in its own thread while it publishes.
        producer = pool.tcp(running.tcp_port)
        producer.subscribe(dest)
        sender = threading.Thread(
            target=lambda: [
                producer.send(dest, _body(seq), headers={"seq": str(seq)}) for seq in range(total)
            ],
            daemon=True,
        )
        sender.start()
        wait_until(lambda: stats(running)["producers_blocked"] > 0, "producer blocked")
        assert _read_messages(stalled, total) == list(range(total))
        sender.join(TIMEOUT)
        got = [int(m.headers["seq"]) for m in producer.next_messages(total)]
        assert got == list(range(total))
        assert stats(running)["slow_consumer_dropped"] == 0

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_timeout_disconnects_stuck_subscriber_and_publisher_resumes(make_broker):
    running = await make_broker(
        write_high_water=16 * KIB, slow_topic_limit=LIMIT, slow_topic_timeout=0.5
    )
    dest = topic_name("timeout")
    total = 80

    def scenario(pool: ClientPool):
        stalled, reader, done, thread = _publisher_blocked_by_stalled_subscriber(
            pool, running, dest, total
        )
        # Nobody reads the stalled subscriber: after 0.5 s it is disconnected
        # and the producer goes on to the end.
        assert done.wait(2 * TIMEOUT), "the producer's receipt"
        thread.join(TIMEOUT)
        got = [int(m.headers["seq"]) for m in reader.next_messages(total)]
        assert got == list(range(total))
        s = stats(running)
        assert s["slow_consumer_disconnected"] >= 1
        frames = _raw_frames_until_closed(stalled)
        assert frames[-1].command == "ERROR"
        assert frames[-1].headers["message"] == "slow consumer"
        assert "holding its publishers blocked" in frames[-1].body.decode()
        assert all(f.command == "MESSAGE" for f in frames[:-1])

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_commit_to_a_topic_is_accepted_then_blocks(make_broker):
    running = await make_broker(write_high_water=16 * KIB, slow_topic_limit=LIMIT)
    dest = topic_name("tx")
    count = 2 * LIMIT - 2

    def scenario(pool: ClientPool):
        stalled = _stalled_raw_subscriber(pool, running, dest)
        producer = pool.raw(running.tcp_port)
        producer.connect()
        producer.send("BEGIN", {"transaction": "tx"})
        for seq in range(count):
            producer.send(
                "SEND", {"destination": dest, "seq": str(seq), "transaction": "tx"}, _body(seq)
            )
        producer.send("COMMIT", {"transaction": "tx", "receipt": "commit"})
        frame = producer.read_frame()
        assert frame.command == "RECEIPT" and frame.headers["receipt-id"] == "commit", frame
        assert stats(running)["producers_blocked"] == 1
        # Blocked: the next frame waits until the subscriber catches up.
        producer.send(
            "SEND", {"destination": dest, "seq": str(count), "receipt": "after"}, _body(count)
        )
        time.sleep(0.3)
        assert stats(running)["published"] == count
        assert _read_messages(stalled, count + 1) == list(range(count + 1))
        frame = producer.read_frame()
        assert frame.headers["receipt-id"] == "after", frame
        assert stats(running)["slow_consumer_dropped"] == 0

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_default_broker_blocks_topic_publishers(make_broker):
    running = await make_broker()
    assert running.broker.config.slow_topic_policy == "block"
    assert running.broker.config.slow_topic_timeout == 30.0
