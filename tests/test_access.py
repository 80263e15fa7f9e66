"""
A session's login and permission checks (stomptw.access), sans-IO: a broker
on a Clock with in-memory sessions, so that every delay is exact.
"""

from __future__ import annotations

import pytest_twisted
from twisted.cred import checkers, credentials, error
from twisted.internet import defer
from zope.interface import implementer

from stomptw.auth import Identity, make_checker
from stomptw.authenticator import build_authenticator
from stomptw.config import BrokerConfig
from stomptw.testing import BrokerOnClock


@implementer(checkers.ICredentialsChecker)
class ManualChecker:
    """A checker whose answers the test gives, one Deferred per login."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def requestAvatarId(self, creds):  # noqa: N802
        d = defer.Deferred()
        self.pending.append(d)
        return d


def on_clock(*checker_list, **config) -> BrokerOnClock:
    env = BrokerOnClock(**config)
    env.broker.auth = build_authenticator(env.config, checker_list, env.clock)
    env.broker.auth.wall_clock = env.clock.seconds
    return env


def test_a_refused_login_waits_exactly_the_failure_delay():
    env = on_clock(make_checker("memory:alice:pw"), login_failure_delay=1.5)
    client = env.connect(version=None)
    client.send("CONNECT", accept_version="1.2", host="localhost", login="alice", passcode="x")
    client.send("SEND", b"behind", destination="/queue/q")
    env.advance(1.49)
    assert client.frames() == [] and not client.closing
    env.advance(0.02)
    (refusal,) = client.frames()
    assert refusal.command == "ERROR" and refusal.headers["message"] == "authentication failed"
    assert "/queue/q" not in env.broker.destinations
    assert env.broker.stats["published"] == 0


def test_frames_behind_a_pending_login_wait_then_run_in_order():
    checker = ManualChecker()
    env = on_clock(checker)
    client = env.connect(version=None)
    client.send("CONNECT", accept_version="1.2", host="localhost", login="alice", passcode="pw")
    client.send("SUBSCRIBE", destination="/queue/q", id="s", receipt="r1")
    client.send("SEND", b"one", destination="/queue/q", receipt="r2")
    assert client.frames() == []
    assert not client.session.transport.reading  # stopped reading meanwhile
    checker.pending[0].callback(Identity("alice"))
    env.advance(0)
    frames = client.frames()
    assert [f.command for f in frames][:2] == ["CONNECTED", "RECEIPT"]
    assert sorted(f.command for f in frames[2:]) == ["MESSAGE", "RECEIPT"]
    message = next(f for f in frames if f.command == "MESSAGE")
    assert message.headers["user-id"] == "alice"
    assert client.session.transport.reading


def test_a_checker_that_fails_late_refuses_and_drops_what_waited():
    checker = ManualChecker()
    env = on_clock(checker, login_failure_delay=0)
    client = env.connect(version=None)
    client.send("CONNECT", accept_version="1.2", host="localhost", login="alice", passcode="pw")
    client.send("SEND", b"never", destination="/queue/q", receipt="r")
    checker.pending[0].errback(error.UnauthorizedLogin())
    env.advance(0)
    (refusal,) = client.frames()
    assert refusal.headers["message"] == "authentication failed"
    assert "receipt-id" not in refusal.headers
    assert "/queue/q" not in env.broker.destinations


def test_a_checker_that_breaks_answers_service_unavailable_at_once():
    checker = ManualChecker()
    env = on_clock(checker, login_failure_delay=5)
    client = env.connect(version=None)
    client.send("CONNECT", accept_version="1.2", host="localhost", login="alice", passcode="pw")
    checker.pending[0].errback(RuntimeError("backend exploded"))
    env.advance(0)
    (refusal,) = client.frames()
    assert refusal.headers["message"] == "authentication service unavailable"
    assert "exploded" not in refusal.body.decode()  # no internals to the client
    assert env.broker.auth.counters.unavailable == 1


def test_a_session_ends_when_its_credentials_expire():
    checker = ManualChecker()
    env = on_clock(checker)
    client = env.connect(version=None)
    client.send("CONNECT", accept_version="1.2", host="localhost", login="alice", passcode="t")
    checker.pending[0].callback(Identity("alice", expires=env.clock.seconds() + 30))
    env.advance(0)
    assert client.frame().command == "CONNECTED"
    env.advance(29.9)
    assert client.frames() == []
    env.advance(0.2)
    (expired,) = client.frames()
    assert expired.headers["message"] == "token expired"
    assert env.broker.auth.counters.expired == 1


def test_logout_runs_when_the_connection_ends():
    env = on_clock(make_checker("memory:alice:pw"))
    logouts = []
    portal = env.broker.auth.portal
    realm = portal.realm

    class Recording:
        def requestAvatar(self, avatar_id, mind, *interfaces):  # noqa: N802
            d = defer.maybeDeferred(realm.requestAvatar, avatar_id, mind, *interfaces)
            return d.addCallback(lambda r: (r[0], r[1], lambda: logouts.append(avatar_id)))

    portal.realm = Recording()
    client = env.connect(login="alice", passcode="pw")
    assert logouts == []
    client.lose()
    assert logouts == [b"alice"]


def test_permission_answers_are_cached_per_session_and_destination(tmp_path):
    rules = tmp_path / "p.toml"
    rules.write_text('[users.alice]\nwrite = ["/topic/**"]\nread = ["/topic/**"]\n')
    env = on_clock(make_checker("memory:alice:pw"), permissions_file=str(rules))
    client = env.connect(login="alice", passcode="pw")
    user = client.session.user
    calls = []
    decide = user._decide

    def counting(action, destination):
        calls.append((action, destination))
        return decide(action, destination)

    user._decide = counting
    for _ in range(100):
        client.send("SEND", b"x", destination="/topic/a")
    client.send("SEND", b"x", destination="/topic/b")
    assert calls == [("write", "/topic/a"), ("write", "/topic/b")]


def test_without_auth_every_session_is_anonymous_and_unrestricted():
    env = on_clock()
    client = env.connect(login="whoever", passcode="ignored")
    assert client.session.user.name == "" and client.session.user.unrestricted
    client.send("SUBSCRIBE", destination="/topic/t", id="1")
    client.send("SEND", b"x", destination="/topic/t", **{"user-id": "spoofed"})
    (message,) = client.frames()
    assert "user-id" not in message.headers


def test_config_defaults_keep_todays_broker():
    config = BrokerConfig()
    assert config.auth == [] and not config.allow_anonymous and config.permissions_file == ""
    assert (config.login_failure_delay, config.max_failed_logins) == (1.0, 10)


def test_twisteds_own_checkers_work_as_strcred_makes_them(tmp_path):
    """--auth file:PATH and memory: are Twisted's; their avatar ids are plain bytes."""
    passwords = tmp_path / "passwd"
    passwords.write_text("carol:c-pw\n")
    env = on_clock(make_checker(f"file:{passwords}"), make_checker("memory:dave:d-pw"))
    for login, passcode in (("carol", "c-pw"), ("dave", "d-pw")):
        client = env.connect(login=login, passcode=passcode)
        assert client.session.user.name == login
    refused = env.connect(version=None)
    refused.send("CONNECT", accept_version="1.2", login="carol", passcode="d-pw")
    env.advance(1.1)
    assert refused.frame().headers["message"] == "authentication failed"


