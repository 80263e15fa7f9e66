"""
The admin HTTP API and Prometheus metrics.

Served by :mod:`twisted.web` on the ``admin_endpoints`` of the
configuration (``--admin``), off by default. Everything runs on the reactor
thread, so what it reports is a consistent snapshot of the broker.

Endpoints:

``GET /healthz``
    ``200 ok`` while the reactor runs.
``GET /readyz``
    200 once every listener is bound and the message store is loaded, and while
    no alarm is raised; else 503 with the reasons.
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
``GET /api/destinations/<name>/messages?count=N``
    Peek at the first N (10, at most 100) messages waiting in a queue's
    memory without consuming them: ids, headers and a body preview. Needs
    the same credentials as ``POST`` and ``DELETE`` (bodies are sensitive).
``GET /api/subscriptions``
    Every subscription, and durable subscriptions without a subscriber.
``GET /api/alarms``
    The memory and disk alarms: raised or not, what they measure, how many
    connections they hold (null for an alarm that is off).
``GET /api/cluster``
    With ``--cluster``: this node's id, the Redis it joined, whether it is
    connected now, and its topic message counts; ``{"enabled": false}``
    without. (``/readyz`` does not depend on it: a node whose Redis is down
    still serves its own clients.)

The operator's console (:mod:`stomptw.console`) is served beside them: its
page at ``/``, its files under ``/console/``, and its own endpoints.

Destination names go in the path URL-encoded (``%2Fqueue%2Forders``).
``POST``, ``DELETE`` and the peek need ``Authorization: Bearer <token>`` with the token
from ``admin_token_file``, or, on a broker with ``--auth``, the credentials
of a user with the ``administrator`` tag (HTTP Basic, or a bearer JWT);
without them they are refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request, Site

from stomptw.adminhttp import (
    AdministratorAuthorizer,
    Authorizer,
    BearerTokenAuthorizer,
    Denied,
    HTTPError,
    JsonResource,
    load_token,
)
from stomptw.adminmessages import AdminMessages
from stomptw.console import console_site
from stomptw.destinations import Queue
from stomptw.metrics import MAX_DESTINATION_SERIES, METRICS_CONTENT_TYPE, render_metrics

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


def _destination_info(dest: Any) -> dict[str, Any]:
    if isinstance(dest, Queue):
        return {
            "name": dest.name,
            "kind": "queue",
            "messages": dest.count,
            "waiting": dest.waiting(),
            "paged": dest.paged,
            "bytes": dest.bytes,
            "consumers": len(dest.subscriptions),
        }
    if dest.kind == "stream":
        first, following = dest.offsets()
        return {
            "name": dest.name,
            "kind": "stream",
            "messages": dest.count,
            "waiting": 0,
            "bytes": dest.bytes,
            "consumers": len(dest.subscriptions),
            "first_offset": first,
            "next_offset": following,
            "epoch": dest.epoch,
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


class AdminResource(AdminMessages, JsonResource):
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
                {"GET": self._peek, "POST": self._publish, "DELETE": self._purge},
            ),
            (("api", "subscriptions"), {"GET": self._subscriptions}),
            (("api", "alarms"), {"GET": self._alarms_api}),
            (("api", "cluster"), {"GET": self._cluster_api}),
        ]

    # -- routing -------------------------------------------------------------------------

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
        raise HTTPError(404, "no such endpoint")

    def _session(self, session_id: str) -> Any:
        for session in self.broker.sessions:
            if getattr(session, "session_id", "") == session_id and session_id:
                return session
        raise HTTPError(404, f"no connection with session id {session_id!r}")

    def _read_json(self, request: Request) -> Any:
        # Only JSON by its Content-Type: a cross-site form (text/plain,
        # urlencoded, multipart) is a request browsers send unasked.
        kind = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise HTTPError(415, "the request body must be sent as Content-Type: application/json")
        limit = self.broker.config.limits.max_frame_size
        data = request.content.read(limit + 1) if request.content is not None else b""
        if len(data) > limit:
            raise HTTPError(413, f"request body over {limit} bytes")
        try:
            return json.loads(data or b"null")
        except ValueError as e:
            raise HTTPError(400, f"request body is not JSON: {e}") from None

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
        failing = getattr(self.broker.store, "failing", None)
        if failing:
            problems.append(f"message store writes fail: {failing}")
        problems.extend(
            f"{alarm.kind} alarm raised" for alarm in self._alarms().values() if alarm.active
        )
        if problems:
            return self._text(request, 503, "\n".join(problems) + "\n", "text/plain; charset=utf-8")
        return self._text(request, 200, "ready\n", "text/plain; charset=utf-8")

    def _alarms(self) -> dict[str, Any]:
        """The broker's alarms that are configured, by kind."""
        alarms = {}
        for alarm in (
            getattr(self.broker, "memory_alarm", None),
            getattr(self.broker, "disk_alarm", None),
        ):
            if alarm is not None:
                alarms[alarm.kind] = alarm
        return alarms

    def _alarms_api(self, request: Request) -> bytes:
        alarms = self._alarms()
        return self._json(
            request,
            200,
            {
                kind: alarms[kind].status() if kind in alarms else None
                for kind in ("memory", "disk")
            },
        )

    def _cluster_api(self, request: Request) -> bytes:
        cluster = getattr(self.broker, "cluster", None)
        return self._json(request, 200, cluster.status() if cluster else {"enabled": False})

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

    def _vhost(self, request: Request) -> Any:
        """The broker of the request's ``?vhost=NAME`` (``/`` without one)."""
        names = request.args.get(b"vhost") or [b"/"]
        name = names[0].decode("utf-8", "replace")
        vhost = getattr(self.broker, "vhosts", {"/": self.broker}).get(name)
        if vhost is None:
            raise HTTPError(404, f"no vhost {name!r}")
        return vhost

    def _destinations(self, request: Request) -> bytes:
        broker = self._vhost(request)
        dests = sorted(broker.destinations.values(), key=lambda d: d.name)
        return self._json(request, 200, [_destination_info(d) for d in dests])

    def _destination(self, request: Request, name: str) -> bytes:
        dest = self._vhost(request).destinations.get(name)
        if dest is None:
            raise HTTPError(404, f"no destination {name!r}")
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
        auth = getattr(broker, "auth", None)
        if auth is not None and auth.required:
            authorizer = AdministratorAuthorizer(token, auth)
        else:
            authorizer = BearerTokenAuthorizer(token)
    # The operator's console at / (stomptw.console), beside the API.
    site = console_site(AdminResource(readiness, broker, authorizer, reactor), token, reactor)
    site.noisy = False
    site.displayTracebacks = False
    # No access log: scrapes every few seconds would drown everything else.
    site.log = lambda request: None
    return site
