"""
End-to-end tests of STOMP over WebSocket with real third-party clients:
stomp.py's ``WSConnection`` and websocket-client used directly (one
WebSocket message at a time, with an independent STOMP codec from
:mod:`clients`).

Each scenario runs in a worker thread (:func:`clients.run_clients`); nothing
sleeps, "nothing arrived" is checked after a receipt round trip.
"""

from __future__ import annotations

import pytest
import pytest_twisted
import websocket
from clients import (
    ClientPool,
    RawStompWebSocket,
    encode_frame,
    parse_single_frame,
    run_clients,
    unique,
)

from stomptw.config import BrokerConfig
from stomptw.frame import Limits

TEXT = websocket.ABNF.OPCODE_TEXT
BINARY = websocket.ABNF.OPCODE_BINARY
CLOSE = websocket.ABNF.OPCODE_CLOSE


def queue_name(prefix: str = "wsq") -> str:
    return "/queue/" + unique(prefix)


def subscribe(ws: RawStompWebSocket, destination: str, sub_id: str = "s1", **headers) -> None:
    """SUBSCRIBE on a raw WebSocket client and wait for the receipt."""
    receipt = unique("sub")
    ws.send_frame(
        "SUBSCRIBE", {"destination": destination, "id": sub_id, "receipt": receipt, **headers}
    )
    _, frame = ws.recv_frame()
    assert (frame.command, frame.headers.get("receipt-id")) == ("RECEIPT", receipt), frame


def barrier(ws: RawStompWebSocket) -> None:
    """
    A receipt round trip: the next WebSocket message must be the RECEIPT,
    i.e. nothing else was sent to this client before it.
    """
    receipt = unique("barrier")
    ws.send_frame("SEND", {"destination": "/topic/e2e.barrier", "receipt": receipt}, b"")
    _, frame = ws.recv_frame()
    assert (frame.command, frame.headers.get("receipt-id")) == ("RECEIPT", receipt), frame


# -- subprotocols ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["v10.stomp", "v11.stomp", "v12.stomp"], "v12.stomp"),
        (["v12.stomp", "v11.stomp", "v10.stomp"], "v12.stomp"),
        (["v12.stomp"], "v12.stomp"),
        (["v10.stomp", "v11.stomp"], "v11.stomp"),
        (["v11.stomp"], "v11.stomp"),
        (["v10.stomp"], "v10.stomp"),
        (["mqtt", "v11.stomp", "wamp.2.json"], "v11.stomp"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_subprotocol_negotiation_picks_the_highest_offered(broker, offered, chosen):
    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, offered)
        assert ws.subprotocol == chosen
        assert ws.ws.getheaders()["sec-websocket-protocol"] == chosen
        connected = ws.connect("1.0,1.1,1.2")
        assert connected.headers["version"] in ("1.0", "1.1", "1.2")
        dest = queue_name()
        subscribe(ws, dest)
        ws.send_frame("SEND", {"destination": dest}, b"over " + chosen.encode())
        _, message = ws.recv_frame()
        assert (message.command, message.body) == ("MESSAGE", b"over " + chosen.encode())

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_client_offering_no_subprotocol_is_served(broker):
    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, None)
        assert ws.subprotocol is None
        assert "sec-websocket-protocol" not in ws.ws.getheaders()
        connected = ws.connect("1.2")
        assert connected.headers["version"] == "1.2"
        dest = queue_name()
        subscribe(ws, dest)
        ws.send_frame("SEND", {"destination": dest}, b"no subprotocol")
        _, message = ws.recv_frame()
        assert message.body == b"no subprotocol"

    await run_clients(scenario)