@pytest_twisted.ensureDeferred
async def test_a_reload_takes_back_a_write_the_session_had_used(tmp_path):
    """The per-session fast path for SENDs is emptied when the rules change."""
    rules = tmp_path / "p.toml"
    rules.write_text('[users.alice]\nwrite = ["/topic/**"]\n')
    env = on_clock(make_checker("memory:alice:pw"), permissions_file=str(rules))
    client = env.connect(login="alice", passcode="pw")
    for _ in range(3):
        client.send("SEND", b"x", destination="/topic/a", receipt="ok")
        assert client.frame().command == "RECEIPT"
    rules.write_text('[users.alice]\nwrite = ["/topic/b"]\n')
    await env.broker.auth.reload()
    client.session.permissions_changed()  # what BrokerService.reload does for each session
    client.send("SEND", b"x", destination="/topic/a", receipt="refused")
    refusal = client.frame()
    assert refusal.headers["message"] == "access refused: no write permission for /topic/a"
    assert refusal.headers["receipt-id"] == "refused"


def test_a_login_answered_later_still_puts_the_session_in_its_vhost():
    checker = ManualChecker()
    env = on_clock(checker, vhosts=["team"])
    from stomptw.store import MemoryStore

    team = env.broker.add_vhost("team", MemoryStore())
    client = env.connect(version=None)
    client.send("CONNECT", accept_version="1.2", host="team", login="alice", passcode="pw")
    client.send("SEND", b"x", destination="/queue/in-team", receipt="r")
    checker.pending[0].callback(Identity("alice"))
    env.advance(0)
    assert [f.command for f in client.frames()] == ["CONNECTED", "RECEIPT"]
    assert client.session.broker is team
    assert "/queue/in-team" in team.destinations
    assert "/queue/in-team" not in env.broker.destinations


def test_durable_subscriptions_belong_to_the_user_as_well_as_the_client_id():
    env = on_clock(make_checker("memory:alice:a:bob:b"))
    alice = env.connect(login="alice", passcode="a", **{"client-id": "app"})
    alice.send(
        "SUBSCRIBE",
        destination="/topic/secret",
        id="s1",
        receipt="r",
        **{"durable-subscription-name": "d1"},
    )
    assert alice.frame().command == "RECEIPT"
    alice.lose()
    # bob claims the same client-id: alice's durable subscription is not his.
    bob = env.connect(login="bob", passcode="b", **{"client-id": "app"})
    bob.send("UNSUBSCRIBE", id="s1", receipt="u", **{"durable-subscription-name": "d1"})
    assert bob.frame().headers["message"] == "no subscription with id 's1'"
    assert any(d.name == "d1" for d in env.broker.durables.values())
