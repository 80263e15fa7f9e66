"""
Temporary queues (reply-to:/temp-queue/NAME) for request/reply: on a Clock
with in-memory sessions, then stomp.py on both sides over TCP.
"""

from __future__ import annotations

import pytest_twisted

from stomptw.application import Messaging
from stomptw.testing import BrokerOnClock


def request_reply(env):
    """A service subscribed to /queue/rpc, a client that sent it a request."""
    service = env.connect()
    service.send("SUBSCRIBE", destination="/queue/rpc", id="s")
    client = env.connect()
    client.send("SEND", b"ping", destination="/queue/rpc", **{"reply-to": "/temp-queue/answers"})
    (request,) = service.frames()
    return service, client, request


def test_reply_to_is_rewritten_and_the_reply_comes_back_under_the_name_used():
    env = BrokerOnClock()
    service, client, request = request_reply(env)
    reply_to = request.headers["reply-to"]
    assert reply_to.startswith("/reply-queue/") and len(reply_to) > len("/reply-queue/") + 16
    service.send("SEND", b"pong", destination=reply_to, **{"correlation-id": "1"})
    (reply,) = client.frames()
    assert reply.command == "MESSAGE" and reply.body == b"pong"
    assert reply.headers["destination"] == "/temp-queue/answers"
    assert reply.headers["subscription"] == "/temp-queue/answers"
    assert reply.headers["correlation-id"] == "1"


def test_the_same_name_is_the_same_queue_and_another_connection_has_its_own():
    env = BrokerOnClock()
    service, client, first = request_reply(env)
    client.send("SEND", b"again", destination="/queue/rpc", **{"reply-to": "/temp-queue/answers"})
    other = env.connect()
    other.send("SEND", b"x", destination="/queue/rpc", **{"reply-to": "/temp-queue/answers"})
    second, third = service.frames()
    assert first.headers["reply-to"] == second.headers["reply-to"]
    assert third.headers["reply-to"] != first.headers["reply-to"]


def test_nobody_else_can_subscribe_and_the_queue_goes_with_its_connection():
    env = BrokerOnClock()
    service, client, request = request_reply(env)
    reply_to = request.headers["reply-to"]
    thief = env.connect()
    thief.send("SUBSCRIBE", destination=reply_to, id="1", receipt="r")
    error = thief.frame()
    assert error.command == "ERROR" and error.headers["receipt-id"] == "r"
    assert "private" in error.headers["message"]
    client.lose()
    assert reply_to not in env.broker.destinations
    # A late reply is dropped, and the service's connection is not harmed.
    service.send("SEND", b"late", destination=reply_to, receipt="late")
    assert service.frame().headers["receipt-id"] == "late"
    assert reply_to not in env.broker.destinations
    assert env.broker.stats["dropped"] == 1


def test_what_waits_in_a_temporary_queue_is_dropped_with_it():
    env = BrokerOnClock()
    client = env.connect()
    client.send("SUBSCRIBE", destination="/temp-queue/a", id="mine", ack="client")
    client.send("SEND", b"x", destination="/queue/rpc", **{"reply-to": "/temp-queue/a"})
    reply_to = env.broker.destinations["/queue/rpc"].pending[0].headers["reply-to"]
    Messaging.of(env.broker).publish(reply_to, b"1", {"persistent": "true"})
    (reply,) = client.frames()
    assert reply.headers["subscription"] == "mine"  # its own SUBSCRIBE, not an automatic one
    assert reply.headers["destination"] == "/temp-queue/a"
    assert env.broker.store.stats()["messages"] == 0  # never stored: it cannot outlive us
    client.lose()
    assert reply_to not in env.broker.destinations
    assert env.broker.stats["dropped"] == 1


def test_a_temporary_queue_without_a_name_is_refused():
    env = BrokerOnClock()
    client = env.connect()
    client.send("SEND", b"x", destination="/queue/rpc", receipt="r", **{"reply-to": "/temp-queue/"})
    error = client.frame()
    assert error.command == "ERROR" and error.headers["receipt-id"] == "r"
    assert "/queue/rpc" not in env.broker.destinations


