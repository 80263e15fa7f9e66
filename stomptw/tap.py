"""
The ``twistd stomptw`` command line: options and ``makeService``.
"""

from __future__ import annotations

from twisted.python import usage

from stomptw.config import DEFAULT_TCP, DEFAULT_WS, BrokerConfig
from stomptw.frame import Limits

__all__ = ["Options", "makeService", "config_from_options"]

_DEFAULTS = BrokerConfig()
_LIMITS = Limits()


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _heartbeat(value: str) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError("expected two integers in milliseconds, e.g. 10000,10000")
    return int(parts[0]), int(parts[1])


#: Configuration field names as the command line spells them, for errors.
_OPTION_NAMES = {
    "ws_max_message_size": "--ws-max-message-size",
    "ws_open_handshake_timeout": "--ws-handshake-timeout",
    "ws_close_handshake_timeout": "--ws-close-handshake-timeout",
    "ws_ping_interval": "--ws-ping-interval",
    "ws_ping_timeout": "--ws-ping-timeout",
    "heartbeat_grace": "--heartbeat-grace",
    "login_timeout": "--login-timeout",
    "close_linger": "--close-linger",
    "default_prefetch": "--prefetch",
    "max_frame_size": "--max-frame-size",
    "max_header_line": "--max-header-line",
    "max_body_size": "--max-body-size",
    "max_headers": "--max-headers",
    "max_redeliveries": "--max-redeliveries",
    "dead_letter_queue": "--dead-letter-queue",
    "default_ttl_ms": "--default-ttl",
    "max_queue_length": "--max-queue-length",
    "max_queue_bytes": "--max-queue-bytes",
    "write_high_water": "--write-high-water",
    "slow_topic_limit": "--slow-topic-limit",
    "slow_topic_policy": "--slow-topic-policy",
    "slow_topic_timeout": "--slow-topic-timeout",
    "store_sync": "--store-sync",
    "overflow": "--overflow",
    "store": "--store",
    "max_transaction_bytes": "--max-transaction-bytes",
    "max_connections": "--max-connections",
}


