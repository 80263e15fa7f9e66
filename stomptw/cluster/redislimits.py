"""
Queue limits that hold across the cluster (:class:`ClusterLimits`, for
:class:`~stomptw.cluster.redisqueues.RedisQueues`), when
``--max-queue-length`` or ``--max-queue-bytes`` is set.

A cluster queue's length is its stream's (``XLEN``: waiting and
unacknowledged messages together, on every node, as on a single node). Its
bytes are the sizes of its entries as stored (the encoded message) plus the
allowance per message a single node counts (``MESSAGE_OVERHEAD``), kept in
the hash ``stomptw:<db>:queue-bytes``: each SEND adds its size in the
script that appends it, and each acknowledgement takes it off in the script
that deletes the entry (only for an entry that was still there, so an
acknowledgement sent again after a lost connection counts once).

Each node sees a queue's length and bytes as Redis last reported them: in
the answer to each of its SENDs and acknowledgements, every
``STATUS_INTERVAL``, and every :data:`POLL_INTERVAL` while producers wait
for room; plus its own SENDs still on their way. ``block`` and ``reject``
are decided on that view, so nodes racing at the edge may pass a limit by
the messages in flight between them and Redis (docs/cluster.md says so).
With both limits off (``--max-queue-bytes 0``, ``--max-queue-length 0``),
none of this runs: SENDs are plain ``XADD``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from stomptw.destinations import RESUME_BELOW
from stomptw.model import MESSAGE_OVERHEAD

__all__ = ["POLL_INTERVAL", "ClusterLimits", "bytes_key"]

#: Seconds between reads of the queues whose producers wait for room.
POLL_INTERVAL = 0.2

#: Append an entry and count its bytes; answer the queue's length and bytes.
_ADD = """
redis.call('XADD', KEYS[1], '*', 'm', ARGV[2])
local b = redis.call('HINCRBY', KEYS[2], ARGV[1], string.len(ARGV[2]) + tonumber(ARGV[3]))
return {redis.call('XLEN', KEYS[1]), b}
"""

#: Acknowledge and delete entries, and take off the bytes of those that
#: were still there; answer the queue's length and bytes.
_SETTLE = """
local total = 0
for i = 3, #ARGV, 2 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then total = total + tonumber(ARGV[i + 1]) end
end
local n = redis.call('XLEN', KEYS[1])
if n == 0 then
  redis.call('HDEL', KEYS[2], ARGV[2])
  return {0, 0}
end
local b = 0
if total > 0 then
  b = redis.call('HINCRBY', KEYS[2], ARGV[2], -total)
else
  b = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
end
return {n, b}
"""

#: Append an entry again for any node, drop the old one, and count the
#: difference in size (the whole new size if the old one was gone).
_GIVE_BACK = """
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'n', ARGV[2])
redis.call('XACK', KEYS[1], ARGV[3], ARGV[4])
local gone = redis.call('XDEL', KEYS[1], ARGV[4])
local size = string.len(ARGV[1]) + tonumber(ARGV[7])
redis.call('HINCRBY', KEYS[2], ARGV[6], size - gone * tonumber(ARGV[5]))
return 1
"""

#: Delete every entry no node has read yet (after the group's last
#: delivered id), taking its bytes off; answer how many.
_PURGE = """
local last = '0-0'
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) == 'table' and groups.err then return 0 end
for _, g in ipairs(groups) do
  local name, id
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then id = g[i + 1] end
  end
  if name == ARGV[1] then last = id end
