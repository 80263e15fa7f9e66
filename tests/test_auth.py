"""
Logins (stomptw.auth) end to end: a real broker on loopback with ``--auth``
checkers, driven by stomp.py, raw sockets and websocket-client.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from clients import (
    TIMEOUT,
    ClientPool,
    ConnectionClosed,
    RawStompSocket,
    RawStompWebSocket,
    encode_frame,
    metric_samples,
    unique,
)
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from stomptw.auth import StompUser
from stomptw.authenticator import AuthCounters, build_authenticator
from stomptw.config import BrokerConfig
from stomptw.metrics import render_metrics

#: Short enough for the tests, long enough to be measured.
DELAY = 0.2


async def start(make_broker, *auth: str, **config):
    config.setdefault("login_failure_delay", DELAY)
    return await make_broker(auth=list(auth), **config)


def refused(port: int, headers: dict, pipelined: bytes = b"") -> tuple[object, float, bool]:
    """CONNECT with ``headers`` (and more bytes in the same write): the ERROR, its delay, EOF."""
    raw = RawStompSocket(port)
    try:
        begun = time.monotonic()
        raw.send_bytes(
            encode_frame("CONNECT", {"accept-version": "1.2", "host": "localhost", **headers})
            + pipelined
        )
        error = raw.read_frame()
        waited = time.monotonic() - begun
        raw.wait_eof()
        with pytest.raises(ConnectionClosed):
            raw.read_frame()
        return error, waited, raw.eof
    finally:
        raw.close()


# -- logging in --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_valid_login_and_the_broker_stamps_user_id(make_broker):
    running = await start(make_broker, "memory:alice:secret:bob:pw")

    def scenario():
        with ClientPool() as pool:
            alice = pool.tcp(running.tcp_port, connect=False)
            alice.connect(username="alice", passcode="secret")
            sub = alice.subscribe("/queue/stamped")
            bob = pool.tcp(running.tcp_port, connect=False)
            bob.connect(username="bob", passcode="pw")
            bob.send("/queue/stamped", "from bob", headers={"user-id": "alice"}, receipt=True)
            message = alice.next_message()
            assert message.headers["subscription"] == sub
            assert message.headers["user-id"] == "bob"  # the sender's name, not its claim

    await deferToThread(scenario)
    assert running.broker.auth.counters.succeeded == 2


@pytest_twisted.ensureDeferred
async def test_unknown_user_wrong_password_and_no_credentials_get_one_answer(make_broker):
    running = await start(make_broker, "memory:alice:secret")

    def scenario():
        answers = []
        for headers in (
            {"login": "alice", "passcode": "nope"},
            {"login": "eve", "passcode": "x"},
            {},
        ):
            error, waited, eof = refused(running.tcp_port, {**headers, "receipt": "c1"})
            assert error.command == "ERROR", error
            assert error.headers["receipt-id"] == "c1"  # CONNECT asked for one
            assert waited >= DELAY * 0.9, waited  # after the failure delay
            assert eof
            answers.append((error.headers["message"], error.body))
        return answers

    answers = await deferToThread(scenario)
    assert len(set(answers)) == 1, answers
    assert answers[0][0] == "authentication failed"
    assert running.broker.auth.counters.failed == 3


@pytest_twisted.ensureDeferred
async def test_frames_pipelined_behind_a_refused_connect_are_never_handled(make_broker):
    running = await start(make_broker, "memory:alice:secret")
    queue = unique("/queue/pipelined")

    def scenario():
        behind = encode_frame("SEND", {"destination": queue, "receipt": "r1"}, b"sneaked in")
        behind += encode_frame("SUBSCRIBE", {"destination": "/topic/x", "id": "1"})
        error, _, _ = refused(running.tcp_port, {"login": "alice", "passcode": "bad"}, behind)
        assert error.headers["message"] == "authentication failed"
        assert "receipt-id" not in error.headers  # the SEND's receipt was never owed
        with ClientPool() as pool:
            alice = pool.tcp(running.tcp_port, connect=False)
            alice.connect(username="alice", passcode="secret")
            alice.subscribe(queue)
            alice.send(queue, "marker", receipt=True)
            assert alice.next_message().body == "marker"
            alice.assert_no_message()

    await deferToThread(scenario)
    assert running.broker.stats["published"] == 2  # the marker and the barrier only


@pytest_twisted.ensureDeferred
async def test_frames_pipelined_behind_a_slow_login_wait_for_it(make_broker, tmp_path):
    from stomptw.users import User, hash_password, write_users

    users = tmp_path / "users.toml"
    write_users(str(users), [User("alice", hash_password("s3cret"))])
    running = await start(make_broker, f"users:{users}")
    queue = unique("/queue/after-login")

    def scenario():
        raw = RawStompSocket(running.tcp_port)
        try:
            raw.send_bytes(
                encode_frame(
                    "CONNECT",
                    {
                        "accept-version": "1.2",
                        "host": "localhost",
                        "login": "alice",
                        "passcode": "s3cret",
                    },
                )
                + encode_frame("SUBSCRIBE", {"destination": queue, "id": "s", "receipt": "r1"})
                + encode_frame("SEND", {"destination": queue, "receipt": "r2"}, b"hello")
            )
            frames = [raw.read_frame() for _ in range(4)]
        finally:
            raw.close()
        return frames

    connected, r1, r2_or_message, last = await deferToThread(scenario)
    assert connected.command == "CONNECTED"
    assert (r1.command, r1.headers["receipt-id"]) == ("RECEIPT", "r1")
    rest = {r2_or_message.command, last.command}
    assert rest == {"RECEIPT", "MESSAGE"}
    message = r2_or_message if r2_or_message.command == "MESSAGE" else last
    assert message.body == b"hello" and message.headers["user-id"] == "alice"


@pytest_twisted.ensureDeferred
async def test_login_over_websocket(make_broker):
    running = await start(make_broker, "memory:alice:secret")

    def scenario():
        good = RawStompWebSocket(running.ws_url, ["v12.stomp"])
        try:
            frame = good.connect(login="alice", passcode="secret")
            assert frame.headers["version"] == "1.2"
        finally:
            good.close()
        bad = RawStompWebSocket(running.ws_url, ["v12.stomp"])
        try:
            bad.send_frame(
                "CONNECT",
                {"accept-version": "1.2", "host": "localhost", "login": "alice", "passcode": "x"},
            )
            bad.send_frame("SEND", {"destination": "/queue/ws-sneak"}, b"no")
            _, error = bad.recv_frame()
            assert error.command == "ERROR"
            assert error.headers["message"] == "authentication failed"
            code, _ = bad.recv_close()
            return code
        finally:
            bad.close()

    code = await deferToThread(scenario)
    assert code == 1000
    assert "/queue/ws-sneak" not in running.broker.destinations


@pytest_twisted.ensureDeferred
async def test_stomp_py_over_websocket_logs_in(make_broker):
    running = await start(make_broker, "memory:alice:secret")

    def scenario():
        with ClientPool() as pool:
            alice = pool.ws(running.ws_port, connect=False)
            alice.connect(username="alice", passcode="secret")
            alice.subscribe("/topic/ws-login")
            alice.send("/topic/ws-login", "hi", receipt=True)
            return alice.next_message().headers["user-id"]

    assert await deferToThread(scenario) == "alice"


@pytest_twisted.ensureDeferred
async def test_anonymous_checker_admits_sessions_without_login(make_broker):
    running = await start(make_broker, "memory:alice:secret", "anonymous")

    def scenario():
        raw = RawStompSocket(running.tcp_port)
        try:
            raw.connect()
            raw.send("SUBSCRIBE", {"destination": "/topic/anon", "id": "1", "receipt": "s"})
            assert raw.read_frame().command == "RECEIPT"
            raw.send("SEND", {"destination": "/topic/anon", "user-id": "admin"}, b"who?")
            message = raw.read_frame()
        finally:
            raw.close()
        # A wrong password is still refused: anonymous is for no login at all.
        error, _, _ = refused(running.tcp_port, {"login": "alice", "passcode": "bad"})
        return message, error

    message, error = await deferToThread(scenario)
    assert message.command == "MESSAGE" and "user-id" not in message.headers
    assert error.headers["message"] == "authentication failed"


@pytest_twisted.ensureDeferred
async def test_failed_logins_are_limited_per_address_and_counted(make_broker):
    running = await start(make_broker, "memory:alice:secret", max_failed_logins=2)

    def scenario():
        for _ in range(2):
            error, _, _ = refused(running.tcp_port, {"login": "alice", "passcode": "guess"})
            assert error.headers["message"] == "authentication failed"
        # Now even the right password is not checked.
        error, _, _ = refused(running.tcp_port, {"login": "alice", "passcode": "secret"})
        return error

    error = await deferToThread(scenario)
    assert error.headers["message"] == "too many failed logins"
    assert "try again in" in error.body.decode()
    samples = metric_samples(render_metrics(running.broker))["stomptw_logins_total"]
    assert samples[(("outcome", "failed"),)] == 2
    assert samples[(("outcome", "rate_limited"),)] == 1
    assert samples[(("outcome", "succeeded"),)] == 0


@pytest_twisted.ensureDeferred
async def test_logs_name_the_user_and_never_the_passcode(make_broker):
    running = await start(make_broker, "memory:alice:Xyzzy-Secret-1")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:

        def scenario():
            refused(running.tcp_port, {"login": "alice", "passcode": "Plugh-Wrong-2"})
            with ClientPool() as pool:
                alice = pool.tcp(running.tcp_port, connect=False)
                alice.connect(username="alice", passcode="Xyzzy-Secret-1")
                alice.disconnect()

        await deferToThread(scenario)
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert "login failed: user=alice" in text
    assert "user=alice" in text
    assert "Xyzzy-Secret-1" not in text and "Plugh-Wrong-2" not in text


# -- the safe default ------------------------------------------------------------------


def test_no_auth_beyond_loopback_refuses_to_start():
    with pytest.raises(ValueError, match="--allow-anonymous") as caught:
        BrokerConfig(tcp_endpoints=["tcp:61613"])
    assert "--auth" in str(caught.value)
    with pytest.raises(ValueError, match="listens beyond loopback"):
        BrokerConfig(ws_endpoints=["tcp:15674:interface=0.0.0.0"])
    # Loopback, UNIX sockets, an explicit choice, or logins: all fine.
    BrokerConfig(tcp_endpoints=["tcp:61613:interface=127.0.0.1"], ws_endpoints=["unix:/tmp/x"])
    BrokerConfig(tcp_endpoints=["tcp6:61613:interface=\\:\\:1"])
    BrokerConfig(tcp_endpoints=["tcp:61613"], allow_anonymous=True)
    BrokerConfig(tcp_endpoints=["tcp:61613"], auth=["memory:a:b"])


def test_an_inherited_socket_beyond_loopback_is_refused_when_bound():
    """systemd: sockets say where they listen only once they are bound."""
    from twisted.internet.address import IPv4Address

    from stomptw.service import _Listener

    class Port:
        stopped = False

        def __init__(self, host):
            self.host = host

        def getHost(self):
            return IPv4Address("TCP", self.host, 61613)

        def stopListening(self):
            self.stopped = True

    listener = _Listener(None, None, "systemd:domain=INET:name=stomp", "stomp")
    listener.guard_loopback = True
    wide = Port("192.0.2.7")
    with pytest.raises(ValueError, match="beyond loopback"):
        listener._listening(wide)
    assert wide.stopped and listener.port is None
    narrow = Port("127.0.0.1")
    assert listener._listening(narrow) is narrow and not narrow.stopped


# -- vhost selection ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "vhost"),
    [
        (None, "/"),
        ("/", "/"),
        ("localhost", "/"),
        ("LOCALHOST:61613", "/"),
        ("127.0.0.1", "/"),
        ("[::1]", "/"),
        ("broker-host", "/"),
        ("team", "team"),
    ],
)
def test_connects_host_header_selects_the_vhost(host, vhost):
    from twisted.internet.task import Clock

    auth = build_authenticator(BrokerConfig(vhosts=["team"]), [], Clock(), ["broker-host"])
    headers = {} if host is None else {"host": host}
    assert auth.vhost_of(headers) == vhost


def test_unknown_vhost_is_named_and_a_broker_without_vhosts_takes_any_host():
    from twisted.internet.task import Clock

    from stomptw.auth import UnknownVhost

    auth = build_authenticator(BrokerConfig(vhosts=["team"]), [], Clock())
    with pytest.raises(UnknownVhost) as caught:
        auth.vhost_of({"host": "other.example"})
    assert caught.value.message == "unknown vhost 'other.example'"
    assert "team" in caught.value.details
    plain = build_authenticator(BrokerConfig(), [], Clock())
    assert plain.vhost_of({"host": "broker.example.com"}) == "/"


def test_counters_start_at_zero_and_an_anonymous_user_is_unrestricted():
    counters = AuthCounters()
    assert (counters.succeeded, counters.failed, counters.denied["read"]) == (0, 0, 0)
    user = StompUser()
    assert user.unrestricted and user.allows("write", "/queue/anything") is True


@pytest_twisted.ensureDeferred
async def test_unknown_vhost_over_the_wire(make_broker):
    running = await start(make_broker, "memory:alice:secret", vhosts=["team"])

    def scenario():
        error, waited, _ = refused(
            running.tcp_port, {"login": "alice", "passcode": "secret", "host": "nosuch"}
        )
        return error, waited

    error, waited = await deferToThread(scenario)
    assert error.headers["message"] == "unknown vhost 'nosuch'"
    assert waited < TIMEOUT