# -- framing -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_frame_split_across_several_ws_messages(broker):
    dest = queue_name("split")
    body = "split ünïcödé body ✓".encode()

    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        # CONNECT itself in three text messages, cut inside the command and
        # inside a header.
        connect = encode_frame("CONNECT", {"accept-version": "1.2", "host": "localhost"})
        for piece in (connect[:4], connect[4:20], connect[20:]):
            ws.send_text(piece)
        _, connected = ws.recv_frame()
        assert connected.command == "CONNECTED"
        subscribe(ws, dest)

        # SEND in binary messages cut inside a header, right after the blank
        # line, and in the middle of a multi-byte UTF-8 character.
        frame = encode_frame(
            "SEND",
            {"destination": dest, "content-length": str(len(body)), "receipt": "split"},
            body,
        )
        head_end = frame.index(b"\n\n") + 2
        mid_char = head_end + body.index("ü".encode()) + 1
        cuts = [0, 10, head_end, mid_char, len(frame) - 1, len(frame)]
        for start, stop in zip(cuts, cuts[1:], strict=False):
            ws.send_binary(frame[start:stop])

        _, message = ws.recv_frame()
        assert message.command == "MESSAGE"
        assert message.body == body
        _, receipt = ws.recv_frame()
        assert (receipt.command, receipt.headers["receipt-id"]) == ("RECEIPT", "split")

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_several_frames_in_one_ws_message(broker):
    dest = queue_name("batch")

    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        batch = (
            encode_frame("SUBSCRIBE", {"destination": dest, "id": "s1", "receipt": "r1"})
            + b"\n"  # a heart-beat between frames
            + encode_frame("SEND", {"destination": dest, "receipt": "r2"}, b"first")
            + b"\r\n\n"
            + encode_frame("SEND", {"destination": dest, "receipt": "r3"}, b"second")
        )
        ws.send_text(batch)

        # Every frame the broker sends is one WebSocket message of its own
        # (recv_frame checks that each holds exactly one frame).
        frames = [ws.recv_frame()[1] for _ in range(5)]
        receipts = [f.headers["receipt-id"] for f in frames if f.command == "RECEIPT"]
        messages = [f.body for f in frames if f.command == "MESSAGE"]
        assert receipts == ["r1", "r2", "r3"]
        assert messages == [b"first", b"second"]
        assert frames[0].command == "RECEIPT"
        barrier(ws)

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_outgoing_frames_are_one_message_each_with_the_right_opcode(broker):
    dest = queue_name("opcodes")
    bodies = [
        (b"plain ascii", TEXT),
        ("ünïcödé ✓ text".encode(), TEXT),
        (b"valid utf-8 with \x00 NUL inside", TEXT),
        (b"\xff\xfe not utf-8 \x00\x80", BINARY),
        (b"\xc3", BINARY),  # a truncated two-byte sequence
    ]

    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        ws.send_frame("CONNECT", {"accept-version": "1.2", "host": "localhost"})
        opcode, data = ws.recv_message()
        assert opcode == TEXT
        assert parse_single_frame(data).command == "CONNECTED"
        subscribe(ws, dest)

        producer = pool.tcp(broker.tcp_port)
        for body, _ in bodies:
            producer.send(dest, body, content_type="application/octet-stream")
        for body, expected_opcode in bodies:
            opcode, data = ws.recv_message()
            frame = parse_single_frame(data)  # exactly one frame per message
            assert frame.command == "MESSAGE"
            assert frame.body == body
            assert opcode == expected_opcode, (body, opcode)
        barrier(ws)

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_binary_ws_message_reaches_a_tcp_client(broker):
    dest = queue_name("bin")
    body = b"\x00\xff\xfe binary \x00 from a WebSocket \x80"

    def scenario(pool: ClientPool):
        consumer = pool.tcp(broker.tcp_port, auto_decode=False)
        consumer.subscribe(dest)
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        frame = encode_frame(
            "SEND",
            {"destination": dest, "content-length": str(len(body)), "receipt": "bin"},
            body,
        )
        ws.send_binary(frame)
        _, receipt = ws.recv_frame()
        assert receipt.headers["receipt-id"] == "bin"
        message = consumer.next_message()
        assert message.body == body
        assert message.headers["content-length"] == str(len(body))

    await run_clients(scenario)


# -- interoperability ---------------------------------------------------------------------


