"""
Permissions (stomptw.permissions): the patterns and the file on their own,
then every permission at its edge on a real broker with stomp.py and raw
sockets, reloads, and virtual hosts.
"""

from __future__ import annotations

import textwrap

import pytest
import pytest_twisted
from clients import ClientPool, ConnectionClosed, RawStompSocket, encode_frame, unique
from twisted.internet.threads import deferToThread

from stomptw.permissions import (
    PermissionsError,
    PermissionsPolicy,
    compile_patterns,
    parse_permissions,
)

# -- patterns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("/topic/chat.*", "/topic/chat.room1", True),
        ("/topic/chat.*", "/topic/chat.", True),
        ("/topic/chat.*", "/topic/chat.a/b", False),  # * stops at /
        ("/topic/chat.**", "/topic/chat.a/b", True),
        ("**", "/queue/anything/at/all", True),
        ("/queue/exact", "/queue/exact", True),
        ("/queue/exact", "/queue/exact2", False),  # anchored at the end
        ("/queue/exact", "x/queue/exact", False),  # and at the start
        ("/queue/a.b", "/queue/aXb", False),  # . is a dot, not any character
        ("/queue/(x)+", "/queue/(x)+", True),  # regex syntax is literal
        ("/queue/{username}.*", "/queue/alice.inbox", True),
        ("/queue/{username}.*", "/queue/bob.inbox", False),
    ],
)
def test_pattern_syntax(pattern, name, matches):
    assert compile_patterns([pattern], "alice")(name) is matches


def test_username_is_matched_literally():
    match = compile_patterns(["/queue/{username}"], "a.*")
    assert match("/queue/a.*") and not match("/queue/ab")


def test_no_patterns_match_nothing():
    assert compile_patterns([])("/queue/x") is False


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[users.alice]\nread = 3\n", "users.alice.read: expected a list of strings"),
        ("[users.alice]\nreed = []\n", "users.alice: unknown key 'reed'"),
        ("[groups.g]\ntags = []\n", "groups.g: unknown key 'tags'"),
        ("[stuff]\n", "stuff: unknown table"),
        ("[vhosts.nosuch.users.a]\nread = []\n", "vhosts.nosuch: the broker has no vhost"),
        ("[vhosts.team.users.a]\ngroups = []\n", "a user's groups are set at the top level"),
    ],
)
def test_file_errors_say_where(text, error):
    from stomptw.configfile import tomllib

    with pytest.raises(PermissionsError, match=error.replace(".", r"\.").replace("(", r"\(")):
        parse_permissions(tomllib.loads(text), ["team"])


def test_policy_reads_groups_tags_and_vhosts(tmp_path):
    path = tmp_path / "permissions.toml"
    path.write_text(
        textwrap.dedent(
            """
            [groups.chat]
            read = ["/topic/chat.*"]
            [users.alice]
            groups = ["chat"]
            tags = ["administrator"]
            write = ["/queue/{username}.*"]
            [vhosts.team.users.alice]
            read = ["**"]
            """
        )
    )
    policy = PermissionsPolicy(str(path), ["team"])
    assert policy.groups_of("alice") == {"chat"} and policy.tags_of("alice") == {"administrator"}
    decide = policy.decider("/", "alice", [])
    assert decide("read", "/topic/chat.x") and decide("write", "/queue/alice.1")
    assert not decide("write", "/topic/chat.x") and not decide("create", "/queue/alice.1")
    assert policy.vhost_allowed("team", "alice", []) and not policy.vhost_allowed("team", "bob", [])
    assert policy.decider("team", "alice", [])("read", "/anything")
    assert PermissionsPolicy().unrestricted


