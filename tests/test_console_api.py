"""
The operator's console over plain HTTP (stomptw.console): its page and
files with their security headers, the overview and the event stream, the
paged tables, and the login: the session cookie, the CSRF header every
change needs, administrators only, failed logins delayed and limited.
The browser side is in test_console.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from clients import ClientPool, unique, wait_until
from twisted.internet import defer, protocol, reactor
from twisted.internet.threads import deferToThread

from stomptw.console import MAX_EVENT_STREAMS
from stomptw.users import User, hash_password, write_users

LOOPBACK = "tcp:0:interface=127.0.0.1"
TOKEN = "console-t0ken"


def url(running, path: str) -> str:
    return f"http://127.0.0.1:{running.admin_port}{path}"


@pytest.fixture
def users_file(tmp_path: Path) -> str:
    path = tmp_path / "users.toml"
    write_users(
        str(path),
        [
            User("root", hash_password("r-pw"), tags=("administrator",)),
            User("carol", hash_password("c-pw")),
        ],
    )
    return str(path)


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN + "\n")
    return str(path)


async def start(make_broker, **overrides):
    overrides.setdefault("admin_endpoints", [LOOPBACK])
    overrides.setdefault("login_failure_delay", 0.01)
    running = await make_broker(**overrides)
    assert running.admin_port
    return running


async def login(running, user: str, password: str, code: int = 200):
    response = await treq.post(
        url(running, "/api/console/session"), json={"user": user, "password": password}
    )
    body = await response.json()
    assert response.code == code, body
    return response, body


def session_cookie(response) -> str:
    (header,) = response.headers.getRawHeaders("set-cookie")
    return header


def cookie_of(response) -> dict:
    value = session_cookie(response).split(";")[0]
    return {"Cookie": value}


# -- the page and its headers ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_page_files_and_every_response_carry_security_headers(make_broker):
    running = await start(make_broker)
    for path, content_type in [
        ("/", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/api/overview", "application/json"),
        ("/api/destinations", "application/json"),
        ("/metrics", None),
        ("/console/", None),
        ("/console/nosuch.js", None),
    ]:
        response = await treq.get(url(running, path))
        await response.content()
        headers = response.headers
        (csp,) = headers.getRawHeaders("content-security-policy")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers.getRawHeaders("x-content-type-options") == ["nosniff"], path
        assert headers.getRawHeaders("referrer-policy") == ["no-referrer"], path
        if content_type:
            assert response.code == 200, path
            assert headers.getRawHeaders("content-type") == [content_type], path
        elif path.startswith("/console/"):
            assert response.code == 404, path  # no directory listing
    page = (await (await treq.get(url(running, "/"))).text()).lower()
    # No inline script or style, and nothing from another host.
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert "<style" not in page and " style=" not in page
    for link in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert link.startswith(("/console/", "#", "data:")), link


# -- overview and events ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_overview_has_facts_counters_and_a_history(make_broker):
    running = await start(make_broker)
    queue = "/queue/" + unique("ov")
    for _ in range(3):
        running.broker.send(queue, {}, b"x" * 10)
    first = await (await treq.get(url(running, "/api/overview"))).json()
    from stomptw import __version__

    assert first["version"] == __version__
    assert first["uptime_seconds"] >= 0
    assert first["listeners"]["admin"] == [LOOPBACK]
    assert first["store"]["kind"] == "memory"
    assert first["counters"]["published"] == 3
    assert first["destinations"]["queues"] == 1
    assert set(first["connections"]) == {"tcp", "tls", "ws"}
    assert first["history"], "the sampler takes a sample as the listener starts"
    point = first["history"][-1]
    assert set(point) >= {"time", "rates", "totals", "connections", "memory", "commit_ms"}
    assert set(point["rates"]) == {"published", "delivered", "acked"}
    later = first
    for _ in range(40):
        await _sleep(0.1)
        later = await (await treq.get(url(running, "/api/overview"))).json()
        if len(later["history"]) > len(first["history"]):
            break
    assert len(later["history"]) > len(first["history"])


def _sleep(seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


class _Events(protocol.Protocol):
    """Collects an event stream's ``data:`` lines."""

    def __init__(self) -> None:
        self.buffer = b""
        self.events: list[dict] = []
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.buffer += data
        while b"\n\n" in self.buffer:
            chunk, self.buffer = self.buffer.split(b"\n\n", 1)
            for line in chunk.split(b"\n"):
                if line.startswith(b"data: "):
                    self.events.append(json.loads(line[6:]))

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.done.callback(None)


