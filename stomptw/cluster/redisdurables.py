"""
Durable topic subscriptions across the cluster, on Redis Streams
(:class:`RedisDurables`).

A topic with durable subscriptions has a log, the stream
``stomptw:<db>:durable:<vhost><topic>``: the node a message is published
on appends it there (``XADD ... NOMKSTREAM``, so a topic without durable
subscriptions has no log), just before publishing it to the other nodes.
Each durable subscription is a consumer group on its topic's log, named by
its owner (client-id and name), created from "now" when it is first
subscribed to; it collects whatever any node publishes from then on,
whether or not its subscriber, or the subscriber's node, is there.

The node its subscriber is attached to reads the group (``XREADGROUP``,
not blocking: a read follows each topic message the node hears of, and
one every second), as far as the subscriber's credit allows. Attaching on
any node first claims what the group had pending with any node (the
subscriber's previous one, alive or not), so that it resumes where it left.
A log is trimmed to what its slowest group still needs, and to
``--max-queue-length`` messages (1,000,000 when unlimited), dropping the
oldest, as a single node's durable subscription does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw.cluster.codec import stream_fields
from stomptw.cluster.redisliveness import every, stop_all
from stomptw.interfaces import IClusterDurables

__all__ = ["RedisDurables", "durable_log_key"]

log = Logger()

#: Seconds between reads of every attached durable subscription (besides
#: those each topic message starts), and between trims of the logs.
POLL_INTERVAL = 1.0
TRIM_INTERVAL = 5.0
#: The most entries one read or claim takes.
MAX_READ = 512
#: A log's length bound when --max-queue-length is 0 (no limit).
DEFAULT_LOG_LENGTH = 1_000_000


def durable_log_key(db: int, topic: str) -> str:
    """The log of ``topic`` (vhost and destination) in database ``db``."""
    return f"stomptw:{db}:durable:{topic}"


@dataclass
class _Attached:
    """A durable subscription whose subscriber is on this node."""

    credit: int = 0
    ready: bool = False
    reading: bool = False
    again: bool = False
    held: set[bytes] = field(default_factory=set)
    acks: list[bytes] = field(default_factory=list)


@implementer(IClusterDurables)
class RedisDurables:
    """
    The cluster's durable subscriptions on Redis Streams, on the command
    connection of the cluster's queues (:class:`~stomptw.cluster.redisqueues.RedisQueues`).

    :param protocol: ``() -> protocol or None``: the command connection while it is up.
    :param clock: the reactor's time.
    :param db: the cluster's database.
    :param node: this node's id (the consumer name in every group).
    :param max_length: ``--max-queue-length`` (0: :data:`DEFAULT_LOG_LENGTH`).
    """

    def __init__(
        self, protocol: Callable[[], Any], clock: Any, db: int, node: str, max_length: int = 0
    ) -> None:
        self._protocol = protocol
        self._clock = clock
        self._db = db
        self._node = node.encode()
        self.max_length = max_length or DEFAULT_LOG_LENGTH
        self._owners = f"stomptw:{db}:durable-owners"
        self._logs = f"stomptw:{db}:durable-logs"
        self._attached: dict[tuple[str, str], _Attached] = {}
        self._by_topic: dict[str, set[str]] = {}
        self._deliver: Callable[[str, str, bytes, bytes, int], None] = lambda *a: None
        self._flush_call: Any = None
        self._timers: list[LoopingCall] = []
        self._stopped = False
        #: Attaches under way (their groups being made), and what waits for
        #: them: RECEIPTs of durable SUBSCRIBEs (:meth:`sync`).
        self._attaching: set[int] = set()
        self._attach_ids = itertools.count()
        self._sync_waiters: list[tuple[set[int], list[Failure], defer.Deferred]] = []
        #: Entries claimed when a subscriber attached (left pending before).
        self.claimed = 0

    def _key(self, topic: str) -> str:
        return durable_log_key(self._db, topic)

    # -- IClusterDurables --------------------------------------------------------------

    def start(self, deliver: Callable[[str, str, bytes, bytes, int], None]) -> None:
        self._deliver = deliver
        self._timers.append(every(self._clock, POLL_INTERVAL, self._poll))
        self._timers.append(every(self._clock, TRIM_INTERVAL, self._trim_all))

    def attach(self, topic: str, owner: str) -> None:
        key = (topic, owner)
        state = self._attached.get(key)
        if state is None:
            self._attached[key] = _Attached()
            self._by_topic.setdefault(topic, set()).add(owner)
        else:
            state.ready = False  # no reads until what it left pending is claimed
        self._prepare(key)

    def attached_topics(self) -> Any:
        """The topics with a durable subscriber on this node (a view; empty if none)."""
        return self._by_topic.keys()

    def sync(self) -> defer.Deferred:
        """Fire once every attach so far has its group in Redis."""
        if not self._attaching:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._sync_waiters.append((set(self._attaching), [], d))
        return d

    def want(self, topic: str, owner: str, credit: int) -> None:
        state = self._attached.get((topic, owner))
        if state is None:
            return
        state.credit = max(0, credit)
        if state.credit:
            self._read((topic, owner))

    def notify(self, topic: str) -> None:
        for owner in self._by_topic.get(topic, ()):
            self._read((topic, owner))

    def done(self, topic: str, owner: str, entry_id: bytes) -> None:
        state = self._attached.get((topic, owner))
        if state is None:
            return
        state.held.discard(entry_id)
        state.acks.append(entry_id)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)

    def release(self, topic: str, owner: str, entry_id: bytes) -> None:
        state = self._attached.get((topic, owner))
        if state is not None:
            state.held.discard(entry_id)

    def remove(self, topic: str, owner: str) -> None:
        state = self._attached.pop((topic, owner), None)
        owners = self._by_topic.get(topic)
        if owners is not None:
            owners.discard(owner)
            if not owners:
                del self._by_topic[topic]
        if state is not None and state.acks:
            self._flush()
        protocol = self._protocol()
        if protocol is None:
            return
        protocol.execute_command("XGROUP", "DESTROY", self._key(topic), owner).addErrback(_ignore)
        protocol.execute_command("HDEL", self._owners, owner).addErrback(_ignore)

    def up(self) -> None:
        """The command connection is (back) up: every attached subscription is prepared again."""
        for key, state in self._attached.items():
            state.ready = state.reading = False
            self._prepare(key)
        self._flush()

    def stop(self) -> None:
        self._stopped = True
        stop_all(self._timers, self._flush_call)
        self._flush_call = None
        self._flush()

    # -- attaching -----------------------------------------------------------------------

    def _prepare(self, key: tuple[str, str]) -> None:
        protocol = self._protocol()
        if protocol is None:
            return

        number = next(self._attach_ids)
        self._attaching.add(number)
        self._attach(protocol, key).addBoth(self._attached_now, number)

    def _attached_now(self, result: object, number: int) -> None:
        self._attaching.discard(number)
        failed = isinstance(result, Failure)
        if failed and not result.check(txredisapi.ConnectionError):
            log.failure("cluster: attaching a durable subscription failed", result)
        for waiter in list(self._sync_waiters):
            numbers, failures, d = waiter
            if number not in numbers:
                continue
            numbers.discard(number)
            if failed:
                failures.append(result)
            if not numbers:
                self._sync_waiters.remove(waiter)
                if failures:
                    d.errback(failures[0])
                else:
                    d.callback(None)

    @defer.inlineCallbacks
    def _attach(self, protocol: Any, key: tuple[str, str]) -> Any:
        topic, owner = key
        log_key = self._key(topic)
        before = yield protocol.execute_command("HGET", self._owners, owner)
        if before is not None and before.decode("utf-8", "surrogatepass") != topic:
            # Subscribed under the same name to another topic: that one goes.
            old = self._key(before.decode("utf-8", "surrogatepass"))
            yield protocol.execute_command("XGROUP", "DESTROY", old, owner)
        yield protocol.execute_command("HSET", self._owners, owner, topic)
        yield protocol.execute_command("SADD", self._logs, topic)
        try:
            yield protocol.execute_command("XGROUP", "CREATE", log_key, owner, "$", "MKSTREAM")
        except txredisapi.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        state = self._attached.get(key)
        if state is None:
            return
        # What the group had pending with any node (the subscriber's previous
        # one, or this one before a restart) comes first, delivered again.
        rows = yield protocol.execute_command("XPENDING", log_key, owner, "-", "+", MAX_READ)
        counts = {row[0]: int(row[3]) for row in rows or () if row[0] not in state.held}
        if counts:
            entries = yield protocol.execute_command(
                "XCLAIM", log_key, owner, self._node, 0, *counts
            )
            for entry in entries or ():
                if entry and entry[0] not in state.held:
                    self.claimed += 1
                    self._hand_over(key, state, entry, counts.get(entry[0], 1))
        state.ready = True
        self._read(key)

    # -- reading ---------------------------------------------------------------------------

    def _read(self, key: tuple[str, str]) -> None:
        state = self._attached.get(key)
        if state is None or not state.ready or self._stopped:
            return
        if state.reading:
            state.again = True
            return
        if state.credit <= 0:
            return
        protocol = self._protocol()
        if protocol is None:
            return
        topic, owner = key
        state.reading, state.again = True, False
        d = protocol.execute_command(
            "XREADGROUP",
            "GROUP",
            owner,
            self._node,
            "COUNT",
            min(MAX_READ, state.credit),
            "STREAMS",
            self._key(topic),
            ">",
        )

        def read(reply: Any) -> None:
            state.reading = False
            for _, entries in reply or ():
                for entry in entries:
                    self._hand_over(key, state, entry, 0)
            if state.again:
                self._read(key)

        def failed(failure: Failure) -> None:
            state.reading = False
            if "NOGROUP" in failure.getErrorMessage():
                state.ready = False  # the log or the group went: made again
                self._prepare(key)

        d.addCallbacks(read, failed)

    def _hand_over(
        self, key: tuple[str, str], state: _Attached, entry: Any, deliveries: int
    ) -> None:
        entry_id, raw = entry
        fields = stream_fields(raw)
        payload = fields.get(b"m")
        if payload is None:
            return
        state.held.add(entry_id)
        try:
            self._deliver(key[0], key[1], entry_id, payload, deliveries)
        except Exception:
            log.failure("cluster: a durable subscription's message could not be delivered")

    def _poll(self) -> None:
        for key, state in self._attached.items():
            if state.credit > 0:
                self._read(key)

    # -- acknowledging and trimming ------------------------------------------------------

    def _flush(self) -> None:
        self._flush_call = None
        protocol = self._protocol()
        if protocol is None:
            return
        for (topic, owner), state in self._attached.items():
            if state.acks:
                ids, state.acks = state.acks, []
                d = protocol.execute_command("XACK", self._key(topic), owner, *ids)
                d.addErrback(self._not_acked, state, ids)

    @staticmethod
    def _not_acked(failure: Failure, state: _Attached, ids: list[bytes]) -> None:
        state.acks.extend(ids)  # sent again with the next ones, once Redis is back

    def _trim_all(self) -> None:
        protocol = self._protocol()
        if protocol is None:
            return
        self._trim(protocol).addErrback(_ignore)

    @defer.inlineCallbacks
    def _trim(self, protocol: Any) -> Any:
        topics = yield protocol.execute_command("SMEMBERS", self._logs)
        for raw in topics or ():
            topic = raw.decode("utf-8", "surrogatepass")
            log_key = self._key(topic)
            groups = yield protocol.execute_command("XINFO", "GROUPS", log_key)
            if not groups:
                yield protocol.execute_command("DEL", log_key)
                yield protocol.execute_command("SREM", self._logs, topic)
                continue
            needed = []
            for group in groups:
                info = stream_fields(group)
                needed.append(_next_id(info[b"last-delivered-id"]))
                if int(info.get(b"pending", 0)):
                    summary = yield protocol.execute_command("XPENDING", log_key, info[b"name"])
                    needed.append(summary[1])
            oldest = min(needed, key=_id_key)
            yield protocol.execute_command("XTRIM", log_key, "MINID", oldest)


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _next_id(entry_id: bytes) -> bytes:
    """The id after ``entry_id`` (what a group still needs starts there)."""
    ms, seq = _id_key(entry_id)
    return b"%d-%d" % (ms, seq + 1)


def _ignore(failure: Failure) -> None:
    """Best effort: Redis gone or the answer no longer matters."""
