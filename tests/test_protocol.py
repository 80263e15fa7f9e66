"""
StompProtocol over StringTransport with a Clock: every frame, every error
path, heart-beats and timeouts, deterministically.
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from stomptw.broker import Broker, Subscription
from stomptw.config import BrokerConfig
from stomptw.destinations import Queue, Topic
from stomptw.frame import Frame, Limits, encode_frame
from stomptw.interfaces import IDeadlineTarget, IDestination, IMessageConsumer, IStompTransport
from stomptw.protocol import StompFactory, StompProtocol
from stomptw.testing import ClientSession


class Client(ClientSession):
    """One protocol instance on a StringTransport, seen from the client side."""

    def __init__(
        self, broker: Broker, clock: Clock, config: BrokerConfig, max_message_size: int = 0
    ) -> None:
        self.proto = StompFactory(broker, config, clock).buildProtocol(None)
        # A WebSocket-style limit on what the transport can carry, if any.
        self.proto.max_message_size = max_message_size
        self.proto.makeConnection(StringTransport())
        super().__init__(self.proto.session, self.proto.transport)

    def raw(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting or self.transport.disconnected

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def env():
    class Env:
        def __init__(self) -> None:
            self.broker = Broker()
            self.clock = Clock()
            self.config = BrokerConfig()

        def client(self, **config: object) -> Client:
            cfg = BrokerConfig(**config) if config else self.config
            return Client(self.broker, self.clock, cfg)

    return Env()


def assert_error(client: Client, text: str) -> Frame:
    frames = client.frames()
    assert frames and frames[-1].command == "ERROR", frames
    error = frames[-1]
    assert text in error.headers["message"], error
    assert error.body, "an ERROR explains itself in its body"
    assert b"Traceback" not in error.body
    assert client.closing
    return error


# -- interfaces ---------------------------------------------------------------


def test_interfaces(env):
    client = env.client()
    assert verifyObject(IMessageConsumer, client.proto.session)
    assert verifyObject(IStompTransport, client.proto)
    assert verifyObject(IDeadlineTarget, client.proto.session)
    assert verifyObject(IDestination, Queue("/queue/a", env.broker.context))
    assert verifyObject(IDestination, Topic("/topic/a", env.broker.context))


# -- CONNECT -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
def test_connect_headers(env, command):
    client = env.client()
    client.send(command, accept_version="1.0,1.1,1.2", host="x", heart_beat="0,0")
    connected = client.frame()
    assert connected.command == "CONNECTED"
    assert connected.headers["version"] == "1.2"
    assert connected.headers["server"].startswith("stomptw/")
    assert connected.headers["session"]
    assert connected.headers["heart-beat"] == "0,0"


@pytest.mark.parametrize(
    "accept, expected",
    [("1.1", "1.1"), ("1.0,1.1", "1.1"), ("1.2, 1.0", "1.2"), ("1.0", "1.0"), ("1.1,3.0", "1.1")],
)
def test_version_negotiation(env, accept, expected):
    client = env.client()
    client.send("CONNECT", accept_version=accept)
    assert client.frame().headers["version"] == expected


def test_no_accept_version_means_10(env):
    client = env.client()
    client.send("CONNECT")
    connected = client.frame()
    assert connected.headers["version"] == "1.0"
    assert "heart-beat" not in connected.headers


def test_no_common_version(env):
    client = env.client()
    client.send("CONNECT", accept_version="2.0,2.1", receipt="r1")
    error = assert_error(client, "version")
    assert error.headers["version"] == "1.0,1.1,1.2"


def test_frame_before_connect(env):
    client = env.client()
    client.send("SEND", destination="/queue/a", receipt="r")
    error = assert_error(client, "before CONNECT")
    assert error.headers["receipt-id"] == "r"


def test_second_connect(env):
    client = env.client()
    client.connect()
    client.send("CONNECT", accept_version="1.2")
    assert_error(client, "already connected")


def test_data_after_error_ignored(env):
    client = env.client()
    client.raw(b"BOGUS\n\n\x00SEND\ndestination:/queue/a\n\nx\x00")
    assert_error(client, "BOGUS")
    client.raw(encode_frame("CONNECT", {"accept-version": "1.2"}))
    assert client.frames() == []
    assert "/queue/a" not in env.broker.destinations


def test_invalid_heart_beat_header(env):
    client = env.client()
    client.send("CONNECT", accept_version="1.2", heart_beat="x,1")
    assert_error(client, "heart-beat")


# -- heart-beats -------------------------------------------------------------


@pytest.mark.parametrize(
    "server, client_hb, expected",
    [
        ((10000, 10000), "0,0", "0,0"),
        ((10000, 10000), "5000,5000", "10000,10000"),
        ((10000, 10000), "20000,30000", "30000,20000"),
        ((0, 10000), "1000,1000", "0,10000"),
        ((10000, 0), "1000,1000", "10000,0"),
        ((1000, 2000), "0,500", "1000,0"),
        ((1000, 2000), "500,0", "0,2000"),
    ],
)
def test_heart_beat_negotiation(env, server, client_hb, expected):
    client = env.client(heartbeat_send_ms=server[0], heartbeat_receive_ms=server[1])
    assert client.connect(heart_beat=client_hb).headers["heart-beat"] == expected


def test_server_sends_heart_beats_when_idle(env):
    client = env.client(heartbeat_send_ms=1000, heartbeat_receive_ms=0)
    client.connect(heart_beat="0,1000")
    for _ in range(10):
        env.clock.advance(0.5)
    data = client.transport.value()
    # 5 seconds idle with a promised beat every second: never a gap over 1s.
    assert data.count(b"\n") >= 5
    assert set(data) == {ord("\n")}
    assert not client.closing


def test_server_beats_never_late(env):
    """
    Promised a beat every 1000 ms, the broker's own writes are never more
    than 1 s apart: beats arrive on a quiet connection and between SENDs
    (which write nothing back, so they cannot stand in for a beat), and
    RECEIPTs it writes postpone the beats without ever making one late.
    Only what the broker wrote is measured, never what the test sent.
    """
    client = env.client(heartbeat_send_ms=1000, heartbeat_receive_ms=0)
    client.connect(heart_beat="0,1000")
    last_write = env.clock.seconds()
    beats = {"quiet": 0, "sends": 0, "receipts": 0, "quiet again": 0}
    # (phase, steps of 50 ms, every how many steps the client sends, receipt?)
    phases = [("quiet", 60, 0, False), ("sends", 80, 7, False)]
    phases += [("receipts", 60, 5, True), ("quiet again", 60, 0, False)]
    previous = "quiet"
    for phase, steps, every, receipt in phases:
        # A beat due from the phase before (before this phase's first RECEIPT
        # went out) counts for that phase.
        counting = previous if receipt else phase
        for step in range(steps):
            before = len(client.transport.value())
            env.clock.advance(0.05)
            written = client.transport.value()[before:]
            # Checked at every step, written or not: silence is what is late.
            silent = env.clock.seconds() - last_write
            assert silent <= 1.0 + 1e-9, f"{phase}: broker silent for {silent:.2f}s"
            if written:
                assert set(written) == {ord("\n")}, written  # only beats
                beats[counting] += written.count(b"\n")
                last_write = env.clock.seconds()
            if every and step % every == 0:
                headers = {"receipt": f"r{step}"} if receipt else {}
                client.transport.clear()
                client.send("SEND", b"x", destination="/queue/hb", **headers)
                if not receipt:
                    # Without a receipt a SEND writes nothing back.
                    assert client.transport.value() == b""
                    continue
                (frame,) = client.frames()
                assert (frame.command, frame.headers["receipt-id"]) == ("RECEIPT", f"r{step}")
                last_write = env.clock.seconds()
                counting = phase
        previous = phase
    # At least one beat a promised second wherever the broker had nothing
    # else to write; a RECEIPT every 250 ms leaves no room for one.
    assert beats["quiet"] >= 3 and beats["quiet again"] >= 3, beats
    assert beats["sends"] >= 4, beats
    assert beats["receipts"] == 0, beats
    assert not client.closing


def test_no_beats_when_not_negotiated(env):
    client = env.client()
    client.connect(heart_beat="0,0")
    env.clock.advance(60)
    assert client.transport.value() == b""
    assert not client.closing


def test_receive_timeout_with_grace(env):
    client = env.client(heartbeat_send_ms=0, heartbeat_receive_ms=1000, heartbeat_grace=3.0)
    assert client.connect(heart_beat="1000,0").headers["heart-beat"] == "0,1000"
    env.clock.advance(2.9)
    assert not client.closing
    client.raw(b"\n")  # a heart-beat resets the deadline
    env.clock.advance(2.9)
    assert not client.closing
    client.raw(b"\r\n")
    env.clock.advance(2.9)
    assert not client.closing
    env.clock.advance(0.2)
    assert_error(client, "heart-beat timeout")


def test_login_timeout(env):
    client = env.client(login_timeout=5.0)
    env.clock.advance(4.9)
    assert not client.closing
    env.clock.advance(0.2)
    assert_error(client, "no CONNECT")


def test_login_timeout_cancelled_by_connect(env):
    client = env.client(login_timeout=5.0)
    client.connect()
    env.clock.advance(60)
    assert not client.closing


def test_linger_then_abort(env):
    client = env.client(close_linger=2.0)
    client.raw(b"NOPE\n\n\x00")
    assert client.transport.disconnecting
    assert not client.transport.disconnected
    env.clock.advance(2.1)
    assert client.transport.disconnected
    client.lose()
    assert env.clock.getDelayedCalls() == []


def test_timers_cancelled_on_connection_lost(env):
    client = env.client(heartbeat_send_ms=1000, heartbeat_receive_ms=1000)
    client.connect(heart_beat="1000,1000")
    client.lose()
    assert env.clock.getDelayedCalls() == []


# -- SEND, SUBSCRIBE, MESSAGE ---------------------------------------------------


def test_send_and_message_headers(env):
    consumer, producer = env.client(), env.client()
    consumer.connect()
    producer.connect()
    consumer.send("SUBSCRIBE", destination="/queue/a", id="s1", receipt="r1")
    assert consumer.frame().headers == {"receipt-id": "r1"}
    producer.send(
        "SEND",
        b"hello\x00world",
        destination="/queue/a",
        content_type="text/plain",
        foo="bar:baz",
        receipt="r2",
        **{"message-id": "forged", "subscription": "forged"},
    )
    assert producer.frame().headers == {"receipt-id": "r2"}
    message = consumer.frame()
    assert message.command == "MESSAGE"
    assert message.body == b"hello\x00world"
    h = message.headers
    assert h["destination"] == "/queue/a"
    assert h["subscription"] == "s1"
    assert h["message-id"] and h["message-id"] != "forged"
    assert h["content-type"] == "text/plain"
    assert h["content-length"] == "11"
    assert h["foo"] == "bar:baz"
    assert "receipt" not in h and "ack" not in h and "redelivered" not in h


def test_message_ids_unique(env):
    consumer = env.client()
    consumer.connect()
    consumer.send("SUBSCRIBE", destination="/queue/u", id="s")
    for i in range(50):
        consumer.send("SEND", str(i).encode(), destination="/queue/u")
    ids = [f.headers["message-id"] for f in consumer.frames()]
    assert len(ids) == len(set(ids)) == 50


def test_send_requires_destination(env):
    client = env.client()
    client.connect()
    client.send("SEND", b"x", receipt="r9")
    error = assert_error(client, "destination")
    assert error.headers["receipt-id"] == "r9"


@pytest.mark.parametrize("destination", ["/queue/", "/topic/"])
def test_destination_without_name(env, destination):
    client = env.client()
    client.connect()
    client.send("SEND", b"x", destination=destination)
    assert_error(client, "invalid destination")


def test_subscribe_without_id_in_10(env):
    client = env.client()
    client.connect("1.0")
    client.send("SUBSCRIBE", destination="/queue/a")
    client.send("SEND", b"x", destination="/queue/a")
    assert client.frame().headers["subscription"] == "/queue/a"
    client.send("UNSUBSCRIBE", destination="/queue/a", receipt="u")
    assert client.frame().headers == {"receipt-id": "u"}


def test_duplicate_subscription_id(env):
    client = env.client()
    client.connect()
    client.send("SUBSCRIBE", destination="/queue/a", id="1")
    client.send("SUBSCRIBE", destination="/queue/b", id="1")
    assert_error(client, "already in use")


@pytest.mark.parametrize(
    "version, data, text",
    [
        ("1.2", b"SUBSCRIBE\ndestination:/queue/a\n\n\x00", "'id'"),
        ("1.2", b"SUBSCRIBE\ndestination:/queue/a\nid:1\nack:sometimes\n\n\x00", "ack mode"),
        ("1.2", b"UNSUBSCRIBE\nid:nope\n\n\x00", "no subscription"),
        (
            "1.2",
            b"SUBSCRIBE\ndestination:/queue/a\nid:1\ncontent-length:4\n\noops\x00",
            "must not have a body",
        ),
        ("1.2", b"PUBLISH\ndestination:/queue/a\n\n\x00", "unknown command"),
        ("1.0", b"NACK\nmessage-id:x\n\n\x00", "NACK"),
        ("1.2", b"COMMIT\ntransaction:nope\n\n\x00", "unknown transaction"),
        ("1.2", b"ABORT\ntransaction:nope\n\n\x00", "unknown transaction"),
        (
            "1.2",
            b"SEND\ndestination:/queue/q\ntransaction:nope\ncontent-length:1\n\nx\x00",
            "unknown transaction",
        ),
    ],
)
def test_single_frame_errors(env, version, data, text):
    client = env.client()
    client.connect(version)
    client.raw(data)
    assert_error(client, text)


def test_frame_over_limit(env):
    client = env.client(limits=Limits(max_body_size=10))
    client.connect()
    client.send("SEND", b"x" * 11, destination="/queue/a")
    error = assert_error(client, "max_body_size")
    assert b"max_body_size" in error.body


def test_pipelined_frames_after_connect_use_negotiated_escaping(env):
    client = env.client()
    client.version = "1.2"
    client.raw(
        b"CONNECT\naccept-version:1.2\n\n\x00"
        b"SUBSCRIBE\ndestination:/queue/e\nid:1\n\n\x00"
        b"SEND\ndestination:/queue/e\nk\\cey:a\\nb\\\\c\n\nx\x00"
    )
    frames = client.frames()
    assert [f.command for f in frames] == ["CONNECTED", "MESSAGE"]
    assert frames[1].headers["k:ey"] == "a\nb\\c"


def test_heart_beats_between_frames(env):
    client = env.client()
    client.version = "1.2"
    client.raw(b"\n\r\n\nCONNECT\r\naccept-version:1.2\r\n\r\n\x00\n\n\r\n")
    client.raw(b"SUBSCRIBE\ndestination:/queue/h\nid:1\nreceipt:r\n\n\x00\n")
    assert [f.command for f in client.frames()] == ["CONNECTED", "RECEIPT"]


# -- queues and topics ----------------------------------------------------------


def test_queue_round_robin(env):
    consumers = [env.client() for _ in range(3)]
    for i, c in enumerate(consumers):
        c.connect()
        c.send("SUBSCRIBE", destination="/queue/rr", id=str(i))
    producer = env.client()
    producer.connect()
    for i in range(9):
        producer.send("SEND", str(i).encode(), destination="/queue/rr")
    bodies = [[f.body for f in c.frames()] for c in consumers]
    assert [len(b) for b in bodies] == [3, 3, 3]
    assert sorted(sum(bodies, [])) == [str(i).encode() for i in range(9)]


def test_queue_keeps_messages_until_subscribed(env):
    producer = env.client()
    producer.connect()
    for i in range(3):
        producer.send("SEND", str(i).encode(), destination="/queue/later")
    consumer = env.client()
    consumer.connect()
    consumer.send("SUBSCRIBE", destination="/queue/later", id="1")
    assert [f.body for f in consumer.frames()] == [b"0", b"1", b"2"]


def test_topic_fan_out_and_no_retention(env):
    producer = env.client()
    producer.connect()
    producer.send("SEND", b"before", destination="/topic/t")
    subs = [env.client() for _ in range(3)]
    for s in subs:
        s.connect()
        s.send("SUBSCRIBE", destination="/topic/t", id="t")
    producer.send("SEND", b"after", destination="/topic/t")
    for s in subs:
        assert [f.body for f in s.frames()] == [b"after"]


def test_idle_destinations_are_forgotten(env):
    client = env.client()
    client.connect()
    client.send("SUBSCRIBE", destination="/topic/x", id="1")
    client.send("UNSUBSCRIBE", id="1")
    assert "/topic/x" not in env.broker.destinations
    client.send("SEND", b"x", destination="/topic/nobody")
    assert "/topic/nobody" not in env.broker.destinations


# -- acknowledgements -------------------------------------------------------------


def _consumer(env, ack: str, version: str = "1.2", dest: str = "/queue/q", **extra: str) -> Client:
    consumer = env.client()
    consumer.connect(version)
    consumer.send("SUBSCRIBE", destination=dest, id="s", ack=ack, **extra)
    return consumer


def _publish(env, count: int, dest: str = "/queue/q") -> None:
    producer = env.client()
    producer.connect()
    for i in range(count):
        producer.send("SEND", str(i).encode(), destination=dest)


def test_client_ack_is_cumulative(env):
    consumer = _consumer(env, "client")
    _publish(env, 4)
    messages = consumer.frames()
    assert all("ack" in m.headers for m in messages)
    consumer.send("ACK", id=messages[2].headers["ack"], receipt="a")
    assert consumer.frame().command == "RECEIPT"
    sub = consumer.proto.subscriptions["s"]
    assert [m.body for m in sub.unacked.values()] == [b"3"]
    # Acking an already acknowledged message is an error.
    consumer.send("ACK", id=messages[0].headers["ack"])
    assert_error(consumer, "unknown ack id")


def test_client_individual_ack(env):
    consumer = _consumer(env, "client-individual")
    _publish(env, 3)
    messages = consumer.frames()
    consumer.send("ACK", id=messages[1].headers["ack"])
    sub = consumer.proto.subscriptions["s"]
    assert [m.body for m in sub.unacked.values()] == [b"0", b"2"]


def test_auto_ack_has_no_ack_header(env):
    consumer = _consumer(env, "auto")
    _publish(env, 1)
    message = consumer.frame()
    assert "ack" not in message.headers
    consumer.send("ACK", id="1")
    assert_error(consumer, "unknown ack id")


def test_ack_requires_id_in_12(env):
    consumer = _consumer(env, "client")
    consumer.send("ACK")
    assert_error(consumer, "'id'")


def test_ack_11_by_message_id_and_subscription(env):
    consumer = _consumer(env, "client-individual", version="1.1")
    _publish(env, 2)
    messages = consumer.frames()
    assert "ack" not in messages[0].headers
    consumer.send("ACK", message_id=messages[0].headers["message-id"], subscription="s")
    sub = consumer.proto.subscriptions["s"]
    assert [m.body for m in sub.unacked.values()] == [b"1"]
    consumer.send("ACK", message_id=messages[1].headers["message-id"])
    assert_error(consumer, "'subscription'")


def test_ack_10_by_message_id(env):
    consumer = _consumer(env, "client", version="1.0")
    _publish(env, 2)
    messages = consumer.frames()
    consumer.send("ACK", message_id=messages[1].headers["message-id"])
    assert consumer.proto.subscriptions["s"].unacked == {}


def test_nack_redelivers_marked(env):
    first = _consumer(env, "client-individual")
    _publish(env, 1)
    message = first.frame()
    second = _consumer(env, "client-individual")
    first.send("NACK", id=message.headers["ack"])
    # Round robin moves on: the second consumer gets the redelivery.
    redelivered = second.frame()
    assert redelivered.body == message.body
    assert redelivered.headers["message-id"] == message.headers["message-id"]
    assert redelivered.headers["redelivered"] == "true"


def test_unacked_return_when_consumer_goes(env):
    first = _consumer(env, "client")
    _publish(env, 3)
    assert len(first.frames()) == 3
    second = _consumer(env, "client")
    assert second.frames() == []
    first.lose()
    again = second.frames()
    assert [m.body for m in again] == [b"0", b"1", b"2"]
    assert all(m.headers["redelivered"] == "true" for m in again)


def test_unacked_return_on_unsubscribe(env):
    first = _consumer(env, "client-individual")
    _publish(env, 2)
    messages = first.frames()
    first.send("ACK", id=messages[0].headers["ack"])
    second = _consumer(env, "auto")
    first.send("UNSUBSCRIBE", id="s")
    assert [m.body for m in second.frames()] == [b"1"]


def test_prefetch_count(env):
    consumer = _consumer(env, "client-individual", **{"prefetch-count": "2"})
    _publish(env, 5)
    messages = consumer.frames()
    assert [m.body for m in messages] == [b"0", b"1"]
    consumer.send("ACK", id=messages[0].headers["ack"])
    assert [m.body for m in consumer.frames()] == [b"2"]


def test_topic_nack_drops(env):
    consumer = _consumer(env, "client", dest="/topic/n")
    _publish(env, 1, dest="/topic/n")
    message = consumer.frame()
    consumer.send("NACK", id=message.headers["ack"], receipt="r")
    assert consumer.frame().command == "RECEIPT"


# -- transactions ----------------------------------------------------------------


def test_transaction_commit_and_abort(env):
    consumer = _consumer(env, "auto")
    producer = env.client()
    producer.connect()
    producer.send("BEGIN", transaction="t1")
    producer.send("SEND", b"a", destination="/queue/q", transaction="t1")
    producer.send("SEND", b"b", destination="/queue/q", transaction="t1")
    assert consumer.frames() == []
    producer.send("COMMIT", transaction="t1", receipt="c")
    assert producer.frame().headers == {"receipt-id": "c"}
    assert [m.body for m in consumer.frames()] == [b"a", b"b"]
    producer.send("BEGIN", transaction="t2")
    producer.send("SEND", b"c", destination="/queue/q", transaction="t2")
    producer.send("ABORT", transaction="t2")
    producer.send("SEND", b"d", destination="/queue/q")
    assert [m.body for m in consumer.frames()] == [b"d"]


def test_transactional_ack(env):
    consumer = _consumer(env, "client-individual")
    _publish(env, 2)
    messages = consumer.frames()
    sub = consumer.proto.subscriptions["s"]
    consumer.send("BEGIN", transaction="t")
    consumer.send("ACK", id=messages[0].headers["ack"], transaction="t")
    assert len(sub.unacked) == 2
    consumer.send("ABORT", transaction="t")
    assert len(sub.unacked) == 2
    consumer.send("BEGIN", transaction="t")
    consumer.send("ACK", id=messages[0].headers["ack"], transaction="t")
    consumer.send("COMMIT", transaction="t")
    assert [m.body for m in sub.unacked.values()] == [b"1"]


def test_duplicate_begin(env):
    client = env.client()
    client.connect()
    client.send("BEGIN", transaction="t")
    client.send("BEGIN", transaction="t")
    assert_error(client, "already open")


def test_transaction_too_large(env):
    """
    A SEND that would take a connection's open transactions past
    max_transaction_bytes gets ERROR "transaction too large", whose body
    names the limit and the option that raises it; the connection closes
    and nothing of the transaction is delivered.
    """
    consumer = _consumer(env, "auto")
    producer = env.client(max_transaction_bytes=10_000)
    producer.connect()
    producer.send("BEGIN", transaction="t")
    # Each counts for its body, headers and some overhead: 4 KiB and a bit.
    for _ in range(2):
        producer.send("SEND", b"x" * 4000, destination="/queue/q", transaction="t")
    assert producer.frames() == []
    producer.send("SEND", b"x" * 4000, destination="/queue/q", transaction="t")
    error = assert_error(producer, "transaction too large")
    assert error.headers["message"] == "transaction too large"
    assert b"more than 10000 bytes" in error.body and b"--max-transaction-bytes" in error.body
    producer.lose()
    assert consumer.frames() == []


def test_transaction_aborted_when_connection_ends(env):
    consumer = _consumer(env, "auto")
    producer = env.client()
    producer.connect()
    producer.send("BEGIN", transaction="t")
    producer.send("SEND", b"lost", destination="/queue/q", transaction="t")
    producer.lose()
    assert consumer.frames() == []


# -- DISCONNECT --------------------------------------------------------------------


def test_disconnect_receipt_then_close(env):
    client = env.client()
    client.connect()
    client.send("DISCONNECT", receipt="bye")
    assert client.frame().headers == {"receipt-id": "bye"}
    assert client.transport.disconnecting
    client.send("SEND", b"x", destination="/queue/after")
    assert client.frames() == []
    assert "/queue/after" not in env.broker.destinations


def test_subscription_rejects_unknown_ack_mode():
    with pytest.raises(ValueError):
        Subscription(None, "1", "/queue/a", "never")


def test_build_protocol():
    proto = StompFactory(Broker(), BrokerConfig(), Clock(), "tcp").buildProtocol(None)
    assert isinstance(proto, StompProtocol)


def test_internal_error_is_reported_without_traceback(env, monkeypatch):
    client = env.client()
    client.connect()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(env.broker, "send", broken)
    client.send("SEND", b"x", destination="/queue/a", receipt="r")
    error = assert_error(client, "internal broker error")
    assert error.headers["receipt-id"] == "r"
    assert b"boom" not in error.body


def test_no_delivery_to_a_closing_connection(env):
    """Once the broker decides to close, queue messages go elsewhere."""
    doomed = _consumer(env, "auto")
    doomed.raw(b"BOGUS\n\n\x00")
    assert_error(doomed, "BOGUS")
    _publish(env, 1)
    assert doomed.frames() == []
    survivor = _consumer(env, "auto")
    assert [m.body for m in survivor.frames()] == [b"0"]
