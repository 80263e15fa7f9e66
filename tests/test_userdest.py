"""
User destinations (/user/queue/NAME, sent to as /user/{username}/queue/NAME):
on a Clock with logins, then stomp.py and websocket-client over sockets.
"""

from __future__ import annotations

import pytest_twisted

from stomptw.application import Messaging
from stomptw.auth import make_checker
from stomptw.authenticator import build_authenticator
from stomptw.testing import BrokerOnClock


def on_clock(checker: str = "memory:alice:a:bob:b", **config) -> BrokerOnClock:
    env = BrokerOnClock(**config)
    env.broker.auth = build_authenticator(env.config, [make_checker(checker)], env.clock)
    return env


def test_every_session_of_the_user_gets_it_and_nobody_else():
    env = on_clock()
    phone = env.connect(login="alice", passcode="a")
    laptop = env.connect(login="alice", passcode="a")
    bob = env.connect(login="bob", passcode="b")
    for client in (phone, laptop, bob):
        client.send("SUBSCRIBE", destination="/user/queue/notices", id="n")
    bob.send("SEND", b"hi alice", destination="/user/alice/queue/notices", receipt="r")
    assert bob.frame().headers["receipt-id"] == "r"
    for client in (phone, laptop):
        (message,) = client.frames()
        assert message.body == b"hi alice"
        assert message.headers["destination"] == "/user/queue/notices"
        assert message.headers["subscription"] == "n"
        assert message.headers["user-id"] == "bob"
    # And only that destination of alice's.
    bob.send("SEND", b"other", destination="/user/alice/queue/other")
    bob.send("SEND", b"topic", destination="/user/alice/topic/notices")
    assert phone.frames() == [] and laptop.frames() == []


def test_a_user_with_no_session_subscribed_gets_nothing_later():
    env = on_clock()
    bob = env.connect(login="bob", passcode="b")
    bob.send("SEND", b"early", destination="/user/alice/queue/notices")
    alice = env.connect(login="alice", passcode="a")
    alice.send("SUBSCRIBE", destination="/user/queue/notices", id="n", receipt="s")
    assert [f.command for f in alice.frames()] == ["RECEIPT"]


def test_anonymous_sessions_and_malformed_names_get_an_error():
    env = BrokerOnClock()
    anonymous = env.connect()
    anonymous.send("SUBSCRIBE", destination="/user/queue/notices", id="n", receipt="r")
    error = anonymous.frame()
    assert error.command == "ERROR" and error.headers["receipt-id"] == "r"
    assert "needs a login" in error.headers["message"]
    for bad in ("/user/alice", "/user/alice/queue/", "/user//queue/x", "/user/queue/x"):
        client = env.connect()
        client.send("SEND", b"x", destination=bad, receipt="r")
        error = client.frame()
        assert error.command == "ERROR", bad
        assert error.headers["message"].startswith("invalid destination"), bad
    assert not env.broker.destinations


def test_sending_to_a_user_is_a_write_permission_on_the_full_name(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "[users.bob]\n"
        'write = ["/user/alice/queue/notices"]\n'
        "[users.alice]\n"
        'read = ["/queue/nothing"]\n'
    )
    env = on_clock(permissions_file=str(rules))
    env.broker.auth = build_authenticator(
        env.config, [make_checker("memory:alice:a:bob:b")], env.clock
    )
    alice = env.connect(login="alice", passcode="a")
    # Subscribing to one's own user destination needs no read rule.
    alice.send("SUBSCRIBE", destination="/user/queue/notices", id="n", receipt="s")
    assert alice.frame().command == "RECEIPT"
    bob = env.connect(login="bob", passcode="b")
    bob.send("SEND", b"ok", destination="/user/alice/queue/notices", receipt="r")
    assert bob.frame().command == "RECEIPT"
    assert alice.frame().body == b"ok"
    bob.send("SEND", b"no", destination="/user/alice/queue/secrets", receipt="r2")
    error = bob.frame()
    assert error.command == "ERROR" and "write" in error.headers["message"]


def test_user_destinations_are_per_vhost():
    from stomptw.store import MemoryStore

    env = on_clock(vhosts=["team"])
    env.broker.add_vhost("team", MemoryStore())

    def connect(login, passcode, host):
        client = env.connect(version=None)
        client.send("CONNECT", accept_version="1.2", host=host, login=login, passcode=passcode)
        assert client.frame().command == "CONNECTED"
        return client

    in_team = connect("alice", "a", "team")
    in_root = env.connect(login="alice", passcode="a")
    for client in (in_team, in_root):
        client.send("SUBSCRIBE", destination="/user/queue/n", id="n")
    bob = connect("bob", "b", "team")
    bob.send("SEND", b"team only", destination="/user/alice/queue/n")
    assert [f.body for f in in_team.frames()] == [b"team only"]
    assert in_root.frames() == []


def test_the_application_sends_to_a_user():
    env = on_clock(app_prefix="/app/")
    messaging = Messaging.of(env.broker)
    alice = env.connect(login="alice", passcode="a")
    alice.send("SUBSCRIBE", destination="/user/queue/errors", id="e")
    messaging.route(
        "/app/check",
        lambda request: request.messaging.send_to_user(request.user, "/queue/errors", b"bad"),
    )
    alice.send("SEND", b"x", destination="/app/check", receipt="r")
    message, receipt = alice.frames()
    assert message.body == b"bad" and message.headers["destination"] == "/user/queue/errors"
    assert receipt.command == "RECEIPT"


@pytest_twisted.ensureDeferred
async def test_a_stomp_py_service_notifies_a_users_websocket_sessions(make_broker):
    """alice on two WebSocket connections; a service over TCP sends to her."""
    import websocket
    from twisted.internet.threads import deferToThread

    from tests.clients import StompPyClient

    running = await make_broker(auth=["memory:alice:a:svc:s"])

    def alice():
        ws = websocket.create_connection(running.ws_url, subprotocols=["v12.stomp"], timeout=10)
        ws.send("CONNECT\naccept-version:1.2\nhost:x\nlogin:alice\npasscode:a\n\n\x00")
        assert ws.recv().startswith("CONNECTED")
        ws.send("SUBSCRIBE\nid:1\ndestination:/user/queue/notices\nreceipt:s\n\n\x00")
        assert ws.recv().startswith("RECEIPT")
        return ws

    def service():
        client = StompPyClient.tcp(running.tcp_port)
        try:
            client.connect(username="svc", passcode="s")
            client.send("/user/alice/queue/notices", "your order shipped", receipt=True)
        finally:
            client.close()

    pages = [await deferToThread(alice), await deferToThread(alice)]
    try:
        await deferToThread(service)
        frames = [await deferToThread(ws.recv) for ws in pages]
    finally:
        for ws in pages:
            ws.close()
    for frame in frames:
        assert frame.startswith("MESSAGE\n")
        assert "destination:/user/queue/notices\n" in frame
        assert "user-id:svc\n" in frame
        assert frame.endswith("your order shipped\x00")


def test_a_user_name_with_a_slash_has_no_user_destinations():
    env = on_clock("memory:bob/topic:x:bob:b")
    odd = env.connect(login="bob/topic", passcode="x")
    odd.send("SUBSCRIBE", destination="/user/queue/alerts", id="1", receipt="r")
    error = odd.frame()
    assert error.command == "ERROR" and "without '/'" in error.headers["message"]
