"""
The broker's logins: the :class:`Authenticator` a session asks on CONNECT.

It picks the credentials the frame and the transport carry (``login`` and
``passcode``, a TLS client certificate, or none), selects the virtual host,
asks the :class:`~twisted.cred.portal.Portal` of the ``--auth`` checkers
(several of one kind tried in order, :class:`FirstOf`) and answers with a
:class:`~stomptw.auth.StompUser`; it delays and limits failed attempts
(:class:`FailedLogins`), counts them for ``/metrics``, and re-reads the
permissions and users files on reload. What an avatar is, and the realm
that makes one, are in :mod:`stomptw.auth`.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.cred import checkers, credentials, error
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from stomptw.auth import (
    AuthServiceUnavailable,
    BrokerRealm,
    IReloadable,
    IStompAvatar,
    LoginContext,
    LoginRefused,
    StompUser,
    UnknownVhost,
)
from stomptw.permissions import ACTIONS, DEFAULT_VHOST, PermissionsPolicy

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = [
    "AuthCounters",
    "Authenticator",
    "FailedLogins",
    "FirstOf",
    "LoginFailed",
    "build_authenticator",
]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


#: Credentials checks from one address that run at once; more wait.
CHECKS_PER_ADDRESS = 4


class TooManyFailures(Exception):
    """Refused unchecked: the address failed too often (``wait`` seconds left)."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


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
        self._checking: dict[str, defer.DeferredSemaphore] = {}

    def checked(self, host: str, check: Callable[[], defer.Deferred]) -> defer.Deferred:
        """
        Run ``check()`` (a credentials check) when fewer than
        :data:`CHECKS_PER_ADDRESS` checks from ``host`` are under way, and
        refuse it unchecked if the address reached the limit meanwhile: a
        burst of parallel guesses is then checked a few at a time and
        stops at the limit, instead of all being checked before the first
        failure is counted. Logins from one address behind a proxy still
        all go through, in turn.
        """
        if not self.limit:
            return check()
        gate = self._checking.get(host)
        if gate is None:
            gate = self._checking[host] = defer.DeferredSemaphore(CHECKS_PER_ADDRESS)

        def run() -> defer.Deferred:
            wait = self.blocked_for(host)
            if wait:
                return defer.fail(TooManyFailures(wait))
            return check()

        def done(result: object) -> object:
            if gate.tokens == gate.limit and not gate.waiting:
                self._checking.pop(host, None)
            return result

        return gate.run(run).addBoth(done)

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
        #: every session, see :meth:`~stomptw.access.SessionAccess.permissions_changed`).
        self.on_change: Callable[[], None] | None = None
        #: More callables for the same moment (the console ends its
        #: sessions: who is an administrator may have changed).
        self.change_listeners: list[Callable[[], None]] = []

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
            return defer.fail(self._rate_limited(wait, login, peer_host))
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
        portal = self.portal
        d = self.failures.checked(peer_host, lambda: portal.login(creds, mind, IStompAvatar))
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

    def _rate_limited(self, wait: float, login: str | None, peer_host: str) -> LoginFailed:
        self.counters.rate_limited += 1
        self.log.info(
            "login refused: too many failed logins from {peer} (user {user})",
            peer=peer_host,
            user=login if login is not None else "-",
        )
        return LoginFailed(
            "too many failed logins",
            f"Too many failed logins from this address; try again in {wait:.0f} s.",
            delayed=True,
        )

    def _failed(self, failure: Any, login: str | None, peer_host: str, vhost: str) -> None:
        user = login if login is not None else "-"
        if failure.check(TooManyFailures):
            raise self._rate_limited(failure.value.wait, login, peer_host)
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
        for listener in list(self.change_listeners):
            listener()
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
