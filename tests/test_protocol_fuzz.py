"""
Property: whatever bytes a client sends, in whatever pieces, the session
never lets an exception escape, answers only with well-formed frames (and
nothing else: no bytes are left over after the last one), and after an
ERROR sends nothing more.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.encoding import encode_frame
from stomptw.frame import FrameParser, Limits
from stomptw.protocol import StompFactory

COMMANDS = [
    "CONNECT",
    "STOMP",
    "SEND",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "ACK",
    "NACK",
    "BEGIN",
    "COMMIT",
    "ABORT",
    "DISCONNECT",
    "BOGUS",
]
HEADER_NAMES = [
    "destination",
    "id",
    "ack",
    "receipt",
    "transaction",
    "accept-version",
    "heart-beat",
    "message-id",
    "subscription",
    "content-length",
    "prefetch-count",
    "x",
]
VALUES = st.one_of(
    st.sampled_from(
        ["/queue/a", "/topic/b", "1", "2", "client", "client-individual", "auto", "1.2", "1.0,1.1"]
    ),
    st.text(max_size=12),
)

frames = st.builds(
    lambda command, headers, body: (
        encode_frame(command, headers, body, "1.2", content_length=False)
        if b"\x00" not in body
        else encode_frame(command, headers, body, "1.2")
    ),
    st.sampled_from(COMMANDS),
    st.dictionaries(st.sampled_from(HEADER_NAMES), VALUES, max_size=5),
    st.binary(max_size=20),
)
chunks = st.lists(st.one_of(frames, st.binary(max_size=30), st.just(b"\n")), max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks, st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=5))
def test_any_input_is_handled(pieces, cuts):
    """
    Arbitrary bytes in arbitrary pieces: no exception escapes, the output
    parses completely into CONNECTED/MESSAGE/RECEIPT/ERROR frames with
    nothing left over, an ERROR is the last frame and closes the connection,
    and a gone session leaves no subscription behind.
    """
    broker = Broker()
    clock = Clock()
    config = BrokerConfig(limits=Limits(max_frame_size=400, max_body_size=100, max_headers=8))
    peer = StompFactory(broker, config, clock).buildProtocol(None)
    peer.makeConnection(StringTransport())
    proto = StompFactory(broker, config, clock).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    # A second session subscribed everywhere, so deliveries happen too.
    peer.dataReceived(
        b"CONNECT\naccept-version:1.2\n\n\x00"
        b"SUBSCRIBE\nid:1\ndestination:/queue/a\nack:client\n\n\x00"
        b"SUBSCRIBE\nid:2\ndestination:/topic/b\n\n\x00"
    )
    data = b"".join(pieces)
    pos = 0
    i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        proto.dataReceived(data[pos : pos + step])
        pos += step
        i += 1
        clock.advance(0.5)
    clock.advance(60)

    parser = FrameParser(version=proto.session.version or "1.0")
    parser.feed(transport.value())
    out = []
    while (frame := parser.next_frame()) is not None:
        out.append(frame)
    # Every byte written belongs to a whole frame or is a heart-beat.
    assert parser.buffered == 0, f"left over: {transport.value()[-parser.buffered :][:200]!r}"
    commands = [f.command for f in out]
    assert set(commands) <= {"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"}
    if "ERROR" in commands:
        assert commands.index("ERROR") == len(commands) - 1
        error = out[-1]
        assert error.headers.get("message")
        assert b"Traceback" not in error.body
        assert transport.disconnecting or transport.disconnected
    proto.connectionLost(None)
    peer.connectionLost(None)
    # Everything a gone session held went back or away: nothing is stranded.
    for dest in broker.destinations.values():
        assert not dest.subscriptions
