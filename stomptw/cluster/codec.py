"""
A topic message as it travels between the nodes of a cluster: one bytes
payload, compact and bytes-safe (the body is never escaped). Sans-IO.

Layout, integers big-endian::

    version    1 byte: 1
    expires    8 bytes: milliseconds since the epoch, 0 for never
    count      2 bytes: how many strings follow
    strings    count x (4-byte length, UTF-8 text): the node id, the node's
               instance (new at each start), the vhost, the destination, the
               message id, then each header's name and value
    body       the rest of the payload, as sent
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from stomptw.model import Message

__all__ = [
    "VERSION",
    "TopicMessage",
    "decode_topic_message",
    "encode_topic_message",
    "sender",
    "stream_fields",
    "topic_subject",
]

#: The layout's version; a node refuses payloads of another.
VERSION = 1

_HEAD = struct.Struct("!BQH")
_LENGTH = struct.Struct("!I")
_FIXED = 5  # strings before the headers


@dataclass(frozen=True)
class TopicMessage:
    """
    A topic message decoded from another node's payload.

    :ivar node: the id of the node that accepted it.
    :ivar instance: that node's instance (a fresh token at each start), to
        tell two live nodes given the same id apart.
    :ivar vhost: the virtual host it was sent to (``/`` by default).
    :ivar message: the message, with the id the first node gave it.
    """

    node: str
    instance: str
    vhost: str
    message: Message


def encode_topic_message(node: str, instance: str, vhost: str, message: Message) -> bytes:
    """The payload that carries ``message`` (sent to ``vhost``) from ``node``."""
    strings = [node, instance, vhost, message.destination, message.message_id]
    for name, value in message.headers.items():
        strings.append(name)
        strings.append(value)
    parts = [_HEAD.pack(VERSION, message.expires, len(strings))]
    for text in strings:
        data = text.encode("utf-8", "surrogatepass")
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    parts.append(message.body)
    return b"".join(parts)


def _leading(payload: bytes, count: int) -> list[bytes] | None:
    """The first ``count`` strings of ``payload``, as bytes; None if it is too short."""
    offset = _HEAD.size
    found = []
    for _ in range(count):
        if len(payload) < offset + 4:
            return None
        (length,) = _LENGTH.unpack_from(payload, offset)
        offset += 4
        found.append(payload[offset : offset + length])
        offset += length
    return found


def sender(payload: bytes) -> tuple[bytes, bytes]:
    """
    The node id and instance in ``payload``, as bytes, read without decoding
    the rest (a node skips its own messages this way); ``(b"", b"")`` if
    the payload is too short to hold them.
    """
    found = _leading(payload, 2)
    if found is None:
        return b"", b""
    return found[0], found[1]


def topic_subject(payload: bytes) -> str | None:
    """
    The vhost and destination in ``payload``, joined (a topic's subject),
    read without decoding the rest; None if the payload cannot hold them.
    """
    found = _leading(payload, 4)
    if found is None:
        return None
    try:
        return (found[2] + found[3]).decode("utf-8")
    except UnicodeDecodeError:
        return None


def decode_topic_message(payload: bytes) -> TopicMessage:
    """
    The message in ``payload``. Raises :class:`ValueError` if it is not one
    (another version, cut short, not UTF-8).
    """
    if len(payload) < _HEAD.size:
        raise ValueError("payload shorter than its header")
    version, expires, count = _HEAD.unpack_from(payload)
    if version != VERSION:
        raise ValueError(f"payload version {version}, expected {VERSION}")
    if count < _FIXED or (count - _FIXED) % 2:
        raise ValueError(f"payload has {count} strings")
    offset = _HEAD.size
    end = len(payload)
    strings = []
    for _ in range(count):
        if offset + 4 > end:
            raise ValueError("payload cut short")
        (length,) = _LENGTH.unpack_from(payload, offset)
        offset += 4
        if offset + length > end:
            raise ValueError("payload cut short")
        strings.append(payload[offset : offset + length].decode("utf-8", "surrogatepass"))
        offset += length
    node, instance, vhost, destination, message_id = strings[:_FIXED]
    rest = strings[_FIXED:]
    headers = dict(zip(rest[::2], rest[1::2], strict=True))
    message = Message(
        message_id,
        destination,
        headers,
        payload[offset:],
        persistent=headers.get("persistent") == "true",
        expires=expires,
    )
    return TopicMessage(node, instance, vhost, message)


def stream_fields(raw: list | None) -> dict[bytes, bytes]:
    """A Redis stream entry's flat field list as a dict (a deleted entry has none)."""
    if not raw:
        return {}
    return dict(zip(raw[::2], raw[1::2], strict=False))