@pytest.mark.parametrize(("sender", "receiver"), [("tcp", "ws"), ("ws", "tcp"), ("ws", "ws")])
@pytest_twisted.ensureDeferred
async def test_messages_cross_transports(broker, sender, receiver):
    dest = queue_name("interop")
    body = f"from {sender} to {receiver}: ✓"

    def open_client(pool: ClientPool, kind: str):
        if kind == "tcp":
            return pool.tcp(broker.tcp_port, "1.2")
        return pool.ws(broker.ws_port, broker.ws_path)

    def scenario(pool: ClientPool):
        consumer = open_client(pool, receiver)
        assert consumer.connected_frame.headers["version"] == "1.2"
        sub_id = consumer.subscribe(dest)
        producer = open_client(pool, sender)
        producer.send(
            dest,
            body,
            content_type="text/plain;charset=utf-8",
            headers={"x-route": f"{sender}->{receiver}"},
            receipt=True,
        )
        message = consumer.next_message()
        assert message.body == body
        assert message.headers["x-route"] == f"{sender}->{receiver}"
        assert message.headers["content-type"] == "text/plain;charset=utf-8"
        assert message.headers["destination"] == dest
        assert message.headers["subscription"] == sub_id
        consumer.assert_no_message()
        producer.disconnect()
        consumer.disconnect()

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_websocket_consumer_unacked_messages_go_to_a_tcp_consumer(broker):
    dest = queue_name("wsack")

    def scenario(pool: ClientPool):
        ws_consumer = pool.ws(broker.ws_port, broker.ws_path)
        ws_consumer.subscribe(dest, ack="client-individual")
        producer = pool.tcp(broker.tcp_port)
        for i in range(3):
            producer.send(dest, f"m{i}")
        messages = ws_consumer.next_messages(3)
        ws_consumer.ack(messages[1])
        ws_consumer.disconnect()

        tcp_consumer = pool.tcp(broker.tcp_port)
        tcp_consumer.subscribe(dest)
        redelivered = tcp_consumer.next_messages(2)
        assert [m.body for m in redelivered] == ["m0", "m2"]
        assert all(m.headers.get("redelivered") == "true" for m in redelivered)
        tcp_consumer.assert_no_message()

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_heartbeats_over_websocket_are_text_messages(make_broker):
    running = await make_broker(heartbeat_send_ms=50, heartbeat_receive_ms=0)

    def scenario(pool: ClientPool):
        ws = pool.websocket(running.ws_url, ["v12.stomp"])
        connected = ws.connect("1.2", **{"heart-beat": "0,50"})
        assert connected.headers["heart-beat"] == "50,0"
        for _ in range(2):
            opcode, data = ws.recv_message()
            assert (opcode, data) == (TEXT, b"\n")

    await run_clients(scenario)


# -- size limits -----------------------------------------------------------------------------

LIMIT = 1024


def send_frame_of_size(size: int, dest: str, receipt: str) -> bytes:
    """A SEND frame of exactly ``size`` bytes, NUL included."""
    headers = {"destination": dest, "receipt": receipt}
    for digits in range(1, 10):
        headers["content-length"] = "9" * digits
        body_len = size - len(encode_frame("SEND", headers))
        if len(str(body_len)) == digits:
            break
    headers["content-length"] = str(body_len)
    frame = encode_frame("SEND", headers, b"x" * body_len)
    assert len(frame) == size
    return frame


