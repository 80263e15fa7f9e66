"""
The broker's configuration: one typed object with documented defaults.

Each field of :class:`BrokerConfig` is declared once, with everything the
command line and the configuration file need to set it: its flag (whose long
name, without the dashes, is also its key in a ``--config`` TOML file), its
help text, how its value is read from text, and how it is validated. The
``twistd stomptw`` options (:mod:`stomptw.tap`), the configuration file
(:func:`load_config_file`), the errors about bad values and the generated
configuration reference all come from these declarations (:func:`settings`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from stomptw.frame import Limits

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "BrokerConfig",
    "ConfigError",
    "DEFAULT_TCP",
    "DEFAULT_WS",
    "InvalidSetting",
    "LIST",
    "SWITCH",
    "VALUE",
    "Setting",
    "SettingValues",
    "config_from_values",
    "load_config_file",
    "origin_of",
    "settings",
    "toml_value",
]

#: STOMP over TCP, loopback only, on the port RabbitMQ and ActiveMQ users know.
DEFAULT_TCP = "tcp:61613:interface=127.0.0.1"
#: STOMP over WebSocket, loopback only, on RabbitMQ Web-STOMP's port.
DEFAULT_WS = "tcp:15674:interface=127.0.0.1"

SUPPORTED_VERSIONS = ("1.2", "1.1", "1.0")

#: The key of a field's declaration in its :func:`dataclasses.field` metadata.
_KEY = "stomptw.setting"

#: :attr:`Setting.kind` values.
VALUE, SWITCH, LIST = "value", "switch", "list"

#: A validation: returns if the value is acceptable, raises :class:`ValueError`
#: with the reason ("must be positive, got -1") if not.
Check = Callable[[Any], None]


# -- validations ----------------------------------------------------------------------


def positive(value: float) -> None:
    """Refuse zero and negative numbers."""
    if value <= 0:
        raise ValueError(f"must be positive, got {value!r}")


def non_negative(value: float) -> None:
    """Refuse negative numbers."""
    if value < 0:
        raise ValueError(f"must not be negative, got {value!r}")


def at_least(minimum: float, reason: str = "") -> Check:
    """A check refusing numbers below ``minimum`` (with ``reason`` as the message)."""

    def check(value: float) -> None:
        if value < minimum:
            raise ValueError(f"{reason or f'must be at least {minimum}'}, got {value!r}")

    return check


def one_of(*choices: str) -> Check:
    """A check refusing anything but ``choices``."""

    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")

    return check


def _dead_letter_queue(value: str) -> None:
    if value and not value.startswith("/queue/"):
        raise ValueError(f"must name a /queue/ destination (or be empty), got {value!r}")


def _heartbeat(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected two integers in milliseconds, e.g. 10000,10000, got {text!r}")
    return int(parts[0]), int(parts[1])


def _non_negative_pair(value: tuple[int, int]) -> None:
    if min(value) < 0:
        raise ValueError(f"must not be negative, got {','.join(map(str, value))}")


# -- declarations ---------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """``value`` as it is written in TOML (for examples and error messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # TOML's basic strings escape as JSON does
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


@dataclass(frozen=True)
class Setting:
    """
    One setting as the command line and the configuration file know it.

    Declared on a :class:`BrokerConfig` field with :func:`setting`,
    :func:`switch`, :func:`repeatable`, :func:`nested` (and :func:`part_of`);
    :func:`settings` returns the declarations bound to their fields.

    :ivar flag: the command-line flag, such as ``"--max-connections"``; None
        for a field only code sets.
    :ivar help: what the setting does, for ``--help`` and the reference.
    :ivar kind: ``"value"`` (a value for one or more fields), ``"switch"``
        (a flag that turns the field's default around) or ``"list"`` (a
        repeatable option; each occurrence adds to the list).
    :ivar parse: reads the command-line text of a value that is not a plain
        ``int``, ``float`` or ``str`` (which the default's type reads).
    :ivar checks: validations of the value (see :data:`Check`).
    :ivar off: for a list, the flag that empties it (``"--no-tcp"``).
    :ivar off_help: what ``off`` does.
    :ivar split: for a list, the separator of several items in one occurrence.
    :ivar metavar: what the value is called in the reference.
    :ivar fields: the fields it sets, dotted for fields of a nested object
        (``"limits.max_frame_size"``); bound by :func:`settings`.
    :ivar default: the field's default (a tuple for several fields); bound by
        :func:`settings`.
    """

    flag: str | None
    help: str
    kind: str = VALUE
    parse: Callable[[str], Any] | None = None
    checks: tuple[Check, ...] = ()
    off: str | None = None
    off_help: str = ""
    split: str | None = None
    metavar: str = "VALUE"
    fields: tuple[str, ...] = ()
    default: Any = None

    @property
    def key(self) -> str | None:
        """The long option name without dashes: its name in ``Options`` and its TOML key."""
        return self.flag[2:] if self.flag else None

    @property
    def off_key(self) -> str | None:
        """``off`` without dashes, if there is one."""
        return self.off[2:] if self.off else None

    @property
    def expected(self) -> str:
        """What a value in the configuration file has to be, for errors."""
        if self.kind == SWITCH:
            return "true or false"
        if self.kind == LIST:
            return "an array of strings"
        if self.parse is not None or isinstance(self.default, str):
            return "a string"
        return "an integer" if isinstance(self.default, int) else "a number"

    def text(self, value: Any) -> str:
        """``value`` spelled as on the command line (``1000,1000`` for a pair)."""
        if isinstance(value, tuple):
            return ",".join(str(part) for part in value)
        return str(value)

    def from_text(self, text: str) -> Any:
        """
        The value of one command-line occurrence (for a list, the items it
        adds). Raises :class:`ValueError` saying what was expected.
        """
        if self.kind == LIST:
            if self.split is None:
                return [text]
            return [item.strip() for item in text.split(self.split) if item.strip()]
        if self.parse is not None:
            return self.parse(text)
        if isinstance(self.default, str):
            return text
        wanted = int if isinstance(self.default, int) else float
        try:
            return wanted(text)
        except ValueError:
            raise ValueError(f"expected {self.expected}, got {text!r}") from None

    def from_toml(self, raw: Any) -> Any:
        """
        The value of this setting's key in a configuration file. Raises
        :class:`ValueError` if it has the wrong type.
        """
        if self.kind == SWITCH:
            if isinstance(raw, bool):
                return raw
        elif self.kind == LIST:
            if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
                return [item for text in raw for item in self.from_text(text)]
        elif self.parse is not None or isinstance(self.default, str):
            if isinstance(raw, str):
                return self.from_text(raw)
        elif isinstance(raw, bool):
            pass  # TOML's booleans are no numbers, though Python's are ints
        elif isinstance(self.default, float):
            if isinstance(raw, int | float):
                return float(raw)
        elif isinstance(raw, int):
            return raw
        raise ValueError(f"expected {self.expected}, got {toml_value(raw)}")

    def toml_lines(self) -> dict[str, str]:
        """Keys to an example line for the configuration file (the defaults)."""
        if not self.key:
            return {}
        if self.kind == SWITCH:
            lines = {self.key: f"{self.key} = true"}
        elif self.parse is not None:
            lines = {self.key: f"{self.key} = {toml_value(self.text(self.default))}"}
        else:
            lines = {self.key: f"{self.key} = {toml_value(self.default)}"}
        if self.off_key:
            lines[self.off_key] = f"{self.off_key} = true"
        return lines

    def check(self, value: Any) -> None:
        """Run the validations; raises :class:`ValueError` with the reason."""
        for check in self.checks:
            check(value)

    def get(self, config: Any) -> Any:
        """This setting's value in ``config`` (for a switch: whether it is on)."""
        values = []
        for path in self.fields:
            target = config
            for name in path.split("."):
                target = getattr(target, name)
            values.append(target)
        value = tuple(values) if len(values) > 1 else values[0]
        return value != self.default if self.kind == SWITCH else value

    def assign(self, arguments: dict[str, Any], value: Any) -> None:
        """
        Put ``value`` into ``arguments``, keyword arguments of
        :class:`BrokerConfig` (a nested object's arguments as a dict).
        """
        if self.kind == SWITCH:
            value = not self.default if value else self.default
        parts = value if len(self.fields) > 1 else (value,)
        for path, part in zip(self.fields, parts, strict=True):
            *outer, name = path.split(".")
            target = arguments
            for step in outer:
                target = target.setdefault(step, {})
            target[name] = part


@dataclass(frozen=True)
class _Nested:
    """The declaration of a field holding an object whose fields are settings."""

    cls: type
    settings: dict[str, Setting]


@dataclass(frozen=True)
class _PartOf:
    """The declaration of a field set by another field's setting."""

    flag: str


#: How the file reads an ``off`` key (such as ``no-tcp``): like a switch.
_SWITCH = Setting(None, "", kind=SWITCH)


def _field(default: Any, declaration: object) -> Any:
    metadata = {_KEY: declaration}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def setting(
    default: Any,
    flag: str | None,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    checks: Iterable[Check] = (),
) -> Any:
    """
    A :class:`BrokerConfig` field with a value set by ``flag`` (None: a field
    only code sets, explicitly not on the command line or in the file).
    """
    return _field(default, Setting(flag, help, parse=parse, checks=tuple(checks)))


def switch(default: bool, flag: str, help: str) -> Any:
    """A boolean field whose ``flag`` turns its default around."""
    return _field(default, Setting(flag, help, kind=SWITCH))


def repeatable(
    default: list[str],
    flag: str,
    help: str,
    *,
    off: str | None = None,
    off_help: str = "",
    split: str | None = None,
    metavar: str = "VALUE",
) -> Any:
    """
    A list field: each ``flag`` adds to it (``split`` separates several items
    in one), replacing the default; ``off`` empties it. ``--help`` adds
    "(repeatable; default ...)" to ``help``.
    """
    declaration = Setting(
        flag, help, kind=LIST, off=off, off_help=off_help, split=split, metavar=metavar
    )
    return _field(default, declaration)


def nested(cls: type, **declarations: Setting) -> Any:
    """A field holding a ``cls`` whose fields are set by ``declarations`` (by name)."""
    return field(default_factory=cls, metadata={_KEY: _Nested(cls, declarations)})


def part_of(flag: str, default: Any) -> Any:
    """A field set, together with the one that declares ``flag``, by that setting."""
    return _field(default, _PartOf(flag))


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@functools.cache
def settings() -> tuple[Setting, ...]:
    """
    Every declared setting of :class:`BrokerConfig`, in field order, with its
    fields and defaults bound. Fields with no declaration are left out (the
    tests insist there are none).
    """
    fields = dataclasses.fields(BrokerConfig)
    parts: dict[str, list[dataclasses.Field]] = {}
    for f in fields:
        declaration = f.metadata.get(_KEY)
        if isinstance(declaration, _PartOf):
            parts.setdefault(declaration.flag, []).append(f)
    found: list[Setting] = []
    for f in fields:
        declaration = f.metadata.get(_KEY)
        if isinstance(declaration, Setting):
            group = [f, *parts.pop(declaration.flag, [])]
            defaults = tuple(_default(member) for member in group)
            found.append(
                dataclasses.replace(
                    declaration,
                    fields=tuple(member.name for member in group),
                    default=defaults if len(group) > 1 else defaults[0],
                )
            )
        elif isinstance(declaration, _Nested):
            for inner in dataclasses.fields(declaration.cls):
                if inner.name in declaration.settings:
                    found.append(
                        dataclasses.replace(
                            declaration.settings[inner.name],
                            fields=(f"{f.name}.{inner.name}",),
                            default=_default(inner),
                        )
                    )
    if parts:
        raise TypeError(f"part_of() names flags that no field declares: {sorted(parts)}")
    return tuple(found)


class InvalidSetting(ValueError):
    """
    :class:`BrokerConfig` refuses a value.

    :ivar setting: the :class:`Setting` of the field.
    :ivar reason: what is wrong (``"must be positive, got 0"``).
    """

    def __init__(self, setting: Setting, reason: str) -> None:
        super().__init__(f"{' and '.join(setting.fields)} {reason}")
        self.setting = setting
        self.reason = reason


def _setting_of(name: str) -> Setting:
    return next(s for s in settings() if name in s.fields)


@dataclass
class BrokerConfig:
    """
    Everything that can be set on a broker.

    Durations are in seconds unless the name says milliseconds. Each field's
    declaration says what it does (its ``help``), its ``twistd stomptw`` flag
    and how it is validated; :func:`settings` lists them, and the
    configuration reference (docs/configuration.md) shows them. Invalid values
    raise :class:`InvalidSetting`.
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
    ws_path: str = setting("/ws", "--ws-path", "URL path of the WebSocket endpoint.")
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
    )
    limits: Limits = nested(
        Limits,
        max_frame_size=Setting(
            "--max-frame-size",
            "Largest frame accepted, in bytes, command to NUL inclusive.",
            checks=(positive,),
        ),
        max_headers=Setting(
            "--max-headers", "Most header lines accepted in one frame.", checks=(positive,)
        ),
        max_header_line=Setting(
            "--max-header-line",
            "Longest header line (or command line) accepted, in bytes.",
            checks=(positive,),
        ),
        max_body_size=Setting(
            "--max-body-size", "Largest frame body accepted, in bytes.", checks=(positive,)
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
    )
    heartbeat_receive_ms: int = part_of("--heartbeat", 1_000)
    heartbeat_grace: float = setting(
        3.0,
        "--heartbeat-grace",
        "Close a connection when nothing arrived for the negotiated client "
        "heart-beat interval times this factor.",
        checks=[at_least(1.0)],
    )
    login_timeout: float = setting(
        10.0,
        "--login-timeout",
        "Seconds a new connection has to send CONNECT before it is closed.",
        checks=[positive],
    )
    close_linger: float = setting(
        5.0,
        "--close-linger",
        "Seconds to wait for a client to close after an ERROR or DISCONNECT (the "
        "broker stops sending meanwhile) before the broker drops the connection.",
        checks=[positive],
    )
    default_prefetch: int = setting(
        0,
        "--prefetch",
        "Default prefetch-count of client-ack subscriptions: the most unacknowledged "
        "messages per subscription when SUBSCRIBE has no prefetch-count (0 = no limit).",
        checks=[non_negative],
    )
    server_name: str = setting(
        "", None, "Sent in CONNECTED's server header; empty: stomptw/VERSION."
    )
    ws_open_handshake_timeout: float = setting(
        10.0,
        "--ws-handshake-timeout",
        "Seconds allowed for the WebSocket opening handshake (and for an HTTP "
        "request on that listener to stall before it is dropped).",
        checks=[positive],
    )
    ws_close_handshake_timeout: float = setting(
        5.0,
        "--ws-close-handshake-timeout",
        "Seconds allowed for the WebSocket closing handshake before the TCP "
        "connection is dropped.",
        checks=[positive],
    )
    ws_ping_interval: float = setting(
        30.0,
        "--ws-ping-interval",
        "Seconds between WebSocket pings on a connection, sent whatever the traffic "
        "(0 = off).",
        checks=[non_negative],
    )
    ws_ping_timeout: float = setting(
        30.0,
        "--ws-ping-timeout",
        "Seconds to wait for a WebSocket pong before dropping the connection.",
        checks=[non_negative],
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
    store: str = setting(
        "sqlite",
        "--store",
        "Message store: 'sqlite' (persistent messages survive restarts) or "
        "'memory' (nothing does).",
        checks=[one_of("sqlite", "memory")],
    )
    data_dir: str = setting(
        "stomptw-data",
        "--data-dir",
        "Directory of the SQLite message store (created if missing; relative "
        "paths are under the working directory).",
    )
    store_sync: str = setting(
        "full",
        "--store-sync",
        "'full': persistent messages are on disk (fsync) before their RECEIPT; "
        "'normal': they survive a broker crash but perhaps not a power loss.",
        checks=[one_of("full", "normal")],
    )
    max_redeliveries: int = setting(
        6,
        "--max-redeliveries",
        "A queue message returned (NACKed, or left unacknowledged by a subscriber "
        "that went away) more times than this goes to its dead-letter queue "
        "(-1 = never).",
        checks=[at_least(-1, "must be -1 (never) or more")],
    )
    dead_letter_queue: str = setting(
        "/queue/DLQ.{name}",
        "--dead-letter-queue",
        "Dead-letter queue name; {name} is the original destination's name "
        "without /queue/ or /topic/. Empty: drop dead messages (and count them).",
        checks=[_dead_letter_queue],
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
    )
    expiry_interval: float = setting(
        1.0,
        None,
        "Seconds between sweeps that take expired messages out of queues nobody "
        "consumes from.",
        checks=[non_negative],
    )
    max_queue_length: int = setting(
        0,
        "--max-queue-length",
        "Most messages a queue holds, waiting and unacknowledged (0 = no limit).",
        checks=[non_negative],
    )
    max_queue_bytes: int = setting(
        64 * 1024 * 1024,
        "--max-queue-bytes",
        "Most bytes a queue holds: bodies and headers plus 512 bytes per "
        "message (0 = no limit).",
        checks=[non_negative],
    )
    overflow: str = setting(
        "block",
        "--overflow",
        "When a queue is full: 'block' stops reading from its producers until "
        "there is room, 'reject' answers their SEND with an ERROR.",
        checks=[one_of("block", "reject")],
    )
    write_high_water: int = setting(
        256 * 1024,
        "--write-high-water",
        "Bytes of unsent output per connection above which it is handed no "
        "more messages until the buffer drains.",
        checks=[positive],
    )
    slow_topic_limit: int = setting(
        1000,
        "--slow-topic-limit",
        "Topic messages held back per subscriber that cannot take them yet.",
        checks=[positive],
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
    )
    slow_topic_timeout: float = setting(
        30.0,
        "--slow-topic-timeout",
        "With --slow-topic-policy block: seconds a subscriber may stay at "
        "--slow-topic-limit (holding its publishers blocked) before it is "
        "disconnected as a slow consumer; 0 means never.",
        checks=[non_negative],
    )
    max_transaction_bytes: int = setting(
        16 * 1024 * 1024,
        "--max-transaction-bytes",
        "Most bytes of messages a connection's open transactions hold (counted as "
        "for queues) before the SEND is refused with an ERROR (0 = no limit).",
        checks=[non_negative],
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
    )

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


# -- building a configuration from the command line and a file -------------------------


class ConfigError(ValueError):
    """A setting given on the command line or in a file is unusable; the message says where."""


@dataclass
class SettingValues:
    """
    Settings given in one place: values (as :meth:`Setting.from_text` or
    :meth:`Setting.from_toml` return them) by :attr:`Setting.key`.

    :ivar origin: the configuration file they come from; None for the
        command line.
    """

    values: dict[str, Any]
    origin: str | None = None

    def where(self, key: str) -> str:
        """How errors name ``key`` from here: ``--key``, or ``FILE: key``."""
        return f"{self.origin}: {key}" if self.origin else f"--{key}"


def origin_of(key: str | None, *sources: SettingValues) -> str:
    """How errors name setting ``key``: from the last of ``sources`` that gives it."""
    for source in reversed(sources):
        if key in source.values:
            return source.where(key)
    return f"--{key}"


def config_from_values(*sources: SettingValues) -> BrokerConfig:
    """
    A :class:`BrokerConfig` from settings given in several places, each
    overriding the ones before it (a configuration file, then the command
    line); fields given nowhere keep their defaults. Raises
    :class:`ConfigError` naming the option (or file and key) of a bad value.
    """
    by_key = {s.key: s for s in settings() if s.key}
    chosen: dict[str, Any] = {}
    for source in sources:
        for key, value in source.values.items():
            if key not in by_key:
                raise ConfigError(f"{source.where(key)}: no such setting")
            chosen[key] = value
    arguments: dict[str, Any] = {}
    for key, value in chosen.items():
        try:
            by_key[key].check(value)
        except ValueError as e:
            raise ConfigError(f"{origin_of(key, *sources)}: {e}") from None
        by_key[key].assign(arguments, value)
    for f in dataclasses.fields(BrokerConfig):
        declaration = f.metadata.get(_KEY)
        if isinstance(declaration, _Nested) and f.name in arguments:
            arguments[f.name] = declaration.cls(**arguments[f.name])
    try:
        return BrokerConfig(**arguments)
    except InvalidSetting as e:
        raise ConfigError(f"{origin_of(e.setting.key, *sources)}: {e.reason}") from None


def _suggestion(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'max-connections'?)`` for a field name or a near miss."""
    by_field = {path.rsplit(".", 1)[-1]: s.key for s in settings() if s.key for path in s.fields}
    guess = by_field.get(key.lstrip("-").replace("-", "_"))
    if guess is None:
        close = difflib.get_close_matches(key.lstrip("-"), list(known), n=1)
        guess = close[0] if close else None
    return f" (did you mean {guess!r}?)" if guess else ""


def load_config_file(path: str) -> SettingValues:
    """
    Read a TOML configuration file: its keys are the long option names of
    ``twistd stomptw`` without the dashes (``max-connections = 100``,
    ``tcp = ["tcp:61613"]``, ``no-examples = true``). Raises
    :class:`ConfigError` naming the file (and the key) if it cannot be read,
    is not TOML, has an unknown key, or a value of the wrong type.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not a valid TOML file: {e}") from None
    keys: dict[str, Setting] = {}
    for s in settings():
        for key in filter(None, (s.key, s.off_key)):
            keys[key] = s
    values: dict[str, Any] = {}
    for key, raw in document.items():
        s = keys.get(key)
        if s is None:
            raise ConfigError(f"{path}: unknown key {key!r}{_suggestion(key, keys)}")
        try:
            value = s.from_toml(raw) if key == s.key else _SWITCH.from_toml(raw)
        except ValueError as e:
            raise ConfigError(f"{path}: {key}: {e}") from None
        if key == s.key:
            values[key] = value
        elif value and s.key in document:
            raise ConfigError(f"{path}: {key} and {s.key} contradict each other")
        elif value:
            values[s.key] = []
    return SettingValues(values, path)
