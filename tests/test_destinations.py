"""
Queues and topics (:mod:`stomptw.destinations`): round robin and holding
messages until someone subscribes, fan-out without retention, what a
consumer that declines or closes mid-dispatch does to a queue, queue limits
(block and reject), expiry at dispatch, prefetch on topics, and the slow
topic subscriber policies. On a broker with fake consumers (fakes.py) or
real sessions (the ``env`` fixture), with a Clock.

Slow topic subscribers under ``--slow-topic-policy block`` (the default): a
publisher whose message takes a subscriber's backlog to
``--slow-topic-limit`` is blocked until every backlog is back under 90% of
the limit; a subscriber that holds it blocked for ``--slow-topic-timeout``
seconds is disconnected; past twice the limit the oldest messages are
dropped anyway. ``drop-oldest`` and ``disconnect`` never block. Their end to
end tests are in test_delivery.py.
"""

from __future__ import annotations

import itertools

import pytest
from fakes import FakeConsumer, make_broker, settle, subscribe
from inprocess import Client, assert_error
from zope.interface.verify import verifyObject

from stomptw.broker import Broker, DestinationFull, Subscription
from stomptw.interfaces import IMessageConsumer
from stomptw.store import MemoryStore

# -- queues --------------------------------------------------------------------------------


def test_queue_round_robin(env):
    consumers = [env.client() for _ in range(3)]
    for i, c in enumerate(consumers):
        c.connect()
        c.send("SUBSCRIBE", destination="/queue/rr", id=str(i))
    producer = env.client()
    producer.connect()
    for i in range(9):
        producer.send("SEND", str(i).encode(), destination="/queue/rr")
    bodies = [[f.body for f in c.frames()] for c in consumers]
    assert [len(b) for b in bodies] == [3, 3, 3]
    assert sorted(sum(bodies, [])) == [str(i).encode() for i in range(9)]


def test_queue_keeps_messages_until_subscribed(env):
    producer = env.client()
    producer.connect()
    for i in range(3):
        producer.send("SEND", str(i).encode(), destination="/queue/later")
    consumer = env.client()
    consumer.connect()
    consumer.send("SUBSCRIBE", destination="/queue/later", id="1")
    assert [f.body for f in consumer.frames()] == [b"0", b"1", b"2"]


class _Spinning(Exception):
    pass


def test_queue_dispatch_terminates_when_a_consumer_declines():
    """
    A consumer may decline a message (IMessageConsumer.deliver returns
    False: it cannot take it, e.g. too large for its transport), and the
    queue keeps it. The queue must then stop offering that message to that
    subscription in this pass, not offer it again and again to the one
    subscription still ready (the reactor would spin for ever).
    """
    broker = Broker()
    calls = []

    class Declining:
        writable = True

        def deliver(self, subscription, message) -> bool:
            calls.append(message)
            if len(calls) > 100:
                raise _Spinning
            return False

    broker.subscribe(Subscription(Declining(), "s", "/queue/q"))
    try:
        broker.send("/queue/q", {}, b"m")
    except _Spinning:
        pass
    assert len(calls) == 1, f"the queue offered the same message {len(calls)} times"
    assert [m.body for m in broker.destinations["/queue/q"].pending] == [b"m"]


def _ws_like_client(env) -> Client:
    """A client whose transport has a WebSocket-style outgoing message limit."""
    return Client(env.broker, env.clock, env.config, max_message_size=300)


def test_close_during_queue_dispatch_loses_and_duplicates_nothing(env):
    """
    A delivery that makes the consumer close (a message over its WebSocket
    limit) re-enters the Queue mid-dispatch: the
    session ends, its subscriptions are removed and its unacknowledged
    messages requeued while Queue._dispatch is on the stack. The big message
    and the requeued one each reach the other consumer exactly once, and the
    queue ends empty.
    """
    small = _ws_like_client(env)
    small.connect()
    small.send("SUBSCRIBE", destination="/queue/r", id="s", ack="client-individual")
    big_consumer = env.client()
    big_consumer.connect()
    big_consumer.send("SUBSCRIBE", destination="/queue/r", id="b", ack="client-individual")
    producer = env.client()
    producer.connect()
    producer.send("SEND", b"m0", destination="/queue/r")
    producer.send("SEND", b"m1", destination="/queue/r")
    assert [f.body for f in small.frames()] == [b"m0"]
    assert [f.body for f in big_consumer.frames()] == [b"m1"]
    # Round robin: the next message is offered to `small` first.
    producer.send("SEND", b"B" * 1000, destination="/queue/r")
    assert_error(small, "too large")
    bodies = sorted(f.body for f in big_consumer.frames())
    assert bodies == sorted([b"m0", b"B" * 1000])
    queue = env.broker.destinations["/queue/r"]
    assert not queue.pending and len(queue.subscriptions) == 1
    assert len(big_consumer.session.subscriptions["b"].unacked) == 3


