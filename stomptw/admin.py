"""
The admin HTTP API and Prometheus metrics.

Served by :mod:`twisted.web` on the ``admin_endpoints`` of the
configuration (``--admin``), off by default. Everything runs on the reactor
thread, so what it reports is a consistent snapshot of the broker.

Endpoints:

``GET /healthz``
    ``200 ok`` while the reactor runs.
``GET /readyz``
    200 once every listener is bound and the message store is loaded, else 503.
``GET /metrics``
    Prometheus text format 0.0.4 (see :func:`render_metrics`).
``GET /api/connections``, ``GET /api/connections/<session id>``
    Client connections.
``DELETE /api/connections/<session id>``
    Close a connection (the client gets an ERROR "closed by the operator").
``GET /api/destinations``, ``GET /api/destinations/<name>``
    Destinations with their message counts and consumers.
``POST /api/destinations/<name>/messages``
    Publish ``{"body": "...", "headers": {...}}``; 201 with the message id.
``DELETE /api/destinations/<name>/messages``
    Purge a queue's waiting messages; returns how many.
``GET /api/subscriptions``
    Every subscription, and durable subscriptions without a subscriber.

Destination names go in the path URL-encoded (``%2Fqueue%2Forders``).
``POST`` and ``DELETE`` need ``Authorization: Bearer <token>`` with the token
from ``admin_token_file``; without one they are refused.
"""

from __future__ import annotations

import heapq
import hmac
import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from stomptw import __version__, frame
from stomptw.destinations import Queue
from stomptw.model import NOT_FORWARDED, STAT_NAMES, DestinationError, DestinationFull

if TYPE_CHECKING:
    from stomptw.broker import Broker

#: ``() -> [problem, ...]``: what keeps the broker's listeners from being
#: ready (an unbound listener, say); empty when they are.
Readiness = Callable[[], list[str]]

__all__ = [
    "MAX_DESTINATION_SERIES",
    "METRICS_CONTENT_TYPE",
    "AdminResource",
    "Authorizer",
    "BearerTokenAuthorizer",
    "Denied",
    "admin_site",
    "load_token",
    "render_metrics",
]

log = Logger()

#: The most destinations that get their own series in ``/metrics``.
MAX_DESTINATION_SERIES = 100

#: The content type of the Prometheus text exposition format 0.0.4.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Commands clients send, as counted in ``stomptw_frames_received_total``.
CLIENT_COMMANDS = tuple(sorted(frame.CLIENT_COMMANDS))
#: Commands the broker sends, as counted in ``stomptw_frames_sent_total``.
SERVER_COMMANDS = tuple(sorted(frame.SERVER_COMMANDS))
#: Transports in ``stomptw_connections``.
TRANSPORTS = ("tcp", "tls", "ws")
#: Broker.stats counters reported as ``stomptw_messages_total{event=...}``.
MESSAGE_EVENTS = (
    "published",
    "delivered",
    "acked",
    "nacked",
    "redelivered",
    "dead_lettered",
    "expired",
    "dropped",
    "rejected",
)
assert set(MESSAGE_EVENTS) <= set(STAT_NAMES)


# -- authorization ------------------------------------------------------------------


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

    def authorize(self, request: Request) -> None:
        """Return if ``request`` may proceed; raise :class:`Denied` if not."""


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


