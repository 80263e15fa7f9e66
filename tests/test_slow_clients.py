"""
Slow and hostile clients: a client that trickles one byte every half second
is dropped at the handshake or login deadline, counted from the connection's
start, on the WebSocket listener (the HTTP upgrade) and on TCP (CONNECT).
"""

from __future__ import annotations

import socket
import time

import pytest_twisted
from twisted.internet.threads import deferToThread

DEADLINE = 2.0
BYTE_EVERY = 0.5


def trickle(port: int, data: bytes) -> tuple[float, bytes]:
    """Send ``data`` a byte at a time until the broker closes; (seconds it took, what came back)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    received = b""
    try:
        for i in range(len(data) * 10):
            try:
                sock.sendall(data[i % len(data) : i % len(data) + 1])
            except OSError:
                break
            sock.settimeout(BYTE_EVERY)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
            if time.monotonic() - started > 15:
                break
        return time.monotonic() - started, received
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_a_trickled_websocket_upgrade_is_dropped_at_the_handshake_deadline(make_broker):
    running = await make_broker(ws_open_handshake_timeout=DEADLINE)
    request = (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    )
    took, received = await deferToThread(trickle, running.ws_port, request)
    assert DEADLINE - 0.1 <= took < DEADLINE + 1.5, took
    assert received == b""  # dropped, never answered


@pytest_twisted.ensureDeferred
async def test_a_trickled_connect_is_refused_at_the_login_deadline(make_broker):
    running = await make_broker(login_timeout=DEADLINE)
    took, received = await deferToThread(
        trickle, running.tcp_port, b"CONNECT\naccept-version:1.2\nhost:localhost\nx-pad:"
    )
    assert DEADLINE - 0.1 <= took < DEADLINE + 1.5, took
    assert received.startswith(b"ERROR\n")
    assert b"message:" in received and b"CONNECT" in received


@pytest_twisted.ensureDeferred
async def test_pages_and_keep_alive_requests_still_work(make_broker):
    """A well-behaved HTTP client is served, twice on one connection, within the deadline each."""
    running = await make_broker(ws_open_handshake_timeout=DEADLINE)

    def two_requests() -> list[bytes]:
        sock = socket.create_connection(("127.0.0.1", running.ws_port), timeout=10)
        answers = []
        try:
            for _ in range(2):
                sock.sendall(b"GET /stomp.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                data = b""
                while b"export class StompClient" not in data or not data.rstrip().endswith(b"}"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                answers.append(data)
                time.sleep(DEADLINE * 0.75)  # idle between requests: not a trickle
        finally:
            sock.close()
        return answers

    answers = await deferToThread(two_requests)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), [a[:100] for a in answers]


@pytest_twisted.ensureDeferred
async def test_connections_per_address_are_limited_on_each_listener(make_broker):
    import websocket

    running = await make_broker(max_connections_per_ip=2)

    def tcp() -> tuple[list[bytes], bytes]:
        held = [
            socket.create_connection(("127.0.0.1", running.tcp_port), timeout=10) for _ in range(2)
        ]
        answers = []
        for sock in held:
            sock.sendall(b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
            answers.append(sock.recv(4096))
        third = socket.create_connection(("127.0.0.1", running.tcp_port), timeout=10)
        refused = b""
        while chunk := third.recv(4096):
            refused += chunk
        third.close()
        held.pop().close()
        # Room again once the broker has seen that close (polled, bounded).
        for _ in range(100):
            again = socket.create_connection(("127.0.0.1", running.tcp_port), timeout=10)
            again.sendall(b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
            answer = again.recv(4096)
            if answer.startswith(b"CONNECTED"):
                break
            again.close()
        answers.append(answer)
        for sock in (*held, again):
            sock.close()
        return answers, refused

    answers, refused = await deferToThread(tcp)
    assert all(a.startswith(b"CONNECTED") for a in answers), answers
    assert refused.startswith(b"ERROR\n")
    assert b"message:too many connections from 127.0.0.1 (limit 2 per address)" in refused

    def ws() -> str:
        held = [
            websocket.create_connection(running.ws_url, subprotocols=["v12.stomp"], timeout=10)
            for _ in range(2)
        ]
        try:
            websocket.create_connection(running.ws_url, subprotocols=["v12.stomp"], timeout=10)
        except websocket.WebSocketBadStatusException as e:
            return str(e.status_code)
        finally:
            for conn in held:
                conn.close()
        return "accepted"

    assert await deferToThread(ws) == "503"


@pytest_twisted.ensureDeferred
async def test_tls_listeners_refuse_versions_older_than_the_minimum(make_broker, tmp_path):
    """TLS 1.0 is refused by default; with --tls-min-version 1.3, TLS 1.2 is too."""
    import ssl
    import subprocess
    import warnings

    subprocess.run(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost"
        " -keyout key.pem -out cert.pem",
        shell=True,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    endpoint = (
        f"ssl:0:interface=127.0.0.1:privateKey={tmp_path}/key.pem:certKey={tmp_path}/cert.pem"
    )

    def handshake(port: int, version: ssl.TLSVersion) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer old versions
        try:
            with context.wrap_socket(socket.create_connection(("127.0.0.1", port))) as tls:
                return tls.version()
        except (ssl.SSLError, OSError) as e:
            return f"refused: {e}"

    default = await make_broker(tcp_endpoints=[endpoint])
    old = await deferToThread(handshake, default.tcp_port, ssl.TLSVersion.TLSv1)
    assert old.startswith("refused"), old
    assert await deferToThread(handshake, default.tcp_port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    strict = await make_broker(tcp_endpoints=[endpoint], tls_min_version="1.3")
    refused = await deferToThread(handshake, strict.tcp_port, ssl.TLSVersion.TLSv1_2)
    assert refused.startswith("refused") and "VERSION" in refused.upper(), refused
    assert await deferToThread(handshake, strict.tcp_port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