def test_fake_consumer_provides_interface():
    assert verifyObject(IMessageConsumer, FakeConsumer(), tentative=True)


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


# -- topics --------------------------------------------------------------------------------


def test_topic_fan_out_and_no_retention(env):
    producer = env.client()
    producer.connect()
    producer.send("SEND", b"before", destination="/topic/t")
    subs = [env.client() for _ in range(3)]
    for s in subs:
        s.connect()
        s.send("SUBSCRIBE", destination="/topic/t", id="t")
    producer.send("SEND", b"after", destination="/topic/t")
    for s in subs:
        assert [f.body for f in s.frames()] == [b"after"]


class _Recorder:
    """A minimal IMessageConsumer."""

    writable = True

    def __init__(self, on_deliver=None) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.on_deliver = on_deliver

    def deliver(self, subscription, message) -> bool:
        self.got.append((subscription.id, message.body))
        if self.on_deliver is not None:
            self.on_deliver(subscription)
        return True


def test_topic_does_not_deliver_to_a_subscription_unsubscribed_during_publish():
    """
    A subscription unsubscribed while a publish is running (here, by another
    subscription's delivery, through the public IMessageConsumer API) gets
    nothing once its unsubscribe took effect: Topic.publish goes through a
    snapshot of its subscriptions and skips the inactive ones, and
    ``Broker.unsubscribe`` marks the subscription inactive.
    """
    broker = Broker()
    consumer = _Recorder()
    first = Subscription(consumer, "first", "/topic/t")
    second = Subscription(consumer, "second", "/topic/t")
    consumer.on_deliver = lambda sub: broker.unsubscribe(second) if sub is first else None
    broker.subscribe(first)
    broker.subscribe(second)
    broker.send("/topic/t", {}, b"m")
    assert consumer.got == [("first", b"m")]


def test_topic_prefetch_count_holds_messages_back_until_acked(env):
    """
    prefetch-count caps topic deliveries too: what is over it waits in the
    subscriber's backlog and follows as messages are acknowledged.
    """
    consumer = env.client()
    consumer.connect()
    consumer.send(
        "SUBSCRIBE",
        destination="/topic/p",
        id="s",
        ack="client-individual",
        **{"prefetch-count": "1"},
    )
    producer = env.client()
    producer.connect()
    for i in range(3):
        producer.send("SEND", str(i).encode(), destination="/topic/p")
    got = []
    for _ in range(3):
        (message,) = consumer.frames()
        got.append(message.body)
        consumer.send("ACK", id=message.headers["ack"])
    assert got == [b"0", b"1", b"2"]
    assert consumer.frames() == []


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


# -- slow topic subscribers under the block policy -----------------------------------------


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


def subscribe_topic(broker: Broker, consumer: Consumer, topic: str = "/topic/t", sub_id: str = "s"):
    sub = Subscription(consumer, sub_id, topic, "auto")
    broker.subscribe(sub)
    return sub


def publish(broker: Broker, producer, count: int, start: int = 0, topic: str = "/topic/t"):
    for i in range(start, start + count):
        broker.send(topic, {}, b"%d" % i, producer)


def bodies(start: int, stop: int) -> list[bytes]:
    return [b"%d" % i for i in range(start, stop)]


def test_block_then_resume_under_90_percent():
    broker, _ = make_broker(slow_topic_limit=10)
    slow, fast, producer = Consumer(writable=False), Consumer(), Consumer()
    slow_sub = subscribe_topic(broker, slow, sub_id="slow")
    subscribe_topic(broker, fast, sub_id="fast")
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
    sub_a = subscribe_topic(broker, a, sub_id="a")
    subscribe_topic(broker, b, sub_id="b")
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
    own = subscribe_topic(broker, producer, sub_id="own")
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
    own = subscribe_topic(broker, producer, sub_id="own")
    other_sub = subscribe_topic(broker, other, sub_id="other")
    publish(broker, producer, 10)
    assert producer.is_blocked
    # Only its own backlog is still full: it must not wait for itself.
    other.drain(broker, other_sub)
    assert not producer.is_blocked
    assert len(own.backlog) == 10


def test_twice_the_limit_drops_oldest():
    broker, _ = make_broker(slow_topic_limit=10)
    slow = Consumer(writable=False)
    slow_sub = subscribe_topic(broker, slow)
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
    slow_sub = subscribe_topic(broker, slow, sub_id="slow")
    subscribe_topic(broker, fast, sub_id="fast")
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
    slow_sub = subscribe_topic(broker, slow)
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
    subscribe_topic(broker, slow)
    publish(broker, producer, 10)
    clock.advance(3600)
    assert slow.slow == []
    assert producer.is_blocked


def test_unsubscribing_the_stuck_subscriber_lets_producers_go():
    broker, clock = make_broker(slow_topic_limit=10)
    slow, producer = Consumer(writable=False), Consumer()
    slow_sub = subscribe_topic(broker, slow)
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
    slow_sub = subscribe_topic(broker, slow, sub_id="slow")
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
