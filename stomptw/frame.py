"""
Sans-IO STOMP codec, the decoding side: frames, limits and an incremental
parser (:mod:`stomptw.encoding` turns frames into bytes).

This module turns bytes into :class:`Frame` objects. It performs no I/O and
imports nothing from Twisted, so it can be tested (and reused) without a
reactor.

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
    "UNESCAPED_COMMANDS",
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
UNESCAPED_COMMANDS = frozenset({"CONNECT", "STOMP", "CONNECTED"})

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

    # One per session: slots instead of a dictionary each.
    __slots__ = (
        "_buf",
        "_failed",
        "_head",
        "_headers",
        "_lines",
        "_scan",
        "bytes_received",
        "limits",
        "version",
    )

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
        unescape = command not in UNESCAPED_COMMANDS and self.version != "1.0"
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
        if i >= 0:
            # Only an LF CR LF that starts before ``i`` comes first: the
            # usual frame without CRs is not scanned past its header section.
            j = buf.find(b"\n\r\n", start, i + 2)
            return (-1, j) if j >= 0 else (i, -1)
        j = buf.find(b"\n\r\n", start, stop + 2)
        if j >= 0:
            return -1, j
        start = stop
        window *= 2
    return -1, -1


def _too_large(limit: str, value: int, what: str) -> FrameTooLarge:
    if limit == "max_headers":
        message = f"frame has more header lines than the broker's max_headers limit of {value}"
    else:
        message = f"{what} exceeds the broker's {limit} limit of {value} bytes"
    return FrameTooLarge(limit, value, message)
