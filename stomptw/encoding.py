"""
Sans-IO STOMP codec, the encoding side: header escaping, whole frames, and
MESSAGE frames built from the parts every delivery of one message shares
(:mod:`stomptw.frame` is the decoding side).
"""

from __future__ import annotations

from stomptw.frame import UNESCAPED_COMMANDS

__all__ = [
    "MESSAGE_DELIVERY_HEADERS",
    "encode_frame",
    "encode_message",
    "escape_header",
    "join_message",
    "message_head",
    "message_parts",
]

_ESCAPE_12 = str.maketrans({"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"})
_ESCAPE_11 = str.maketrans({"\\": "\\\\", "\n": "\\n", ":": "\\c"})
# STOMP 1.0 has no escapes; a line break would end the header, so it is
# replaced by a space rather than corrupt the frame.
_ESCAPE_10 = str.maketrans({"\r": " ", "\n": " "})


def escape_header(value: str, version: str) -> str:
    """Encode a header name or value for the given protocol version."""
    if version == "1.2":
        return value.translate(_ESCAPE_12)
    if version == "1.1":
        return value.translate(_ESCAPE_11)
    return value.translate(_ESCAPE_10)


_NEEDS_ESCAPE = frozenset("\\\r\n:")
_UNSAFE_10_NAME = frozenset("\r\n:")


def _header_lines(parts: list[str], items: object, version: str, escape: bool) -> bool:
    """
    Append ``name:value`` lines for ``items`` to ``parts``, escaped as
    ``version`` requires when ``escape``; return whether a
    ``content-length`` header was among them.
    """
    has_length = False
    for name, value in items:  # type: ignore[attr-defined]
        if name == "content-length":
            has_length = True
        if escape:
            if not _NEEDS_ESCAPE.isdisjoint(name):
                if version == "1.0" and not _UNSAFE_10_NAME.isdisjoint(name):
                    # STOMP 1.0 cannot represent this name; written raw it
                    # would read as another header (a forged message-id, say).
                    continue
                name = escape_header(name, version)
            if not _NEEDS_ESCAPE.isdisjoint(value):
                value = escape_header(value, version)
        parts.append(f"{name}:{value}")
    return has_length


def encode_frame(
    command: str,
    headers: dict[str, str] | list[tuple[str, str]],
    body: bytes = b"",
    version: str = "1.2",
    content_length: bool = True,
) -> bytes:
    """
    Encode one frame to bytes, terminating NUL included.

    Header names and values are escaped as ``version`` requires (never for
    CONNECT, STOMP and CONNECTED). A ``content-length`` header is added when
    ``content_length`` is true and the headers have none.
    """
    items = headers.items() if isinstance(headers, dict) else headers
    parts = [command]
    has_length = _header_lines(parts, items, version, command not in UNESCAPED_COMMANDS)
    if content_length and not has_length:
        parts.append(f"content-length:{len(body)}")
    parts.append("")
    parts.append("")
    return "\n".join(parts).encode("utf-8") + body + b"\x00"


#: The headers that each delivery of a MESSAGE sets itself.
MESSAGE_DELIVERY_HEADERS = frozenset(
    {"subscription", "message-id", "destination", "ack", "redelivered", "x-delivery-count"}
)


def message_parts(
    message_id: str, destination: str, headers: dict[str, str], body: bytes, version: str
) -> tuple[bytes, bytes] | None:
    """
    Pre-encode the parts of a MESSAGE frame that every delivery of one
    message shares, for :func:`encode_message`.

    Return ``(middle, suffix)``: the ``message-id`` and ``destination``
    lines, and the message's own header lines, ``content-length``, the blank
    line, the body and the NUL. Return ``None`` when ``headers`` carry a
    header that a delivery sets itself (see
    :data:`MESSAGE_DELIVERY_HEADERS`): such a message must be encoded with
    :func:`encode_frame`, whose header merge it relies on.
    """
    if not MESSAGE_DELIVERY_HEADERS.isdisjoint(headers):
        return None
    if not _NEEDS_ESCAPE.isdisjoint(message_id):
        message_id = escape_header(message_id, version)
    if not _NEEDS_ESCAPE.isdisjoint(destination):
        destination = escape_header(destination, version)
    middle = f"message-id:{message_id}\ndestination:{destination}\n".encode()
    if headers:
        lines: list[str] = []
        if not _header_lines(lines, headers.items(), version, True):
            lines.append(f"content-length:{len(body)}")
        lines.append("")
        lines.append("")
        text = "\n".join(lines)
    else:
        text = f"content-length:{len(body)}\n\n"
    return middle, text.encode() + body + b"\x00"


def encode_message(
    parts: tuple[bytes, bytes],
    subscription: str,
    version: str,
    ack: str | None = None,
    redelivered: bool = False,
    delivery_count: int = 0,
) -> bytes:
    """
    Encode one delivery of a MESSAGE from its shared ``parts`` (see
    :func:`message_parts`, same ``version``) and its per-delivery headers.

    The bytes are those :func:`encode_frame` gives for the headers
    ``subscription``, ``message-id``, ``destination``, ``ack`` (when not
    ``None``), ``redelivered:true`` (when ``redelivered``),
    ``x-delivery-count`` and then the message's own, in that order.
    """
    return join_message(
        message_head(subscription, version), parts, version, ack, redelivered, delivery_count
    )


def message_head(subscription: str, version: str) -> bytes:
    """
    The first lines of every MESSAGE to ``subscription`` in ``version``:
    the command and the ``subscription`` header (a subscription keeps
    them, see :func:`stomptw.model.encode_delivery`).
    """
    if not _NEEDS_ESCAPE.isdisjoint(subscription):
        subscription = escape_header(subscription, version)
    return f"MESSAGE\nsubscription:{subscription}\n".encode()


# The x-delivery-count lines of the first deliveries, made once.
_COUNT_LINES = tuple(b"x-delivery-count:%d\n" % n for n in range(8))


def join_message(
    head: bytes,
    parts: tuple[bytes, bytes],
    version: str,
    ack: str | None = None,
    redelivered: bool = False,
    delivery_count: int = 0,
) -> bytes:
    """:func:`encode_message` with the subscription's :func:`message_head` made already."""
    middle, suffix = parts
    count = (
        _COUNT_LINES[delivery_count]
        if 0 <= delivery_count < 8
        else b"x-delivery-count:%d\n" % delivery_count
    )
    if ack is None:
        if not redelivered:
            return b"".join((head, middle, count, suffix))
        return b"".join((head, middle, b"redelivered:true\n", count, suffix))
    if not _NEEDS_ESCAPE.isdisjoint(ack):
        ack = escape_header(ack, version)
    return b"".join(
        (
            head,
            middle,
            f"ack:{ack}\n".encode(),
            b"redelivered:true\n" if redelivered else b"",
            count,
            suffix,
        )
    )