class Options(usage.Options):
    """Options of ``twistd stomptw``."""

    synopsis = "[options]"
    longdesc = (
        "Run the stomptw STOMP broker. With no options it serves STOMP over TCP on "
        f"{DEFAULT_TCP} and STOMP over WebSocket on {DEFAULT_WS} at the path /ws. "
        "Listeners take Twisted endpoint strings (see 'Twisted endpoint strings' in "
        "the Twisted documentation), e.g. tcp:61613, tcp:61613:interface=0.0.0.0, "
        "ssl:61614:privateKey=key.pem:certKey=cert.pem."
    )

    optFlags = [
        ["no-tcp", None, "Do not listen for STOMP over TCP."],
        ["no-ws", None, "Do not listen for STOMP over WebSocket."],
        [
            "no-examples",
            None,
            "Do not serve the example pages at / of the WebSocket listener.",
        ],
        [
            "no-gc-freeze",
            None,
            "Do not gc.freeze() the objects alive once the broker is ready (doing so keeps "
            "them out of every later full garbage collection).",
        ],
        [
            "dead-letter-expired",
            None,
            "Move expired messages to the dead-letter queue instead of dropping them.",
        ],
    ]

    optParameters = [
        ["ws-path", None, _DEFAULTS.ws_path, "URL path of the WebSocket endpoint."],
        [
            "max-connections",
            None,
            _DEFAULTS.max_connections,
            "Most connections at once on each --tcp and each --ws listener, counted "
            "separately (0 = no limit). Over it a STOMP connection gets an ERROR frame "
            "and is closed, a WebSocket handshake gets HTTP 503. Raise the file "
            "descriptor limit (ulimit -n, LimitNOFILE) to match.",
            int,
        ],
        [
            "heartbeat",
            None,
            f"{_DEFAULTS.heartbeat_send_ms},{_DEFAULTS.heartbeat_receive_ms}",
            "The broker's heart-beat offer 'sx,sy' in milliseconds: floors on the "
            "negotiated interval it sends beats at and on the one it asks clients "
            "to send at; 0 turns either direction off.",
            _heartbeat,
        ],
        [
            "heartbeat-grace",
            None,
            _DEFAULTS.heartbeat_grace,
            "Close a connection when nothing arrived for the negotiated client "
            "heart-beat interval times this factor.",
            float,
        ],
        [
            "login-timeout",
            None,
            _DEFAULTS.login_timeout,
            "Seconds a new connection has to send CONNECT.",
            _non_negative_float,
        ],
        [
            "close-linger",
            None,
            _DEFAULTS.close_linger,
            "Seconds to wait for a client to close after an ERROR or DISCONNECT.",
            _non_negative_float,
        ],
        [
            "prefetch",
            None,
            _DEFAULTS.default_prefetch,
            "Default prefetch-count of client-ack subscriptions (0 = no limit).",
            int,
        ],
        [
            "max-frame-size",
            None,
            _LIMITS.max_frame_size,
            "Largest frame accepted, in bytes, command to NUL inclusive.",
            _positive_int,
        ],
        [
            "max-body-size",
            None,
            _LIMITS.max_body_size,
            "Largest frame body accepted, in bytes.",
            _positive_int,
        ],
        [
            "max-headers",
            None,
            _LIMITS.max_headers,
            "Most header lines accepted in one frame.",
            _positive_int,
        ],
        [
            "max-header-line",
            None,
            _LIMITS.max_header_line,
            "Longest header line (or command line) accepted, in bytes.",
            _positive_int,
        ],
        [
            "ws-max-message-size",
            None,
            _DEFAULTS.ws_max_message_size,
            "Largest WebSocket message or frame, in bytes, before the connection is "
            "closed with code 1009 (0 = the larger of 64 MiB and 4 x --max-frame-size).",
            int,
        ],
        [
            "ws-handshake-timeout",
            None,
            _DEFAULTS.ws_open_handshake_timeout,
            "Seconds allowed for the WebSocket opening handshake (and for an HTTP "
            "request on that listener to stall before it is dropped).",
            _non_negative_float,
        ],
        [
            "ws-ping-interval",
            None,
            _DEFAULTS.ws_ping_interval,
            "Seconds between WebSocket pings on a connection (0 = off).",
            _non_negative_float,
        ],
        [
            "ws-ping-timeout",
            None,
            _DEFAULTS.ws_ping_timeout,
            "Seconds to wait for a WebSocket pong before dropping the connection.",
            _non_negative_float,
        ],
        [
            "store",
            None,
            _DEFAULTS.store,
            "Message store: 'sqlite' (persistent messages survive restarts) or "
            "'memory' (nothing does).",
        ],
        [
            "data-dir",
            None,
            _DEFAULTS.data_dir,
            "Directory of the SQLite message store (created if missing; relative "
            "paths are under the working directory).",
        ],
        [
            "store-sync",
            None,
            _DEFAULTS.store_sync,
            "'full': persistent messages are on disk (fsync) before their RECEIPT; "
            "'normal': they survive a broker crash but perhaps not a power loss.",
        ],
        [
            "max-redeliveries",
            None,
            _DEFAULTS.max_redeliveries,
            "A queue message returned more times than this goes to its dead-letter "
            "queue (-1 = never).",
            int,
        ],
        [
            "dead-letter-queue",
            None,
            _DEFAULTS.dead_letter_queue,
            "Dead-letter queue name; {name} is the original destination's name "
            "without /queue/ or /topic/. Empty: drop dead messages.",
        ],
        [
            "default-ttl",
            None,
            _DEFAULTS.default_ttl_ms,
            "Milliseconds after which messages sent without an expires header expire (0 = never).",
            int,
        ],
        [
            "max-queue-length",
            None,
            _DEFAULTS.max_queue_length,
            "Most messages a queue holds, waiting and unacknowledged (0 = no limit).",
            int,
        ],
        [
            "max-queue-bytes",
            None,
            _DEFAULTS.max_queue_bytes,
            "Most bytes a queue holds: bodies and headers plus 512 bytes per "
            "message (0 = no limit).",
            int,
        ],
        [
            "overflow",
            None,
            _DEFAULTS.overflow,
            "When a queue is full: 'block' stops reading from its producers until "
            "there is room, 'reject' answers their SEND with an ERROR.",
        ],
        [
            "write-high-water",
            None,
            _DEFAULTS.write_high_water,
            "Bytes of unsent output per connection above which it is handed no "
            "more messages until the buffer drains.",
            _positive_int,
        ],
        [
            "slow-topic-limit",
            None,
            _DEFAULTS.slow_topic_limit,
            "Topic messages held back per subscriber that cannot take them yet.",
            _positive_int,
        ],
        [
            "slow-topic-policy",
            None,
            _DEFAULTS.slow_topic_policy,
            "When a subscriber's backlog reaches --slow-topic-limit: 'block' stops "
            "reading from the topic's publishers until every backlog is back under 90% "
            "of the limit (past twice the limit the oldest are dropped), 'drop-oldest' "
            "drops the subscriber's oldest held-back message, 'disconnect' ends its "
            "session with an ERROR. One of: block, drop-oldest, disconnect.",
        ],
        [
            "slow-topic-timeout",
            None,
            _DEFAULTS.slow_topic_timeout,
            "With --slow-topic-policy block: seconds a subscriber may stay at "
            "--slow-topic-limit (holding its publishers blocked) before it is "
            "disconnected as a slow consumer; 0 means never.",
            _non_negative_float,
        ],
        [
            "admin-token-file",
            None,
            _DEFAULTS.admin_token_file,
            "A file holding the bearer token that the admin API's POST and DELETE "
            "endpoints require (without it they are refused).",
        ],
        [
            "max-transaction-bytes",
            None,
            _DEFAULTS.max_transaction_bytes,
            "Most bytes of messages a connection's open transactions hold before "
            "the SEND is refused with an ERROR (0 = no limit).",
            int,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["tcp"] = []
        self["ws"] = []
        self["allowed-origins"] = []
        self["admin"] = []

    def opt_tcp(self, endpoint: str) -> None:
        """Listen for STOMP over TCP on this endpoint string (repeatable; default tcp:61613:interface=127.0.0.1)."""  # noqa: E501
        self["tcp"].append(endpoint)

    def opt_allowed_origins(self, patterns: str) -> None:
        """Browser origins allowed to open WebSocket sessions besides the same host and loopback pages: comma-separated shell-style patterns such as https://*.example.com; * allows every origin (repeatable)."""  # noqa: E501
        self["allowed-origins"].extend(p.strip() for p in patterns.split(",") if p.strip())

    def opt_ws(self, endpoint: str) -> None:
        """Listen for STOMP over WebSocket (HTTP) on this endpoint string (repeatable; default tcp:15674:interface=127.0.0.1)."""  # noqa: E501
        self["ws"].append(endpoint)

    def opt_admin(self, endpoint: str) -> None:
        """Serve the admin HTTP API and Prometheus metrics on this endpoint string, e.g. tcp:15670:interface=127.0.0.1 (repeatable; off by default; loopback only unless you put it elsewhere)."""  # noqa: E501
        self["admin"].append(endpoint)

    def postOptions(self) -> None:
        if self["no-tcp"] and self["tcp"]:
            raise usage.UsageError("--no-tcp and --tcp contradict each other")
        if self["no-ws"] and self["ws"]:
            raise usage.UsageError("--no-ws and --ws contradict each other")
        try:
            self.config = config_from_options(self)
        except ValueError as e:
            message = str(e)
            for name, option in _OPTION_NAMES.items():
                message = message.replace(name, option)
            raise usage.UsageError(message) from None
        if self.config.admin_token_file:
            from stomptw.admin import load_token

            try:
                load_token(self.config.admin_token_file)
            except ValueError as e:
                raise usage.UsageError(f"--admin-token-file: {e}") from None


def config_from_options(options: usage.Options) -> BrokerConfig:
    """Build a :class:`BrokerConfig` from parsed :class:`Options`."""
    tcp = [] if options["no-tcp"] else (options["tcp"] or [DEFAULT_TCP])
    ws = [] if options["no-ws"] else (options["ws"] or [DEFAULT_WS])
    heartbeat = options["heartbeat"]
    if isinstance(heartbeat, str):  # usage.Options leaves defaults uncoerced
        heartbeat = _heartbeat(heartbeat)
    send_ms, receive_ms = heartbeat
    return BrokerConfig(
        tcp_endpoints=tcp,
        ws_endpoints=ws,
        ws_path=options["ws-path"],
        max_connections=options["max-connections"],
        limits=Limits(
            max_frame_size=options["max-frame-size"],
            max_headers=options["max-headers"],
            max_header_line=options["max-header-line"],
            max_body_size=options["max-body-size"],
        ),
        heartbeat_send_ms=send_ms,
        heartbeat_receive_ms=receive_ms,
        heartbeat_grace=options["heartbeat-grace"],
        login_timeout=options["login-timeout"],
        close_linger=options["close-linger"],
        default_prefetch=options["prefetch"],
        ws_open_handshake_timeout=options["ws-handshake-timeout"],
        ws_ping_interval=options["ws-ping-interval"],
        ws_ping_timeout=options["ws-ping-timeout"],
        ws_max_message_size=options["ws-max-message-size"],
        examples=not options["no-examples"],
        allowed_origins=options["allowed-origins"],
        store=options["store"],
        data_dir=options["data-dir"],
        store_sync=options["store-sync"],
        max_redeliveries=options["max-redeliveries"],
        dead_letter_queue=options["dead-letter-queue"],
        dead_letter_expired=bool(options["dead-letter-expired"]),
        default_ttl_ms=options["default-ttl"],
        max_queue_length=options["max-queue-length"],
        max_queue_bytes=options["max-queue-bytes"],
        overflow=options["overflow"],
        write_high_water=options["write-high-water"],
        slow_topic_limit=options["slow-topic-limit"],
        slow_topic_policy=options["slow-topic-policy"],
        slow_topic_timeout=options["slow-topic-timeout"],
        max_transaction_bytes=options["max-transaction-bytes"],
        admin_endpoints=list(options["admin"]),
        admin_token_file=options["admin-token-file"],
    )


def makeService(options: Options):
    """Called by twistd: the broker service for these options."""
    from stomptw.service import makeService as make

    service = make(options.config)
    service.freeze_heap_when_ready = not options["no-gc-freeze"]
    return service
