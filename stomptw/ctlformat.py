"""
What ``stomptw-ctl`` (:mod:`stomptw.ctl`) prints: the admin API's answers as
aligned tables, with every control character escaped so that a client id or
a message body cannot drive the terminal.
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "LISTS",
    "alarms_table",
    "escape",
    "escape_bytes",
    "format_table",
    "list_table",
    "peek_text",
]

#: Unicode categories :func:`escape` spells out: controls, format characters
#: (bidi overrides, zero-width), surrogates, private use, unassigned, and
#: line and paragraph separators.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def escape(value: object) -> str:
    """
    ``value`` as text safe to print: control and other invisible characters
    (newlines, escape sequences, bidi overrides) become ``\\n``, ``\\xNN`` or
    ``\\uNNNN``, and backslashes are doubled so that the result is unambiguous.
    ``None`` is shown as ``-``.
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
        elif unicodedata.category(char) in _INVISIBLE:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def escape_bytes(data: bytes) -> str:
    """Binary ``data`` as printable ASCII: printable bytes as they are, others ``\\xNN``."""
    out = []
    for byte in data:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def format_table(headings: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """
    ``rows`` under ``headings`` in aligned columns (numbers right-aligned),
    every cell escaped with :func:`escape`; ``(none)`` when there are no rows.
    """
    if not rows:
        return "(none)\n"
    cells = [[escape(cell) for cell in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) and not isinstance(row[i], bool) for row in rows)
        for i in range(len(headings))
    ]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headings)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headings), *(line(row) for row in cells)]) + "\n"


def _seconds(value: float | None) -> str:
    """A duration in seconds, as ``3d4h``, ``2h5m``, ``4m10s`` or ``12s``."""
    if value is None:
        return "-"
    total = int(value)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


#: What ``list`` shows of each kind: the endpoint, the destination kind to
#: keep (None: everything), and the columns as (heading, key or function).
Column = tuple[str, Callable[[dict[str, Any]], object]]


def _key(name: str) -> Callable[[dict[str, Any]], object]:
    return lambda item: item.get(name)


LISTS: dict[str, tuple[str, str | None, list[Column]]] = {
    "connections": (
        "/api/connections",
        None,
        [
            ("SESSION", _key("session_id")),
            ("PEER", _key("peer")),
            ("TRANSPORT", _key("transport")),
            ("VERSION", _key("version")),
            ("USER", _key("user")),
            ("VHOST", _key("vhost")),
            ("CLIENT-ID", _key("client_id")),
            ("SUBS", _key("subscriptions")),
            ("CONNECTED", lambda item: _seconds(item.get("connected_seconds"))),
        ],
    ),
    "queues": (
        "/api/destinations",
        "queue",
        [
            ("NAME", _key("name")),
            ("MESSAGES", _key("messages")),
            ("WAITING", _key("waiting")),
            ("PAGED", _key("paged")),
            ("BYTES", _key("bytes")),
            ("CONSUMERS", _key("consumers")),
        ],
    ),
    "topics": (
        "/api/destinations",
        "topic",
        [
            ("NAME", _key("name")),
            ("CONSUMERS", _key("consumers")),
            ("DURABLE", _key("durable_subscriptions")),
        ],
    ),
    "streams": (
        "/api/destinations",
        "stream",
        [
            ("NAME", _key("name")),
            ("MESSAGES", _key("messages")),
            ("BYTES", _key("bytes")),
            ("CONSUMERS", _key("consumers")),
            ("FIRST", _key("first_offset")),
            ("NEXT", _key("next_offset")),
        ],
    ),
    "subscriptions": (
        "/api/subscriptions",
        None,
        [
            ("SESSION", _key("session_id")),
            ("ID", _key("id")),
            ("DESTINATION", _key("destination")),
            ("ACK", _key("ack")),
            ("PREFETCH", _key("prefetch")),
            ("UNACKED", _key("unacked")),
            ("BACKLOG", _key("backlog")),
            ("DURABLE", _key("durable")),
            ("CLIENT-ID", _key("client_id")),
            ("ACTIVE", _key("active")),
        ],
    ),
}


def list_table(kind: str, items: list[dict[str, Any]]) -> str:
    columns = LISTS[kind][2]
    return format_table([h for h, _ in columns], [[f(i) for _, f in columns] for i in items])


def alarms_table(alarms: dict[str, Any]) -> str:
    rows = []
    for kind in sorted(alarms):
        status = alarms[kind]
        if status is None:
            rows.append([kind, "off", None, None, None])
            continue
        if "used_bytes" in status:
            measured = f"{status['used_bytes']} used"
        else:
            measured = f"{status.get('free_bytes')} free"
        rows.append(
            [
                kind,
                "RAISED" if status.get("active") else "ok",
                measured,
                status.get("limit_bytes"),
                status.get("held_connections"),
            ]
        )
    return format_table(["ALARM", "STATE", "MEASURED (BYTES)", "LIMIT", "HELD"], rows)


def _body_text(message: dict[str, Any], limit: int) -> str:
    """A peeked body, escaped, cut at ``limit`` characters, with a note saying what is left out."""
    size = message.get("body_size", 0)
    preview = message.get("body", "")
    if message.get("body_encoding") == "base64":
        data = base64.b64decode(preview)
        shown = data[:limit]
        text = escape_bytes(shown)
        note = f"binary, {size} bytes"
        if len(shown) < size:
            note += f", first {len(shown)} shown"
        return f"{text} ({note})"
    shown_text = preview[:limit]
    text = escape(shown_text)
    if len(shown_text) < len(preview) or message.get("body_truncated"):
        return f"{text} ... ({size} bytes, cut short; --json shows the first 1 KiB)"
    return text


def peek_text(answer: dict[str, Any], limit: int) -> str:
    lines = [
        f"{escape(answer.get('destination'))}: {answer.get('waiting')} waiting "
        f"({answer.get('in_memory')} in memory, {answer.get('paged')} paged to the store); "
        f"showing {answer.get('shown')}"
    ]
    for number, message in enumerate(answer.get("messages", []), 1):
        flags = ["persistent" if message.get("persistent") else "transient"]
        if message.get("redelivered"):
            flags.append(f"redelivered, {message.get('delivery_count')} earlier deliveries")
        lines.append("")
        lines.append(f"#{number} {escape(message.get('message_id'))} ({', '.join(flags)})")
        for name, value in sorted(message.get("headers", {}).items()):
            lines.append(f"  {escape(name)}: {escape(value)}")
        lines.append(f"  body: {_body_text(message, limit)}")
    more = answer.get("more", 0)
    if more:
        lines.append("")
        lines.append(f"... and {more} more waiting, not shown")
    return "\n".join(lines) + "\n"


# -- the command line ------------------------------------------------------------------
