"""
The HTTP auth backend (stomptw.httpauth) against a real twisted.web service
in the test that speaks rabbitmq_auth_backend_http's protocol, with STOMP
clients on a real broker.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from clients import ClientPool, RawStompSocket, encode_frame
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from stomptw.httpauth import http_checker, resource_of

PASSWORDS = {"alice": "a-pw", "bob": "b-pw"}


class AuthService(Resource):
    """
    A service as people write them for RabbitMQ: alice is an administrator,
    users own the queues named after them, everyone may use topics under
    chat. Every request is recorded; ``down`` makes it answer 503.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.down = False

    def render(self, request):
        # twisted.web puts the query and a form-encoded body both in args.
        fields = {k.decode(): v[0].decode() for k, v in request.args.items()}
        path = request.path.decode()
        self.requests.append((path, fields))
        if self.down:
            request.setResponseCode(503)
            return b"down"
        return self.decide(path, fields).encode()

    def decide(self, path: str, f: dict[str, str]) -> str:
        user = f["username"]
        if path == "/auth/user":
            if PASSWORDS.get(user) != f.get("password"):
                return "deny"
            return "allow administrator management" if user == "alice" else "allow"
        if path == "/auth/vhost":
            return "allow" if f["vhost"] == "/" and f["ip"] == "127.0.0.1" else "deny"
        if path == "/auth/resource":
            if f["resource"] == "queue":
                return "allow" if f["name"].startswith(user + ".") else "deny"
            if f["resource"] == "exchange" and f["name"] == "amq.topic":
                return "allow"
            return "deny"
        if path == "/auth/topic":
            return "allow" if f["routing_key"].startswith("chat.") else "deny"
        return "deny"


@pytest.fixture
def service():
    resource = AuthService()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}/auth"
    resource.argstring = (
        f"user_path={base}/user:vhost_path={base}/vhost:"
        f"resource_path={base}/resource:topic_path={base}/topic"
    )
    yield resource
    pytest_twisted.blockon(port.stopListening())


def test_destinations_map_to_rabbitmq_resources():
    assert resource_of("/queue/alice.in") == ("queue", "alice.in", None)
    assert resource_of("/topic/chat.lobby") == ("exchange", "amq.topic", "chat.lobby")
    assert resource_of("plain") == ("queue", "plain", None)


def test_arguments():
    with pytest.raises(ValueError, match="user_path=URL is required"):
        http_checker("vhost_path=http://x/")
    with pytest.raises(ValueError, match="method must be get or post"):
        http_checker("user_path=http://x/u:method=put")
    backend = http_checker("user_path=https://auth.test:8443/u:method=POST:cache_ttl=0")
    assert (backend.user_path, backend.method, backend.cache_ttl) == (
        "https://auth.test:8443/u",
        "post",
        0.0,
    )


def login_frames(port: int, user: str, password: str, *frames: bytes, count: int = 1):
    raw = RawStompSocket(port)
    try:
        raw.send_bytes(
            encode_frame(
                "CONNECT",
                {"accept-version": "1.2", "host": "localhost", "login": user, "passcode": password},
            )
            + b"".join(frames)
        )
        return [raw.read_frame() for _ in range(count)]
    finally:
        raw.close()


@pytest.mark.parametrize("method", ["get", "post"])
@pytest_twisted.ensureDeferred
async def test_logins_and_permissions_come_from_the_service(make_broker, service, method):
    running = await make_broker(
        auth=[f"http:{service.argstring}:method={method}"], login_failure_delay=0.01
    )
    subscribe = encode_frame(
        "SUBSCRIBE", {"destination": "/queue/alice.inbox", "id": "1", "receipt": "mine"}
    )
    foreign = encode_frame(
        "SUBSCRIBE", {"destination": "/queue/bob.inbox", "id": "2", "receipt": "theirs"}
    )
    frames = await deferToThread(
        login_frames, running.tcp_port, "alice", "a-pw", subscribe, foreign, count=3
    )
    assert [f.command for f in frames] == ["CONNECTED", "RECEIPT", "ERROR"]
    assert frames[2].headers["message"] == "access refused: no read permission for /queue/bob.inbox"
    (wrong,) = await deferToThread(login_frames, running.tcp_port, "alice", "nope")
    assert wrong.headers["message"] == "authentication failed"
    paths = [path for path, _ in service.requests]
    assert paths[:2] == ["/auth/user", "/auth/vhost"]
    user_fields = service.requests[0][1]
    assert user_fields == {"username": "alice", "password": "a-pw"}
    resource = next(f for p, f in service.requests if p == "/auth/resource")
    assert resource == {
        "username": "alice",
        "vhost": "/",
        "resource": "queue",
        "name": "alice.inbox",
        "permission": "read",
    }
    # The queue did not exist: configure was asked too (RabbitMQ's create).
    asked = {f["permission"] for p, f in service.requests if p == "/auth/resource"}
    assert asked == {"read", "configure"}


