"""
The dead-letter policy (:mod:`stomptw.deadletters`) on a broker: where a
dead message goes, with which headers, and when it is dropped instead; what
makes a message dead (expiry when asked, the delivery limit, returns by
unsubscribing) and that a dead-letter queue's messages never die again; and
templates that put the name first (``/queue/{name}.DLQ``).
"""

from __future__ import annotations

from fakes import FakeConsumer, make_broker, settle, subscribe
from inprocess import Client, messages
from twisted.internet.task import Clock

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.testing import BrokerOnClock


def dead(env: BrokerOnClock, source: str = "/queue/orders", **headers: str):
    broker = env.broker
    message = broker.send(source, dict(headers), b"body", None, True)
    queue = broker.destinations[source]
    queue.pending.remove(message)
    broker.dead_letters.dead_letter(queue, message, "delivery_limit")
    return message


def test_a_dead_message_goes_to_its_dead_letter_queue_with_why():
    env = BrokerOnClock()
    original = dead(env, **{"content-type": "text/plain", "expires": "99999999999999"})
    dlq = env.broker.destinations["/queue/DLQ.orders"]
    (copy,) = dlq.pending
    assert copy.body == b"body" and copy.message_id != original.message_id
    assert copy.headers["x-death-reason"] == "delivery_limit"
    assert copy.headers["x-first-death-queue"] == "/queue/orders"
    assert copy.headers["x-original-message-id"] == original.message_id
    assert "expires" not in copy.headers
    assert env.broker.stats["dead_lettered"] == 1


def test_dead_letter_queues_match_the_whole_template():
    env = BrokerOnClock()
    letters = env.broker.dead_letters
    assert letters.is_dead_letter_queue("/queue/DLQ.orders")
    assert not letters.is_dead_letter_queue("/queue/DLQ.")
    assert not letters.is_dead_letter_queue("/queue/x/queue/DLQ.orders")
    assert letters.target("/topic/prices") == "/queue/DLQ.prices"


def test_without_a_template_dead_messages_are_dropped_and_counted():
    env = BrokerOnClock(dead_letter_queue="")
    dead(env)
    assert env.broker.stats["dropped"] == 1
    assert "/queue/DLQ.orders" not in env.broker.destinations


def test_a_full_dead_letter_queue_drops_instead_of_blocking():
    env = BrokerOnClock(max_queue_length=1)
    dead(env, source="/queue/a")
    dead(env, source="/queue/a")
    assert len(env.broker.destinations["/queue/DLQ.a"].pending) == 1
    assert env.broker.stats["dropped"] == 1


def test_expired_messages_are_dead_letters_only_when_asked():
    env = BrokerOnClock()
    message = env.broker.send("/queue/e", {}, b"x", None, True)
    env.broker.dead_letters.expire(None, message)
    assert env.broker.stats["expired"] == 1 and "/queue/DLQ.e" not in env.broker.destinations
    env = BrokerOnClock(dead_letter_expired=True)
    message = env.broker.send("/queue/e", {}, b"x", None, True)
    env.broker.dead_letters.expire(None, message)
    (copy,) = env.broker.destinations["/queue/DLQ.e"].pending
    assert copy.headers["x-death-reason"] == "expired"


# -- through the broker's queues -----------------------------------------------------------


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


# -- templates with a suffix ---------------------------------------------------------------


def test_suffix_dead_letter_template_still_dead_letters():
    config = BrokerConfig(dead_letter_queue="/queue/{name}.DLQ", max_redeliveries=0)
    clock = Clock()
    broker = Broker(config, clock=clock)
    consumer = Client(broker, clock, config)
    consumer.connect()
    consumer.send("SUBSCRIBE", id="s", destination="/queue/orders", ack="client-individual")
    consumer.send("SEND", b"hello", destination="/queue/orders")
    (first,) = messages(consumer.frames())
    # max_redeliveries=0: the first NACK sends it to /queue/orders.DLQ.
    consumer.send("NACK", id=first.headers["ack"])
    redelivered = messages(consumer.frames())
    assert redelivered == [], "a message past max-redeliveries was delivered again"
    assert broker.stats["dead_lettered"] == 1
    assert broker.destinations["/queue/orders.DLQ"].count == 1


def test_suffix_dead_letter_template_still_expires():
    config = BrokerConfig(dead_letter_queue="/queue/{name}.DLQ")
    clock = Clock()
    clock.advance(1_700_000_000)
    broker = Broker(config, clock=clock)
    producer = Client(broker, clock, config)
    producer.connect()
    expires = str(int(clock.seconds() * 1000) + 1000)
    producer.send("SEND", b"stale soon", destination="/queue/orders", expires=expires)
    clock.advance(5)
    consumer = Client(broker, clock, config)
    consumer.connect()
    consumer.send("SUBSCRIBE", id="s", destination="/queue/orders")
    assert messages(consumer.frames()) == [], "an expired message was delivered"
    assert broker.stats["expired"] == 1
