"""
STOMP over WebSocket (:mod:`stomptw.websocket`, through Autobahn): the
origin policy, unit by unit and on a real handshake; a session that ends as
soon as its WebSocket stops being open; the fast paths, which feed complete
simple data frames to the STOMP session without Autobahn's frame machinery
and build outgoing frames without ``sendMessage``, while anything else
(control frames, fragments, partial or invalid frames) still reaches
Autobahn unchanged (mixed on one connection, written as raw bytes on the
socket under websocket-client, or in process on a StringTransport); and the
endpoint embedded in a site of one's own. The frame codec alone is in
test_wsframes.py.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
import treq
import websocket
from autobahn.websocket.protocol import WebSocketProtocol
from clients import (
    TIMEOUT,
    ClientPool,
    encode_frame,
    load_example,
    parse_single_frame,
    run_clients,
    unique,
)
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread, deferToThread
from wireclient import connected_client, frame
from wsinprocess import open_in_process

from stomptw.session import StompSession
from stomptw.websocket import FAST_PARTIAL_MAX, origin_allowed


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


# -- the origin policy by default ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cross_origin_websocket_handshake_is_refused_by_default(broker):
    """
    There is no authentication, and loopback does not protect a WebSocket
    endpoint: any web page open in a browser on that machine could connect
    to ws://127.0.0.1:15674/ws (cross-site WebSocket hijacking). So by
    default a handshake from another origin is refused, with HTTP 403 as
    documented (browsers.md), and gets no STOMP session.
    """

    def run() -> None:
        try:
            ws = websocket.create_connection(
                broker.ws_url,
                subprotocols=["v12.stomp"],
                origin="https://attacker.example",
                timeout=TIMEOUT,
            )
        except websocket.WebSocketBadStatusException as refused:
            # The documented refusal (browsers.md), not just any failure.
            assert refused.status_code == 403, refused
            return
        try:
            ws.send("CONNECT\naccept-version:1.2\n\n\x00")
            reply = ws.recv()
        finally:
            ws.close()
        raise AssertionError(f"a page from https://attacker.example got a STOMP session: {reply!r}")

    await deferToThread(run)


# -- a session outlives its WebSocket no longer than the WebSocket is open -----------------


@pytest_twisted.ensureDeferred
async def test_queue_message_not_lost_to_a_websocket_that_is_closing(make_broker):
    """
    When a WebSocket client starts the closing handshake, Autobahn answers,
    sets its state to CLOSED and calls transport.loseConnection(), but TCP
    only goes once the write buffer has drained (for ever, if the client
    does not read; up to closeHandshakeTimeout when Autobahn itself fails the
    connection, e.g. 1009). The STOMP session must end as soon as the
    WebSocket leaves STATE_OPEN: were it still subscribed, the queue would
    hand it messages that its transport cannot write, and with ack:auto they
    would be lost. A message sent meanwhile reaches the next consumer.
    """
    running = await make_broker()
    dest = "/queue/ws-closing"

    def ws_session_state():
        (session,) = [s for s in running.broker.sessions if s.transport_name == "ws"]
        return session.transport.state, session.closing, list(session.subscriptions)

    def run() -> None:
        ws = websocket.create_connection(
            running.ws_url, subprotocols=["v12.stomp"], timeout=TIMEOUT
        )
        ws.send("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00")
        assert ws.recv().startswith("CONNECTED")
        ws.send(f"SUBSCRIBE\nid:1\ndestination:{dest}\nreceipt:r\n\n\x00")
        assert ws.recv().startswith("RECEIPT")
        with connected_client(running) as producer:
            # The client stops reading: a backlog builds up in the broker's
            # write buffer for it.
            for i in range(12):
                producer.send_message(dest, b"F" * (2 * 1024 * 1024), f"receipt:f{i}")
                producer.receipt(f"f{i}")
            # The client starts the closing handshake (still not reading).
            ws.send_close()
            time.sleep(0.3)
            # Evidence for the failure message: WebSocket CLOSED, STOMP
            # session neither closing nor unsubscribed.
            state, closing, subs = blockingCallFromThread(reactor, ws_session_state)
            producer.send_message(dest, b"precious", "receipt:p")
            producer.receipt("p")
        ws.sock.close()  # the client finally goes away
        time.sleep(0.3)
        with connected_client(running) as consumer:
            consumer.send(frame("SUBSCRIBE", "id:c", f"destination:{dest}", "receipt:rc"))
            got = [f.body for f in consumer.until_receipt("rc") if f.command == "MESSAGE"]
            consumer.send(frame("SEND", "destination:/topic/barrier", "receipt:b"))
            got += [f.body for f in consumer.until_receipt("b") if f.command == "MESSAGE"]
            # Flow control hands out 2 MiB messages as the client reads, so
            # some may follow the barrier's receipt.
            while b"precious" not in got and len(got) < 13:
                extra = consumer.recv_frame()
                if extra.command == "MESSAGE":
                    got.append(extra.body)
        assert b"precious" in got, (
            "a message sent while the WebSocket consumer was closing was lost: "
            f"the queue redelivered {len(got)} message(s), none of them it; when it was "
            f"sent the WebSocket state was {state} (CLOSED={WebSocketProtocol.STATE_CLOSED}), "
            f"session closing={closing}, subscriptions={subs}"
        )

    await deferToThread(run)


# -- the fast paths, on the wire -----------------------------------------------------------


TEXT = websocket.ABNF.OPCODE_TEXT


BINARY = websocket.ABNF.OPCODE_BINARY


CONT = websocket.ABNF.OPCODE_CONT


PING = websocket.ABNF.OPCODE_PING


PONG = websocket.ABNF.OPCODE_PONG


CLOSE = websocket.ABNF.OPCODE_CLOSE


def wire(
    payload: bytes, opcode: int = TEXT, fin: bool = True, mask: bool = True, rsv1: bool = False
) -> bytes:
    """
    One client WebSocket frame as bytes on the wire (masked unless told;
    ``rsv1`` marks a permessage-deflate compressed message).
    """
    frame = websocket.ABNF(1 if fin else 0, int(rsv1), 0, 0, opcode, 1 if mask else 0, payload)
    return frame.format()


def recv_any(ws) -> tuple[int, bytes]:
    """The next message or control frame (pings are answered by websocket-client)."""
    opcode, frame = ws.ws.recv_data_frame(control_frame=True)
    data = frame.data
    if isinstance(data, str):
        data = data.encode("utf-8")
    return opcode, data


@pytest_twisted.ensureDeferred
async def test_simple_frames_control_frames_and_fragments_in_one_write(broker):
    """
    One TCP write holds simple frames, a ping, a fragmented message with a
    ping between its fragments, and binary frames: every STOMP frame is
    handled in order and the pings are answered.
    """
    dest = "/queue/" + unique("fast")
    send = encode_frame("SEND", {"destination": dest, "receipt": "r2"}, b"fragmented body")
    half = len(send) // 2
    binary_body = b"\xff\x00\xfe not utf-8"

    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        raw = (
            wire(encode_frame("SUBSCRIBE", {"destination": dest, "id": "s1", "receipt": "r1"}))
            + wire(b"ping-1", PING)
            + wire(send[:half], TEXT, fin=False)
            + wire(b"ping-2", PING)
            + wire(send[half:], CONT)
            + wire(
                encode_frame(
                    "SEND",
                    {"destination": dest, "receipt": "r3", "content-length": str(len(binary_body))},
                    binary_body,
                ),
                BINARY,
            )
            + wire(encode_frame("SEND", {"destination": dest, "receipt": "r4"}, b"last"))
        )
        ws.ws.sock.sendall(raw)
        pongs, frames = [], []
        while len(frames) < 7:
            opcode, data = recv_any(ws)
            if opcode == PONG:
                pongs.append(data)
            else:
                assert opcode in (TEXT, BINARY), (opcode, data)
                frames.append((opcode, parse_single_frame(data)))
        assert pongs == [b"ping-1", b"ping-2"]
        receipts = [f.headers["receipt-id"] for _, f in frames if f.command == "RECEIPT"]
        messages = [(o, f.body) for o, f in frames if f.command == "MESSAGE"]
        assert receipts == ["r1", "r2", "r3", "r4"]
        assert messages == [(TEXT, b"fragmented body"), (BINARY, binary_body), (TEXT, b"last")]

    await run_clients(scenario)


@pytest.mark.parametrize("chunk", [1, 5, 1000])
@pytest_twisted.ensureDeferred
async def test_frames_split_across_tcp_writes(broker, chunk):
    """
    Frames (small, 16-bit and 64-bit lengths, short and long masks) cut
    into pieces on the socket arrive whole, and come back with the right
    lengths in the broker's frame headers.
    """
    dest = "/queue/" + unique("split")
    bodies = [b"a", b"b" * 130, b"c" * 600, b"d" * 70000]

    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        raw = wire(encode_frame("SUBSCRIBE", {"destination": dest, "id": "s1"}))
        for i, body in enumerate(bodies):
            raw += wire(encode_frame("SEND", {"destination": dest, "receipt": f"r{i}"}, body))
        # The 70 kB frame goes in large pieces; the rest in small ones.
        step = chunk
        pos = 0
        while pos < len(raw):
            piece = raw[pos : pos + (step if pos < 2000 else 65536)]
            ws.ws.sock.sendall(piece)
            pos += len(piece)
        got = []
        receipts = []
        while len(got) < len(bodies) or len(receipts) < len(bodies):
            frame = ws.recv_frame()[1]
            if frame.command == "MESSAGE":
                got.append(frame.body)
            else:
                assert frame.command == "RECEIPT", frame
                receipts.append(frame.headers["receipt-id"])
        assert got == bodies
        assert receipts == [f"r{i}" for i in range(len(bodies))]

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_invalid_utf8_in_a_text_frame_closes_with_1007(broker):
    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        bad = encode_frame("SEND", {"destination": "/queue/x"}, b"\xff\xfe")
        ws.ws.sock.sendall(
            wire(encode_frame("SEND", {"destination": "/queue/x"}, b"ok")) + wire(bad)
        )
        code, _ = ws.recv_close()
        assert code == 1007

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_unmasked_client_frame_closes_with_1002(broker):
    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        ws.ws.sock.sendall(wire(encode_frame("SEND", {"destination": "/queue/x"}), mask=False))
        code, _ = ws.recv_close()
        assert code == 1002

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_frames_after_disconnect_in_the_same_write_are_not_processed(broker):
    """A DISCONNECT ends the session; what follows it in the same write is ignored."""
    dest = "/queue/" + unique("after")

    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        ws.ws.sock.sendall(
            wire(encode_frame("DISCONNECT", {"receipt": "bye"}))
            + wire(encode_frame("SEND", {"destination": dest, "receipt": "late"}, b"late"))
        )
        frame = ws.recv_frame()[1]
        assert (frame.command, frame.headers["receipt-id"]) == ("RECEIPT", "bye")
        code, _ = ws.recv_close()
        assert code == 1000

        consumer = pool.websocket(broker.ws_url, ["v12.stomp"])
        consumer.connect("1.2")
        consumer.send_frame("SUBSCRIBE", {"destination": dest, "id": "s", "receipt": "sub"})
        frame = consumer.recv_frame()[1]
        assert frame.command == "RECEIPT"
        consumer.send_frame("SEND", {"destination": "/topic/fast.barrier", "receipt": "b"})
        frame = consumer.recv_frame()[1]
        assert (frame.command, frame.headers.get("receipt-id")) == ("RECEIPT", "b"), frame

    await run_clients(scenario)


# -- the fast paths, in process: which path a frame takes ----------------------------------


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames: [(first byte, payload)]; checks minimal lengths."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "server frames are not masked"
        n, pos = b1 & 0x7F, pos + 2
        if n == 126:
            n, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
            assert n >= 126
        elif n == 127:
            n, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
            assert n >= 65536
        out.append((b0, data[pos : pos + n]))
        pos += n
    return out


def test_simple_frames_bypass_autobahn_both_ways(ws_in_process):
    """
    Whole simple frames in and MESSAGE frames out never reach Autobahn's
    processData or sendMessage; the frames written are exact RFC 6455
    frames with minimal 7-, 16- and 64-bit lengths.
    """
    proto, transport = ws_in_process

    def slow_path(*args, **kwargs):
        raise AssertionError("took Autobahn's path")

    proto.processData = slow_path
    proto.sendMessage = slow_path
    bodies = [b"s" * 10, b"m" * 1000, b"\xff" * 70000]
    raw = wire(encode_frame("CONNECT", {"accept-version": "1.2", "host": "x"}))
    raw += wire(encode_frame("SUBSCRIBE", {"destination": "/queue/fast", "id": "1"}))
    for body in bodies:
        headers = {"destination": "/queue/fast", "content-length": str(len(body))}
        raw += wire(encode_frame("SEND", headers, body), BINARY if body[0] == 0xFF else TEXT)
    proto.dataReceived(raw)
    frames = _server_frames(transport.value())
    assert [b0 for b0, _ in frames] == [0x81, 0x81, 0x81, 0x82]
    assert parse_single_frame(frames[0][1]).command == "CONNECTED"
    assert [parse_single_frame(p).body for _, p in frames[1:]] == bodies


def test_frames_cut_anywhere_wait_for_their_rest_on_the_fast_path(ws_in_process):
    """
    A pipelining client's frames arrive cut at arbitrary points: the start
    of a frame waits in the buffer and the frame is taken whole by the fast
    path, never by Autobahn's processData (which, once it has seen a partial
    frame, would also take every frame after it in that read).
    """
    proto, transport = ws_in_process

    def slow_path(*args, **kwargs):
        raise AssertionError("took Autobahn's path")

    proto.processData = slow_path
    bodies = [b"a" * 5, b"b" * 200, b"c" * (FAST_PARTIAL_MAX - 100)]
    raw = wire(encode_frame("CONNECT", {"accept-version": "1.2", "host": "x"}))
    raw += wire(encode_frame("SUBSCRIBE", {"destination": "/queue/cut", "id": "1"}))
    for body in bodies:
        headers = {"destination": "/queue/cut", "content-length": str(len(body))}
        raw += wire(encode_frame("SEND", headers, body))
    cuts = sorted({1, 2, 5, 6, 7, 9, 40, 41, 200, len(raw) // 2, len(raw) - 3})
    for start, stop in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        proto.dataReceived(raw[start:stop])
    frames = [parse_single_frame(p) for _, p in _server_frames(transport.value())]
    assert frames[0].command == "CONNECTED"
    assert [f.body for f in frames[1:]] == bodies


def test_a_large_frame_in_pieces_streams_through_autobahn(ws_in_process, monkeypatch):
    """
    A frame whose payload is over FAST_PARTIAL_MAX is not held whole: its
    pieces stream through Autobahn to the STOMP parser as they arrive, and
    whole frames after it take the fast path again.
    """
    proto, transport = ws_in_process
    proto.dataReceived(wire(encode_frame("CONNECT", {"accept-version": "1.2", "host": "x"})))
    proto.dataReceived(wire(encode_frame("SUBSCRIBE", {"destination": "/queue/big", "id": "1"})))
    transport.clear()
    body = b"z" * (FAST_PARTIAL_MAX + 1000)
    headers = {"destination": "/queue/big", "content-length": str(len(body))}
    big = wire(encode_frame("SEND", headers, body), BINARY)
    seen = []
    session = proto.session
    original = StompSession.data_received

    def recording(self, data):
        if self is session:
            seen.append(len(data))
        return original(self, data)

    # Sessions have slots: the method is wrapped on the class.
    monkeypatch.setattr(StompSession, "data_received", recording)
    proto.dataReceived(big[:30000])
    assert proto.data == b"" and sum(seen) > 29000  # streamed, not held
    proto.dataReceived(big[30000:])
    (frame,) = _server_frames(transport.value())
    assert parse_single_frame(frame[1]).body == body


def test_control_frames_and_partial_frames_still_go_to_autobahn(ws_in_process):
    proto, transport = ws_in_process
    connect = wire(encode_frame("CONNECT", {"accept-version": "1.2", "host": "x"}))
    # A frame cut in two: the first piece waits in Autobahn's buffer.
    proto.dataReceived(connect[:7])
    assert transport.value() == b""
    proto.dataReceived(connect[7:] + wire(b"hello", PING))
    frames = _server_frames(transport.value())
    assert parse_single_frame(frames[0][1]).command == "CONNECTED"
    assert frames[1] == (0x80 | PONG, b"hello")
    # And whole frames take the fast path again.
    transport.clear()
    proto.processData = None  # would fail if called
    proto.dataReceived(wire(encode_frame("SEND", {"destination": "/queue/q", "receipt": "r"})))
    (frame,) = _server_frames(transport.value())
    assert parse_single_frame(frame[1]).headers["receipt-id"] == "r"


# -- embedding the endpoint in a site ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_embedded_resource_example():
    """docs/examples/embed_resource.py mounts the endpoint beside other pages."""
    site = load_example("embed_resource").make_site(reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        number = port.getHost().port

        def client():
            ws = websocket.create_connection(
                f"ws://127.0.0.1:{number}/live/stomp", subprotocols=["v12.stomp"], timeout=10
            )
            try:
                ws.send("CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
                connected = ws.recv()
                ws.send("SUBSCRIBE\nid:1\ndestination:/topic/e\n\n\x00")
                ws.send("SEND\ndestination:/topic/e\nreceipt:r\n\nembedded\x00")
                frames = [ws.recv(), ws.recv()]
                return ws.subprotocol, connected, frames
            finally:
                ws.close()

        subprotocol, connected, frames = await deferToThread(client)
        assert subprotocol == "v12.stomp"
        assert connected.startswith("CONNECTED\n")
        assert any(f.startswith("MESSAGE\n") and f.endswith("embedded\x00") for f in frames)
        # The example pages, mounted beside it, point at the mounted endpoint.
        config_js = await treq.get(f"http://127.0.0.1:{number}/live/examples/config.js")
        assert (await config_js.text()) == (
            'window.STOMPTW_WS_PATH = "/live/stomp";\nwindow.STOMPTW_AUTH = false;\n'
            'window.STOMPTW_TCP = ["tcp:61613:interface=127.0.0.1"];\n'
        )
        page = await treq.get(f"http://127.0.0.1:{number}/live/examples/chat.html")
        assert page.code == 200 and "chat.js" in await page.text()
    finally:
        await port.stopListening()


def test_open_connections_keep_only_what_differs_and_stay_apart(ws_in_process):
    """
    An open connection leaves the values every connection holds alike to
    its factory's class (Autobahn keeps about 90 attributes each): what is
    left on it is a few dozen at most. A value one connection changes stays
    its own: closing one leaves the other open and working.
    """
    first, first_wire = ws_in_process
    second, second_wire = open_in_process(first.factory, 40001)
    for proto in (first, second):
        assert len(vars(proto)) < 30, sorted(vars(proto))
        assert proto.maxFramePayloadSize == first.factory.maxFramePayloadSize
        assert proto.state == proto.STATE_OPEN and proto.data == b""
    first.dataReceived(wire(b"", CLOSE))
    assert first.state != first.STATE_OPEN
    assert second.state == second.STATE_OPEN
    second.dataReceived(wire(encode_frame("CONNECT", {"accept-version": "1.2", "host": "x"})))
    ((_, payload),) = _server_frames(second_wire.value())
    assert parse_single_frame(payload).command == "CONNECTED"


def test_options_set_later_apply_to_new_connections_only(ws_in_process):
    """
    As with Autobahn's own copies, a connection keeps the options it opened
    with; ``setProtocolOptions`` applies to connections opened after it.
    """
    first, _ = ws_in_process
    factory = first.factory
    before = first.autoPingInterval
    factory.setProtocolOptions(autoPingInterval=before + 7)
    second, _ = open_in_process(factory, 40001)
    assert (first.autoPingInterval, second.autoPingInterval) == (before, before + 7)


def test_the_write_queue_is_made_only_when_autobahn_queues(ws_in_process):
    """
    Autobahn's queue of delayed writes (600 bytes empty) is not made for an
    open connection; a pong or close goes straight to the socket, and the
    queue appears once something is queued.
    """
    proto, transport = ws_in_process
    assert proto._send_queue is None
    proto.dataReceived(wire(b"hi", PING))
    assert _server_frames(transport.value()) == [(0x80 | PONG, b"hi")]
    assert proto._send_queue is None
    proto.send_queue.append((b"x", True))
    assert list(proto.send_queue) == [(b"x", True)]
    proto.send_queue = type(proto.send_queue)()
    assert proto._send_queue is None


def test_what_the_fast_paths_read_is_never_left_to_the_class(ws_in_process):
    """
    A value left to the class is read about four times slower than a
    connection's own: what the fast paths read for every frame stays in the
    connection's slots, set on every open connection.
    """
    from stomptw.websocket import StompWebSocketProtocol

    first, _ = ws_in_process
    second, _ = open_in_process(first.factory, 40001)
    shared = type(second).__dict__["_idle_defaults"]
    hot = set(StompWebSocketProtocol.__slots__)
    assert shared and not hot & set(shared)
    assert not hot & set(vars(second))
    assert all(hasattr(second, name) for name in hot)


def test_a_direct_write_is_counted_as_autobahn_counts_it(ws_in_process):
    """The pong written without Autobahn's queue still counts in its traffic statistics."""
    proto, transport = ws_in_process
    before = proto.trafficStats.outgoingOctetsWireLevel
    proto.dataReceived(wire(b"hi", PING))
    assert proto.trafficStats.outgoingOctetsWireLevel - before == len(transport.value()) == 4