end
local n, total = 0, 0
while true do
  local batch = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 500)
  if #batch == 0 then break end
  for _, e in ipairs(batch) do
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'm' then total = total + string.len(f[i + 1]) + tonumber(ARGV[3]) end
    end
    redis.call('XDEL', KEYS[1], e[1])
    n = n + 1
  end
  last = batch[#batch][1]
end
if total > 0 and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], -total)
end
return n
"""

#: A queue's length and bytes (the bytes forgotten when it is empty).
_DEPTH = """
local n = redis.call('XLEN', KEYS[1])
if n == 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return {0, 0}
end
return {n, tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')}
"""


def bytes_key(db: int) -> str:
    """The hash of each cluster queue's bytes in database ``db``."""
    return f"stomptw:{db}:queue-bytes"


def _sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


_ADD_SHA = _sha(_ADD)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


_OVERHEAD_ARG = _bulk(b"%d" % MESSAGE_OVERHEAD)


class ClusterLimits:
    """
    The cluster-wide length and bytes of each queue, as Redis last
    reported them, and the Redis commands that keep the bytes.

    :param db: the cluster's Redis database.
    :param max_length: ``--max-queue-length`` (0: none).
    :param max_bytes: ``--max-queue-bytes`` (0: none).
    :param key: ``subject -> stream key``.

    :ivar counted: whether any limit is set (SENDs and acknowledgements then
        go through scripts that count).
    :ivar on_view: called with a watched queue's subject when its view shows
        room again (under :data:`RESUME_BELOW` of its limits).
    """

    def __init__(self, db: int, max_length: int, max_bytes: int, key: Callable[[str], str]) -> None:
        self.max_length = max_length
        self.max_bytes = max_bytes
        self.counted = bool(max_length or max_bytes)
        self.hash_key = bytes_key(db)
        self._hash = self.hash_key.encode()
        self._key = key
        self._view: dict[str, tuple[int, int]] = {}
        #: This node's SENDs written to Redis and not yet answered, per
        #: queue: messages and bytes (added to the view).
        self._unanswered: dict[str, list[int]] = {}
        self._watched: set[str] = set()
        self.on_view: Callable[[str], None] = lambda subject: None

    # -- the view ----------------------------------------------------------------------

    def held(self, subject: str) -> tuple[int, int]:
        """
        ``(messages, bytes)`` of the queue across the cluster, as last
        reported, with this node's SENDs since then.
        """
        count, size = self._view.get(subject, (0, 0))
        unanswered = self._unanswered.get(subject)
        if unanswered is not None:
            count += unanswered[0]
            size += unanswered[1]
        return count, size

    def answered(self, subject: str, length: int, reply: Any) -> None:
        """Redis answered a counted SEND of ``length`` bytes (``[length, bytes]`` or an error)."""
        self.unsent(subject, length)
        self.seen(subject, reply)

    def unsent(self, subject: str, length: int) -> None:
        """A counted SEND of ``length`` bytes is no longer on its way (answered, or lost)."""
        unanswered = self._unanswered.get(subject)
        if unanswered is None:
            return
        unanswered[0] -= 1
        unanswered[1] -= length + MESSAGE_OVERHEAD
        if unanswered[0] <= 0:
            del self._unanswered[subject]

    def seen(self, subject: str, reply: Any) -> None:
        """Redis reported ``[length, bytes]`` for ``subject``."""
        try:
            view = (int(reply[0]), int(reply[1]))
        except (TypeError, ValueError, IndexError):
            return  # an error answer: the next report says
        self._view[subject] = view
        if subject in self._watched and self._has_room(subject):
            self.on_view(subject)

    def _has_room(self, subject: str) -> bool:
        """Whether the queue is under :data:`RESUME_BELOW` of its limits (producers may go on)."""
        count, size = self.held(subject)
        return not (
            (self.max_length and count >= self.max_length * RESUME_BELOW)
            or (self.max_bytes and size >= self.max_bytes * RESUME_BELOW)
        )

    def watch(self, subject: str, on: bool) -> None:
        """Read ``subject``'s view every :data:`POLL_INTERVAL` while ``on`` (producers wait)."""
        if on:
            self._watched.add(subject)
        else:
            self._watched.discard(subject)

    def poll(self, protocol: Any) -> None:
        """Read the view of every watched queue (in the background)."""
        if protocol is None:
            return
        for subject in list(self._watched):
            self.read(protocol, subject)

    def read(self, protocol: Any, subject: str) -> defer.Deferred:
        """Read ``subject``'s length and bytes into the view."""
        d = protocol.eval(_DEPTH, [self._key(subject), self.hash_key], [subject])
        d.addCallback(lambda reply: self.seen(subject, reply))
        return d.addErrback(lambda _: None)

    # -- the commands ------------------------------------------------------------------

    def load(self, protocol: Any) -> defer.Deferred:
        """Load the SEND script on a new connection (before any SEND on it)."""
        return protocol.execute_command("SCRIPT", "LOAD", _ADD)

    def add_parts(self, subject: str, payload: bytes) -> list[bytes]:
        """The RESP of a counted SEND of ``payload`` to ``subject`` (counted as on its way)."""
        size = len(payload) + MESSAGE_OVERHEAD
        unanswered = self._unanswered.get(subject)
        if unanswered is None:
            self._unanswered[subject] = [1, size]
        else:
            unanswered[0] += 1
            unanswered[1] += size
        key = self._key(subject).encode("utf-8", "surrogatepass")
        name = subject.encode("utf-8", "surrogatepass")
        head = (
            b"*8\r\n$7\r\nEVALSHA\r\n"
            + _bulk(_ADD_SHA)
            + b"$1\r\n2\r\n"
            + _bulk(key)
            + _bulk(self._hash)
            + _bulk(name)
            + b"$%d\r\n" % len(payload)
        )
        return [head, payload, b"\r\n", _OVERHEAD_ARG]

    def settle(
        self, protocol: Any, subject: str, group: str, entries: dict[bytes, int]
    ) -> defer.Deferred:
        """Acknowledge and delete ``entries`` (id: stored length), taking their bytes off."""
        args: list[Any] = [group, subject]
        for entry_id, length in entries.items():
            args += [entry_id, length + MESSAGE_OVERHEAD]
        d = protocol.eval(_SETTLE, [self._key(subject), self.hash_key], args)
        return d.addCallback(lambda reply: self.seen(subject, reply))

    def give_back(
        self,
        protocol: Any,
        subject: str,
        group: str,
        entry_id: bytes,
        payload: bytes,
        deliveries: int,
        old_size: int,
    ) -> defer.Deferred:
        """Append ``payload`` again and drop ``entry_id`` (``old_size`` stored bytes), counting."""
        return protocol.eval(
            _GIVE_BACK,
            [self._key(subject), self.hash_key],
            [
                payload,
                deliveries,
                group,
                entry_id,
                old_size + MESSAGE_OVERHEAD,
                subject,
                MESSAGE_OVERHEAD,
            ],
        )

    def purge(self, protocol: Any, subject: str, group: str) -> defer.Deferred:
        """Delete what waits in ``subject`` unread by any node; fires with how many."""
        d = protocol.eval(
            _PURGE, [self._key(subject), self.hash_key], [group, subject, MESSAGE_OVERHEAD]
        )

        def purged(count: Any) -> int:
            self.read(protocol, subject)
            return int(count)

        return d.addCallback(purged)

    def read_all(self, lengths: dict[str, int], sizes: dict[bytes, bytes]) -> None:
        """The periodic status read: every queue's length, and the bytes hash."""
        for subject, length in lengths.items():
            raw = sizes.get(subject.encode("utf-8", "surrogatepass"), b"0")
            self.seen(subject, (length, raw if length else 0))
