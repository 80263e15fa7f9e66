"""
JSON log output: one JSON object per line on standard output.

For ``twistd``, which takes a log observer factory by name::

    twistd -n --pidfile= --logger=stomptw.logging.json_observer stomptw ...

(``twist --log-format=json stomptw ...`` needs nothing from here; it writes
the same objects, each preceded by an ASCII record separator.)

Every event the broker logs about a connection carries its fields as keys of
the object (``peer``, ``transport``, ``session``, ``duration``, ``reason``,
``error``...) next to Twisted's own (``log_format``, ``log_level``,
``log_namespace``, ``log_time``). Message bodies and header values such as
passcodes are never logged.
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver

__all__ = ["ConnectionLogBudget", "json_observer"]

#: Levels from the most detailed, as ``--log-level`` names them.
LEVELS = ("debug", "info", "warn", "error")


def json_observer() -> FileLogObserver:
    """
    A log observer writing every event as one line of JSON to standard
    output (no record separator, so that each line parses on its own).
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


class ConnectionLogBudget:
    """
    How many per-connection log lines may be written now: at most ``rate`` in
    each second (0: no limit). When thousands of browsers reconnect at once,
    the lines past it are counted, and the next line written is preceded by
    one that says how many were left out.

    :param level: ``--log-level``; at ``warn`` and above no per-connection
        line is written at all.
    """

    def __init__(self, rate: int, level: str = "info") -> None:
        self.rate = rate
        #: Whether per-connection lines are written at all.
        self.enabled = LEVELS.index(level) <= LEVELS.index("info")
        #: Whether "connection opened" lines are written (``--log-level debug``).
        self.debug = level == "debug"
        self._window = -1.0
        self._used = 0
        #: Lines left out since the last one written.
        self.skipped = 0

    def allow(self, now: float) -> int:
        """
        -1 if the line must be left out; else how many were left out before
        it (the caller logs that count first when it is not 0).
        """
        if not self.enabled:
            return -1
        if self.rate:
            if now - self._window >= 1.0:
                self._window = now
                self._used = 0
            self._used += 1
            if self._used > self.rate:
                self.skipped += 1
                return -1
        skipped, self.skipped = self.skipped, 0
        return skipped
