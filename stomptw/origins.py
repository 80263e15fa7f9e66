"""
Which browser pages may open a STOMP session over WebSocket: the origin
policy the WebSocket handshake applies (``--allowed-origins``), on plain
strings, with no Autobahn or Twisted state.
"""

from __future__ import annotations

import fnmatch
from urllib.parse import urlsplit

__all__ = ["origin_allowed"]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def origin_allowed(origin: str, host: str, patterns: list[str]) -> bool:
    """
    Whether a browser page from ``origin`` may open a STOMP session.

    Allowed: a page served by the same host and port the client connected to
    (the ``Host`` header), a page on a loopback address (``localhost`` and
    ``*.localhost``, ``127.0.0.1``, ``[::1]``, any port), and any origin
    matching one of
    ``patterns`` (shell-style wildcards on ``scheme://host[:port]``, e.g.
    ``https://*.example.com``; ``*`` allows every origin, ``null`` the null
    origin of local files and sandboxed frames).
    """
    origin = origin.strip().lower()
    for pattern in patterns:
        if fnmatch.fnmatchcase(origin, pattern.strip().lower()):
            return True
    if origin == "null":
        return False
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
    except ValueError:
        return False
    if not hostname:
        return False
    if hostname in _LOOPBACK_HOSTS or hostname.endswith(".localhost"):
        return True
    return bool(host) and parts.netloc == host.strip().lower()
