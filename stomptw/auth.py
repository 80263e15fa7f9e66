"""
Logins: who a client is, through :mod:`twisted.cred`, and what it may do.

On CONNECT a session asks the broker's :class:`Authenticator` for an avatar.
It picks the credentials the frame and the transport carry (``login`` and
``passcode``, a TLS client certificate, or none), asks a
:class:`~twisted.cred.portal.Portal` for an :class:`IStompAvatar`, and
answers with a :class:`StompUser`: the user's name, groups, tags, virtual
host, when the credentials expire, and how to decide each permission.

The checkers come from ``--auth`` (:mod:`twisted.cred.strcred`). Checkers
that know more than a name return an :class:`Identity` (a ``bytes`` avatar
id with the groups, tags, expiry, or permissions attached), which
:class:`BrokerRealm` turns into the avatar. What a user may do comes from
the identity itself (a token's scopes, an HTTP backend) or else from the
permissions file (:mod:`stomptw.permissions`).
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.cred import checkers, credentials, error
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from stomptw.credentials import CertificateCredentials, ICertificateCredentials
from stomptw.permissions import ACTIONS, DEFAULT_VHOST, Grants, PermissionsPolicy

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = [
    "ACTIONS",
    "ANONYMOUS_USER",
    "AuthServiceUnavailable",
    "Authenticator",
    "BrokerRealm",
    "CertificateCredentials",
    "FailedLogins",
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
    "build_authenticator",
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


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


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
    :param generation: returns a number that changes whenever the rules
        behind ``decide`` do (the permissions file was reloaded), so that
        sessions drop the answers they cached.
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
        generation: Callable[[], int] | None = None,
        logout: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.groups = frozenset(groups)
        self.tags = frozenset(tags)
        self.vhost = vhost
        self.expires = expires
        self.unrestricted = decide is None
        self._decide = decide or _allow_all
        self.generation = generation or (lambda: 0)
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
            name, groups, tags, expires = "", frozenset(), frozenset(), None
        else:
            name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
            groups = getattr(avatarId, "groups", frozenset())
            tags = getattr(avatarId, "tags", frozenset())
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
            generation = None
        elif grants is not None:
            decide = grants.in_vhost(vhost, name)
            allowed = defer.succeed(grants.has_vhost(vhost))
            generation = None
        else:
            decide = None if policy.unrestricted else policy.decider(vhost, name, groups)
            groups = groups | policy.groups_of(name)
            tags = tags | policy.tags_of(name)
            allowed = defer.succeed(policy.vhost_allowed(vhost, name, groups))
            generation = policy.generation_of

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
                generation=generation,
            )
            return IStompAvatar, user, _nothing

        return allowed.addCallback(made)


class FailedLogins:
    """
    Failed logins per peer address in a sliding window: past ``limit`` of
    them within ``window`` seconds, logins from that address are refused
    without being checked until the oldest falls out of the window.
    """

    def __init__(self, limit: int, window: float, now: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self._now = now
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, host: str) -> deque[float] | None:
        times = self._failures.get(host)
        if times is None:
            return None
        cutoff = self._now() - self.window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[host]
            return None
        return times

    def blocked_for(self, host: str) -> float:
        """Seconds until ``host`` may try again; 0 when it may now."""
        if not self.limit:
            return 0.0
        times = self._recent(host)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - self._now())

    def failed(self, host: str) -> None:
        """A login from ``host`` failed."""
        if not self.limit:
            return
        times = self._recent(host)
        if times is None:
            times = self._failures[host] = deque()
        times.append(self._now())
        if len(self._failures) > 100_000:
            # A bound on memory under a spray of addresses: forget the oldest.
            del self._failures[next(iter(self._failures))]


@dataclass
class AuthCounters:
    """Login outcomes, for ``/metrics``."""

    succeeded: int = 0
    failed: int = 0
    rate_limited: int = 0
    unavailable: int = 0
    denied: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    expired: int = 0


class LoginFailed(Exception):
    """
    A login did not succeed; the session ends with an ERROR saying
    ``message`` (after the failure delay, when ``delayed``).
    """

    def __init__(self, message: str, details: str, delayed: bool) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.delayed = delayed


class Authenticator:
    """
    The broker's logins: the portal (None when the broker has no ``--auth``
    and every session is anonymous), the permissions file, the vhosts, the
    delay before a refusal and the per-peer limit on failed attempts.

    :param portal: asks the ``--auth`` checkers; None: no authentication.
    :param policy: the permissions file's rules.
    :param realm: the portal's realm (anonymous sessions get their avatar
        from it directly when there is no portal).
    :param vhosts: the names of the virtual hosts besides ``/``.
    :param local_names: ``host`` header values that mean the default vhost
        (``localhost``, the machine's name).
    """

    log = Logger()

    def __init__(
        self,
        portal: Portal | None,
        policy: PermissionsPolicy,
        clock: IReactorTime,
        realm: BrokerRealm | None = None,
        *,
        vhosts: Iterable[str] = (),
        local_names: Iterable[str] = (),
        failure_delay: float = 1.0,
        max_failures: int = 10,
        failure_window: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.portal = portal
        self.policy = policy
        self.realm = realm or BrokerRealm(policy)
        self.clock = clock
        self.vhosts = frozenset(vhosts) | {DEFAULT_VHOST}
        self.local_names = frozenset(n.lower() for n in local_names) | {"localhost", ""}
        self.failure_delay = failure_delay
        self.failures = FailedLogins(max_failures, failure_window, clock.seconds)
        self.wall_clock = wall_clock
        self.counters = AuthCounters()
        #: Things re-read on reload (the permissions file, users files).
        self.reloadables: list[Any] = [policy]
        #: Called whenever one of them has been read again (the service tells
        #: every session, see :meth:`~stomptw.session.StompSession.permissions_changed`).
        self.on_change: Callable[[], None] | None = None

    @property
    def required(self) -> bool:
        """Whether sessions log in (the broker has ``--auth``)."""
        return self.portal is not None

    def vhost_of(self, headers: dict[str, str]) -> str:
        """
        The vhost CONNECT's ``host`` header selects; raises
        :class:`UnknownVhost`. A broker without vhosts of its own puts every
        session in ``/`` (clients send the broker's address as ``host``); one
        with them does so for no ``host``, ``localhost``, the machine's name
        or an IP address, and refuses other names it does not know.
        """
        host = headers.get("host", "")
        if host in self.vhosts:
            return host
        if len(self.vhosts) == 1:
            return DEFAULT_VHOST
        name = host.lower()
        bare = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        if name in self.local_names or bare in self.local_names or _is_ip(bare):
            return DEFAULT_VHOST
        raise UnknownVhost(host, self.vhosts)

    def login(
        self, headers: dict[str, str], peer_host: str, transport: str, certificate: Any = None
    ) -> defer.Deferred:
        """
        Log in with CONNECT's ``headers``: a Deferred firing with a
        :class:`StompUser`, or failing with :class:`LoginFailed`.

        :param certificate: the transport's verified client certificate
            (:class:`CertificateCredentials`), or None.
        """
        try:
            vhost = self.vhost_of(headers)
        except UnknownVhost as e:
            return defer.fail(LoginFailed(e.message, e.details, delayed=False))
        login = headers.get("login")
        if self.portal is None:
            # No --auth: every session is anonymous (the realm still applies
            # the permissions file's [anonymous] table and the vhost).
            mind = LoginContext(vhost, peer_host, transport, headers)
            d = defer.maybeDeferred(
                self.realm.requestAvatar, checkers.ANONYMOUS, mind, IStompAvatar
            )
            return d.addCallbacks(
                self._succeeded,
                self._failed,
                callbackArgs=(peer_host,),
                errbackArgs=(login, peer_host, vhost),
            )
        wait = self.failures.blocked_for(peer_host)
        if wait:
            self.counters.rate_limited += 1
            self.log.info(
                "login refused: too many failed logins from {peer} (user {user})",
                peer=peer_host,
                user=login if login is not None else "-",
            )
            return defer.fail(
                LoginFailed(
                    "too many failed logins",
                    f"Too many failed logins from this address; try again in {wait:.0f} s.",
                    delayed=True,
                )
            )
        passcode = headers.get("passcode")
        if login is not None or passcode is not None:
            # A passcode alone is a bearer token (what stompjs users send).
            creds: Any = credentials.UsernamePassword(
                (login or "").encode("utf-8"), (passcode or "").encode("utf-8")
            )
        elif certificate is not None:
            creds = certificate
        else:
            creds = credentials.Anonymous()
        mind = LoginContext(vhost, peer_host, transport, headers)
        d = self.portal.login(creds, mind, IStompAvatar)
        d.addCallbacks(
            self._succeeded,
            self._failed,
            callbackArgs=(peer_host,),
            errbackArgs=(login, peer_host, vhost),
        )
        return d

    def _succeeded(self, result: tuple[Any, StompUser, Any], peer_host: str) -> StompUser:
        self.counters.succeeded += 1
        _, user, logout = result
        user.on_logout(logout)
        return user

    def _failed(self, failure: Any, login: str | None, peer_host: str, vhost: str) -> None:
        user = login if login is not None else "-"
        if failure.check(AuthServiceUnavailable):
            self.counters.unavailable += 1
            self.log.warn(
                "login of {user} from {peer} not decided: {reason}",
                user=user,
                peer=peer_host,
                reason=failure.getErrorMessage(),
            )
            raise LoginFailed(
                "authentication service unavailable",
                "The service that checks credentials did not answer; try again later.",
                delayed=False,
            )
        if failure.check(error.UnauthorizedLogin, error.UnhandledCredentials):
            self.counters.failed += 1
            self.failures.failed(peer_host)
            refused = failure.value if failure.check(LoginRefused) else None
            self.log.info(
                "login failed: user={user} peer={peer} vhost={vhost} reason={reason}",
                user=user,
                peer=peer_host,
                vhost=vhost,
                reason=refused.message if refused else "invalid credentials",
            )
            if refused is not None:
                raise LoginFailed(refused.message, refused.details, delayed=True)
            raise LoginFailed(
                "authentication failed",
                "The login and passcode (or token) were not accepted.",
                delayed=True,
            )
        # A checker's bug: log it, refuse the login in words.
        self.counters.unavailable += 1
        self.log.failure("login of {user} from {peer} failed", failure, user=user, peer=peer_host)
        raise LoginFailed(
            "authentication service unavailable",
            "The broker could not check these credentials; try again later.",
            delayed=False,
        )

    def _changed(self, result: object) -> object:
        # As soon as one file is read: the sessions must not keep answers
        # (their fast path for SENDs among them) from the rules it replaced.
        if self.on_change is not None:
            self.on_change()
        return result

    def expires_in(self, user: StompUser) -> float | None:
        """Seconds until ``user``'s credentials expire (None: never)."""
        if user.expires is None:
            return None
        return user.expires - self.wall_clock()

    def reload(self) -> defer.Deferred:
        """
        Re-read the permissions file and every reloadable checker; fails
        with the first one's error if any could not be read (that one keeps
        what it had).
        """
        results = [
            defer.maybeDeferred(r.reload).addCallback(self._changed) for r in self.reloadables
        ]

        def first_failure(outcomes: list[tuple[bool, Any]]) -> Any:
            # Each one that could be read is in force; the first failure
            # (already logged by its owner) fails the whole reload.
            for ok, result in outcomes:
                if not ok:
                    return result
            return None

        return defer.DeferredList(results, consumeErrors=True).addCallback(first_failure)


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


@implementer(checkers.ICredentialsChecker)
class FirstOf:
    """
    Several checkers of the same credentials, tried in order until one
    accepts. When none does, a refusal with a reason of its own (a token
    that expired) wins over a plain one, and a checker that could not
    decide (:class:`AuthServiceUnavailable`) over both.
    """

    def __init__(self, chain: Iterable[Any]) -> None:
        self.chain = list(chain)
        self.credentialInterfaces = tuple({i for c in self.chain for i in c.credentialInterfaces})

    @defer.inlineCallbacks
    def requestAvatarId(self, creds: Any) -> Any:  # noqa: N802
        """See :class:`twisted.cred.checkers.ICredentialsChecker`."""
        refusal: Any = error.UnauthorizedLogin()
        unavailable = None
        for checker in self.chain:
            try:
                avatar_id = yield defer.maybeDeferred(checker.requestAvatarId, creds)
            except AuthServiceUnavailable as e:
                unavailable = e
            except LoginRefused as e:
                refusal = e
            except error.UnauthorizedLogin:
                pass
            else:
                return avatar_id
        raise unavailable or refusal


def _with_bytes(checker: Any) -> Any:
    """
    Twisted's ``memory:`` checker (strcred) keeps the names and passwords of
    the command line as text, while credentials carry bytes, as the
    interface says: store them as UTF-8 bytes so that they match.
    """
    if isinstance(checker, checkers.InMemoryUsernamePasswordDatabaseDontUse):
        checker.users = {
            (k.encode("utf-8") if isinstance(k, str) else k): (
                v.encode("utf-8") if isinstance(v, str) else v
            )
            for k, v in checker.users.items()
        }
    return checker


def build_authenticator(
    config: Any, checker_list: Iterable[Any], clock: IReactorTime, local_names: Iterable[str] = ()
) -> Authenticator:
    """
    The broker's :class:`Authenticator` for ``config`` (a
    :class:`~stomptw.config.BrokerConfig`): a portal over ``checker_list``
    (none: every session is anonymous), the permissions file, the vhosts and
    the failed-login policy. Raises
    :class:`~stomptw.permissions.PermissionsError` for a bad permissions file.
    """
    policy = PermissionsPolicy(config.permissions_file, config.vhosts)
    realm = BrokerRealm(policy)
    found = [_with_bytes(c) for c in checker_list]
    portal = None
    if found:
        # A Portal keeps one checker per credentials interface (the last
        # registered): several --auth of one kind are tried in order instead.
        by_interface: dict[Any, list[Any]] = {}
        for checker in found:
            for interface in checker.credentialInterfaces:
                by_interface.setdefault(interface, []).append(checker)
        portal = Portal(realm)
        for interface, chain in by_interface.items():
            portal.registerChecker(chain[0] if len(chain) == 1 else FirstOf(chain), interface)
    auth = Authenticator(
        portal,
        policy,
        clock,
        realm,
        vhosts=config.vhosts,
        local_names=local_names,
        failure_delay=config.login_failure_delay,
        max_failures=config.max_failed_logins,
        failure_window=config.failed_login_window,
    )
    auth.reloadables.extend(c for c in found if IReloadable.providedBy(c))
    return auth
