"""
``stomptw-ctl`` (the installed console script, run as a subprocess) against
a real broker with ``--admin``, a token file and ``--auth`` users, with real
STOMP clients; and the admin API's peek endpoint
(``GET /api/destinations/<name>/messages``) it relies on.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from clients import ClientPool, RawStompSocket, unique
from twisted.internet.threads import deferToThread

from stomptw.ctl import escape, format_table
from stomptw.users import User, hash_password, write_users

LOOPBACK = "tcp:0:interface=127.0.0.1"
TOKEN = "ctl-t0ken-for-tests"
ROOT_PASSWORD = "r00t pw"
CAROL_PASSWORD = "c-pw"
CTL = Path(sys.prefix) / "bin" / "stomptw-ctl"


@pytest.fixture
def token_file(tmp_path: Path) -> str:
    path = tmp_path / "admin-token"
    path.write_text(f"{TOKEN}\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def users_file(tmp_path: Path) -> str:
    path = tmp_path / "users.toml"
    write_users(
        str(path),
        [
            User("root", hash_password(ROOT_PASSWORD), tags=("administrator",)),
            User("carol", hash_password(CAROL_PASSWORD)),
        ],
    )
    return str(path)


@pytest.fixture
def start(make_broker, token_file, users_file):
    """``await start(**overrides)``: a broker with the admin API, the token file and users."""

    async def start_broker(**overrides):
        overrides.setdefault("admin_endpoints", [LOOPBACK])
        overrides.setdefault("admin_token_file", token_file)
        overrides.setdefault("auth", [f"users:{users_file}"])
        running = await make_broker(**overrides)
        assert running.admin_port
        return running

    return start_broker


class Ctl:
    """Runs the installed ``stomptw-ctl`` against one broker, in a thread."""

    def __init__(self, admin: str, token_file: str) -> None:
        self.admin = admin
        self.token_file = token_file

    @classmethod
    def of(cls, running, token_file: str) -> Ctl:
        return cls(f"http://127.0.0.1:{running.admin_port}", token_file)

    async def __call__(
        self, *args: str, auth: str = "token", env: dict | None = None, stdin: str = ""
    ) -> subprocess.CompletedProcess:
        if not CTL.exists():
            pytest.fail(f"{CTL} is missing: run .venv/bin/pip install '.[test]'")
        argv = [str(CTL), "--admin", self.admin]
        if auth == "token":
            argv += ["--token-file", self.token_file]
        elif auth == "root":
            argv += ["--user", "root"]
            env = {"STOMPTW_PASSWORD": ROOT_PASSWORD, **(env or {})}
        full_env = {
            k: v for k, v in os.environ.items() if k not in ("STOMPTW_PASSWORD", "STOMPTW_ADMIN")
        }
        full_env.update(env or {})
        result = await deferToThread(
            subprocess.run,
            [*argv, *args],
            capture_output=True,
            text=True,
            env=full_env,
            input=stdin,
            timeout=60,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result

    async def ok(self, *args: str, **kwargs) -> str:
        result = await self(*args, **kwargs)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    async def json(self, *args: str, **kwargs):
        return json.loads(await self.ok(*args, "--json", **kwargs))


class Clients:
    """A :class:`ClientPool` kept open across awaits; used in a thread."""

    def __init__(self) -> None:
        self.pool = ClientPool()

    async def run(self, fn, *args):
        return await deferToThread(fn, self.pool, *args)

    async def close(self) -> None:
        await deferToThread(self.pool.__exit__, None, None, None)


def login(pool: ClientPool, port: int, **headers):
    """A stomp.py client logged in as carol."""
    client = pool.tcp(port, connect=False)
    client.connect(headers=headers or None, username="carol", passcode=CAROL_PASSWORD)
    return client


def rows(table: str) -> list[list[str]]:
    """A table's lines split into cells (cells hold no double spaces here)."""
    return [[c.strip() for c in line.split("  ") if c.strip()] for line in table.splitlines()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the command line against a real broker ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_list_every_kind_as_a_table_and_as_json(start, token_file):
    running = await start()
    ctl = Ctl.of(running, token_file)
    queue = "/queue/" + unique("ctl-list")
    topic = "/topic/" + unique("ctl-list")
    clients = Clients()
    try:

        def setup(pool: ClientPool) -> str:
            client = login(pool, running.tcp_port, **{"client-id": "app-1"})
            client.subscribe(topic, sub_id="s-topic")
            client.subscribe(topic, sub_id="d-1", **{"activemq.subscriptionName": "dur"})
            client.send(queue, "a", receipt=True)
            client.send(queue, "bb", receipt=True)
            return client.connected_frame.headers["session"]

        session = await clients.run(setup)

        table = await ctl.ok("list", "connections", auth="none")
        heading, *lines = rows(table)
        assert heading[:3] == ["SESSION", "PEER", "TRANSPORT"]
        assert len(lines) == 1 and lines[0][0] == session
        assert "carol" in lines[0] and "app-1" in lines[0]
        (connection,) = await ctl.json("list", "connections", auth="none")
        assert (connection["session_id"], connection["user"]) == (session, "carol")
        assert await ctl.json("--vhost", "other", "list", "connections") == []

        table = await ctl.ok("list", "queues")
        assert rows(table) == [
            ["NAME", "MESSAGES", "WAITING", "PAGED", "BYTES", "CONSUMERS"],
            [queue, "2", "2", "0", str(running.broker.destinations[queue].bytes), "0"],
        ]
        # The columns line up: every row as wide as the heading's cells say.
        header, row = table.splitlines()
        assert header.index("MESSAGES") + len("MESSAGES") == row.index(" 2 ") + 2
        (listed,) = await ctl.json("list", "queues")
        assert (listed["name"], listed["messages"]) == (queue, 2)

        table = await ctl.ok("list", "topics")
        assert rows(table) == [["NAME", "CONSUMERS", "DURABLE"], [topic, "1", "1"]]
        assert [t["name"] for t in await ctl.json("list", "topics")] == [topic]
        assert await ctl.json("list", "streams") == []
        assert (await ctl.ok("list", "streams")) == "(none)\n"

        table = await ctl.ok("list", "subscriptions")
        by_id = {line[1]: line for line in rows(table)[1:]}
        assert set(by_id) == {"s-topic", "d-1"}
        assert by_id["d-1"][:3] == [session, "d-1", topic]
        assert "dur" in by_id["d-1"] and "yes" in by_id["d-1"]
        # --json before the command works as well as after it.
        subscriptions = json.loads(await ctl.ok("--json", "list", "subscriptions"))
        assert {s["id"] for s in subscriptions} == {"s-topic", "d-1"}

        alarms = await ctl.ok("alarms")
        assert rows(alarms)[0][0] == "ALARM"
        assert set(await ctl.json("alarms")) == {"memory", "disk"}
    finally:
        await clients.close()


@pytest_twisted.ensureDeferred
async def test_publish_then_peek_leaves_the_message_for_a_consumer(start, token_file):
    running = await start()
    ctl = Ctl.of(running, token_file)
    queue = "/queue/" + unique("ctl-peek") + "/with/slashes"
    out = await ctl.ok(
        "publish", queue, "hello", "--header", "x-app:1", "--header", "x-url:a:b", "--persistent"
    )
    first_id = out.split()[1]
    assert out == f"published {first_id} to {queue}\n"
    # Logged in as an administrator, the body from standard input.
    second = await ctl.json("publish", queue, "-", auth="root", stdin="second line\n")
    assert second["destination"] == queue

    text = await ctl.ok("peek", queue, auth="root")
    assert text.startswith(f"{queue}: 2 waiting (2 in memory, 0 paged to the store); showing 2\n")
    assert f"#1 {first_id} (persistent)" in text
    assert "  x-app: 1\n" in text and "  x-url: a:b\n" in text and "  persistent: true\n" in text
    assert "  body: hello\n" in text
    assert f"#2 {second['message_id']} (transient)" in text
    assert "  body: second line\\n\n" in text

    peeked = await ctl.json("peek", queue, "--count", "1")
    assert (peeked["waiting"], peeked["shown"], peeked["more"]) == (2, 1, 1)
    (message,) = peeked["messages"]
    assert message["message_id"] == first_id
    assert message["headers"]["x-app"] == "1"
    assert (message["body"], message["body_encoding"], message["body_size"]) == ("hello", "text", 5)
    assert message["persistent"] is True and message["redelivered"] is False
    assert "... and 1 more waiting, not shown" in await ctl.ok("peek", queue, "--count", "1")

    # Still there: listed, and delivered to a consumer in order.
    (listed,) = await ctl.json("list", "queues")
    assert listed["waiting"] == 2
    clients = Clients()
    try:

        def consume(pool: ClientPool):
            client = login(pool, running.tcp_port)
            client.subscribe(queue)
            return client.next_messages(2)

        got = await clients.run(consume)
        assert [m.body for m in got] == ["hello", "second line\n"]
        assert got[0].headers["message-id"] == first_id
        assert got[0].headers["x-url"] == "a:b"
    finally:
        await clients.close()


@pytest_twisted.ensureDeferred
async def test_peek_shows_bodies_safely(start, token_file):
    running = await start()
    ctl = Ctl.of(running, token_file)
    queue = "/queue/" + unique("ctl-safe")
    clients = Clients()
    try:

        def send(pool: ClientPool) -> None:
            raw = pool.raw(running.tcp_port)
            raw.connect(login="carol", passcode=CAROL_PASSWORD)
            bodies = [
                "red \x1b[31malert\x1b[0m\nnext\x07 \u202eevil".encode(),
                b"x" * 5000,
                bytes(range(256)) * 8,
                ("a" + "\u00e9" * 600).encode(),
            ]
            for i, body in enumerate(bodies):
                headers = {
                    "destination": queue,
                    "content-length": str(len(body)),
                    "receipt": f"r{i}",
                    "x-evil": "\x1b]0;title\x07",
                }
                raw.send("SEND", headers, body)
                assert raw.read_frame().command == "RECEIPT"

        await clients.run(send)
    finally:
        await clients.close()

    text = await ctl.ok("peek", queue)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "  body: red \\x1b[31malert\\x1b[0m\\nnext\\x07 \\u202eevil\n" in text
    assert "  x-evil: \\x1b]0;title\\x07\n" in text
    assert f"  body: {'x' * 200} ... (5000 bytes, cut short; --json shows the first 1 KiB)" in text
    assert "(binary, 2048 bytes, first 200 shown)" in text
    assert "  body: \\x00\\x01\\x02" in text
    assert "  body: a\u00e9\u00e9" in text  # printable text is shown as it is

    peeked = await ctl.json("peek", queue)
    control, long, binary, accents = peeked["messages"]
    assert control["body"] == "red \x1b[31malert\x1b[0m\nnext\x07 \u202eevil"
    assert (long["body"], long["body_truncated"]) == ("x" * 1024, True)
    assert binary["body_encoding"] == "base64"
    assert base64.b64decode(binary["body"]) == (bytes(range(256)) * 4)
    assert (binary["body_size"], binary["body_truncated"]) == (2048, True)
    # The 1 KiB cut splits an é: the half character is left out, not base64.
    assert accents["body_encoding"] == "text"
    assert accents["body"] == "a" + "\u00e9" * 511
    assert (accents["body_size"], accents["body_truncated"]) == (1201, True)
    full = await ctl.ok("peek", queue, "--body-chars", "2000")
    assert "x" * 1024 + " ... (5000 bytes, cut short" in full


@pytest_twisted.ensureDeferred
async def test_purge(start, token_file):
    running = await start()
    ctl = Ctl.of(running, token_file)
    queue = "/queue/" + unique("ctl-purge")
    for body in ("1", "2", "3"):
        await ctl.ok("publish", queue, body)
    assert await ctl.ok("purge", queue, auth="root") == f"purged 3 message(s) from {queue}\n"
    assert await ctl.json("list", "queues") == []
    await ctl.ok("publish", queue, "4")
    assert await ctl.json("purge", queue) == {"destination": queue, "purged": 1}


@pytest_twisted.ensureDeferred
async def test_close_a_connection_with_a_reason(start, token_file):
    running = await start()
    ctl = Ctl.of(running, token_file)
    raw = RawStompSocket(running.tcp_port)
    try:
        connected = await deferToThread(raw.connect, login="carol", passcode=CAROL_PASSWORD)
        session = connected.headers["session"]
        out = await ctl.ok("close", session, "--reason", "maintenance window", auth="root")
        assert out == f"closed {session}\n"

        def closed() -> None:
            error = raw.read_frame()
            assert error.command == "ERROR"
            assert error.headers["message"] == "closed by the operator"
            assert b"maintenance window" in error.body
            raw.wait_eof()

        await deferToThread(closed)
    finally:
        raw.close()
    result = await ctl("close", session)
    assert result.returncode == 5, result.stderr


@pytest_twisted.ensureDeferred
async def test_refused_without_the_right_credentials(start, token_file, tmp_path):
    running = await start()
    ctl = Ctl.of(running, token_file)
    queue = "/queue/" + unique("ctl-refused")
    await ctl.ok("publish", queue, "kept")
    for command in (
        ("peek", queue),
        ("purge", queue),
        ("publish", queue, "x"),
        ("close", "no-such-session"),
    ):
        result = await ctl(*command, auth="none")
        assert result.returncode == 4, (command, result.stderr)
        assert result.stderr.startswith("stomptw-ctl: 401 ")
        assert result.stdout == ""
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not the token\n")
    result = await ctl("--token-file", str(wrong), "peek", queue, auth="none")
    assert result.returncode == 4 and result.stderr.startswith("stomptw-ctl: 401 ")
    assert "not the token" not in result.stdout + result.stderr
    result = await ctl(
        "--user", "root", "purge", queue, auth="none", env={"STOMPTW_PASSWORD": "guess"}
    )
    assert result.returncode == 4 and "401" in result.stderr
    assert "guess" not in result.stdout + result.stderr
    # The password from standard input when it is not a terminal.
    result = await ctl("--user", "carol", "purge", queue, auth="none", stdin=CAROL_PASSWORD)
    assert result.returncode == 4
    assert "403" in result.stderr and "administrator tag" in result.stderr
    assert CAROL_PASSWORD not in result.stdout + result.stderr
    # Nothing was taken.
    (listed,) = await ctl.json("list", "queues")
    assert listed["waiting"] == 1


@pytest_twisted.ensureDeferred
async def test_unknown_queue_connection_or_vhost(start, token_file):
    running = await start(vhosts=["team"])
    ctl = Ctl.of(running, token_file)
    for command in (
        ("peek", "/queue/none-such"),
        ("purge", "/queue/none-such"),
        ("close", "no-such-session"),
        ("--vhost", "nosuch", "list", "queues"),
    ):
        result = await ctl(*command)
        assert result.returncode == 5, (command, result.stderr)
        assert result.stderr.startswith("stomptw-ctl: 404 ")
    topic = "/topic/" + unique("ctl-topic")
    await ctl.ok("publish", topic, "to nobody")
    clients = Clients()
    try:
        await clients.run(lambda pool: login(pool, running.tcp_port).subscribe(topic))
        result = await ctl("peek", topic)
        assert result.returncode == 1
        assert "400" in result.stderr and "only queues" in result.stderr
    finally:
        await clients.close()
    # --vhost reaches another vhost's queues.
    queue = "/queue/" + unique("ctl-vhost")
    await ctl.ok("--vhost", "team", "publish", queue, "in team")
    assert [q["name"] for q in await ctl.json("--vhost", "team", "list", "queues")] == [queue]
    assert await ctl.json("list", "queues") == []
    peeked = await ctl.json("--vhost", "team", "peek", queue)
    assert peeked["messages"][0]["body"] == "in team"
    assert (await ctl.json("--vhost", "team", "purge", queue))["purged"] == 1


@pytest_twisted.ensureDeferred
async def test_broker_down_or_silent(token_file):
    down = f"http://127.0.0.1:{free_port()}"
    ctl = Ctl(down, token_file)
    result = await ctl("list", "queues")
    assert result.returncode == 3
    assert result.stderr.startswith(f"stomptw-ctl: cannot connect to {down}")
    # Something accepts connections but never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        ctl.admin = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = await ctl("--timeout", "0.5", "list", "queues")
    assert result.returncode == 3
    assert "no answer within 0.5 s" in result.stderr


@pytest_twisted.ensureDeferred
async def test_usage_errors_and_help(token_file, tmp_path):
    ctl = Ctl(f"http://127.0.0.1:{free_port()}", token_file)
    for args, auth in [
        ((), "token"),
        (("list", "nothing"), "token"),
        (("publish", "/queue/a", "b", "--header", "no-colon"), "token"),
        (("peek", "/queue/a", "--count", "0"), "token"),
        (("--token-file", str(tmp_path / "missing"), "list", "queues"), "none"),
        (("--user", "root", "--token-file", token_file, "list", "queues"), "none"),
    ]:
        result = await ctl(*args, auth=auth)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr
    help_text = await ctl.ok("--help")
    for code in ("0", "1", "2", "3", "4", "5"):
        assert f"\n  {code}  " in help_text
    assert "STOMPTW_PASSWORD" in help_text


def test_escape_and_tables():
    assert escape("a\\b\n\x1b\u200b\u00e9") == "a\\\\b\\n\\x1b\\u200b\u00e9"
    assert escape(None) == "-" and escape(True) == "yes"
    assert format_table(["A", "NUMBER"], [["x", 1], ["long", 100]]) == (
        "A     NUMBER\nx          1\nlong     100\n"
    )
    assert format_table(["A"], []) == "(none)\n"


# -- the peek endpoint of the admin API ---------------------------------------------------


def peek_url(running, name: str, query: str = "") -> str:
    path = "/api/destinations/" + quote(name, safe="") + "/messages"
    return f"http://127.0.0.1:{running.admin_port}{path}{query}"


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def publish(running, name: str, body: str, **headers: str) -> str:
    response = await treq.post(
        peek_url(running, name), json={"body": body, "headers": headers}, headers=AUTH
    )
    assert response.code == 201, await response.text()
    return (await response.json())["message_id"]


@pytest_twisted.ensureDeferred
async def test_peek_endpoint_pages_and_limits(start):
    running = await start()
    queue = "/queue/" + unique("api-peek")
    ids = [await publish(running, queue, f"m{i}", priority="4") for i in range(12)]
    response = await treq.get(peek_url(running, queue), headers=AUTH)
    assert response.code == 200
    assert response.headers.getRawHeaders("cache-control") == ["no-store"]
    answer = await response.json()
    assert (answer["destination"], answer["waiting"], answer["in_memory"]) == (queue, 12, 12)
    assert (answer["paged"], answer["shown"], answer["more"]) == (0, 10, 2)
    assert [m["message_id"] for m in answer["messages"]] == ids[:10]
    assert answer["messages"][0] == {
        "message_id": ids[0],
        "destination": queue,
        "headers": {"priority": "4"},
        "persistent": False,
        "expires": None,
        "delivery_count": 0,
        "redelivered": False,
        "body_size": 2,
        "body": "m0",
        "body_encoding": "text",
        "body_truncated": False,
    }
    three = await (await treq.get(peek_url(running, queue, "?count=3"), headers=AUTH)).json()
    assert [m["body"] for m in three["messages"]] == ["m0", "m1", "m2"]
    capped = await (await treq.get(peek_url(running, queue, "?count=500"), headers=AUTH)).json()
    assert capped["shown"] == 12
    for bad in ("0", "-1", "ten", ""):
        response = await treq.get(peek_url(running, queue, f"?count={bad}"), headers=AUTH)
        assert response.code == 400, bad
        assert "count must be" in (await response.json())["error"]
    assert running.broker.destinations[queue].waiting() == 12
    response = await treq.get(peek_url(running, "/queue/none-such"), headers=AUTH)
    assert response.code == 404
    response = await treq.get(peek_url(running, queue, "?vhost=nosuch"), headers=AUTH)
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_peek_endpoint_needs_the_mutating_endpoints_credentials(start, make_broker):
    running = await start()
    queue = "/queue/" + unique("api-peek-auth")
    await publish(running, queue, "secret")
    response = await treq.get(peek_url(running, queue))
    assert response.code == 401
    # Bearer only: a Basic challenge would make a browser prompt and cache.
    assert response.headers.getRawHeaders("www-authenticate")[0] == 'Bearer realm="stomptw"'
    assert "secret" not in await response.text()
    response = await treq.head(peek_url(running, queue))
    assert response.code == 401
    response = await treq.get(peek_url(running, queue), headers={"Authorization": "Bearer no"})
    assert response.code == 401  # not the token file's: tried as a JWT, which --auth refuses
    carol = base64.b64encode(f"carol:{CAROL_PASSWORD}".encode()).decode()
    response = await treq.get(peek_url(running, queue), headers={"Authorization": f"Basic {carol}"})
    assert response.code == 403
    root = base64.b64encode(f"root:{ROOT_PASSWORD}".encode()).decode()
    response = await treq.get(peek_url(running, queue), headers={"Authorization": f"Basic {root}"})
    assert response.code == 200
    assert (await response.json())["messages"][0]["body"] == "secret"
    # Without --auth and without a token file, nobody may peek.
    bare = await make_broker(admin_endpoints=[LOOPBACK])
    response = await treq.get(peek_url(bare, queue))
    assert response.code == 403


@pytest_twisted.ensureDeferred
async def test_peek_endpoint_shows_memory_and_counts_the_paged(start, tmp_path):
    running = await start(store="sqlite", data_dir=str(tmp_path / "data"), queue_memory_window=4)
    queue = "/queue/" + unique("api-peek-paged")
    for i in range(10):
        await publish(running, queue, f"p{i}", persistent="true")
    answer = await (await treq.get(peek_url(running, queue, "?count=100"), headers=AUTH)).json()
    assert answer["waiting"] == 10
    assert answer["paged"] == 6 and answer["in_memory"] == 4
    assert [m["body"] for m in answer["messages"]] == ["p0", "p1", "p2", "p3"]
    assert (answer["shown"], answer["more"]) == (4, 6)
    assert all(m["persistent"] for m in answer["messages"])


@pytest_twisted.ensureDeferred
async def test_peek_endpoint_on_topics_and_redelivered_messages(start):
    running = await start()
    queue = "/queue/" + unique("api-peek-redelivered")
    topic = "/topic/" + unique("api-peek-topic")
    await publish(running, queue, "again")
    clients = Clients()
    try:

        def take_and_return(pool: ClientPool) -> None:
            client = login(pool, running.tcp_port)
            client.subscribe(topic)
            sub = client.subscribe(queue, ack="client-individual")
            client.next_message()
            client.unsubscribe(sub)  # unacknowledged: back to the queue

        await clients.run(take_and_return)
        response = await treq.get(peek_url(running, topic), headers=AUTH)
        assert response.code == 400
        answer = await (await treq.get(peek_url(running, queue), headers=AUTH)).json()
    finally:
        await clients.close()
    (message,) = answer["messages"]
    assert message["body"] == "again"
    assert message["redelivered"] is True and message["delivery_count"] >= 1
