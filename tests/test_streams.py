"""
Replayable streams (/stream/NAME): offsets, starting points, resuming
without loss, trimming, and durability, on a Clock and over real sockets.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from stomptw.streams import StreamLimits, parse_limit, parse_start
from stomptw.testing import BrokerOnClock


def publish(env, count: int, stream: str = "/stream/feed", start: int = 0) -> None:
    producer = env.connect()
    for n in range(start, start + count):
        producer.send("SEND", f"m{n}".encode(), destination=stream)
    producer.lose()


def read(client) -> list[tuple[int, bytes]]:
    return [(int(f.headers["x-stream-offset"]), f.body) for f in client.frames()]


def test_offsets_count_from_zero_and_every_message_says_its_offset_and_epoch():
    env = BrokerOnClock()
    live = env.connect()
    live.send("SUBSCRIBE", destination="/stream/feed", id="1")
    publish(env, 3)
    frames = live.frames()
    assert [f.headers["x-stream-offset"] for f in frames] == ["0", "1", "2"]
    epochs = {f.headers["x-stream-epoch"] for f in frames}
    assert len(epochs) == 1 and len(epochs.pop()) == 12
    assert all(int(f.headers["timestamp"]) >= 0 for f in frames)
    assert "x-stream-recovered" not in frames[0].headers


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("first", [0, 1, 2, 3, 4]),
        ("last", [4]),
        ("next", []),
        ("offset=2", [2, 3, 4]),
        ("offset=5", []),
        (None, []),
    ],
)
def test_where_a_subscription_starts(start, expected):
    env = BrokerOnClock()
    publish(env, 5)
    reader = env.connect()
    headers = {} if start is None else {"x-stream-offset": start}
    reader.send("SUBSCRIBE", destination="/stream/feed", id="1", **headers)
    assert [offset for offset, _ in read(reader)] == expected
    publish(env, 1, start=5)
    assert read(reader) == [(5, b"m5")]


def test_a_timestamp_starts_at_the_first_message_accepted_then_or_later():
    env = BrokerOnClock()
    env.advance(1000)
    publish(env, 2)
    env.advance(10)
    publish(env, 2, start=2)
    reader = env.connect()
    reader.send(
        "SUBSCRIBE", destination="/stream/feed", id="1", **{"x-stream-offset": "timestamp=1005"}
    )
    assert [o for o, _ in read(reader)] == [2, 3]


def test_resuming_with_the_last_offset_plus_one_gives_exactly_what_was_missed():
    env = BrokerOnClock()
    page = env.connect()
    page.send("SUBSCRIBE", destination="/stream/feed", id="1", **{"x-stream-offset": "first"})
    publish(env, 3)
    seen = page.frames()
    last = int(seen[-1].headers["x-stream-offset"])
    epoch = seen[-1].headers["x-stream-epoch"]
    page.lose()
    publish(env, 4, start=3)  # while the page is away
    again = env.connect()
    again.send(
        "SUBSCRIBE",
        destination="/stream/feed",
        id="1",
        **{"x-stream-offset": f"offset={last + 1}", "x-stream-epoch": epoch},
    )
    frames = again.frames()
    assert [f.body for f in frames] == [b"m3", b"m4", b"m5", b"m6"]
    assert all("x-stream-recovered" not in f.headers for f in frames)
    publish(env, 1, start=7)  # live again, no gap, no duplicate at the seam
    assert read(again) == [(7, b"m7")]


def test_history_that_was_trimmed_is_flagged_on_the_first_message():
    env = BrokerOnClock(stream_max_count=3)
    publish(env, 10)
    reader = env.connect()
    reader.send("SUBSCRIBE", destination="/stream/feed", id="1", **{"x-stream-offset": "offset=2"})
    frames = reader.frames()
    assert [f.headers["x-stream-offset"] for f in frames] == ["7", "8", "9"]
    assert frames[0].headers["x-stream-recovered"] == "false"
    assert "x-stream-recovered" not in frames[1].headers


def test_another_epoch_is_flagged_and_the_reader_gets_what_the_stream_holds():
    env = BrokerOnClock()
    publish(env, 2)
    reader = env.connect()
    reader.send(
        "SUBSCRIBE",
        destination="/stream/feed",
        id="1",
        **{"x-stream-offset": "offset=1", "x-stream-epoch": "0123456789ab"},
    )
    frames = reader.frames()
    assert [f.headers["x-stream-offset"] for f in frames] == ["0", "1"]
    assert frames[0].headers["x-stream-recovered"] == "false"


def test_a_slow_reader_passed_by_trimming_jumps_ahead_and_is_told():
    env = BrokerOnClock(stream_max_count=5)
    reader = env.connect()
    reader.send(
        "SUBSCRIBE",
        destination="/stream/feed",
        id="1",
        ack="client-individual",
        **{"x-stream-offset": "first", "prefetch-count": "1"},
    )
    publish(env, 10)
    (first,) = reader.frames()
    assert first.headers["x-stream-offset"] == "0"
    reader.send("ACK", id=first.headers["ack"])
    (next_one,) = reader.frames()
    assert next_one.headers["x-stream-offset"] == "5"
    assert next_one.headers["x-stream-recovered"] == "false"


def test_prefetch_bounds_a_catch_up_and_acks_move_it_on():
    env = BrokerOnClock()
    publish(env, 6)
    reader = env.connect()
    reader.send(
        "SUBSCRIBE",
        destination="/stream/feed",
        id="1",
        ack="client",
        **{"x-stream-offset": "first", "prefetch-count": "2"},
    )
    frames = reader.frames()
    assert [f.headers["x-stream-offset"] for f in frames] == ["0", "1"]
    reader.send("ACK", id=frames[1].headers["ack"])
    assert [f.headers["x-stream-offset"] for f in reader.frames()] == ["2", "3"]


def test_limits_by_bytes_and_age_and_per_pattern():
    env = BrokerOnClock(
        stream_max_age=10.0,
        stream_limits=["/stream/small.*:count=2", "/stream/big:bytes=100000000"],
    )
    publish(env, 5, "/stream/small.x")
    assert env.broker.destinations["/stream/small.x"].offsets() == (3, 5)
    publish(env, 5, "/stream/other")
    watcher = env.connect()
    watcher.send("SUBSCRIBE", destination="/stream/other", id="1")
    env.advance(11)  # the expiry sweep trims by age
    other = env.broker.destinations["/stream/other"]
    assert other.count == 0 and other.offsets() == (5, 5)
    publish(env, 1, "/stream/other", start=5)
    assert other.offsets() == (5, 6)
    # Empty and unused, a stream is forgotten: its next message starts a new epoch.
    watcher.lose()
    env.advance(11)
    assert "/stream/other" not in env.broker.destinations
    publish(env, 1, "/stream/other", start=6)
    again = env.broker.destinations["/stream/other"]
    assert again.offsets() == (0, 1) and again.epoch != other.epoch


def test_the_starting_point_is_checked():
    env = BrokerOnClock()
    client = env.connect()
    client.send(
        "SUBSCRIBE", destination="/stream/feed", id="1", receipt="r", **{"x-stream-offset": "soon"}
    )
    error = client.frame()
    assert error.command == "ERROR" and error.headers["receipt-id"] == "r"
    assert "x-stream-offset" in error.headers["message"]


def test_parsing():
    assert parse_start("offset=7").value == 7
    assert parse_start("timestamp=2").value == 2000
    assert parse_limit("/stream/a.*:count=5:age=1.5") == ("/stream/a.*", StreamLimits(5, 0, 1500))
    for bad in ("/queue/a:count=1", "/stream/a:size=1", "/stream/a:count=x", "/stream/a:age=-1"):
        with pytest.raises(ValueError):
            parse_limit(bad)


@pytest_twisted.ensureDeferred
async def test_a_stream_survives_a_restart_in_the_store(tmp_path):
    from twisted.internet import reactor

    from stomptw.broker import Broker
    from stomptw.config import BrokerConfig
    from stomptw.store import SQLiteStore

    config = BrokerConfig(data_dir=str(tmp_path), stream_max_count=4)

    def broker() -> Broker:
        b = Broker(config, SQLiteStore(str(tmp_path), reactor, "normal"), reactor)
        b.open()
        return b

    first = broker()
    for n in range(6):
        first.send("/stream/feed", {}, f"m{n}".encode())
    epoch = first.destinations["/stream/feed"].epoch
    await first.sync()
    await first.close()
    second = broker()
    try:
        stream = second.destinations["/stream/feed"]
        assert stream.offsets() == (2, 6) and stream.epoch == epoch
        second.send("/stream/feed", {}, b"m6")
        assert stream.offsets() == (3, 7)
        env_reader = []
        from stomptw.model import Subscription
        from stomptw.streams import StreamStart

        class Consumer:
            writable = True

            def deliver(self, sub, message):
                env_reader.append((message.headers["x-stream-offset"], message.body))
                return True

        sub = Subscription(Consumer(), "1", "/stream/feed")
        sub.stream_start = StreamStart("first")
        second.subscribe(sub)
        assert env_reader == [("3", b"m3"), ("4", b"m4"), ("5", b"m5"), ("6", b"m6")]
    finally:
        await second.close()


@pytest_twisted.ensureDeferred
async def test_stomp_py_resumes_a_stream_after_its_connection_dropped(make_broker):
    from twisted.internet.threads import deferToThread

    from tests.clients import StompPyClient, _get

    running = await make_broker()

    def session(client, offset_header):
        client.connect()
        client.subscribe("/stream/prices", "s", **offset_header)

    def run():
        producer = StompPyClient.tcp(running.tcp_port)
        producer.connect()
        page = StompPyClient.tcp(running.tcp_port)
        session(page, {"x-stream-offset": "first"})
        for n in range(3):
            producer.send("/stream/prices", f"p{n}", receipt=True)
        seen = [_get(page.listener.messages, "MESSAGE") for _ in range(3)]
        page.drop()
        for n in range(3, 6):
            producer.send("/stream/prices", f"p{n}", receipt=True)
        last = seen[-1].headers
        again = StompPyClient.tcp(running.tcp_port)
        session(
            again,
            {
                "x-stream-offset": f"offset={int(last['x-stream-offset']) + 1}",
                "x-stream-epoch": last["x-stream-epoch"],
            },
        )
        producer.send("/stream/prices", "p6", receipt=True)
        resumed = [_get(again.listener.messages, "MESSAGE") for _ in range(4)]
        for client in (producer, again):
            client.close()
        return seen, resumed

    seen, resumed = await deferToThread(run)
    assert [m.body for m in seen] == ["p0", "p1", "p2"]
    assert [m.body for m in resumed] == ["p3", "p4", "p5", "p6"]
    assert [m.headers["x-stream-offset"] for m in resumed] == ["3", "4", "5", "6"]


# -- found in review ---------------------------------------------------------------------


def test_a_reader_behind_a_stream_that_age_trims_to_nothing_is_told_on_the_next_message():
    env = BrokerOnClock(stream_max_age=1.0)
    reader = env.connect()
    reader.send(
        "SUBSCRIBE",
        destination="/stream/feed",
        id="1",
        ack="client-individual",
        **{"x-stream-offset": "first", "prefetch-count": "1"},
    )
    publish(env, 3)
    (first,) = reader.frames()
    env.advance(5)  # all three trimmed by age
    reader.send("ACK", id=first.headers["ack"])
    assert reader.frames() == [] and not reader.closing
    publish(env, 1, start=3)
    (message,) = reader.frames()
    assert message.headers["x-stream-offset"] == "3"
    assert message.headers["x-stream-recovered"] == "false"


def test_a_producer_cannot_say_x_stream_recovered():
    env = BrokerOnClock()
    reader = env.connect()
    reader.send("SUBSCRIBE", destination="/stream/feed", id="1")
    producer = env.connect()
    producer.send("SEND", b"x", destination="/stream/feed", **{"x-stream-recovered": "false"})
    (message,) = reader.frames()
    assert "x-stream-recovered" not in message.headers


def test_an_old_epoch_with_next_or_last_replays_nothing():
    env = BrokerOnClock()
    publish(env, 3)
    for start, expected in (("next", []), ("last", [2])):
        reader = env.connect()
        reader.send(
            "SUBSCRIBE",
            destination="/stream/feed",
            id="1",
            **{"x-stream-offset": start, "x-stream-epoch": "0123456789ab"},
        )
        assert [o for o, _ in read(reader)] == expected
