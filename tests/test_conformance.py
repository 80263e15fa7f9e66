"""
STOMP 1.0 / 1.1 / 1.2 conformance of the server side, checked on the wire.

Every test talks to a real broker (the ``broker`` and ``make_broker``
fixtures) with raw bytes: a plain TCP socket, or, for the part of the
protocol that does not depend on the transport, WebSocket messages sent with
websocket-client (STOMP frames as text messages, ``v12.stomp``
subprotocol). Where the specification is exact the bytes are checked
exactly; the frames the broker sends are parsed by a small reader written
for these tests (not the broker's codec), which also checks that whatever
the broker sends is itself well-formed for the negotiated version.

The blocking clients run in a thread (``deferToThread``) so that the reactor
keeps serving the broker. Socket timeouts are only failure bounds: a passing
test never waits for one, except the heart-beat tests, which observe the
connection for about a second.
"""

from __future__ import annotations

import re
import time

import pytest
import pytest_twisted
import websocket
from twisted.internet.threads import deferToThread
from wireclient import (
    TIMEOUT,
    Client,
    Frame,
    connected_client,
    frame,
    open_client,
)

from stomptw.frame import Limits

SUPPORTED = {"1.0", "1.1", "1.2"}


def queue_bodies(broker, destination: str) -> list[bytes]:
    """Consume what waits on a queue; the bodies in order (a marker ends the wait)."""
    marker = b"--marker--"
    with connected_client(broker) as c:
        c.send(frame("SUBSCRIBE", "id:drain", f"destination:{destination}"))
        c.send_message(destination, marker)
        return [m.body for m in c.messages_until(marker)[:-1]]


def ack_lines(version: str, message: Frame) -> list[str]:
    """The headers that identify ``message`` in ACK/NACK for ``version``."""
    if version == "1.2":
        return [f"id:{message.raw_value('ack')}"]
    lines = [f"message-id:{message.raw_value('message-id')}"]
    if version == "1.1":
        lines.append(f"subscription:{message.raw_value('subscription')}")
    return lines


@pytest.fixture(params=["tcp", "ws"])
def transport(request) -> str:
    return request.param


# ================================================================================
# Connecting, CONNECTED, version negotiation
# ================================================================================


@pytest_twisted.ensureDeferred
async def test_connected_frame(broker, transport):
    """CONNECTED carries version, heart-beat, server (name["/"version] comment) and session."""

    def run():
        with open_client(broker, transport) as c:
            c.send(frame("CONNECT", "accept-version:1.2", "host:localhost"))
            connected = c.expect("CONNECTED")
            assert connected.headers["version"] == "1.2"
            assert re.fullmatch(r"\d+,\d+", connected.headers["heart-beat"]), connected
            assert re.fullmatch(r"[^/\s]+(/\S+)?( .*)?", connected.headers["server"]), connected
            assert connected.headers["session"], connected
            assert connected.body == b""
            if transport == "ws":
                assert c.t.ws.getsubprotocol() == "v12.stomp"
                assert c.t.opcodes == [websocket.ABNF.OPCODE_TEXT]

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_session_ids_are_unique(broker):
    def run():
        sessions = set()
        for _ in range(5):
            with open_client(broker) as c:
                sessions.add(c.connect("1.2").headers["session"])
        assert len(sessions) == 5

    await deferToThread(run)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest_twisted.ensureDeferred
async def test_stomp_frame_is_handled_like_connect(broker, transport, version):
    def run():
        with open_client(broker, transport) as c:
            connected = c.connect(version, "heart-beat:0,0", command="STOMP")
            assert connected.headers["version"] == version
            c.subscribe("/queue/stomp")
            c.send_message("/queue/stomp", b"via STOMP", "receipt:s")
            messages = c.until_receipt("s") or [c.expect("MESSAGE")]
            assert messages[0].body == b"via STOMP"

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_no_accept_version_means_10(broker):
    """A CONNECT without accept-version is a STOMP 1.0 client: 1.0 rules apply."""

    def run():
        with open_client(broker) as c:
            connected = c.connect(None)
            assert connected.headers.get("version", "1.0") == "1.0"
            # 1.0 has no escaping: a backslash sequence undefined in 1.1+ is plain text.
            c.send(frame("SUBSCRIBE", "destination:/queue/ten", "id:t", "receipt:r"))
            c.receipt("r")
            c.send(frame("SEND", "destination:/queue/ten", "x-raw:a\\tb", body=b"old"))
            message = c.expect("MESSAGE")
            assert ("x-raw", "a\\tb") in message.lines
            assert message.body == b"old"

    await deferToThread(run)


