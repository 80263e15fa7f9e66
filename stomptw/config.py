"""
The broker's configuration: one typed object with documented defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stomptw.frame import Limits

__all__ = ["BrokerConfig", "DEFAULT_TCP", "DEFAULT_WS"]

#: STOMP over TCP, loopback only, on the port RabbitMQ and ActiveMQ users know.
DEFAULT_TCP = "tcp:61613:interface=127.0.0.1"
#: STOMP over WebSocket, loopback only, on RabbitMQ Web-STOMP's port.
DEFAULT_WS = "tcp:15674:interface=127.0.0.1"

SUPPORTED_VERSIONS = ("1.2", "1.1", "1.0")


@dataclass
class BrokerConfig:
    """
    Everything that can be set on a broker.

    Durations are in seconds unless the name says milliseconds.

    :ivar tcp_endpoints: Twisted server endpoint strings for STOMP over TCP.
    :ivar ws_endpoints: endpoint strings for the HTTP/WebSocket listener.
    :ivar ws_path: the URL path of the WebSocket endpoint on that listener.
    :ivar max_connections: the most connections at once on each STOMP and
        each WebSocket listener, counted per listener (the admin listener is
        not limited); 0 means no limit. Over it, a STOMP connection gets an
        ERROR frame and is closed, a WebSocket handshake is refused with HTTP
        503. A STOMP connection counts from when it is accepted, a WebSocket
        connection from when its handshake is accepted; see
        :mod:`stomptw.listeners`.
    :ivar limits: frame size, header count, header line and body limits.
    :ivar heartbeat_send_ms: the shortest interval at which the broker sends
        heart-beats (its ``sx``); 0 means it never offers to send them.
    :ivar heartbeat_receive_ms: the shortest interval at which the broker asks
        clients to send heart-beats (its ``sy``); 0 means it never asks.
    :ivar heartbeat_grace: a connection is closed when nothing arrived for the
        negotiated client interval times this factor.
    :ivar login_timeout: a connection that has not completed CONNECT within
        this many seconds is closed.
    :ivar close_linger: after an ERROR or DISCONNECT the broker stops
        sending and waits this long for the client to close before it drops
        the connection itself.
    :ivar default_prefetch: the most unacknowledged messages per
        subscription in the client ack modes when SUBSCRIBE has no
        ``prefetch-count``; 0 means no limit.
    :ivar server_name: sent in CONNECTED's ``server`` header.
    :ivar ws_open_handshake_timeout: seconds allowed for the WebSocket
        opening handshake; also how long an HTTP request on the WebSocket
        listener may stall (nothing received) before it is dropped.
    :ivar ws_close_handshake_timeout: seconds allowed for the closing
        handshake before the TCP connection is dropped.
    :ivar ws_ping_interval: seconds between WebSocket pings (sent whatever
        the traffic); 0 turns pings off.
    :ivar ws_ping_timeout: seconds to wait for a pong before dropping the
        connection.
    :ivar ws_max_message_size: the largest WebSocket message (and frame) a
        client may send before Autobahn closes the connection with code 1009;
        also the largest the broker sends (a MESSAGE over it, which the
        minimum below rules out, ends that session with an ERROR). Incoming
        data streams into the STOMP parser, whose limits apply first and are
        answered with an ERROR frame; this is the outer bound. 0 means
        the larger of 64 MiB and four times ``limits.max_frame_size``. It
        must leave room for the largest MESSAGE the broker can build from an
        accepted SEND (twice the frame limit, as escaping may double headers).
    :ivar examples: serve the live example pages (chat, work queue, frame
        inspector) at ``/`` of the WebSocket listener; off, ``/`` is a
        one-line text page.
    :ivar allowed_origins: browser origins allowed to open WebSocket sessions
        besides the same host and loopback pages (shell-style patterns such as
        ``https://*.example.com``; ``*`` allows every origin).
    :ivar store: ``"sqlite"`` (persistent messages survive restarts) or
        ``"memory"`` (nothing does).
    :ivar data_dir: the directory of the SQLite store, relative to the
        working directory unless absolute.
    :ivar store_sync: ``"full"``: a persistent message is on disk (fsync)
        before it is acknowledged; ``"normal"``: it survives a crash of the
        broker but perhaps not of the machine.
    :ivar max_redeliveries: a queue message returned (NACKed, or left
        unacknowledged by a subscriber that went away) more times than this
        goes to its dead-letter queue; -1 means never.
    :ivar dead_letter_queue: where dead messages go; ``{name}`` stands for
        the original destination without its ``/queue/`` or ``/topic/``
        prefix. Empty: dead messages are dropped (and counted).
    :ivar dead_letter_expired: expired messages go to the dead-letter queue
        too, instead of being dropped (and counted).
    :ivar default_ttl_ms: messages sent without ``expires`` expire this many
        milliseconds after they arrive; 0 means never.
    :ivar expiry_interval: seconds between sweeps that take expired messages
        out of queues nobody consumes from.
    :ivar max_queue_length: the most messages a queue holds (waiting and
        unacknowledged); 0 means no count limit.
    :ivar max_queue_bytes: the most bytes a queue holds: each message counts
        its body and headers plus a fixed overhead; 0 means no limit.
    :ivar overflow: what happens when a producer sends to a full queue:
        ``"block"`` (the broker stops reading from the producer's connection
        until the queue has room) or ``"reject"`` (an ERROR for the SEND).
    :ivar write_high_water: bytes of unsent output per connection above which
        the broker stops handing it messages until the buffer drains.
    :ivar slow_topic_limit: topic messages held back per subscriber that
        cannot take them yet, before ``slow_topic_policy`` applies.
    :ivar slow_topic_policy: ``"block"`` (stop reading from the connections
        that publish to the topic until every backlog is back under 90% of the
        limit; past twice the limit, drop the oldest as ``"drop-oldest"``
        does), ``"drop-oldest"`` (drop the subscriber's oldest held-back
        message and count it) or ``"disconnect"`` (end its session with an
        ERROR).
    :ivar slow_topic_timeout: with ``slow_topic_policy`` ``"block"``, seconds
        a subscriber's backlog may stay at the limit (from reaching it until
        it is back under 90% of it) before the subscriber is disconnected as
        a slow consumer, which lets its publishers go; 0 means never.
    :ivar max_transaction_bytes: the most bytes of messages a connection's
        open transactions may hold (counted as for queues); 0 means no limit.
    :ivar admin_endpoints: endpoint strings for the admin HTTP API and
        Prometheus metrics (:mod:`stomptw.admin`); none by default. Keep it
        on loopback (``tcp:15670:interface=127.0.0.1``) unless something in
        front of it restricts access.
    :ivar admin_token_file: a file holding the bearer token that the admin
        API's mutating endpoints require; empty: those endpoints are off.
    """

    tcp_endpoints: list[str] = field(default_factory=lambda: [DEFAULT_TCP])
    ws_endpoints: list[str] = field(default_factory=lambda: [DEFAULT_WS])
    ws_path: str = "/ws"
    max_connections: int = 10_000
    limits: Limits = field(default_factory=Limits)
    heartbeat_send_ms: int = 1_000
    heartbeat_receive_ms: int = 1_000
    heartbeat_grace: float = 3.0
    login_timeout: float = 10.0
    close_linger: float = 5.0
    default_prefetch: int = 0
    server_name: str = ""
    ws_open_handshake_timeout: float = 10.0
    ws_close_handshake_timeout: float = 5.0
    ws_ping_interval: float = 30.0
    ws_ping_timeout: float = 30.0
    ws_max_message_size: int = 0
    examples: bool = True
    allowed_origins: list[str] = field(default_factory=list)
    store: str = "sqlite"
    data_dir: str = "stomptw-data"
    store_sync: str = "full"
    max_redeliveries: int = 6
    dead_letter_queue: str = "/queue/DLQ.{name}"
    dead_letter_expired: bool = False
    default_ttl_ms: int = 0
    expiry_interval: float = 1.0
    max_queue_length: int = 0
    max_queue_bytes: int = 64 * 1024 * 1024
    overflow: str = "block"
    write_high_water: int = 256 * 1024
    slow_topic_limit: int = 1000
    slow_topic_policy: str = "block"
    slow_topic_timeout: float = 30.0
    max_transaction_bytes: int = 16 * 1024 * 1024
    admin_endpoints: list[str] = field(default_factory=list)
    admin_token_file: str = ""

    def __post_init__(self) -> None:
        if not self.server_name:
            from stomptw import __version__

            self.server_name = f"stomptw/{__version__}"
        if not self.ws_path.startswith("/"):
            self.ws_path = "/" + self.ws_path
        if self.heartbeat_send_ms < 0 or self.heartbeat_receive_ms < 0:
            raise ValueError("heart-beat intervals must not be negative")
        if self.heartbeat_grace < 1.0:
            raise ValueError("heartbeat_grace must be at least 1.0")
        for name in (
            "login_timeout",
            "close_linger",
            "ws_open_handshake_timeout",
            "ws_close_handshake_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.ws_max_message_size < 0:
            raise ValueError("ws_max_message_size must not be negative")
        if self.ws_max_message_size and self.ws_max_message_size < self.min_ws_message_size:
            raise ValueError(
                f"ws_max_message_size must be at least {self.min_ws_message_size} bytes "
                "(twice max_frame_size plus room for the headers the broker adds), so that "
                "every message the broker accepts can be delivered over WebSocket"
            )
        if self.ws_ping_interval < 0 or self.ws_ping_timeout < 0 or self.default_prefetch < 0:
            raise ValueError(
                "ws_ping_interval, ws_ping_timeout and default_prefetch must not be negative"
            )

        choices = {
            "store": ("sqlite", "memory"),
            "store_sync": ("full", "normal"),
            "overflow": ("block", "reject"),
            "slow_topic_policy": ("block", "drop-oldest", "disconnect"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}")
        if self.max_redeliveries < -1:
            raise ValueError("max_redeliveries must be -1 (never) or more")
        for name in (
            "default_ttl_ms",
            "max_queue_length",
            "max_queue_bytes",
            "expiry_interval",
            "max_transaction_bytes",
            "slow_topic_timeout",
            "max_connections",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.write_high_water < 1 or self.slow_topic_limit < 1:
            raise ValueError("write_high_water and slow_topic_limit must be at least 1")
        if self.dead_letter_queue and not self.dead_letter_queue.startswith("/queue/"):
            raise ValueError("dead_letter_queue must name a /queue/ destination")

    @property
    def min_ws_message_size(self) -> int:
        """The smallest WebSocket message limit that fits every possible MESSAGE."""
        return 2 * self.limits.max_frame_size + 2 * self.limits.max_header_line + 4096

    @property
    def ws_message_limit(self) -> int:
        """The WebSocket message size limit in force (see ``ws_max_message_size``)."""
        if self.ws_max_message_size:
            return self.ws_max_message_size
        return max(64 * 1024 * 1024, 4 * self.limits.max_frame_size)
