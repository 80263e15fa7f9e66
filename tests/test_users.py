"""
The hashed users file (stomptw.users): the file, the checker off the reactor
thread, reloads, and a real twistd re-reading it on SIGHUP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import pytest_twisted
from clients import TIMEOUT, ClientPool, wait_until
from twisted.cred import credentials, error

from stomptw.auth import Identity
from stomptw.users import (
    User,
    UsersFileChecker,
    UsersFileError,
    hash_password,
    parse_users,
    read_users,
    write_users,
)

ROOT = Path(__file__).resolve().parent.parent


def creds(name: str, password: str) -> credentials.UsernamePassword:
    return credentials.UsernamePassword(name.encode(), password.encode())


def test_the_file_round_trips_and_keeps_no_plaintext(tmp_path):
    path = tmp_path / "users.toml"
    users = [
        User("alice", hash_password("correct horse"), ("chat", "ops"), ("administrator",)),
        User('b"ob ü', hash_password("pw")),
    ]
    write_users(str(path), users)
    text = path.read_text()
    assert "correct horse" not in text and "$argon2id$" in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert read_users(str(path)) == {u.name: u for u in users}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"users": {"alice": {"password": "plain"}}}, "expected an argon2 hash"),
        ({"users": {"alice": {"password": "$argon2id$x", "group": []}}}, "unknown key 'group'"),
        ({"users": {"alice": {"password": "$argon2id$x", "tags": "admin"}}}, "expected a list"),
        ({"people": {}}, "unknown table 'people'"),
        ({"users": {"": {"password": "$argon2id$x"}}}, "invalid user name"),
    ],
)
def test_bad_files_are_refused_with_the_reason(data, message):
    with pytest.raises(UsersFileError, match=message):
        parse_users(data)


def test_a_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(UsersFileError, match="stomptw-users add"):
        read_users(str(tmp_path / "none.toml"))


@pytest_twisted.ensureDeferred
async def test_checker_accepts_the_password_off_the_reactor_thread(tmp_path, monkeypatch):
    from stomptw import users as module

    path = tmp_path / "users.toml"
    write_users(str(path), [User("alice", hash_password("pw"), ("chat",), ("administrator",))])
    checker = UsersFileChecker(str(path))
    threads = []
    verify = module._verify

    def recording(hashed, password):
        threads.append(threading.current_thread())
        return verify(hashed, password)

    monkeypatch.setattr(module, "_verify", recording)
    identity = await checker.requestAvatarId(creds("alice", "pw"))
    assert isinstance(identity, Identity)
    assert (identity.name, identity.groups, identity.tags) == ("alice", {"chat"}, {"administrator"})
    for wrong in (creds("alice", "PW"), creds("mallory", "pw"), creds("alice", "")):
        with pytest.raises(error.UnauthorizedLogin):
            await checker.requestAvatarId(wrong)
    # Every check, an unknown name's included, ran in the hashing pool.
    assert len(threads) == 4
    assert all(t is not threading.main_thread() for t in threads)
    assert all("stomptw-hashing" in t.name for t in threads), [t.name for t in threads]


@pytest_twisted.ensureDeferred
async def test_reload_takes_a_new_file_and_keeps_the_old_one_when_broken(tmp_path):
    path = tmp_path / "users.toml"
    write_users(str(path), [User("alice", hash_password("pw"))])
    checker = UsersFileChecker(str(path))
    write_users(str(path), [User("alice", hash_password("pw")), User("bob", hash_password("b"))])
    await checker.reload()
    assert (await checker.requestAvatarId(creds("bob", "b"))).name == "bob"
    path.write_text("[users.carol\n")
    with pytest.raises(UsersFileError, match="not valid TOML"):
        await checker.reload()
    assert set(checker.users) == {"alice", "bob"}


def _stomptw_users(*args: str, password: str = "", cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "stomptw.userscli", *args],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


def test_sighup_reloads_users_without_dropping_sessions(tmp_path):
    """A real twistd: a user added while it runs logs in after SIGHUP; sessions stay."""
    users = tmp_path / "users.toml"
    assert (
        _stomptw_users("add", str(users), "alice", password="alice-pw", cwd=tmp_path).returncode
        == 0
    )
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        [
            twistd,
            "-n",
            "--pidfile=",
            f"--logfile={log}",
            "stomptw",
            "--store",
            "memory",
            "--auth",
            f"users:{users}",
            "--tcp",
            "tcp:0:interface=127.0.0.1",
            "--no-ws",
            "--login-failure-delay",
            "0",
        ],
        cwd=tmp_path,
        env=env,
    )
    try:
        port = wait_until(lambda: _port_from(log), "the broker to listen", timeout=30)
        with ClientPool() as pool:
            alice = pool.tcp(port, connect=False)
            alice.connect(username="alice", passcode="alice-pw")
            alice.subscribe("/queue/sighup")
            bob = pool.tcp(port, connect=False)
            with pytest.raises(AssertionError, match="no CONNECTED"):
                bob.connect(username="bob", passcode="bob-pw")
            added = _stomptw_users("add", str(users), "bob", password="bob-pw", cwd=tmp_path)
            assert added.returncode == 0, added.stderr
            assert "bob-pw" not in users.read_text()
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "users reloaded" in log.read_text(), "the reload", timeout=TIMEOUT)
            bob = pool.tcp(port, connect=False)
            bob.connect(username="bob", passcode="bob-pw")
            bob.send("/queue/sighup", "after the reload", receipt=True)
            # alice's session, opened before the reload, still receives.
            assert alice.next_message().headers["user-id"] == "bob"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _port_from(log: Path) -> int | None:
    if not log.exists():
        return None
    for line in log.read_text().splitlines():
        if "stomp listening on" in line and "(127.0.0.1:" in line:
            return int(line.rsplit(":", 1)[1].rstrip(")"))
    return None


def test_stomptw_users_commands(tmp_path):
    path = str(tmp_path / "users.toml")
    run = _stomptw_users
    added = run(
        "add",
        path,
        "alice",
        "--group",
        "chat",
        "--tag",
        "administrator",
        password="pw1",
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    assert "alice: added" in added.stderr
    again = run("add", path, "alice", password="pw", cwd=tmp_path)
    assert again.returncode == 1 and "exists already" in again.stderr
    before = read_users(path)["alice"].password
    assert run("passwd", path, "alice", password="pw2", cwd=tmp_path).returncode == 0
    after = read_users(path)["alice"]
    assert after.password != before and after.groups == ("chat",)
    assert run("set", path, "alice", "--tag", "monitoring", cwd=tmp_path).returncode == 0
    assert read_users(path)["alice"].tags == ("monitoring",)
    listing = run("list", path, cwd=tmp_path)
    assert listing.stdout == "alice\tgroups=-\ttags=monitoring\n"
    empty = run("add", path, "bob", password="", cwd=tmp_path)
    assert empty.returncode == 1 and "empty password" in empty.stderr
    missing = run("remove", path, "nobody", cwd=tmp_path)
    assert missing.returncode == 1 and "no user 'nobody'" in missing.stderr
    assert run("remove", path, "alice", cwd=tmp_path).returncode == 0
    assert read_users(path) == {}
    assert "pw1" not in Path(path).read_text()
