"""
The sans-IO session (:mod:`stomptw.session`): what it asks of its transport
(writes, pausing and resuming reads, the close with its linger), its
deadlines on the shared sweep (heart-beats, timeouts), what it does with the
bytes it reads before and after an ERROR, flow control, the order of its
RECEIPTs, and what it tells the admin API. On a recording transport
(:mod:`stomptw.testing`), or through the real StompProtocol on a
StringTransport (the ``env`` fixture), with a Clock. What each frame does is
in test_commands.py.
"""

from __future__ import annotations

import queue
import time

from inprocess import Client, assert_error, messages
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.encoding import encode_frame
from stomptw.frame import Limits
from stomptw.interfaces import IDeadlineTarget, IMessageConsumer, IStompTransport
from stomptw.store import SQLiteStore
from stomptw.testing import BrokerOnClock, RecordingTransport


def test_the_session_and_the_recording_transport_provide_their_interfaces():
    env = BrokerOnClock()
    client = env.connect()
    assert verifyObject(IMessageConsumer, client.session)
    assert verifyObject(IDeadlineTarget, client.session)
    assert verifyObject(IStompTransport, RecordingTransport(env.clock))


def test_an_error_closes_through_the_transport_with_the_configured_linger():
    env = BrokerOnClock(close_linger=2.5)
    client = env.connect()
    client.send("NOPE")
    (error,) = client.frames()
    assert error.command == "ERROR"
    assert client.transport.closed_with == 2.5
    client.lose()
    assert client.session not in env.broker.sessions


def test_a_full_queue_pauses_reading_and_room_resumes_it_on_a_later_turn():
    env = BrokerOnClock(max_queue_length=1)
    producer = env.connect()
    producer.send("SEND", b"1", destination="/queue/full")
    assert not producer.transport.reading  # blocked: the queue is at its limit
    producer.send("SEND", b"2", destination="/queue/full")
    producer.send("SEND", b"3", destination="/queue/full", receipt="r3")
    assert producer.frames() == []  # read, but not handled while blocked
    assert env.broker.destinations["/queue/full"].count == 1
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/queue/full", id="1")
    assert [f.body for f in consumer.frames()] == [b"1"]
    assert producer.transport.reading
    assert producer.frames() == []  # the waiting frames are handled on the next turn
    env.advance(0)
    assert [f.headers["receipt-id"] for f in producer.frames()] == ["r3"]
    assert [f.body for f in consumer.frames()] == [b"2", b"3"]


def test_one_sweep_entry_per_session_and_none_once_closed():
    env = BrokerOnClock()
    clients = [env.connect(heart_beat="1000,1000") for _ in range(50)]
    sweep = env.broker.deadlines
    assert len(sweep) == 50
    # Heart-beats both ways, 50 sessions: one reactor timer (besides the
    # broker's expiry sweep).
    timers = [c for c in env.clock.getDelayedCalls() if "DeadlineSweep" in repr(c)]
    assert len(timers) == 1 and len(env.clock.getDelayedCalls()) == 2
    for client in clients:
        client.send("DISCONNECT")
        client.lose()
    assert len(sweep) == 0
    assert not [c for c in env.clock.getDelayedCalls() if "DeadlineSweep" in repr(c)]


def test_login_timeout_is_a_deadline_on_the_sweep():
    env = BrokerOnClock(login_timeout=5.0)
    client = env.connect(version=None)
    env.advance(4.99)
    assert client.frames() == [] and not client.closing
    env.advance(0.01)
    (error,) = client.frames()
    assert error.headers["message"] == "no CONNECT frame received in time"
    assert client.closing


def test_beats_on_the_sweep_are_never_late_with_traffic_in_between():
    env = BrokerOnClock(heartbeat_send_ms=100, heartbeat_receive_ms=0)
    client = env.connect(heart_beat="0,100")
    client.transport.clear()
    last = env.clock.seconds()
    for step in range(400):
        before = len(client.transport.written)
        env.advance(0.005)
        if step % 37 == 0:
            client.send("SEND", b"x", destination="/queue/beats", receipt=f"r{step}")
        if len(client.transport.written) != before:
            assert env.clock.seconds() - last <= 0.1 + 1e-9
            last = env.clock.seconds()
        assert env.clock.seconds() - last <= 0.1 + 1e-9
    assert b"\n" in client.transport.written


def test_info_reports_what_the_admin_api_shows():
    env = BrokerOnClock()
    client = env.connect(client_id="app-1")
    client.send("SUBSCRIBE", destination="/topic/t", id="7")
    env.advance(3)
    info = client.session.info(env.clock.seconds())
    assert info == {
        "session_id": client.session.session_id,
        "peer": "127.0.0.1:0",
        "transport": "test",
        "version": "1.2",
        "client_id": "app-1",
        "user": None,
        "vhost": "/",
        "subscriptions": 1,
        "connected_seconds": 3.0,
    }


# -- frames in, ERRORs out -----------------------------------------------------------------


def test_data_after_error_ignored(env):
    client = env.client()
    client.raw(b"BOGUS\n\n\x00SEND\ndestination:/queue/a\n\nx\x00")
    assert_error(client, "BOGUS")
    client.raw(encode_frame("CONNECT", {"accept-version": "1.2"}))
    assert client.frames() == []
    assert "/queue/a" not in env.broker.destinations


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


def test_connect_with_a_body_is_refused(env):
    """
    Bodies on frames other than SEND are refused with an ERROR (policy.md),
    CONNECT and STOMP included, although they are handled apart from the
    other frames.
    """
    client = env.client()
    client.raw(b"CONNECT\naccept-version:1.2\ncontent-length:3\n\nabc\x00")
    frames = client.frames()
    assert [f.command for f in frames] == ["ERROR"], frames


