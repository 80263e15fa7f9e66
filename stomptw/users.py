"""
A users file with hashed passwords: ``--auth users:FILE``.

The file is TOML, one table per user; ``stomptw-users`` (:mod:`stomptw.userscli`)
writes it, and no plaintext password is ever stored::

    [users.alice]
    password = "$argon2id$v=19$m=19456,t=2,p=1$..."
    groups = ["chat"]
    tags = ["administrator"]

Passwords are argon2id hashes (argon2-cffi). Checking one costs tens of
milliseconds of CPU on purpose, so it runs in a small thread pool of its own,
never on the reactor thread: a burst of logins slows other logins, not the
messages flowing meanwhile. The file is re-read on SIGHUP
(:meth:`UsersFileChecker.reload`) without touching sessions already logged in.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.cred import checkers, credentials, error
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from stomptw.auth import Identity, IReloadable

__all__ = [
    "HASHER",
    "User",
    "UsersFileChecker",
    "UsersFileError",
    "format_users",
    "hash_password",
    "parse_users",
    "read_users",
    "users_checker",
    "write_users",
]

#: argon2id with OWASP's smallest recommended cost (19 MiB, 2 passes, one
#: lane): about 20 ms of one core per check. The parameters are kept in each
#: hash, so a file hashed with other costs still verifies.
HASHER = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)

#: What a user name may be: no control characters, not empty, bounded.
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,255}\Z")


class UsersFileError(ValueError):
    """The users file cannot be used: the message says where and why."""


@dataclass(frozen=True)
class User:
    """One user of the file: the password hash, groups and tags."""

    name: str
    password: str
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


def hash_password(password: str) -> str:
    """The argon2id hash of ``password``, for the users file."""
    return HASHER.hash(password)


def check_name(name: str) -> str:
    """``name`` if it can be a user name; raises :class:`UsersFileError`."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsersFileError(f"invalid user name {name!r}: 1-255 characters, no control characters")
    return name


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise UsersFileError(f"{where}: expected a list of names, got {value!r}")
    return tuple(value)


def parse_users(data: Mapping[str, Any]) -> dict[str, User]:
    """The users of a parsed users file; :class:`UsersFileError` names what is wrong."""
    unknown = sorted(set(data) - {"users"})
    if unknown:
        raise UsersFileError(f"unknown table {unknown[0]!r} (expected [users.NAME] tables)")
    table = data.get("users", {})
    if not isinstance(table, Mapping):
        raise UsersFileError("users: expected [users.NAME] tables")
    users = {}
    for name, entry in table.items():
        where = f"users.{name}"
        check_name(name)
        if not isinstance(entry, Mapping):
            raise UsersFileError(f"{where}: expected a table")
        extra = sorted(set(entry) - {"password", "groups", "tags"})
        if extra:
            raise UsersFileError(
                f"{where}: unknown key {extra[0]!r} (expected password, groups, tags)"
            )
        password = entry.get("password")
        if not isinstance(password, str) or not password.startswith("$argon2"):
            raise UsersFileError(
                f"{where}.password: expected an argon2 hash (set it with stomptw-users passwd)"
            )
        users[name] = User(
            name,
            password,
            _strings(f"{where}.groups", entry.get("groups", [])),
            _strings(f"{where}.tags", entry.get("tags", [])),
        )
    return users


def read_users(path: str) -> dict[str, User]:
    """Read and parse the users file at ``path`` (blocking: call it from a thread)."""
    from stomptw.configfile import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise UsersFileError(
            f"{path}: no such file (create it with: stomptw-users add {path} NAME)"
        ) from None
    except OSError as e:
        raise UsersFileError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsersFileError(f"{path}: not valid TOML: {e}") from None
    try:
        return parse_users(data)
    except UsersFileError as e:
        raise UsersFileError(f"{path}: {e}") from None


def _toml_string(text: str) -> str:
    # TOML basic strings escape as JSON does.
    import json

    return json.dumps(text, ensure_ascii=False)