def test_an_application_handler_replies_to_a_temporary_queue():
    env = BrokerOnClock(app_prefix="/app/")
    messaging = Messaging.of(env.broker)
    messaging.route("/app/time", lambda request: request.reply(b"noon"))
    client = env.connect()
    client.send(
        "SEND",
        b"",
        destination="/app/time",
        receipt="r",
        **{"reply-to": "/temp-queue/t", "correlation-id": "c1"},
    )
    reply, receipt = client.frames()
    assert reply.body == b"noon" and reply.headers["destination"] == "/temp-queue/t"
    assert reply.headers["correlation-id"] == "c1"
    assert receipt.headers["receipt-id"] == "r"


@pytest_twisted.ensureDeferred
async def test_rpc_with_stomp_py_on_both_sides(make_broker):
    """The docs' RPC example: a service answers /queue/rpc.* requests."""
    import stomp
    from twisted.internet.threads import deferToThread

    from tests.clients import StompPyClient, _get

    running = await make_broker()

    class Service(stomp.ConnectionListener):
        def __init__(self, conn):
            self.conn = conn

        def on_message(self, frame):
            self.conn.send(
                frame.headers["reply-to"],
                frame.body.upper(),
                headers={"correlation-id": frame.headers["correlation-id"]},
            )

    def rpc():
        server = StompPyClient.tcp(running.tcp_port)
        client = StompPyClient.tcp(running.tcp_port)
        try:
            server.conn.set_listener("service", Service(server.conn))
            server.connect()
            server.subscribe("/queue/rpc.upper", "rpc")
            client.connect()
            answers = []
            for n in range(3):
                client.send(
                    "/queue/rpc.upper",
                    f"hello {n}",
                    headers={"reply-to": "/temp-queue/replies", "correlation-id": str(n)},
                )
                answers.append(_get(client.listener.messages, "reply"))
            return answers
        finally:
            client.close()
            server.close()

    answers = await deferToThread(rpc)
    assert [a.body for a in answers] == ["HELLO 0", "HELLO 1", "HELLO 2"]
    assert [a.headers["correlation-id"] for a in answers] == ["0", "1", "2"]
    assert {a.headers["destination"] for a in answers} == {"/temp-queue/replies"}
    # The requester's connection ended: its temporary queue goes with it.
    from twisted.internet import reactor, task

    def reply_queues():
        return [d for d in running.broker.destinations if d.startswith("/reply-queue/")]

    for _ in range(500):
        if not reply_queues():
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert not reply_queues()


def test_the_application_and_the_admin_api_cannot_use_a_connections_temporary_name():
    import pytest

    from stomptw.model import DestinationError

    env = BrokerOnClock()
    messaging = Messaging.of(env.broker)
    failed = []
    messaging.publish("/temp-queue/x", b"x").addErrback(failed.append)
    assert failed[0].check(DestinationError)
    with pytest.raises(DestinationError):
        messaging.subscribe("/temp-queue/x", print)
    assert not env.broker.destinations


def test_the_clients_own_subscription_is_the_only_one():
    env = BrokerOnClock()
    client = env.connect()
    client.send("SUBSCRIBE", destination="/temp-queue/r", id="mine")
    client.send("SEND", b"x", destination="/queue/rpc", **{"reply-to": "/temp-queue/r"})
    assert list(client.session.subscriptions) == ["mine"]
    reply_to = env.broker.destinations["/queue/rpc"].pending[0].headers["reply-to"]
    for n in range(3):
        Messaging.of(env.broker).publish(reply_to, str(n))
    assert {f.headers["subscription"] for f in client.frames()} == {"mine"}


def test_a_transactions_reply_to_an_ended_connection_is_dropped_not_an_error():
    env = BrokerOnClock()
    service, client, request = request_reply(env)
    client.lose()
    service.send("BEGIN", transaction="t")
    service.send("SEND", b"late", destination=request.headers["reply-to"], transaction="t")
    service.send("COMMIT", transaction="t", receipt="c")
    assert service.frame().headers["receipt-id"] == "c"
    assert not service.closing and env.broker.stats["dropped"] == 1
