"""
Logins and permissions decided by an HTTP service: ``--auth http:...``.

The requests are those of RabbitMQ's ``rabbitmq_auth_backend_http``, so a
service written for it works unchanged: ``user_path`` (``username``,
``password``), ``vhost_path`` (``username``, ``vhost``, ``ip``),
``resource_path`` (``username``, ``vhost``, ``resource``, ``name``,
``permission``) and ``topic_path`` (the same plus ``routing_key``), as query
parameters of a GET or a form-encoded POST. The service answers HTTP 200
with ``allow`` (for ``user_path``, ``allow`` followed by the user's tags) or
``deny``.

STOMP destinations map onto RabbitMQ's resources as its STOMP plugin's do:

- ``/queue/NAME`` (and names without a prefix): resource ``queue`` named
  ``NAME``; SUBSCRIBE asks ``read``, SEND ``write``, and a queue that does
  not exist yet ``configure`` as well;
- ``/topic/NAME``: resource ``exchange`` named ``amq.topic`` (``read`` or
  ``write``), then, with a ``topic_path``, resource ``topic`` with
  ``routing_key`` ``NAME``.

Answers are cached for ``cache_ttl`` seconds (a password only as a hash),
each request has a ``timeout``, and a service that does not answer makes a
new login fail with ``authentication service unavailable`` while sessions
already logged in keep what they were allowed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from twisted.cred import checkers, credentials, error
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from stomptw.auth import AuthServiceUnavailable, IAuthorizer, Identity, parse_checker_arguments

__all__ = ["HttpBackend", "http_checker", "resource_of"]

#: The options of ``--auth http:...``.
OPTIONS = (
    "user_path",
    "vhost_path",
    "resource_path",
    "topic_path",
    "method",
    "timeout",
    "cache_ttl",
)

#: Our permission names as RabbitMQ's.
_PERMISSION = {"read": "read", "write": "write", "create": "configure"}

#: The most answers kept (then the cache starts again).
MAX_CACHED = 10_000


def resource_of(destination: str) -> tuple[str, str, str | None]:
    """RabbitMQ's ``(resource, name, routing key)`` for a STOMP destination."""
    if destination.startswith("/topic/"):
        return "exchange", "amq.topic", destination[len("/topic/") :]
    if destination.startswith("/queue/"):
        return "queue", destination[len("/queue/") :], None
    return "queue", destination, None


