"""
Sans-IO STOMP codec: frames, an incremental parser and encoders.

This module turns bytes into :class:`Frame` objects and frames into bytes.
It performs no I/O and imports nothing from Twisted, so it can be tested
(and reused) without a reactor.

The parser understands STOMP 1.0, 1.1 and 1.2:

* EOL is LF or CRLF; any number of EOLs between frames (heart-beats) are
  skipped.
* Header escaping follows the version in force: 1.2 decodes ``\\r``,
  ``\\n``, ``\\c`` and ``\\\\``; 1.1 the same without ``\\r``; 1.0 does no
  unescaping at all. CONNECT, STOMP and CONNECTED frames are never escaped.
  An undefined escape sequence is a protocol error.
* When a header is repeated, the first occurrence wins.
* ``content-length`` is honoured, so a body may contain NUL bytes;
  otherwise the body ends at the first NUL.
* Every buffer is bounded by :class:`Limits`; a frame over a limit raises
  :class:`FrameTooLarge` naming the limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CLIENT_COMMANDS",
    "SERVER_COMMANDS",
    "Frame",
    "FrameError",
    "FrameTooLarge",
    "FrameParser",
    "Limits",
    "MESSAGE_DELIVERY_HEADERS",
    "encode_frame",
    "encode_message",
    "message_parts",
    "escape_header",
    "unescape_header",
]

CLIENT_COMMANDS = frozenset(
    {
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "BEGIN",
        "COMMIT",
        "ABORT",
        "ACK",
        "NACK",
        "DISCONNECT",
        "CONNECT",
        "STOMP",
    }
)
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})

#: Commands whose headers are never escaped, in any version.
_UNESCAPED_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})

# A run of EOLs (heart-beats) between frames, skipped in one C-level match.
_EOLS = re.compile(rb"[\r\n]+")
_EOL_BYTES = (0x0A, 0x0D)


class FrameError(Exception):
    """
    The bytes received are not a valid STOMP frame.

    The message (``str(error)``) is meant for a client developer: it is sent
    back in the ERROR frame's ``message`` header.

    :ivar headers: the failing frame's headers when they could be read
        (a body over a limit, say), so that the ERROR can name its
        ``receipt``; otherwise empty.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}


