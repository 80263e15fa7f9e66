"""
Logins: who a client is, through :mod:`twisted.cred`, and what it may do.

On CONNECT a session asks the broker's
:class:`~stomptw.authenticator.Authenticator` for an avatar, an
:class:`IStompAvatar`: a :class:`StompUser` with the user's name, groups,
tags, virtual host, when the credentials expire, and how to decide each
permission. This module has what an avatar is and where it comes from; the
login process itself is in :mod:`stomptw.authenticator`.

The checkers come from ``--auth`` (:mod:`twisted.cred.strcred`). Checkers
that know more than a name return an :class:`Identity` (a ``bytes`` avatar
id with the groups, tags, expiry, or permissions attached), which
:class:`BrokerRealm` turns into the avatar. What a user may do comes from
the identity itself (a token's scopes, an HTTP backend) or else from the
permissions file (:mod:`stomptw.permissions`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.cred import checkers, error
from twisted.cred.portal import IRealm
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

from stomptw.credentials import CertificateCredentials, ICertificateCredentials
from stomptw.permissions import ACTIONS, DEFAULT_VHOST, Grants, PermissionsPolicy

if TYPE_CHECKING:
    pass

__all__ = [
    "ACTIONS",
    "ANONYMOUS_USER",
    "AuthServiceUnavailable",
    "BrokerRealm",
    "CertificateCredentials",
    "IAuthorizer",
    "ICertificateCredentials",
    "IReloadable",
    "IStompAvatar",
    "Identity",
    "LoginContext",
    "LoginRefused",
    "StompUser",
    "TokenExpired",
    "UnknownVhost",
    "VhostRefused",
    "make_checker",
    "parse_checker_arguments",
]


class IStompAvatar(Interface):
    """A logged-in STOMP user, as the session sees it."""

    name = Attribute("The authenticated user name; empty for an anonymous session.")
    groups = Attribute("frozenset of the user's group names.")
    tags = Attribute("frozenset of the user's tags (``administrator``, ...).")
    vhost = Attribute("The virtual host the session is in.")
    expires = Attribute("POSIX time the credentials expire (a token's exp), or None.")
    unrestricted = Attribute("True when the user may do everything: no check is made.")

    def allows(action, destination):  # noqa: N805
        """
        Whether the user may ``action`` (one of :data:`ACTIONS`)
        ``destination``: a bool, or a Deferred firing with one when the
        answer comes from elsewhere (an HTTP backend).
        """


class IAuthorizer(Interface):
    """
    Decides permissions for the identities one checker returns, instead of
    the permissions file (an HTTP backend asks its service).
    """

    def vhost_allowed(identity, vhost, peer):  # noqa: N805
        """Whether ``identity`` may use ``vhost``, from ``peer`` (an IP): bool or Deferred."""

    def allows(identity, vhost, action, destination):  # noqa: N805
        """Whether ``identity`` may ``action`` ``destination`` in ``vhost``: bool or Deferred."""


class IReloadable(Interface):
    """Something that re-reads its files when the broker is told to (SIGHUP)."""

    def reload():  # noqa: N805
        """Read again; return a Deferred that fires when done (and fails if unreadable)."""


class Identity(bytes):
    """
    An avatar id with what the checker knows of the user.

    It is the user's name in UTF-8 (what Twisted's own checkers return), so
    a realm or checker that expects plain bytes still works.

    :ivar groups: groups the checker knows the user to be in.
    :ivar tags: tags (``administrator``, ...).
    :ivar expires: POSIX time the credentials expire, or None.
    :ivar grants: the user's permissions in every vhost, when the
        credentials carry them (a token's scopes); None: ask ``authorizer``
        or the permissions file.
    :ivar authorizer: an :class:`IAuthorizer` deciding this user's
        permissions, or None.
    """

    groups: frozenset[str]
    tags: frozenset[str]
    expires: float | None
    grants: Grants | None
    authorizer: Any

    def __new__(
        cls,
        name: str,
        *,
        groups: Iterable[str] = (),
        tags: Iterable[str] = (),
        expires: float | None = None,
        grants: Grants | None = None,
        authorizer: Any = None,
    ) -> Identity:
        self = super().__new__(cls, name.encode("utf-8"))
        self.groups = frozenset(groups)
        self.tags = frozenset(tags)
        self.expires = expires
        self.grants = grants
        self.authorizer = authorizer
        return self

    @property
    def name(self) -> str:
        """The user name, as text."""
        return self.decode("utf-8")


class LoginRefused(error.UnauthorizedLogin):
    """
    A login refused with a reason the client may read (the ERROR's
    ``message``). A plain :class:`~twisted.cred.error.UnauthorizedLogin`
    gets ``authentication failed``, whatever was wrong.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class TokenExpired(LoginRefused):
    """The credentials (a token) have expired."""

    def __init__(self, details: str = "") -> None:
        super().__init__(
            "token expired",
            details or "The token's exp has passed; connect again with a fresh token.",
        )


class VhostRefused(LoginRefused):
    """The user may not use the virtual host it asked for."""

    def __init__(self, vhost: str) -> None:
        super().__init__(
            f"access to vhost {vhost!r} refused",
            f"The credentials are valid but give no access to virtual host {vhost!r}.",
        )


class UnknownVhost(LoginRefused):
    """CONNECT's ``host`` names no virtual host of this broker."""

    def __init__(self, vhost: str, known: Iterable[str]) -> None:
        super().__init__(
            f"unknown vhost {vhost[:100]!r}",
            f"CONNECT's host header names virtual host {vhost[:100]!r}, which this broker "
            "does not have. Its virtual hosts are: " + ", ".join(sorted(known)) + ".",
        )


class AuthServiceUnavailable(Exception):
    """The service that checks credentials did not answer; the login cannot be decided."""


@dataclass
class LoginContext:
    """
    The twisted.cred ``mind`` of a STOMP login: what a checker or realm may
    want to know of the connection besides the credentials.
    """

    vhost: str = DEFAULT_VHOST
    peer_host: str = ""
    transport: str = ""
    #: CONNECT's headers (never logged: passcode is among them).
    headers: dict[str, str] = field(default_factory=dict, repr=False)


def _nothing() -> None:
    """The logout of a :class:`BrokerRealm` avatar: nothing to undo."""


def _allow_all(action: str, destination: str) -> bool:
    return True


@implementer(IStompAvatar)
class StompUser:
    """
    The avatar of one login.

    :param decide: ``(action, destination) -> bool | Deferred``; the
        default allows everything.
    """

    def __init__(
        self,
        name: str = "",
        *,
        groups: Iterable[str] = (),
        tags: Iterable[str] = (),
        vhost: str = DEFAULT_VHOST,
        expires: float | None = None,
        decide: Callable[[str, str], bool | defer.Deferred] | None = None,
        logout: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.groups = frozenset(groups)
        self.tags = frozenset(tags)
        self.vhost = vhost
        self.expires = expires
        self.unrestricted = decide is None
        self._decide = decide or _allow_all
        self._logout = logout

    def allows(self, action: str, destination: str) -> bool | defer.Deferred:
        """See :meth:`IStompAvatar.allows`."""
        return self._decide(action, destination)

    def on_logout(self, logout: Callable[[], None]) -> None:
        """Call ``logout`` (the portal's) when the connection ends."""
        self._logout = logout

    def logout(self) -> None:
        """The connection ended: run the portal's logout, once."""
        logout, self._logout = self._logout, None
        if logout is not None:
            logout()

    def __repr__(self) -> str:
        return f"<StompUser {self.name or '(anonymous)'} vhost={self.vhost!r}>"


#: No groups or tags: one empty set for every login that has none.
_NO_NAMES: frozenset[str] = frozenset()

#: The avatar of every session when the broker has no ``--auth``.
ANONYMOUS_USER = StompUser()


@implementer(IRealm)
class BrokerRealm:
    """
    Turns an avatar id into a :class:`StompUser` for the session's vhost.

    :param policy: the permissions file's rules
        (:class:`~stomptw.permissions.PermissionsPolicy`).
    """

    def __init__(self, policy: PermissionsPolicy) -> None:
        self.policy = policy

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:  # noqa: N802,N803
        """See :class:`twisted.cred.portal.IRealm`."""
        if IStompAvatar not in interfaces:
            raise NotImplementedError("stomptw's realm only provides IStompAvatar")
        context = mind if isinstance(mind, LoginContext) else LoginContext()
        vhost = context.vhost
        if avatarId is checkers.ANONYMOUS:
            name, groups, tags, expires = "", _NO_NAMES, _NO_NAMES, None
        else:
            name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
            groups = getattr(avatarId, "groups", _NO_NAMES)
            tags = getattr(avatarId, "tags", _NO_NAMES)
            expires = getattr(avatarId, "expires", None)
        grants = getattr(avatarId, "grants", None)
        authorizer = getattr(avatarId, "authorizer", None)
        policy = self.policy
        if authorizer is not None:

            def decide(action: str, destination: str) -> bool | defer.Deferred:
                return authorizer.allows(avatarId, vhost, action, destination)

            allowed = defer.maybeDeferred(
                authorizer.vhost_allowed, avatarId, vhost, context.peer_host
            )
        elif grants is not None:
            decide = grants.in_vhost(vhost, name)
            allowed = defer.succeed(grants.has_vhost(vhost))
        else:
            decide = None if policy.unrestricted else policy.decider(vhost, name, groups)
            # Unions only when there is something to add: an anonymous
            # login would otherwise hold two empty frozensets of its own.
            extra_groups = policy.groups_of(name)
            if extra_groups:
                groups = groups | extra_groups
            extra_tags = policy.tags_of(name)
            if extra_tags:
                tags = tags | extra_tags
            allowed = defer.succeed(policy.vhost_allowed(vhost, name, groups))

        def made(ok: bool) -> tuple[Any, StompUser, Callable[[], None]]:
            if not ok:
                raise VhostRefused(vhost)
            user = StompUser(
                name,
                groups=groups,
                tags=tags,
                vhost=vhost,
                expires=expires,
                decide=decide,
            )
            return IStompAvatar, user, _nothing

        return allowed.addCallback(made)


def parse_checker_arguments(argstring: str, names: Iterable[str]) -> dict[str, str]:
    """
    The ``NAME=VALUE`` options of an ``--auth KIND:ARGSTRING``, separated by
    ``:``. A value may hold colons (a URL): only ``:NAME=`` of one of
    ``names`` starts the next option.
    """
    names = tuple(names)
    alternatives = "|".join(re.escape(n) for n in names)
    starts = list(re.finditer(rf"(?:^|:)({alternatives})=", argstring))
    if not starts or starts[0].start() != 0:
        raise ValueError(
            f"expected NAME=VALUE options separated by ':' ({', '.join(names)}), got {argstring!r}"
        )
    options = {}
    for here, after in zip(starts, starts[1:] + [None], strict=True):
        end = after.start() if after is not None else len(argstring)
        options[here.group(1)] = argstring[here.end() : end]
    return options


def make_checker(description: str) -> checkers.ICredentialsChecker:
    """
    The checker an ``--auth`` description names (:mod:`twisted.cred.strcred`:
    ``memory:alice:secret``, ``anonymous``, ``users:FILE``, ...).
    """
    from twisted.cred import strcred

    return strcred.makeChecker(description)
