"""
JWT bearer tokens: ``--auth jwt:...``.

A client sends its token as CONNECT's ``passcode`` (what RabbitMQ's OAuth 2
plugin and ``@stomp/stompjs`` users do: a browser cannot set headers on the
WebSocket handshake); ``login`` is not used. The token's signature, ``exp``,
``nbf``, ``iss`` and ``aud`` are checked with PyJWT. The user is the
``sub`` claim (or another, ``username-claim=``); the session ends with
ERROR ``token expired`` at ``exp``.

Keys are static (``key=FILE``: a PEM public key, a JWKS document, or an
HMAC secret) or fetched from a JWKS URL (``jwks=URL``) with treq, cached, and
fetched again when a token names a key id the cache does not have, or when
the cache is older than ``refresh=`` seconds.

Scopes (``scope``, space-separated, or ``scp``, a list) grant permissions,
with a prefix (``scope-prefix=``, default ``stomptw.``):

- ``stomptw.read:/topic/chat.*``: read, in every vhost (``write``,
  ``create`` alike; the pattern syntax is the permissions file's);
- ``stomptw.write@team:/queue/**``: write in vhost ``team`` only;
- ``stomptw.tag:administrator``: a tag.

A token with no permission scope at all gets its permissions from the
permissions file (or every permission, without one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import jwt
from twisted.cred import checkers, credentials, error
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from stomptw.auth import AuthServiceUnavailable, Identity, TokenExpired, parse_checker_arguments
from stomptw.permissions import ACTIONS, Entry, Grants

__all__ = [
    "JwksKeys",
    "JwtChecker",
    "StaticKeys",
    "grants_from_scopes",
    "jwt_checker",
    "parse_arguments",
]

#: The options of ``--auth jwt:...``.
OPTIONS = (
    "key",
    "jwks",
    "algorithms",
    "issuer",
    "audience",
    "username-claim",
    "scope-prefix",
    "leeway",
    "refresh",
    "timeout",
)

_ASYMMETRIC = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def parse_arguments(argstring: str) -> dict[str, str]:
    """The options of ``--auth jwt:ARGSTRING`` by name."""
    return parse_checker_arguments(argstring, OPTIONS)


def grants_from_scopes(scopes: Iterable[str], prefix: str) -> tuple[Grants | None, frozenset[str]]:
    """The permissions and tags the scopes with ``prefix`` grant (None: no permission scope)."""
    by_vhost: dict[str, dict[str, list[str]]] = {}
    tags = set()
    for scope in scopes:
        if not scope.startswith(prefix):
            continue
        what, sep, pattern = scope[len(prefix) :].partition(":")
        if not sep or not pattern:
            continue
        if what == "tag":
            tags.add(pattern)
            continue
        action, _, vhost = what.partition("@")
        if action in ACTIONS:
            by_vhost.setdefault(vhost or "*", {}).setdefault(action, []).append(pattern)
    if not by_vhost:
        return None, frozenset(tags)
    entries = {
        vhost: Entry(**{a: tuple(p) for a, p in patterns.items()})
        for vhost, patterns in by_vhost.items()
    }
    return Grants(entries), frozenset(tags)


class StaticKeys:
    """
    Verification keys read once from a file: a PEM public key, a JWKS
    document (JSON), or else an HMAC secret (the file's bytes, stripped).
    """

    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            data = f.read()
        self.by_kid: dict[str, Any] = {}
        self.default: Any = None
        text = data.strip()
        if text.startswith(b"{"):
            for key in jwt.PyJWKSet.from_json(text.decode("utf-8")).keys:
                self.by_kid[key.key_id or ""] = key.key
            if len(self.by_kid) == 1:
                self.default = next(iter(self.by_kid.values()))
        elif text.startswith(b"-----BEGIN"):
            self.default = text
        elif text:
            self.default = text
            self.secret = True
        else:
            raise ValueError(f"{path}: empty key file")

    #: Whether the key is an HMAC secret (only HS* algorithms then).
    secret = False

    def key_for(self, kid: str | None) -> defer.Deferred:
        """The key for a token's ``kid``."""
        key = self.by_kid.get(kid or "", self.default)
        if key is None:
            return defer.fail(error.UnauthorizedLogin(f"no key with id {kid!r}"))
        return defer.succeed(key)


class JwksKeys:
    """
    Keys fetched from a JWKS URL with treq: cached, fetched again (at most
    every ``min_interval`` seconds) when a token names a key id not in the
    cache, and when the cache is older than ``refresh`` seconds. While the
    URL does not answer, the cached keys keep working; with none cached a
    login fails as :class:`~stomptw.auth.AuthServiceUnavailable`.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        refresh: float = 900.0,
        timeout: float = 5.0,
        min_interval: float = 10.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.refresh = refresh
        self.timeout = timeout
        self.min_interval = min_interval
        self._now = now
        self.by_kid: dict[str, Any] = {}
        self.fetched_at: float | None = None
        self._tried_at: float | None = None
        self._unknown_tried_at: float | None = None
        #: Whether the last fetch failed (an unknown key id is then undecided).
        self.failing = False
        self._waiters: list[defer.Deferred] = []

    def key_for(self, kid: str | None) -> defer.Deferred:
        """The key for a token's ``kid``, fetching the set if it must."""
        now = self._now()
        if self.fetched_at is None or now - self.fetched_at >= self.refresh:
            # Stale (or never fetched); while the URL fails, retry at most
            # every min_interval seconds.
            last = self._tried_at
        elif (kid or "") not in self.by_kid and not (not kid and len(self.by_kid) == 1):
            # A key id not seen yet: perhaps the keys were rotated.
            last = self._unknown_tried_at
            if last is None or now - last >= self.min_interval:
                self._unknown_tried_at = now
        else:
            return defer.maybeDeferred(self._lookup, kid)
        if last is None or now - last >= self.min_interval:
            return self._fetch().addBoth(lambda _: self._lookup(kid))
        return defer.maybeDeferred(self._lookup, kid)

    def _lookup(self, kid: str | None) -> Any:
        if kid:
            key = self.by_kid.get(kid)
        else:
            key = next(iter(self.by_kid.values())) if len(self.by_kid) == 1 else None
        if key is not None:
            return key
        if not self.by_kid or self.failing:
            raise AuthServiceUnavailable(f"no keys from {self.url}")
        raise error.UnauthorizedLogin(f"no key with id {kid!r}")

    def _fetch(self) -> defer.Deferred:
        """Fetch the set (one request for every login waiting); fires when done."""
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            import treq

            self._tried_at = self._now()
            d = treq.get(self.url, timeout=self.timeout)
            d.addCallback(self._read).addCallbacks(self._keep, self._failed)
            d.addBoth(self._done)
        return waiter

    def _done(self, result: object) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _read(self, response: Any) -> defer.Deferred:
        if response.code != 200:
            raise ValueError(f"HTTP {response.code}")
        return response.content()

    def _keep(self, body: bytes) -> None:
        keys = {}
        for key in jwt.PyJWKSet.from_json(body.decode("utf-8")).keys:
            keys[key.key_id or ""] = key.key
        self.by_kid = keys
        self.fetched_at = self._now()
        self.failing = False
        self.log.info("{count} key(s) fetched from {url}", count=len(keys), url=self.url)

    def _failed(self, failure: Any) -> None:
        self.failing = True
        self.log.warn(
            "keys not fetched from {url} (keeping {count} cached): {reason}",
            url=self.url,
            count=len(self.by_kid),
            reason=failure.getErrorMessage(),
        )


@implementer(checkers.ICredentialsChecker)
class JwtChecker:
    """
    Checks a JWT given as the passcode; the avatar id is an
    :class:`~stomptw.auth.Identity` with the token's expiry, tags and
    permissions.

    :param keys: :class:`StaticKeys` or :class:`JwksKeys`.
    :param algorithms: the signature algorithms accepted.
    :param issuer: the required ``iss``, or empty for any.
    :param audience: the required ``aud``, or empty for none.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(
        self,
        keys: Any,
        algorithms: Iterable[str] = ("RS256",),
        issuer: str = "",
        audience: str = "",
        username_claim: str = "sub",
        scope_prefix: str = "stomptw.",
        leeway: float = 0.0,
    ) -> None:
        self.keys = keys
        self.algorithms = list(algorithms)
        self.issuer = issuer
        self.audience = audience
        self.username_claim = username_claim
        self.scope_prefix = scope_prefix
        self.leeway = leeway

    def requestAvatarId(self, creds: Any) -> defer.Deferred:  # noqa: N802
        """See :class:`twisted.cred.checkers.ICredentialsChecker`."""
        try:
            token = creds.password.decode("ascii")
            header = jwt.get_unverified_header(token)
        except (UnicodeDecodeError, jwt.PyJWTError):
            return defer.fail(error.UnauthorizedLogin("not a JWT"))
        if header.get("alg") not in self.algorithms:
            return defer.fail(error.UnauthorizedLogin(f"algorithm {header.get('alg')!r} refused"))
        return self.keys.key_for(header.get("kid")).addCallback(self._verify, token)

    def _verify(self, key: Any, token: str) -> Identity:
        options = {"require": ["exp"], "verify_aud": bool(self.audience)}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience or None,
                issuer=self.issuer or None,
                leeway=self.leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired() from None
        except jwt.PyJWTError as e:  # InvalidKeyError too (a key of the wrong kind)
            raise error.UnauthorizedLogin(str(e)) from None
        name = claims.get(self.username_claim)
        if not isinstance(name, str) or not name:
            raise error.UnauthorizedLogin(f"no {self.username_claim} claim")
        scopes = claims.get("scope", "")
        scopes = scopes.split() if isinstance(scopes, str) else []
        scp = claims.get("scp", [])
        scopes += [s for s in scp if isinstance(s, str)] if isinstance(scp, list) else []
        grants, tags = grants_from_scopes(scopes, self.scope_prefix)
        return Identity(name, tags=tags, expires=float(claims["exp"]), grants=grants)


def jwt_checker(argstring: str) -> JwtChecker:
    """The checker of ``--auth jwt:ARGSTRING`` (see the module's documentation)."""
    options = parse_arguments(argstring)
    if ("key" in options) == ("jwks" in options):
        raise ValueError("give exactly one of key=FILE and jwks=URL")
    algorithms = [a for a in options.get("algorithms", "RS256").split(",") if a]
    if "key" in options:
        keys: Any = StaticKeys(options["key"])
        if keys.secret and any(a in _ASYMMETRIC for a in algorithms):
            raise ValueError(
                f"{options['key']} holds no public key (a PEM or JWKS file); for an "
                "HMAC secret say algorithms=HS256"
            )
    else:
        if not options["jwks"].startswith(("https://", "http://")):
            raise ValueError(f"jwks must be an http(s) URL, got {options['jwks']!r}")
        keys = JwksKeys(
            options["jwks"],
            refresh=float(options.get("refresh", 900)),
            timeout=float(options.get("timeout", 5)),
        )
    return JwtChecker(
        keys,
        algorithms,
        issuer=options.get("issuer", ""),
        audience=options.get("audience", ""),
        username_claim=options.get("username-claim", "sub"),
        scope_prefix=options.get("scope-prefix", "stomptw."),
        leeway=float(options.get("leeway", 0)),
    )