@pytest_twisted.ensureDeferred
async def test_topics_ask_the_topic_path_with_the_routing_key(make_broker, service):
    running = await make_broker(auth=[f"http:{service.argstring}"], login_failure_delay=0.01)

    def scenario():
        with ClientPool() as pool:
            bob = pool.tcp(running.tcp_port, connect=False)
            bob.connect(username="bob", passcode="b-pw")
            bob.subscribe("/topic/chat.lobby")
            bob.send("/topic/chat.lobby", "hello", receipt=True)
            body = bob.next_message().body
        frames = login_frames(
            running.tcp_port,
            "bob",
            "b-pw",
            encode_frame("SEND", {"destination": "/topic/secret", "receipt": "s"}, b"x"),
            count=2,
        )
        return body, frames

    body, (connected, error) = await deferToThread(scenario)
    assert body == "hello"
    assert error.headers["message"] == "access refused: no write permission for /topic/secret"
    topic = [f for p, f in service.requests if p == "/auth/topic"]
    assert {(f["permission"], f["routing_key"]) for f in topic} >= {
        ("read", "chat.lobby"),
        ("write", "chat.lobby"),
        ("write", "secret"),
    }
    assert all(f["resource"] == "topic" and f["name"] == "amq.topic" for f in topic)


@pytest_twisted.ensureDeferred
async def test_answers_are_cached(make_broker, service):
    running = await make_broker(auth=[f"http:{service.argstring}"])
    for _ in range(3):
        (frame,) = await deferToThread(login_frames, running.tcp_port, "bob", "b-pw")
        assert frame.command == "CONNECTED"
    assert [p for p, _ in service.requests] == ["/auth/user", "/auth/vhost"]


@pytest_twisted.ensureDeferred
async def test_service_down_refuses_new_logins_and_keeps_sessions(make_broker, service):
    running = await make_broker(
        auth=[f"http:{service.argstring}:cache_ttl=0"], login_failure_delay=0.01
    )
    raw = RawStompSocket(running.tcp_port)
    try:
        await deferToThread(raw.connect, login="alice", passcode="a-pw")

        def subscribe(receipt):
            raw.send(
                "SUBSCRIBE", {"destination": "/queue/alice.q", "id": receipt, "receipt": receipt}
            )
            return raw.read_frame()

        assert (await deferToThread(subscribe, "before")).command == "RECEIPT"
        service.down = True
        (refused,) = await deferToThread(login_frames, running.tcp_port, "bob", "b-pw")
        assert refused.headers["message"] == "authentication service unavailable"
        # What alice was allowed before, she still is.
        assert (await deferToThread(subscribe, "during")).command == "RECEIPT"
    finally:
        raw.close()
    assert running.broker.auth.counters.unavailable == 1


@pytest_twisted.ensureDeferred
async def test_an_empty_passcode_is_sent_as_an_empty_password(make_broker, service):
    """RabbitMQ's services read a missing password as a certificate login: always send it."""
    running = await make_broker(auth=[f"http:{service.argstring}"], login_failure_delay=0.01)
    (refused,) = await deferToThread(login_frames, running.tcp_port, "alice", "")
    assert refused.headers["message"] == "authentication failed"
    assert service.requests[0] == ("/auth/user", {"username": "alice", "password": ""})
