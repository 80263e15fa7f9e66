"""
What happens to messages, as settings: the store, redelivery and dead
letters, expiry, queue limits and overflow, slow topic subscribers,
streams, delayed delivery and application destinations. One of the groups
:class:`~stomptw.config.BrokerConfig` is made of; each setting is declared
once, on its field (:mod:`stomptw.settings`).
"""

from __future__ import annotations

from dataclasses import dataclass

from stomptw.memalarm import check_watermark
from stomptw.settings import (
    at_least,
    non_negative,
    one_of,
    positive,
    repeatable,
    setting,
    switch,
)

__all__ = ["DeliverySettings"]


def _dead_letter_queue(value: str) -> None:
    if value and not value.startswith("/queue/"):
        raise ValueError(f"must name a /queue/ destination (or be empty), got {value!r}")


def _stream_limits(values: list[str]) -> None:
    from stomptw.streams import parse_limit

    for value in values:
        parse_limit(value)


def _app_prefix(value: str) -> None:
    if not value:
        return
    if not (value.startswith("/") and value.endswith("/")) or len(value) < 3:
        raise ValueError(f"must start and end with '/', e.g. /app/, got {value!r}")
    if value in ("/queue/", "/topic/", "/temp-queue/", "/reply-queue/", "/user/", "/stream/"):
        raise ValueError(f"{value} is the broker's own prefix; use another, e.g. /app/")


