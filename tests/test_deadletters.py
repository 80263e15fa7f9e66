"""
The dead-letter policy (:mod:`stomptw.deadletters`) on a broker: where a
dead message goes, with which headers, and when it is dropped instead.
"""

from __future__ import annotations

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
