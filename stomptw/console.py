"""
The operator's console: a live management UI in the browser, served by the
admin listener (``--admin``) at ``/``, beside the admin API.

The page and its scripts are plain files in ``stomptw/consoleui/`` (no
build step, nothing from another host). They read the admin API and these
endpoints:

``GET /api/overview``
    Facts about the broker (version, uptime, listeners, store), its
    counters and gauges, and the last minutes of one-second samples.
``GET /api/events``
    Server-sent events: one JSON sample a second (rates, connections by
    transport, memory, store commit time, dead-lettered and expired
    totals); at most :data:`MAX_EVENT_STREAMS` at once.
``GET /api/console/destinations``, ``/api/console/connections``, ``/api/console/durables``
    The console's tables, a page at a time (``?q=&kind=&sort=&order=&offset=&limit=``).
``GET /api/console/destination?name=NAME``
    One destination with its subscriptions.
``GET|POST|DELETE /api/console/session``
    Who is logged in (and the CSRF token), log in, log out.

Reads are open like the admin API's other reads; changes need the session
cookie and the CSRF header (or the admin API's own credentials). Every
response of the admin listener carries a strict Content-Security-Policy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File

from stomptw.adminhttp import Authorizer, HTTPError, JsonResource
from stomptw.consolesession import ConsoleAuthorizer, ConsoleSessions, LoginError
from stomptw.consolestats import Sampler, connection_row, destination_row, durable_rows, page

if TYPE_CHECKING:
    from stomptw.broker import Broker

__all__ = [
    "CONSOLE_DIR",
    "MAX_EVENT_STREAMS",
    "SECURITY_HEADERS",
    "ConsoleResource",
    "ConsoleSite",
    "console_site",
]

log = Logger()

#: The console's page, scripts and styles inside the package.
CONSOLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "consoleui")

#: The most event streams (``/api/events``) open at once.
MAX_EVENT_STREAMS = 16

#: Sent with every response of the admin listener.
SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; "
        b"form-action 'self'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"cross-origin-opener-policy": b"same-origin",
    b"cross-origin-resource-policy": b"same-origin",
}


class _SessionEndpointAuthorizer:
    """Lets anyone try to log in; everything else as the console's authorizer says."""

    def __init__(self, inner: Authorizer) -> None:
        self.inner = inner

    def authorize(self, request: Request) -> Any:
        if request.method == b"POST" and request.path.rstrip(b"/") == b"/api/console/session":
            return None
        return self.inner.authorize(request)


class _StreamFlow:
    """An event stream's producer: paused while its client's buffer is full."""

    paused = False

    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = True