async def open_stream(running):
    from twisted.web.client import Agent

    response = await Agent(reactor).request(b"GET", url(running, "/api/events").encode())
    stream = _Events()
    stream.response = response
    response.deliverBody(stream)
    return stream


@pytest_twisted.ensureDeferred
async def test_events_send_a_sample_a_second_and_are_bounded(make_broker):
    running = await start(make_broker)
    stream = await open_stream(running)
    assert stream.response.code == 200
    assert stream.response.headers.getRawHeaders("content-type") == [
        "text/event-stream; charset=utf-8"
    ]
    queue = "/queue/" + unique("ev")
    for _ in range(40):
        running.broker.send(queue, {}, b"y")
        await _sleep(0.1)
        if len(stream.events) >= 2:
            break
    assert len(stream.events) >= 2
    assert any(e["rates"]["published"] > 0 for e in stream.events)
    # At most MAX_EVENT_STREAMS at once; one more is refused.
    more = [await open_stream(running) for _ in range(MAX_EVENT_STREAMS - 1)]
    refused = await open_stream(running)
    assert refused.response.code == 503
    # A client that goes away frees its place.
    stream.transport.stopProducing()
    for s in more:
        s.transport.stopProducing()
    await stream.done
    for s in more:
        await s.done
    again = await open_stream(running)
    for _ in range(30):
        if again.response.code == 200:
            break
        await _sleep(0.1)
        again = await open_stream(running)
    assert again.response.code == 200
    again.transport.stopProducing()
    await again.done


# -- tables ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_destination_table_pages_sorts_and_filters_thousands(make_broker):
    running = await start(make_broker)
    broker = running.broker
    for i in range(2000):
        broker.send(f"/queue/many.{i:04d}", {}, b"z" * (i % 7 + 1))
    for _ in range(3):
        broker.send("/queue/many.0042", {}, b"more")

    async def table(query: str) -> dict:
        response = await treq.get(url(running, "/api/console/destinations?" + query))
        assert response.code == 200
        return await response.json()

    first = await table("limit=50")
    assert first["total"] == 2000 and len(first["items"]) == 50
    assert first["items"][0]["name"] == "/queue/many.0000"
    last = await table("limit=50&offset=1950")
    assert last["items"][-1]["name"] == "/queue/many.1999"
    deepest = await table("sort=depth&order=desc&limit=1")
    assert deepest["items"][0]["name"] == "/queue/many.0042"
    assert deepest["items"][0]["depth"] == 4
    filtered = await table("q=MANY.19&limit=500")
    assert filtered["total"] == 100
    topics = await table("kind=topic")
    assert topics["total"] == 0
    capped = await table("limit=100000")
    assert capped["limit"] == 500
    row = first["items"][0]
    assert set(row) >= {"depth", "unacked", "consumers", "rate_in", "rate_out", "bytes_in_rate"}
    detail = await (
        await treq.get(url(running, "/api/console/destination?name=" + quote("/queue/many.0042")))
    ).json()
    assert detail["depth"] == 4 and detail["subscriptions"] == []
    missing = await treq.get(url(running, "/api/console/destination?name=%2Fqueue%2Fnone"))
    assert missing.code == 404


@pytest_twisted.ensureDeferred
async def test_connections_and_durables_tables(make_broker):
    running = await start(make_broker)
    topic = "/topic/" + unique("dur")
    pool = ClientPool()
    pool.__enter__()
    try:

        def traffic(pool: ClientPool) -> None:
            client = pool.tcp(running.tcp_port, connect=False)
            client.connect(headers={"client-id": "app-1"})
            client.subscribe(topic, "d1", **{"activemq.subscriptionName": "keep"})
            for i in range(3):
                client.send(topic, f"m{i}", receipt=True)
            client.next_messages(3)

        await deferToThread(traffic, pool)
        rows = await (await treq.get(url(running, "/api/console/connections"))).json()
        assert rows["total"] == 1
        (conn,) = rows["items"]
        assert conn["transport"] == "tcp" and conn["version"] == "1.2"
        assert conn["frames_in"] >= 5 and conn["frames_out"] >= 6
        assert conn["bytes_in"] > 0 and conn["bytes_out"] > 0
        assert conn["heartbeat_send_ms"] >= 0 and conn["subscriptions"] == 1
        assert conn["since"] > 1e9
        durables = await (await treq.get(url(running, "/api/console/durables"))).json()
        (durable,) = durables["items"]
        assert (durable["name"], durable["client_id"], durable["active"]) == ("keep", "app-1", True)
    finally:
        await deferToThread(pool.__exit__, None, None, None)

    def away() -> bool:
        return not running.broker.sessions

    await deferToThread(wait_until, away, "the client gone")
    running.broker.send(topic, {}, b"while away")
    durables = await (await treq.get(url(running, "/api/console/durables"))).json()
    (durable,) = durables["items"]
    assert durable["active"] is False and durable["backlog"] == 1


