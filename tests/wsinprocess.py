"""
A WebSocket connection of the broker's, opened in process: the protocol a
factory builds, on a ``StringTransport``, after the opening handshake (no
socket, no reactor).
"""

from __future__ import annotations

import base64
import os

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport


def open_in_process(factory, port: int = 40000):
    """``(protocol, transport)`` for a new connection from 127.0.0.1:``port``."""
    peer = IPv4Address("TCP", "127.0.0.1", port)
    proto = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    proto.makeConnection(transport)
    key = base64.b64encode(os.urandom(16)).decode()
    proto.dataReceived(
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:15674\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n"
        ).encode()
    )
    assert transport.value().startswith(b"HTTP/1.1 101 ")
    transport.clear()
    return proto, transport