def format_users(users: Iterable[User]) -> str:
    """The text of a users file holding ``users``."""
    lines = [
        "# stomptw users: argon2id password hashes, groups and tags.",
        "# Managed with stomptw-users (add, passwd, remove, list); see docs/security.md.",
    ]
    for user in sorted(users, key=lambda u: u.name):
        lines.append("")
        lines.append(f"[users.{_toml_string(user.name)}]")
        lines.append(f"password = {_toml_string(user.password)}")
        if user.groups:
            lines.append("groups = [" + ", ".join(map(_toml_string, user.groups)) + "]")
        if user.tags:
            lines.append("tags = [" + ", ".join(map(_toml_string, user.tags)) + "]")
    return "\n".join(lines) + "\n"


def write_users(path: str, users: Iterable[User]) -> None:
    """
    Replace the users file at ``path`` at once (a new file renamed over it),
    readable by its owner only.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".stomptw-users-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(format_users(users))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


#: How much lower than the reactor's the hashing threads' priority is (nice).
HASHING_NICENESS = 19

_thread_state = threading.local()


def _lower_priority() -> None:
    """
    Give the calling (hashing) thread a lower scheduling priority, once: when
    the cores are busy, the reactor thread and the message flow come first,
    and logins wait. Linux schedules threads as tasks, so this is per thread.
    """
    if getattr(_thread_state, "lowered", False):
        return
    _thread_state.lowered = True
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: the pool still keeps hashing off the reactor


def _verify(hashed: str, password: bytes) -> bool:
    """Whether ``password`` matches ``hashed`` (in a pool thread)."""
    _lower_priority()
    try:
        return HASHER.verify(hashed, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass
class _Pool:
    """The hashing threads, started on first use and stopped with the reactor."""

    size: int
    pool: ThreadPool | None = field(default=None, repr=False)

    def run(self, reactor: Any, f: Any, *args: Any) -> defer.Deferred:
        if self.pool is None:
            self.pool = ThreadPool(minthreads=0, maxthreads=self.size, name="stomptw-hashing")
            self.pool.start()
            reactor.addSystemEventTrigger("during", "shutdown", self._stop)
        return threads.deferToThreadPool(reactor, self.pool, f, *args)

    def _stop(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.stop()


#: One hashing pool for the process: hashing uses at most all cores but one.
_POOL = _Pool(max(1, (os.cpu_count() or 2) - 1))


@implementer(checkers.ICredentialsChecker, IReloadable)
class UsersFileChecker:
    """
    Checks user names and passwords against a users file; the avatar id is
    an :class:`~stomptw.auth.Identity` with the user's groups and tags.

    :param path: the users file; it is read now (raising
        :class:`UsersFileError` if it cannot be used) and again on
        :meth:`reload`.
    :param reactor: runs the hashing pool; the global reactor by default.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)
    log = Logger()

    def __init__(self, path: str, reactor: Any = None) -> None:
        self.path = path
        self._reactor = reactor
        self.users = read_users(path)
        # An unknown name is checked against this, so that it takes as long
        # as a wrong password.
        self._decoy = hash_password(os.urandom(16).hex())

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def requestAvatarId(self, credentials: Any) -> defer.Deferred:  # noqa: N802
        """See :class:`twisted.cred.checkers.ICredentialsChecker`."""
        try:
            name = credentials.username.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        user = self.users.get(name)
        hashed = user.password if user is not None else self._decoy
        d = _POOL.run(self.reactor, _verify, hashed, credentials.password)

        def checked(ok: bool) -> Identity:
            if not ok or user is None:
                raise error.UnauthorizedLogin()
            return Identity(user.name, groups=user.groups, tags=user.tags)

        return d.addCallback(checked)

    def reload(self) -> defer.Deferred:
        """
        Re-read the file in a thread. New logins use it once read; sessions
        logged in already are untouched. An unreadable or invalid file keeps
        the old users and fails the Deferred.
        """

        def done(users: dict[str, User]) -> None:
            self.users = users
            self.log.info(
                "users reloaded from {path}: {count} user(s)", path=self.path, count=len(users)
            )

        def failed(failure: Any) -> Any:
            self.log.error(
                "users not reloaded, the old ones stay in force: {error}",
                error=failure.getErrorMessage(),
            )
            return failure

        return threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), read_users, self.path
        ).addCallbacks(done, failed)


def users_checker(argstring: str) -> UsersFileChecker:
    """The checker of ``--auth users:FILE``."""
    if not argstring:
        raise ValueError("users needs the path of a users file: --auth users:FILE")
    return UsersFileChecker(argstring)
