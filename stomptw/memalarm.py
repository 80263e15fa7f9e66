"""
The memory alarm: past ``--memory-high-watermark`` of memory in use, the
broker stops reading from every connection that publishes, as RabbitMQ's
memory high watermark does. Consumers, ACKs and heart-beats go on, so
backlogs drain; once memory is back under nine tenths of the watermark every
held connection is read again.

What counts is the broker process's resident set size (RSS), read from
``/proc/self/statm`` every ``interval`` seconds (one small read, a few
microseconds). Between two readings every published message's size is added,
twice, to the last reading, so that a fast producer cannot take the broker
past the watermark before the next one: crossing the watermark that way reads
the RSS at once. (Twice because a held message costs more than its size: its
object, its headers' dictionary; overestimating only reads the RSS sooner.)

The C allocator keeps memory it got from the system after Python frees it,
so the RSS of a broker whose backlog drained stays where it was. Before
raising the alarm, and while it is raised, the broker asks the allocator to
give back what it does not use (glibc's ``malloc_trim``), so that the RSS
shows what the broker holds now.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import re
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stomptw.alarm import Alarm

__all__ = [
    "HeapTrim",
    "MemoryAlarm",
    "heap_trim_service",
    "machine_memory",
    "parse_watermark",
    "process_rss",
    "resolve_watermark",
    "trim_heap",
]

log = Logger()

#: The alarm clears under this share of the watermark.
CLEAR_BELOW = 0.9

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*$", re.IGNORECASE)


def parse_watermark(text: str) -> tuple[float, int]:
    """
    Read a ``--memory-high-watermark`` value: ``(fraction, 0)`` for a share
    of the machine's memory (``"0.4"``; 0 turns the alarm off), ``(0.0,
    bytes)`` for an absolute size (``"512MiB"``, ``"2GB"``, ``"1073741824"``).
    Raise :class:`ValueError` saying what is wrong.
    """
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(
            f"must be a fraction of the machine's memory (0.4) or a size (512MiB, 2GB), "
            f"got {text!r}"
        )
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    if not unit and number <= 1:
        return number, 0
    if not unit and not number.is_integer():
        raise ValueError(f"a fraction must be at most 1, got {text!r}")
    size = int(number * _UNITS[unit])
    if size < 16 * 1024**2:
        raise ValueError(f"an absolute size must be at least 16MiB, got {text!r}")
    return 0.0, size


def check_watermark(text: str) -> None:
    """A setting check: refuse what :func:`parse_watermark` refuses."""
    parse_watermark(text)


def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError:
        return 0
    return int(value) if value.isdigit() else 0


def machine_memory() -> int:
    """
    The memory this process may use: the machine's total memory, or its
    cgroup's limit if that is smaller (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``). 0 if unknown.
    """
    total = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        limit = _read_int(path)
        if limit and (not total or limit < total):
            total = limit
    return total


def resolve_watermark(text: str, memory: Callable[[], int] = machine_memory) -> int:
    """The watermark in bytes (0: no alarm) for a ``--memory-high-watermark`` value."""
    fraction, size = parse_watermark(text)
    if size:
        return size
    return int(fraction * memory()) if fraction else 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_rss() -> int:
    """This process's resident set size in bytes (0 where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _malloc_trim() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0) and None


#: Give freed heap memory back to the system (a no-op without glibc).
trim_heap = _malloc_trim()

#: How often a broker process gives freed heap memory back (seconds).
HEAP_TRIM_SECONDS = 30.0

#: Connections ended since the last collection past which :class:`HeapTrim`
#: runs a full garbage collection before trimming.
COLLECT_AFTER_SESSIONS = 1000


