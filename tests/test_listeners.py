"""
Listeners end to end: STOMP over TLS and WebSocket over TLS with real
clients and a certificate made for the test, the per-listener connection
limit (``max_connections``), and the timeouts that close connections which
never get as far as a session (the WebSocket opening handshake, CONNECT).

Blocking clients run in worker threads (``await deferToThread(fn)``).
"""

from __future__ import annotations

import datetime
import ipaddress
import queue
import socket
import ssl
import time
from pathlib import Path

import pytest
import pytest_twisted
import stomp
import websocket
from clients import TIMEOUT, ConnectionClosed, RawStompSocket, encode_frame, parse_single_frame
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from stomptw.listeners import LOG_INTERVAL, ConnectionLimit
from stomptw.tap import Options

LOOPBACK = "tcp:0:interface=127.0.0.1"


# -- helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """
    A self-signed certificate for ``localhost`` and ``127.0.0.1``:
    ``(key_and_cert_pem, cert_pem)``, the first for the broker's
    ``privateKey=``, the second for clients' ``ca_certs``.
    """
    pytest.importorskip("OpenSSL")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    directory = tmp_path_factory.mktemp("tls")
    both = directory / "server.pem"
    both.write_bytes(key_pem + cert_pem)
    ca = directory / "ca.pem"
    ca.write_bytes(cert_pem)
    return both, ca


def tls_endpoint(pem: Path) -> str:
    return f"ssl:0:interface=127.0.0.1:privateKey={pem}"


def ports(running, kind: str) -> list[int]:
    """The ports of every ``kind`` listener, in configuration order."""
    return [listener.port.getHost().port for listener in running.service.listeners(kind)]


def limits(running, kind: str):
    return [listener.connection_limit for listener in running.service.listeners(kind)]


async def until(predicate, what: str) -> None:
    """Wait on the reactor until ``predicate()`` is true (bounded by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class _Listener(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.receipts: queue.Queue = queue.Queue()

    def on_message(self, frame) -> None:
        self.messages.put(frame)

    def on_receipt(self, frame) -> None:
        self.receipts.put(frame.headers.get("receipt-id"))


def ws_frame(ws: websocket.WebSocket):
    """The next WebSocket message as one STOMP frame (websocket-client)."""
    opcode, data = ws.recv_data()
    assert opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY), (opcode, data)
    return parse_single_frame(data)


def ws_session(url: str, **options) -> websocket.WebSocket:
    """A WebSocket with a STOMP 1.2 session (CONNECTED received)."""
    ws = websocket.create_connection(url, subprotocols=["v12.stomp"], timeout=TIMEOUT, **options)
    ws.send(encode_frame("CONNECT", {"accept-version": "1.2", "host": "localhost"}).decode())
    frame = ws_frame(ws)
    assert frame.command == "CONNECTED", frame
    return ws


def refused_frame(port: int):
    """Open a STOMP connection that the broker refuses: its ERROR frame (then EOF)."""
    client = RawStompSocket(port)
    try:
        client.send("CONNECT", {"accept-version": "1.2", "host": "localhost"})
        frame = client.read_frame()
        with pytest.raises(ConnectionClosed):
            client.read_frame()
        return frame
    finally:
        client.close()


# -- TLS ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stomp_over_tls_with_stomp_py(make_broker, certificate):
    pem, ca = certificate
    running = await make_broker(tcp_endpoints=[tls_endpoint(pem)], ws_endpoints=[])
    port = running.tcp_port

    def run() -> None:
        conn = stomp.Connection([("127.0.0.1", port)], heartbeats=(0, 0))
        conn.set_ssl(for_hosts=[("127.0.0.1", port)], ca_certs=str(ca))
        listener = _Listener()
        conn.set_listener("test", listener)
        conn.connect(wait=True)
        try:
            conn.subscribe("/queue/tls.test", id="1", ack="auto", headers={"receipt": "sub"})
            assert listener.receipts.get(timeout=TIMEOUT) == "sub"
            conn.send("/queue/tls.test", "over TLS")
            message = listener.messages.get(timeout=TIMEOUT)
            assert message.body == "over TLS"
            assert message.headers["destination"] == "/queue/tls.test"
        finally:
            conn.disconnect()

    await deferToThread(run)
    await until(lambda: not running.broker.sessions, "the TLS session to close")


@pytest_twisted.ensureDeferred
async def test_stomp_over_wss_with_websocket_client(make_broker, certificate):
    pem, ca = certificate
    running = await make_broker(tcp_endpoints=[], ws_endpoints=[tls_endpoint(pem)])
    url = f"wss://127.0.0.1:{running.ws_port}{running.ws_path}"

    def run() -> None:
        ws = ws_session(url, sslopt={"ca_certs": str(ca)})
        try:
            assert ws.subprotocol == "v12.stomp"
            ws.send(
                encode_frame(
                    "SUBSCRIBE", {"destination": "/topic/wss", "id": "s", "receipt": "r1"}
                ).decode()
            )
            frame = ws_frame(ws)
            assert (frame.command, frame.headers["receipt-id"]) == ("RECEIPT", "r1")
            ws.send(encode_frame("SEND", {"destination": "/topic/wss"}, b"over wss").decode())
            frame = ws_frame(ws)
            assert frame.command == "MESSAGE", frame
            assert frame.body == b"over wss"
            assert frame.headers["subscription"] == "s"
        finally:
            ws.close()

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_plain_clients_get_no_session_on_tls_listeners(make_broker, certificate):
    pem, _ = certificate
    running = await make_broker(
        tcp_endpoints=[tls_endpoint(pem)], ws_endpoints=[tls_endpoint(pem)], login_timeout=2
    )

    def plain_stomp() -> bytes:
        with socket.create_connection(("127.0.0.1", running.tcp_port), timeout=TIMEOUT) as s:
            s.sendall(encode_frame("CONNECT", {"accept-version": "1.2", "host": "localhost"}))
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
            return data

    def plain_ws() -> None:
        with pytest.raises((websocket.WebSocketException, ConnectionError, OSError)):
            websocket.create_connection(
                f"ws://127.0.0.1:{running.ws_port}{running.ws_path}",
                subprotocols=["v12.stomp"],
                timeout=TIMEOUT,
            )

    data = await deferToThread(plain_stomp)
    assert b"CONNECTED" not in data and b"ERROR" not in data, data
    await deferToThread(plain_ws)
    assert not [s for s in running.broker.sessions if s.version is not None]


# -- the connection limit ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tcp_connection_limit(make_broker):
    running = await make_broker(max_connections=3, tcp_endpoints=[LOOPBACK, LOOPBACK])
    first, second = ports(running, "stomp")
    limit = limits(running, "stomp")[0]
    clients: list[RawStompSocket] = []

    def open_three() -> None:
        for _ in range(3):
            client = RawStompSocket(first)
            clients.append(client)
            client.connect()

    try:
        await deferToThread(open_three)
        assert limit.count == 3
        frame = await deferToThread(refused_frame, first)
        assert frame.command == "ERROR"
        assert frame.headers["message"] == "too many connections on this listener (limit 3)"
        assert limit.refused == 1
        assert running.broker.stats["connections_refused"] == 1
        # The others were not touched, and the refused one never had a session.
        assert limit.count == 3
        assert len(running.broker.sessions) == 3

        # The second listener has its own count.
        def on_second() -> None:
            client = RawStompSocket(second)
            clients.append(client)
            client.connect()

        await deferToThread(on_second)

        # After one closes (abruptly), there is room again.
        clients.pop(0).close()
        await until(lambda: limit.count == 2, "the closed connection to be uncounted")

        def one_more() -> None:
            client = RawStompSocket(first)
            clients.append(client)
            client.connect()

        await deferToThread(one_more)
        assert limit.count == 3
    finally:
        for client in clients:
            client.close()
    await until(lambda: limit.count == 0, "every connection to be uncounted")


@pytest_twisted.ensureDeferred
async def test_tls_connection_limit(make_broker, certificate):
    pem, ca = certificate
    running = await make_broker(max_connections=1, tcp_endpoints=[tls_endpoint(pem)])
    context = ssl.create_default_context(cafile=str(ca))

    def run() -> None:
        with socket.create_connection(("127.0.0.1", running.tcp_port), timeout=TIMEOUT) as a:
            with context.wrap_socket(a, server_hostname="localhost") as first:
                first.sendall(encode_frame("CONNECT", {"accept-version": "1.2"}))
                assert first.recv(65536).startswith(b"CONNECTED")
                with socket.create_connection(
                    ("127.0.0.1", running.tcp_port), timeout=TIMEOUT
                ) as b:
                    with context.wrap_socket(b, server_hostname="localhost") as second:
                        data = b""
                        while chunk := second.recv(65536):
                            data += chunk
                        assert data.startswith(b"ERROR\n"), data
                        assert b"too many connections on this listener (limit 1)" in data

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_websocket_connection_limit(make_broker):
    running = await make_broker(max_connections=3, ws_endpoints=[LOOPBACK, LOOPBACK])
    first, second = ports(running, "ws")
    limit = limits(running, "ws")[0]
    url = f"ws://127.0.0.1:{first}{running.ws_path}"
    sockets: list[websocket.WebSocket] = []

    def open_three() -> None:
        for _ in range(3):
            sockets.append(ws_session(url))

    def refused() -> int:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(url, subprotocols=["v12.stomp"], timeout=TIMEOUT)
        return info.value.status_code

    def plain_page() -> int:
        with socket.create_connection(("127.0.0.1", first), timeout=TIMEOUT) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return int(s.recv(65536).split(b" ", 2)[1])

    try:
        await deferToThread(open_three)
        assert limit.count == 3
        assert await deferToThread(refused) == 503
        assert limit.refused == 1
        assert running.broker.stats["connections_refused"] == 1
        assert limit.count == 3
        # Plain HTTP on the same listener is still served.
        assert await deferToThread(plain_page) == 200
        # The second listener counts its own.
        sockets.append(await deferToThread(ws_session, f"ws://127.0.0.1:{second}{running.ws_path}"))
        # An abrupt close (no closing handshake) frees a place.
        sockets.pop(0).sock.close()
        await until(lambda: limit.count == 2, "the dropped WebSocket to be uncounted")
        sockets.append(await deferToThread(ws_session, url))
        assert limit.count == 3
    finally:
        # The closing handshake needs the reactor: not on its thread.
        await deferToThread(lambda: [ws.close() for ws in sockets])
    await until(lambda: limit.count == 0, "every WebSocket to be uncounted")


@pytest_twisted.ensureDeferred
async def test_websocket_refused_by_origin_is_not_counted(make_broker):
    running = await make_broker(max_connections=1, tcp_endpoints=[])
    limit = limits(running, "ws")[0]

    def run() -> None:
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            websocket.create_connection(
                running.ws_url, origin="https://elsewhere.example", timeout=TIMEOUT
            )
        assert info.value.status_code == 403
        ws_session(running.ws_url).close()

    await deferToThread(run)
    assert limit.refused == 0
    await until(lambda: limit.count == 0, "the WebSocket to be uncounted")


@pytest_twisted.ensureDeferred
async def test_zero_means_unlimited(make_broker):
    running = await make_broker(max_connections=0)
    limit = limits(running, "stomp")[0]
    clients: list[RawStompSocket] = []

    def run() -> None:
        for _ in range(20):
            client = RawStompSocket(running.tcp_port)
            clients.append(client)
            client.connect()
        ws_session(running.ws_url).close()

    try:
        await deferToThread(run)
        assert (limit.count, limit.refused) == (20, 0)
    finally:
        for client in clients:
            client.close()


def test_admin_listener_has_no_limit():
    from stomptw.config import BrokerConfig
    from stomptw.service import makeService

    service = makeService(
        BrokerConfig(
            max_connections=5,
            store="memory",
            tcp_endpoints=[LOOPBACK],
            ws_endpoints=[LOOPBACK],
            admin_endpoints=[LOOPBACK],
        ),
        reactor,
    )
    assert [lst.connection_limit.limit for lst in service.listeners("stomp")] == [5]
    assert [lst.connection_limit.limit for lst in service.listeners("ws")] == [5]
    assert [lst.connection_limit for lst in service.listeners("admin")] == [None]


def test_max_connections_option():
    options = Options()
    options.parseOptions(["--max-connections", "3", "--store", "memory"])
    assert options.config.max_connections == 3
    options = Options()
    options.parseOptions(["--store", "memory"])
    assert options.config.max_connections == 10_000
    options = Options()
    options.parseOptions(["--max-connections", "0"])
    assert options.config.max_connections == 0


def test_negative_max_connections_is_a_usage_error():
    from twisted.python import usage

    with pytest.raises(usage.UsageError, match="--max-connections"):
        Options().parseOptions(["--max-connections", "-1"])


def test_refusals_are_logged_once_per_interval():
    clock = Clock()
    refused: list[int] = []
    limit = ConnectionLimit(1, "tcp:61613", clock, lambda: refused.append(1))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        limit.acquire()
        assert limit.full
        for _ in range(5):
            limit.refuse(None)
        clock.advance(LOG_INTERVAL)
        limit.refuse(None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = [e["refused"] for e in events if e.get("limit") == 1]
    assert logged == [1, 5]
    assert len(refused) == limit.refused == 6
    limit.release()
    limit.release()
    assert (limit.count, limit.full) == (0, False)
    assert not ConnectionLimit(0, "x", clock).full


# -- timeouts before a session -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_half_an_http_request_is_closed_after_the_handshake_timeout(make_broker):
    running = await make_broker(ws_open_handshake_timeout=0.5, tcp_endpoints=[])

    def run() -> float:
        with socket.create_connection(("127.0.0.1", running.ws_port), timeout=TIMEOUT) as s:
            start = time.monotonic()
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            return time.monotonic() - start

    elapsed = await deferToThread(run)
    assert 0.4 < elapsed < 2.0, elapsed


@pytest_twisted.ensureDeferred
async def test_websocket_without_connect_is_closed_after_the_login_timeout(make_broker):
    running = await make_broker(login_timeout=0.5, tcp_endpoints=[])

    def run() -> tuple[float, str]:
        ws = websocket.create_connection(
            running.ws_url, subprotocols=["v12.stomp"], timeout=TIMEOUT
        )
        start = time.monotonic()
        try:
            frame = ws_frame(ws)
            opcode, _ = ws.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
        finally:
            ws.close()
        return time.monotonic() - start, frame

    elapsed, frame = await deferToThread(run)
    assert frame.command == "ERROR"
    assert frame.headers["message"] == "no CONNECT frame received in time"
    assert 0.4 < elapsed < 2.0, elapsed
