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

__all__ = ["json_observer"]


def json_observer() -> FileLogObserver:
    """
    A log observer writing every event as one line of JSON to standard
    output (no record separator, so that each line parses on its own).
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
