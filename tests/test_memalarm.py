"""
The memory alarm (--memory-high-watermark): past the watermark every
connection that publishes stops being read; consumers, ACKs and heart-beats
go on; under 0.9 of it they are read again.

Sans-IO on a Clock with the memory use the test says, then against a real
``twistd -n stomptw`` whose real RSS crosses a small watermark while a
producer pushes 4 KiB messages at a queue nobody reads yet.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from clients import encode_frame
from test_memory_bound import MiB, RawClient, start_broker  # noqa: F401 (a fixture)

from stomptw.config import BrokerConfig
from stomptw.memalarm import MemoryAlarm, parse_watermark, resolve_watermark
from stomptw.metrics import render_metrics
from stomptw.service import makeService
from stomptw.testing import BrokerOnClock

LIMIT = 100 * MiB


def on_clock(used: list[int], trimmed: list[int] | None = None):
    def trim() -> None:
        if trimmed is not None:
            trimmed.append(1)

    env = BrokerOnClock()
    alarm = MemoryAlarm(LIMIT, env.clock, rss=lambda: used[0], trim=trim)
    env.broker.memory_alarm = alarm
    alarm.start()
    return env, alarm


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.4", (0.4, 0)),
        ("0", (0.0, 0)),
        ("1", (1.0, 0)),
        ("512MiB", (0.0, 512 * MiB)),
        ("2GB", (0.0, 2_000_000_000)),
        ("1.5GiB", (0.0, 1536 * MiB)),
        ("1073741824", (0.0, 1073741824)),
        ("64mb", (0.0, 64_000_000)),
    ],
)
def test_a_watermark_is_a_share_of_memory_or_a_size(text, expected):
    assert parse_watermark(text) == expected


@pytest.mark.parametrize(
    "text, why",
    [
        ("lots", "fraction of the machine's memory"),
        ("-0.4", "fraction of the machine's memory"),
        ("1.5", "a fraction must be at most 1"),
        ("1MiB", "at least 16MiB"),
    ],
)
def test_a_bad_watermark_says_what_is_wrong(text, why):
    with pytest.raises(ValueError, match=why):
        parse_watermark(text)


def test_a_share_is_of_the_memory_this_process_may_use():
    assert resolve_watermark("0.4", memory=lambda: 1000 * MiB) == 400 * MiB
    assert resolve_watermark("256MiB", memory=lambda: 1000 * MiB) == 256 * MiB
    assert resolve_watermark("0", memory=lambda: 1000 * MiB) == 0


def test_the_command_line_refuses_a_bad_watermark():
    from stomptw.tap import Options

    options = Options()
    with pytest.raises(Exception, match="memory-high-watermark"):
        options.parseOptions(["--memory-high-watermark", "half"])


def test_on_by_default_and_zero_turns_it_off():
    service = makeService(BrokerConfig(store="memory", tcp_endpoints=[], ws_endpoints=[]))
    alarm = service.broker.memory_alarm
    assert alarm is not None
    assert alarm.limit == resolve_watermark("0.4")
    off = makeService(
        BrokerConfig(store="memory", memory_high_watermark="0", tcp_endpoints=[], ws_endpoints=[])
    )
    assert off.broker.memory_alarm is None


def test_publishers_are_held_past_the_watermark_and_read_again_under_nine_tenths():
    used = [LIMIT // 2]
    env, alarm = on_clock(used)
    producer = env.connect()
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/queue/q", id="1", ack="client-individual")
    used[0] = LIMIT
    env.advance(0.5)
    assert alarm.active
    assert render_metrics(env.broker).count('stomptw_alarm{alarm="memory"} 1') == 1
    # Non-persistent messages count too: the SEND is taken, nothing more is read.
    producer.send("SEND", b"taken", destination="/queue/q", receipt="p1")
    assert not producer.transport.reading
    assert producer.frame().headers["receipt-id"] == "p1"
    assert alarm.status()["held_connections"] == 1
    # Consumers and their ACKs go on, so that memory can be freed.
    (delivered,) = consumer.frames()
    assert delivered.body == b"taken"
    consumer.send("ACK", id=delivered.headers["ack"], receipt="a1")
    assert consumer.frame().headers["receipt-id"] == "a1"
    # Just under the watermark is not enough (no flapping at the edge).
    used[0] = LIMIT - 1
    env.advance(0.5)
    assert alarm.active and not producer.transport.reading
    used[0] = int(LIMIT * 0.9) - 1
    env.advance(0.5)
    assert not alarm.active and producer.transport.reading
    assert alarm.blocked == set()
    producer.send("SEND", b"again", destination="/queue/q", receipt="p2")
    assert producer.frame().headers["receipt-id"] == "p2"
    assert alarm.raised == 1


def test_what_is_published_between_readings_counts_so_the_watermark_is_not_overshot():
    used = [LIMIT - 10 * MiB]
    env, alarm = on_clock(used)
    producer = env.connect()
    body = b"x" * (1 * MiB)
    # Each 1 MiB message counts twice until the next reading; the fifth takes
    # the estimate over, and the RSS is read at once (here each message cost
    # three times its size: the broker is over).
    for _n in range(5):
        assert not alarm.active
        used[0] += 3 * len(body)
        producer.send("SEND", body, destination="/queue/big")
    assert alarm.active
    assert not producer.transport.reading
    # No clock tick was needed.
    assert env.clock.seconds() == 0


def test_an_estimate_over_the_watermark_is_checked_against_the_real_figure():
    used = [LIMIT // 2]
    env, alarm = on_clock(used)
    producer = env.connect()
    body = b"x" * (8 * MiB)
    for _n in range(4):
        producer.send("SEND", body, destination="/queue/q")
    # 64 MiB counted, but the RSS did not grow: no alarm, the estimate restarts.
    assert not alarm.active and producer.transport.reading
    assert alarm.used == LIMIT // 2


def test_freed_memory_is_given_back_before_the_alarm_is_raised():
    used = [LIMIT + MiB]
    trimmed: list[int] = []

    def trim() -> None:
        trimmed.append(1)
        used[0] = LIMIT // 2  # what the allocator kept after a backlog drained

    env = BrokerOnClock()
    alarm = MemoryAlarm(LIMIT, env.clock, rss=lambda: used[0], trim=trim)
    alarm.start()
    assert trimmed == [1]
    assert not alarm.active
    alarm.stop()


def test_one_log_line_when_raised_and_one_when_cleared():
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        used = [0]
        env, alarm = on_clock(used)
        for value in (LIMIT, LIMIT + 1, LIMIT * 2, LIMIT // 2, LIMIT // 3):
            used[0] = value
            env.advance(0.5)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "memory alarm" in formatEvent(e)]
    assert len(lines) == 2, lines
    assert "over --memory-high-watermark" in lines[0]
    assert "cleared" in lines[1]


# -- a real broker, real memory -------------------------------------------------------

BODY = 4096
WATERMARK = 160 * MiB


def admin_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Producer(threading.Thread):
    """Sends ``count`` numbered 4 KiB messages, at most ``window`` RECEIPTs outstanding."""

    def __init__(self, port: int, count: int, window: int = 64) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(port)
        self.client.sock.settimeout(120)
        self.count = count
        self.window = window
        self.receipts = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            sent = 0
            while self.receipts < self.count:
                while sent < self.count and sent - self.receipts < self.window:
                    self.client.sock.sendall(
                        encode_frame(
                            "SEND",
                            {"destination": "/queue/mem", "seq": str(sent), "receipt": str(sent)},
                            b"m" * BODY,
                        )
                    )
                    sent += 1
                frame = self.client.read_frame(time.monotonic() + 120)
                assert frame.command == "RECEIPT", frame
                self.receipts += 1
        except BaseException as e:  # reported by the test
            self.error = e


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
def test_a_real_broker_holds_its_publisher_at_the_watermark_and_loses_nothing(
    start_broker,  # noqa: F811 (the fixture imported above)
):
    from test_durability import free_port

    admin = free_port()
    broker = start_broker(
        "--store",
        "memory",
        "--max-queue-bytes",
        "0",
        "--max-queue-length",
        "0",
        "--memory-high-watermark",
        f"{WATERMARK // MiB}MiB",
        "--admin",
        f"tcp:{admin}:interface=127.0.0.1",
    )
    baseline = broker.rss()
    assert baseline < WATERMARK // 2, f"the broker starts at {baseline} bytes"
    # Far more than the watermark: 60,000 x 4 KiB is 234 MiB of bodies.
    count = 60_000
    producer = Producer(broker.tcp_port, count)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], broker.rss())
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    producer.start()
    deadline = time.monotonic() + 60
    alarms: dict = {}
    while time.monotonic() < deadline:
        alarms = json.loads(admin_get(admin, "/api/alarms")[1])
        if alarms["memory"]["active"] and alarms["memory"]["held_connections"] == 1:
            break
        assert producer.is_alive(), producer.error
        time.sleep(0.05)
    else:
        raise AssertionError(f"the alarm never went off: {alarms}, peak RSS {peak[0]}")
    held_at = producer.receipts
    status, body = admin_get(admin, "/readyz")
    assert status == 503 and b"memory alarm raised" in body
    metrics = admin_get(admin, "/metrics")[1].decode()
    assert 'stomptw_alarm{alarm="memory"} 1' in metrics
    assert re.search(rf"^stomptw_memory_limit_bytes {WATERMARK}$", metrics, re.M)
    assert held_at < count
    # Held: no more is taken however long the producer waits for its receipts.
    time.sleep(1.0)
    assert producer.receipts <= held_at + producer.window
    assert peak[0] <= WATERMARK * 1.1, (peak[0], WATERMARK)
    assert "memory alarm: the broker uses" in broker.log()

    # A consumer drains the queue: the alarm clears, the producer finishes.
    consumer = RawClient(broker.tcp_port)
    consumer.sock.settimeout(60)
    consumer.send("SUBSCRIBE", {"destination": "/queue/mem", "id": "1", "ack": "auto"})
    seen = []
    while len(seen) < count:
        frame = consumer.read_frame(time.monotonic() + 60)
        assert frame.command == "MESSAGE", frame
        seen.append(int(frame.headers["seq"]))
    producer.join(60)
    stop.set()
    assert producer.error is None, producer.error
    assert producer.receipts == count
    assert seen == list(range(count))  # nothing lost, nothing twice, in order
    deadline = time.monotonic() + 20
    while json.loads(admin_get(admin, "/api/alarms")[1])["memory"]["active"]:
        assert time.monotonic() < deadline, "the alarm did not clear once the queue drained"
        time.sleep(0.1)
    assert admin_get(admin, "/readyz")[0] == 200
    assert "memory alarm cleared" in broker.log()
    assert "Traceback" not in broker.log()
    consumer.sock.close()
    producer.client.sock.close()


def test_twistd_gives_freed_heap_back_every_thirty_seconds():
    from twisted.application.internet import TimerService
    from twisted.internet.task import Clock

    from stomptw import memalarm
    from stomptw.tap import Options, makeService

    options = Options()
    options.parseOptions(["--store", "memory", "--no-tcp", "--no-ws"])
    clock = Clock()
    service = makeService(options, reactor=clock)
    (trim,) = [s for s in service if isinstance(s, TimerService)]
    assert trim.step == memalarm.HEAP_TRIM_SECONDS == 30
    assert isinstance(trim.call[0], memalarm.HeapTrim)
    assert trim.clock is clock


def test_the_heap_is_trimmed_every_time_and_collected_after_connection_churn():
    from stomptw.memalarm import COLLECT_AFTER_SESSIONS, HeapTrim

    ended = [5]
    calls: list[str] = []
    heap = HeapTrim(
        ended=lambda: ended[0],
        trim=lambda: calls.append("trim"),
        collect=lambda: calls.append("collect"),
    )
    heap()
    assert calls == ["trim"]
    ended[0] += COLLECT_AFTER_SESSIONS - 1
    heap()
    assert calls == ["trim", "trim"]
    ended[0] += 1  # a storm of short connections left their cycles behind
    heap()
    assert calls == ["trim", "trim", "collect", "trim"] and heap.collections == 1
    heap()
    assert calls[-2:] == ["trim", "trim"] and heap.collections == 1


def test_an_ended_connection_is_counted():
    env = BrokerOnClock()
    client = env.connect()
    client.lose()
    assert env.broker.counters.sessions_ended == 1
    assert "stomptw_connections_closed_total 1" in render_metrics(env.broker)
