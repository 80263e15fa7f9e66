"""
The admin API's HTTP side, apart from its endpoints: who may change the
broker's state (the token file's bearer token, or a broker user with the
``administrator`` tag) and a JSON resource that routes, authorizes and
answers, now or once a Deferred fires. :mod:`stomptw.admin` has the
endpoints.
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from stomptw.model import format_peer

__all__ = [
    "AdministratorAuthorizer",
    "Authorizer",
    "BearerTokenAuthorizer",
    "Denied",
    "HTTPError",
    "JsonResource",
    "load_token",
]

log = Logger()


def load_token(path: str) -> str:
    """
    Read the admin bearer token from ``path`` (surrounding whitespace is
    stripped). Raises :class:`ValueError` if the file cannot be read or
    holds no token.
    """
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"cannot read the admin token file {path}: {reason}") from None
    if not token:
        raise ValueError(f"the admin token file {path} is empty")
    return token


class Denied(Exception):
    """
    A request may not use a mutating endpoint.

    :ivar code: the HTTP status (401 or 403).
    :ivar message: what to tell the client.
    :ivar headers: extra response headers (``WWW-Authenticate``).
    """

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


class Authorizer(Protocol):
    """What decides whether a request may change the broker's state."""

    def authorize(self, request: Request) -> defer.Deferred | None:
        """
        Return (or fire a Deferred) if ``request`` may proceed; raise (or
        fail with) :class:`Denied` if not.
        """


class BearerTokenAuthorizer:
    """
    Lets through requests that carry ``Authorization: Bearer <token>`` with
    the one configured token (compared in constant time).

    This is deliberately the only place that knows how admin requests are
    authenticated: :func:`admin_site` takes any :class:`Authorizer`, so a
    credentials store (per-operator tokens, roles) can replace it later
    without touching the endpoints.

    :param token: the token; None or empty: every mutating request is
        refused (403) because no token was configured.
    """

    def __init__(self, token: str | None) -> None:
        self._token = token.encode("utf-8") if token else None

    def authorize(self, request: Request) -> None:
        """Raise :class:`Denied` unless ``request`` carries the token."""
        if self._token is None:
            raise Denied(403, "mutating endpoints are disabled: start with --admin-token-file")
        header = request.getHeader("authorization") or ""
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Denied(
                401,
                "this endpoint needs an Authorization: Bearer <token> header",
                {"WWW-Authenticate": 'Bearer realm="stomptw"'},
            )
        if not hmac.compare_digest(credentials.strip().encode("utf-8"), self._token):
            raise Denied(403, "wrong token")


class AdministratorAuthorizer(BearerTokenAuthorizer):
    """
    The token file's bearer token, or the credentials of a broker user with
    the ``administrator`` tag: HTTP Basic (user name and password) or
    ``Bearer <JWT>``, checked by the broker's own ``--auth`` checkers
    (:class:`~stomptw.authenticator.Authenticator`), failed attempts counted and
    limited as for STOMP logins.
    """

    def __init__(self, token: str | None, auth: Any) -> None:
        super().__init__(token)
        self.auth = auth

    def authorize(self, request: Request) -> defer.Deferred | None:
        """See :class:`Authorizer`."""
        header = request.getHeader("authorization") or ""
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if (
            scheme == "bearer"
            and self._token
            and hmac.compare_digest(value.encode("utf-8"), self._token)
        ):
            return None
        if scheme == "basic":
            try:
                login, _, passcode = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise Denied(401, "malformed Basic credentials", _CHALLENGE) from None
            headers = {"login": login, "passcode": passcode}
        elif scheme == "bearer" and value:
            headers = {"passcode": value}
        else:
            raise Denied(
                401,
                "this endpoint needs an administrator's credentials (HTTP Basic, or "
                "Authorization: Bearer with a token)",
                _CHALLENGE,
            )
        peer = getattr(request.getClientAddress(), "host", "")
        d = self.auth.login(headers, peer, "admin")

        def logged_in(user: Any) -> None:
            user.logout()
            if "administrator" not in user.tags:
                raise Denied(403, f"user {user.name!r} does not have the administrator tag")

        def refused(failure: Any) -> Any:
            if failure.check(Denied):
                return failure
            message = getattr(failure.value, "message", "authentication failed")
            raise Denied(401, message, _CHALLENGE)

        return d.addCallbacks(logged_in, refused)


