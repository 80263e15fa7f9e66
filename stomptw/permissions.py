"""
Permissions: which destinations a user may read, write and create.

The rules are patterns over destination names, per user and per group, per
virtual host, read from a TOML file (``--permissions``)::

    [groups.chat]
    read  = ["/topic/chat.*"]
    write = ["/topic/chat.*"]

    [users.alice]
    groups = ["chat"]
    tags   = ["administrator"]
    read   = ["/queue/{username}.*"]
    create = ["/queue/{username}.*"]

    [anonymous]                      # sessions without a login, if allowed
    read = ["/topic/public.*"]

    [vhosts.team.groups.chat]        # the same tables, in virtual host "team"
    read = ["**"]

In a pattern ``*`` matches any run of characters except ``/``, ``**``
matches anything, ``{username}`` is the user's name (matched literally) and
every other character stands for itself. A user's permissions are the union
of its own and its groups'. The tables at the top level are the default
vhost's (``/``); another vhost may be used by the users and groups that
have a table in it.

Without a file every user may do everything, in every vhost.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger

__all__ = [
    "ACTIONS",
    "DEFAULT_VHOST",
    "Entry",
    "Grants",
    "PermissionsError",
    "PermissionsPolicy",
    "compile_patterns",
    "parse_permissions",
]


#: The permissions a destination name is checked for: SUBSCRIBE needs
#: ``read``, SEND ``write``, and using a destination that does not exist yet
#: ``create`` as well.
ACTIONS = ("read", "write", "create")

#: The virtual host a CONNECT without ``host`` (or with the broker's own
#: name or address) lands in.
DEFAULT_VHOST = "/"


class PermissionsError(ValueError):
    """The permissions file is not valid: the message says where and why."""


_TOKEN = re.compile(r"\*\*|\*|\{username\}|[^*{]+|\{")


def _pattern_regex(pattern: str, username: str) -> str:
    parts = []
    for token in _TOKEN.findall(pattern):
        if token == "**":
            parts.append(".*")
        elif token == "*":
            parts.append("[^/]*")
        elif token == "{username}":
            parts.append(re.escape(username))
        else:
            parts.append(re.escape(token))
    return "".join(parts)


def compile_patterns(patterns: Iterable[str], username: str = "") -> Callable[[str], bool]:
    """One matcher for any of ``patterns`` (``{username}`` expanded)."""
    regexes = [_pattern_regex(p, username) for p in patterns]
    if not regexes:
        return lambda destination: False
    if ".*" in regexes:
        return lambda destination: True
    matcher = re.compile("(?:" + "|".join(regexes) + r")\Z", re.DOTALL).match
    return lambda destination: matcher(destination) is not None


@dataclass(frozen=True)
class Entry:
    """One table's patterns for each of :data:`ACTIONS`."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    create: tuple[str, ...] = ()

    def patterns(self, action: str) -> tuple[str, ...]:
        """The patterns for ``action``."""
        return getattr(self, action)


@dataclass
class _Vhost:
    users: dict[str, Entry] = field(default_factory=dict)
    groups: dict[str, Entry] = field(default_factory=dict)
    anonymous: Entry | None = None

    def entries(self, name: str, groups: Iterable[str]) -> list[Entry]:
        found = []
        if not name:
            if self.anonymous is not None:
                found.append(self.anonymous)
            return found
        if name in self.users:
            found.append(self.users[name])
        found.extend(self.groups[g] for g in sorted(groups) if g in self.groups)
        return found


@dataclass
class _Rules:
    vhosts: dict[str, _Vhost]
    user_groups: dict[str, frozenset[str]]
    user_tags: dict[str, frozenset[str]]


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PermissionsError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def _entry(where: str, table: Any) -> tuple[Entry, dict[str, Any]]:
    if not isinstance(table, Mapping):
        raise PermissionsError(f"{where}: expected a table, got {table!r}")
    rest = dict(table)
    patterns = {a: _strings(f"{where}.{a}", rest.pop(a)) for a in ACTIONS if a in rest}
    return Entry(**patterns), rest


def _vhost(where: str, table: Mapping[str, Any], rules: _Rules, top: bool) -> _Vhost:
    vhost = _Vhost()
    for key, value in table.items():
        if key in ("users", "groups"):
            if not isinstance(value, Mapping):
                raise PermissionsError(f"{where}{key}: expected a table of tables")
            for name, sub in value.items():
                place = f"{where}{key}.{name}"
                entry, rest = _entry(place, sub)
                if key == "users":
                    vhost.users[name] = entry
                    for attr, store in (("groups", rules.user_groups), ("tags", rules.user_tags)):
                        if attr in rest:
                            if not top:
                                raise PermissionsError(
                                    f"{place}.{attr}: a user's {attr} are set at the top "
                                    "level ([users.NAME]), not per vhost"
                                )
                            store[name] = frozenset(_strings(f"{place}.{attr}", rest.pop(attr)))
                else:
                    vhost.groups[name] = entry
                if rest:
                    raise PermissionsError(
                        f"{place}: unknown key {sorted(rest)[0]!r} (expected "
                        + ", ".join(ACTIONS + (("groups", "tags") if key == "users" else ()))
                        + ")"
                    )
        elif key == "anonymous":
            entry, rest = _entry(f"{where}anonymous", value)
            if rest:
                raise PermissionsError(f"{where}anonymous: unknown key {sorted(rest)[0]!r}")
            vhost.anonymous = entry
        elif key == "vhosts" and top:
            continue
        else:
            raise PermissionsError(
                f"{where}{key}: unknown table (expected users, groups, anonymous"
                + (" or vhosts" if top else "")
                + ")"
            )
    return vhost


