"""
Logins to the operator's console (:mod:`stomptw.console`): a login form
exchanges credentials for a session cookie, and every request that changes
something must also carry the session's CSRF token in a header.

- Credentials are checked by the broker's own ``--auth``
  (:class:`~stomptw.authenticator.Authenticator`, which verifies passwords
  off the reactor thread); only users with the ``administrator`` tag get a
  session. On a broker without ``--auth``, the admin token
  (``--admin-token-file``) is the password.
- Failed logins are counted and limited per address by the authenticator's
  :class:`~stomptw.authenticator.FailedLogins`, as STOMP logins are, and
  answered after its failure delay.
- The cookie (``stomptw_console``) holds a random 32-byte id only: HttpOnly,
  SameSite=Strict, Path=/ (and Secure over TLS). What it stands for (the
  user, the CSRF token, when it expires) stays in the broker's memory.
- :class:`ConsoleAuthorizer` lets a request with that cookie change the
  broker's state only with ``X-CSRF-Token`` matching the session's token.

Neither passwords nor tokens are logged.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.server import Request

from stomptw.adminhttp import Authorizer, Denied

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "ConsoleAuthorizer",
    "ConsoleSession",
    "ConsoleSessions",
    "LoginError",
]

log = Logger()

#: The session cookie's name.
COOKIE = b"stomptw_console"
#: The header that carries the CSRF token.
CSRF_HEADER = "X-CSRF-Token"
#: A session ends after this long without a request (seconds)...
IDLE_TIMEOUT = 30 * 60.0
#: ... and this long after the login in any case.
MAX_LIFETIME = 8 * 3600.0
#: The most console sessions kept at once (the oldest go first).
MAX_SESSIONS = 1000


#: The user name of a session opened with the admin token.
TOKEN_USER = "admin-token"


@dataclass
class ConsoleSession:
    """One logged-in operator: who, the CSRF token, and the session's clock."""

    id: str
    user: str
    csrf: str
    created: float
    last_used: float


class LoginError(Exception):
    """A console login refused: the HTTP status, what to say, extra headers."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


class ConsoleSessions:
    """
    The console's sessions, in memory, and the login that makes them.

    :param auth: the broker's :class:`~stomptw.authenticator.Authenticator`
        (its ``portal`` is None on a broker without ``--auth``).
    :param token: the admin token (``--admin-token-file``), or None.
    :param clock: for expiry and the failure delay.
    """

    def __init__(self, auth: Any, token: str | None, clock: Any) -> None:
        self.auth = auth
        self._token = token.encode("utf-8") if token else None
        self.clock = clock
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()
        listeners = getattr(auth, "change_listeners", None)
        if listeners is not None:
            listeners.append(self.end_user_sessions)

    def end_user_sessions(self) -> int:
        """
        The users or permissions were read again: end every session of a
        broker user (who is an administrator may have changed; they log in
        again). Sessions of the admin token stay. Return how many ended.
        """
        ended = [key for key, s in self._sessions.items() if s.user != TOKEN_USER]
        for key in ended:
            del self._sessions[key]
        if ended:
            log.info(
                "console: {count} session(s) ended: the users or permissions were reloaded",
                count=len(ended),
            )
        return len(ended)

    @property
    def mode(self) -> str:
        """
        How operators log in: ``users`` (broker users with the
        ``administrator`` tag, or the admin token), ``token`` (the admin
        token only) or ``disabled`` (neither is configured).
        """
        if self.auth is not None and self.auth.required:
            return "users"
        return "token" if self._token else "disabled"

    # -- sessions ---------------------------------------------------------------------

    def find(self, request: Request) -> ConsoleSession | None:
        """The live session ``request``'s cookie names, or None (expired ones are dropped)."""
        raw = request.getCookie(COOKIE)
        if not raw:
            return None
        key = raw.decode("ascii", "replace")
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock.seconds()
        if now - session.last_used > IDLE_TIMEOUT or now - session.created > MAX_LIFETIME:
            del self._sessions[key]
            return None
        session.last_used = now
        self._sessions.move_to_end(key)
        return session

    def _open(self, user: str) -> ConsoleSession:
        now = self.clock.seconds()
        session = ConsoleSession(
            secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now
        )
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def close(self, request: Request) -> ConsoleSession | None:
        """Log out: forget ``request``'s session and expire its cookie."""
        session = self.find(request)
        if session is not None:
            del self._sessions[session.id]
        set_cookie(request, "", expire=True)
        return session

    # -- logging in ---------------------------------------------------------------------

    def login(self, request: Request, user: str, password: str) -> defer.Deferred:
        """
        Check ``user`` and ``password`` (an empty ``user``: ``password`` is
        the admin token); fire with the new :class:`ConsoleSession` (its
        cookie set on ``request``) or fail with :class:`LoginError`.
        """
        peer = getattr(request.getClientAddress(), "host", "") or ""
        failures = self.auth.failures if self.auth is not None else None
        if self.mode == "disabled":
            return defer.fail(
                LoginError(
                    403,
                    "the console needs --auth with an administrator, or --admin-token-file",
                )
            )
        if failures is not None:
            wait = failures.blocked_for(peer)
            if wait:
                self.auth.counters.rate_limited += 1
                log.info("console login refused: too many failed logins from {peer}", peer=peer)
                return defer.fail(
                    LoginError(
                        429,
                        f"too many failed logins from this address; try again in {wait:.0f} s",
                        {"Retry-After": str(int(wait) + 1)},
                    )
                )
        if not user:
            if self._token and password and hmac.compare_digest(password.encode(), self._token):
                return defer.succeed(self._logged_in(request, TOKEN_USER, peer))
            if failures is not None:
                failures.failed(peer)
            return self._refused(peer, "-", 401, "wrong token")
        if self.mode != "users":
            return self._refused(peer, user, 401, "this broker has no users: log in with the token")
        d = self.auth.login({"login": user, "passcode": password}, peer, "console")

        def succeeded(avatar: Any) -> Any:
            avatar.logout()
            if "administrator" not in avatar.tags:
                log.warn(
                    "console login refused: user {user} from {peer} is not an administrator",
                    user=user,
                    peer=peer,
                )
                raise LoginError(403, f"user {user!r} does not have the administrator tag")
            return self._logged_in(request, user, peer)

        def failed(failure: Any) -> Any:
            if failure.check(LoginError):
                return failure
            message = getattr(failure.value, "message", "authentication failed")
            # The authenticator counted it (and logged it) already.
            return self._delayed(LoginError(401, message))

        return d.addCallbacks(succeeded, failed)

    def _logged_in(self, request: Request, user: str, peer: str) -> ConsoleSession:
        session = self._open(user)
        set_cookie(request, session.id)
        log.info("console login: {user} from {peer}", user=user, peer=peer)
        return session

    def _refused(self, peer: str, user: str, code: int, message: str) -> defer.Deferred:
        log.info(
            "console login failed: user={user} peer={peer} reason={reason}",
            user=user,
            peer=peer,
            reason=message,
        )
        if self.auth is not None:
            self.auth.counters.failed += 1
        return self._delayed(LoginError(code, message))

    def _delayed(self, error: LoginError) -> defer.Deferred:
        """Fail with ``error`` after the broker's failure delay (as STOMP logins do)."""
        delay = getattr(self.auth, "failure_delay", 0.0) if self.auth is not None else 0.0
        d = task.deferLater(self.clock, delay, lambda: None)
        return d.addCallback(lambda _: defer.fail(error))


