"""
Telling systemd how the broker is doing (``Type=notify`` services).

A small implementation of the ``sd_notify`` protocol with the standard
library: one datagram per notification to the socket named by
``NOTIFY_SOCKET``. Without that variable (not started by systemd) every call
does nothing.

The broker sends ``READY=1`` once every listener is bound, ``WATCHDOG=1``
from the reactor at half the interval systemd asks for (``WatchdogSec=``,
passed as ``WATCHDOG_USEC``), so that a blocked reactor gets the service
restarted, ``STATUS=`` lines with connection and message counts, and
``STOPPING=1`` when it shuts down.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["Notifier", "SystemdNotifications"]

log = Logger()


class Notifier:
    """
    Sends ``sd_notify`` messages.

    :param environ: where ``NOTIFY_SOCKET`` is read from (``os.environ``).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            # An abstract socket: a leading NUL instead of the '@'.
            address = "\0" + address[1:]
        self.address = address

    @property
    def enabled(self) -> bool:
        """True when systemd listens for notifications."""
        return bool(self.address)

    def notify(self, **fields: str) -> bool:
        """
        Send ``NAME=value`` lines (``ready="1"`` becomes ``READY=1``); return
        whether the datagram was sent.
        """
        if not self.address:
            return False
        message = "\n".join(f"{name.upper()}={value}" for name, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), self.address)
        except OSError as e:
            log.warn("cannot notify systemd at {address}: {error}", address=self.address, error=e)
            return False
        return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float:
    """
    Seconds between ``WATCHDOG=1`` messages: half of ``WATCHDOG_USEC``, or 0
    when systemd asks for none (or asks another process, per ``WATCHDOG_PID``).
    """
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return 0.0
    if pid and pid != str(os.getpid()):
        return 0.0
    return int(usec) / 1_000_000 / 2


class SystemdNotifications:
    """
    The broker's conversation with systemd: readiness, watchdog, status.

    :param status: a callable returning the current ``STATUS=`` text.
    :param clock: the reactor, which sends the watchdog messages (so a
        blocked reactor misses them).
    :param notifier: where messages go; from the environment by default.
    :param interval: seconds between watchdog messages; from the
        environment by default.
    """

    def __init__(
        self,
        status,
        clock: IReactorTime,
        notifier: Notifier | None = None,
        interval: float | None = None,
    ) -> None:
        self.notifier = notifier or Notifier()
        self.interval = watchdog_interval() if interval is None else interval
        self._status = status
        self._clock = clock
        self._loop: LoopingCall | None = None

    def ready(self) -> None:
        """Every listener is bound: tell systemd, and start the watchdog."""
        if not self.notifier.enabled:
            return
        self.notifier.notify(ready="1", status=self._status())
        if self.interval > 0 and self._loop is None:
            self._loop = LoopingCall(self._tick)
            self._loop.clock = self._clock
            self._loop.start(self.interval, now=False)

    def _tick(self) -> None:
        self.notifier.notify(watchdog="1", status=self._status())

    def stopping(self) -> None:
        """The broker is shutting down."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.notifier.notify(stopping="1", status="stopping")