class ConsoleResource(JsonResource):
    """
    The console's JSON endpoints and event stream (see the module's
    docstring).

    :param broker: the broker.
    :param sampler: its :class:`~stomptw.consolestats.Sampler`.
    :param sessions: the console's logins.
    :param authorizer: decides about requests that change something.
    :param reactor: the clock.
    """

    def __init__(
        self,
        broker: Broker,
        sampler: Sampler,
        sessions: ConsoleSessions,
        authorizer: Authorizer,
        reactor: Any,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.sampler = sampler
        self.sessions = sessions
        self.authorizer = _SessionEndpointAuthorizer(authorizer)
        self.reactor = reactor
        self.streams: set[Request] = set()
        self.routes: dict[str, dict[str, Callable[..., Any]]] = {
            "/api/overview": {"GET": self._overview},
            "/api/events": {"GET": self._events},
            "/api/console/session": {
                "GET": self._whoami,
                "POST": self._login,
                "DELETE": self._logout,
            },
            "/api/console/destinations": {"GET": self._destinations},
            "/api/console/destination": {"GET": self._destination},
            "/api/console/connections": {"GET": self._connections},
            "/api/console/durables": {"GET": self._durables},
        }

    def _route(self, request: Request) -> tuple[dict[str, Callable[..., Any]], list[str]]:
        path = request.path.decode("ascii", "replace").rstrip("/")
        methods = self.routes.get(path)
        if methods is None:
            raise HTTPError(404, "no such endpoint")
        return methods, []

    # -- endpoints ---------------------------------------------------------------------

    def _overview(self, request: Request) -> bytes:
        return self._json(request, 200, self.sampler.overview())

    def _events(self, request: Request) -> int | bytes:
        if len(self.streams) >= MAX_EVENT_STREAMS:
            raise HTTPError(503, f"too many event streams (at most {MAX_EVENT_STREAMS})")
        request.setResponseCode(200)
        request.setHeader("Content-Type", "text/event-stream; charset=utf-8")
        request.setHeader("Cache-Control", "no-store")
        request.setHeader("X-Accel-Buffering", "no")
        if request.method == b"HEAD":
            return b""
        request.write(b"retry: 2000\n\n")
        self.streams.add(request)
        # While the client does not read (the transport's buffer is full),
        # samples are skipped rather than buffered.
        flow = _StreamFlow()
        request.registerProducer(flow, True)

        def send(point: dict[str, Any]) -> None:
            if flow.paused or request.finished or getattr(request, "_disconnected", False):
                return
            request.write(b"data: " + json.dumps(point).encode("utf-8") + b"\n\n")

        def gone(_: object) -> None:
            self.streams.discard(request)
            if request.producer is not None and request.channel is not None:
                request.unregisterProducer()
            if send in self.sampler.listeners:
                self.sampler.listeners.remove(send)

        self.sampler.listeners.append(send)
        request.notifyFinish().addBoth(gone)
        return NOT_DONE_YET

    def _whoami(self, request: Request) -> bytes:
        session = self.sessions.find(request)
        answer: dict[str, Any] = {"mode": self.sessions.mode, "authenticated": False}
        if session is not None:
            answer.update(authenticated=True, user=session.user, csrf=session.csrf)
        return self._json(request, 200, answer)

    def _login(self, request: Request) -> Any:
        content_type = (request.getHeader("content-type") or "").split(";")[0].strip()
        if content_type != "application/json":
            raise HTTPError(415, "log in with a JSON body (Content-Type: application/json)")
        data = request.content.read(64 * 1024 + 1) if request.content is not None else b""
        try:
            payload = json.loads(data or b"null")
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or len(data) > 64 * 1024:
            raise HTTPError(400, 'expected {"user": "...", "password": "..."}')
        user, password = payload.get("user") or "", payload.get("password") or ""
        if not isinstance(user, str) or not isinstance(password, str):
            raise HTTPError(400, "user and password must be strings")
        try:
            user.encode("utf-8")
            password.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPError(400, "user and password must be valid Unicode text") from None

        def refused(failure: Any) -> Any:
            failure.trap(LoginError)
            error = failure.value
            raise HTTPError(error.code, error.message, error.headers)

        d = self.sessions.login(request, user, password)
        d.addCallbacks(
            lambda s: (200, {"authenticated": True, "user": s.user, "csrf": s.csrf}), refused
        )
        return d

    def _logout(self, request: Request) -> bytes:
        session = self.sessions.close(request)
        if session is not None:
            log.info("console logout: {user}", user=session.user)
        return self._json(request, 200, {"authenticated": False})

    def _vhost(self, request: Request) -> Any:
        names = request.args.get(b"vhost") or [b"/"]
        name = names[0].decode("utf-8", "replace")
        vhost = getattr(self.broker, "vhosts", {"/": self.broker}).get(name)
        if vhost is None:
            raise HTTPError(404, f"no vhost {name!r}")
        return name, vhost

    def _destinations(self, request: Request) -> bytes:
        name, vhost = self._vhost(request)
        rates = self.sampler.rates
        rows = [destination_row(d, rates.get((name, d.name))) for d in vhost.destinations.values()]
        return self._json(request, 200, page(rows, request.args, "name", ("name",)))

    def _destination(self, request: Request) -> bytes:
        vhost_name, vhost = self._vhost(request)
        raw = request.args.get(b"name") or [b""]
        name = raw[0].decode("utf-8", "replace")  # already decoded by twisted.web
        dest = vhost.destinations.get(name)
        if dest is None:
            raise HTTPError(404, f"no destination {name!r}")
        row = destination_row(dest, self.sampler.rates.get((vhost_name, name)))
        subscriptions = []
        for sub in dest.subscriptions:
            session = sub.consumer
            subscriptions.append(
                {
                    "session_id": getattr(session, "session_id", "") or None,
                    "user": getattr(getattr(session, "user", None), "name", None),
                    "peer": getattr(session, "peer", None),
                    "id": sub.id,
                    "ack": sub.ack_mode,
                    "prefetch": sub.prefetch,
                    "unacked": len(sub.unacked),
                    "backlog": len(sub.backlog),
                    "durable": sub.durable[1] if sub.durable is not None else None,
                }
            )
        row["subscriptions"] = subscriptions
        row["durable_subscriptions"] = [
            r for r in durable_rows(vhost) if r["destination"] == name and not r["active"]
        ]
        return self._json(request, 200, row)

    def _connections(self, request: Request) -> bytes:
        now = self.reactor.seconds()
        wall = self.sampler.started_wall + (now - self.sampler.started)
        rows = [connection_row(s, now, wall) for s in self.broker.sessions]
        return self._json(
            request,
            200,
            page(rows, request.args, "since", ("user", "peer", "session_id", "client_id")),
        )

    def _durables(self, request: Request) -> bytes:
        _, vhost = self._vhost(request)
        rows = durable_rows(vhost)
        return self._json(
            request, 200, page(rows, request.args, "name", ("name", "client_id", "destination"))
        )


class _StaticFiles(File):
    """The console's files, without directory listings."""

    contentTypes = {
        **File.contentTypes,
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".html": "text/html; charset=utf-8",
        ".svg": "image/svg+xml",
    }

    def directoryListing(self) -> Resource:  # noqa: N802
        return notFound(brief="No such page.")

    def render_GET(self, request: Request) -> Any:  # noqa: N802
        request.setHeader(b"cache-control", b"no-cache")
        return super().render_GET(request)

    def createSimilarFile(self, path: str) -> File:  # noqa: N802
        similar = super().createSimilarFile(path)
        similar.contentTypes = self.contentTypes
        return similar


class _Root(Resource):
    """
    The admin listener's root: the console's page at ``/``, its files under
    ``/console/``, its endpoints, and the admin API for every other path;
    :data:`SECURITY_HEADERS` on every response.
    """

    def __init__(self, admin: Resource, console: ConsoleResource) -> None:
        super().__init__()
        self.admin = admin
        self.console = console
        self.files = _StaticFiles(CONSOLE_DIR, defaultType="application/octet-stream")
        self.files.indexNames = []
        self.index = self.files.createSimilarFile(os.path.join(CONSOLE_DIR, "index.html"))

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:  # noqa: N802
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if path == b"" and len(request.prepath) == 1 and not request.postpath:
            return self.index
        if path == b"console":
            return self.files
        route = request.path.decode("ascii", "replace").rstrip("/")
        if route in self.console.routes:
            return self.console
        return self.admin


class ConsoleSite(Site):
    """The admin listener's site: takes the console's samples while it listens."""

    sampler: Sampler
    console: ConsoleResource

    def startFactory(self) -> None:  # noqa: N802
        """The first listening port is up: start sampling."""
        super().startFactory()
        self.sampler.start()

    def stopFactory(self) -> None:  # noqa: N802
        """The last listening port is down: stop sampling."""
        self.sampler.stop()
        for request in list(self.console.streams):
            if not request.finished:
                if request.producer is not None and request.channel is not None:
                    request.unregisterProducer()
                request.finish()
        super().stopFactory()


def console_site(admin: Any, token: str | None, reactor: Any) -> ConsoleSite:
    """
    The admin listener's site with the console mounted beside ``admin``
    (an :class:`~stomptw.admin.AdminResource`, whose authorizer is wrapped
    in a :class:`~stomptw.consolesession.ConsoleAuthorizer`).

    :param token: the admin token (``--admin-token-file``), the console's
        password on a broker without ``--auth``.
    """
    broker = admin.broker
    sessions = ConsoleSessions(getattr(broker, "auth", None), token, reactor)
    admin.authorizer = ConsoleAuthorizer(sessions, admin.authorizer)
    sampler = Sampler(broker, reactor)
    console = ConsoleResource(broker, sampler, sessions, admin.authorizer, reactor)
    site = ConsoleSite(_Root(admin, console), reactor=reactor)
    site.sampler = sampler
    site.console = console
    return site