@pytest.mark.parametrize(
    "accept, expected",
    [
        ("1.0", "1.0"),
        ("1.1", "1.1"),
        ("1.2", "1.2"),
        ("1.0,1.1", "1.1"),
        ("1.0,1.1,2.0", "1.1"),
        ("1.1,1.2", "1.2"),
        ("1.0,1.1,1.2", "1.2"),
        ("1.0,1.1,1.2,2.0", "1.2"),
        ("1.0,3.0", "1.0"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_version_negotiation_picks_highest_common(broker, accept, expected):
    def run():
        with open_client(broker) as c:
            assert c.connect(accept).headers["version"] == expected

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_no_common_version_is_error_listing_versions(broker, transport):
    """No common version: ERROR with a version header listing the supported ones, then close."""

    def run():
        with open_client(broker, transport) as c:
            c.send(frame("CONNECT", "accept-version:2.0,3.1", "host:localhost"))
            error = c.expect_error()
            versions = error.headers.get("version", "")
            assert set(versions.split(",")) == SUPPORTED, error
            assert error.headers.get("content-type", "").startswith("text/plain"), error

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_connected_headers_are_never_escaped(make_broker):
    running = await make_broker(server_name="conformance/1.0 (a:b c\\d)")

    def run():
        with open_client(running) as c:
            connected = c.connect("1.2")
            assert b"\nserver:conformance/1.0 (a:b c\\d)\n" in connected.raw, connected.raw
            assert connected.headers["server"] == "conformance/1.0 (a:b c\\d)"

    await deferToThread(run)


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
@pytest_twisted.ensureDeferred
async def test_connect_headers_are_not_unescaped(broker, command):
    """CONNECT and STOMP are never escaped, so a backslash there is not an error."""

    def run():
        with open_client(broker) as c:
            connected = c.connect("1.2", "login:dom\\user", "passcode:p\\tq:r", command=command)
            assert connected.headers["version"] == "1.2"

    await deferToThread(run)


@pytest.mark.parametrize(
    "data",
    [
        frame("SEND", "destination:/queue/a", body=b"too early"),
        frame("SUBSCRIBE", "id:0", "destination:/queue/a"),
        frame("BEGIN", "transaction:t"),
        frame("connect", "accept-version:1.2", "host:localhost"),
        frame("CONNECTED", "version:1.2"),
    ],
    ids=["SEND", "SUBSCRIBE", "BEGIN", "lowercase-connect", "CONNECTED"],
)
@pytest_twisted.ensureDeferred
async def test_frame_before_connect_is_error(broker, transport, data):
    def run():
        with open_client(broker, transport) as c:
            c.send(data)
            c.expect_error()

    await deferToThread(run)
    assert "/queue/a" not in broker.broker.destinations


@pytest_twisted.ensureDeferred
async def test_frames_pipelined_behind_connect_use_negotiated_version(broker):
    def run():
        with open_client(broker) as c:
            # Negotiated 1.1: \r is not an escape in 1.1, so this is a fatal error.
            c.send(
                frame("CONNECT", "accept-version:1.1", "host:localhost")
                + frame("SEND", "destination:/queue/p", "x:a\\rb", body=b"x")
            )
            assert c.expect("CONNECTED").headers["version"] == "1.1"
            c.version = "1.1"
            c.expect_error()
        with open_client(broker) as c:
            c.send(
                frame("CONNECT", "accept-version:1.2", "host:localhost")
                + frame("SUBSCRIBE", "id:0", "destination:/queue/p")
                + frame("SEND", "destination:/queue/p", "x:a\\rb\\cc", body=b"x")
            )
            assert c.expect("CONNECTED").headers["version"] == "1.2"
            c.version = "1.2"
            assert c.expect("MESSAGE").headers["x"] == "a\rb:c"

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_rapid_connect_and_disconnect(broker):
    """Servers must support clients which rapidly connect and disconnect."""

    def run():
        for i in range(60):
            with open_client(broker) as c:
                if i % 3 == 0:
                    continue  # open and close, nothing sent
                c.send(frame("CONNECT", "accept-version:1.2", "host:localhost"))
                if i % 3 == 2:
                    c.send(frame("DISCONNECT"))
        with connected_client(broker) as c:
            c.subscribe("/queue/rapid")
            c.send_message("/queue/rapid", b"works")
            assert c.expect("MESSAGE").body == b"works"
            c.disconnect()

    await deferToThread(run)


# ================================================================================
# Heart-beating
# ================================================================================


@pytest.mark.parametrize("heart_beat", [None, "0,0"])
@pytest_twisted.ensureDeferred
async def test_no_heart_beats_unless_asked(make_broker, heart_beat):
    """A missing heart-beat header means 0,0: no heart-beats in either direction."""
    running = await make_broker(heartbeat_send_ms=50, heartbeat_receive_ms=50)

    def run():
        with open_client(running) as c:
            extra = [] if heart_beat is None else [f"heart-beat:{heart_beat}"]
            c.connect("1.2", *extra)
            # Silence both ways for 10 server intervals: nothing arrives, nothing breaks.
            assert c.arrivals(0.5) == []
            c.send(frame("BEGIN", "transaction:t", "receipt:alive"))
            c.receipt("alive")

    await deferToThread(run)


@pytest.mark.parametrize("transport, version", [("tcp", "1.1"), ("tcp", "1.2"), ("ws", "1.2")])
@pytest_twisted.ensureDeferred
async def test_server_sends_heart_beats(make_broker, transport, version):
    """With heart-beats agreed, the server sends data at least every MAX(sx, cy) ms."""
    running = await make_broker(heartbeat_send_ms=100, heartbeat_receive_ms=0)

    def run():
        with open_client(running, transport) as c:
            connected = c.connect(version, "heart-beat:0,150")
            sx, _sy = (int(v) for v in connected.headers["heart-beat"].split(","))
            assert sx > 0, f"the broker is configured to send heart-beats: {connected!r}"
            interval = max(sx, 150) / 1000
            start = time.monotonic()
            seen = c.arrivals(1.2)
            end = time.monotonic()
            data = bytes(c.buf) + b"".join(d for _, d in seen)
            allowed = (b"\n",) if version == "1.1" else (b"\n", b"\r\n")
            rest = data
            while rest:
                eol = next((e for e in allowed if rest.startswith(e)), None)
                assert eol is not None, f"heart-beats must be EOLs, got {data!r}"
                rest = rest[len(eol) :]
            times = [start] + [t for t, _ in seen] + [end]
            gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
            assert len(seen) >= 5, f"expected a heart-beat every {interval}s, got {seen!r}"
            assert max(gaps) <= interval + 0.06, f"a {max(gaps):.3f}s gap, interval {interval}s"

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_client_heart_beats_keep_the_connection(make_broker, transport):
    """A client sending EOLs every MAX(cx, sy) ms is alive; EOL may be LF or CRLF in 1.2."""
    running = await make_broker(heartbeat_send_ms=0, heartbeat_receive_ms=100)

    def run():
        with open_client(running, transport) as c:
            connected = c.connect("1.2", "heart-beat:100,0")
            _sx, sy = (int(v) for v in connected.headers["heart-beat"].split(","))
            assert sy > 0, connected
            interval = max(100, sy) / 1000
            end = time.monotonic() + max(1.0, 4 * interval)
            beats = 0
            while time.monotonic() < end:
                time.sleep(interval * 0.9)
                c.send(b"\r\n" if beats % 2 else b"\n")
                beats += 1
            c.send(frame("BEGIN", "transaction:t", "receipt:alive"))
            c.receipt("alive")

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_eols_between_frames_are_ignored(broker, transport):
    def run():
        with open_client(broker, transport) as c:
            c.connect("1.2")
            c.send(b"\n")
            c.send(frame("SUBSCRIBE", "id:0", "destination:/queue/eol") + b"\n\r\n\n")
            c.send(b"\r\n")
            c.send(
                frame("SEND", "destination:/queue/eol", body=b"one")
                + b"\n" * 10
                + frame("SEND", "destination:/queue/eol", body=b"two")
                + b"\r\n\r\n"
                + frame("SEND", "destination:/queue/eol", body=b"three", eol=b"\r\n")
                + b"\n"
            )
            assert [c.expect("MESSAGE").body for _ in range(3)] == [b"one", b"two", b"three"]
            c.send(b"\n\n" + frame("DISCONNECT", "receipt:bye") + b"\n")
            frames = c.read_to_eof()
            assert [(f.command, f.headers.get("receipt-id")) for f in frames] == [
                ("RECEIPT", "bye")
            ]

    await deferToThread(run)


# ================================================================================
# Frame syntax: EOLs, splitting, pipelining, content-length
# ================================================================================


@pytest_twisted.ensureDeferred
async def test_crlf_frames(broker, transport):
    """STOMP 1.2 lines may end with CRLF; the CR is not part of any header."""

    def run():
        crlf = b"\r\n"
        with open_client(broker, transport) as c:
            c.send(frame("CONNECT", "accept-version:1.2", "host:localhost", eol=crlf))
            assert c.expect("CONNECTED").headers["version"] == "1.2"
            c.version = "1.2"
            c.send(frame("SUBSCRIBE", "id:crlf", "destination:/queue/crlf", "receipt:r1", eol=crlf))
            c.receipt("r1")
            c.send(
                frame("SEND", "destination:/queue/crlf", "x-h:v", "content-type:text/plain",
                      "content-length:7", "receipt:r2", body=b"a\r\nb\r\n\n", eol=crlf)
            )  # fmt: skip
            messages = c.until_receipt("r2") or [c.expect("MESSAGE")]
            message = messages[0]
            assert message.headers["destination"] == "/queue/crlf"
            assert message.headers["subscription"] == "crlf"
            assert message.headers["x-h"] == "v"
            assert message.headers["content-type"] == "text/plain"
            assert message.body == b"a\r\nb\r\n\n"
            c.send(frame("SEND", "destination:/queue/crlf", body=b"no length", eol=crlf))
            assert c.expect("MESSAGE").body == b"no length"

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_frame_split_at_every_byte(broker):
    """A frame is reassembled whatever the TCP segmentation: split it at every position."""

    def run():
        with connected_client(broker) as c:
            c.subscribe("/queue/split")
            body = b"a\x00b\r\n"
            data = (
                frame(
                    "SEND", "destination:/queue/split", "x-\u00fc:\u00e9\\c",
                    f"content-length:{len(body)}", "receipt:r", body=body, eol=b"\r\n",
                ) + b"\r\n"
            )  # fmt: skip
            for cut in range(1, len(data)):
                c.send(data[:cut])
                time.sleep(0.002)
                c.send(data[cut:])
                message = (c.until_receipt("r") or [c.expect("MESSAGE")])[0]
                assert message.body == body, cut
                assert message.headers["x-\u00fc"] == "\u00e9:", cut

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_whole_session_one_byte_at_a_time(broker, transport):
    def run():
        data = (
            frame("CONNECT", "accept-version:1.2", "host:localhost")
            + frame("SUBSCRIBE", "id:0", "destination:/queue/bytes", "receipt:r1")
            + b"\n"
            + frame("SEND", "destination:/queue/bytes", "x-\u00e4:\u00f6", body=b"first")
            + frame("SEND", "destination:/queue/bytes", "content-length:3", body=b"\x00\x01\x00")
            + b"\r\n"
            + frame("SEND", "destination:/queue/bytes", body=b"third", eol=b"\r\n")
            + frame("DISCONNECT", "receipt:bye")
        )
        with open_client(broker, transport) as c:
            for i in range(len(data)):
                c.send(data[i : i + 1])
                time.sleep(0.001)
            c.version = "1.2"
            frames = c.read_to_eof()
            assert [f.command for f in frames] == [
                "CONNECTED", "RECEIPT", "MESSAGE", "MESSAGE", "MESSAGE", "RECEIPT"
            ]  # fmt: skip
            assert [f.body for f in frames[2:5]] == [b"first", b"\x00\x01\x00", b"third"]
            assert frames[2].headers["x-\u00e4"] == "\u00f6"
            assert frames[-1].headers["receipt-id"] == "bye"

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_many_frames_pipelined_in_one_send(broker, transport):
    def run():
        count = 300
        data = frame("CONNECT", "accept-version:1.2", "host:localhost") + frame(
            "SUBSCRIBE", "id:0", "destination:/queue/pipe", "receipt:sub"
        )
        for i in range(count):
            data += frame("SEND", "destination:/queue/pipe", f"receipt:r{i}", body=b"m%d" % i)
        data += frame("DISCONNECT", "receipt:bye")
        with open_client(broker, transport) as c:
            c.send(data)
            c.version = "1.2"
            frames = c.read_to_eof()
            assert frames[0].command == "CONNECTED"
            receipts = [f.headers["receipt-id"] for f in frames if f.command == "RECEIPT"]
            assert receipts == ["sub"] + [f"r{i}" for i in range(count)] + ["bye"]
            bodies = [f.body for f in frames if f.command == "MESSAGE"]
            assert bodies == [b"m%d" % i for i in range(count)]
            assert frames[-1].command == "RECEIPT"

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_content_length_body_may_contain_nul(broker, transport):
    """With content-length, that many octets are the body, NULs included; MESSAGE says so."""

    def run():
        body = b"\x00head\x00\x00tail\x00"
        with connected_client(broker, "1.2", transport) as c:
            c.subscribe("/queue/nul")
            c.send(
                frame("SEND", "destination:/queue/nul", f"content-length:{len(body)}", body=body)
                + frame("SEND", "destination:/queue/nul", body=b"after")
            )
            message = c.expect("MESSAGE")
            assert message.body == body
            assert message.raw_value("content-length") == str(len(body))
            assert c.expect("MESSAGE").body == b"after"

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_without_content_length_body_ends_at_first_nul(broker):
    def run():
        with connected_client(broker) as c:
            c.subscribe("/queue/nolen")
            c.send(frame("SEND", "destination:/queue/nolen", body=b"hello world"))
            message = c.expect("MESSAGE")
            assert message.body == b"hello world"
            assert message.headers["content-length"] == "11"

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_content_length_allowed_on_any_frame(broker):
    """All frames MAY include content-length; content-length:0 on a bodiless frame is fine."""

    def run():
        with connected_client(broker) as c:
            c.send(frame("SUBSCRIBE", "id:0", "destination:/queue/cl", "content-length:0",
                         "receipt:r1"))  # fmt: skip
            c.receipt("r1")
            c.send(frame("BEGIN", "transaction:t", "content-length:0", "receipt:r2"))
            c.receipt("r2")
            c.send(frame("ABORT", "transaction:t", "content-length:0", "receipt:r3"))
            c.receipt("r3")

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_content_length_not_followed_by_nul_is_error(broker):
    def run():
        with connected_client(broker) as c:
            c.send(b"SEND\ndestination:/queue/bad\ncontent-length:2\n\nabc\x00")
            c.expect_error()

        assert queue_bodies(broker, "/queue/bad") == []

    await deferToThread(run)


# ================================================================================
# MESSAGE frames
# ================================================================================


@pytest.mark.parametrize(
    "version, ack",
    [
        ("1.2", None),
        ("1.2", "auto"),
        ("1.2", "client"),
        ("1.2", "client-individual"),
        ("1.1", "auto"),
        ("1.1", "client"),
        ("1.1", "client-individual"),
        ("1.0", None),
        ("1.0", "client"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_message_frame_headers(broker, transport, version, ack):
    """MESSAGE: destination as sent, unique message-id, subscription id, ack, user headers."""

    def run():
        body = "caf\u00e9 body\n".encode()
        with connected_client(broker, version, transport) as consumer:
            extra = [] if ack is None else [f"ack:{ack}"]
            consumer.subscribe("/queue/msg", "sub-7", *extra)
            with connected_client(broker, version, transport) as producer:
                producer.send_message(
                    "/queue/msg", body, "content-type:text/plain;charset=utf-8",
                    "x-user:value-1", "receipt:sent",
                )  # fmt: skip
                producer.receipt("sent")
            message = consumer.expect("MESSAGE")
            assert message.headers["destination"] == "/queue/msg"
            assert message.headers["message-id"]
            assert message.headers["subscription"] == "sub-7"
            assert message.headers["content-type"] == "text/plain;charset=utf-8"
            assert message.headers["x-user"] == "value-1"
            assert message.headers["content-length"] == str(len(body))
            assert message.body == body
            if ack in ("client", "client-individual"):
                if version == "1.2":
                    assert message.headers.get("ack"), f"client ack mode needs ack: {message!r}"
                consumer.send(frame("ACK", *ack_lines(version, message), "receipt:acked"))
                consumer.receipt("acked")

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_message_ids_are_unique(broker):
    def run():
        with connected_client(broker) as c:
            c.subscribe("/topic/ids", "t")
            c.subscribe("/queue/ids", "q")
            for i in range(20):
                c.send_message("/topic/ids", b"%d" % i)
                c.send_message("/queue/ids", b"%d" % i)
            ids = [c.expect("MESSAGE").headers["message-id"] for _ in range(40)]
            assert len(set(ids)) == 40

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_user_headers_passed_through_untrimmed(broker, transport):
    """User headers reach MESSAGE as sent: never trimmed or padded, empty values kept, UTF-8."""

    def run():
        with connected_client(broker, "1.2", transport) as c:
            c.subscribe("/queue/hdr")
            c.send(
                frame("SEND", "destination:/queue/hdr", "x-pad:  padded value  ",
                      " spaced name :v", "x-empty:", "x-\u00fcn\u00ef:v\u00e4l \u2713",
                      "x-trailing-tab:a\t", body=b"b")
            )  # fmt: skip
            message = c.expect("MESSAGE")
            for pair in [
                ("x-pad", "  padded value  "),
                (" spaced name ", "v"),
                ("x-empty", ""),
                ("x-\u00fcn\u00ef", "v\u00e4l \u2713"),
                ("x-trailing-tab", "a\t"),
            ]:
                assert pair in message.lines, (pair, message)
            assert "x-\u00fcn\u00ef:v\u00e4l \u2713\n".encode() in message.raw

    await deferToThread(run)


# ================================================================================
# Header escaping
# ================================================================================


@pytest.mark.parametrize(
    "producer, consumer, sent, expected_lines, expected_values",
    [
        pytest.param(
            "1.2", "1.2",
            ["x-esc:a\\cb\\\\c\\nd\\re", "x\\cname:v"],
            [("x-esc", "a\\cb\\\\c\\nd\\re"), ("x\\cname", "v")],
            {"x-esc": "a:b\\c\nd\re", "x:name": "v"},
            id="1.2-to-1.2",
        ),
        pytest.param(
            "1.2", "1.1",
            ["x-esc:a\\cb\\\\c\\nd", "x-cr:a\\rb"],
            # 1.1 escapes only LF, ':' and '\'; a CR travels as it is.
            [("x-esc", "a\\cb\\\\c\\nd"), ("x-cr", "a\rb")],
            {"x-esc": "a:b\\c\nd", "x-cr": "a\rb"},
            id="1.2-to-1.1",
        ),
        pytest.param(
            "1.2", "1.0",
            ["x-esc:a\\cb\\\\c"],
            [("x-esc", "a:b\\c")],
            {"x-esc": "a:b\\c"},
            id="1.2-to-1.0",
        ),
        pytest.param(
            "1.1", "1.2",
            ["x-esc:a\\cb\\nc\\\\"],
            [("x-esc", "a\\cb\\nc\\\\")],
            {"x-esc": "a:b\nc\\"},
            id="1.1-to-1.2",
        ),
        pytest.param(
            "1.1", "1.1",
            ["x-esc:a\\cb\\nc\\\\"],
            [("x-esc", "a\\cb\\nc\\\\")],
            {"x-esc": "a:b\nc\\"},
            id="1.1-to-1.1",
        ),
        pytest.param(
            "1.0", "1.2",
            ["x-raw:a\\tb:c\\"],
            [("x-raw", "a\\\\tb\\cc\\\\")],
            {"x-raw": "a\\tb:c\\"},
            id="1.0-to-1.2",
        ),
        pytest.param(
            "1.0", "1.1",
            ["x-raw:a\\nb:c"],
            [("x-raw", "a\\\\nb\\cc")],
            {"x-raw": "a\\nb:c"},
            id="1.0-to-1.1",
        ),
    ],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_header_escaping_in_message(
    broker, producer, consumer, sent, expected_lines, expected_values
):
    def run():
        with connected_client(broker, consumer) as sub:
            sub.subscribe("/queue/esc", "s")
            with connected_client(broker, producer) as pub:
                pub.send(frame("SEND", "destination:/queue/esc", *sent, "receipt:r", body=b"x"))
                pub.receipt("r")
            message = sub.expect("MESSAGE")
            for pair in expected_lines:
                assert pair in message.lines, (pair, message)
            for name, value in expected_values.items():
                assert message.headers[name] == value, (name, message)

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_destination_subscription_and_receipt_escaped(broker, transport):
    """Server-generated headers (destination, subscription, receipt-id) are escaped too."""

    def run():
        with connected_client(broker, "1.2", transport) as c:
            c.send(frame("SUBSCRIBE", "id:s\\c1\\\\", "destination:/queue/a\\cb", "receipt:r\\c1"))
            receipt = c.expect("RECEIPT")
            assert receipt.raw_value("receipt-id") == "r\\c1"
            assert receipt.headers["receipt-id"] == "r:1"
            c.send(frame("SEND", "destination:/queue/a\\cb", body=b"x"))
            message = c.expect("MESSAGE")
            assert message.raw_value("destination") == "/queue/a\\cb"
            assert message.raw_value("subscription") == "s\\c1\\\\"
            assert message.headers["subscription"] == "s:1\\"
            c.send(frame("DISCONNECT", "receipt:line\\nbreak"))
            frames = c.read_to_eof()
            assert [f.raw_value("receipt-id") for f in frames] == ["line\\nbreak"]

    await deferToThread(run)


@pytest.mark.parametrize(
    "version, line",
    [
        ("1.2", "x:a\\tb"),
        ("1.2", "x:trailing\\"),
        ("1.2", "x\\t:v"),
        ("1.1", "x:a\\rb"),
        ("1.1", "x:\\t"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_undefined_escape_is_fatal(broker, version, line):
    def run():
        with connected_client(broker, version) as c:
            c.send(frame("SEND", "destination:/queue/undef", line, body=b"x"))
            c.expect_error()

    await deferToThread(run)
    assert "/queue/undef" not in broker.broker.destinations


@pytest.mark.parametrize(
    "version, sent, raw",
    [("1.2", "r\\c1\\n", "r\\c1\\n"), ("1.1", "r\\c1", "r\\c1"), ("1.0", "r:1", "r:1")],
)
@pytest_twisted.ensureDeferred
async def test_error_headers_escaped_per_version(broker, version, sent, raw):
    """ERROR is escaped like any frame but CONNECTED: receipt-id comes back as sent."""

    def run():
        with connected_client(broker, version) as c:
            c.send(frame("UNSUBSCRIBE", "id:no-such-subscription", f"receipt:{sent}"))
            error = c.expect_error()
            assert error.raw_value("receipt-id") == raw, error

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_10_subscriber_never_sees_forged_headers(broker):
    """
    Not a MUST of the specification, but a consequence of it: STOMP 1.0 has no
    escaping, so a header name holding ':' or an EOL (legal, escaped, in 1.1
    and 1.2) cannot be written to a 1.0 subscriber. Written raw, it becomes a
    different header there: a 1.2 producer could forge message-id or
    destination lines in the MESSAGE frames of 1.0 consumers.
    """

    def run():
        with connected_client(broker, "1.0") as sub:
            sub.subscribe("/queue/forge", "s")
            with connected_client(broker, "1.2") as pub:
                pub.send(
                    frame("SEND", "destination:/queue/forge", "message-id\\cforged:",
                          "destination\\c/queue/evil:x", "x\\ny:z", "x-ok:a\\cb",
                          "receipt:r", body=b"x")
                )  # fmt: skip
                pub.receipt("r")
            message = sub.expect("MESSAGE")
            names = [name for name, _ in message.lines]
            for reserved in ("message-id", "destination", "subscription", "content-length"):
                assert names.count(reserved) == 1, message
            assert not any(name.startswith("x ") or name == "y" for name in names), message
            assert ("x-ok", "a:b") in message.lines

    await deferToThread(run)


# ================================================================================
# Repeated headers
# ================================================================================


@pytest_twisted.ensureDeferred
async def test_repeated_headers_first_wins(broker):
    def run():
        with connected_client(broker) as c:
            c.subscribe("/queue/first", "first")
            c.subscribe("/queue/second", "second")
            c.send(
                frame("SEND", "destination:/queue/first", "destination:/queue/second",
                      "foo:World", "foo:Hello", body=b"routed")
            )  # fmt: skip
            message = c.expect("MESSAGE")
            assert message.headers["subscription"] == "first"
            assert message.headers["destination"] == "/queue/first"
            assert message.headers["foo"] == "World"
            assert message.raw_value("foo") == "World"
            # Nothing went to the second destination: a marker sent there arrives first.
            c.send_message("/queue/second", b"marker")
            assert [m.body for m in c.messages_until(b"marker")] == [b"marker"]

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_repeated_content_length_first_wins(broker):
    def run():
        with connected_client(broker) as c:
            c.subscribe("/queue/cl2")
            c.send(
                frame("SEND", "destination:/queue/cl2", "content-length:3", "content-length:9",
                      "receipt:r", body=b"a\x00c")
            )  # fmt: skip
            messages = c.until_receipt("r") or [c.expect("MESSAGE")]
            assert messages[0].body == b"a\x00c"

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_repeated_receipt_first_wins(broker):
    def run():
        with connected_client(broker) as c:
            c.send(frame("BEGIN", "transaction:t", "receipt:one", "receipt:two"))
            assert c.expect("RECEIPT").headers["receipt-id"] == "one"

    await deferToThread(run)


# ================================================================================
# Receipts, DISCONNECT, ERROR
# ================================================================================


@pytest_twisted.ensureDeferred
async def test_receipt_for_every_client_frame(broker, transport):
    def run():
        with connected_client(broker, "1.2", transport) as c:
            assert c.subscribe("/queue/rcpt", "0", "ack:client-individual") == []
            c.send_message("/queue/rcpt", b"m1", "receipt:r-send")
            first = (c.until_receipt("r-send") or [c.expect("MESSAGE")])[0]
            c.send(frame("BEGIN", "transaction:tx", "receipt:r-begin"))
            c.receipt("r-begin")
            c.send_message("/queue/rcpt", b"m2", "transaction:tx", "receipt:r-send-tx")
            c.receipt("r-send-tx")
            c.send(frame("COMMIT", "transaction:tx", "receipt:r-commit"))
            second = (c.until_receipt("r-commit") or [c.expect("MESSAGE")])[0]
            assert (first.body, second.body) == (b"m1", b"m2")
            c.send(frame("BEGIN", "transaction:tx2", "receipt:r-begin2"))
            c.receipt("r-begin2")
            c.send(frame("ABORT", "transaction:tx2", "receipt:r-abort"))
            c.receipt("r-abort")
            c.send(frame("ACK", *ack_lines("1.2", first), "receipt:r-ack"))
            c.until_receipt("r-ack")
            c.send(frame("NACK", *ack_lines("1.2", second), "receipt:r-nack"))
            c.until_receipt("r-nack")
            c.send(frame("UNSUBSCRIBE", "id:0", "receipt:r-unsub"))
            c.until_receipt("r-unsub")
            c.send(frame("DISCONNECT", "receipt:r-disc"))
            frames = c.read_to_eof()
            assert frames[-1].command == "RECEIPT", frames
            assert frames[-1].headers["receipt-id"] == "r-disc"
            assert frames[-1].body == b""

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_disconnect_receipt_arrives_before_close(broker, transport):
    """RECEIPT for DISCONNECT, then end of stream; frames before it were processed."""

    def run():
        with connected_client(broker, "1.2", transport) as c:
            c.send(
                frame("SEND", "destination:/queue/disc", body=b"before disconnect")
                + frame("DISCONNECT", "receipt:77")
            )
            frames = c.read_to_eof()
            assert [(f.command, f.headers.get("receipt-id"), f.body) for f in frames] == [
                ("RECEIPT", "77", b"")
            ]
        assert queue_bodies(broker, "/queue/disc") == [b"before disconnect"]

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_frames_received_before_client_closes_are_processed(broker):
    """RECEIPT semantics: frames the server received SHOULD be processed even if the client goes."""

    def run():
        with connected_client(broker) as c:
            c.send(b"".join(frame("SEND", "destination:/queue/gone", body=b"%d" % i)
                            for i in range(100)))  # fmt: skip
        with connected_client(broker) as c:
            c.send(frame("SUBSCRIBE", "id:0", "destination:/queue/gone"))
            bodies = [c.expect("MESSAGE").body for _ in range(100)]
            assert bodies == [b"%d" % i for i in range(100)]

    await deferToThread(run)


@pytest.mark.parametrize(
    "version, bad",
    [
        ("1.2", frame("SEND", "receipt:e-1", body=b"no destination")),
        ("1.2", frame("SUBSCRIBE", "destination:/queue/a", "receipt:e-1")),
        ("1.2", frame("COMMIT", "transaction:nope", "receipt:e-1")),
        ("1.2", frame("UNKNOWN", "receipt:e-1")),
        ("1.1", frame("ACK", "message-id:nope", "subscription:nope", "receipt:e-1")),
        ("1.0", frame("SEND", "receipt:e-1", body=b"no destination")),
    ],
    ids=["SEND", "SUBSCRIBE", "COMMIT", "unknown-command", "ACK-1.1", "SEND-1.0"],
)
@pytest_twisted.ensureDeferred
async def test_error_carries_receipt_id_of_bad_frame(broker, version, bad):
    def run():
        with connected_client(broker, version) as c:
            c.send(bad)
            error = c.expect_error()
            assert error.headers.get("receipt-id") == "e-1", error

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_error_arrives_before_close_despite_pipelined_data(broker):
    """
    ERROR, then close: the ERROR frame must reach the client intact even when the
    client has already pipelined a lot more behind the bad frame, and nothing
    after the bad frame is acted upon.
    """

    def run():
        with connected_client(broker) as c:
            tail = b"".join(
                frame("SEND", "destination:/queue/after", f"receipt:a{i}", body=b"x" * 100)
                for i in range(2000)
            )
            c.send(frame("SEND", "receipt:bad", body=b"no destination") + tail)
            error = c.expect_error()
            assert error.headers.get("receipt-id") == "bad"
        assert queue_bodies(broker, "/queue/after") == []

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_error_arrives_before_close_while_client_keeps_sending(broker):
    def run():
        with connected_client(broker) as c:
            c.send(frame("BOGUS"))
            # Keep writing after the bad frame (the client has not read the ERROR yet).
            for _ in range(50):
                c.send(frame("SEND", "destination:/queue/late", body=b"y" * 1000))
            c.expect_error()
        assert queue_bodies(broker, "/queue/late") == []

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_error_then_close_over_websocket(broker):
    def run():
        with connected_client(broker, "1.2", "ws") as c:
            c.send(frame("SEND", "receipt:bad", body=b"no destination")
                   + frame("SEND", "destination:/queue/wsafter", body=b"x"))  # fmt: skip
            c.send(frame("SEND", "destination:/queue/wsafter", body=b"x"))
            error = c.expect_error()
            assert error.headers.get("receipt-id") == "bad"
        assert queue_bodies(broker, "/queue/wsafter") == []

    await deferToThread(run)


@pytest.mark.parametrize(
    "bad",
    [frame("FOO"), frame("send", "destination:/queue/a", body=b"x"), frame("MESSAGE")],
    ids=["FOO", "lowercase-send", "server-command"],
)
@pytest_twisted.ensureDeferred
async def test_unknown_command_is_error(broker, transport, bad):
    def run():
        with connected_client(broker, "1.2", transport) as c:
            c.send(bad)
            c.expect_error()

    await deferToThread(run)


_MISSING = [
    ("1.2", "SEND-no-destination", frame("SEND", body=b"x")),
    ("1.2", "SEND-Destination-capitalised", frame("SEND", "Destination:/queue/a", body=b"x")),
    ("1.2", "SEND-empty-destination", frame("SEND", "destination:", body=b"x")),
    ("1.1", "SEND-no-destination", frame("SEND", body=b"x")),
    ("1.0", "SEND-no-destination", frame("SEND", body=b"x")),
    ("1.2", "SUBSCRIBE-no-destination", frame("SUBSCRIBE", "id:0")),
    ("1.0", "SUBSCRIBE-no-destination", frame("SUBSCRIBE", "id:0")),
    ("1.2", "SUBSCRIBE-no-id", frame("SUBSCRIBE", "destination:/queue/a")),
    ("1.1", "SUBSCRIBE-no-id", frame("SUBSCRIBE", "destination:/queue/a")),
    ("1.2", "UNSUBSCRIBE-no-id", frame("UNSUBSCRIBE")),
    ("1.1", "UNSUBSCRIBE-no-id", frame("UNSUBSCRIBE")),
    ("1.2", "ACK-no-id", frame("ACK")),
    ("1.2", "NACK-no-id", frame("NACK")),
    ("1.2", "ACK-transaction-only", frame("ACK", "transaction:t")),
    ("1.1", "ACK-no-message-id", frame("ACK", "subscription:0")),
    ("1.1", "NACK-no-message-id", frame("NACK", "subscription:0")),
    ("1.0", "ACK-no-message-id", frame("ACK")),
    ("1.2", "BEGIN-no-transaction", frame("BEGIN")),
    ("1.2", "COMMIT-no-transaction", frame("COMMIT")),
    ("1.2", "ABORT-no-transaction", frame("ABORT")),
    ("1.0", "BEGIN-no-transaction", frame("BEGIN")),
]


@pytest.mark.parametrize(
    "version, bad", [pytest.param(v, b, id=f"{v}-{name}") for v, name, b in _MISSING]
)
@pytest_twisted.ensureDeferred
async def test_missing_required_header_is_error(broker, version, bad):
    def run():
        with connected_client(broker, version) as c:
            c.send(bad)
            c.expect_error()

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_ack_without_id_is_error_in_12(broker):
    """In 1.2, ACK's REQUIRED header is id (the MESSAGE's ack); 1.1-style ACK lacks it."""

    def run():
        with connected_client(broker) as c:
            c.subscribe("/queue/ackid", "0", "ack:client")
            c.send_message("/queue/ackid", b"m")
            message = c.expect("MESSAGE")
            c.send(frame("ACK", *ack_lines("1.1", message), "receipt:a"))
            c.expect_error()

    await deferToThread(run)


# ================================================================================
# Subscriptions and acknowledgment
# ================================================================================


@pytest_twisted.ensureDeferred
async def test_unsubscribe_stops_delivery(broker, transport):
    def run():
        with connected_client(broker, "1.2", transport) as c:
            c.subscribe("/topic/u", "gone")
            c.subscribe("/topic/u", "stays")
            c.send(frame("UNSUBSCRIBE", "id:gone", "receipt:u"))
            c.receipt("u")
            c.send_message("/topic/u", b"after")
            message = c.expect("MESSAGE")
            assert message.headers["subscription"] == "stays"
            c.send_message("/topic/u", b"marker")
            assert [m.headers["subscription"] for m in c.messages_until(b"marker")] == ["stays"]

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_each_subscription_gets_its_id(broker):
    def run():
        with connected_client(broker) as c, connected_client(broker, "1.1") as other:
            c.subscribe("/topic/fan", "a")
            c.subscribe("/topic/fan", "b")
            other.subscribe("/topic/fan", "c")
            c.send_message("/topic/fan", b"hi")
            subs = sorted(c.expect("MESSAGE").headers["subscription"] for _ in range(2))
            assert subs == ["a", "b"]
            message = other.expect("MESSAGE")
            assert (message.headers["subscription"], message.body) == ("c", b"hi")

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_10_subscribe_without_id_and_unsubscribe_by_destination(broker):
    def run():
        with connected_client(broker, "1.0") as c:
            c.send(frame("SUBSCRIBE", "destination:/topic/ten", "receipt:s"))
            c.receipt("s")
            c.send_message("/topic/ten", b"one")
            message = c.expect("MESSAGE")
            assert message.headers["destination"] == "/topic/ten"
            assert message.headers["message-id"]
            c.send(frame("UNSUBSCRIBE", "destination:/topic/ten", "receipt:u"))
            c.receipt("u")
            c.send_message("/topic/ten", b"two", "receipt:after")
            c.receipt("after")

    await deferToThread(run)


def _consume(c: Client, count: int) -> list[Frame]:
    return [c.expect("MESSAGE") for _ in range(count)]


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
@pytest_twisted.ensureDeferred
async def test_client_ack_is_cumulative(broker, version):
    """ack:client — an ACK acknowledges that message and every earlier one."""

    def run():
        with connected_client(broker, version) as c:
            for body in (b"m1", b"m2", b"m3"):
                c.send_message("/queue/cum", body)
            c.send(frame("SUBSCRIBE", "id:0", "destination:/queue/cum", "ack:client"))
            messages = _consume(c, 3)
            assert [m.body for m in messages] == [b"m1", b"m2", b"m3"]
            if version == "1.2":
                assert len({m.headers["ack"] for m in messages}) == 3
            c.send(frame("ACK", *ack_lines(version, messages[1]), "receipt:a"))
            c.receipt("a")
            c.send(frame("UNSUBSCRIBE", "id:0", "receipt:u"))
            c.until_receipt("u")
        assert queue_bodies(broker, "/queue/cum") == [b"m3"]

    await deferToThread(run)


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest_twisted.ensureDeferred
async def test_client_individual_ack_is_not_cumulative(broker, version):
    def run():
        with connected_client(broker, version) as c:
            for body in (b"m1", b"m2", b"m3"):
                c.send_message("/queue/ind", body)
            c.send(frame("SUBSCRIBE", "id:0", "destination:/queue/ind",
                         "ack:client-individual"))  # fmt: skip
            messages = _consume(c, 3)
            c.send(frame("ACK", *ack_lines(version, messages[1]), "receipt:a"))
            c.receipt("a")
            c.send(frame("UNSUBSCRIBE", "id:0", "receipt:u"))
            c.until_receipt("u")
        assert queue_bodies(broker, "/queue/ind") == [b"m1", b"m3"]

    await deferToThread(run)


@pytest.mark.parametrize("version, mode", [("1.1", "client"), ("1.2", "client-individual")])
@pytest_twisted.ensureDeferred
async def test_nack_accepted(broker, version, mode):
    def run():
        with connected_client(broker, version) as c:
            c.subscribe("/queue/nack", "0", f"ack:{mode}")
            c.send_message("/queue/nack", b"refused")
            message = c.expect("MESSAGE")
            c.send(frame("NACK", *ack_lines(version, message), "receipt:n"))
            c.until_receipt("n")

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_ack_in_transaction(broker):
    """An ACK in a transaction takes effect on COMMIT only; ABORT undoes it."""

    def run():
        with connected_client(broker) as c:
            c.send_message("/queue/txack", b"m1")
            c.send(frame("SUBSCRIBE", "id:0", "destination:/queue/txack",
                         "ack:client-individual"))  # fmt: skip
            message = c.expect("MESSAGE")
            c.send(frame("BEGIN", "transaction:t1"))
            c.send(frame("ACK", *ack_lines("1.2", message), "transaction:t1"))
            c.send(frame("ABORT", "transaction:t1", "receipt:aborted"))
            c.receipt("aborted")
            c.send(frame("UNSUBSCRIBE", "id:0", "receipt:u"))
            c.until_receipt("u")
        assert queue_bodies(broker, "/queue/txack") == [b"m1"]
        with connected_client(broker) as c:
            c.send_message("/queue/txack", b"m2")
            c.send(frame("SUBSCRIBE", "id:0", "destination:/queue/txack",
                         "ack:client-individual"))  # fmt: skip
            message = c.expect("MESSAGE")
            c.send(frame("BEGIN", "transaction:t2"))
            c.send(frame("ACK", *ack_lines("1.2", message), "transaction:t2"))
            c.send(frame("COMMIT", "transaction:t2", "receipt:committed"))
            c.receipt("committed")
            c.send(frame("UNSUBSCRIBE", "id:0", "receipt:u"))
            c.until_receipt("u")
        assert queue_bodies(broker, "/queue/txack") == []

    await deferToThread(run)


# ================================================================================
# Transactions
# ================================================================================


@pytest_twisted.ensureDeferred
async def test_transaction_commit_delivers_atomically(broker, transport):
    def run():
        with connected_client(broker, "1.2", transport) as consumer:
            consumer.subscribe("/queue/tx")
            with connected_client(broker, "1.2", transport) as c:
                c.send(frame("BEGIN", "transaction:tx1"))
                c.send_message("/queue/tx", b"t1", "transaction:tx1")
                c.send_message("/queue/tx", b"t2", "transaction:tx1")
                c.send_message("/queue/tx", b"outside", "receipt:o")
                c.receipt("o")
                assert consumer.expect("MESSAGE").body == b"outside"
                c.send(frame("COMMIT", "transaction:tx1", "receipt:c"))
                c.receipt("c")
                assert [consumer.expect("MESSAGE").body for _ in range(2)] == [b"t1", b"t2"]

    await deferToThread(run)


@pytest.mark.parametrize("ending", ["ABORT", "DISCONNECT", "close"])
@pytest_twisted.ensureDeferred
async def test_uncommitted_transaction_is_discarded(broker, ending):
    """ABORT, DISCONNECT or a lost connection: the transaction's sends never happen."""

    def run():
        with connected_client(broker) as c:
            c.send(frame("BEGIN", "transaction:tx"))
            c.send_message("/queue/txd", b"never", "transaction:tx", "receipt:s")
            c.receipt("s")
            if ending == "ABORT":
                c.send(frame("ABORT", "transaction:tx", "receipt:a"))
                c.receipt("a")
            elif ending == "DISCONNECT":
                c.disconnect()
        assert queue_bodies(broker, "/queue/txd") == []

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_transaction_ids_are_per_connection(broker):
    def run():
        with connected_client(broker) as a, connected_client(broker) as b:
            a.send(frame("BEGIN", "transaction:same", "receipt:a"))
            a.receipt("a")
            b.send(frame("BEGIN", "transaction:same", "receipt:b"))
            b.receipt("b")
            a.send_message("/queue/per", b"from a", "transaction:same")
            b.send(frame("ABORT", "transaction:same", "receipt:b2"))
            b.receipt("b2")
            a.send(frame("COMMIT", "transaction:same", "receipt:a2"))
            a.receipt("a2")
        assert queue_bodies(broker, "/queue/per") == [b"from a"]

    await deferToThread(run)


@pytest.mark.parametrize(
    "frames",
    [
        [frame("COMMIT", "transaction:unknown")],
        [frame("ABORT", "transaction:unknown")],
        [frame("SEND", "destination:/queue/txe", "transaction:unknown", body=b"x")],
        [frame("BEGIN", "transaction:t"), frame("BEGIN", "transaction:t")],
        [frame("BEGIN", "transaction:t"), frame("ABORT", "transaction:t"),
         frame("COMMIT", "transaction:t")],
        [frame("BEGIN", "transaction:t"), frame("COMMIT", "transaction:t"),
         frame("SEND", "destination:/queue/txe", "transaction:t", body=b"x")],
    ],
    ids=["commit-unknown", "abort-unknown", "send-unknown", "begin-twice", "commit-aborted",
         "send-committed"],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_bad_transaction_is_error(broker, frames):
    def run():
        with connected_client(broker) as c:
            c.send(b"".join(frames))
            c.expect_error()
        assert queue_bodies(broker, "/queue/txe") == []

    await deferToThread(run)


# ================================================================================
# Limits
# ================================================================================

LIMITS = Limits(max_body_size=100, max_headers=10, max_header_line=200, max_frame_size=1024)


def _over_limit_frames() -> dict[str, tuple[str, bytes]]:
    big_headers = [f"x-h{i}:" + "v" * 180 for i in range(9)]
    return {
        "body-with-length": (
            "max_body_size",
            frame("SEND", "destination:/queue/x", "content-length:101", body=b"b" * 101),
        ),
        "body-without-length": (
            "max_body_size",
            frame("SEND", "destination:/queue/x", body=b"b" * 150),
        ),
        "headers": (
            "max_headers",
            frame("SEND", "destination:/queue/x", *[f"x-{i}:v" for i in range(10)], body=b"b"),
        ),
        "header-line": (
            "max_header_line",
            frame("SEND", "destination:/queue/x", "x-long:" + "v" * 300, body=b"b"),
        ),
        "frame": ("max_frame_size", frame("SEND", "destination:/queue/x", *big_headers)),
    }


@pytest.mark.parametrize("case", list(_over_limit_frames()))
@pytest_twisted.ensureDeferred
async def test_limit_exceeded_is_error_then_close(make_broker, transport, case):
    """
    Over a limit: ERROR naming the limit, then close. Other connections keep
    working and messages already queued are not lost.
    """
    running = await make_broker(limits=LIMITS)
    limit, bad = _over_limit_frames()[case]

    def run():
        with connected_client(running, "1.2", transport) as keeper:
            keeper.subscribe("/queue/live")
            with connected_client(running) as producer:
                for body in (b"q1", b"q2", b"q3"):
                    producer.send_message("/queue/kept", body)
                producer.disconnect()
            with connected_client(running, "1.2", transport) as c:
                c.send(bad)
                error = c.expect_error()
                text = error.headers["message"] + error.body.decode("utf-8", "replace")
                assert limit in text, error
            keeper.send_message("/queue/live", b"still alive", "receipt:k")
            messages = keeper.until_receipt("k") or [keeper.expect("MESSAGE")]
            assert messages[0].body == b"still alive"
        assert queue_bodies(running, "/queue/kept") == [b"q1", b"q2", b"q3"]
        assert queue_bodies(running, "/queue/x") == []

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_limit_error_arrives_while_client_streams_a_huge_body(make_broker):
    running = await make_broker(limits=LIMITS)

    def run():
        body = b"z" * 2_000_000
        with connected_client(running) as c:
            c.send(frame("SEND", "destination:/queue/huge", f"content-length:{len(body)}",
                         body=body))  # fmt: skip
            error = c.expect_error()
            assert "max_body_size" in error.headers["message"] + error.body.decode()

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_websocket_message_over_frame_limit_gets_error(make_broker):
    """One WebSocket message larger than the frame limit: still an ERROR before the close."""
    running = await make_broker(limits=LIMITS)

    def run():
        with connected_client(running, "1.2", "ws") as c:
            c.send(frame("SEND", "destination:/queue/x", body=b"w" * 5000))
            c.expect_error()

    await deferToThread(run)


# ================================================================================
# WebSocket specifics
# ================================================================================


@pytest.mark.parametrize(
    "subprotocol, version", [("v10.stomp", "1.0"), ("v11.stomp", "1.1"), ("v12.stomp", "1.2")]
)
@pytest_twisted.ensureDeferred
async def test_websocket_subprotocols(broker, subprotocol, version):
    def run():
        with open_client(broker, "ws", (subprotocol,)) as c:
            assert c.t.ws.getsubprotocol() == subprotocol
            assert c.connect(version).headers.get("version", "1.0") == version

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_websocket_binary_body_round_trip(broker):
    def run():
        body = bytes(range(256))
        with connected_client(broker, "1.2", "ws") as c:
            c.subscribe("/queue/bin")
            c.send_message("/queue/bin", body, "content-type:application/octet-stream")
            message = c.expect("MESSAGE")
            assert message.body == body
            assert message.headers["content-length"] == "256"
            assert c.t.opcodes[-1] == websocket.ABNF.OPCODE_BINARY

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_websocket_frame_split_across_messages(broker):
    def run():
        with connected_client(broker, "1.2", "ws") as c:
            c.subscribe("/queue/wsplit")
            data = frame("SEND", "destination:/queue/wsplit", "receipt:r", body=b"pieces")
            for cut in range(1, len(data)):
                c.send(data[:cut])
                c.send(data[cut:])
                message = (c.until_receipt("r") or [c.expect("MESSAGE")])[0]
                assert message.body == b"pieces", cut

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_websocket_message_of_small_frames_over_frame_limit(make_broker):
    """
    One WebSocket message may hold several frames; each is under every limit
    here, so they must all be processed even if the message as a whole is
    larger than max_frame_size.
    """
    running = await make_broker(limits=LIMITS)

    def run():
        with connected_client(running, "1.2", "ws") as c:
            c.subscribe("/queue/small")
            c.send(b"".join(frame("SEND", "destination:/queue/small", body=b"s" * 90)
                            for _ in range(20)) + frame("SEND", "destination:/queue/small",
                                                        "receipt:done", body=b"end"))  # fmt: skip
            messages = c.until_receipt("done")
            messages += [c.expect("MESSAGE") for _ in range(21 - len(messages))]
            assert [m.body for m in messages] == [b"s" * 90] * 20 + [b"end"]

    await deferToThread(run)


@pytest_twisted.ensureDeferred
async def test_websocket_message_over_websocket_limit_closes_1009(make_broker):
    """Past the WebSocket layer's own bound: close code 1009 through the closing handshake."""
    running = await make_broker(limits=LIMITS, ws_max_message_size=8192)

    def run():
        ws = websocket.create_connection(
            running.ws_url, subprotocols=["v12.stomp"], timeout=TIMEOUT
        )
        try:
            ws.send("CONNECT\naccept-version:1.2\n\n\x00")
            assert ws.recv().startswith("CONNECTED\n")
            ws.send(frame("SEND", "destination:/queue/x", body=b"w" * 10000).decode())
            opcode, data = ws.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            assert int.from_bytes(data[:2], "big") == 1009
        finally:
            ws.close()

    await deferToThread(run)