# -- logins ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_administrators_log_in_and_changes_need_the_csrf_header(make_broker, users_file):
    running = await start(make_broker, auth=[f"users:{users_file}"])
    queue = "/queue/" + unique("csrf")
    running.broker.send(queue, {}, b"one")
    purge = url(running, "/api/destinations/" + quote(queue, safe="") + "/messages")

    anonymous = await (await treq.get(url(running, "/api/console/session"))).json()
    assert anonymous == {"mode": "users", "authenticated": False}
    await login(running, "root", "wrong", 401)
    _, refused = await login(running, "carol", "c-pw", 403)
    assert "administrator" in refused["error"]
    form = await treq.post(url(running, "/api/console/session"), data={"user": "root"})
    assert form.code == 415  # a cross-site form cannot log anyone in

    response, body = await login(running, "root", "r-pw")
    assert body["user"] == "root" and len(body["csrf"]) >= 43
    cookie = session_cookie(response)
    attributes = [part.strip() for part in cookie.split(";")]
    name, _, value = attributes[0].partition("=")
    assert name == "stomptw_console" and len(value) >= 43  # 32 random bytes
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes)
    headers = cookie_of(response)
    whoami = await (await treq.get(url(running, "/api/console/session"), headers=headers)).json()
    assert whoami == {"mode": "users", "authenticated": True, "user": "root", "csrf": body["csrf"]}

    # The cookie alone changes nothing, nor does it with a wrong token.
    no_csrf = await treq.delete(purge, headers=headers)
    assert no_csrf.code == 403 and "X-CSRF-Token" in (await no_csrf.json())["error"]
    wrong = await treq.delete(purge, headers={**headers, "X-CSRF-Token": "nope"})
    assert wrong.code == 403
    peek_without = await treq.get(purge, headers=headers)
    assert peek_without.code == 403
    assert running.broker.destinations[queue].count == 1
    done = await treq.delete(purge, headers={**headers, "X-CSRF-Token": body["csrf"]})
    assert done.code == 200 and (await done.json())["purged"] == 1

    # Logging out ends the session: the same cookie and token no longer work.
    out = await treq.delete(
        url(running, "/api/console/session"), headers={**headers, "X-CSRF-Token": body["csrf"]}
    )
    assert out.code == 200 and "Max-Age=0" in session_cookie(out)
    after = await treq.delete(purge, headers={**headers, "X-CSRF-Token": body["csrf"]})
    assert after.code == 401


@pytest_twisted.ensureDeferred
async def test_token_login_without_auth_and_failed_logins_are_limited(make_broker, token_file):
    running = await start(
        make_broker, admin_token_file=token_file, max_failed_logins=3, failed_login_window=60.0
    )
    whoami = await (await treq.get(url(running, "/api/console/session"))).json()
    assert whoami["mode"] == "token"
    response, body = await login(running, "", TOKEN)
    assert body["user"] == "admin-token"
    for _ in range(3):
        await login(running, "", "wrong", 401)
    _, limited = await login(running, "", TOKEN, 429)
    assert "too many failed logins" in limited["error"]
    assert running.broker.auth.counters.rate_limited == 1
    # The session made before still works.
    headers = {**cookie_of(response), "X-CSRF-Token": body["csrf"]}
    publish = url(running, "/api/destinations/%2Fqueue%2Ftok/messages")
    made = await treq.post(publish, json={"body": "x"}, headers=headers)
    assert made.code == 201


@pytest_twisted.ensureDeferred
async def test_no_login_without_auth_or_token(make_broker):
    running = await start(make_broker)
    whoami = await (await treq.get(url(running, "/api/console/session"))).json()
    assert whoami["mode"] == "disabled"
    await login(running, "", "anything", 403)