def set_cookie(request: Request, value: str, expire: bool = False) -> None:
    """Set (or, with ``expire``, clear) the console's session cookie on ``request``."""
    parts = [f"{COOKIE.decode()}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if request.isSecure():
        parts.append("Secure")
    if expire:
        parts.append("Max-Age=0")
    request.responseHeaders.addRawHeader(b"set-cookie", "; ".join(parts).encode("ascii"))


class ConsoleAuthorizer:
    """
    The admin API's :class:`~stomptw.adminhttp.Authorizer` with console
    sessions: a request with the console's cookie (and no ``Authorization``
    header) is allowed only with the session's CSRF token in
    ``X-CSRF-Token``; one without the cookie goes to ``fallback`` (the token
    file's bearer token, an administrator's credentials).
    """

    def __init__(self, sessions: ConsoleSessions, fallback: Authorizer) -> None:
        self.sessions = sessions
        self.fallback = fallback

    def authorize(self, request: Request) -> defer.Deferred | None:
        """See :class:`~stomptw.adminhttp.Authorizer`."""
        if _cross_site(request):
            raise Denied(403, "cross-site requests to the admin listener are refused")
        if request.getHeader("authorization") or not request.getCookie(COOKIE):
            return self.fallback.authorize(request)
        session = self.sessions.find(request)
        if session is None:
            raise Denied(401, "the console session has expired: log in again")
        sent = (request.getHeader(CSRF_HEADER) or "").encode("utf-8")
        if not sent or not hmac.compare_digest(sent, session.csrf.encode("utf-8")):
            raise Denied(403, f"the console's requests need the {CSRF_HEADER} header")
        log.info(
            "console: {user} {method} {path}",
            user=session.user,
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("latin-1"),
        )
        return None


def _cross_site(request: Request) -> bool:
    """
    Whether a browser says ``request`` comes from another site's page
    (``Sec-Fetch-Site``), or its ``Origin`` is not the listener's own: such a
    request may carry credentials the browser attached by itself, so it
    never changes anything or reads a message. Clients that are not
    browsers (curl, stomptw-ctl) send neither header.
    """
    fetch_site = (request.getHeader("sec-fetch-site") or "").lower()
    if fetch_site:
        # What every current browser says; it holds behind a proxy too.
        return fetch_site in ("cross-site", "same-site")
    origin = request.getHeader("origin")
    if origin is None:
        return False
    # An older browser: the Origin's host must be the one asked for. The
    # scheme is left out: behind a proxy that ends TLS the page is https
    # and this request is not.
    host = (request.getHeader("host") or "").lower()
    return origin.lower().partition("://")[2] != host