@pytest_twisted.ensureDeferred
async def test_frame_of_exactly_max_frame_size_is_accepted(make_broker):
    running = await make_broker(limits=Limits(max_frame_size=LIMIT))

    def scenario(pool: ClientPool):
        ws = pool.websocket(running.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        ws.send_text(send_frame_of_size(LIMIT, queue_name("limit"), "at-limit"))
        _, receipt = ws.recv_frame()
        assert (receipt.command, receipt.headers["receipt-id"]) == ("RECEIPT", "at-limit")

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_ws_message_over_max_frame_size_is_reported_before_the_close(make_broker):
    """
    The broker sets Autobahn's maxMessagePayloadSize to max_frame_size, so a
    bigger WebSocket message fails the connection. The client must be told
    why before the connection goes: either a WebSocket Close frame with 1009
    "message too big" (RFC 6455 7.1.7 and 7.4.1: an endpoint failing an
    established connection SHOULD send a Close frame with the status code),
    or a STOMP ERROR naming the limit, then the close. Dropping the TCP
    connection without either leaves the client guessing.
    """
    running = await make_broker(limits=Limits(max_frame_size=LIMIT))

    def scenario(pool: ClientPool):
        ws = pool.websocket(running.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        ws.send_text(send_frame_of_size(LIMIT + 1, queue_name("limit"), "too-big"))
        try:
            opcode, data = ws.recv_message()
            if opcode == CLOSE:
                assert int.from_bytes(data[:2], "big") == 1009, data
                return
            error = parse_single_frame(data)
            assert error.command == "ERROR", error
            assert "max_frame_size" in error.headers["message"]
            code, _reason = ws.recv_close()
            assert code in (1000, 1009)
        except (websocket.WebSocketConnectionClosedException, ConnectionError) as e:
            raise AssertionError(
                f"the connection was dropped without a Close frame or an ERROR: {e!r}"
            ) from None

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_ws_message_over_max_frame_size_ends_the_session_only(make_broker):
    """
    Whatever the close looks like, the oversized message is not routed,
    the WebSocket session ends, and the broker keeps serving others.
    """
    running = await make_broker(limits=Limits(max_frame_size=LIMIT))
    dest = queue_name("limit")

    def scenario(pool: ClientPool):
        consumer = pool.tcp(running.tcp_port)
        consumer.subscribe(dest)
        ws = pool.websocket(running.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        ws.send_text(send_frame_of_size(LIMIT + 1, dest, "too-big"))
        # Nothing but an ERROR may come before the end of the connection
        # (a Close frame or the TCP connection going away): no RECEIPT.
        seen = []
        try:
            while True:
                opcode, data = ws.recv_message()
                if opcode == CLOSE:
                    break
                seen.append(parse_single_frame(data).command)
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            pass
        assert seen in ([], ["ERROR"]), seen
        consumer.assert_no_message()

        other = pool.websocket(running.ws_url, ["v12.stomp"])
        other.connect("1.2")
        other.send_text(send_frame_of_size(LIMIT, dest, "fits"))
        _, receipt = other.recv_frame()
        assert receipt.headers["receipt-id"] == "fits"
        assert set(consumer.next_message().body) == {"x"}

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_ws_message_over_the_websocket_limit_is_closed_with_1009(make_broker):
    """
    Above the STOMP limits, the broker bounds WebSocket messages themselves
    (``ws_max_message_size``); Autobahn refuses a bigger message as soon as
    its length is known, with the closing handshake and code 1009.
    """
    limits = Limits(max_frame_size=LIMIT)
    ws_limit = BrokerConfig(limits=limits).min_ws_message_size
    running = await make_broker(limits=limits, ws_max_message_size=ws_limit)

    def scenario(pool: ClientPool):
        ws = pool.websocket(running.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        ws.send_text(send_frame_of_size(ws_limit + 1, queue_name("limit"), "too-big"))
        assert ws.recv_close()[0] == 1009

    await run_clients(scenario)


@pytest.mark.parametrize("content_length", [True, False], ids=["content-length", "nul-terminated"])
@pytest_twisted.ensureDeferred
async def test_frame_over_max_frame_size_split_in_small_ws_messages_gets_error(
    make_broker, content_length
):
    """
    Each WebSocket message is under the limit, so Autobahn lets them in; the
    STOMP parser sees the frame grow past max_frame_size and the broker
    answers ERROR, then closes the WebSocket normally (1000).
    """
    running = await make_broker(limits=Limits(max_frame_size=LIMIT))

    def scenario(pool: ClientPool):
        ws = pool.websocket(running.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        body = b"y" * (LIMIT + 100)
        headers = {"destination": queue_name("limit"), "receipt": "split-big"}
        if content_length:
            headers["content-length"] = str(len(body))
        frame = encode_frame("SEND", headers, body)
        for start in range(0, len(frame), 300):
            try:
                ws.send_text(frame[start : start + 300])
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                break
        opcode, error = ws.recv_frame()
        assert opcode == TEXT
        assert error.command == "ERROR"
        assert "max_frame_size" in error.headers["message"]
        assert str(LIMIT) in error.headers["message"]
        code, _reason = ws.recv_close()
        assert code == 1000

    await run_clients(scenario)


@pytest.mark.parametrize("ws_limit", ["default", "smallest-allowed"])
@pytest.mark.parametrize("ack", ["auto", "client-individual"])
@pytest_twisted.ensureDeferred
async def test_message_at_the_limit_reaches_a_websocket_consumer(make_broker, ack, ws_limit):
    """
    A SEND of exactly max_frame_size bytes is accepted; the MESSAGE the
    broker builds from it carries more headers (message-id, subscription,
    ack) and is larger than max_frame_size. The producer did nothing wrong:
    it gets its RECEIPT and keeps its session. The WebSocket consumer gets
    the MESSAGE, within the WebSocket message limit in force, even at the
    smallest limit the configuration allows: one too small to carry every
    MESSAGE the broker can build is refused when the broker is configured.
    """
    limits = Limits(max_frame_size=LIMIT)
    smallest = BrokerConfig(limits=limits).min_ws_message_size
    with pytest.raises(ValueError, match="ws_max_message_size must be at least"):
        BrokerConfig(limits=limits, ws_max_message_size=smallest - 1)
    overrides = {}
    if ws_limit != "default":
        overrides["ws_max_message_size"] = smallest
    running = await make_broker(limits=limits, **overrides)
    ws_message_limit = BrokerConfig(limits=limits, **overrides).ws_message_limit
    dest = queue_name("at-limit")
    send = send_frame_of_size(LIMIT, dest, "r")
    body = send[send.index(b"\n\n") + 2 : -1]

    def scenario(pool: ClientPool):
        ws = pool.websocket(running.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        subscribe(ws, dest, ack=ack)
        producer = pool.raw(running.tcp_port)
        producer.connect("1.2")
        producer.send_bytes(send)
        reply = producer.read_frame()
        assert (reply.command, reply.headers.get("receipt-id")) == ("RECEIPT", "r"), reply

        opcode, data = ws.recv_message()
        assert opcode != CLOSE, f"the consumer was closed instead: {data!r}"
        message = parse_single_frame(data)
        assert message.command == "MESSAGE", message
        assert (message.headers["destination"], message.body) == (dest, body)
        assert LIMIT < len(data) <= ws_message_limit

        producer.send("SEND", {"destination": dest + ".2", "receipt": "r2"}, b"still here")
        reply = producer.read_frame()
        assert (reply.command, reply.headers.get("receipt-id")) == ("RECEIPT", "r2"), reply

    await run_clients(scenario)


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
@pytest_twisted.ensureDeferred
async def test_second_connect_over_websocket_gets_error_then_close(broker, command):
    """
    A second CONNECT (or STOMP) on an established WebSocket session is
    refused: the next message is ERROR "already connected" (with the
    frame's receipt-id, its body naming the command), and the one after it
    the broker's normal Close (1000), with nothing in between.
    """

    def scenario(pool: ClientPool):
        ws = pool.websocket(broker.ws_url, ["v12.stomp"])
        ws.connect("1.2")
        ws.send_frame(command, {"accept-version": "1.2", "host": "localhost", "receipt": "again"})
        opcode, error = ws.recv_frame()
        assert (opcode, error.command) == (TEXT, "ERROR"), error
        assert error.headers["message"] == "already connected", error
        assert error.headers["receipt-id"] == "again"
        assert f"a second {command} is not allowed".encode() in error.body, error.body
        opcode, data = ws.recv_message()
        assert opcode == CLOSE, (opcode, data)
        assert int.from_bytes(data[:2], "big") == 1000, data

    await run_clients(scenario)