def test_a_missing_or_broken_file_is_refused_at_start(tmp_path):
    with pytest.raises(PermissionsError, match="cannot read"):
        PermissionsPolicy(str(tmp_path / "missing.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[users.alice\n")
    with pytest.raises(PermissionsError, match="not valid TOML"):
        PermissionsPolicy(str(broken))


# -- on the wire ------------------------------------------------------------------------

RULES = """
[groups.chat]
read  = ["/topic/chat.*"]
write = ["/topic/chat.*"]

[users.alice]
groups = ["chat"]
read   = ["/queue/{username}.*", "/queue/shared"]
write  = ["/queue/{username}.*", "/queue/shared"]
create = ["/queue/{username}.*"]

[users.bob]
read   = ["/queue/{username}.*", "/queue/shared"]
write  = ["/queue/shared"]
create = ["/queue/{username}.*"]
"""

USERS = "memory:alice:a-pw:bob:b-pw:carol:c-pw"


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "permissions.toml"
    path.write_text(RULES)
    return path


async def start(make_broker, rules, **config):
    return await make_broker(
        auth=[USERS], permissions_file=str(rules), login_failure_delay=0.01, **config
    )


def denied(port: int, user: str, command: str, headers: dict, body: bytes = b"") -> object:
    """Log in as ``user``, send one frame with a receipt: the ERROR it gets."""
    raw = RawStompSocket(port)
    try:
        raw.connect(login=user, passcode=user[0] + "-pw")
        raw.send(command, {**headers, "receipt": "want-it"}, body)
        error = raw.read_frame()
        raw.wait_eof()
        return error
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_group_and_user_permissions_allow_what_they_name(make_broker, rules):
    running = await start(make_broker, rules)

    def scenario():
        with ClientPool() as pool:
            alice = pool.tcp(running.tcp_port, connect=False)
            alice.connect(username="alice", passcode="a-pw")
            alice.subscribe("/topic/chat.lobby")
            alice.subscribe("/queue/alice.inbox")  # created: {username} expanded
            alice.send("/topic/chat.lobby", "hello", receipt=True)
            alice.send("/queue/alice.inbox", "note", receipt=True)
            bodies = sorted(m.body for m in alice.next_messages(2))
            alice.disconnect()
            return bodies

    assert await deferToThread(scenario) == ["hello", "note"]


@pytest_twisted.ensureDeferred
async def test_a_denied_frame_gets_an_error_naming_destination_and_permission(make_broker, rules):
    running = await start(make_broker, rules)

    def scenario():
        return [
            denied(
                running.tcp_port, "bob", "SUBSCRIBE", {"destination": "/topic/chat.x", "id": "1"}
            ),
            denied(running.tcp_port, "bob", "SEND", {"destination": "/topic/chat.x"}, b"hi"),
            # {username} is the user's own name: bob cannot read alice's queues.
            denied(
                running.tcp_port,
                "bob",
                "SUBSCRIBE",
                {"destination": "/queue/alice.inbox", "id": "2"},
            ),
            # carol has no table at all.
            denied(running.tcp_port, "carol", "SEND", {"destination": "/queue/shared"}, b"x"),
        ]

    errors = await deferToThread(scenario)
    expected = [
        ("read", "/topic/chat.x"),
        ("write", "/topic/chat.x"),
        ("read", "/queue/alice.inbox"),
        ("write", "/queue/shared"),
    ]
    for error, (permission, destination) in zip(errors, expected, strict=True):
        assert error.command == "ERROR"
        assert error.headers["receipt-id"] == "want-it"
        assert (
            error.headers["message"]
            == f"access refused: no {permission} permission for {destination}"
        )
        assert destination in error.body.decode() and permission in error.body.decode()
    counts = running.broker.auth.counters.denied
    assert (counts["read"], counts["write"]) == (2, 2)


@pytest_twisted.ensureDeferred
async def test_create_is_needed_for_a_queue_that_does_not_exist_yet(make_broker, rules):
    running = await start(make_broker, rules)

    def scenario():
        # bob may write to /queue/shared but not create it ...
        error = denied(running.tcp_port, "bob", "SEND", {"destination": "/queue/shared"}, b"early")
        assert error.headers["message"] == "access refused: no create permission for /queue/shared"
        with ClientPool() as pool:
            # ... so once alice's subscription has made it, bob's SEND goes through.
            alice = pool.tcp(running.tcp_port, connect=False)
            alice.connect(username="alice", passcode="a-pw")
            error = denied(
                running.tcp_port, "alice", "SUBSCRIBE", {"destination": "/queue/shared", "id": "1"}
            )
            assert (
                error.headers["message"] == "access refused: no create permission for /queue/shared"
            )
            # Nobody may create it: put it there from the broker's side.
            running.broker.destination("/queue/shared")
            alice.subscribe("/queue/shared")
            bob = pool.tcp(running.tcp_port, connect=False)
            bob.connect(username="bob", passcode="b-pw")
            bob.send("/queue/shared", "late", receipt=True)
            return alice.next_message().body

    assert await deferToThread(scenario) == "late"


@pytest_twisted.ensureDeferred
async def test_a_send_inside_a_transaction_is_checked_when_it_arrives(make_broker, rules):
    running = await start(make_broker, rules)

    def scenario():
        raw = RawStompSocket(running.tcp_port)
        try:
            raw.connect(login="bob", passcode="b-pw")
            raw.send("BEGIN", {"transaction": "t1"})
            raw.send(
                "SEND", {"destination": "/topic/chat.x", "transaction": "t1", "receipt": "s1"}, b"x"
            )
            error = raw.read_frame()
            raw.wait_eof()
            return error
        finally:
            raw.close()

    error = await deferToThread(scenario)
    assert error.headers["message"] == "access refused: no write permission for /topic/chat.x"
    assert error.headers["receipt-id"] == "s1"


@pytest_twisted.ensureDeferred
async def test_reload_applies_to_new_frames_and_ends_withdrawn_subscriptions(make_broker, rules):
    running = await start(make_broker, rules)
    topic = "/topic/chat.reload"
    raw = RawStompSocket(running.tcp_port)
    other = RawStompSocket(running.tcp_port)
    try:

        def before():
            raw.connect(login="alice", passcode="a-pw")
            raw.send("SUBSCRIBE", {"destination": topic, "id": "s", "receipt": "r"})
            assert raw.read_frame().command == "RECEIPT"
            other.connect(login="alice", passcode="a-pw")
            other.send("SUBSCRIBE", {"destination": "/queue/alice.keep", "id": "k", "receipt": "r"})
            assert other.read_frame().command == "RECEIPT"

        await deferToThread(before)
        # A broken file keeps the old rules.
        rules.write_text("[users.alice\n")
        with pytest.raises(PermissionsError):
            await running.service.reload()
        assert len(running.broker.sessions) == 2
        # The chat group loses its rights: alice's topic subscription ends.
        rules.write_text(RULES.replace('read  = ["/topic/chat.*"]', "read = []"))
        await running.service.reload()

        def after():
            error = raw.read_frame()
            raw.wait_eof()
            other.send("SEND", {"destination": "/queue/alice.keep", "receipt": "still"}, b"ok")
            frames = [other.read_frame() for _ in range(2)]
            return error, frames

        error, frames = await deferToThread(after)
    finally:
        raw.close()
        other.close()
    assert error.headers["message"] == f"access refused: read permission for {topic} withdrawn"
    assert sorted(f.command for f in frames) == ["MESSAGE", "RECEIPT"]


# -- virtual hosts ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_vhosts_have_their_own_destinations(make_broker):
    running = await make_broker(auth=["memory:alice:pw"], vhosts=["team"])
    queue = unique("/queue/vh")

    def scenario():
        default = RawStompSocket(running.tcp_port)
        team = RawStompSocket(running.tcp_port)
        try:
            default.connect(login="alice", passcode="pw")
            team.connect(login="alice", passcode="pw", host="team")
            for raw in (default, team):
                raw.send("SUBSCRIBE", {"destination": queue, "id": "s", "receipt": "r"})
                assert raw.read_frame().command == "RECEIPT"
            team.send("SEND", {"destination": queue}, b"for the team")
            default.send("SEND", {"destination": queue}, b"for the default vhost")
            return team.read_frame(), default.read_frame()
        finally:
            default.close()
            team.close()

    for_team, for_default = await deferToThread(scenario)
    assert for_team.body == b"for the team"
    assert for_default.body == b"for the default vhost"
    assert running.broker.vhosts["team"] is not running.broker


@pytest_twisted.ensureDeferred
async def test_a_vhost_is_only_for_users_with_a_table_in_it(make_broker, tmp_path):
    rules = tmp_path / "permissions.toml"
    rules.write_text('[vhosts.team.users.alice]\nread = ["**"]\nwrite = ["**"]\ncreate = ["**"]\n')
    running = await make_broker(
        auth=["memory:alice:pw:bob:pw"],
        vhosts=["team"],
        permissions_file=str(rules),
        login_failure_delay=0.01,
    )

    def scenario():
        raw = RawStompSocket(running.tcp_port)
        try:
            raw.connect(login="alice", passcode="pw", host="team")
        finally:
            raw.close()
        raw = RawStompSocket(running.tcp_port)
        try:
            raw.send_bytes(
                encode_frame(
                    "CONNECT",
                    {"accept-version": "1.2", "host": "team", "login": "bob", "passcode": "pw"},
                )
            )
            error = raw.read_frame()
            raw.wait_eof()
            with pytest.raises(ConnectionClosed):
                raw.read_frame()
            return error
        finally:
            raw.close()

    error = await deferToThread(scenario)
    assert error.headers["message"] == "access to vhost 'team' refused"


def test_a_vhosts_messages_count_in_the_brokers_stats():
    from stomptw.broker import Broker
    from stomptw.store import MemoryStore

    broker = Broker()
    team = broker.add_vhost("team", MemoryStore())
    broker.open()
    team.send("/queue/counted", {}, b"x")
    assert broker.stats["published"] == 1 and team.stats is broker.stats
    assert "/queue/counted" in team.destinations and "/queue/counted" not in broker.destinations


@pytest_twisted.ensureDeferred
async def test_a_reload_that_partly_fails_still_takes_back_what_the_new_rules_deny(
    make_broker, tmp_path
):
    """The permissions file is read again even when a users file is broken meanwhile."""
    from stomptw.users import User, hash_password, write_users

    users = tmp_path / "users.toml"
    write_users(str(users), [User("alice", hash_password("a-pw"), ("chat",))])
    rules = tmp_path / "permissions.toml"
    rules.write_text(RULES)
    running = await make_broker(auth=[f"users:{users}"], permissions_file=str(rules))
    raw = RawStompSocket(running.tcp_port)
    try:

        def send(receipt):
            raw.send("SEND", {"destination": "/topic/chat.x", "receipt": receipt}, b"x")
            return raw.read_frame()

        await deferToThread(raw.connect, login="alice", passcode="a-pw")
        assert (await deferToThread(send, "first")).command == "RECEIPT"
        assert (await deferToThread(send, "second")).command == "RECEIPT"  # the fast path
        rules.write_text(RULES.replace('write = ["/topic/chat.*"]', "write = []"))
        users.write_text("[users.alice\n")
        with pytest.raises(Exception, match="not valid TOML"):
            await running.service.reload()
        refused = await deferToThread(send, "third")
    finally:
        raw.close()
    assert refused.headers["message"] == "access refused: no write permission for /topic/chat.x"
    assert refused.headers["receipt-id"] == "third"