# -- cross-site requests and bursts of guesses ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_browser_request_from_another_site_changes_nothing(make_broker, users_file):
    running = await start(make_broker, auth=[f"users:{users_file}"])
    basic = {"Authorization": "Basic " + __import__("base64").b64encode(b"root:r-pw").decode()}
    target = url(running, "/api/destinations/%2Fqueue%2Fxsite/messages")
    own = f"http://127.0.0.1:{running.admin_port}"
    # Credentials a browser attached by itself to another site's request.
    for extra in (
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.test"},
    ):
        response = await treq.post(target, json={"body": "forged"}, headers={**basic, **extra})
        assert response.code == 403, extra
        assert "cross-site" in (await response.json())["error"]
        peek = await treq.get(target, headers={**basic, **extra})
        assert peek.code == 403, extra
    assert running.broker.stats["published"] == 0
    # The listener's own pages, and clients that are not browsers, go on.
    made = await treq.post(
        target,
        json={"body": "ok"},
        headers={**basic, "Origin": own, "Sec-Fetch-Site": "same-origin"},
    )
    assert made.code == 201
    made = await treq.post(target, json={"body": "ok"}, headers=basic)
    assert made.code == 201
    # Behind a proxy that ends TLS: the page is https, this request is not.
    made = await treq.post(
        target,
        json={"body": "ok"},
        headers={**basic, "Origin": own.replace("http://", "https://")},
    )
    assert made.code == 201
    # No Basic challenge: a browser would prompt, then attach what was typed.
    refused = await treq.get(target)
    assert refused.code == 401
    assert refused.headers.getRawHeaders("www-authenticate") == ['Bearer realm="stomptw"']


@pytest_twisted.ensureDeferred
async def test_a_burst_of_parallel_guesses_stops_at_the_failed_login_limit(make_broker, users_file):
    from stomptw.authenticator import CHECKS_PER_ADDRESS

    running = await start(
        make_broker, auth=[f"users:{users_file}"], max_failed_logins=5, failed_login_window=60.0
    )
    guesses = [
        treq.post(
            url(running, "/api/console/session"), json={"user": "root", "password": f"guess{n}"}
        )
        for n in range(40)
    ]
    answers = await defer.gatherResults(guesses)
    assert all(a.code in (401, 429) for a in answers), [a.code for a in answers]
    counters = running.broker.auth.counters
    # Checked a few at a time: at most the limit plus the checks under way.
    assert counters.failed <= 5 + CHECKS_PER_ADDRESS, counters.failed
    assert counters.failed + counters.rate_limited == 40


@pytest_twisted.ensureDeferred
async def test_the_destination_detail_takes_the_name_as_given(make_broker):
    running = await start(make_broker)
    odd, other = "/queue/x%41", "/queue/xA"
    for name in (odd, other):
        running.broker.send(name, {}, b"")
    response = await treq.get(url(running, "/api/console/destination"), params={"name": odd})
    assert response.code == 200
    assert (await response.json())["name"] == odd


@pytest_twisted.ensureDeferred
async def test_a_password_that_is_not_valid_unicode_is_a_bad_request(make_broker, users_file):
    running = await start(make_broker, auth=[f"users:{users_file}"])
    response = await treq.post(
        url(running, "/api/console/session"),
        data=b'{"user": "root", "password": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.code == 400


def test_the_open_overview_shows_where_it_listens_not_where_its_keys_are():
    from stomptw.consolestats import public_endpoint

    assert (
        public_endpoint("ssl:61614:interface=0.0.0.0:privateKey=/etc/k.pem:certKey=/etc/c.pem")
        == "ssl:61614:interface=0.0.0.0"
    )
    assert public_endpoint("tcp:61613:interface=127.0.0.1") == "tcp:61613:interface=127.0.0.1"
    assert public_endpoint("unix:/run/stomptw.sock") == "unix:/run/stomptw.sock"


@pytest_twisted.ensureDeferred
async def test_reloading_the_users_ends_the_console_sessions_of_users(
    make_broker, users_file, token_file
):
    running = await start(make_broker, auth=[f"users:{users_file}"], admin_token_file=token_file)
    response, body = await login(running, "root", "r-pw")
    by_user = {**cookie_of(response), "X-CSRF-Token": body["csrf"]}
    response, token_body = await login(running, "", TOKEN)
    by_token = {**cookie_of(response), "X-CSRF-Token": token_body["csrf"]}
    target = url(running, "/api/destinations/%2Fqueue%2Freload/messages")
    # root loses the administrator tag; the file is read again (SIGHUP's reload).
    write_users(users_file, [User("root", hash_password("r-pw"))])
    await running.broker.auth.reload()
    refused = await treq.post(target, json={"body": "x"}, headers=by_user)
    assert refused.code == 401
    await login(running, "root", "r-pw", 403)
    # A session of the admin token does not depend on the users file.
    made = await treq.post(target, json={"body": "x"}, headers=by_token)
    assert made.code == 201
