"""
permessage-deflate (RFC 7692) for the broker's WebSocket connections.

Incoming compressed messages are Autobahn's: it inflates them, within the
connection's message limit, and streams the result to the STOMP parser.

Outgoing messages are compressed here, by one compressor the whole listener
shares, never by a compressor per connection. Every message starts from an
empty history (a full flush ends the one before), so no message refers to
bytes of an earlier one. That is exactly what ``server_no_context_takeover``
promises, and it is valid whether or not the client asked for it: a client
that keeps its window simply never needs it. The costs that buys:

* no compressor state per connection (zlib's is about 256 KiB), so idle
  sessions stay small whether or not they negotiated compression;
* a topic's MESSAGE frames differ between subscribers only in their first
  header lines. The rest (the message's own headers and body) is compressed
  once, and the same deflate bytes follow each subscriber's head, which goes
  as a stored (uncompressed) deflate block: a copy, not a deflate call.

Frames under :data:`COMPRESS_MIN` bytes go uncompressed (RSV1 clear), which
RFC 7692 allows message by message: deflate cannot shrink a RECEIPT.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)

__all__ = [
    "CACHE_BYTES",
    "COMPRESS_MIN",
    "SharedDeflate",
    "accept_deflate",
]

#: Frames shorter than this are sent uncompressed.
COMPRESS_MIN = 128

#: The per-delivery header that ends the part of a MESSAGE frame that differs
#: between subscribers (see :func:`stomptw.encoding.encode_message`).
_SHARED_AFTER = b"\nx-delivery-count:"

#: Bytes of recently compressed MESSAGE tails (plain and deflated) that a
#: listener keeps, so that every subscriber of a topic message reuses them.
CACHE_BYTES = 4 * 1024 * 1024

_MESSAGE_ID = b"\nmessage-id:"

#: The longest head sent as a stored block (its length field is 16 bits).
_STORED_MAX = 0xFFFF
_STORED_HEAD = struct.Struct("<BHH")

#: What a sync or full flush ends with, and RFC 7692 has the sender remove.
_FLUSH_TAIL = b"\x00\x00\xff\xff"


def accept_deflate(offers: Sequence[object]) -> PerMessageDeflateOfferAccept | None:
    """
    Accept the first ``permessage-deflate`` offer (Autobahn's
    ``perMessageCompressionAccept``).

    The client is asked not to keep its own compression context when it
    allows that (``client_no_context_takeover``), so the broker need not
    keep an inflate window per connection between messages either.
    """
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(
                offer,
                request_no_context_takeover=offer.accept_no_context_takeover,
                # Autobahn's own compressor (used when a message takes its
                # path) must not refer back either: the shared compressor's
                # messages sit between its own in the client's window.
                no_context_takeover=True,
            )
    return None


class SharedDeflate:
    """
    The compressor of one listener's outgoing WebSocket messages.

    :meth:`compress` returns the raw deflate bytes of one message, the
    trailing ``00 00 ff ff`` removed as RFC 7692 says. ``window_bits`` is
    the most a client lets the server use (``server_max_window_bits``);
    there is one zlib stream per value asked for.
    """

    def __init__(self, level: int = 6, cache_bytes: int = CACHE_BYTES) -> None:
        self.level = level
        self.cache_bytes = cache_bytes
        self._streams: dict[int, zlib._Compress] = {}
        #: Shared tails compressed lately, oldest first, by window size and
        #: message-id line: (plain, deflated). A subscriber catching up on a
        #: backlog takes many messages before the next one takes the same.
        self._tails: dict[tuple[int, bytes], tuple[bytes, bytes]] = {}
        self._cached = 0
        #: Messages compressed, and those whose tail came from the cache.
        self.messages = self.reused = 0

    def _stream(self, bits: int) -> zlib._Compress:
        stream = self._streams.get(bits)
        if stream is None:
            stream = zlib.compressobj(self.level, zlib.DEFLATED, -bits, 8)
            self._streams[bits] = stream
        return stream

    def _deflate(self, stream: zlib._Compress, data: bytes) -> bytes:
        return stream.compress(data) + stream.flush(zlib.Z_FULL_FLUSH)

    def _remember(self, key: tuple[int, bytes], tail: bytes, deflated: bytes) -> None:
        old = self._tails.pop(key, None)
        if old is not None:
            self._cached -= len(old[0]) + len(old[1])
        size = len(tail) + len(deflated)
        if size > self.cache_bytes:
            return
        tails = self._tails
        while tails and self._cached + size > self.cache_bytes:
            plain, out = tails.pop(next(iter(tails)))
            self._cached -= len(plain) + len(out)
        tails[key] = (tail, deflated)
        self._cached += size

    def compress(self, data: bytes, window_bits: int = 15) -> bytes:
        """The permessage-deflate payload of the message ``data``."""
        self.messages += 1
        stream = self._stream(window_bits)
        if data.startswith(b"MESSAGE\n"):
            mark = data.find(_SHARED_AFTER)
            cut = data.find(b"\n", mark + len(_SHARED_AFTER)) + 1 if mark > 0 else 0
            start = data.find(_MESSAGE_ID, 0, cut)
            if 0 < cut <= _STORED_MAX and start > 0:
                key = (window_bits, data[start : data.find(b"\n", start + 1)])
                tail = data[cut:]
                cached = self._tails.get(key)
                if cached is not None and cached[0] == tail:
                    self.reused += 1
                    deflated_tail = cached[1]
                else:
                    deflated_tail = _trimmed(self._deflate(stream, tail))
                    self._remember(key, tail, deflated_tail)
                # The head goes in a stored block: its few header lines
                # would hardly shrink, and copying them costs far less
                # than a deflate call per subscriber.
                return _stored(data[:cut]) + deflated_tail
        return _trimmed(self._deflate(stream, data))


def _stored(data: bytes) -> bytes:
    """``data`` as one non-final stored deflate block (RFC 1951 3.2.4), byte-aligned."""
    n = len(data)
    return _STORED_HEAD.pack(0, n, n ^ 0xFFFF) + data


def _trimmed(deflated: bytes) -> bytes:
    return deflated[:-4] if deflated.endswith(_FLUSH_TAIL) else deflated
