"""
Reading the cluster's queues for this node (:class:`Reads`, for
:class:`~stomptw.cluster.redisqueues.RedisQueues`): one blocking
``XREADGROUP ... >`` at a time, on a connection of its own, for only as
many entries as this node's subscribers can take (their credit, per
queue); ``CLIENT UNBLOCK`` cuts a blocked read short when another queue
gets credit. Also each queue's consumer group, made on first use, and the
registry of the cluster's queues.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.python.failure import Failure

from stomptw.cluster.codec import stream_fields
from stomptw.cluster.redisliveness import GROUP

__all__ = ["BLOCK_MS", "MAX_READ", "Reads"]

#: Milliseconds a read blocks waiting for entries (well under the link's
#: PING timeout, which a blocked read holds up).
BLOCK_MS = 1000
#: The most entries one read takes of one stream.
MAX_READ = 512


class Reads:
    """
    This node's reads of the cluster's queues.

    :param clock: the reactor's time (a failed read is tried again soon).
    :param node: this node's id, its consumer name in each group.
    :param prefix: the streams' key prefix (the subject follows it).
    :param registry: the key of the set of every cluster queue's subject.
    :param commands: ``() -> the command connection``, or None while it is down.
    :param reader: ``() -> the reading connection``, likewise.
    :param hand_over: ``(subject, entry_id, payload, deliveries)`` for each entry read.

    :ivar taken: entries read from Redis for this node's subscribers.
    :ivar reader_id: the reading connection's ``CLIENT ID``, to unblock it.
    """

    def __init__(
        self,
        clock: Any,
        node: str,
        prefix: str,
        registry: str,
        commands: Callable[[], Any],
        reader: Callable[[], Any],
        hand_over: Callable[[str, bytes, bytes, int], None],
    ) -> None:
        self._clock = clock
        self._node = node.encode()
        self._prefix = prefix
        self._registry = registry
        self._commands = commands
        self._reader = reader
        self._hand_over = hand_over
        self.taken = 0
        self.reader_id: Any = None
        self.stopped = False
        #: Credit per subject, as the queues last said.
        self._wants: dict[str, int] = {}
        #: Subjects whose group exists (checked on this connection), and being made.
        self._grouped: set[str] = set()
        self._grouping: set[str] = set()
        self._registered: set[str] = set()
        #: The subjects the read in progress is for; None while none is.
        self._reading: set[str] | None = None
        self._unblocking = False

    def want(self, subject: str, credit: int) -> None:
        """This node can take ``credit`` more entries of ``subject`` now."""
        if credit <= 0:
            self._wants.pop(subject, None)
            return
        self._wants[subject] = credit
        if subject not in self._grouped:
            self._make_group(subject)
            return
        self._read_for(subject)

    def _read_for(self, subject: str) -> None:
        """Read now, or cut the blocked read short if it is not for ``subject``."""
        if self._reading is None:
            self.read()
        elif subject not in self._reading:
            self._unblock()

    def register(self, protocol: Any, subject: str) -> None:
        """Note ``subject`` in Redis's registry of queues (once per connection)."""
        if subject not in self._registered:
            self._registered.add(subject)
            protocol.execute_command("SADD", self._registry, subject).addErrback(
                self._unregister, subject
            )

    def _unregister(self, failure: Failure, subject: str) -> None:
        self._registered.discard(subject)

    def _make_group(self, subject: str) -> None:
        protocol = self._commands()
        if protocol is None or subject in self._grouping:
            return
        self._grouping.add(subject)
        self.register(protocol, subject)
        d = protocol.execute_command(
            "XGROUP", "CREATE", self._prefix + subject, GROUP, "0", "MKSTREAM"
        )

        def made(result: object) -> None:
            self._grouping.discard(subject)
            if isinstance(result, Failure) and "BUSYGROUP" not in result.getErrorMessage():
                return  # the connection went; made again when it is back
            self._grouped.add(subject)
            if self._wants.get(subject):
                self._read_for(subject)

        d.addBoth(made)

    def read(self) -> None:
        """Start a read for every queue with credit, unless one is in progress."""
        if self._reading is not None or self.stopped:
            return
        protocol = self._reader()
        if protocol is None:
            return
        wants = self._wants
        subjects = self.claimable_subjects()
        if not subjects:
            return
        count = min(MAX_READ, max(wants[s] for s in subjects))
        keys = [self._prefix + s for s in subjects]
        self._reading = set(subjects)
        try:
            d = protocol.execute_command(
                "XREADGROUP",
                "GROUP",
                GROUP,
                self._node,
                "COUNT",
                count,
                "BLOCK",
                BLOCK_MS,
                "STREAMS",
                *keys,
                *([">"] * len(keys)),
            )
        except txredisapi.ConnectionError:
            self._reading = None
            return
        d.addCallbacks(self._read_done, self._read_failed)

    def _read_done(self, reply: Any) -> None:
        try:
            for key, entries in reply or ():
                subject = key[len(self._prefix) :].decode("utf-8", "surrogatepass")
                for entry_id, raw in entries:
                    fields = stream_fields(raw)
                    payload = fields.get(b"m")
                    if payload is None:
                        continue
                    self.taken += 1
                    self._hand_over(subject, entry_id, payload, int(fields.get(b"n", 0)))
        finally:
            self._reading = None
        self.read()

    def _read_failed(self, failure: Failure) -> None:
        subjects = self._reading or set()
        self._reading = None
        if "NOGROUP" in failure.getErrorMessage():
            # A stream deleted under us (FLUSHDB, DEL): make its group again.
            self._grouped.difference_update(subjects)
            for subject in subjects:
                if self._wants.get(subject):
                    self._make_group(subject)
            return
        if self._reader() is not None and not self.stopped:
            self._clock.callLater(0.1, self.read)

    def _unblock(self) -> None:
        """Cut the blocked read short, so that it is made again with another subject."""
        protocol = self._commands()
        if protocol is None or self.reader_id is None or self._unblocking:
            return
        self._unblocking = True

        def sent(_: object) -> None:
            self._unblocking = False

        protocol.execute_command("CLIENT", "UNBLOCK", self.reader_id).addBoth(sent)

    def forget_groups(self) -> None:
        """A new command connection: every group and registration is checked again."""
        self._grouped.clear()
        self._grouping.clear()
        self._registered.clear()

    def resume(self) -> None:
        """The connections are back: make the groups wanted, and read."""
        for subject, credit in list(self._wants.items()):
            if credit > 0:
                self._make_group(subject)
        self.read()

    def claimable_subjects(self) -> list[str]:
        """The queues this node's subscribers can take messages of now."""
        return [s for s, credit in self._wants.items() if credit > 0 and s in self._grouped]

    def credit(self, subject: str) -> int:
        """How many messages of ``subject`` this node's subscribers can take now."""
        return self._wants.get(subject, 0)
