"""
The broker's routing (:mod:`stomptw.broker`): destinations created on first
use (``/topic/`` names are topics, everything else is a queue) and
forgotten when idle, the names it refuses, purge, the room check
transactions make, ``expires`` and the default TTL, the expiry sweep, and
what it loads from its store when it opens. On a broker with a Clock and
fake consumers (fakes.py), or real sessions (the ``env`` fixture).
"""

from __future__ import annotations

import pytest
from fakes import FakeConsumer, make_broker, settle, stored, subscribe

from stomptw.broker import Broker, DestinationError, DestinationFull, durable_owner
from stomptw.destinations import Queue
from stomptw.store import MemoryStore
from stomptw.topics import Topic


def test_destinations_are_created_on_first_use_topics_by_their_prefix():
    broker = Broker()
    topic = broker.destination("/topic/prices")
    queue = broker.destination("/queue/orders")
    bare = broker.destination("orders")
    assert isinstance(topic, Topic) and topic.kind == "topic"
    assert isinstance(queue, Queue) and queue.kind == "queue"
    assert isinstance(bare, Queue), "a name without a prefix is a queue"
    assert broker.destination("/queue/orders") is queue
    assert set(broker.destinations) == {"/topic/prices", "/queue/orders", "orders"}
    # A dead-letter queue is a queue whose messages never die again.
    assert broker.destination("/queue/DLQ.orders").dead_letter
    assert not queue.dead_letter


@pytest.mark.parametrize("name", ["", "/queue/", "/topic/"])
def test_names_that_cannot_be_routed_are_refused(name):
    broker = Broker()
    with pytest.raises(DestinationError):
        Broker.check_destination(name)
    with pytest.raises(DestinationError):
        broker.send(name, {}, b"x")
    assert broker.destinations == {}
    assert broker.stats["published"] == 0


def test_a_queue_keeps_messages_until_consumed_a_topic_keeps_nothing():
    broker, _ = make_broker()
    broker.send("/queue/kept", {}, b"x")
    broker.send("/topic/gone", {}, b"x")
    assert broker.destinations["/queue/kept"].count == 1
    assert "/topic/gone" not in broker.destinations
    assert broker.stats["published"] == 2
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/queue/kept")
    settle(broker, sub)
    broker.unsubscribe(sub)
    assert "/queue/kept" not in broker.destinations


def test_send_makes_a_message_with_a_fresh_id_and_its_persistence():
    broker, _ = make_broker()
    first = broker.send("/queue/a", {"persistent": "true", "x-user": "u"}, b"1")
    second = broker.send("/queue/a", {}, b"2")
    assert first.persistent and not second.persistent
    assert first.message_id != second.message_id
    assert first.destination == "/queue/a" and first.headers["x-user"] == "u"
    assert [key for key in broker.store.messages] == [first.key]


def test_purge_drops_what_waits_but_not_what_is_delivered():
    broker, _ = make_broker()
    for body in (b"1", b"2", b"3"):
        broker.send("/queue/p", {}, body)
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/queue/p", prefetch=1)
    assert broker.purge("/queue/p") == 2
    queue = broker.destinations["/queue/p"]
    assert queue.count == 1 and not queue.pending
    assert broker.purge("/queue/p") == 0
    settle(broker, sub)
    broker.unsubscribe(sub)
    assert "/queue/p" not in broker.destinations
    with pytest.raises(KeyError):
        broker.purge("/queue/p")
    subscribe(broker, FakeConsumer(), "/topic/t", ack="auto")
    with pytest.raises(DestinationError, match="only queues hold messages"):
        broker.purge("/topic/t")


def test_check_room_refuses_what_would_take_a_queue_over_its_limit():
    broker, _ = make_broker(max_queue_length=3, overflow="reject")
    broker.send("/queue/r", {}, b"x")
    broker.check_room("/queue/r", 2, 100)  # 1 + 2: fits
    with pytest.raises(DestinationFull) as info:
        broker.check_room("/queue/r", 3, 100)
    assert "1 messages and 3 more, the limit is 3" in info.value.reason
    # Asking about a destination does not create it.
    broker.check_room("/queue/none", 1, 1)
    assert "/queue/none" not in broker.destinations
    # Topics hold nothing: there is always room.
    broker.check_room("/topic/t", 1000, 10**9)
    assert "/topic/t" not in broker.destinations


def test_the_senders_expires_wins_over_the_default_ttl():
    broker, clock = make_broker(default_ttl_ms=2000)
    clock.advance(50)
    message = broker.send("/queue/a", {"expires": "90000"}, b"x")
    assert message.expires == 90_000
    assert message.headers["expires"] == "90000"


# -- destinations come and go --------------------------------------------------------------


def test_idle_destinations_are_forgotten(env):
    client = env.client()
    client.connect()
    client.send("SUBSCRIBE", destination="/topic/x", id="1")
    client.send("UNSUBSCRIBE", id="1")
    assert "/topic/x" not in env.broker.destinations
    client.send("SEND", b"x", destination="/topic/nobody")
    assert "/topic/nobody" not in env.broker.destinations


# -- expiry --------------------------------------------------------------------------------


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


def test_default_ttl_uses_the_clock():
    broker, clock = make_broker(default_ttl_ms=2000, expiry_interval=1.0)
    clock.advance(50)
    message = broker.send("/queue/a", {}, b"x")
    assert message.expires == 52_000
    assert message.headers["expires"] == "52000"
    clock.advance(2)
    assert broker.stats["expired"] == 1


# -- opening: what the store holds ---------------------------------------------------------


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
