"""
Replayable streams: ``/stream/NAME``, a retained, bounded log of messages
that subscribers read from an offset of their choosing, with RabbitMQ's
stream headers.

Every message published to a stream gets the next offset (0 for the first
message of a new stream) and is kept, in the store, until the stream's
limits (count, bytes, age) trim it. Every MESSAGE carries:

- ``x-stream-offset``: its offset;
- ``x-stream-epoch``: the stream's incarnation. A stream whose history was
  lost (it was forgotten once empty and unused, or kept in memory across a
  restart) starts again at offset 0 under a new epoch;
- ``timestamp``: when the broker accepted it, in milliseconds since the epoch.

SUBSCRIBE's ``x-stream-offset`` says where to start: ``first`` (the oldest
message kept), ``last`` (the newest), ``next`` (only new ones; the
default), ``offset=N`` or ``timestamp=T`` (POSIX seconds: the first message
accepted then or later). A client that resumes after a reconnect subscribes
with ``offset=`` its last offset + 1 and ``x-stream-epoch`` its last epoch:
it gets exactly what it missed, in order, then live messages. When that is
impossible, because the history it asks for was trimmed or the epoch
changed, the first MESSAGE it gets carries ``x-stream-recovered:false``,
and what follows is what the stream still holds: a page should reload its
state.

A stream never redelivers: an ACK or NACK only makes room under
``prefetch-count``.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass

from zope.interface import implementer

from stomptw.destinations import DestinationContext
from stomptw.interfaces import IDestination, IMessageConsumer
from stomptw.model import Message, Subscription, message_size
from stomptw.store import StoredMessage

__all__ = [
    "EPOCH_HEADER",
    "OFFSET_HEADER",
    "RECOVERED_HEADER",
    "STREAM_PREFIX",
    "Stream",
    "StreamLimits",
    "StreamStart",
    "parse_start",
]

#: Stream destinations are named ``/stream/NAME``.
STREAM_PREFIX = "/stream/"
OFFSET_HEADER = "x-stream-offset"
EPOCH_HEADER = "x-stream-epoch"
RECOVERED_HEADER = "x-stream-recovered"
TIMESTAMP_HEADER = "timestamp"

# Compact the log's list once this many trimmed entries lead it.
_COMPACT_AFTER = 4096


@dataclass(frozen=True)
class StreamLimits:
    """How much a stream keeps: messages, bytes, and age in milliseconds (0: no limit)."""

    max_count: int = 0
    max_bytes: int = 0
    max_age_ms: int = 0


def parse_limit(text: str) -> tuple[str, StreamLimits]:
    """
    ``PATTERN:count=N:bytes=B:age=SECONDS`` (each part optional) as the
    pattern and its limits; ``ValueError`` saying what is wrong.
    """
    pattern, _, rest = text.partition(":")
    if not pattern.startswith(STREAM_PREFIX):
        raise ValueError(f"the pattern must start with {STREAM_PREFIX}, got {pattern!r}")
    values = {"count": 0, "bytes": 0, "age": 0.0}
    for part in filter(None, rest.split(":")):
        name, sep, value = part.partition("=")
        if not sep or name not in values:
            raise ValueError(f"expected count=N, bytes=B or age=SECONDS, got {part!r}")
        try:
            number = float(value) if name == "age" else int(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if number < 0:
            raise ValueError(f"{name} must not be negative, got {value!r}")
        values[name] = number
    return pattern, StreamLimits(values["count"], values["bytes"], int(values["age"] * 1000))


@dataclass(frozen=True)
class StreamStart:
    """Where a subscription starts reading (SUBSCRIBE's stream headers)."""

    #: ``first``, ``last``, ``next``, ``offset`` or ``timestamp``.
    kind: str = "next"
    #: The offset, or the time in milliseconds since the epoch.
    value: int = 0
    #: The epoch the client last saw, if it said.
    epoch: str | None = None


def parse_start(value: str | None, epoch: str | None = None) -> StreamStart:
    """SUBSCRIBE's ``x-stream-offset`` (and ``x-stream-epoch``); ``ValueError`` when malformed."""
    if value is None or value in ("first", "last", "next"):
        return StreamStart(value or "next", 0, epoch)
    kind, sep, number = value.partition("=")
    if sep and kind in ("offset", "timestamp") and number.isdigit():
        n = int(number)
        return StreamStart(kind, n * 1000 if kind == "timestamp" else n, epoch)
    raise ValueError(
        f"x-stream-offset must be first, last, next, offset=N or timestamp=SECONDS, got {value!r}"
    )


class _Reader:
    """One subscription's place in the stream."""

    __slots__ = ("cursor", "lost")

    def __init__(self, cursor: int, lost: bool) -> None:
        #: The offset it reads next.
        self.cursor = cursor
        #: Its next MESSAGE says that what it asked for is gone.
        self.lost = lost


@implementer(IDestination)
class Stream:
    """
    A retained log of messages, read from any offset by many subscribers.

    :ivar first_offset: the oldest offset kept.
    :ivar next_offset: the offset of the next message published.
    :ivar epoch: this incarnation of the stream.
    :ivar count: messages kept.
    :ivar bytes: what they count for (:attr:`~stomptw.model.Message.size`).
    """

    kind = "stream"
    #: Traffic through the stream (for the operator's console): messages and
    #: body bytes appended to it and delivered from it.
    messages_in = bytes_in = messages_out = bytes_out = 0
    #: Many subscribers read each message: its MESSAGE parts are encoded once.
    shares_encodings = True

    def __init__(self, name: str, context: DestinationContext, limits: StreamLimits) -> None:
        self.name = name
        self.context = context
        self.limits = limits
        self.epoch = os.urandom(6).hex()
        self.first_offset = 0
        self.next_offset = 0
        self.bytes = 0
        self._log: list[Message] = []
        self._times: list[int] = []
        self._head = 0
        self.subscriptions: list[Subscription] = []
        self._readers: dict[Subscription, _Reader] = {}
        self.blocked: set[IMessageConsumer] = set()

    @property
    def count(self) -> int:
        return self.next_offset - self.first_offset

    # -- writing -------------------------------------------------------------------------

    def publish(
        self, message: Message, producer: IMessageConsumer | None = None, reject: bool = True
    ) -> None:
        offset = self.next_offset
        now = self.context.now_ms()
        headers = message.headers
        headers.pop(RECOVERED_HEADER, None)  # the broker's to say, not a producer's
        headers[OFFSET_HEADER] = str(offset)
        headers[EPOCH_HEADER] = self.epoch
        headers[TIMESTAMP_HEADER] = str(now)
        message.size = message_size(headers, message.body)
        self.messages_in += 1
        self.bytes_in += len(message.body)
        # Kept until trimmed, whatever the sender said: the log is the point.
        message.persistent = True
        message.expires = 0
        key = message.key = self.context.new_key()
        self.context.store.put(
            StoredMessage(
                key, self.name, message.message_id, self.name, headers, message.body, 0, 0
            )
        )
        self._append(message, now)
        self._trim(now)
        for sub, reader in list(self._readers.items()):
            if reader.cursor == offset:
                self._pump(sub, reader)

    def restore(self, message: Message) -> None:
        """Take back a message loaded from the store (at startup, in offset order)."""
        headers = message.headers
        offset = int(headers.get(OFFSET_HEADER, self.next_offset))
        if not self.count:
            self.first_offset = self.next_offset = offset
            self.epoch = headers.get(EPOCH_HEADER, self.epoch)
        message.expires = 0
        self._append(message, int(headers.get(TIMESTAMP_HEADER, 0)))

    def _append(self, message: Message, when: int) -> None:
        self._log.append(message)
        self._times.append(when)
        self.next_offset += 1
        self.bytes += message.size

    def _trim(self, now: int) -> None:
        limits = self.limits
        oldest = now - limits.max_age_ms if limits.max_age_ms else None
        log, times, store = self._log, self._times, self.context.store
        while self._head < len(log) and (
            (limits.max_count and self.count > limits.max_count)
            or (limits.max_bytes and self.bytes > limits.max_bytes and self.count > 1)
            or (oldest is not None and times[self._head] < oldest)
        ):
            message = log[self._head]
            log[self._head] = None  # type: ignore[call-overload]
            self._head += 1
            self.first_offset += 1
            self.bytes -= message.size
            if message.key:
                store.remove(message.key)
                message.key = 0
        if self._head > _COMPACT_AFTER and self._head * 2 > len(log):
            del log[: self._head]
            del times[: self._head]
            self._head = 0

    def expire(self, now_ms: int) -> None:
        """The sweep's call: trim what is older than the age limit."""
        self._trim(now_ms)

    @property
    def expiring(self) -> int:
        """Something for the expiry sweep (messages, with an age limit)."""
        return self.count if self.limits.max_age_ms else 0

    # -- reading -------------------------------------------------------------------------

    def _start(self, start: StreamStart) -> _Reader:
        first, end = self.first_offset, self.next_offset
        if start.kind == "offset" and start.epoch is not None and start.epoch != self.epoch:
            # Offsets of another incarnation mean nothing here.
            return _Reader(first, True)
        if start.kind == "first":
            return _Reader(first, False)
        if start.kind == "last":
            return _Reader(max(first, end - 1), False)
        if start.kind == "offset":
            if start.value < first:
                return _Reader(first, True)
            if start.value > end:
                return _Reader(end, True)
            return _Reader(start.value, False)
        if start.kind == "timestamp":
            at = bisect.bisect_left(self._times, start.value, lo=self._head)
            return _Reader(first + at - self._head, False)
        return _Reader(end, False)

    def subscribe(self, subscription: Subscription) -> None:
        start = subscription.stream_start or StreamStart()
        self.subscriptions.append(subscription)
        reader = self._readers[subscription] = self._start(start)
        self._pump(subscription, reader)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._readers.pop(subscription, None)
        if subscription in self.subscriptions:
            self.subscriptions.remove(subscription)
        subscription.unacked.clear()

    def acked(self, subscription: Subscription, messages: list[Message]) -> None:
        self.ready(subscription)

    def nacked(self, subscription: Subscription, messages: list[Message]) -> None:
        # A log does not redeliver: the reader has moved on.
        self.ready(subscription)

    def ready(self, subscription: Subscription) -> None:
        reader = self._readers.get(subscription)
        if reader is not None:
            self._pump(subscription, reader)

    def _pump(self, sub: Subscription, reader: _Reader) -> None:
        """Deliver from the reader's cursor while the subscriber can take messages."""
        stats = self.context.stats
        readers = self._readers
        while reader.cursor < self.next_offset and sub.is_ready():
            if reader.cursor < self.first_offset:
                # Trimmed while it was behind.
                reader.cursor = self.first_offset
                reader.lost = True
                if reader.cursor >= self.next_offset:
                    return  # trimmed to nothing: the next message says so
            message = self._log[self._head + reader.cursor - self.first_offset]
            if reader.lost:
                flagged = Message(
                    message.message_id,
                    message.destination,
                    {**message.headers, RECOVERED_HEADER: "false"},
                    message.body,
                )
                if not sub.consumer.deliver(sub, flagged):
                    return
                reader.lost = False
            elif not sub.consumer.deliver(sub, message):
                return
            stats["delivered"] += 1
            self.messages_out += 1
            self.bytes_out += len(message.body)
            if readers.get(sub) is not reader:
                return  # the delivery ended the subscription
            reader.cursor += 1

    def is_idle(self) -> bool:
        return not self.count and not self.subscriptions

    def offsets(self) -> tuple[int, int]:
        """``(first, next)``: the oldest offset kept and the next one to be given."""
        return self.first_offset, self.next_offset
