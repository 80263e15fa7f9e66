"""
The WebSocket side: the origin policy, unit by unit and on a real handshake.
"""

from __future__ import annotations

import pytest
import pytest_twisted
import websocket
from twisted.internet.threads import deferToThread

from stomptw.websocket import origin_allowed


@pytest.mark.parametrize(
    "origin, host, patterns, allowed",
    [
        # Same host and port as the Host header the client connected with.
        ("http://broker.example:15674", "broker.example:15674", [], True),
        ("https://Broker.Example", "broker.example", [], True),
        ("http://broker.example:8080", "broker.example:15674", [], False),
        # Loopback pages, any port.
        ("http://localhost:3000", "broker.example", [], True),
        ("http://127.0.0.1:8000", "127.0.0.1:15674", [], True),
        ("http://[::1]:5173", "[::1]:15674", [], True),
        ("http://app.localhost:5173", "127.0.0.1:15674", [], True),
        # Everything else needs a pattern.
        ("https://attacker.example", "127.0.0.1:15674", [], False),
        ("https://app.example.com", "127.0.0.1:15674", ["https://*.example.com"], True),
        ("http://app.example.com", "127.0.0.1:15674", ["https://*.example.com"], False),
        ("https://evil.com", "127.0.0.1:15674", ["*"], True),
        # The null origin (local files, sandboxed frames) only when listed.
        ("null", "127.0.0.1:15674", [], False),
        ("null", "127.0.0.1:15674", ["null"], True),
        ("not a url", "127.0.0.1:15674", [], False),
    ],
)
def test_origin_policy(origin, host, patterns, allowed):
    assert origin_allowed(origin, host, patterns) is allowed


def _handshake(url: str, origin: str | None, host: str | None = None):
    kwargs = {"origin": origin} if origin else {"suppress_origin": True}
    if host:
        kwargs["host"] = host
    try:
        ws = websocket.create_connection(url, subprotocols=["v12.stomp"], timeout=5, **kwargs)
    except websocket.WebSocketBadStatusException as e:
        return e.status_code
    try:
        ws.send("CONNECT\naccept-version:1.2\n\n\x00")
        return ws.recv().split("\n", 1)[0]
    finally:
        ws.close()


@pytest_twisted.ensureDeferred
async def test_foreign_origin_refused_with_403(broker):
    assert await deferToThread(_handshake, broker.ws_url, "https://attacker.example") == 403
    # Non-browser clients send no Origin at all and are served.
    assert await deferToThread(_handshake, broker.ws_url, None) == "CONNECTED"
    assert await deferToThread(_handshake, broker.ws_url, "http://localhost:3000") == "CONNECTED"


@pytest_twisted.ensureDeferred
async def test_allowed_origin_patterns(make_broker):
    running = await make_broker(allowed_origins=["https://*.example.com"])
    assert await deferToThread(_handshake, running.ws_url, "https://app.example.com") == (
        "CONNECTED"
    )
    assert await deferToThread(_handshake, running.ws_url, "https://example.org") == 403


@pytest_twisted.ensureDeferred
async def test_same_host_origin_allowed(broker):
    """A page served by the broker's own host and port (as the browser named it)."""
    host = f"broker.example:{broker.ws_port}"
    same = f"http://{host}"
    other = "http://broker.example:1"
    assert await deferToThread(_handshake, broker.ws_url, same, host) == "CONNECTED"
    assert await deferToThread(_handshake, broker.ws_url, other, host) == 403
