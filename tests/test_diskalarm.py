"""
The disk alarm (--disk-free-limit): under the limit, connections that send
persistent messages stop being read; everything else goes on; above the
limit plus a tenth, they are read again. Sans-IO, on a Clock, with the free
space the test says.
"""

from __future__ import annotations

from types import SimpleNamespace

from stomptw.diskalarm import DiskAlarm
from stomptw.testing import BrokerOnClock

LIMIT = 1_000_000


def on_clock(free: list[int]):
    env = BrokerOnClock()
    alarm = DiskAlarm(
        "data",
        LIMIT,
        env.clock,
        statvfs=lambda path: SimpleNamespace(f_bavail=free[0], f_frsize=1),
    )
    env.broker.disk_alarm = alarm
    alarm.start()
    return env, alarm


def test_persistent_producers_are_held_under_the_limit_and_read_again_above_it():
    free = [10 * LIMIT]
    env, alarm = on_clock(free)
    producer = env.connect()
    other = env.connect()
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/queue/q", id="1", ack="client-individual")
    free[0] = LIMIT - 1
    env.advance(1)
    assert alarm.active
    producer.send("SEND", b"kept", destination="/queue/q", persistent="true", receipt="p1")
    assert not producer.transport.reading  # held: the SEND was taken, no more is read
    assert producer.frame().headers["receipt-id"] == "p1"
    # Non-persistent messages, consumers and ACKs go on.
    other.send("SEND", b"light", destination="/queue/q", receipt="o1")
    assert other.frame().headers["receipt-id"] == "o1" and other.transport.reading
    delivered = consumer.frames()
    assert [f.body for f in delivered] == [b"kept", b"light"]
    for frame in delivered:
        consumer.send("ACK", id=frame.headers["ack"])
    assert env.broker.stats["acked"] == 2
    # Just above the limit is not enough (no flapping at the edge).
    free[0] = LIMIT + 1
    env.advance(1)
    assert alarm.active and not producer.transport.reading
    free[0] = 2 * LIMIT
    env.advance(1)
    assert not alarm.active and producer.transport.reading
    producer.send("SEND", b"again", destination="/queue/q", persistent="true", receipt="p2")
    assert producer.frame().headers["receipt-id"] == "p2"


def test_a_held_producer_that_goes_away_is_forgotten():
    free = [0]
    env, alarm = on_clock(free)
    producer = env.connect()
    env.advance(1)
    producer.send("SEND", b"x", destination="/queue/q", persistent="true")
    assert producer.session in alarm.blocked
    producer.lose()
    assert producer.session not in alarm.blocked
    free[0] = 2 * LIMIT
    env.advance(1)
    assert not alarm.active


def test_the_memory_store_has_no_disk_alarm_and_zero_turns_it_off():
    from stomptw.config import BrokerConfig
    from stomptw.service import makeService

    memory = makeService(BrokerConfig(store="memory", tcp_endpoints=[], ws_endpoints=[]))
    assert memory.broker.disk_alarm is None
    off = makeService(BrokerConfig(disk_free_limit=0, tcp_endpoints=[], ws_endpoints=[]))
    assert off.broker.disk_alarm is None