@dataclass
class DeliverySettings:
    """
    What happens to messages: the store, redelivery and dead letters,
    expiry, queue limits and overflow, slow topic subscribers.
    """

    store: str = setting(
        "sqlite",
        "--store",
        "Message store: 'sqlite' (persistent messages survive restarts) or "
        "'memory' (nothing does).",
        checks=[one_of("sqlite", "memory")],
        metavar="sqlite|memory",
    )
    data_dir: str = setting(
        "stomptw-data",
        "--data-dir",
        "Directory of the SQLite message store (created if missing; relative "
        "paths are under the working directory).",
        metavar="DIR",
    )
    disk_free_limit: int = setting(
        50_000_000,
        "--disk-free-limit",
        "Bytes of free disk space under --data-dir below which connections that send "
        "persistent messages are held (not read from) until space is freed; other "
        "traffic goes on (0 = off; the memory store has no limit).",
        checks=[non_negative],
        metavar="BYTES",
    )
    memory_high_watermark: str = setting(
        "0.4",
        "--memory-high-watermark",
        "Memory use past which the broker stops reading from every connection that "
        "publishes (consumers, ACKs and heart-beats go on) until it is under 0.9 of "
        "this: a share of the machine's memory or of the cgroup's limit (0.4), or a "
        "size (512MiB, 2GB); 0 = off.",
        checks=[check_watermark],
        metavar="FRACTION|SIZE",
    )
    store_sync: str = setting(
        "full",
        "--store-sync",
        "'full': persistent messages are on disk (fsync) before their RECEIPT; "
        "'normal': they survive a broker crash but perhaps not a power loss.",
        checks=[one_of("full", "normal")],
        metavar="full|normal",
    )
    max_redeliveries: int = setting(
        6,
        "--max-redeliveries",
        "A queue message returned (NACKed, or left unacknowledged by a subscriber "
        "that went away) more times than this goes to its dead-letter queue "
        "(-1 = never).",
        checks=[at_least(-1, "must be -1 (never) or more")],
        metavar="N",
    )
    dead_letter_queue: str = setting(
        "/queue/DLQ.{name}",
        "--dead-letter-queue",
        "Dead-letter queue name; {name} is the original destination's name "
        "without /queue/ or /topic/. Empty: drop dead messages (and count them).",
        checks=[_dead_letter_queue],
        metavar="DESTINATION",
    )
    dead_letter_expired: bool = switch(
        False,
        "--dead-letter-expired",
        "Move expired messages to the dead-letter queue instead of dropping them.",
    )
    default_ttl_ms: int = setting(
        0,
        "--default-ttl",
        "Milliseconds after which messages sent without an expires header expire (0 = never).",
        checks=[non_negative],
        metavar="MS",
    )
    expiry_interval: float = setting(
        1.0,
        None,
        "Seconds between sweeps that take expired messages out of queues nobody consumes from.",
        checks=[non_negative],
    )
    max_queue_length: int = setting(
        0,
        "--max-queue-length",
        "Most messages a queue holds, waiting and unacknowledged (0 = no limit).",
        checks=[non_negative],
        metavar="N",
    )
    max_queue_bytes: int = setting(
        64 * 1024 * 1024,
        "--max-queue-bytes",
        "Most bytes a queue holds: bodies and headers plus 512 bytes per message (0 = no limit).",
        checks=[non_negative],
        metavar="BYTES",
    )
    queue_memory_window: int = setting(
        1000,
        "--queue-memory-window",
        "Persistent messages a queue (or durable subscription) keeps waiting in memory; "
        "those behind them stay only in the SQLite store and are read back in order as "
        "consumers make room, so a backlog is bounded by disk, not memory (0 = all in "
        "memory; with --store memory all are).",
        checks=[non_negative],
        metavar="MESSAGES",
    )
    overflow: str = setting(
        "block",
        "--overflow",
        "When a queue is full: 'block' stops reading from its producers until "
        "there is room, 'reject' answers their SEND with an ERROR.",
        checks=[one_of("block", "reject")],
        metavar="block|reject",
    )
    slow_topic_limit: int = setting(
        1000,
        "--slow-topic-limit",
        "Topic messages held back per subscriber that cannot take them yet.",
        checks=[positive],
        metavar="N",
    )
    slow_topic_policy: str = setting(
        "block",
        "--slow-topic-policy",
        "When a subscriber's backlog reaches --slow-topic-limit: 'block' stops "
        "reading from the topic's publishers until every backlog is back under 90% "
        "of the limit (past twice the limit the oldest are dropped), 'drop-oldest' "
        "drops the subscriber's oldest held-back message, 'disconnect' ends its "
        "session with an ERROR. One of: block, drop-oldest, disconnect.",
        checks=[one_of("block", "drop-oldest", "disconnect")],
        metavar="block|drop-oldest|disconnect",
    )
    stream_max_count: int = setting(
        100_000,
        "--stream-max-count",
        "Most messages a /stream/ destination keeps; the oldest go first (0 = no limit).",
        checks=[non_negative],
        metavar="N",
    )
    stream_max_bytes: int = setting(
        64 * 1024 * 1024,
        "--stream-max-bytes",
        "Most bytes a /stream/ destination keeps, counted as for queues (0 = no limit).",
        checks=[non_negative],
        metavar="BYTES",
    )
    stream_max_age: float = setting(
        0.0,
        "--stream-max-age",
        "Seconds a /stream/ destination keeps a message (0 = no limit).",
        checks=[non_negative],
        metavar="SECONDS",
    )
    stream_limits: list[str] = repeatable(
        [],
        "--stream-limit",
        "Limits for the streams a pattern matches, instead of the --stream-max-* ones: "
        "PATTERN:count=N:bytes=B:age=SECONDS (each part optional; * matches within a "
        "path segment, ** anything), e.g. /stream/prices.*:count=1000. The first match wins.",
        checks=[_stream_limits],
        metavar="PATTERN:LIMITS",
    )
    max_scheduled_messages: int = setting(
        100_000,
        "--max-scheduled-messages",
        "Most messages held back by AMQ_SCHEDULED_DELAY at once; a SEND past it gets "
        "an ERROR (0 = no limit).",
        checks=[non_negative],
        metavar="N",
    )
    app_prefix: str = setting(
        "",
        "--app-prefix",
        "Destinations under this prefix (e.g. /app/, Spring's convention) go to "
        "the embedding application's handlers (stomptw.application), not to a "
        "queue or topic. Empty: off.",
        checks=[_app_prefix],
        metavar="PREFIX",
    )
    slow_topic_timeout: float = setting(
        30.0,
        "--slow-topic-timeout",
        "With --slow-topic-policy block: seconds a subscriber may stay at "
        "--slow-topic-limit (holding its publishers blocked) before it is "
        "disconnected as a slow consumer; 0 means never.",
        checks=[non_negative],
        metavar="SECONDS",
    )
