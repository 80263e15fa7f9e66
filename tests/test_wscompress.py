"""
permessage-deflate (RFC 7692) on the WebSocket listener: negotiation, the
shared compressor's output as a client inflates it, compressed frames in,
the inflation limit, and a real socket on loopback.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import zlib

import pytest
import pytest_twisted
from autobahn.websocket.compress import PerMessageDeflateOffer
from clients import parse_single_frame
from test_websocket import _server_frames, wire
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.encoding import encode_frame, encode_message, message_parts
from stomptw.websocket import StompWebSocketFactory
from stomptw.wscompress import COMPRESS_MIN, SharedDeflate, accept_deflate

TAIL = b"\x00\x00\xff\xff"


class ClientInflater:
    """A client's inflate side, keeping its window across messages (the default)."""

    def __init__(self, bits: int = 15) -> None:
        self.z = zlib.decompressobj(-bits)

    def message(self, payload: bytes) -> bytes:
        return self.z.decompress(payload + TAIL)


def client_deflate(data: bytes) -> bytes:
    """A compressed client message payload (no context kept)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def masked(payload: bytes, first: int = 0x81) -> bytes:
    """A masked client frame with first byte ``first`` (0xC1: compressed text)."""
    return wire(payload, first & 0x0F, rsv1=bool(first & 0x40))


server_frames = _server_frames


def handshake_request(extensions: str | None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    ext = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    return (
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:15674\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{ext}"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n"
    ).encode()


def open_in_process(broker, factory, extensions: str | None, port: int = 40000):
    """A connection over a StringTransport after its handshake: (proto, transport, response)."""
    peer = IPv4Address("TCP", "127.0.0.1", port)
    proto = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    proto.makeConnection(transport)
    proto.dataReceived(handshake_request(extensions))
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 101 "), response
    transport.clear()
    return proto, transport, response.decode("latin-1")


@pytest.fixture
def listener():
    """An in-process broker and WebSocket factory on a Clock: make(config) -> (broker, factory)."""

    def make(**overrides):
        clock = Clock()
        config = dataclasses.replace(BrokerConfig(), **overrides)
        broker = Broker(config, clock=clock)
        return broker, StompWebSocketFactory(broker, config, clock)

    return make


def json_body(n: int = 1024) -> bytes:
    """A JSON-like body of about ``n`` bytes, as browsers push them."""
    items, i = [], 0
    while len(json.dumps(items)) < n:
        items.append({"id": i, "symbol": f"SYM{i % 50}", "price": 100 + i * 0.25, "side": "buy"})
        i += 1
    return json.dumps(items).encode()[:n]


# -- the shared compressor ------------------------------------------------------------------


def test_shared_deflate_output_inflates_in_a_client_that_keeps_its_window():
    """
    Messages for several clients from one compressor: each client inflates
    its own share with a window kept across messages, which is valid because
    no message refers back to an earlier one.
    """
    deflate = SharedDeflate()
    clients = [ClientInflater() for _ in range(3)]
    sent = [[] for _ in clients]
    for i in range(20):
        data = (b"RECEIPT\nreceipt-id:%d\n\n" % i) + json_body(300 + i * 50) + b"\x00"
        who = i % 3
        sent[who].append(data)
        assert clients[who].message(deflate.compress(data)) == data
    assert deflate.messages == 20


def test_a_topic_message_tail_is_compressed_once_for_every_subscriber():
    """
    MESSAGE frames that differ only in their per-delivery headers share the
    deflate bytes of everything after them; every subscriber still inflates
    its own exact frame.
    """
    deflate = SharedDeflate()
    body = json_body()
    parts = message_parts("m-1", "/topic/prices", {"content-type": "application/json"}, body, "1.2")
    clients = [ClientInflater() for _ in range(10)]
    payloads = []
    for i, client in enumerate(clients):
        frame = encode_message(parts, f"sub-{i}", "1.2")
        payload = deflate.compress(frame)
        payloads.append(payload)
        assert client.message(payload) == frame
    assert deflate.reused == 9
    assert len(payloads[0]) < len(body) // 2
    # A second message to the same clients, after the first.
    parts2 = message_parts("m-2", "/topic/prices", {}, body[::-1], "1.2")
    for i, client in enumerate(clients):
        frame = encode_message(parts2, f"sub-{i}", "1.2", ack=str(i))
        assert client.message(deflate.compress(frame)) == frame


def test_a_smaller_window_the_client_asked_for_is_kept():
    deflate = SharedDeflate()
    client = ClientInflater(bits=10)
    data = os.urandom(200) * 40  # repeats 200 bytes apart: within a 1 KiB window
    assert client.message(deflate.compress(data, window_bits=10)) == data


@pytest.mark.parametrize(
    "header,accepted",
    [
        ("permessage-deflate", True),
        ("permessage-deflate; client_max_window_bits", True),
        ("permessage-deflate; server_no_context_takeover; client_no_context_takeover", True),
        ("permessage-deflate; server_max_window_bits=10", True),
        ("permessage-deflate; server_max_window_bits=9", True),
    ],
)
def test_offers_accepted(header, accepted):
    offer = PerMessageDeflateOffer.parse(_params(header))
    accept = accept_deflate([offer])
    assert (accept is not None) is accepted
    if accept is not None:
        # The broker keeps no context of its own: Autobahn's compressor, when
        # a message takes its path, must not refer back either.
        assert accept.no_context_takeover is True


def _params(header: str) -> dict[str, list[object]]:
    """The parameters of one extension offer as Autobahn's handshake parser gives them."""
    out: dict[str, list[object]] = {}
    for part in header.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        out.setdefault(name, []).append(value if value else True)
    return out