def parse_permissions(data: Mapping[str, Any], known_vhosts: Iterable[str] | None = None) -> _Rules:
    """
    The rules of a parsed permissions file. Raises :class:`PermissionsError`
    naming the key that is wrong.

    :param known_vhosts: the broker's vhosts; a table for another one is an
        error (None: any name).
    """
    rules = _Rules({}, {}, {})
    rules.vhosts[DEFAULT_VHOST] = _vhost("", data, rules, top=True)
    vhosts = data.get("vhosts", {})
    if not isinstance(vhosts, Mapping):
        raise PermissionsError("vhosts: expected a table of vhost tables")
    known = None if known_vhosts is None else set(known_vhosts) | {DEFAULT_VHOST}
    for name, table in vhosts.items():
        if known is not None and name not in known:
            raise PermissionsError(
                f"vhosts.{name}: the broker has no vhost {name!r} (add it with --vhost {name})"
            )
        if not isinstance(table, Mapping):
            raise PermissionsError(f"vhosts.{name}: expected a table")
        rules.vhosts[name] = _vhost(f"vhosts.{name}.", table, rules, top=False)
    return rules


def _decider(entries: list[Entry], username: str) -> Callable[[str, str], bool]:
    matchers = {
        action: compile_patterns([p for e in entries for p in e.patterns(action)], username)
        for action in ACTIONS
    }
    return lambda action, destination: matchers[action](destination)


class Grants:
    """
    Permissions carried by the credentials themselves (a token's scopes):
    for each vhost (``*`` for all of them) an :class:`Entry`.
    """

    def __init__(self, by_vhost: Mapping[str, Entry]) -> None:
        self.by_vhost = dict(by_vhost)

    def has_vhost(self, vhost: str) -> bool:
        """Whether any permission applies in ``vhost``."""
        return vhost in self.by_vhost or "*" in self.by_vhost

    def in_vhost(self, vhost: str, username: str) -> Callable[[str, str], bool]:
        """The decider for ``username`` in ``vhost``."""
        entries = [self.by_vhost[v] for v in (vhost, "*") if v in self.by_vhost]
        return _decider(entries, username)


class PermissionsPolicy:
    """
    The permissions file in force, re-read by :meth:`reload`.

    :param path: the file; empty: no file, everyone may do everything.
    :param vhosts: the broker's vhosts besides ``/``.
    """

    log = Logger()

    def __init__(self, path: str = "", vhosts: Iterable[str] = ()) -> None:
        self.path = path
        self.vhosts = frozenset(vhosts)
        #: Bumped at every successful reload.
        self.generation = 0
        self._rules: _Rules | None = None
        if path:
            self._rules = self._read()

    @property
    def unrestricted(self) -> bool:
        """True without a file."""
        return self._rules is None

    def _read(self) -> _Rules:
        from stomptw.configfile import tomllib

        try:
            with open(self.path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise PermissionsError(f"{self.path}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise PermissionsError(f"{self.path}: not valid TOML: {e}") from None
        try:
            return parse_permissions(data, self.vhosts)
        except PermissionsError as e:
            raise PermissionsError(f"{self.path}: {e}") from None

    def reload(self) -> defer.Deferred:
        """
        Re-read the file in a thread; the new rules apply once it is read.
        An unreadable or invalid file leaves the old rules in force and
        fails the Deferred.
        """
        if not self.path:
            return defer.succeed(None)

        def done(rules: _Rules) -> None:
            self._rules = rules
            self.generation += 1
            self.log.info("permissions reloaded from {path}", path=self.path)

        def failed(failure: Any) -> Any:
            self.log.error(
                "permissions not reloaded, the old ones stay in force: {error}",
                error=failure.getErrorMessage(),
            )
            return failure

        return threads.deferToThread(self._read).addCallbacks(done, failed)

    def groups_of(self, name: str) -> frozenset[str]:
        """The groups the file puts ``name`` in."""
        return self._rules.user_groups.get(name, frozenset()) if self._rules else frozenset()

    def tags_of(self, name: str) -> frozenset[str]:
        """The tags the file gives ``name``."""
        return self._rules.user_tags.get(name, frozenset()) if self._rules else frozenset()

    def vhost_allowed(self, vhost: str, name: str, groups: Iterable[str]) -> bool:
        """Whether ``name`` may use ``vhost``."""
        if self._rules is None or vhost == DEFAULT_VHOST:
            return True
        table = self._rules.vhosts.get(vhost)
        return table is not None and bool(table.entries(name, groups))

    def decider(self, vhost: str, name: str, groups: Iterable[str]) -> Callable[[str, str], bool]:
        """
        The decider for ``name`` in ``vhost`` (in ``groups``, besides those
        the file gives it): it follows reloads, compiling the patterns again
        the first time it is asked after one.
        """
        base = frozenset(groups)
        state: list[Any] = [-1, None]

        def decide(action: str, destination: str) -> bool:
            if state[0] != self.generation:
                rules = self._rules
                table = rules.vhosts.get(vhost) if rules else None
                entries = table.entries(name, base | self.groups_of(name)) if table else []
                state[0], state[1] = self.generation, _decider(entries, name)
            return state[1](action, destination)

        return decide
