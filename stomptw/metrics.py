"""
The broker's Prometheus metrics, rendered in the text exposition format
0.0.4 on the reactor thread (a consistent snapshot, no thread pool, no
dependency): what :mod:`stomptw.admin` serves at ``/metrics``.

Label values are bounded: commands and transports are fixed lists, and only
the :data:`MAX_DESTINATION_SERIES` largest destinations get series of their
own.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TYPE_CHECKING

from stomptw import __version__, frame
from stomptw.destinations import Queue
from stomptw.model import STAT_NAMES

if TYPE_CHECKING:
    from stomptw.broker import Broker

__all__ = ["MAX_DESTINATION_SERIES", "METRICS_CONTENT_TYPE", "render_metrics"]

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

    auth = getattr(broker, "auth", None)
    if auth is not None:
        logins = auth.counters
        out.family(
            "stomptw_logins_total",
            "counter",
            "Logins by outcome: succeeded, failed (bad credentials), rate_limited (too "
            "many failures from the address), unavailable (the checker could not decide), "
            "expired (sessions ended because their token expired).",
            [
                ({"outcome": "succeeded"}, logins.succeeded),
                ({"outcome": "failed"}, logins.failed),
                ({"outcome": "rate_limited"}, logins.rate_limited),
                ({"outcome": "unavailable"}, logins.unavailable),
                ({"outcome": "expired"}, logins.expired),
            ],
        )
        out.family(
            "stomptw_access_denied_total",
            "counter",
            "SEND and SUBSCRIBE frames refused for a missing permission, by permission.",
            [({"permission": a}, n) for a, n in logins.denied.items()],
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
        "stomptw_connections_closed_total",
        "counter",
        "Client connections that ended, for whatever reason.",
        [(None, counters.sessions_ended)],
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
    paged = sum(dest.paged for dest in destinations if isinstance(dest, Queue)) + sum(
        d.queue.paged for d in broker.durables.values()
    )
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
        "stomptw_messages_paged",
        "gauge",
        "Persistent messages held only in the store, beyond their queues' "
        "--queue-memory-window, all queues and durable subscriptions together.",
        [(None, paged)],
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
    out.family(
        "stomptw_store_failed_commits",
        "gauge",
        "Commits of the message store that failed in a row (disk full, I/O error); "
        "0 once one succeeds.",
        [(None, int(store_stats.get("failed_commits", 0)))],
    )
    _alarms(out, broker)
    cluster = getattr(broker, "cluster", None)
    if cluster is not None:
        for name, kind, text, samples in cluster.metric_families():
            out.family(name, kind, text, samples)
    return out.text()


def _alarms(out: _Exposition, broker: Broker) -> None:
    """The memory and disk alarms: raised or not, and what they measure against what."""
    memory = getattr(broker, "memory_alarm", None)
    disk = getattr(broker, "disk_alarm", None)
    out.family(
        "stomptw_alarm",
        "gauge",
        "1 while an alarm holds publishing connections (memory: "
        "--memory-high-watermark; disk: --disk-free-limit), else 0.",
        [
            ({"alarm": "memory"}, int(bool(memory is not None and memory.active))),
            ({"alarm": "disk"}, int(bool(disk is not None and disk.active))),
        ],
    )
    if memory is not None:
        out.family(
            "stomptw_memory_used_bytes",
            "gauge",
            "The broker's memory use as the memory alarm last measured it (RSS).",
            [(None, memory.used)],
        )
        out.family(
            "stomptw_memory_limit_bytes",
            "gauge",
            "The memory high watermark in bytes.",
            [(None, memory.limit)],
        )
    if disk is not None:
        out.family(
            "stomptw_disk_free_bytes",
            "gauge",
            "Free disk space under --data-dir as the disk alarm last saw it.",
            [(None, max(disk.free, 0))],
        )
        out.family(
            "stomptw_disk_free_limit_bytes",
            "gauge",
            "The disk free limit in bytes.",
            [(None, disk.limit)],
        )