# -- heart-beats and timeouts --------------------------------------------------------------


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


def test_timers_cancelled_on_connection_lost(env):
    client = env.client(heartbeat_send_ms=1000, heartbeat_receive_ms=1000)
    client.connect(heart_beat="1000,1000")
    client.lose()
    assert env.clock.getDelayedCalls() == []


def test_idle_heart_beats_at_three_quarters_of_the_interval(env):
    """
    On an idle connection the broker beats at three quarters of the
    negotiated interval (every 750 ms with 1000,1000), so somewhat more often
    than the interval and never later than it, as docs/policy.md and the
    --heartbeat help say.
    """
    client = env.client(heartbeat_send_ms=1000, heartbeat_receive_ms=0)
    client.connect(heart_beat="0,1000")
    beats = []
    for _ in range(100):
        before = len(client.transport.value())
        env.clock.advance(0.05)
        if len(client.transport.value()) != before:
            beats.append(env.clock.seconds())
    gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
    # Idle: a beat at three quarters of the negotiated interval, never later
    # than the interval (docs/policy.md).
    assert gaps and all(0.75 - 1e-6 <= gap <= 1.0 + 1e-6 for gap in gaps), gaps


# -- closing -------------------------------------------------------------------------------


def test_unacked_return_when_consumer_goes(env):
    first = env.consumer("client")
    env.publish(3)
    assert len(first.frames()) == 3
    second = env.consumer("client")
    assert second.frames() == []
    first.lose()
    again = second.frames()
    assert [m.body for m in again] == [b"0", b"1", b"2"]
    assert all(m.headers["redelivered"] == "true" for m in again)


def test_transaction_aborted_when_connection_ends(env):
    consumer = env.consumer("auto")
    producer = env.client()
    producer.connect()
    producer.send("BEGIN", transaction="t")
    producer.send("SEND", b"lost", destination="/queue/q", transaction="t")
    producer.lose()
    assert consumer.frames() == []


def test_no_delivery_to_a_closing_connection(env):
    """Once the broker decides to close, queue messages go elsewhere."""
    doomed = env.consumer("auto")
    doomed.raw(b"BOGUS\n\n\x00")
    assert_error(doomed, "BOGUS")
    env.publish(1)
    assert doomed.frames() == []
    survivor = env.consumer("auto")
    assert [m.body for m in survivor.frames()] == [b"0"]


# -- flow control --------------------------------------------------------------------------


def test_blocked_producer_can_still_ack_its_own_messages():
    config = BrokerConfig(max_queue_length=2, heartbeat_receive_ms=0)
    clock = Clock()
    broker = Broker(config, clock=clock)
    client = Client(broker, clock, config)
    client.connect()
    client.send("SUBSCRIBE", id="s", destination="/queue/loop", ack="client-individual")
    client.send("SEND", b"a", destination="/queue/loop")
    client.send("SEND", b"b", destination="/queue/loop")
    got = messages(client.frames())
    assert len(got) == 2
    queue_ = broker.destinations["/queue/loop"]
    assert queue_.is_full()
    for frame in got:
        client.send("ACK", id=frame.headers["ack"], receipt=f"ack-{frame.headers['ack']}")
    clock.advance(60)
    receipts = [f for f in client.frames() if f.command == "RECEIPT"]
    assert len(receipts) == 2, "the ACKs were never read"
    assert queue_.count == 0


# -- receipts and the ERROR after them -----------------------------------------------------


class _ThreadReactor(Clock):
    """A Clock whose callFromThread queues calls for the test to run."""

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: queue.SimpleQueue = queue.SimpleQueue()

    def callFromThread(self, fn, *args, **kwargs):  # noqa: N802 - reactor API
        self.from_thread.put((fn, args, kwargs))

    def pump(self, deadline: float = 5.0) -> None:
        """Start the pending commit and run its completion on 'the reactor'."""
        self.advance(0)
        fn, args, kwargs = self.from_thread.get(timeout=deadline)
        fn(*args, **kwargs)
        self.advance(0)


def test_error_deferred_behind_receipts_is_sent(tmp_path):
    config = BrokerConfig(slow_topic_limit=1, slow_topic_policy="disconnect")
    reactor = _ThreadReactor()
    store = SQLiteStore(str(tmp_path), reactor)
    broker = Broker(config, store, clock=reactor)
    broker.open()
    try:
        client = Client(broker, reactor, config)
        client.connect()
        client.send(
            "SUBSCRIBE",
            id="t",
            destination="/topic/news",
            ack="client-individual",
            prefetch_count="1",
        )
        client.send("SEND", b"m1", destination="/topic/news")  # delivered, unacked
        client.send("SEND", b"m2", destination="/topic/news")  # backlog: 1
        client.send("SEND", b"p", destination="/queue/q", persistent="true", receipt="r1")
        # Backlog 2 > slow_topic_limit: this session is a slow consumer.
        client.send("SEND", b"m3", destination="/topic/news", persistent="true", receipt="r2")
        reactor.pump()
        deadline = time.monotonic() + 5
        frames = client.frames()
        while not any(f.command == "ERROR" for f in frames) and time.monotonic() < deadline:
            try:
                fn, args, kwargs = reactor.from_thread.get(timeout=0.1)
            except queue.Empty:
                reactor.advance(0)
                continue
            fn(*args, **kwargs)
            reactor.advance(0)
            frames += client.frames()
        commands = [f.command for f in frames if f.command != "MESSAGE"]
        assert commands == ["RECEIPT", "RECEIPT", "ERROR"], commands
        assert client.transport.disconnecting
    finally:
        d = broker.close()
        while not d.called:
            try:
                fn, args, kwargs = reactor.from_thread.get(timeout=5)
            except queue.Empty:
                break
            fn(*args, **kwargs)
            reactor.advance(0)
