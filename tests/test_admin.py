"""
The admin HTTP API and Prometheus metrics (``--admin``), against a real
broker on loopback with real STOMP clients making the traffic.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from clients import ClientPool, metric_samples, unique
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.python import usage
from twisted.web.test.requesthelper import DummyRequest

from stomptw.admin import METRICS_CONTENT_TYPE, AdminResource, BearerTokenAuthorizer
from stomptw.config import BrokerConfig
from stomptw.service import makeService
from stomptw.tap import Options

LOOPBACK = "tcp:0:interface=127.0.0.1"
TOKEN = "t0ken-for-tests"


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "admin-token"
    path.write_text(f"  {TOKEN}\n")
    return str(path)


async def start(make_broker, token_file: str = "", **overrides):
    overrides.setdefault("admin_endpoints", [LOOPBACK])
    running = await make_broker(admin_token_file=token_file, **overrides)
    assert running.admin_port
    return running


def url(running, path: str) -> str:
    return f"http://127.0.0.1:{running.admin_port}{path}"


def dest_path(name: str, suffix: str = "") -> str:
    return "/api/destinations/" + quote(name, safe="") + suffix


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def get_json(running, path: str, code: int = 200):
    response = await treq.get(url(running, path))
    assert response.code == code, await response.text()
    assert response.headers.getRawHeaders("content-type") == ["application/json"]
    return await response.json()


async def scrape(running) -> dict[str, dict[tuple, float]]:
    """``/metrics`` parsed: sample name -> {sorted label items: value}."""
    response = await treq.get(url(running, "/metrics"))
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type") == [METRICS_CONTENT_TYPE]
    text = await response.text()
    samples = metric_samples(text)
    # HELP and TYPE precede every family, in the text itself too.
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert f"# TYPE {name} " in text, name
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


class Clients:
    """A :class:`ClientPool` kept open across awaits; entered and left in a thread."""

    def __init__(self) -> None:
        self.pool = ClientPool()
        self.pool.__enter__()

    async def run(self, fn, *args):
        return await deferToThread(fn, self.pool, *args)

    async def close(self) -> None:
        await deferToThread(self.pool.__exit__, None, None, None)


# -- metrics ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_metrics_move_with_traffic(make_broker):
    running = await start(make_broker)
    before = await scrape(running)
    assert value(before, "stomptw_connections", transport="tcp") == 0
    assert value(before, "stomptw_connections", transport="ws") == 0
    assert value(before, "stomptw_connections", transport="tls") == 0
    assert value(before, "stomptw_messages_total", event="published") == 0
    assert value(before, "stomptw_destinations_omitted") == 0
    assert "stomptw_queue_messages" not in before  # a family without samples
    queue = "/queue/" + unique("metrics")
    topic = "/topic/" + unique("metrics")
    clients = Clients()
    try:

        def traffic(pool: ClientPool) -> None:
            producer = pool.tcp(running.tcp_port)
            for i in range(3):
                producer.send(queue, f"m{i}", receipt=True)
            listener = pool.ws(running.ws_port, running.ws_path)
            listener.subscribe(topic)
            raw = pool.raw(running.tcp_port)
            raw.connect()
            raw.send("FROB", {})  # an unknown command: ERROR, counted as OTHER
            assert raw.read_frame().command == "ERROR"
            raw.wait_eof()

        await clients.run(traffic)
        after = await scrape(running)
        # The raw client's session lingers until it closes its socket.
        assert value(after, "stomptw_connections", transport="tcp") == 2
        assert value(after, "stomptw_connections", transport="ws") == 1
        assert value(after, "stomptw_messages_total", event="published") == 3
        assert value(after, "stomptw_frames_received_total", command="SEND") == 3
        # stomp.py opens 1.2 sessions with STOMP, the raw client with CONNECT.
        assert value(after, "stomptw_frames_received_total", command="CONNECT") == 1
        assert value(after, "stomptw_frames_received_total", command="STOMP") == 2
        assert value(after, "stomptw_frames_received_total", command="SUBSCRIBE") == 1
        assert value(after, "stomptw_frames_received_total", command="OTHER") == 1
        assert value(after, "stomptw_frames_sent_total", command="CONNECTED") == 3
        assert value(after, "stomptw_frames_sent_total", command="RECEIPT") == 4
        assert value(after, "stomptw_frames_sent_total", command="ERROR") == 1
        assert value(after, "stomptw_queue_messages", destination=queue) == 3
        assert value(after, "stomptw_queue_bytes", destination=queue) == (
            running.broker.destinations[queue].bytes
        )
        assert value(after, "stomptw_messages_queued") == 3
        assert value(after, "stomptw_destination_consumers", destination=queue, kind="queue") == 0
        assert value(after, "stomptw_destination_consumers", destination=topic, kind="topic") == 1
        assert value(after, "stomptw_bytes_received_total") > 3 * len("SEND\n")
        assert value(after, "stomptw_bytes_sent_total") > 0
        counters = running.broker.counters
        assert value(after, "stomptw_bytes_received_total") == counters.bytes_received
        assert value(after, "stomptw_bytes_sent_total") == counters.bytes_sent

        def consume(pool: ClientPool) -> None:
            consumer = pool.tcp(running.tcp_port)
            consumer.subscribe(queue, ack="client-individual")
            for message in consumer.next_messages(3):
                consumer.ack(message)

        await clients.run(consume)
        later = await scrape(running)
        assert value(later, "stomptw_messages_total", event="delivered") == 3
        assert value(later, "stomptw_messages_total", event="acked") == 3
        assert value(later, "stomptw_frames_sent_total", command="MESSAGE") == 3
        assert value(later, "stomptw_frames_received_total", command="ACK") == 3
        assert value(later, "stomptw_messages_queued") == 0
        assert value(later, "stomptw_queue_messages", destination=queue) == 0
    finally:
        await clients.close()


@pytest_twisted.ensureDeferred
async def test_metrics_bound_per_destination_series(make_broker):
    running = await start(make_broker)
    prefix = "/queue/" + unique("many") + "-"
    names = [f"{prefix}{i:03d}" for i in range(130)]
    big = names[7]

    def fill(pool: ClientPool) -> None:
        raw = pool.raw(running.tcp_port)
        raw.connect()
        for name in names:
            raw.send("SEND", {"destination": name}, b"x")
        for _ in range(4):
            raw.send("SEND", {"destination": big}, b"x")
        raw.send("SUBSCRIBE", {"destination": "/topic/" + unique("t"), "id": "1"})
        raw.send("DISCONNECT", {"receipt": "done"})
        assert raw.read_frame().headers["receipt-id"] == "done"

    clients = Clients()
    try:
        await clients.run(fill)
    finally:
        await clients.close()
    samples = await scrape(running)
    assert len(running.broker.destinations) == 130
    assert len(samples["stomptw_queue_messages"]) == 100
    assert len(samples["stomptw_queue_bytes"]) == 100
    assert len(samples["stomptw_destination_consumers"]) == 100
    assert value(samples, "stomptw_destinations_omitted") == 30
    assert value(samples, "stomptw_destinations", kind="queue") == 130
    # The largest queue comes first and is never left out.
    assert value(samples, "stomptw_queue_messages", destination=big) == 5
    assert value(samples, "stomptw_messages_queued") == 134
    # Nothing is labelled by connection or session.
    for series in samples.values():
        for labels in series:
            assert {k for k, _ in labels} <= {
                "transport",
                "command",
                "event",
                "action",
                "outcome",
                "permission",
                "alarm",
            } | {
                "destination",
                "kind",
                "version",
            }


@pytest_twisted.ensureDeferred
async def test_heartbeat_timeouts_are_counted(make_broker):
    running = await start(make_broker, heartbeat_receive_ms=100, heartbeat_grace=1.5)

    def silent(pool: ClientPool) -> str:
        raw = pool.raw(running.tcp_port)
        raw.connect(**{"heart-beat": "100,0"})
        error = raw.read_frame()
        assert error.command == "ERROR"
        return error.headers["message"]

    clients = Clients()
    try:
        assert await clients.run(silent) == "heart-beat timeout"
    finally:
        await clients.close()
    samples = await scrape(running)
    assert value(samples, "stomptw_heartbeat_timeouts_total") == 1


@pytest_twisted.ensureDeferred
async def test_store_metrics_and_persistent_publish(make_broker, tmp_path, token_file):
    running = await start(make_broker, token_file, store="sqlite", data_dir=str(tmp_path / "d"))
    queue = "/queue/" + unique("stored")
    response = await treq.post(
        url(running, dest_path(queue, "/messages")),
        json={"body": "kept", "headers": {"persistent": "true"}},
        headers=AUTH,
    )
    assert response.code == 201
    # The 201 comes once the message is committed.
    samples = await scrape(running)
    assert value(samples, "stomptw_store_commits_total") >= 1
    assert value(samples, "stomptw_store_commit_seconds") > 0
    assert value(samples, "stomptw_queue_messages", destination=queue) == 1


# -- health -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_and_readiness(make_broker):
    running = await start(make_broker)
    response = await treq.get(url(running, "/healthz"))
    assert response.code == 200
    assert (await response.text()).strip() == "ok"
    response = await treq.get(url(running, "/readyz"))
    assert response.code == 200
    response = await treq.get(url(running, "/nothing-here"))
    assert response.code == 404
    response = await treq.post(url(running, "/metrics"), headers=AUTH)
    assert response.code == 405


def test_not_ready_before_listening_and_loading():
    config = dataclasses.replace(
        BrokerConfig(), tcp_endpoints=[LOOPBACK], ws_endpoints=[], store="memory"
    )
    service = makeService(config, reactor)
    resource = AdminResource(
        service.unbound_listeners, service.broker, BearerTokenAuthorizer(None), reactor
    )
    request = DummyRequest([b"readyz"])
    request.method = b"GET"
    request.path = b"/readyz"
    body = resource.render(request)
    assert request.responseCode == 503
    assert b"message store not loaded" in body
    assert b"stomp listener" in body


# -- authorization ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_mutating_endpoints_disabled_without_token_file(make_broker):
    running = await start(make_broker)
    queue = "/queue/" + unique("q")
    for method in ("POST", "DELETE"):
        response = await treq.request(
            method, url(running, dest_path(queue, "/messages")), json={"body": "x"}, headers=AUTH
        )
        assert response.code == 403
        assert (await response.json())["error"] == (
            "mutating endpoints are disabled: start with --admin-token-file"
        )
    assert running.broker.stats["published"] == 0
    # Reading needs no token.
    assert await get_json(running, "/api/destinations") == []


@pytest_twisted.ensureDeferred
async def test_bearer_token(make_broker, token_file):
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await _bearer_token_checks(make_broker, token_file)
    finally:
        globalLogPublisher.removeObserver(events.append)
    # Auth failures are logged, with who and why; a token never is.
    refusals = [e for e in events if "refused" in e.get("log_format", "")]
    assert [e["status"] for e in refusals] == [401, 401, 403]
    assert all(e["method"] == "POST" and e["peer"].startswith("127.0.0.1:") for e in refusals)
    assert not any(TOKEN in repr(e) or "Bearer no" in repr(e) for e in events)


async def _bearer_token_checks(make_broker, token_file: str) -> None:
    running = await start(make_broker, token_file)
    target = url(running, dest_path("/queue/" + unique("auth"), "/messages"))
    response = await treq.post(target, json={"body": "x"})
    assert response.code == 401
    assert response.headers.getRawHeaders("www-authenticate")[0].startswith("Bearer")
    response = await treq.post(target, json={"body": "x"}, headers={"Authorization": "Basic x"})
    assert response.code == 401
    response = await treq.post(target, json={"body": "x"}, headers={"Authorization": "Bearer no"})
    assert response.code == 403
    assert running.broker.stats["published"] == 0
    response = await treq.post(target, json={"body": "x"}, headers=AUTH)
    assert response.code == 201
    assert running.broker.stats["published"] == 1


@pytest.mark.parametrize("content", [None, "", "  \n"], ids=["missing", "empty", "blank"])
def test_unusable_token_file_refuses_to_start(tmp_path, content):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(usage.UsageError, match="--admin-token-file"):
        Options().parseOptions(["--admin", LOOPBACK, "--admin-token-file", str(path)])
    config = dataclasses.replace(
        BrokerConfig(), admin_endpoints=[LOOPBACK], admin_token_file=str(path), store="memory"
    )
    with pytest.raises(ValueError, match="admin token file"):
        makeService(config, reactor)


def test_tap_options(token_file):
    assert Options().parseOptions([]) is None
    defaults = Options()
    defaults.parseOptions([])
    assert defaults.config.admin_endpoints == []
    assert defaults.config.admin_token_file == ""
    options = Options()
    options.parseOptions(
        [
            "--admin",
            "tcp:15670:interface=127.0.0.1",
            "--admin=tcp:15671:interface=127.0.0.1",
            "--admin-token-file",
            token_file,
        ]
    )
    assert options.config.admin_endpoints == [
        "tcp:15670:interface=127.0.0.1",
        "tcp:15671:interface=127.0.0.1",
    ]
    assert options.config.admin_token_file == token_file
    assert "--admin=" in str(Options())
    service = makeService(dataclasses.replace(options.config, store="memory"), reactor)
    assert [listener.description for listener in service.listeners("admin")] == [
        "tcp:15670:interface=127.0.0.1",
        "tcp:15671:interface=127.0.0.1",
    ]


# -- the JSON API -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_json_connections_destinations_subscriptions(make_broker, token_file):
    running = await start(make_broker, token_file)
    queue = "/queue/" + unique("json")
    topic = "/topic/" + unique("json")
    clients = Clients()
    try:

        def setup(pool: ClientPool) -> str:
            client = pool.tcp(running.tcp_port, connect=False)
            client.connect(headers={"client-id": "app-1"})
            client.subscribe(topic, sub_id="s-topic")
            client.subscribe(topic, sub_id="d-1", **{"activemq.subscriptionName": "dur"})
            client.send(queue, "a", receipt=True)
            client.send(queue, "bb", receipt=True)
            return client.connected_frame.headers["session"]

        session = await clients.run(setup)
        connections = await get_json(running, "/api/connections")
        assert len(connections) == 1
        (connection,) = connections
        assert connection["session_id"] == session
        assert connection["transport"] == "tcp"
        assert connection["version"] == "1.2"
        assert connection["client_id"] == "app-1"
        assert connection["subscriptions"] == 2
        assert connection["peer"].startswith("127.0.0.1:")
        assert connection["connected_seconds"] >= 0
        one = await get_json(running, f"/api/connections/{session}")
        assert one["subscription_ids"] == ["d-1", "s-topic"]
        await get_json(running, "/api/connections/no-such-session", 404)

        destinations = {d["name"]: d for d in await get_json(running, "/api/destinations")}
        assert destinations[queue]["kind"] == "queue"
        assert destinations[queue]["messages"] == 2
        assert destinations[queue]["bytes"] == running.broker.destinations[queue].bytes
        assert destinations[queue]["consumers"] == 0
        assert destinations[topic]["kind"] == "topic"
        assert destinations[topic]["consumers"] == 1
        assert destinations[topic]["durable_subscriptions"] == 1
        assert (await get_json(running, dest_path(queue)))["messages"] == 2
        await get_json(running, dest_path("/queue/none-such"), 404)

        subscriptions = await get_json(running, "/api/subscriptions")
        by_id = {s["id"]: s for s in subscriptions}
        assert by_id["s-topic"]["destination"] == topic
        assert by_id["s-topic"]["session_id"] == session
        assert by_id["s-topic"]["durable"] is None
        assert by_id["d-1"]["durable"] == "dur"
        assert by_id["d-1"]["client_id"] == "app-1"

        # Once its subscriber is gone a durable subscription is still listed.
        await clients.run(lambda pool: pool.__exit__(None, None, None))
        clients.pool = ClientPool()
        clients.pool.__enter__()
        subscriptions = await get_json(running, "/api/subscriptions")
        assert [(s["durable"], s["active"]) for s in subscriptions] == [("dur", False)]
        assert await get_json(running, "/api/connections") == []

        # Purge: the waiting messages go, a count comes back.
        response = await treq.delete(url(running, dest_path(queue, "/messages")), headers=AUTH)
        assert response.code == 200
        assert await response.json() == {"destination": queue, "purged": 2}
        assert queue not in running.broker.destinations
        response = await treq.delete(url(running, dest_path(queue, "/messages")), headers=AUTH)
        assert response.code == 404
        response = await treq.delete(url(running, dest_path(topic, "/messages")), headers=AUTH)
        assert response.code == 400
    finally:
        await clients.close()


@pytest_twisted.ensureDeferred
async def test_publish_reaches_a_subscriber(make_broker, token_file):
    running = await start(make_broker, token_file)
    queue = "/queue/" + unique("pub") + "/with/slashes"
    clients = Clients()
    try:

        def subscribe(pool: ClientPool):
            client = pool.tcp(running.tcp_port)
            client.subscribe(queue)
            return client

        client = await clients.run(subscribe)
        response = await treq.post(
            url(running, dest_path(queue, "/messages")),
            json={"body": "héllo", "headers": {"x-app": "1", "message-id": "forged"}},
            headers=AUTH,
        )
        assert response.code == 201
        created = await response.json()
        message = await deferToThread(client.next_message)
        assert message.body == "héllo"
        assert message.headers["x-app"] == "1"
        assert message.headers["message-id"] == created["message_id"] != "forged"
        assert message.headers["destination"] == queue

        # Unencoded slashes work too (the name's leading one makes "//").
        response = await treq.post(
            url(running, f"/api/destinations/{queue}/messages"), json={"body": "2"}, headers=AUTH
        )
        assert response.code == 201
        assert (await deferToThread(client.next_message)).body == "2"

        bad = [
            (b"not json", "not JSON"),
            (json.dumps([1]).encode(), "JSON object"),
            (json.dumps({"body": 1}).encode(), "body must be a string"),
            (json.dumps({"headers": {"a": 1}}).encode(), "headers"),
            (json.dumps({"body": "", "extra": 1}).encode(), "unknown fields"),
            (json.dumps({"headers": {"expires": "soon"}}).encode(), "expires"),
        ]
        as_json = {**AUTH, "Content-Type": "application/json"}
        for data, error in bad:
            response = await treq.post(
                url(running, dest_path(queue, "/messages")), data=data, headers=as_json
            )
            assert response.code == 400, data
            assert error in (await response.json())["error"]
        # A body that does not say it is JSON is refused whatever it holds:
        # a cross-site form (text/plain, urlencoded) must not publish.
        for kind in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {**AUTH, "Content-Type": kind} if kind else AUTH
            response = await treq.post(
                url(running, dest_path(queue, "/messages")),
                data=json.dumps({"body": "forged"}).encode(),
                headers=headers,
            )
            assert response.code == 415, kind
        response = await treq.post(
            url(running, dest_path("/queue/", "/messages")), json={"body": "x"}, headers=AUTH
        )
        assert response.code == 400
        assert running.broker.stats["published"] == 2
    finally:
        await clients.close()


@pytest_twisted.ensureDeferred
async def test_publish_to_a_full_queue(make_broker, token_file):
    running = await start(make_broker, token_file, max_queue_length=1)
    target = url(running, dest_path("/queue/" + unique("full"), "/messages"))
    assert (await treq.post(target, json={"body": "1"}, headers=AUTH)).code == 201
    response = await treq.post(target, json={"body": "2"}, headers=AUTH)
    assert response.code == 503
    assert "full" in (await response.json())["error"]


@pytest_twisted.ensureDeferred
async def test_close_connection(make_broker, token_file):
    running = await start(make_broker, token_file)
    clients = Clients()
    try:

        def connect(pool: ClientPool):
            raw = pool.raw(running.tcp_port)
            session = raw.connect().headers["session"]
            return raw, session

        raw, session = await clients.run(connect)
        target = url(running, f"/api/connections/{session}?reason=maintenance")
        response = await treq.delete(target)
        assert response.code == 401
        response = await treq.delete(target, headers=AUTH)
        assert response.code == 200
        assert await response.json() == {"closed": session}

        def closed() -> None:
            error = raw.read_frame()
            assert error.command == "ERROR"
            assert error.headers["message"] == "closed by the operator"
            assert b"maintenance" in error.body
            raw.wait_eof()

        await deferToThread(closed)
        (proto,) = running.broker.sessions
        # Asking again changes nothing but tells when the connection is gone.
        gone = proto.close_by_operator()
        await deferToThread(raw.close)
        await gone
        assert await get_json(running, "/api/connections") == []
        response = await treq.delete(target, headers=AUTH)
        assert response.code == 404
    finally:
        await clients.close()


# -- administrators from the broker's own logins -----------------------------------------


@pytest_twisted.ensureDeferred
async def test_administrators_log_in_with_basic_or_a_token(make_broker, token_file, tmp_path):
    """
    With --auth, users with the administrator tag may use the mutating
    endpoints (HTTP Basic, or a JWT as bearer token); the token file still works.
    """
    import base64

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from stomptw.users import User, hash_password, write_users

    users = tmp_path / "users.toml"
    write_users(
        str(users),
        [
            User("root", hash_password("r-pw"), tags=("administrator",)),
            User("carol", hash_password("c-pw")),
        ],
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "idp.pem"
    pem.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    running = await start(make_broker, token_file, auth=[f"users:{users}", f"jwt:key={pem}"])
    target = url(running, dest_path("/queue/" + unique("admins"), "/messages"))

    def basic(name: str, password: str) -> dict:
        encoded = base64.b64encode(f"{name}:{password}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}

    def bearer(tags: str) -> dict:
        claims = {"sub": "ops", "exp": time.time() + 60, "scope": tags}
        return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="RS256")}

    answers = {}
    for label, headers in [
        ("admin by password", basic("root", "r-pw")),
        ("wrong password", basic("root", "nope")),
        ("not an administrator", basic("carol", "c-pw")),
        ("admin token", bearer("stomptw.tag:administrator")),
        ("token without the tag", bearer("")),
        ("token file", AUTH),
        ("nothing", {}),
    ]:
        response = await treq.post(target, json={"body": label}, headers=headers)
        answers[label] = response.code
        if response.code != 201:
            assert (await response.json())["error"]
    assert answers == {
        "admin by password": 201,
        "wrong password": 401,
        "not an administrator": 403,
        "admin token": 201,
        "token without the tag": 403,
        "token file": 201,
        "nothing": 401,
    }
    assert running.broker.stats["published"] == 3
    # Reading needs no credentials, and shows each connection's user.
    from clients import RawStompSocket
    from twisted.internet.threads import deferToThread

    raw = RawStompSocket(running.tcp_port)
    try:
        await deferToThread(raw.connect, login="carol", passcode="c-pw")
        (connection,) = await get_json(running, "/api/connections")
        assert (connection["user"], connection["vhost"]) == ("carol", "/")
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_destinations_of_a_vhost_with_the_vhost_parameter(make_broker, token_file):
    running = await start(make_broker, token_file, vhosts=["team"])
    name = "/queue/" + unique("vh")
    path = dest_path(name, "/messages")
    response = await treq.post(url(running, path + "?vhost=team"), json={"body": "x"}, headers=AUTH)
    assert response.code == 201
    team = await get_json(running, "/api/destinations?vhost=team")
    assert [d["name"] for d in team] == [name]
    assert await get_json(running, "/api/destinations") == []  # the default vhost's
    assert (await get_json(running, dest_path(name) + "?vhost=team"))["name"] == name
    await get_json(running, dest_path(name), code=404)
    missing = await treq.get(url(running, "/api/destinations?vhost=nosuch"))
    assert missing.code == 404 and "no vhost 'nosuch'" in (await missing.json())["error"]
    purged = await treq.delete(url(running, path + "?vhost=team"), headers=AUTH)
    assert purged.code == 200 and (await purged.json())["purged"] == 1