# -- metrics ------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Exposition:
    """Builds the text format: one family at a time, HELP and TYPE first."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help: str,
        samples: Iterable[tuple[dict[str, str] | None, float]],
    ) -> None:
        lines = self.lines
        lines.append(f"# HELP {name} {help}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if labels:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{text}}} {_number(value)}")
            else:
                lines.append(f"{name} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _destination_size(dest: object) -> tuple[int, int, int]:
    count = getattr(dest, "count", 0)
    return (count, getattr(dest, "bytes", 0), len(getattr(dest, "subscriptions", ())))


def render_metrics(broker: Broker, max_destinations: int = MAX_DESTINATION_SERIES) -> str:
    """
    The broker's metrics in the Prometheus text format 0.0.4.

    Label values come from bounded sets only: transports, frame commands,
    message events, and destination names for at most ``max_destinations``
    destinations (those holding the most messages, then bytes, then
    consumers); the rest are counted in ``stomptw_destinations_omitted``.
    Nothing is labelled by connection or session.
    """
    out = _Exposition()
    stats = broker.stats
    counters = broker.counters

    out.family(
        "stomptw_info", "gauge", "Broker version (always 1).", [({"version": __version__}, 1)]
    )

    by_transport = dict.fromkeys(TRANSPORTS, 0)
    for session in broker.sessions:
        name = getattr(session, "transport_name", "tcp")
        by_transport[name] = by_transport.get(name, 0) + 1
    out.family(
        "stomptw_connections",
        "gauge",
        "Open client connections by transport.",
        [({"transport": t}, n) for t, n in by_transport.items()],
    )

    received = counters.frames_received
    other = sum(n for c, n in received.items() if c not in CLIENT_COMMANDS)
    out.family(
        "stomptw_frames_received_total",
        "counter",
        "STOMP frames received from clients, by command (unknown commands as OTHER).",
        [({"command": c}, received.get(c, 0)) for c in CLIENT_COMMANDS]
        + [({"command": "OTHER"}, other)],
    )
    sent = counters.frames_sent
    out.family(
        "stomptw_frames_sent_total",
        "counter",
        "STOMP frames sent to clients, by command.",
        [({"command": c}, sent.get(c, 0)) for c in SERVER_COMMANDS]
        + [({"command": "OTHER"}, sum(n for c, n in sent.items() if c not in SERVER_COMMANDS))],
    )
    out.family(
        "stomptw_bytes_received_total",
        "counter",
        "Bytes of STOMP data received (inside any WebSocket framing).",
        [(None, counters.bytes_received)],
    )
    out.family(
        "stomptw_bytes_sent_total",
        "counter",
        "Bytes of STOMP data sent, heart-beats included.",
        [(None, counters.bytes_sent)],
    )
    out.family(
        "stomptw_messages_total",
        "counter",
        "Messages by what happened to them.",
        [({"event": e}, stats.get(e, 0)) for e in MESSAGE_EVENTS],
    )
    out.family(
        "stomptw_slow_consumer_actions_total",
        "counter",
        "Slow topic subscribers dealt with by the slow-consumer policy.",
        [
            ({"action": "drop"}, stats.get("slow_consumer_dropped", 0)),
            ({"action": "disconnect"}, stats.get("slow_consumer_disconnected", 0)),
        ],
    )
    out.family(
        "stomptw_producers_blocked_total",
        "counter",
        "Times a producer stopped being read from because a queue was full.",
        [(None, stats.get("producers_blocked", 0))],
    )
    out.family(
        "stomptw_connections_refused_total",
        "counter",
        "Connections refused because their listener was at --max-connections.",
        [(None, stats.get("connections_refused", 0))],
    )
    out.family(
        "stomptw_heartbeat_timeouts_total",
        "counter",
        "Connections closed because the client's heart-beats stopped.",
        [(None, counters.heartbeat_timeouts)],
    )

    destinations = list(broker.destinations.values())
    kinds = {"queue": 0, "topic": 0}
    queued = queued_bytes = 0
    for dest in destinations:
        kinds[dest.kind] = kinds.get(dest.kind, 0) + 1
        if isinstance(dest, Queue):
            queued += dest.count
            queued_bytes += dest.bytes
    durable_messages = sum(d.queue.count for d in broker.durables.values())
    out.family(
        "stomptw_destinations",
        "gauge",
        "Destinations that exist (hold messages or have subscribers), by kind.",
        [({"kind": k}, n) for k, n in kinds.items()],
    )
    out.family(
        "stomptw_messages_queued",
        "gauge",
        "Messages held in queues (waiting and unacknowledged), all queues together.",
        [(None, queued)],
    )
    out.family(
        "stomptw_bytes_queued",
        "gauge",
        "Bytes held in queues as counted against --max-queue-bytes, all queues together.",
        [(None, queued_bytes)],
    )
    out.family(
        "stomptw_durable_subscriptions",
        "gauge",
        "Durable topic subscriptions.",
        [(None, len(broker.durables))],
    )
    out.family(
        "stomptw_durable_subscription_messages",
        "gauge",
        "Messages held for durable topic subscriptions, all together.",
        [(None, durable_messages)],
    )

    if len(destinations) > max_destinations:
        shown = heapq.nlargest(max_destinations, destinations, key=_destination_size)
    else:
        shown = sorted(destinations, key=_destination_size, reverse=True)
    out.family(
        "stomptw_destinations_omitted",
        "gauge",
        f"Destinations left out of the per-destination series (at most {max_destinations} "
        "are shown, those holding the most messages).",
        [(None, len(destinations) - len(shown))],
    )
    queues = [d for d in shown if isinstance(d, Queue)]
    out.family(
        "stomptw_queue_messages",
        "gauge",
        "Messages held in a queue (waiting and unacknowledged).",
        [({"destination": q.name}, q.count) for q in queues],
    )
    out.family(
        "stomptw_queue_bytes",
        "gauge",
        "Bytes held in a queue as counted against --max-queue-bytes.",
        [({"destination": q.name}, q.bytes) for q in queues],
    )
    out.family(
        "stomptw_destination_consumers",
        "gauge",
        "Subscribers of a destination.",
        [({"destination": d.name, "kind": d.kind}, len(d.subscriptions)) for d in shown],
    )

    store_stats = broker.store.stats()
    out.family(
        "stomptw_store_commit_seconds",
        "gauge",
        "Duration of the message store's last commit, in seconds.",
        [(None, float(store_stats.get("last_commit_seconds", 0.0)))],
    )
    out.family(
        "stomptw_store_commits_total",
        "counter",
        "Commits (group commits of persistent messages) by the message store.",
        [(None, int(store_stats.get("batches", 0)))],
    )
    return out.text()


# -- the HTTP resource --------------------------------------------------------------


class _HTTPError(Exception):
    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def _destination_info(dest: Any) -> dict[str, Any]:
    if isinstance(dest, Queue):
        return {
            "name": dest.name,
            "kind": "queue",
            "messages": dest.count,
            "waiting": len(dest.pending),
            "bytes": dest.bytes,
            "consumers": len(dest.subscriptions),
        }
    return {
        "name": dest.name,
        "kind": dest.kind,
        "messages": 0,
        "waiting": 0,
        "bytes": 0,
        "consumers": len(dest.subscriptions),
        "durable_subscriptions": len(getattr(dest, "durables", {})),
    }


class AdminResource(Resource):
    """
    The whole admin API as one leaf resource that routes on the raw path
    (so that URL-encoded destination names, slashes included, survive).

    :param readiness: what keeps the listeners from being ready (see
        :data:`Readiness`); None when there is nothing to wait for.
    :param broker: the broker.
    :param authorizer: decides about ``POST`` and ``DELETE`` requests.
    :param reactor: for the clock and whether it runs.
    """

    isLeaf = True

    def __init__(
        self,
        readiness: Readiness | None,
        broker: Broker,
        authorizer: Authorizer,
        reactor: Any,
    ) -> None:
        super().__init__()
        self.readiness = readiness
        self.broker = broker
        self.authorizer = authorizer
        self.reactor = reactor
        self._routes: list[tuple[tuple[str, ...], dict[str, Callable[..., Any]]]] = [
            (("healthz",), {"GET": self._healthz}),
            (("readyz",), {"GET": self._readyz}),
            (("metrics",), {"GET": self._metrics}),
            (("api", "connections"), {"GET": self._connections}),
            (("api", "connections", "*"), {"GET": self._connection, "DELETE": self._close}),
            (("api", "destinations"), {"GET": self._destinations}),
            (("api", "destinations", "*"), {"GET": self._destination}),
            (
                ("api", "destinations", "*", "messages"),
                {"POST": self._publish, "DELETE": self._purge},
            ),
            (("api", "subscriptions"), {"GET": self._subscriptions}),
        ]

    # -- plumbing ------------------------------------------------------------------------

    def _route(self, request: Request) -> tuple[dict[str, Callable[..., Any]], list[str]]:
        raw = request.path.split(b"/")[1:]
        if len(raw) > 1 and raw[-1] == b"":
            raw.pop()
        segments = [unquote(s.decode("ascii", "replace")) for s in raw]
        if len(segments) >= 3 and segments[:2] == ["api", "destinations"]:
            # One encoded segment (%2Fqueue%2Fa) or the name's own slashes.
            if len(segments) > 3 and segments[-1] == "messages":
                segments = [*segments[:2], "/".join(segments[2:-1]), "messages"]
            else:
                segments = [*segments[:2], "/".join(segments[2:])]
        for pattern, methods in self._routes:
            if len(pattern) == len(segments) and all(
                p == "*" or p == s for p, s in zip(pattern, segments, strict=True)
            ):
                args = [s for p, s in zip(pattern, segments, strict=True) if p == "*"]
                return methods, args
        raise _HTTPError(404, "no such endpoint")

    def render(self, request: Request) -> bytes | int:
        """Route, authorize and answer one request."""
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"
        try:
            methods, args = self._route(request)
            handler = methods.get(method)
            if handler is None:
                raise _HTTPError(
                    405, f"{method} is not allowed here", {"Allow": ", ".join(sorted(methods))}
                )
            if method not in ("GET", "HEAD"):
                try:
                    self.authorizer.authorize(request)
                except Denied as e:
                    # Never the token itself: only who tried what.
                    peer = request.getClientAddress()
                    log.warn(
                        "admin API: refused {method} {path} from {peer}: {reason}",
                        method=method,
                        path=request.path.decode("latin-1"),
                        peer=f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}",
                        status=e.code,
                        reason=e.message,
                    )
                    raise _HTTPError(e.code, e.message, e.headers) from None
            result = handler(request, *args)
        except _HTTPError as e:
            return self._error(request, e)
        if isinstance(result, defer.Deferred):

            def done(value: tuple[int, object]) -> None:
                if not request.finished and not getattr(request, "_disconnected", False):
                    request.write(self._json(request, *value))
                    request.finish()

            def failed(failure: Any) -> None:
                error = failure.value
                if not isinstance(error, _HTTPError):
                    log.failure("admin request failed", failure)
                    error = _HTTPError(500, "internal error")
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

    def _error(self, request: Request, error: _HTTPError) -> bytes:
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return self._json(request, error.code, {"error": error.message})

    def _text(self, request: Request, code: int, text: str, content_type: str) -> bytes:
        request.setResponseCode(code)
        request.setHeader("Content-Type", content_type)
        request.setHeader("Cache-Control", "no-store")
        return text.encode("utf-8")

    def _session(self, session_id: str) -> Any:
        for session in self.broker.sessions:
            if getattr(session, "session_id", "") == session_id and session_id:
                return session
        raise _HTTPError(404, f"no connection with session id {session_id!r}")

    def _read_json(self, request: Request) -> Any:
        limit = self.broker.config.limits.max_frame_size
        data = request.content.read(limit + 1) if request.content is not None else b""
        if len(data) > limit:
            raise _HTTPError(413, f"request body over {limit} bytes")
        try:
            return json.loads(data or b"null")
        except ValueError as e:
            raise _HTTPError(400, f"request body is not JSON: {e}") from None

    # -- endpoints ---------------------------------------------------------------------

    def _healthz(self, request: Request) -> bytes:
        if getattr(self.reactor, "running", True):
            return self._text(request, 200, "ok\n", "text/plain; charset=utf-8")
        return self._text(request, 503, "reactor not running\n", "text/plain; charset=utf-8")

    def _readyz(self, request: Request) -> bytes:
        problems = []
        if not self.broker.loaded:
            problems.append("message store not loaded")
        if self.broker.stopping:
            problems.append("broker is stopping")
        if self.readiness is not None:
            problems.extend(self.readiness())
        if problems:
            return self._text(request, 503, "\n".join(problems) + "\n", "text/plain; charset=utf-8")
        return self._text(request, 200, "ready\n", "text/plain; charset=utf-8")

    def _metrics(self, request: Request) -> bytes:
        return self._text(request, 200, render_metrics(self.broker), METRICS_CONTENT_TYPE)

    def _connections(self, request: Request) -> bytes:
        now = self.reactor.seconds()
        sessions = sorted(self.broker.sessions, key=lambda s: s.opened)
        return self._json(request, 200, [s.info(now) for s in sessions])

    def _connection(self, request: Request, session_id: str) -> bytes:
        session = self._session(session_id)
        info = session.info(self.reactor.seconds())
        info["subscription_ids"] = sorted(session.subscriptions)
        return self._json(request, 200, info)

    def _close(self, request: Request, session_id: str) -> defer.Deferred:
        session = self._session(session_id)
        reason = ""
        args = request.args.get(b"reason")
        if args:
            reason = args[0].decode("utf-8", "replace")[:200]
        log.info(
            "admin API: closing session {session} ({peer})",
            session=session_id,
            peer=session.peer,
        )
        session.close_by_operator(reason)
        # Answer at once: the close itself may wait for the client (linger).
        return defer.succeed((200, {"closed": session_id}))

    def _destinations(self, request: Request) -> bytes:
        dests = sorted(self.broker.destinations.values(), key=lambda d: d.name)
        return self._json(request, 200, [_destination_info(d) for d in dests])

    def _destination(self, request: Request, name: str) -> bytes:
        dest = self.broker.destinations.get(name)
        if dest is None:
            raise _HTTPError(404, f"no destination {name!r}")
        return self._json(request, 200, _destination_info(dest))

    def _subscriptions(self, request: Request) -> bytes:
        result = []
        attached = set()
        for session in sorted(self.broker.sessions, key=lambda s: s.opened):
            for sub in session.subscriptions.values():
                durable = sub.durable
                if durable is not None:
                    attached.add(durable)
                result.append(
                    {
                        "session_id": session.session_id or None,
                        "id": sub.id,
                        "destination": sub.destination,
                        "ack": sub.ack_mode,
                        "prefetch": sub.prefetch,
                        "unacked": len(sub.unacked),
                        "backlog": len(sub.backlog),
                        "durable": durable[1] if durable is not None else None,
                        "client_id": durable[0] if durable is not None else None,
                        "active": True,
                    }
                )
        for durable in self.broker.durables.values():
            if (durable.client_id, durable.name) in attached:
                continue
            result.append(
                {
                    "session_id": None,
                    "id": None,
                    "destination": durable.topic,
                    "ack": None,
                    "prefetch": None,
                    "unacked": 0,
                    "backlog": durable.queue.count,
                    "durable": durable.name,
                    "client_id": durable.client_id,
                    "active": False,
                }
            )
        return self._json(request, 200, result)

    def _publish(self, request: Request, name: str) -> defer.Deferred | bytes:
        payload = self._read_json(request)
        if not isinstance(payload, dict):
            raise _HTTPError(400, 'expected a JSON object {"body": "...", "headers": {...}}')
        body = payload.get("body", "")
        headers = payload.get("headers", {})
        if not isinstance(body, str):
            raise _HTTPError(400, "body must be a string")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k for k, v in headers.items()
        ):
            raise _HTTPError(400, "headers must be an object of non-empty names to strings")
        unknown = set(payload) - {"body", "headers"}
        if unknown:
            raise _HTTPError(400, f"unknown fields: {', '.join(sorted(unknown))}")
        try:
            self.broker.check_destination(name)
        except DestinationError as e:
            raise _HTTPError(400, f"invalid destination: {e}") from None
        data = body.encode("utf-8")
        if len(data) > self.broker.config.limits.max_body_size:
            raise _HTTPError(413, "body is over --max-body-size")
        expires = headers.get("expires")
        if expires is not None and not expires.isdigit():
            raise _HTTPError(400, "expires must be milliseconds since the epoch")
        forwarded = {k: v for k, v in headers.items() if k not in NOT_FORWARDED}
        existing = self.broker.destinations.get(name)
        if isinstance(existing, Queue) and existing.is_full():
            # Whatever --overflow says: there is no producer connection to block.
            raise _HTTPError(503, f"destination {name} is full")
        try:
            message = self.broker.send(name, forwarded, data, None, True)
        except DestinationFull as e:
            raise _HTTPError(503, f"destination {name} is full: {e}") from None
        request.setHeader("Location", request.uri.decode("ascii", "replace"))
        result = (201, {"message_id": message.message_id, "destination": name})
        if message.persistent:
            # 201 once it is stored, as a RECEIPT would be.
            return self.broker.sync().addCallback(lambda _: result)
        return self._json(request, *result)

    def _purge(self, request: Request, name: str) -> bytes:
        try:
            count = self.broker.purge(name)
        except KeyError:
            raise _HTTPError(404, f"no destination {name!r}") from None
        except DestinationError as e:
            raise _HTTPError(400, str(e)) from None
        log.info("admin API: purged {count} message(s) from {name}", count=count, name=name)
        return self._json(request, 200, {"destination": name, "purged": count})


def admin_site(
    broker: Broker,
    readiness: Readiness | None = None,
    token: str | None = None,
    reactor: Any = None,
    authorizer: Authorizer | None = None,
) -> Site:
    """
    The admin HTTP site.

    :param broker: the broker to report on and act upon.
    :param readiness: what keeps its listeners from being ready (see
        :data:`Readiness`).
    :param token: the bearer token for ``POST``/``DELETE``; None disables them.
    :param reactor: the reactor (the global one by default).
    :param authorizer: replaces the bearer-token check (``token`` is then
        ignored), e.g. with a credentials store.
    """
    if reactor is None:
        from twisted.internet import reactor
    if authorizer is None:
        authorizer = BearerTokenAuthorizer(token)
    site = Site(AdminResource(readiness, broker, authorizer, reactor), reactor=reactor)
    site.noisy = False
    site.displayTracebacks = False
    # No access log: scrapes every few seconds would drown everything else.
    site.log = lambda request: None
    return site
