"""
What the operator's console (:mod:`stomptw.console`) shows, computed on the
reactor thread: a :class:`Sampler` that takes one snapshot of the broker a
second (rates from its counters, a few minutes of history, the rates of
every destination), and the rows of the console's tables, sorted, filtered
and cut into pages (:func:`page`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import task
from twisted.logger import Logger

from stomptw import __version__
from stomptw.destinations import Queue

if TYPE_CHECKING:
    from stomptw.broker import Broker

__all__ = [
    "HISTORY",
    "Sampler",
    "connection_row",
    "destination_row",
    "durable_rows",
    "page",
]

log = Logger()

#: How many one-second samples the overview keeps (five minutes).
HISTORY = 300
#: Message counters whose rates the overview charts, and the totals it shows.
RATES = ("published", "delivered", "acked")
TOTALS = ("dead_lettered", "expired", "redelivered", "dropped")
TRANSPORTS = ("tcp", "tls", "ws")


def _traffic(dest: Any) -> tuple[int, int, int, int]:
    return (
        getattr(dest, "messages_in", 0),
        getattr(dest, "bytes_in", 0),
        getattr(dest, "messages_out", 0),
        getattr(dest, "bytes_out", 0),
    )


class Sampler:
    """
    One snapshot of the broker a second while started: message rates,
    connections by transport, memory against the memory alarm, the store's
    last commit, dead-lettered and expired totals (the last :data:`HISTORY`
    kept), and the in and out rates of every destination. Each snapshot
    goes to every :attr:`listeners` callable (the console's event streams).

    :param broker: the broker (and its vhosts).
    :param clock: the reactor.
    :param interval: seconds between snapshots.
    """

    def __init__(self, broker: Broker, clock: Any, interval: float = 1.0) -> None:
        self.broker = broker
        self.clock = clock
        self.interval = interval
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        #: ``(vhost, name) -> (messages in/s, bytes in/s, messages out/s, bytes out/s)``.
        self.rates: dict[tuple[str, str], tuple[float, float, float, float]] = {}
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.started_wall = time.time()
        self.started = clock.seconds()
        self._last: tuple[float, dict[str, int]] | None = None
        self._last_traffic: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        self._loop: task.LoopingCall | None = None

    def start(self) -> None:
        """Take a snapshot every :attr:`interval` seconds from now on."""
        if self._loop is None:
            self._loop = task.LoopingCall(self.sample)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Stop taking snapshots."""
        if self._loop is not None:
            if self._loop.running:
                self._loop.stop()
            self._loop = None

    def sample(self) -> dict[str, Any]:
        """Take one snapshot now, keep it and hand it to the listeners."""
        now = self.clock.seconds()
        stats = self.broker.stats
        counts = {name: int(stats.get(name, 0)) for name in RATES + TOTALS}
        rates = dict.fromkeys(RATES, 0.0)
        if self._last is not None:
            then, before = self._last
            elapsed = now - then
            if elapsed > 0:
                rates = {n: max(0.0, (counts[n] - before[n]) / elapsed) for n in RATES}
            self._destination_rates(elapsed)
        else:
            self._destination_rates(0.0)
        self._last = (now, counts)
        point = {
            "time": round(self.started_wall + (now - self.started), 3),
            "rates": {n: round(v, 2) for n, v in rates.items()},
            "totals": {n: counts[n] for n in TOTALS},
            "connections": self.connections(),
            **self.gauges(),
        }
        self.history.append(point)
        for listener in list(self.listeners):
            try:
                listener(point)
            except Exception:
                log.failure("console event stream failed")
                self.listeners.remove(listener)
        return point

    def _destination_rates(self, elapsed: float) -> None:
        current: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        rates: dict[tuple[str, str], tuple[float, float, float, float]] = {}
        last = self._last_traffic
        for vhost, broker in self.vhosts():
            for name, dest in broker.destinations.items():
                key = (vhost, name)
                now = current[key] = _traffic(dest)
                before = last.get(key)
                if before is not None and elapsed > 0:
                    rates[key] = tuple(  # type: ignore[assignment]
                        round(max(0, a - b) / elapsed, 2) for a, b in zip(now, before, strict=True)
                    )
        self._last_traffic = current
        self.rates = rates

    def vhosts(self) -> Iterable[tuple[str, Any]]:
        """``(name, broker)`` of every vhost, ``/`` first."""
        return getattr(self.broker, "vhosts", {"/": self.broker}).items()

    def connections(self) -> dict[str, int]:
        """Open connections by transport."""
        found = dict.fromkeys(TRANSPORTS, 0)
        for session in self.broker.sessions:
            name = getattr(session, "transport_name", "tcp")
            found[name] = found.get(name, 0) + 1
        return found

    def gauges(self) -> dict[str, Any]:
        """Memory and disk against their alarms, and the store's last commit."""
        memory = getattr(self.broker, "memory_alarm", None)
        disk = getattr(self.broker, "disk_alarm", None)
        store = self.broker.store.stats()
        return {
            "memory": None
            if memory is None
            else {"used": memory.used, "limit": memory.limit, "active": bool(memory.active)},
            "disk": None
            if disk is None
            else {"free": max(disk.free, 0), "limit": disk.limit, "active": bool(disk.active)},
            "commit_ms": round(float(store.get("last_commit_seconds", 0.0)) * 1000, 3),
            "failed_commits": int(store.get("failed_commits", 0)),
        }

    def overview(self) -> dict[str, Any]:
        """The console's overview: facts about the broker, its gauges and counters, the history."""
        broker = self.broker
        config = broker.config
        stats = broker.stats
        destinations = [d for _, b in self.vhosts() for d in b.destinations.values()]
        return {
            "version": __version__,
            "uptime_seconds": round(self.clock.seconds() - self.started, 1),
            "started": round(self.started_wall, 3),
            # Reads are open: say where it listens, not where its keys or
            # data are kept.
            "listeners": {
                "tcp": [public_endpoint(e) for e in config.tcp_endpoints],
                "ws": [public_endpoint(e) for e in config.ws_endpoints],
                "admin": [public_endpoint(e) for e in config.admin_endpoints],
            },
            "store": {"kind": config.store},
            "auth": bool(getattr(broker, "auth", None) and broker.auth.required),
            "vhosts": sorted(name for name, _ in self.vhosts()),
            "counters": {name: int(value) for name, value in sorted(stats.items())},
            "connections": self.connections(),
            "destinations": {
                "queues": sum(1 for d in destinations if d.kind == "queue"),
                "topics": sum(1 for d in destinations if d.kind == "topic"),
                "streams": sum(1 for d in destinations if d.kind == "stream"),
            },
            "durable_subscriptions": len(broker.durables),
            **self.gauges(),
            "interval": self.interval,
            "history": list(self.history),
        }


# -- table rows -----------------------------------------------------------------------


def destination_row(dest: Any, rates: tuple[float, float, float, float] | None) -> dict[str, Any]:
    """One row of the console's destinations table."""
    unacked = sum(len(sub.unacked) for sub in dest.subscriptions)
    waiting = dest.waiting() if isinstance(dest, Queue) else 0
    rate_in, bytes_in, rate_out, bytes_out = rates or (0.0, 0.0, 0.0, 0.0)
    return {
        "name": dest.name,
        "kind": dest.kind,
        "depth": waiting,
        "unacked": unacked,
        "messages": getattr(dest, "count", 0),
        "bytes": getattr(dest, "bytes", 0),
        "consumers": len(dest.subscriptions),
        "durables": len(getattr(dest, "durables", {})),
        "rate_in": rate_in,
        "rate_out": rate_out,
        "bytes_in_rate": bytes_in,
        "bytes_out_rate": bytes_out,
        "messages_in": getattr(dest, "messages_in", 0),
        "messages_out": getattr(dest, "messages_out", 0),
        "bytes_in": getattr(dest, "bytes_in", 0),
        "bytes_out": getattr(dest, "bytes_out", 0),
    }


def connection_row(session: Any, now: float, wall: float) -> dict[str, Any]:
    """One row of the console's connections table: ``session.info()`` and its traffic."""
    info = session.info(now)
    parser = getattr(session, "parser", None)
    send_ms, receive_ms = getattr(session, "heartbeat", (0, 0))
    info.update(
        {
            "since": round(wall - info["connected_seconds"], 3),
            "heartbeat_send_ms": send_ms,
            "heartbeat_receive_ms": receive_ms,
            "frames_in": getattr(session, "frames_in", 0),
            "frames_out": getattr(session, "frames_out", 0),
            "bytes_in": getattr(parser, "bytes_received", 0),
            "bytes_out": getattr(session, "bytes_out", 0),
            "subscription_ids": sorted(getattr(session, "subscriptions", {})),
        }
    )
    return info


def durable_rows(broker: Any) -> list[dict[str, Any]]:
    """Every durable subscription: active (its subscriber is connected) or away, and its backlog."""
    attached: dict[tuple[str, str], tuple[Any, Any]] = {}
    for session in broker.sessions:
        for sub in session.subscriptions.values():
            if sub.durable is not None:
                attached[sub.durable] = (session, sub)
    rows = []
    for durable in broker.durables.values():
        key = (durable.client_id, durable.name)
        session, sub = attached.get(key, (None, None))
        rows.append(
            {
                "client_id": durable.client_id,
                "name": durable.name,
                "destination": durable.topic,
                "active": sub is not None,
                "session_id": (session.session_id or None) if session is not None else None,
                "backlog": durable.queue.count if sub is None else len(sub.backlog),
                "unacked": len(sub.unacked) if sub is not None else 0,
            }
        )
    return rows


def page(
    rows: list[dict[str, Any]],
    args: dict[bytes, list[bytes]],
    default_sort: str,
    text_fields: tuple[str, ...],
    max_limit: int = 500,
) -> dict[str, Any]:
    """
    ``rows`` filtered, sorted and cut by a request's arguments:
    ``q`` (a substring of any of ``text_fields``, case-insensitive),
    ``kind`` (equal), ``sort`` (a field; ``default_sort`` otherwise),
    ``order`` (``asc``/``desc``), ``offset`` and ``limit`` (at most
    ``max_limit``). Answers ``{"total", "offset", "limit", "sort",
    "order", "items"}`` (``total`` counts the filtered rows).
    """

    def arg(name: str, default: str = "") -> str:
        values = args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values else default

    def number(name: str, default: int) -> int:
        try:
            return max(0, int(arg(name, str(default))))
        except ValueError:
            return default

    query = arg("q").lower()
    if query:
        rows = [r for r in rows if any(query in str(r.get(f) or "").lower() for f in text_fields)]
    kind = arg("kind")
    if kind:
        rows = [r for r in rows if r.get("kind", r.get("transport")) == kind]
    sort = arg("sort", default_sort)
    if rows and sort not in rows[0]:
        sort = default_sort
    order = "desc" if arg("order") == "desc" else "asc"

    def key(row: dict[str, Any]) -> tuple[int, Any]:
        value = row.get(sort)
        if value is None:
            return (0, "")
        if isinstance(value, bool | int | float):
            return (1, value)
        return (2, str(value))

    rows = sorted(rows, key=key, reverse=order == "desc")
    offset = number("offset", 0)
    limit = min(number("limit", 50) or 50, max_limit)
    return {
        "total": len(rows),
        "offset": offset,
        "limit": limit,
        "sort": sort,
        "order": order,
        "items": rows[offset : offset + limit],
    }


#: Endpoint-string options that say where a listener is, kept by
#: :func:`public_endpoint`; the others (key and certificate paths) are not.
_PUBLIC_OPTIONS = ("port", "interface", "address", "host", "backlog")


def public_endpoint(description: str) -> str:
    """
    An endpoint string without the options an unauthenticated reader has no
    business seeing (``privateKey=``, ``certKey=``, ``caCertsDir=`` ...):
    ``ssl:61614:interface=0.0.0.0:privateKey=/etc/k.pem`` is shown as
    ``ssl:61614:interface=0.0.0.0``.
    """
    parts = description.split(":")
    kept = [parts[0]]
    for part in parts[1:]:
        name, sep, _ = part.partition("=")
        if not sep or name in _PUBLIC_OPTIONS:
            kept.append(part)
    return ":".join(kept)
