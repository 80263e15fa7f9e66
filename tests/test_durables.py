"""
Durable topic subscriptions (:mod:`stomptw.durables`) through in-memory
sessions: messages kept while away, one subscriber at a time, replaced on
another topic, deleted with their messages.
"""

from __future__ import annotations

from stomptw.model import durable_owner
from stomptw.testing import BrokerOnClock


def subscribe(env: BrokerOnClock, topic: str = "/topic/t"):
    client = env.connect(client_id="app")
    client.send("SUBSCRIBE", destination=topic, id="1", **{"durable-subscription-name": "d"})
    return client


def test_messages_published_while_away_wait_for_the_subscriber():
    env = BrokerOnClock()
    first = subscribe(env)
    first.send("DISCONNECT")
    first.lose()
    publisher = env.connect()
    publisher.send("SEND", b"while away", destination="/topic/t")
    assert env.broker.durables[durable_owner("app", "d")].queue.count == 1
    again = subscribe(env)
    assert [f.body for f in again.frames()] == [b"while away"]


def test_one_subscriber_at_a_time():
    env = BrokerOnClock()
    subscribe(env)
    second = subscribe(env)
    (error,) = second.frames()
    assert error.command == "ERROR" and "in use by another connection" in error.headers["message"]


def test_the_same_name_on_another_topic_replaces_it():
    env = BrokerOnClock()
    client = subscribe(env, "/topic/a")
    client.lose()
    subscribe(env, "/topic/b")
    (durable,) = env.broker.durables.values()
    assert durable.topic == "/topic/b"
    assert (
        not env.broker.destinations.get("/topic/a")
        or not env.broker.destinations["/topic/a"].durables
    )


def test_remove_deletes_it_and_its_messages():
    env = BrokerOnClock()
    subscribe(env).lose()
    env.connect().send("SEND", b"x", destination="/topic/t")
    assert env.broker.remove_durable("app", "d") is True
    assert env.broker.durables == {}
    assert env.broker.remove_durable("app", "d") is False
