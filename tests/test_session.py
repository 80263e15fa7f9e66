"""
The sans-IO session (:mod:`stomptw.session`) on a recording transport and a
Clock (:mod:`stomptw.testing`): what it asks of its transport (writes,
pausing and resuming reads, the close with its linger), its deadlines on the
shared sweep, and what it tells the admin API.
"""

from __future__ import annotations

from zope.interface.verify import verifyObject

from stomptw.interfaces import IDeadlineTarget, IMessageConsumer, IStompTransport
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
        "subscriptions": 1,
        "connected_seconds": 3.0,
    }