#: Bearer only: a Basic challenge would make browsers prompt, then send the
#: cached credentials with any request to the listener, a cross-site form
#: included. Clients that use Basic (curl -u, stomptw-ctl) send it unasked.
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="stomptw"'}


# -- the HTTP resource --------------------------------------------------------------


class HTTPError(Exception):
    """An answer other than success: its status, message and extra headers."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


class JsonResource(Resource):
    """
    A leaf resource that routes each request (:meth:`_route`, a subclass's),
    lets ``GET`` through and asks :attr:`authorizer` about every other
    method, and answers in JSON, at once or once a handler's Deferred fires.
    A handler returns bytes (answered already) or ``(status, value)``, or
    raises :class:`HTTPError`.
    """

    isLeaf = True
    #: Decides about requests that change something (see :class:`Authorizer`).
    authorizer: Authorizer

    def _route(self, request: Request) -> tuple[dict[str, Callable[..., Any]], list[str]]:
        """The handlers by method for ``request``'s path, and the path's arguments."""
        raise NotImplementedError

    def render(self, request: Request) -> bytes | int:
        """Route, authorize and answer one request."""
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"
        try:
            methods, args = self._route(request)
            handler = methods.get(method)
            if handler is None:
                raise HTTPError(
                    405, f"{method} is not allowed here", {"Allow": ", ".join(sorted(methods))}
                )
            if method not in ("GET", "HEAD"):
                try:
                    allowed = self.authorizer.authorize(request)
                except Denied as e:
                    raise self._refused(request, method, e) from None
                if isinstance(allowed, defer.Deferred):

                    def then(_: object) -> Any:
                        return handler(request, *args)

                    def denied(failure: Any) -> Any:
                        if failure.check(Denied):
                            raise self._refused(request, method, failure.value)
                        return failure

                    result = allowed.addCallbacks(then, denied)
                    return self._later(request, result)
            result = handler(request, *args)
        except HTTPError as e:
            return self._error(request, e)
        return self._later(request, result)

    def _refused(self, request: Request, method: str, e: Denied) -> HTTPError:
        # Never the credentials themselves: only who tried what.
        peer = request.getClientAddress()
        log.warn(
            "admin API: refused {method} {path} from {peer}: {reason}",
            method=method,
            path=request.path.decode("latin-1"),
            peer=format_peer(peer),
            status=e.code,
            reason=e.message,
        )
        return HTTPError(e.code, e.message, e.headers)

    def _later(self, request: Request, result: Any) -> bytes | int:
        """Answer with ``result``, now (bytes) or once its Deferred fires."""
        if isinstance(result, defer.Deferred):

            def done(value: tuple[int, object] | bytes) -> None:
                # A handler run after an asynchronous authorization may have
                # answered in bytes already.
                if not request.finished and not getattr(request, "_disconnected", False):
                    body = value if isinstance(value, bytes) else self._json(request, *value)
                    request.write(body)
                    request.finish()

            def failed(failure: Any) -> None:
                error = failure.value
                if not isinstance(error, HTTPError):
                    log.failure("admin request failed", failure)
                    error = HTTPError(500, "internal error")
                if not request.finished and not getattr(request, "_disconnected", False):
                    request.write(self._error(request, error))
                    request.finish()

            result.addCallbacks(done, failed)
            return NOT_DONE_YET
        return result

    def _json(self, request: Request, code: int, value: object) -> bytes:
        request.setResponseCode(code)
        request.setHeader("Content-Type", "application/json")
        request.setHeader("Cache-Control", "no-store")
        return json.dumps(value, indent=1).encode("utf-8") + b"\n"

    def _error(self, request: Request, error: HTTPError) -> bytes:
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return self._json(request, error.code, {"error": error.message})

    def _text(self, request: Request, code: int, text: str, content_type: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader("Content-Type", content_type)
        request.setHeader("Cache-Control", "no-store")
        return text.encode("utf-8")
