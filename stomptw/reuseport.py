"""
The ``reuseport:`` server endpoint: TCP with ``SO_REUSEPORT``, so that
several stomptw processes on one machine listen on the same port and the
kernel spreads new connections over them (each process one core; with
``--cluster`` they act as one broker). Linux 3.9 and later.

``reuseport:PORT[:interface=ADDRESS][:backlog=N]``, as ``tcp:`` takes them;
the plugin in ``twisted/plugins/stomptw_plugin.py`` makes Twisted's
endpoint strings know it, for ``--tcp``, ``--ws`` and ``--admin`` alike.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

__all__ = ["ReusePortEndpoint", "ReusePortParser"]


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    """
    Listen on ``interface:port`` with ``SO_REUSEPORT`` (and ``SO_REUSEADDR``).

    :param reactor: a reactor that can adopt a listening socket
        (``IReactorSocket``: every reactor on Linux).
    :param port: the port (0 picks one, which other processes cannot share
        unless they are told it).
    :param interface: the address to bind; every IPv4 address by default.
    :param backlog: the listen queue's length.
    """

    def __init__(self, reactor: Any, port: int, interface: str = "", backlog: int = 50) -> None:
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog

    def listen(self, factory: Any) -> defer.Deferred:
        """Bind and listen, then hand the socket to the reactor; fires with the listening port."""
        return defer.maybeDeferred(self._listen, factory)

    def _listen(self, factory: Any) -> Any:
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            return self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        finally:
            # The reactor has its own duplicate of the descriptor.
            sock.close()


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """Parses ``reuseport:PORT[:interface=ADDRESS][:backlog=N]``."""

    prefix = "reuseport"

    def parseStreamServer(  # noqa: N802 - Twisted's name
        self, reactor: Any, *args: str, **kwargs: str
    ) -> ReusePortEndpoint:
        port = kwargs.pop("port", None) or (args[0] if args else None)
        if port is None or not str(port).isdigit():
            raise ValueError("reuseport: needs a port, e.g. reuseport:61613:interface=127.0.0.1")
        interface = kwargs.pop("interface", "")
        backlog = int(kwargs.pop("backlog", "50"))
        if kwargs or len(args) > 1:
            raise ValueError(
                "reuseport: takes a port, interface= and backlog= only, "
                f"got {sorted(kwargs) or list(args[1:])}"
            )
        return ReusePortEndpoint(reactor, int(port), interface, backlog)