# -- on a connection, in process -----------------------------------------------------------


def _connect_and_subscribe(proto, transport, destination: str, compressed: bool):
    first = 0xC1 if compressed else 0x81
    pack = client_deflate if compressed else (lambda d: d)
    proto.dataReceived(
        masked(pack(encode_frame("CONNECT", {"accept-version": "1.2", "host": "x"})), first)
        + masked(
            pack(encode_frame("SUBSCRIBE", {"destination": destination, "id": "0"})),
            first,
        )
    )
    transport.clear()


def test_negotiated_compression_both_ways_in_process(listener):
    """
    A client that offers permessage-deflate gets it in the response; its
    compressed SENDs reach an uncompressed subscriber intact, and a
    compressed subscriber gets RSV1 frames that inflate to the MESSAGE.
    Short frames (a RECEIPT) go uncompressed.
    """
    broker, factory = listener()
    plain, plain_t, r1 = open_in_process(broker, factory, None, 40001)
    comp, comp_t, r2 = open_in_process(
        broker, factory, "permessage-deflate; client_max_window_bits"
    )
    assert "sec-websocket-extensions" not in r1.lower()
    assert "permessage-deflate" in r2.lower()
    _connect_and_subscribe(plain, plain_t, "/topic/t", compressed=False)
    _connect_and_subscribe(comp, comp_t, "/topic/t", compressed=True)
    body = json_body()
    send = encode_frame("SEND", {"destination": "/topic/t", "receipt": "r1"}, body)
    comp.dataReceived(masked(client_deflate(send), 0xC1))
    [(b0, receipt)] = server_frames(comp_t.value())[-1:]
    frames = server_frames(comp_t.value())
    assert [f[0] for f in frames] == [0xC1, 0x81]  # MESSAGE compressed, RECEIPT not
    assert len(receipt) < COMPRESS_MIN and parse_single_frame(receipt).command == "RECEIPT"
    message = parse_single_frame(ClientInflater().message(frames[0][1]))
    assert message.command == "MESSAGE" and message.body == body
    [(b0, raw)] = server_frames(plain_t.value())
    assert b0 == 0x81 and parse_single_frame(raw).body == body
    # The wire carried much less than the body for the compressed client.
    assert len(frames[0][1]) < len(body) // 2


def test_binary_bodies_round_trip_compressed(listener):
    broker, factory = listener()
    proto, transport, _ = open_in_process(broker, factory, "permessage-deflate")
    _connect_and_subscribe(proto, transport, "/queue/b", compressed=True)
    body = bytes(range(256)) * 8
    send = encode_frame("SEND", {"destination": "/queue/b", "content-length": str(len(body))}, body)
    proto.dataReceived(masked(client_deflate(send), 0xC2))
    [(b0, payload)] = server_frames(transport.value())
    assert b0 == 0xC2  # binary, compressed
    assert parse_single_frame(ClientInflater().message(payload)).body == body


def test_compression_off_declines_the_offer(listener):
    broker, factory = listener(ws_compression="off")
    proto, transport, response = open_in_process(broker, factory, "permessage-deflate")
    assert "permessage-deflate" not in response.lower()
    _connect_and_subscribe(proto, transport, "/queue/o", compressed=False)
    body = json_body()
    proto.dataReceived(masked(encode_frame("SEND", {"destination": "/queue/o"}, body)))
    [(b0, raw)] = server_frames(transport.value())
    assert b0 == 0x81 and parse_single_frame(raw).body == body