class HeapTrim:
    """
    Give memory the broker no longer uses back to the system; called every
    :data:`HEAP_TRIM_SECONDS`.

    Two things keep a broker's RSS at its peak after a storm of short
    connections. A closed connection leaves cycles of objects (session,
    protocol, transport) that only a full garbage collection frees, and an
    idle broker allocates too little to trigger one; and the C allocator
    keeps what Python freed. So once :data:`COLLECT_AFTER_SESSIONS`
    connections ended since the last collection, this collects first; then
    it always trims the heap (microseconds when there is nothing to give
    back, tens of milliseconds when it returns hundreds of MiB).

    :param ended: how many connections have ended so far.
    """

    def __init__(
        self,
        ended: Callable[[], int] = lambda: 0,
        trim: Callable[[], None] = trim_heap,
        collect: Callable[[], object] = gc.collect,
    ) -> None:
        self._ended = ended
        self._trim = trim
        self._collect = collect
        self._ended_at = ended()
        #: Full collections run.
        self.collections = 0

    def __call__(self) -> None:
        ended = self._ended()
        if ended - self._ended_at >= COLLECT_AFTER_SESSIONS:
            self._ended_at = ended
            self._collect()
            self.collections += 1
        self._trim()


def heap_trim_service(
    clock: IReactorTime | None = None, ended: Callable[[], int] = lambda: 0
) -> TimerService:
    """
    A service that calls a :class:`HeapTrim` every :data:`HEAP_TRIM_SECONDS`,
    for a process that is the broker's (``twistd stomptw`` adds it, counting
    its broker's ended connections); an embedding application decides for
    its own process.
    """
    service = TimerService(HEAP_TRIM_SECONDS, HeapTrim(ended))
    if clock is not None:
        service.clock = clock
    return service


class MemoryAlarm(Alarm):
    """
    The broker's memory use against ``limit`` bytes.

    :ivar active: True while the alarm is raised.
    :ivar used: the memory in use as last measured, plus what was published
        since.
    :ivar blocked: the producers held until it clears.
    :ivar raised: how many times the alarm went off.
    """

    #: What a held producer's log line calls it.
    name = "the memory high watermark"
    kind = "memory"

    def __init__(
        self,
        limit: int,
        clock: IReactorTime,
        interval: float = 0.5,
        rss: Callable[[], int] = process_rss,
        trim: Callable[[], None] = trim_heap,
    ) -> None:
        super().__init__(limit, clock, interval)
        self.used = 0
        self.raised = 0
        self._rss = rss
        self._trim = trim

    def account(self, size: int) -> None:
        """
        A message of ``size`` bytes was published: count it (twice) until the
        next measurement, and measure now if that takes the estimate over the
        watermark.
        """
        used = self.used = self.used + 2 * size
        if not self.active and self.limit and used >= self.limit:
            self.check()

    def _measure(self) -> int:
        self.used = self._rss()
        return self.used

    def check(self) -> None:
        """Measure; raise or clear the alarm."""
        used = self._measure()
        clear_below = self.limit * CLEAR_BELOW
        if used >= (self.limit if not self.active else clear_below):
            # Freed memory the allocator keeps would count otherwise.
            self._trim()
            used = self._measure()
        if not self.active and used >= self.limit:
            self.active = True
            self.raised += 1
            log.warn(
                "memory alarm: the broker uses {used} bytes, over --memory-high-watermark "
                "({limit} bytes); connections that publish are held until it is under "
                "{clear} bytes",
                used=used,
                limit=self.limit,
                clear=int(clear_below),
            )
        elif self.active and used < clear_below:
            self.active = False
            log.info(
                "memory alarm cleared: the broker uses {used} bytes; {count} connection(s) go on",
                used=used,
                count=len(self.blocked),
            )
            self._release_all()

    def status(self) -> dict[str, Any]:
        """The alarm as the admin API shows it."""
        return {
            "active": self.active,
            "used_bytes": self.used,
            "limit_bytes": self.limit,
            "clear_below_bytes": int(self.limit * CLEAR_BELOW),
            "held_connections": len(self.blocked),
            "raised": self.raised,
        }