class FrameTooLarge(FrameError):
    """
    A frame exceeds one of the configured :class:`Limits`.

    :ivar limit: the name of the limit that was exceeded, as in
        :class:`Limits` (``max_frame_size``, ``max_headers``,
        ``max_header_line`` or ``max_body_size``).
    """

    def __init__(self, limit: str, value: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value


@dataclass(frozen=True)
class Limits:
    """
    Bounds on what the parser accepts from a peer.

    :ivar max_frame_size: bytes in one frame, from the first byte of the
        command to the terminating NUL inclusive.
    :ivar max_headers: header lines in one frame (the command line not
        counted).
    :ivar max_header_line: bytes in one header line, EOL not counted; the
        command line is bounded by it too.
    :ivar max_body_size: bytes in one frame's body.
    """

    max_frame_size: int = 5 * 1024 * 1024
    max_headers: int = 1000
    max_header_line: int = 10 * 1024
    max_body_size: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_frame_size", "max_headers", "max_header_line", "max_body_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive number")


class Frame:
    """
    One STOMP frame.

    :ivar command: the command, e.g. ``"SEND"``.
    :ivar headers: header names to values; decoded (unescaped) text. When a
        frame repeats a header, the parser keeps the first value.
    :ivar body: the body bytes.
    """

    __slots__ = ("command", "headers", "body")

    def __init__(
        self, command: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.command = command
        self.headers = headers if headers is not None else {}
        self.body = body

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.command, self.headers, self.body) == (
            other.command,
            other.headers,
            other.body,
        )

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 40 else self.body[:40] + b"..."
        return f"Frame({self.command!r}, {self.headers!r}, {body!r})"


# -- header escaping ---------------------------------------------------------

_UNESCAPE_12 = {"r": "\r", "n": "\n", "c": ":", "\\": "\\"}
_UNESCAPE_11 = {"n": "\n", "c": ":", "\\": "\\"}


def unescape_header(value: str, version: str) -> str:
    """
    Decode the escape sequences of a header name or value.

    :param version: ``"1.0"``, ``"1.1"`` or ``"1.2"``.
    :raises FrameError: on an escape sequence the version does not define.
    """
    if version == "1.0" or "\\" not in value:
        return value
    table = _UNESCAPE_12 if version == "1.2" else _UNESCAPE_11
    out = []
    pos = 0
    while True:
        i = value.find("\\", pos)
        if i < 0:
            out.append(value[pos:])
            return "".join(out)
        out.append(value[pos:i])
        seq = value[i + 1 : i + 2]
        decoded = table.get(seq)
        if decoded is None:
            shown = "\\" + seq if seq else "a trailing \\"
            raise FrameError(
                f"undefined escape sequence {shown!r} in header",
                f"STOMP {version} defines only the escapes "
                + ", ".join("\\" + k for k in table)
                + " in header names and values; write a backslash as \\\\.",
            )
        out.append(decoded)
        pos = i + 2


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
    has_length = _header_lines(parts, items, version, command not in _UNESCAPED_COMMANDS)
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
    if not _NEEDS_ESCAPE.isdisjoint(subscription):
        subscription = escape_header(subscription, version)
    middle, suffix = parts
    if ack is None and not redelivered:
        return b"".join(
            (
                f"MESSAGE\nsubscription:{subscription}\n".encode(),
                middle,
                b"x-delivery-count:%d\n" % delivery_count,
                suffix,
            )
        )
    tail = []
    if ack is not None:
        if not _NEEDS_ESCAPE.isdisjoint(ack):
            ack = escape_header(ack, version)
        tail.append(f"ack:{ack}\n")
    if redelivered:
        tail.append("redelivered:true\n")
    tail.append(f"x-delivery-count:{delivery_count}\n")
    return b"".join(
        (
            f"MESSAGE\nsubscription:{subscription}\n".encode(),
            middle,
            "".join(tail).encode(),
            suffix,
        )
    )


# -- the parser --------------------------------------------------------------


class FrameParser:
    """
    Incremental STOMP frame parser.

    Feed it bytes as they arrive with :meth:`feed`, then take complete frames
    with :meth:`next_frame` until it returns ``None``. Frames are taken one at
    a time so that the version negotiated by a CONNECT applies to the frames
    pipelined behind it (set :attr:`version` in between).

    After a :class:`FrameError` the parser is unusable: the connection must
    be closed.

    :ivar version: the protocol version whose escaping rules apply, ``"1.0"``
        until a session negotiates another.
    :ivar bytes_received: total bytes fed, heart-beats included.
    """

    def __init__(self, limits: Limits | None = None, version: str = "1.0") -> None:
        self.limits = limits or Limits()
        self.version = version
        self.bytes_received = 0
        self._buf = bytearray()
        # Where the search for the end of the header section (then for the
        # NUL ending a body without content-length) resumes.
        self._scan = 0
        # Complete lines (command line included) of a partial header section.
        self._lines = 0
        # Once the header section is parsed: (command, headers, body start,
        # content length or -1); None while still reading headers.
        self._head: tuple[str, dict[str, str], int, int] | None = None
        self._failed: FrameError | None = None
        # The headers of the frame being parsed, once read (for errors).
        self._headers: dict[str, str] | None = None

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self.bytes_received += len(data)
        if self._failed is None:
            self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def next_frame(self) -> Frame | None:
        """
        Return the next complete frame, or ``None`` if more bytes are needed.

        :raises FrameError: if the input is not valid STOMP or is over a limit.
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._next()
        except FrameError as e:
            if self._head is not None:
                e.headers = self._head[1]
            elif self._headers is not None:
                e.headers = self._headers
            self._failed = e
            self._buf = bytearray()
            raise

    def _next(self) -> Frame | None:
        buf = self._buf
        if self._head is None:
            # Skip heart-beats: EOLs between frames.
            if buf and buf[0] in _EOL_BYTES:
                del buf[: _EOLS.match(buf).end()]
                self._scan = 0
                self._lines = 0
            if not buf:
                return None
            head = self._parse_head(buf)
            if head is None:
                return None
            self._head = head
        command, headers, body_start, length = self._head
        limits = self.limits
        if length >= 0:
            end = body_start + length
            if len(buf) <= end:
                return None
            if buf[end] != 0:
                raise FrameError(
                    "frame body is not terminated by NUL",
                    f"The frame declared content-length:{length} but the byte "
                    "after that many body bytes is not the NUL that ends a frame.",
                )
        else:
            end = buf.find(b"\x00", max(body_start, self._scan))
            if end < 0:
                self._scan = len(buf)
                pending = len(buf) - body_start
                if pending > limits.max_body_size:
                    raise _too_large("max_body_size", limits.max_body_size, "body")
                if len(buf) >= limits.max_frame_size:
                    raise _too_large("max_frame_size", limits.max_frame_size, "frame")
                return None
            if end - body_start > limits.max_body_size:
                raise _too_large("max_body_size", limits.max_body_size, "body")
            if end + 1 > limits.max_frame_size:
                raise _too_large("max_frame_size", limits.max_frame_size, "frame")
        body = bytes(buf[body_start:end])
        del buf[: end + 1]
        self._head = None
        self._headers = None
        self._scan = 0
        self._lines = 0
        return Frame(command, headers, body)

    def _parse_head(self, buf: bytearray) -> tuple[str, dict[str, str], int, int] | None:
        """Parse the command and headers once the blank line has arrived."""
        limits = self.limits
        # The header section ends at an empty line: LF LF, or with CRs.
        start = max(self._scan - 3, 0)
        i, j = _find_blank_line(buf, start)
        if i < 0 and j < 0:
            self._lines += buf.count(b"\n", self._scan)
            self._check_partial_head(buf)
            self._scan = len(buf)
            return None
        if j >= 0:
            head_end, body_start = j, j + 3
        else:
            head_end, body_start = i, i + 2
        if body_start > limits.max_frame_size:
            raise _too_large("max_frame_size", limits.max_frame_size, "frame")
        try:
            text = buf[:head_end].decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(
                "frame command or headers are not valid UTF-8",
                "STOMP requires the command and headers to be UTF-8 encoded.",
            ) from None
        lines = text.split("\n")
        if len(lines) - 1 > limits.max_headers:
            raise _too_large("max_headers", limits.max_headers, "headers")
        command = lines[0]
        if command.endswith("\r"):
            command = command[:-1]
        if head_end > limits.max_header_line and (
            len(command.encode("utf-8")) > limits.max_header_line
        ):
            raise _too_large("max_header_line", limits.max_header_line, "command line")
        if not command:
            raise FrameError("empty command line", "A frame must start with its command.")
        unescape = command not in _UNESCAPED_COMMANDS and self.version != "1.0"
        version = self.version
        headers: dict[str, str] = {}
        if (
            head_end <= limits.max_header_line
            and "\r" not in text
            and (not unescape or "\\" not in text)
        ):
            # The common case: no line can be over the limit (none is longer
            # than the whole header section), and there is nothing to strip
            # or unescape.
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if not colon:
                    raise FrameError(
                        "malformed header line",
                        f"The header line {line[:80]!r} has no ':' between name and value.",
                    )
                if name not in headers:
                    headers[name] = value
            lines = []
        for line in lines[1:]:
            if line.endswith("\r"):
                line = line[:-1]
            # A character is 1 to 4 bytes: encode only when the count is unsure.
            if len(line) > limits.max_header_line or (
                len(line) * 4 > limits.max_header_line
                and len(line.encode("utf-8")) > limits.max_header_line
            ):
                raise _too_large("max_header_line", limits.max_header_line, "header line")
            colon = line.find(":")
            if colon < 0:
                raise FrameError(
                    "malformed header line",
                    f"The header line {line[:80]!r} has no ':' between name and value.",
                )
            name = line[:colon]
            value = line[colon + 1 :]
            if unescape:
                name = unescape_header(name, version)
                value = unescape_header(value, version)
            if name not in headers:
                headers[name] = value
        self._headers = headers
        length = -1
        raw = headers.get("content-length")
        if raw is not None:
            raw = raw.strip()
            if not raw.isdigit() or not raw.isascii():
                raise FrameError(
                    "invalid content-length header",
                    f"content-length must be a non-negative integer, got {raw!r}.",
                )
            length = int(raw)
            if length > limits.max_body_size:
                raise _too_large("max_body_size", limits.max_body_size, "body")
            if body_start + length + 1 > limits.max_frame_size:
                raise _too_large("max_frame_size", limits.max_frame_size, "frame")
        return command, headers, body_start, length

    def _check_partial_head(self, buf: bytearray) -> None:
        """Bound an incomplete header section before its blank line arrives."""
        limits = self.limits
        if len(buf) >= limits.max_frame_size:
            raise _too_large("max_frame_size", limits.max_frame_size, "frame")
        if self._lines - 1 > limits.max_headers:
            raise _too_large("max_headers", limits.max_headers, "headers")
        last = buf.rfind(b"\n")
        tail = len(buf) - last - 1
        # The incomplete last line may still gain its CR before the LF.
        if tail > limits.max_header_line + 1:
            raise _too_large("max_header_line", limits.max_header_line, "header line")


def _find_blank_line(buf: bytearray, start: int) -> tuple[int, int]:
    """
    Find the first empty line at or after ``start``: return the index of
    the first ``LF LF`` and of the first ``LF CR LF``, -1 for none (at most
    one of them is set). The two searches run over growing windows, so a
    pattern that does not occur never makes either scan the rest of a
    buffer full of pipelined frames.
    """
    size = len(buf)
    window = 512
    while start < size:
        stop = min(start + window, size)
        # Matches starting before ``stop`` lie within these bounds.
        i = buf.find(b"\n\n", start, stop + 1)
        j = buf.find(b"\n\r\n", start, stop + 2)
        if j >= 0 and (i < 0 or j < i):
            return -1, j
        if i >= 0:
            return i, -1
        start = stop
        window *= 2
    return -1, -1


def _too_large(limit: str, value: int, what: str) -> FrameTooLarge:
    if limit == "max_headers":
        message = f"frame has more header lines than the broker's max_headers limit of {value}"
    else:
        message = f"{what} exceeds the broker's {limit} limit of {value} bytes"
    return FrameTooLarge(limit, value, message)