def test_a_compressed_message_inflating_past_the_limit_closes_with_1009(listener):
    """
    A small compressed frame that inflates past the WebSocket message limit
    is refused (close 1009); nothing of it reaches the queue, and another
    connection is untouched.
    """
    broker, factory = listener(ws_max_message_size=20_000_000)
    other, other_t, _ = open_in_process(broker, factory, None, 40002)
    _connect_and_subscribe(other, other_t, "/queue/bomb", compressed=False)
    proto, transport, _ = open_in_process(broker, factory, "permessage-deflate")
    _connect_and_subscribe(proto, transport, "/queue/elsewhere", compressed=True)
    head = b"SEND\ndestination:/queue/bomb\n\n"
    bomb = client_deflate(head + b"\x01" * 40_000_000)
    assert len(bomb) < 100_000
    proto.dataReceived(masked(bomb, 0xC1))
    frames = server_frames(transport.value())
    closes = [p for b0, p in frames if b0 & 0x0F == 0x8]
    assert closes and int.from_bytes(closes[0][:2], "big") == 1009
    assert other_t.value() == b""
    # The other connection still works.
    other.dataReceived(masked(encode_frame("SEND", {"destination": "/queue/bomb"}, b"fine")))
    [(_, raw)] = server_frames(other_t.value())
    assert parse_single_frame(raw).body == b"fine"


# -- a real socket ---------------------------------------------------------------------------


def _raw_session(port: int, path: str, messages: int) -> tuple[str, list[bytes], int]:
    """Blocking: negotiate, subscribe, send ``messages`` compressed SENDs, read them back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            handshake_request("permessage-deflate; client_max_window_bits").replace(
                b"GET /ws ", f"GET {path} ".encode()
            )
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, buf = buf.partition(b"\r\n\r\n")
        out = [
            client_deflate(encode_frame("CONNECT", {"accept-version": "1.2", "host": "x"})),
            client_deflate(
                encode_frame(
                    "SUBSCRIBE", {"destination": "/topic/real", "id": "0", "receipt": "sub"}
                )
            ),
        ]
        s.sendall(b"".join(masked(p, 0xC1) for p in out))
        bodies = [json_body(1024 + i) for i in range(messages)]
        inflater = ClientInflater()
        got: list[bytes] = []
        wire = 0
        sent = False
        while len(got) < messages:
            chunk = s.recv(65536)
            assert chunk, "connection closed"
            buf += chunk
            while len(buf) >= 2:
                n = buf[1] & 0x7F
                h = 2 + (2 if n == 126 else 8 if n == 127 else 0)
                if len(buf) < h:
                    break
                if n == 126:
                    n = int.from_bytes(buf[2:4], "big")
                elif n == 127:
                    n = int.from_bytes(buf[2:10], "big")
                if len(buf) < h + n:
                    break
                b0, payload, buf = buf[0], buf[h : h + n], buf[h + n :]
                data = inflater.message(payload) if b0 & 0x40 else payload
                frame = parse_single_frame(data)
                if frame.command == "RECEIPT" and not sent:
                    sent = True
                    s.sendall(
                        b"".join(
                            masked(
                                client_deflate(
                                    encode_frame("SEND", {"destination": "/topic/real"}, b)
                                ),
                                0xC1,
                            )
                            for b in bodies
                        )
                    )
                elif frame.command == "MESSAGE":
                    wire += n
                    got.append(frame.body)
        assert got == bodies
        return head.decode("latin-1"), got, wire


@pytest_twisted.inlineCallbacks
def test_compressed_round_trip_over_a_real_socket(broker):
    head, got, wire = yield deferToThread(_raw_session, broker.ws_port, broker.ws_path, 50)
    assert "permessage-deflate" in head.lower()
    assert wire < sum(len(b) for b in got) // 2


def test_subscribers_catching_up_one_after_another_reuse_the_tails():
    """
    A backlog goes out subscriber by subscriber (all of one's messages, then
    the next one's): the tails are still compressed once each, within the
    cache's bound, and every frame inflates intact.
    """
    deflate = SharedDeflate()
    messages = [
        message_parts(f"m-{n}", "/topic/t", {}, json_body(900 + n), "1.2") for n in range(50)
    ]
    for sub in range(4):
        client = ClientInflater()
        for parts in messages:
            frame = encode_message(parts, f"s{sub}", "1.2")
            assert client.message(deflate.compress(frame)) == frame
    assert deflate.messages == 200 and deflate.reused == 150


def test_the_tail_cache_is_bounded_and_checked():
    """Past its byte bound the oldest tails go; a stale entry is never reused."""
    deflate = SharedDeflate(cache_bytes=20_000)
    bodies = [json_body(1000 + n) for n in range(60)]
    for n, body in enumerate(bodies):
        parts = message_parts(f"m-{n}", "/topic/t", {}, body, "1.2")
        deflate.compress(encode_message(parts, "0", "1.2"))
    assert deflate._cached <= 20_000
    # The same message-id with another body (a different broker's ids, say)
    # is compressed afresh, not taken from the cache.
    parts = message_parts("m-59", "/topic/t", {}, b"another body " * 20, "1.2")
    frame = encode_message(parts, "0", "1.2")
    assert ClientInflater().message(deflate.compress(frame)) == frame