@implementer(checkers.ICredentialsChecker, IAuthorizer)
class HttpBackend:
    """
    Checks passwords and decides permissions by asking an HTTP service (see
    the module's documentation).

    :param request: ``(method, url, fields, timeout) -> Deferred`` firing
        with ``(status, body)``; treq by default.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)
    log = Logger()

    def __init__(
        self,
        user_path: str,
        vhost_path: str = "",
        resource_path: str = "",
        topic_path: str = "",
        method: str = "get",
        timeout: float = 5.0,
        cache_ttl: float = 15.0,
        request: Callable[..., defer.Deferred] | None = None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.user_path = user_path
        self.vhost_path = vhost_path
        self.resource_path = resource_path
        self.topic_path = topic_path
        self.method = method
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self._request = request or _treq_request
        self._now = now
        self._cache: dict[tuple, tuple[float, str]] = {}

    # -- asking ------------------------------------------------------------------------

    def _ask(self, url: str, fields: dict[str, str], secret: str | None = None) -> defer.Deferred:
        """
        The service's answer (the body, stripped) for ``fields`` and, for
        ``user_path``, the ``password`` (sent even when empty: RabbitMQ's
        protocol reads a missing one as a certificate login); cached.
        """
        digest = hashlib.sha256((secret or "").encode()).digest() if secret is not None else b""
        key = (url, tuple(sorted(fields.items())), digest)
        now = self._now()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return defer.succeed(hit[1])
        sent = dict(fields, password=secret) if secret is not None else fields
        d = self._request(self.method, url, sent, self.timeout)

        def answered(result: tuple[int, bytes]) -> str:
            status, body = result
            if status != 200:
                raise AuthServiceUnavailable(f"{url} answered HTTP {status}")
            text = body.decode("utf-8", "replace").strip()
            if self.cache_ttl > 0:
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
                self._cache[key] = (self._now() + self.cache_ttl, text)
            return text

        def failed(failure: Any) -> Any:
            if failure.check(AuthServiceUnavailable):
                return failure
            raise AuthServiceUnavailable(f"{url}: {failure.getErrorMessage()}")

        return d.addCallbacks(answered, failed)

    @staticmethod
    def _allowed(answer: str) -> bool:
        return answer.split(None, 1)[0].lower() == "allow" if answer else False

    # -- ICredentialsChecker -------------------------------------------------------------

    def requestAvatarId(self, creds: Any) -> defer.Deferred:  # noqa: N802
        """See :class:`twisted.cred.checkers.ICredentialsChecker`."""
        name = creds.username.decode("utf-8", "replace")
        password = creds.password.decode("utf-8", "replace")

        def decided(answer: str) -> Identity:
            words = answer.split()
            if not words or words[0].lower() != "allow":
                raise error.UnauthorizedLogin()
            return Identity(name, tags=words[1:], authorizer=self)

        return self._ask(self.user_path, {"username": name}, password).addCallback(decided)

    # -- IAuthorizer -------------------------------------------------------------------

    def vhost_allowed(self, identity: Identity, vhost: str, peer: str) -> Any:
        """See :class:`~stomptw.auth.IAuthorizer`."""
        if not self.vhost_path:
            return True
        fields = {"username": identity.name, "vhost": vhost, "ip": peer}
        return self._ask(self.vhost_path, fields).addCallback(self._allowed)

    def allows(self, identity: Identity, vhost: str, action: str, destination: str) -> Any:
        """See :class:`~stomptw.auth.IAuthorizer`."""
        if not self.resource_path:
            return True
        resource, name, routing_key = resource_of(destination)
        permission = _PERMISSION[action]
        fields = {
            "username": identity.name,
            "vhost": vhost,
            "resource": resource,
            "name": name,
            "permission": permission,
        }
        d = self._ask(self.resource_path, fields).addCallback(self._allowed)
        if routing_key is None or not self.topic_path:
            return d

        def topic(allowed: bool) -> Any:
            if not allowed:
                return False
            topic_fields = dict(fields, resource="topic", routing_key=routing_key)
            return self._ask(self.topic_path, topic_fields).addCallback(self._allowed)

        return d.addCallback(topic)


def _treq_request(method: str, url: str, fields: dict[str, str], timeout: float) -> defer.Deferred:
    """A GET with ``fields`` as the query, or a form POST, with treq: ``(status, body)``."""
    import treq

    if method == "post":
        d = treq.post(url, data=fields, timeout=timeout)
    else:
        separator = "&" if "?" in url else "?"
        d = treq.get(url + separator + urlencode(fields), timeout=timeout)

    def read(response: Any) -> defer.Deferred:
        return response.content().addCallback(lambda body: (response.code, body))

    return d.addCallback(read)


def http_checker(argstring: str) -> HttpBackend:
    """The checker of ``--auth http:ARGSTRING`` (see the module's documentation)."""
    options = parse_checker_arguments(argstring, OPTIONS)
    if "user_path" not in options:
        raise ValueError("user_path=URL is required")
    for name in ("user_path", "vhost_path", "resource_path", "topic_path"):
        url = options.get(name, "")
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"{name} must be an http(s) URL, got {url!r}")
    method = options.get("method", "get").lower()
    if method not in ("get", "post"):
        raise ValueError(f"method must be get or post, got {method!r}")
    return HttpBackend(
        options["user_path"],
        options.get("vhost_path", ""),
        options.get("resource_path", ""),
        options.get("topic_path", ""),
        method,
        float(options.get("timeout", 5)),
        float(options.get("cache_ttl", 15)),
    )
