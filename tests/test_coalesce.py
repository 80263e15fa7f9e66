"""
Output coalesced per connection while a read is handled
(:mod:`stomptw.coalesce`): what a read makes the broker write reaches each
connection's transport as one write when the read is done; nested callbacks
send at the outermost end; a connection holding ``FLUSH_AT`` bytes sends at
once; a close, and Autobahn's own writes, go after what is held. On a real
socket, :func:`~stomptw.coalesce.write_now` sends straight away when
Twisted holds nothing, and keeps the order of bytes when the socket takes
only part.
"""

from __future__ import annotations

import socket

import pytest_twisted
from inprocess import Client, Env, messages
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from wireclient import connected_client, frame

from stomptw.coalesce import BATCH, FLUSH_AT, TWISTED_INTERNALS, coalescing, write_now
from stomptw.config import BrokerConfig
from stomptw.encoding import encode_frame
from stomptw.protocol import StompFactory
from stomptw.testing import ClientSession

TIMEOUT = 10.0


class _CountingTransport(StringTransport):
    """A StringTransport that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class _CountingClient(Client):
    """An in-process client whose transport keeps each write apart."""

    def __init__(self, env: Env, config: BrokerConfig | None = None) -> None:
        config = config or env.config
        self.proto = StompFactory(env.broker, config, env.clock).buildProtocol(None)
        self.proto.makeConnection(_CountingTransport())
        ClientSession.__init__(self, self.proto.session, self.proto.transport)


def _client(env: Env, config: BrokerConfig | None = None) -> Client:
    client = _CountingClient(env, config)
    client.connect()
    client.transport.writes.clear()
    return client


def test_a_read_fans_out_as_one_write_per_connection():
    env = Env()
    subscribers = [_client(env) for _ in range(3)]
    for sub in subscribers:
        sub.send("SUBSCRIBE", destination="/topic/t", id="s")
        sub.frames()
        sub.transport.writes.clear()
    publisher = _client(env)
    sends = b"".join(
        encode_frame("SEND", {"destination": "/topic/t"}, str(i).encode()) for i in range(5)
    )
    publisher.raw(sends + encode_frame("DISCONNECT", {"receipt": "r"}, b""))
    for sub in subscribers:
        assert len(sub.transport.writes) == 1
        assert [m.body for m in messages(sub.frames())] == [b"0", b"1", b"2", b"3", b"4"]
    assert len(publisher.transport.writes) == 1
    assert [f.command for f in publisher.frames()] == ["RECEIPT"]
    assert BATCH.depth == 0 and BATCH.waiting == []


def test_nested_callbacks_send_when_the_outermost_returns():
    env = Env()
    client = _client(env)

    def inner() -> None:
        client.proto.write(b"inner\n")

    def outer() -> None:
        coalescing(inner)
        assert client.transport.writes == []
        client.proto.write(b"outer\n")

    coalescing(outer)
    assert client.transport.writes == [b"inner\nouter\n"]


def test_a_callback_that_raises_still_sends_what_it_wrote():
    env = Env()
    client = _client(env)

    def failing() -> None:
        client.proto.write(b"before the error\n")
        raise ValueError("boom")

    try:
        coalescing(failing)
    except ValueError:
        pass
    assert client.transport.writes == [b"before the error\n"]
    assert BATCH.depth == 0


def test_a_connection_holding_flush_at_bytes_sends_at_once():
    env = Env()
    client = _client(env)
    chunk = b"x" * 1000
    seen: list[int] = []

    def write_many() -> None:
        for _ in range(FLUSH_AT // len(chunk) + 1):
            client.proto.write(chunk)
        seen.append(len(client.transport.writes))
        client.proto.write(b"tail")

    coalescing(write_many)
    assert seen == [1]
    assert client.transport.writes[0] == chunk * (FLUSH_AT // len(chunk) + 1)
    assert client.transport.writes[1:] == [b"tail"]


def test_a_write_high_water_under_flush_at_bounds_what_is_held():
    env = Env()
    client = _client(env, BrokerConfig(write_high_water=1000))
    seen: list[int] = []

    def write_two() -> None:
        client.proto.write(b"a" * 600)
        seen.append(len(client.transport.writes))
        client.proto.write(b"b" * 600)
        seen.append(len(client.transport.writes))

    coalescing(write_two)
    assert seen == [0, 1]
    assert client.transport.writes == [b"a" * 600 + b"b" * 600]


def test_one_connection_that_fails_to_send_does_not_strand_the_others():
    env = Env()
    broken, fine = _client(env), _client(env)

    def refuse(data: bytes) -> None:
        raise RuntimeError("this transport cannot write")

    broken.transport.write = refuse

    def write_both() -> None:
        broken.proto.write(b"lost\n")
        fine.proto.write(b"delivered\n")

    coalescing(write_both)
    assert fine.transport.writes == [b"delivered\n"]
    assert BATCH.depth == 0 and BATCH.waiting == []


def test_writes_outside_a_callback_are_not_held():
    env = Env()
    client = _client(env)
    client.proto.write(b"\n")
    assert client.transport.writes == [b"\n"]


def test_a_close_sends_what_is_held_first():
    env = Env()
    client = _client(env)

    def fail_then_close() -> None:
        client.proto.write(b"ERROR\n\n\x00")
        assert client.transport.value() == b""
        client.proto.close(1.0)
        assert client.transport.value() == b"ERROR\n\n\x00"

    coalescing(fail_then_close)
    assert client.transport.disconnecting
    client.lose()


def test_a_lost_connection_forgets_what_it_held():
    env = Env()
    client = _client(env)

    def write_then_lose() -> None:
        client.proto.write(b"never sent")
        client.lose()

    coalescing(write_then_lose)
    assert client.transport.writes == []


def test_autobahn_writes_go_after_the_held_frames(ws_in_process):
    from autobahn.websocket.protocol import WebSocketProtocol

    proto, transport = ws_in_process
    writes: list[bytes] = []
    write = transport.write

    def recording(data: bytes) -> None:
        writes.append(data)
        write(data)

    transport.write = recording

    def write_then_ping() -> None:
        proto.write(b"MESSAGE\n\n\x00")
        proto.sendPing(b"p")
        proto.close(1.0)
        assert writes == []

    coalescing(write_then_ping)
    # One write: a close frame left for a later turn could be lost to
    # Autobahn's abort when the client's own close is read first.
    assert len(writes) == 1
    data = transport.value()
    # The text frame, then the ping, then the close frame: opcodes 1, 9, 8.
    assert data[0] == 0x81 and data[1] == len(b"MESSAGE\n\n\x00")
    ping_at = 2 + len(b"MESSAGE\n\n\x00")
    assert data[ping_at] == 0x89
    assert data[ping_at + 2 + 1] == 0x88
    assert proto.state == WebSocketProtocol.STATE_CLOSING


# -- on a real socket ------------------------------------------------------------------


class _Accepted(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.accepted.callback(self.transport)


async def _connected_pair(receive_buffer: int = 0) -> tuple[object, socket.socket, object]:
    """A Twisted server transport and the raw client socket connected to it."""
    factory = protocol.Factory.forProtocol(_Accepted)
    factory.accepted = Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.socket()
    if receive_buffer:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    client.setblocking(False)
    client.connect_ex(("127.0.0.1", port.getHost().port))
    transport = await factory.accepted.addTimeout(TIMEOUT, reactor)
    return transport, client, port


async def _close_pair(transport, client: socket.socket, port) -> None:
    client.close()
    transport.loseConnection()
    await port.stopListening()


def _read_exactly(client: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes; fewer if the connection ends (closed or reset) first."""
    client.setblocking(True)
    client.settimeout(TIMEOUT)
    got = bytearray()
    while len(got) < size:
        try:
            chunk = client.recv(size - len(got))
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest_twisted.ensureDeferred
async def test_the_twisted_internals_write_now_reads_are_there():
    transport, client, port = await _connected_pair()
    try:
        for name in TWISTED_INTERNALS:
            assert hasattr(transport, name), name
    finally:
        await _close_pair(transport, client, port)


