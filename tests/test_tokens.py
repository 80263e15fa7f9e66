"""
JWT bearer tokens (stomptw.tokens): tokens signed with keys the test makes,
checked from a key file and from a JWKS served over HTTP by a real
twisted.web server, over STOMP with stomp.py and raw sockets.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
import pytest_twisted
from clients import ClientPool, RawStompSocket, encode_frame
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from stomptw.tokens import grants_from_scopes, jwt_checker, parse_arguments

ISSUER = "https://idp.test/"
AUDIENCE = "stomptw"


def make_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


KEY = make_key()
OTHER_KEY = make_key()


def token(key=KEY, kid: str | None = None, lifetime: float = 300, **claims) -> str:
    now = int(time.time())
    body = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime}
    body.update(claims)
    headers = {"kid": kid} if kid else None
    return jwt.encode(body, key, algorithm="RS256", headers=headers)


def pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwks(*pairs) -> bytes:
    keys = []
    for kid, key in pairs:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    return json.dumps({"keys": keys}).encode()


def connect(port: int, passcode: str, **headers) -> object:
    """CONNECT with ``passcode``: the first frame back."""
    raw = RawStompSocket(port)
    try:
        raw.send_bytes(
            encode_frame(
                "CONNECT",
                {"accept-version": "1.2", "host": "localhost", "passcode": passcode, **headers},
            )
        )
        return raw.read_frame()
    finally:
        raw.close()


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "idp.pem"
    path.write_bytes(pem(KEY))
    return path


async def start(make_broker, argstring: str, **config):
    config.setdefault("login_failure_delay", 0.01)
    return await make_broker(auth=[f"jwt:{argstring}"], **config)


# -- the argument string and scopes -----------------------------------------------------------


def test_arguments_may_hold_urls():
    options = parse_arguments(
        "jwks=https://idp.test:8443/keys:issuer=https://idp.test/:audience=stomptw:leeway=5"
    )
    assert options == {
        "jwks": "https://idp.test:8443/keys",
        "issuer": "https://idp.test/",
        "audience": "stomptw",
        "leeway": "5",
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_arguments("/etc/key.pem")


def test_checker_arguments_are_checked(tmp_path, key_file):
    with pytest.raises(ValueError, match="exactly one of"):
        jwt_checker(f"key={key_file}:jwks=https://idp.test/keys")
    secret = tmp_path / "secret"
    secret.write_text("not a public key")
    with pytest.raises(ValueError, match="algorithms=HS256"):
        jwt_checker(f"key={secret}")
    assert jwt_checker(f"key={secret}:algorithms=HS256").algorithms == ["HS256"]


def test_scopes_grant_permissions_per_vhost_and_tags():
    grants, tags = grants_from_scopes(
        [
            "openid",
            "stomptw.read:/topic/chat.*",
            "stomptw.write@team:/queue/**",
            "stomptw.tag:administrator",
            "other.read:/topic/x",
        ],
        "stomptw.",
    )
    assert tags == {"administrator"}
    everywhere = grants.in_vhost("/", "alice")
    assert everywhere("read", "/topic/chat.a") and not everywhere("write", "/queue/x")
    team = grants.in_vhost("team", "alice")
    assert team("write", "/queue/x/y") and team("read", "/topic/chat.a")
    assert grants_from_scopes(["openid"], "stomptw.") == (None, frozenset())


# -- logins with a key file ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_valid_token_logs_in_as_its_subject(make_broker, key_file):
    running = await start(make_broker, f"key={key_file}:issuer={ISSUER}:audience={AUDIENCE}")

    def scenario():
        with ClientPool() as pool:
            client = pool.tcp(running.tcp_port, connect=False)
            client.connect(username="ignored", passcode=token(sub="carol"))
            client.subscribe("/topic/jwt")
            client.send("/topic/jwt", "hi", receipt=True)
            return client.next_message().headers["user-id"]

    assert await deferToThread(scenario) == "carol"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: token(key=OTHER_KEY), "authentication failed"),  # signed by someone else
        (lambda: token(aud="another-service"), "authentication failed"),
        (lambda: token(iss="https://evil.test/"), "authentication failed"),
        (lambda: token(nbf=int(time.time()) + 600), "authentication failed"),
        (lambda: token(lifetime=-60), "token expired"),
        (lambda: token(sub=""), "authentication failed"),
        (lambda: "not.a.token", "authentication failed"),
        (
            lambda: jwt.encode({"sub": "a", "exp": time.time() + 60}, "k" * 32, algorithm="HS256"),
            "authentication failed",
        ),  # an algorithm not accepted
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_refused(make_broker, key_file, make, message):
    running = await start(make_broker, f"key={key_file}:issuer={ISSUER}:audience={AUDIENCE}")
    answer = await deferToThread(connect, running.tcp_port, make())
    assert answer.command == "ERROR"
    assert answer.headers["message"] == message


@pytest_twisted.ensureDeferred
async def test_scopes_limit_what_the_token_may_do(make_broker, key_file):
    running = await start(make_broker, f"key={key_file}")
    scoped = token(scope="stomptw.read:/topic/news.* stomptw.write:/topic/news.*")

    def scenario():
        raw = RawStompSocket(running.tcp_port)
        try:
            raw.send_bytes(
                encode_frame("CONNECT", {"accept-version": "1.2", "passcode": scoped})
                + encode_frame(
                    "SUBSCRIBE", {"destination": "/topic/news.a", "id": "1", "receipt": "ok"}
                )
                + encode_frame(
                    "SUBSCRIBE", {"destination": "/topic/sports", "id": "2", "receipt": "no"}
                )
            )
            return [raw.read_frame() for _ in range(3)]
        finally:
            raw.close()

    connected, receipt, error = await deferToThread(scenario)
    assert connected.command == "CONNECTED" and receipt.headers["receipt-id"] == "ok"
    assert error.headers["message"] == "access refused: no read permission for /topic/sports"
    assert error.headers["receipt-id"] == "no"


@pytest_twisted.ensureDeferred
async def test_the_session_ends_when_its_token_expires(make_broker, key_file):
    running = await start(make_broker, f"key={key_file}")
    short = token(lifetime=2)

    def scenario():
        raw = RawStompSocket(running.tcp_port)
        try:
            raw.send("CONNECT", {"accept-version": "1.2", "heart-beat": "0,0", "passcode": short})
            assert raw.read_frame().command == "CONNECTED"
            begun = time.monotonic()
            error = raw.read_frame()  # nothing else is sent meanwhile
            raw.wait_eof()
            return error, time.monotonic() - begun
        finally:
            raw.close()

    error, after = await deferToThread(scenario)
    assert error.headers["message"] == "token expired"
    assert after <= 3.5
    assert running.broker.auth.counters.expired == 1


# -- keys from a JWKS URL ---------------------------------------------------------------------


class Jwks(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.requests = 0
        self.down = False

    def render_GET(self, request):  # noqa: N802
        self.requests += 1
        if self.down:
            request.setResponseCode(503)
            return b"unavailable"
        request.setHeader(b"content-type", b"application/json")
        return self.body


@pytest.fixture
def jwks_server():
    """A twisted.web server on loopback serving a JWKS; stopped after the test."""
    resource = Jwks(jwks(("k1", KEY)))
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    resource.url = f"http://127.0.0.1:{port.getHost().port}/jwks.json"
    resource.port = port
    yield resource
    stopping = port.stopListening()
    if stopping is not None:
        pytest_twisted.blockon(stopping)


@pytest_twisted.ensureDeferred
async def test_keys_come_from_the_jwks_url_and_rotate(make_broker, jwks_server):
    running = await start(make_broker, f"jwks={jwks_server.url}:audience={AUDIENCE}")
    first = await deferToThread(connect, running.tcp_port, token(kid="k1"))
    assert first.command == "CONNECTED"
    again = await deferToThread(connect, running.tcp_port, token(kid="k1"))
    assert again.command == "CONNECTED"
    assert jwks_server.requests == 1  # cached
    # The identity provider rotates to a new key: a token naming it makes the
    # broker fetch the set again.
    jwks_server.body = jwks(("k1", KEY), ("k2", OTHER_KEY))
    rotated = await deferToThread(connect, running.tcp_port, token(key=OTHER_KEY, kid="k2"))
    assert rotated.command == "CONNECTED"
    assert jwks_server.requests == 2


@pytest_twisted.ensureDeferred
async def test_jwks_down_refuses_new_logins_and_keeps_sessions(make_broker, jwks_server):
    running = await start(make_broker, f"jwks={jwks_server.url}")
    raw = RawStompSocket(running.tcp_port)
    try:
        await deferToThread(raw.connect, passcode=token(kid="k1"))
        jwks_server.down = True
        # A key id the cache lacks must be fetched, and cannot be: undecided,
        # not a bad password. A broker without cached keys at all: the same.
        answer = await deferToThread(connect, running.tcp_port, token(key=OTHER_KEY, kid="k9"))
        assert answer.headers["message"] == "authentication service unavailable"
        cached = await deferToThread(connect, running.tcp_port, token(kid="k1"))
        assert cached.command == "CONNECTED"  # the cached key still works
        await jwks_server.port.stopListening()
        fresh = await start(make_broker, f"jwks={jwks_server.url}")
        down = await deferToThread(connect, fresh.tcp_port, token(kid="k1"))
        assert down.headers["message"] == "authentication service unavailable"

        def still_working():
            raw.send("SUBSCRIBE", {"destination": "/topic/up", "id": "1", "receipt": "r"})
            return raw.read_frame()

        assert (await deferToThread(still_working)).command == "RECEIPT"
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_tokens_and_passwords_side_by_side(make_broker, key_file):
    """Several --auth of one kind of credentials are tried in order."""
    running = await make_broker(
        auth=["memory:alice:pw", f"jwt:key={key_file}"], login_failure_delay=0.01
    )
    by_password = await deferToThread(connect, running.tcp_port, "pw", login="alice")
    assert by_password.command == "CONNECTED"
    by_token = await deferToThread(connect, running.tcp_port, token(sub="bob"))
    assert by_token.command == "CONNECTED"
    expired = await deferToThread(connect, running.tcp_port, token(lifetime=-60))
    assert expired.headers["message"] == "token expired"
    wrong = await deferToThread(connect, running.tcp_port, "nope", login="alice")
    assert wrong.headers["message"] == "authentication failed"
