"""
The disk alarm: under ``--disk-free-limit`` of free space where the message
store lives, the broker stops reading from connections that send persistent
messages, as it does for a full queue (RabbitMQ's disk free limit). Other
traffic (non-persistent messages, consumers, ACKs, heart-beats) goes on.

Free space is looked at every ``interval`` seconds (one ``statvfs``, cheap)
on the broker's clock. The alarm clears once free space is back above the
limit plus a tenth, so that it does not flap at the edge; then every
connection it held is read again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["DiskAlarm"]

log = Logger()

#: The alarm clears at the limit plus this share of it.
CLEAR_ABOVE = 1.1


class DiskAlarm:
    """
    Free disk space under the store, against ``limit`` bytes.

    :ivar active: True while free space is under the limit.
    :ivar free: the free bytes last seen.
    :ivar blocked: the producers held back until it clears.
    """

    #: What a held producer's log line and the gate call it.
    name = "the disk free limit"
    kind = "disk"

    def __init__(
        self,
        directory: str,
        limit: int,
        clock: IReactorTime,
        interval: float = 1.0,
        statvfs: Callable[[str], Any] = os.statvfs,
    ) -> None:
        self.directory = directory
        self.limit = limit
        self.interval = interval
        self.active = False
        self.free = -1
        self.blocked: set[Any] = set()
        self._statvfs = statvfs
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def start(self) -> None:
        """Look now, then every ``interval`` seconds."""
        if self.limit and not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Look no more."""
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        """Look at the free space; raise or clear the alarm."""
        try:
            st = self._statvfs(self.directory)
        except OSError as e:
            log.warn("cannot see the free space of {dir}: {error}", dir=self.directory, error=e)
            return
        self.free = st.f_bavail * st.f_frsize
        if not self.active and self.free < self.limit:
            self.active = True
            log.warn(
                "disk alarm: {free} bytes free in {dir}, under --disk-free-limit {limit}; "
                "connections that send persistent messages are held until space is freed",
                free=self.free,
                dir=self.directory,
                limit=self.limit,
            )
        elif self.active and self.free >= self.limit * CLEAR_ABOVE:
            self.active = False
            log.info(
                "disk alarm cleared: {free} bytes free in {dir}; {count} connection(s) go on",
                free=self.free,
                dir=self.directory,
                count=len(self.blocked),
            )
            blocked, self.blocked = self.blocked, set()
            for producer in blocked:
                producer.unblock(self)

    def hold(self, producer: Any) -> None:
        """``producer`` sent a persistent message during the alarm: stop reading from it."""
        if producer not in self.blocked:
            self.blocked.add(producer)
            producer.block(self)
