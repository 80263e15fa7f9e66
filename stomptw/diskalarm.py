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
from twisted.logger import Logger

from stomptw.alarm import Alarm

__all__ = ["DiskAlarm"]

log = Logger()

#: The alarm clears at the limit plus this share of it.
CLEAR_ABOVE = 1.1


class DiskAlarm(Alarm):
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
        super().__init__(limit, clock, interval)
        self.directory = directory
        self.free = -1
        self._statvfs = statvfs

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
            self._release_all()

    def status(self) -> dict[str, Any]:
        """The alarm as the admin API shows it."""
        return {
            "active": self.active,
            "free_bytes": self.free,
            "limit_bytes": self.limit,
            "clear_above_bytes": int(self.limit * CLEAR_ABOVE),
            "held_connections": len(self.blocked),
        }
