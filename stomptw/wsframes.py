"""
A sans-IO codec for the simple RFC 6455 data frames of the WebSocket fast
path (:mod:`stomptw.websocket`).

It reads what a browser or client library sends almost always (complete,
unfragmented, masked text or binary frames with a minimal length) and
builds the unmasked frames the broker sends. Anything else (control frames,
fragments, extensions, invalid or oversized frames) is left alone: the
reader stops before it, so that Autobahn sees exactly the bytes it would
have seen and handles them as the RFC says. No Autobahn or Twisted state is
read here; tests drive it with plain bytes.
"""

from __future__ import annotations

import struct

from autobahn.websocket.xormasker import create_xor_masker

__all__ = [
    "FAST_PARTIAL_MAX",
    "OPCODE_BINARY",
    "OPCODE_TEXT",
    "SimpleFrames",
    "frame_header",
    "opcode_for",
    "read_simple_frames",
    "unmask",
]

#: First bytes of final (FIN set, no RSV bits) text and binary frames.
OPCODE_TEXT = 0x81
OPCODE_BINARY = 0x82

#: Largest payload of a frame the reader waits for when it arrives in
#: pieces; a larger one is left to Autobahn, which streams its payload to
#: the STOMP parser as it arrives instead of holding all of it.
FAST_PARTIAL_MAX = 65536

#: Payloads up to this size are unmasked with one big-integer XOR; longer
#: ones with Autobahn's native masker (whose setup costs more than that XOR).
_INT_UNMASK_MAX = 512

_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")


def unmask(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XORed with the 4-byte ``mask`` repeated (RFC 6455 5.3)."""
    n = len(payload)
    if n > _INT_UNMASK_MAX:
        return create_xor_masker(mask, n).process(payload)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class SimpleFrames:
    """
    What :func:`read_simple_frames` found at the start of a buffer.

    :ivar payloads: ``(payload, end)`` for each complete simple frame, in
        order, ``end`` being the offset just past that frame.
    :ivar wait: True when the bytes after the last frame are only the start
        of a simple frame (at most :data:`FAST_PARTIAL_MAX` of payload) worth
        waiting for; False when they begin something else.
    """

    __slots__ = ("payloads", "wait")

    def __init__(self, payloads: list[tuple[bytes, int]], wait: bool) -> None:
        self.payloads = payloads
        self.wait = wait


def read_simple_frames(
    data: bytes, frame_limit: int = 0, message_limit: int = 0, validate_utf8: bool = True
) -> SimpleFrames:
    """
    Read the complete simple data frames at the start of ``data``.

    A simple frame has FIN set, no RSV bits, opcode text or binary, a mask,
    a minimally encoded length within ``frame_limit`` and ``message_limit``
    (0 means no limit) and, for text with ``validate_utf8``, a valid UTF-8
    payload. Reading stops at the first frame that is anything else, or is
    not all there.
    """
    payloads: list[tuple[bytes, int]] = []
    size = len(data)
    pos = 0
    while True:
        if size - pos < 6:
            # Too short to tell (a masked frame's header is at least 6 bytes).
            return SimpleFrames(payloads, True)
        b0 = data[pos]
        if b0 != OPCODE_TEXT and b0 != OPCODE_BINARY:
            break
        b1 = data[pos + 1]
        if not b1 & 0x80:
            break  # unmasked: the connection must fail
        n = b1 & 0x7F
        head = pos + 2
        if n == 126:
            n = int.from_bytes(data[head : head + 2], "big")
            if n < 126:
                break
            head += 2
        elif n == 127:
            n = int.from_bytes(data[head : head + 8], "big")
            if n < 65536:
                break
            head += 8
        if (0 < frame_limit < n) or (0 < message_limit < n):
            break
        end = head + 4 + n
        if end > size:
            return SimpleFrames(payloads, head + 4 <= size and n <= FAST_PARTIAL_MAX)
        payload = unmask(data[head + 4 : end], data[head : head + 4]) if n else b""
        if b0 == OPCODE_TEXT and validate_utf8 and not payload.isascii():
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # invalid text: the connection must close with 1007
        payloads.append((payload, end))
        pos = end
    return SimpleFrames(payloads, False)


def opcode_for(data: bytes) -> int:
    """:data:`OPCODE_TEXT` when ``data`` is valid UTF-8, else :data:`OPCODE_BINARY`."""
    if data.isascii():
        return OPCODE_TEXT
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return OPCODE_BINARY
    return OPCODE_TEXT


def frame_header(opcode: int, length: int) -> bytes:
    """The header of an unmasked final frame with a ``length``-byte payload."""
    if length < 126:
        return bytes((opcode, length))
    if length < 65536:
        return _HEAD16.pack(opcode, 126, length)
    return _HEAD64.pack(opcode, 127, length)