@pytest_twisted.ensureDeferred
async def test_write_now_sends_at_once_when_twisted_holds_nothing():
    transport, client, port = await _connected_pair()
    try:
        write_now(transport, b"straight to the socket")
        assert transport._tempDataBuffer == [] and not transport.dataBuffer
        got = await deferToThread(_read_exactly, client, len(b"straight to the socket"))
        assert got == b"straight to the socket"
    finally:
        await _close_pair(transport, client, port)


@pytest_twisted.ensureDeferred
async def test_write_now_keeps_the_order_when_the_socket_takes_part():
    transport, client, port = await _connected_pair(receive_buffer=4096)
    try:
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pattern = bytes(range(256)) * 64  # 16 KiB
        blocks = [bytes([i]) + pattern for i in range(64)]  # about 1 MiB in all
        for block in blocks:
            write_now(transport, block)
        # The socket took only part: the rest waits in Twisted's buffer,
        # and the writes after it went behind it.
        assert transport._tempDataBuffer or transport.dataBuffer
        expected = b"".join(blocks)
        got = await deferToThread(_read_exactly, client, len(expected))
        assert got == expected
    finally:
        await _close_pair(transport, client, port)


@pytest_twisted.ensureDeferred
async def test_write_now_sends_nothing_on_an_aborted_connection():
    transport, client, port = await _connected_pair()
    try:
        transport.abortConnection()
        write_now(transport, b"after the abort")
        assert transport._tempDataBuffer == [b"after the abort"]  # never sent
        got = await deferToThread(_read_exactly, client, len(b"after the abort"))
        assert got == b""
    finally:
        await _close_pair(transport, client, port)


def test_write_now_on_another_transport_writes_through_it():
    transport = StringTransport()
    write_now(transport, b"through the transport")
    assert transport.value() == b"through the transport"


# -- end to end ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_pipelined_burst_reaches_tcp_and_websocket_subscribers_whole_and_in_order(
    make_broker,
):
    """
    4,000 SENDs written at once to a topic: each subscriber, over TCP and
    over WebSocket, gets every message once and in order, then the
    publisher's RECEIPT.
    """
    running = await make_broker()
    count = 4000

    def scenario() -> None:
        subscribers = [
            connected_client(running, transport=kind) for kind in ("tcp", "tcp", "ws", "ws")
        ]
        publisher = connected_client(running)
        try:
            for i, sub in enumerate(subscribers):
                sub.send(frame("SUBSCRIBE", "destination:/topic/burst", "id:s", f"receipt:s{i}"))
                sub.receipt(f"s{i}")
            burst = b"".join(
                frame("SEND", "destination:/topic/burst", body=b"%d" % i) for i in range(count)
            )
            publisher.send(burst + frame("SEND", "destination:/topic/burst", "receipt:end"))
            publisher.receipt("end")
            for sub in subscribers:
                got = sub.messages_until(b"")
                assert [m.body for m in got[:-1]] == [b"%d" % i for i in range(count)]
        finally:
            for client in (*subscribers, publisher):
                client.t.close()

    await deferToThread(scenario)
