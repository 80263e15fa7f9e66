"""
The broker's configuration: one typed object with documented defaults.

Each field of :class:`BrokerConfig` is declared once, with everything the
command line and the configuration file need to set it: its flag (whose long
name, without the dashes, is also its key in a ``--config`` TOML file), its
help text, how its value is read from text, and how it is validated. The
``twistd stomptw`` options (:mod:`stomptw.tap`), the configuration file
(:func:`load_config_file`), the errors about bad values and the generated
configuration reference all come from these declarations (:func:`settings`;
the declaring helpers are in :mod:`stomptw.settings`, reading a file and
the command line in :mod:`stomptw.configfile`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from stomptw.cluster.settings import ClusterSettings
from stomptw.deliveryconfig import DeliverySettings
from stomptw.frame import Limits
from stomptw.settings import (
    LIST,
    SWITCH,
    VALUE,
    InvalidSetting,
    Setting,
    at_least,
    nested,
    non_negative,
    one_of,
    part_of,
    positive,
    repeatable,
    setting,
    switch,
    toml_value,
)
from stomptw.settings import (
    declared as _declared,
)

__all__ = [
    "AuthSettings",
    "BrokerConfig",
    "ClusterSettings",
    "DeliverySettings",
    "ListenerSettings",
    "SessionSettings",
    "DEFAULT_TCP",
    "DEFAULT_WS",
    "InvalidSetting",
    "LIST",
    "SWITCH",
    "VALUE",
    "Setting",
    "settings",
    "endpoint_scope",
    "tcp_address",
    "toml_value",
]

#: STOMP over TCP, loopback only, on the port RabbitMQ and ActiveMQ users know.
DEFAULT_TCP = "tcp:61613:interface=127.0.0.1"
#: STOMP over WebSocket, loopback only, on RabbitMQ Web-STOMP's port.
DEFAULT_WS = "tcp:15674:interface=127.0.0.1"

SUPPORTED_VERSIONS = ("1.2", "1.1", "1.0")

# -- checks of the broker's own settings ------------------------------------------


def _heartbeat(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected two integers in milliseconds, e.g. 10000,10000, got {text!r}")
    return int(parts[0]), int(parts[1])


def _non_negative_pair(value: tuple[int, int]) -> None:
    if min(value) < 0:
        raise ValueError(f"must not be negative, got {','.join(map(str, value))}")


def _auth_kinds(descriptions: list[str]) -> None:
    from twisted.cred.strcred import InvalidAuthType, findCheckerFactory

    for description in descriptions:
        kind = description.split(":", 1)[0]
        try:
            findCheckerFactory(kind)
        except InvalidAuthType:
            raise ValueError(
                f"unknown kind {kind!r} (twistd stomptw --help-auth lists the kinds)"
            ) from None


def _vhost_names(names: list[str]) -> None:
    for name in names:
        if not name or name == "/" or "\n" in name or len(name) > 255:
            raise ValueError(f"a vhost name must be 1-255 characters, not '/', got {name!r}")


def endpoint_scope(description: str) -> str:
    """
    Where a server endpoint string listens, as far as the string says:
    ``"loopback"`` (an ``interface=`` of 127.x, ``::1`` or ``localhost``, or
    a UNIX socket), ``"network"`` (another address, or none, which means
    every address) or ``"unknown"`` (an inherited socket such as
    ``systemd:``, checked once it is bound).
    """
    if description.partition(":")[0].strip().lower() == "unix":
        return "loopback"
    address = tcp_address(description)
    if address is None or not address[1].isdigit():
        return "unknown"  # not TCP, or not a valid string: the option's own check says why
    return "loopback" if is_loopback_address(address[0]) else "network"


def tcp_address(description: str) -> tuple[str, str] | None:
    """
    The interface and the port (as written) that a ``tcp:``, ``tcp6:``,
    ``ssl:``/``tls:``, ``mtls:`` or ``reuseport:`` endpoint string binds; without
    ``interface=``, every address (``0.0.0.0``, or ``::`` for tcp6). None
    for other kinds of endpoint.
    """
    parts = description.replace("\\:", "\x00").split(":")
    kind = parts[0].strip().lower()
    if kind not in ("tcp", "tcp6", "ssl", "tls", "mtls", "reuseport"):
        return None
    port, interface = "", "::" if kind == "tcp6" else "0.0.0.0"
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        value = value.replace("\x00", ":").strip()
        if not sep and not port:
            port = name.strip()
        elif name.strip() == "port":
            port = value
        elif name.strip() == "interface":
            interface = value
    return interface, port


def is_loopback_address(address: str) -> bool:
    """Whether ``address`` (an IP or ``localhost``) is a loopback address."""
    value = address.strip().strip("[]").lower()
    if value.startswith("::ffff:"):
        value = value[len("::ffff:") :]
    return value.startswith("127.") or value in ("::1", "localhost")


@functools.cache
def settings() -> tuple[Setting, ...]:
    """
    Every declared setting of :class:`BrokerConfig`, in field order, with its
    fields and defaults bound. Fields with no declaration are left out (the
    tests insist there are none).
    """
    return _declared(BrokerConfig)


def _setting_of(name: str) -> Setting:
    return next(s for s in settings() if name in s.fields)


@dataclass
class ListenerSettings:
    """
    Where the broker listens and what it lets in: STOMP over TCP and
    WebSocket listeners, connection caps, browser origins, the WebSocket
    handshake, pings and message limit, the example pages, the admin API.
    """

    tcp_endpoints: list[str] = repeatable(
        [DEFAULT_TCP],
        "--tcp",
        "Listen for STOMP over TCP on this endpoint string",
        off="--no-tcp",
        off_help="Do not listen for STOMP over TCP.",
        metavar="ENDPOINT",
    )
    ws_endpoints: list[str] = repeatable(
        [DEFAULT_WS],
        "--ws",
        "Listen for STOMP over WebSocket (HTTP) on this endpoint string",
        off="--no-ws",
        off_help="Do not listen for STOMP over WebSocket.",
        metavar="ENDPOINT",
    )
    ws_path: str = setting(
        "/ws", "--ws-path", "URL path of the WebSocket endpoint.", metavar="PATH"
    )
    tls_min_version: str = setting(
        "1.2",
        "--tls-min-version",
        "Oldest TLS version the ssl: and mtls: listeners accept; older clients are "
        "refused in the handshake.",
        checks=[one_of("1.2", "1.3")],
        metavar="1.2|1.3",
    )
    max_connections_per_ip: int = setting(
        0,
        "--max-connections-per-ip",
        "Most connections at once from one client address on each --tcp and each "
        "--ws listener (0 = no limit). For listeners facing the internet; behind a "
        "proxy every connection comes from the proxy's address, so leave it off there.",
        checks=[non_negative],
        metavar="N",
    )
    max_connections: int = setting(
        10_000,
        "--max-connections",
        "Most connections at once on each --tcp and each --ws listener, counted "
        "separately (0 = no limit; the admin listener has none). Over it a STOMP "
        "connection gets an ERROR frame and is closed, a WebSocket handshake gets "
        "HTTP 503; a STOMP connection counts from when it is accepted, a WebSocket "
        "one from when its handshake is. Raise the file descriptor limit (ulimit -n, "
        "LimitNOFILE) to match.",
        checks=[non_negative],
        metavar="N",
    )
    examples: bool = switch(
        True,
        "--no-examples",
        "Do not serve the example pages (chat, work queue, frame inspector) at / of "
        "the WebSocket listener; / is then a one-line text page.",
    )
    allowed_origins: list[str] = repeatable(
        [],
        "--allowed-origins",
        "Browser origins allowed to open WebSocket sessions besides the same host and "
        "loopback pages: comma-separated shell-style patterns such as "
        "https://*.example.com; * allows every origin",
        split=",",
        metavar="PATTERNS",
    )
    ws_open_handshake_timeout: float = setting(
        10.0,
        "--ws-handshake-timeout",
        "Seconds allowed for the WebSocket opening handshake (and for an HTTP "
        "request on that listener to stall before it is dropped).",
        checks=[positive],
        metavar="SECONDS",
    )
    ws_close_handshake_timeout: float = setting(
        5.0,
        "--ws-close-handshake-timeout",
        "Seconds allowed for the WebSocket closing handshake before the TCP connection is dropped.",
        checks=[positive],
        metavar="SECONDS",
    )
    ws_compression: str = setting(
        "on",
        "--ws-compression",
        "Whether the WebSocket listener negotiates permessage-deflate with clients that "
        "offer it (on or off). Clients that do not offer it get uncompressed frames "
        "either way.",
        checks=[one_of("on", "off")],
        metavar="on|off",
    )
    ws_ping_interval: float = setting(
        30.0,
        "--ws-ping-interval",
        "Seconds between WebSocket pings on a connection, sent whatever the traffic (0 = off).",
        checks=[non_negative],
        metavar="SECONDS",
    )
    ws_ping_timeout: float = setting(
        30.0,
        "--ws-ping-timeout",
        "Seconds to wait for a WebSocket pong before dropping the connection.",
        checks=[non_negative],
        metavar="SECONDS",
    )
    ws_max_message_size: int = setting(
        0,
        "--ws-max-message-size",
        "Largest WebSocket message or frame, in bytes, before the connection is "
        "closed with code 1009 (0 = the larger of 64 MiB and 4 x --max-frame-size); "
        "also the largest the broker sends. Incoming data streams into the STOMP "
        "parser, whose limits apply first; this is the outer bound. It must leave "
        "room for the largest MESSAGE the broker builds from an accepted SEND (twice "
        "--max-frame-size plus twice --max-header-line plus 4096).",
        checks=[non_negative],
        metavar="BYTES",
    )
    admin_endpoints: list[str] = repeatable(
        [],
        "--admin",
        "Serve the admin HTTP API and Prometheus metrics on this endpoint string, "
        "e.g. tcp:15670:interface=127.0.0.1; off by default; keep it on loopback "
        "unless something in front of it restricts access",
        metavar="ENDPOINT",
    )
    admin_token_file: str = setting(
        "",
        "--admin-token-file",
        "A file holding the bearer token that the admin API's POST and DELETE "
        "endpoints require (without it they are refused).",
        metavar="FILE",
    )


@dataclass
class SessionSettings:
    """
    How each client session behaves: frame limits, heart-beats and timeouts,
    the close, prefetch, output buffering and transactions.
    """

    limits: Limits = nested(
        Limits,
        max_frame_size=Setting(
            "--max-frame-size",
            "Largest frame accepted, in bytes, command to NUL inclusive.",
            checks=(positive,),
            metavar="BYTES",
        ),
        max_headers=Setting(
            "--max-headers",
            "Most header lines accepted in one frame.",
            checks=(positive,),
            metavar="N",
        ),
        max_header_line=Setting(
            "--max-header-line",
            "Longest header line (or command line) accepted, in bytes.",
            checks=(positive,),
            metavar="BYTES",
        ),
        max_body_size=Setting(
            "--max-body-size",
            "Largest frame body accepted, in bytes.",
            checks=(positive,),
            metavar="BYTES",
        ),
    )
    heartbeat_send_ms: int = setting(
        1_000,
        "--heartbeat",
        "The broker's heart-beat offer 'sx,sy' in milliseconds: floors on the "
        "negotiated interval it sends beats at and on the one it asks clients "
        "to send at; 0 turns either direction off.",
        parse=_heartbeat,
        checks=[_non_negative_pair],
        metavar="SX,SY",
    )
    heartbeat_receive_ms: int = part_of("--heartbeat", 1_000)
    heartbeat_grace: float = setting(
        3.0,
        "--heartbeat-grace",
        "Close a connection when nothing arrived for the negotiated client "
        "heart-beat interval times this factor.",
        checks=[at_least(1.0)],
        metavar="FACTOR",
    )
    login_timeout: float = setting(
        10.0,
        "--login-timeout",
        "Seconds a new connection has to send CONNECT before it is closed.",
        checks=[positive],
        metavar="SECONDS",
    )
    log_level: str = setting(
        "info",
        "--log-level",
        "The least severe of the broker's own events that are logged: 'debug' adds a "
        "line for every connection opened; 'warn' leaves out the per-connection lines.",
        checks=[one_of("debug", "info", "warn", "error")],
        metavar="debug|info|warn|error",
    )
    log_connections_per_second: int = setting(
        100,
        "--log-connections-per-second",
        "At most this many per-connection log lines (session established, connection "
        "closed) a second; past it they are counted and summarized in one line "
        "(0 = no limit).",
        checks=[non_negative],
        metavar="N",
    )
    close_linger: float = setting(
        5.0,
        "--close-linger",
        "Seconds to wait for a client to close after an ERROR or DISCONNECT (the "
        "broker stops sending meanwhile) before the broker drops the connection.",
        checks=[positive],
        metavar="SECONDS",
    )
    default_prefetch: int = setting(
        0,
        "--prefetch",
        "Default prefetch-count of client-ack subscriptions: the most unacknowledged "
        "messages per subscription when SUBSCRIBE has no prefetch-count (0 = no limit).",
        checks=[non_negative],
        metavar="N",
    )
    server_name: str = setting(
        "", None, "Sent in CONNECTED's server header; empty: stomptw/VERSION."
    )
    write_high_water: int = setting(
        256 * 1024,
        "--write-high-water",
        "Bytes of unsent output per connection above which it is handed no "
        "more messages until the buffer drains.",
        checks=[positive],
        metavar="BYTES",
    )
    max_transaction_bytes: int = setting(
        16 * 1024 * 1024,
        "--max-transaction-bytes",
        "Most bytes of messages a connection's open transactions hold (counted as "
        "for queues) before the SEND is refused with an ERROR (0 = no limit).",
        checks=[non_negative],
        metavar="BYTES",
    )


@dataclass
class AuthSettings:
    """
    Who may connect and what they may do: the ``--auth`` checkers
    (:mod:`twisted.cred.strcred`), the permissions file, virtual hosts and
    the defences against guessing (docs/security.md).
    """

    auth: list[str] = repeatable(
        [],
        "--auth",
        "Log clients in with this twisted.cred checker, e.g. memory:alice:secret, "
        "users:FILE (a hashed users file, see stomptw-users), anonymous; "
        "--help-auth lists the kinds. Without it every session is anonymous, and "
        "only loopback listeners are allowed",
        metavar="KIND:ARGS",
        checks=[_auth_kinds],
    )
    allow_anonymous: bool = switch(
        False,
        "--allow-anonymous",
        "Accept sessions without authentication on listeners beyond loopback "
        "(without --auth the broker refuses to start on such a listener).",
    )
    permissions_file: str = setting(
        "",
        "--permissions",
        "A TOML file of read, write and create permissions per user and group "
        "(docs/security.md); re-read on SIGHUP. Without it every authenticated "
        "user may do everything.",
        metavar="FILE",
    )
    vhosts: list[str] = repeatable(
        [],
        "--vhost",
        "A virtual host besides the default '/', selected by CONNECT's host header, "
        "with destinations of its own",
        metavar="NAME",
        checks=[_vhost_names],
    )
    login_failure_delay: float = setting(
        1.0,
        "--login-failure-delay",
        "Seconds a refused login waits before its ERROR (slows password guessing).",
        checks=[non_negative],
        metavar="SECONDS",
    )
    max_failed_logins: int = setting(
        10,
        "--max-failed-logins",
        "Failed logins from one address within --failed-login-window after which "
        "its logins are refused unchecked until the window passes (0 = no limit).",
        checks=[non_negative],
        metavar="N",
    )
    failed_login_window: float = setting(
        60.0,
        "--failed-login-window",
        "Seconds over which --max-failed-logins counts failures.",
        checks=[positive],
        metavar="SECONDS",
    )


@dataclass
class BrokerConfig(
    ClusterSettings, AuthSettings, DeliverySettings, SessionSettings, ListenerSettings
):
    """
    Everything that can be set on a broker: the listener, session,
    delivery, authentication and cluster settings together (each group is a
    base class, so that related settings read together; the fields are this
    class's all the same).

    Durations are in seconds unless the name says milliseconds. Each field's
    declaration says what it does (its ``help``), its ``twistd stomptw`` flag
    and how it is validated; :func:`settings` lists them, and the
    configuration reference (docs/configuration.md) shows them. Invalid values
    raise :class:`InvalidSetting`.
    """

    def __post_init__(self) -> None:
        if not self.server_name:
            from stomptw import __version__

            self.server_name = f"stomptw/{__version__}"
        if not self.ws_path.startswith("/"):
            self.ws_path = "/" + self.ws_path
        for declared in settings():
            try:
                declared.check(declared.get(self))
            except ValueError as e:
                raise InvalidSetting(declared, str(e)) from None
        if not self.auth and not self.allow_anonymous:
            for name in ("tcp_endpoints", "ws_endpoints"):
                for description in getattr(self, name):
                    if endpoint_scope(description) == "network":
                        raise InvalidSetting(
                            _setting_of(name),
                            f"{description} listens beyond loopback, and the broker has no "
                            "--auth: anyone who reaches it could read and write every "
                            "destination. Configure authentication (--auth users:FILE, "
                            "--auth memory:USER:PASS; see docs/security.md), listen on "
                            "interface=127.0.0.1, or pass --allow-anonymous on purpose",
                        )
        if self.ws_max_message_size and self.ws_max_message_size < self.min_ws_message_size:
            raise InvalidSetting(
                _setting_of("ws_max_message_size"),
                f"must be at least {self.min_ws_message_size} bytes (twice the frame size "
                "limit plus room for the headers the broker adds), so that every message "
                "the broker accepts can be delivered over WebSocket, "
                f"got {self.ws_max_message_size}",
            )

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
