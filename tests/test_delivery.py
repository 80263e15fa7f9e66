"""
End-to-end tests of the broker's delivery guarantees: delivery counts and
dead letters, expiry, prefetch, producer flow control (block and reject),
slow consumers, durable topic subscriptions and receipts for persistent
messages.

Every test runs a real broker in-process (``make_broker``) and talks to it
with stomp.py 1.2, raw sockets or websocket-client from a worker thread.
Broker state (queue lengths, stats) is read on the reactor thread with
``blockingCallFromThread``; waiting for the expiry sweep polls that state
with a deadline.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import pytest_twisted
from clients import (
    TIMEOUT,
    ClientPool,
    FrameReader,
    encode_frame,
    run_clients,
    unique,
    wait_until,
)
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread

from stomptw.broker import MESSAGE_OVERHEAD

KIB = 1024


def queue_name(prefix: str = "q") -> str:
    return "/queue/" + unique(prefix)


def topic_name(prefix: str = "t") -> str:
    return "/topic/" + unique(prefix)


def on_reactor(fn, *args):
    """Run ``fn`` on the reactor thread (from a worker thread) and return its result."""
    return blockingCallFromThread(reactor, fn, *args)


def stats(running) -> dict[str, int]:
    return on_reactor(lambda: dict(running.broker.stats))


def queue_state(running, name: str) -> tuple[int, int, int] | None:
    """(count, bytes, pending) of queue ``name``, None if the broker forgot it."""

    def read():
        dest = running.broker.destinations.get(name)
        if dest is None:
            return None
        return dest.count, dest.bytes, len(dest.pending)

    return on_reactor(read)


def queue_count(running, name: str) -> int:
    """Messages queue ``name`` holds (waiting and unacknowledged); 0 if forgotten."""
    state = queue_state(running, name)
    return 0 if state is None else state[0]


def now_ms() -> int:
    return int(time.time() * 1000)


def dlq_of(dest: str) -> str:
    return "/queue/DLQ." + dest.removeprefix("/queue/")


def read_until(raw, command: str):
    """Read frames from a raw socket until one with ``command``; return all."""
    frames = []
    while True:
        frame = raw.read_frame()
        frames.append(frame)
        if frame.command == command:
            return frames


def read_error_and_eof(raw, receipt_id: str):
    """Read an ERROR that answers ``receipt_id``, then the broker's close; return the ERROR."""
    frame = raw.read_frame()
    assert frame.command == "ERROR"
    assert frame.headers["receipt-id"] == receipt_id
    raw.wait_eof()
    return frame


# -- delivery count and redelivered ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delivery_count_and_redelivered_after_nack(make_broker):
    running = await make_broker()
    dest = queue_name()

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port)
        client.subscribe(dest, ack="client-individual")
        client.send(dest, "payload", headers={"x-user": "u1"}, receipt=True)
        first = client.next_message()
        assert first.headers["x-delivery-count"] == "0"
        assert "redelivered" not in first.headers
        assert first.headers["x-user"] == "u1"
        message = first
        for count in (1, 2, 3):
            client.nack(message)
            message = client.next_message()
            assert message.headers["redelivered"] == "true"
            assert message.headers["x-delivery-count"] == str(count)
            assert message.headers["message-id"] == first.headers["message-id"]
            assert message.body == "payload"
        client.ack(message)
        client.assert_no_message()
        assert queue_count(running, dest) == 0

    await run_clients(scenario)
    s = running.broker.stats
    assert (s["delivered"], s["redelivered"], s["nacked"], s["acked"]) == (4, 3, 3, 1)
    assert s["dead_lettered"] == 0


# -- dead letters ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_third_nack_moves_message_to_dead_letter_queue(make_broker):
    running = await make_broker(max_redeliveries=2)
    dest = queue_name("orders")

    def scenario(pool: ClientPool):
        consumer = pool.tcp(running.tcp_port)
        dead = pool.tcp(running.tcp_port)
        dead.subscribe(dlq_of(dest))
        consumer.subscribe(dest, ack="client-individual")
        consumer.send(
            dest,
            "body\x01é",
            headers={"x-user": "u1", "content-type": "text/plain;charset=utf-8"},
            receipt=True,
        )
        message = consumer.next_message()
        original_id = message.headers["message-id"]
        counts = [message.headers["x-delivery-count"]]
        for _ in range(2):
            consumer.nack(message)
            message = consumer.next_message()
            counts.append(message.headers["x-delivery-count"])
        assert counts == ["0", "1", "2"]
        dead.assert_no_message()
        consumer.nack(message)  # the third NACK: delivered 3 times > 2 redeliveries

        moved = dead.next_message()
        h = moved.headers
        assert h["destination"] == dlq_of(dest)
        assert h["x-first-death-queue"] == dest
        assert h["x-first-death-reason"] == "delivery_limit"
        assert h["x-death-reason"] == "delivery_limit"
        assert h["x-original-message-id"] == original_id
        assert h["message-id"] != original_id
        assert h["x-user"] == "u1"
        assert h["content-type"] == "text/plain;charset=utf-8"
        assert h["x-delivery-count"] == "0"
        assert "redelivered" not in h
        assert moved.body == "body\x01é"
        consumer.assert_no_message()
        dead.assert_no_message()
        assert queue_count(running, dest) == 0

    await run_clients(scenario)
    s = running.broker.stats
    assert s["dead_lettered"] == 1
    assert s["dropped"] == 0
    assert s["nacked"] == 3


@pytest_twisted.ensureDeferred
async def test_messages_returned_by_disconnect_count_towards_dead_letter(make_broker):
    running = await make_broker(max_redeliveries=2)
    dest = queue_name("returned")

    def scenario(pool: ClientPool):
        producer = pool.tcp(running.tcp_port)
        producer.send(dest, "m", headers={"x-user": "u"}, receipt=True)
        counts = []
        # Returned three ways: DISCONNECT, a dropped socket, UNSUBSCRIBE.
        for how in ("disconnect", "drop", "unsubscribe"):
            consumer = pool.tcp(running.tcp_port)
            sub_id = consumer.subscribe(dest, ack="client-individual")
            message = consumer.next_message()
            counts.append(message.headers["x-delivery-count"])
            if how == "disconnect":
                consumer.disconnect()
            elif how == "drop":
                consumer.drop()
            else:
                consumer.unsubscribe(sub_id)
        assert counts == ["0", "1", "2"]
        assert queue_count(running, dest) == 0
        dead = pool.tcp(running.tcp_port)
        dead.subscribe(dlq_of(dest))
        moved = dead.next_message()
        assert moved.headers["x-first-death-reason"] == "delivery_limit"
        assert moved.headers["x-first-death-queue"] == dest
        assert moved.headers["x-user"] == "u"
        assert moved.body == "m"

    await run_clients(scenario)
    assert running.broker.stats["dead_lettered"] == 1
    assert running.broker.stats["redelivered"] == 2


@pytest_twisted.ensureDeferred
async def test_empty_dead_letter_queue_drops_and_counts(make_broker):
    running = await make_broker(max_redeliveries=0, dead_letter_queue="")
    dest = queue_name("nodlq")

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port)
        client.subscribe(dest, ack="client-individual")
        client.send(dest, "gone", receipt=True)
        client.nack(client.next_message())
        client.assert_no_message()
        assert queue_count(running, dest) == 0
        names = on_reactor(lambda: list(running.broker.destinations))
        assert not [n for n in names if "DLQ" in n], names

    await run_clients(scenario)
    s = running.broker.stats
    assert s["dropped"] == 1
    assert s["dead_lettered"] == 0


@pytest_twisted.ensureDeferred
async def test_custom_dead_letter_template(make_broker):
    running = await make_broker(max_redeliveries=1, dead_letter_queue="/queue/dead.{name}")
    name = unique("custom")
    dest = "/queue/" + name

    def scenario(pool: ClientPool):
        dead = pool.tcp(running.tcp_port)
        dead.subscribe(f"/queue/dead.{name}")
        client = pool.tcp(running.tcp_port)
        client.subscribe(dest, ack="client-individual")
        client.send(dest, "x", receipt=True)
        client.nack(client.next_message())
        client.nack(client.next_message())
        moved = dead.next_message()
        assert moved.headers["destination"] == f"/queue/dead.{name}"
        assert moved.headers["x-first-death-queue"] == dest
        assert moved.body == "x"
        client.assert_no_message()

    await run_clients(scenario)
    assert running.broker.stats["dead_lettered"] == 1


@pytest_twisted.ensureDeferred
async def test_unlimited_redeliveries_never_dead_letter(make_broker):
    running = await make_broker(max_redeliveries=-1)
    dest = queue_name("forever")

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port)
        client.subscribe(dest, ack="client-individual")
        client.send(dest, "again", receipt=True)
        message = client.next_message()
        for _ in range(10):
            client.nack(message)
            message = client.next_message()
        assert message.headers["x-delivery-count"] == "10"
        assert message.headers["redelivered"] == "true"
        client.ack(message)
        client.assert_no_message()

    await run_clients(scenario)
    s = running.broker.stats
    assert s["dead_lettered"] == 0
    assert s["dropped"] == 0
    assert s["redelivered"] == 10


# -- expiry ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_message_expired_on_arrival_is_never_delivered(make_broker):
    running = await make_broker()
    dest = queue_name("past")

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port)
        client.subscribe(dest)
        client.send(dest, "stale", headers={"expires": str(now_ms() - 10_000)}, receipt=True)
        client.send(dest, "fresh", receipt=True)
        assert client.next_message().body == "fresh"
        client.assert_no_message()

    await run_clients(scenario)
    s = running.broker.stats
    assert s["expired"] == 1
    assert s["delivered"] == 1


@pytest_twisted.ensureDeferred
async def test_future_expiry_is_delivered_with_its_header(make_broker):
    running = await make_broker()
    dest = queue_name("future")
    expires = str(now_ms() + 3_600_000)

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port)
        client.subscribe(dest)
        client.send(dest, "later", headers={"expires": expires}, receipt=True)
        message = client.next_message()
        assert message.headers["expires"] == expires
        assert message.body == "later"

    await run_clients(scenario)
    assert running.broker.stats["expired"] == 0


@pytest_twisted.ensureDeferred
async def test_default_ttl_adds_expires_header(make_broker):
    running = await make_broker(default_ttl_ms=60_000)
    dest = queue_name("ttl")

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port)
        client.subscribe(dest)
        before = now_ms()
        client.send(dest, "ttl", receipt=True)
        after = now_ms()
        message = client.next_message()
        expires = int(message.headers["expires"])
        assert before + 60_000 <= expires <= after + 60_000
        # An explicit expires wins over the default.
        explicit = str(now_ms() + 3_600_000)
        client.send(dest, "own", headers={"expires": explicit}, receipt=True)
        assert client.next_message().headers["expires"] == explicit

    await run_clients(scenario)


@pytest.mark.parametrize("dead_letter_expired", [False, True])
@pytest_twisted.ensureDeferred
async def test_sweep_removes_expired_message_from_unconsumed_queue(
    make_broker, dead_letter_expired
):
    running = await make_broker(expiry_interval=0.05, dead_letter_expired=dead_letter_expired)
    dest = queue_name("sweep")

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port)
        client.send(
            dest,
            "short",
            headers={"expires": str(now_ms() + 300), "x-user": "u"},
            receipt=True,
        )
        client.send(dest, "long", receipt=True)
        state = queue_state(running, dest)
        assert state is not None and state[0] == 2, state
        wait_until(lambda: stats(running)["expired"] == 1, "expiry by the sweep")
        assert queue_state(running, dest)[0] == 1
        client.subscribe(dest)
        assert client.next_message().body == "long"
        client.assert_no_message()
        dead = pool.tcp(running.tcp_port)
        if dead_letter_expired:
            dead.subscribe(dlq_of(dest))
            moved = dead.next_message()
            assert moved.body == "short"
            assert moved.headers["x-first-death-reason"] == "expired"
            assert moved.headers["x-death-reason"] == "expired"
            assert moved.headers["x-first-death-queue"] == dest
            assert moved.headers["x-user"] == "u"
            # It must not expire again in the DLQ.
            assert "expires" not in moved.headers
        else:
            assert queue_state(running, dlq_of(dest)) is None

    await run_clients(scenario)
    s = running.broker.stats
    assert s["expired"] == 1
    assert s["dead_lettered"] == (1 if dead_letter_expired else 0)


@pytest.mark.parametrize("value", ["soon", "-5", "12.5", ""])
@pytest_twisted.ensureDeferred
async def test_invalid_expires_header_is_an_error(make_broker, value):
    running = await make_broker()
    dest = queue_name("badexp")

    def scenario(pool: ClientPool):
        raw = pool.raw(running.tcp_port)
        raw.connect()
        raw.send("SEND", {"destination": dest, "expires": value, "receipt": "r-1"}, b"x")
        frame = read_error_and_eof(raw, "r-1")
        assert "expires" in frame.headers["message"]
        assert queue_count(running, dest) == 0

    await run_clients(scenario)
    assert running.broker.stats["published"] == 0


# -- prefetch ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_queue_prefetch_limits_outstanding_messages(make_broker):
    running = await make_broker()
    dest = queue_name("prefetch")

    def scenario(pool: ClientPool):
        limited = pool.tcp(running.tcp_port)
        limited.subscribe(dest, ack="client-individual", **{"prefetch-count": "2"})
        for i in range(6):
            limited.send(dest, f"m{i}", receipt=True)
        got = limited.next_messages(2)
        assert [m.body for m in got] == ["m0", "m1"]
        limited.assert_no_message()
        assert queue_state(running, dest)[2] == 4  # waiting in the queue

        other = pool.tcp(running.tcp_port)
        other_id = other.subscribe(dest)
        assert [m.body for m in other.next_messages(4)] == ["m2", "m3", "m4", "m5"]
        limited.assert_no_message()

        limited.send(dest, "m6", receipt=True)
        limited.send(dest, "m7", receipt=True)
        # The limited consumer has 2 unacknowledged: both go to the other one.
        assert [m.body for m in other.next_messages(2)] == ["m6", "m7"]
        limited.assert_no_message()
        other.unsubscribe(other_id)

        limited.send(dest, "m8", receipt=True)
        limited.send(dest, "m9", receipt=True)
        limited.assert_no_message()
        limited.ack(got[0])
        third = limited.next_message()
        assert third.body == "m8"
        limited.assert_no_message()
        limited.ack(got[1])
        assert limited.next_message().body == "m9"

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_topic_prefetch_holds_back_and_catches_up_on_ack(make_broker):
    running = await make_broker()
    dest = topic_name("prefetch")

    def scenario(pool: ClientPool):
        sub = pool.tcp(running.tcp_port)
        sub.subscribe(dest, ack="client-individual", **{"prefetch-count": "1"})
        fast = pool.tcp(running.tcp_port)
        fast.subscribe(dest)
        producer = pool.tcp(running.tcp_port)
        for i in range(4):
            producer.send(dest, f"t{i}", receipt=True)
        assert [m.body for m in fast.next_messages(4)] == ["t0", "t1", "t2", "t3"]
        bodies = []
        message = sub.next_message()
        for _ in range(3):
            bodies.append(message.body)
            sub.assert_no_message()
            sub.ack(message)
            message = sub.next_message()
        bodies.append(message.body)
        assert bodies == ["t0", "t1", "t2", "t3"]
        sub.ack(message)
        sub.assert_no_message()

    await run_clients(scenario)
    assert running.broker.stats["dropped"] == 0


@pytest_twisted.ensureDeferred
async def test_default_prefetch_applies_without_header(make_broker):
    running = await make_broker(default_prefetch=1)
    dest = queue_name("defprefetch")

    def scenario(pool: ClientPool):
        client = pool.tcp(running.tcp_port)
        client.subscribe(dest, ack="client-individual")
        for i in range(3):
            client.send(dest, f"m{i}", receipt=True)
        first = client.next_message()
        assert first.body == "m0"
        client.assert_no_message()
        client.ack(first)
        second = client.next_message()
        assert second.body == "m1"
        client.assert_no_message()
        client.ack(second)
        assert client.next_message().body == "m2"
        # An explicit prefetch-count:0 means no limit.
        auto = pool.tcp(running.tcp_port)
        auto.subscribe(dest, ack="client-individual", **{"prefetch-count": "0"})
        client.send(dest, "a", receipt=True)
        client.send(dest, "b", receipt=True)
        assert [m.body for m in auto.next_messages(2)] == ["a", "b"]

    await run_clients(scenario)


# -- producer flow control: block ------------------------------------------------------------


def _pipelined_sends(dest: str, count: int, prefix: str = "m") -> bytes:
    return b"".join(
        encode_frame("SEND", {"destination": dest, "receipt": f"r{i}"}, f"{prefix}{i}".encode())
        for i in range(count)
    )


def _blocked_producers(running, dest: str) -> int:
    def read():
        queue = running.broker.destinations.get(dest)
        return len(queue.blocked) if queue is not None else 0

    return on_reactor(read)


@pytest_twisted.ensureDeferred
async def test_block_overflow_throttles_pipelining_producer(make_broker):
    running = await make_broker(max_queue_length=100, overflow="block")
    dest = queue_name("block")
    total = 1000

    def scenario(pool: ClientPool):
        producer = pool.raw(running.tcp_port)
        producer.connect()
        data = _pipelined_sends(dest, total)
        sender = threading.Thread(target=producer.send_bytes, args=(data,), daemon=True)
        sender.start()
        wait_until(lambda: _blocked_producers(running, dest) == 1, "producer blocked")
        # The broker stopped reading at the limit: exactly 100 accepted.
        receipts = [producer.read_frame() for _ in range(100)]
        assert [f.headers["receipt-id"] for f in receipts] == [f"r{i}" for i in range(100)]
        assert queue_state(running, dest)[0] == 100
        # Nothing more was answered while the queue is full.
        producer.sock.setblocking(False)
        try:
            extra = producer.sock.recv(65536)
        except BlockingIOError:
            extra = b""
        producer.sock.setblocking(True)
        producer.sock.settimeout(TIMEOUT)
        assert extra == b""
        assert queue_state(running, dest)[0] == 100
        assert stats(running)["producers_blocked"] >= 1

        consumer = pool.tcp(running.tcp_port)
        consumer.subscribe(dest, ack="client-individual", **{"prefetch-count": "50"})
        bodies = []
        high = 0
        while len(bodies) < total:
            batch = consumer.next_messages(min(50, total - len(bodies)))
            bodies.extend(m.body for m in batch)
            state = queue_state(running, dest)
            if state is not None:
                high = max(high, state[0])
            for m in batch:
                consumer.conn.ack(m.headers["ack"])
        assert bodies == [f"m{i}" for i in range(total)]
        assert high <= 100, high
        sender.join(TIMEOUT)
        assert not sender.is_alive()
        rest = [producer.read_frame() for _ in range(total - 100)]
        assert [f.headers["receipt-id"] for f in rest] == [f"r{i}" for i in range(100, total)]
        consumer.assert_no_message()

    await run_clients(scenario)
    s = running.broker.stats
    assert s["producers_blocked"] >= 1
    assert s["delivered"] == total


@pytest_twisted.ensureDeferred
async def test_blocked_producer_is_not_timed_out_for_heartbeats(make_broker):
    running = await make_broker(
        max_queue_length=5, overflow="block", heartbeat_send_ms=100, heartbeat_receive_ms=100
    )
    dest = queue_name("hb")

    def scenario(pool: ClientPool):
        producer = pool.raw(running.tcp_port)
        # The client sends heart-beats every 200 ms; the broker expects them
        # (and times out after 200 ms x heartbeat_grace without input).
        connected = producer.connect(**{"heart-beat": "200,0"})
        assert connected.headers["heart-beat"] == "0,200"
        # A control session with the same heart-beats that goes silent.
        silent = pool.raw(running.tcp_port)
        silent.connect(**{"heart-beat": "200,0"})
        producer.send_bytes(_pipelined_sends(dest, 10))
        wait_until(lambda: _blocked_producers(running, dest) == 1, "producer blocked")
        # Keep beating as a client should, for ~1.5 s (well over the 0.6 s
        # timeout) while the broker does not read anything.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            producer.send_bytes(b"\n")
            time.sleep(0.15)
        assert _blocked_producers(running, dest) == 1
        # The timeout is real: the silent session was dropped meanwhile.
        error = silent.read_frame()
        assert (error.command, error.headers["message"]) == ("ERROR", "heart-beat timeout")
        receipts = [producer.read_frame() for _ in range(5)]
        assert [f.command for f in receipts] == ["RECEIPT"] * 5

        consumer = pool.tcp(running.tcp_port)
        consumer.subscribe(dest)
        assert [m.body for m in consumer.next_messages(10)] == [f"m{i}" for i in range(10)]
        rest = [producer.read_frame() for _ in range(5)]
        assert [f.headers.get("receipt-id") for f in rest] == [f"r{i}" for i in range(5, 10)]
        producer.send("SEND", {"destination": dest, "receipt": "after"}, b"after")
        frame = producer.read_frame()
        assert (frame.command, frame.headers.get("receipt-id")) == ("RECEIPT", "after")
        assert consumer.next_message().body == "after"

    await run_clients(scenario)
    assert running.broker.stats["producers_blocked"] >= 1


# -- producer flow control: reject ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_reject_overflow_answers_error_and_keeps_queue(make_broker):
    running = await make_broker(max_queue_length=3, overflow="reject")
    dest = queue_name("reject")

    def scenario(pool: ClientPool):
        producer = pool.raw(running.tcp_port)
        producer.connect()
        producer.send_bytes(_pipelined_sends(dest, 4))
        frames = [producer.read_frame() for _ in range(4)]
        assert [f.command for f in frames] == ["RECEIPT"] * 3 + ["ERROR"]
        error = frames[-1]
        assert error.headers["message"] == f"destination {dest} is full"
        assert error.headers["receipt-id"] == "r3"
        producer.wait_eof()
        assert queue_state(running, dest)[0] == 3
        consumer = pool.tcp(running.tcp_port)
        consumer.subscribe(dest)
        assert [m.body for m in consumer.next_messages(3)] == ["m0", "m1", "m2"]
        consumer.assert_no_message()

    await run_clients(scenario)
    s = running.broker.stats
    assert s["rejected"] == 1
    assert s["delivered"] == 3


@pytest_twisted.ensureDeferred
async def test_reject_at_byte_limit_edge(make_broker):
    # Each message counts body + header names and values + overhead: 1000.
    headers_size = len("x-h") + len("abc")
    body = b"b" * (1000 - MESSAGE_OVERHEAD - headers_size)
    running = await make_broker(max_queue_bytes=3000, overflow="reject")
    dest = queue_name("bytes")

    def scenario(pool: ClientPool):
        producer = pool.raw(running.tcp_port)
        producer.connect()
        for i in range(3):
            producer.send("SEND", {"destination": dest, "x-h": "abc", "receipt": f"r{i}"}, body)
            frame = producer.read_frame()
            assert frame.command == "RECEIPT", frame
            assert queue_state(running, dest)[:2] == (i + 1, 1000 * (i + 1))
        # 3000 bytes held, the limit is 3000: full.
        producer.send("SEND", {"destination": dest, "x-h": "abc", "receipt": "r3"}, b"")
        frame = read_error_and_eof(producer, "r3")
        assert frame.headers["message"] == f"destination {dest} is full"
        assert queue_state(running, dest)[:2] == (3, 3000)

        # One byte under the limit: a message is still accepted (and may go over).
        consumer = pool.tcp(running.tcp_port)
        consumer.subscribe(dest, ack="client-individual")
        got = consumer.next_messages(3)
        assert [m.body for m in got] == [body.decode()] * 3
        consumer.ack(got[0])
        second = pool.raw(running.tcp_port)
        second.connect()
        second.send("SEND", {"destination": dest, "x-h": "abc", "receipt": "s0"}, body + b"b" * 999)
        assert second.read_frame().headers.get("receipt-id") == "s0"
        assert queue_state(running, dest)[:2] == (3, 3999)

    await run_clients(scenario)
    assert running.broker.stats["rejected"] == 1


# -- slow consumers ------------------------------------------------------------------------------


def pin_broker_send_buffer(running, client_sock: socket.socket, size: int = 32 * KIB) -> None:
    """
    Fix the kernel send buffer of the broker's end of ``client_sock``'s
    connection. Linux autotunes loopback send buffers up to megabytes, which
    would hide the broker's own flow control behind the kernel's: a stalled
    reader would absorb dozens of 64 KiB messages before the broker's output
    buffer even starts to fill.
    """
    port = client_sock.getsockname()[1]

    def pin() -> bool:
        for session in running.broker.sessions:
            transport = session.transport
            for _ in range(4):
                sock = getattr(transport, "socket", None)
                if isinstance(sock, socket.socket):
                    if transport.getPeer().port == port:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
                        return True
                    break
                transport = getattr(transport, "transport", None)
                if transport is None:
                    break
        return False

    assert on_reactor(pin), "broker side of the connection not found"


def _stalled_raw_subscriber(pool: ClientPool, running, dest: str):
    """A raw socket client that subscribes to ``dest`` and then stops reading."""
    raw = pool.raw(running.tcp_port)
    raw.connect()
    pin_broker_send_buffer(running, raw.sock)
    raw.send("SUBSCRIBE", {"destination": dest, "id": "stalled", "receipt": "sub"})
    frame = raw.read_frame()
    assert frame.command == "RECEIPT"
    return raw


def _stalled_ws_subscriber(pool: ClientPool, running, dest: str):
    """A websocket-client STOMP session that subscribes and then stops reading."""
    ws = pool.websocket(running.ws_url, ["v12.stomp"])
    ws.connect()
    pin_broker_send_buffer(running, ws.ws.sock)
    ws.send_frame("SUBSCRIBE", {"destination": dest, "id": "stalled", "receipt": "sub"})
    assert ws.recv_frame()[1].command == "RECEIPT"
    return ws


def _raw_frames_until_closed(raw) -> list:
    """Every frame a raw socket still gets, up to the broker closing it."""
    frames = []
    while True:
        try:
            frames.append(raw.read_frame())
        except Exception as e:  # ConnectionClosed at EOF
            assert type(e).__name__ == "ConnectionClosed", e
            return frames


def _ws_frames_until_closed(ws) -> list:
    """Every frame a websocket still gets, up to the broker's close message."""
    frames = []
    while True:
        opcode, data = ws.recv_message()
        if opcode == 8:  # close
            return frames
        reader = FrameReader()
        reader.feed(data)
        frames.append(reader.next_frame())


#: transport of the stalled subscriber -> (how to open it, how to read it to the end)
STALLED = {
    "tcp": (_stalled_raw_subscriber, _raw_frames_until_closed),
    "websocket": (_stalled_ws_subscriber, _ws_frames_until_closed),
}


def _send_many(producer, dest: str, count: int, size: int, keep_up=None) -> None:
    """
    Send ``count`` messages; with ``keep_up`` (a reading client), never more
    than a few ahead of what it received, so that it is never a slow consumer.
    """
    for i in range(count):
        body = f"{i:06d}".encode() + b"x" * (size - 6)
        producer.send(dest, body, headers={"seq": str(i)}, receipt=i % 10 == 9)
        if keep_up is not None:
            wait_until(lambda i=i: keep_up.listener.messages.qsize() >= i - 2, "reader keeps up")


def _publish_past_stalled(pool: ClientPool, running, dest: str, total: int, transport: str):
    """
    A subscriber over ``transport`` that stops reading, one (stomp.py, TCP)
    that reads, and a producer; ``total`` 64 KiB messages are published to
    ``dest``. Returns (stalled, reader, producer).
    """
    stalled = STALLED[transport][0](pool, running, dest)
    reader = pool.tcp(running.tcp_port)
    reader.subscribe(dest)
    producer = pool.tcp(running.tcp_port)
    # The reader on a topic must keep up, or it would be a slow consumer too.
    keep_up = reader if dest.startswith("/topic/") else None
    _send_many(producer, dest, total, 64 * KIB, keep_up)
    return stalled, reader, producer


@pytest.mark.parametrize("transport", ["tcp", "websocket"])
@pytest_twisted.ensureDeferred
async def test_stalled_queue_consumer_gets_few_messages(make_broker, transport):
    running = await make_broker(write_high_water=16 * KIB)
    dest = queue_name("stall")
    total = 60

    def scenario(pool: ClientPool):
        _, normal, _ = _publish_past_stalled(pool, running, dest, total, transport)
        wait_until(lambda: stats(running)["delivered"] == total, "all delivered")
        normal.barrier()
        got = []
        while not normal.listener.messages.empty():
            got.append(int(normal.listener.messages.get_nowait().headers["seq"]))
        stalled = total - len(got)
        # It took messages until its output buffer went over the mark; then
        # the broker stopped handing it any.
        assert 1 <= stalled <= 4, stalled
        assert got == sorted(got)
        assert len(set(got)) == len(got)

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_stalled_topic_subscriber_drop_oldest(make_broker):
    running = await make_broker(
        write_high_water=16 * KIB, slow_topic_limit=10, slow_topic_policy="drop-oldest"
    )
    dest = topic_name("dropold")
    total = 80

    def scenario(pool: ClientPool):
        _, fast, _ = _publish_past_stalled(pool, running, dest, total, "tcp")
        got = [int(m.headers["seq"]) for m in fast.next_messages(total)]
        assert got == list(range(total))

        def stalled_state():
            topic = running.broker.destinations[dest]
            (sub,) = [s for s in topic.subscriptions if s.id == "stalled"]
            return len(sub.backlog), sub.dropped

        backlog, dropped = on_reactor(stalled_state)
        s = stats(running)
        assert backlog <= 10
        assert dropped == s["slow_consumer_dropped"] > 0
        # Every message went to the stalled subscriber, its backlog, or was dropped.
        assert s["delivered"] - total + backlog + dropped == total
        assert s["slow_consumer_disconnected"] == 0

    await run_clients(scenario)


@pytest.mark.parametrize(
    ("transport", "total"), [("tcp", 80), ("websocket", 60)], ids=["tcp", "websocket"]
)
@pytest_twisted.ensureDeferred
async def test_stalled_topic_subscriber_disconnected(make_broker, transport, total):
    running = await make_broker(
        write_high_water=16 * KIB, slow_topic_limit=10, slow_topic_policy="disconnect"
    )
    dest = topic_name("disc")

    def scenario(pool: ClientPool):
        stalled, fast, producer = _publish_past_stalled(pool, running, dest, total, transport)
        got = [int(m.headers["seq"]) for m in fast.next_messages(total)]
        assert got == list(range(total))
        wait_until(lambda: stats(running)["slow_consumer_disconnected"] == 1, "disconnect")
        # The ERROR is behind whatever was buffered for it: read all to the close.
        frames = STALLED[transport][1](stalled)
        assert frames[-1].command == "ERROR"
        assert frames[-1].headers["message"] == "slow consumer"
        assert all(f.command == "MESSAGE" for f in frames[:-1])
        seqs = [int(f.headers["seq"]) for f in frames[:-1]]
        assert seqs == list(range(len(seqs)))
        assert len(seqs) < total
        # The producer and the fast subscriber carry on.
        producer.send(dest, "after", receipt=True)
        assert fast.next_message().body == "after"
        assert producer.listener.errors.empty()
        assert fast.listener.errors.empty()

    await run_clients(scenario)
    assert running.broker.stats["slow_consumer_disconnected"] == 1


# -- slow topic subscribers under --slow-topic-policy block (the default) ----------------------

# A publisher whose message takes a subscriber's backlog to --slow-topic-limit is
# blocked (the broker stops reading from it) until every backlog is back under
# 90% of the limit; a subscriber that holds it blocked for --slow-topic-timeout
# seconds is disconnected. The stalled subscriber is a raw socket whose broker
# side has a small, fixed send buffer (pin_broker_send_buffer).

BODY = 64 * KIB


LIMIT = 10


def _body(seq: int) -> bytes:
    return f"{seq:06d}".encode() + b"x" * (BODY - 6)


def _raw_producer(pool: ClientPool, port: int, dest: str, total: int, done: threading.Event):
    """
    A raw-socket producer that sends ``total`` messages (the last with a
    receipt) from its own thread, as fast as the broker reads them; ``done``
    is set once the receipt arrives.
    """
    raw = pool.raw(port)
    raw.connect()
    raw.sock.settimeout(4 * TIMEOUT)

    def push():
        for seq in range(total):
            headers = {"destination": dest, "seq": str(seq)}
            if seq == total - 1:
                headers["receipt"] = "last"
            raw.send("SEND", headers, _body(seq))
        frame = raw.read_frame()
        assert frame.command == "RECEIPT", frame
        done.set()

    thread = threading.Thread(target=push, daemon=True)
    thread.start()
    return raw, thread


def _read_messages(raw, count: int) -> list[int]:
    seqs = []
    while len(seqs) < count:
        frame = raw.read_frame()
        assert frame.command == "MESSAGE", frame
        seqs.append(int(frame.headers["seq"]))
    return seqs


def _published_settles(running, below: int) -> int:
    """Wait until the broker stops taking messages (under ``below``); return the count."""
    last = -1
    while True:
        now = stats(running)["published"]
        if now == last:
            assert now < below, now
            return now
        last = now
        time.sleep(0.3)


def _publisher_blocked_by_stalled_subscriber(pool: ClientPool, running, dest: str, total: int):
    """
    A subscriber that never reads, one that does (stomp.py), and a raw
    producer of ``total`` messages, started and blocked by the first;
    returns (stalled, reader, done, producer thread).
    """
    stalled = _stalled_raw_subscriber(pool, running, dest)
    reader = pool.tcp(running.tcp_port)
    reader.subscribe(dest)
    done = threading.Event()
    _, thread = _raw_producer(pool, running.tcp_port, dest, total, done)
    wait_until(lambda: stats(running)["producers_blocked"] > 0, "producer blocked")
    return stalled, reader, done, thread


@pytest_twisted.ensureDeferred
async def test_fast_publisher_is_paused_and_nothing_is_lost(make_broker):
    running = await make_broker(write_high_water=16 * KIB, slow_topic_limit=LIMIT)
    dest = topic_name("block")
    total = 80

    def scenario(pool: ClientPool):
        stalled, reader, done, thread = _publisher_blocked_by_stalled_subscriber(
            pool, running, dest, total
        )
        # The broker stopped reading from the producer: its SENDs wait.
        published = _published_settles(running, total)
        assert published <= 2 * LIMIT + 8, published
        assert not done.is_set()
        # The reader got what was published, no more.
        got = [int(m.headers["seq"]) for m in reader.next_messages(published)]
        assert got == list(range(published))
        # The stalled subscriber reads: everything flows, nothing dropped.
        assert _read_messages(stalled, total) == list(range(total))
        assert done.wait(TIMEOUT), "the producer's receipt"
        thread.join(TIMEOUT)
        got += [int(m.headers["seq"]) for m in reader.next_messages(total - published)]
        assert got == list(range(total))
        s = stats(running)
        assert s["published"] == total
        assert s["slow_consumer_dropped"] == s["dropped"] == 0
        assert s["slow_consumer_disconnected"] == 0

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_publisher_that_subscribes_to_its_topic_does_not_deadlock(make_broker):
    running = await make_broker(write_high_water=16 * KIB, slow_topic_limit=LIMIT)
    dest = topic_name("self")
    total = 2 * LIMIT - 4

    def scenario(pool: ClientPool):
        # It subscribes, then publishes without reading: what it sends piles
        # up for itself only; the broker must keep reading from it.
        raw = _stalled_raw_subscriber(pool, running, dest)
        for seq in range(total):
            headers = {"destination": dest, "seq": str(seq)}
            if seq == total - 1:
                headers["receipt"] = "last"
            raw.send("SEND", headers, _body(seq))
        seqs = []
        while True:
            frame = raw.read_frame()
            if frame.command == "RECEIPT":
                break
            assert frame.command == "MESSAGE", frame
            seqs.append(int(frame.headers["seq"]))
        seqs += _read_messages(raw, total - len(seqs))
        assert seqs == list(range(total))
        s = stats(running)
        assert s["producers_blocked"] == 0
        assert s["slow_consumer_dropped"] == 0

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_subscribing_publisher_blocked_by_another_reads_its_own(make_broker):
    running = await make_broker(write_high_water=16 * KIB, slow_topic_limit=LIMIT)
    dest = topic_name("selfother")
    total = 60

    def scenario(pool: ClientPool):
        stalled = _stalled_raw_subscriber(pool, running, dest)
        # A stomp.py client reads in its own thread while it publishes.
        producer = pool.tcp(running.tcp_port)
        producer.subscribe(dest)
        sender = threading.Thread(
            target=lambda: [
                producer.send(dest, _body(seq), headers={"seq": str(seq)}) for seq in range(total)
            ],
            daemon=True,
        )
        sender.start()
        wait_until(lambda: stats(running)["producers_blocked"] > 0, "producer blocked")
        assert _read_messages(stalled, total) == list(range(total))
        sender.join(TIMEOUT)
        got = [int(m.headers["seq"]) for m in producer.next_messages(total)]
        assert got == list(range(total))
        assert stats(running)["slow_consumer_dropped"] == 0

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_timeout_disconnects_stuck_subscriber_and_publisher_resumes(make_broker):
    running = await make_broker(
        write_high_water=16 * KIB, slow_topic_limit=LIMIT, slow_topic_timeout=0.5
    )
    dest = topic_name("timeout")
    total = 80

    def scenario(pool: ClientPool):
        stalled, reader, done, thread = _publisher_blocked_by_stalled_subscriber(
            pool, running, dest, total
        )
        # Nobody reads the stalled subscriber: after 0.5 s it is disconnected
        # and the producer goes on to the end.
        assert done.wait(2 * TIMEOUT), "the producer's receipt"
        thread.join(TIMEOUT)
        got = [int(m.headers["seq"]) for m in reader.next_messages(total)]
        assert got == list(range(total))
        s = stats(running)
        assert s["slow_consumer_disconnected"] >= 1
        frames = _raw_frames_until_closed(stalled)
        assert frames[-1].command == "ERROR"
        assert frames[-1].headers["message"] == "slow consumer"
        assert "holding its publishers blocked" in frames[-1].body.decode()
        assert all(f.command == "MESSAGE" for f in frames[:-1])

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_commit_to_a_topic_is_accepted_then_blocks(make_broker):
    running = await make_broker(write_high_water=16 * KIB, slow_topic_limit=LIMIT)
    dest = topic_name("tx")
    count = 2 * LIMIT - 2

    def scenario(pool: ClientPool):
        stalled = _stalled_raw_subscriber(pool, running, dest)
        producer = pool.raw(running.tcp_port)
        producer.connect()
        producer.send("BEGIN", {"transaction": "tx"})
        for seq in range(count):
            producer.send(
                "SEND", {"destination": dest, "seq": str(seq), "transaction": "tx"}, _body(seq)
            )
        producer.send("COMMIT", {"transaction": "tx", "receipt": "commit"})
        frame = producer.read_frame()
        assert frame.command == "RECEIPT" and frame.headers["receipt-id"] == "commit", frame
        assert stats(running)["producers_blocked"] == 1
        # Blocked: the next frame waits until the subscriber catches up.
        producer.send(
            "SEND", {"destination": dest, "seq": str(count), "receipt": "after"}, _body(count)
        )
        time.sleep(0.3)
        assert stats(running)["published"] == count
        assert _read_messages(stalled, count + 1) == list(range(count + 1))
        frame = producer.read_frame()
        assert frame.headers["receipt-id"] == "after", frame
        assert stats(running)["slow_consumer_dropped"] == 0

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_default_broker_blocks_topic_publishers(make_broker):
    running = await make_broker()
    assert running.broker.config.slow_topic_policy == "block"
    assert running.broker.config.slow_topic_timeout == 30.0


# -- durable subscriptions ----------------------------------------------------------------


def _durable_headers(style: str, name: str) -> tuple[str, dict[str, str]]:
    """(subscription id, extra SUBSCRIBE headers) for a durable subscription ``name``."""
    if style == "activemq":
        return unique("sid"), {"activemq.subscriptionName": name}
    return name, {"durable": "true", "auto-delete": "false"}


def _connect_as(pool: ClientPool, running, client_id: str):
    """A stomp.py client connected with ``client-id`` (which durable subscriptions key on)."""
    client = pool.tcp(running.tcp_port, connect=False)
    client.connect(headers={"client-id": client_id})
    return client


@pytest.mark.parametrize("style", ["activemq", "rabbitmq"])
@pytest_twisted.ensureDeferred
async def test_durable_subscription_keeps_messages_while_away(make_broker, style):
    running = await make_broker()
    dest = topic_name("durable")
    client_id = unique("cid")
    name = unique("dsub")

    def scenario(pool: ClientPool):
        producer = pool.tcp(running.tcp_port)
        sub = _connect_as(pool, running, client_id)
        sub_id, headers = _durable_headers(style, name)
        sub.subscribe(dest, sub_id, **headers)
        producer.send(dest, "live", receipt=True)
        assert sub.next_message().body == "live"
        sub.disconnect()

        for i in range(3):
            producer.send(dest, f"away{i}", headers={"x-i": str(i)}, receipt=True)

        again = _connect_as(pool, running, client_id)
        again.subscribe(dest, sub_id, **headers)
        got = again.next_messages(3)
        assert [m.body for m in got] == ["away0", "away1", "away2"]
        assert [m.headers["x-i"] for m in got] == ["0", "1", "2"]
        assert all(m.headers["destination"] == dest for m in got)
        # A plain UNSUBSCRIBE keeps it as well.
        again.unsubscribe(sub_id)
        producer.send(dest, "kept", receipt=True)
        again.subscribe(dest, sub_id, **headers)
        assert again.next_message().body == "kept"
        again.assert_no_message()

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_durable_subscription_in_use_refuses_second_connection(make_broker):
    running = await make_broker()
    dest = topic_name("inuse")
    client_id = unique("cid")

    def scenario(pool: ClientPool):
        first = _connect_as(pool, running, client_id)
        first.subscribe(dest, "d1", **{"activemq.subscriptionName": "shared"})
        second = pool.raw(running.tcp_port)
        second.connect(**{"client-id": client_id})
        second.send(
            "SUBSCRIBE",
            {
                "destination": dest,
                "id": "d2",
                "activemq.subscriptionName": "shared",
                "receipt": "r",
            },
        )
        frame = read_error_and_eof(second, "r")
        assert "in use" in frame.headers["message"]
        # The first subscriber still receives.
        first.send(dest, "still", receipt=True)
        assert first.next_message().body == "still"

    await run_clients(scenario)


@pytest.mark.parametrize("style", ["activemq", "rabbitmq"])
@pytest_twisted.ensureDeferred
async def test_unsubscribe_durable_removes_it(make_broker, style):
    running = await make_broker()
    dest = topic_name("unsub")
    client_id = unique("cid")
    name = unique("dsub")

    def scenario(pool: ClientPool):
        sub = _connect_as(pool, running, client_id)
        sub_id, headers = _durable_headers(style, name)
        sub.subscribe(dest, sub_id, **headers)
        assert len(on_reactor(lambda: list(running.broker.durables))) == 1
        rid = unique("unsub")
        unsub_headers = {"receipt": rid}
        if style == "activemq":
            unsub_headers["activemq.subscriptionName"] = name
        else:
            unsub_headers["durable"] = "true"
        sub.conn.unsubscribe(id=sub_id, headers=unsub_headers)
        sub.listener.wait_receipt(rid)
        assert on_reactor(lambda: list(running.broker.durables)) == []
        sub.send(dest, "nobody", receipt=True)
        sub.subscribe(dest, sub_id, **headers)
        sub.assert_no_message()

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_durable_resubscribe_to_other_topic_replaces_it(make_broker):
    running = await make_broker()
    old_topic, new_topic = topic_name("old"), topic_name("new")
    client_id = unique("cid")
    headers = {"activemq.subscriptionName": "moving"}

    def scenario(pool: ClientPool):
        producer = pool.tcp(running.tcp_port)
        sub = _connect_as(pool, running, client_id)
        sub_id = sub.subscribe(old_topic, **headers)
        sub.unsubscribe(sub_id)
        producer.send(old_topic, "old-while-away", receipt=True)
        sub.subscribe(new_topic, **headers)
        producer.send(old_topic, "old-after", receipt=True)
        producer.send(new_topic, "new", receipt=True)
        message = sub.next_message()
        assert (message.body, message.headers["destination"]) == ("new", new_topic)
        sub.assert_no_message()
        durables = on_reactor(lambda: [d.topic for d in running.broker.durables.values()])
        assert durables == [new_topic]

    await run_clients(scenario)


# -- receipts for persistent messages --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_persistent_receipts_in_frame_order(make_broker, tmp_path):
    running = await make_broker(store="sqlite", data_dir=str(tmp_path))
    dest = queue_name("persist")
    total = 40

    def scenario(pool: ClientPool):
        producer = pool.raw(running.tcp_port)
        producer.connect()
        frames = []
        for i in range(total):
            headers = {"destination": dest, "receipt": f"r{i}"}
            if i % 3 != 2:
                headers["persistent"] = "true"
            frames.append(encode_frame("SEND", headers, f"m{i}".encode()))
        producer.send_bytes(b"".join(frames))
        receipts = [producer.read_frame() for _ in range(total)]
        assert [f.command for f in receipts] == ["RECEIPT"] * total
        assert [f.headers["receipt-id"] for f in receipts] == [f"r{i}" for i in range(total)]
        consumer = pool.tcp(running.tcp_port)
        consumer.subscribe(dest)
        got = consumer.next_messages(total)
        assert [m.body for m in got] == [f"m{i}" for i in range(total)]
        assert [m.headers.get("persistent") for m in got] == [
            None if i % 3 == 2 else "true" for i in range(total)
        ]

    await run_clients(scenario)
    assert running.broker.store.stats()["batches"] >= 1


@pytest_twisted.ensureDeferred
async def test_persistent_sends_in_transaction(make_broker, tmp_path):
    running = await make_broker(store="sqlite", data_dir=str(tmp_path))
    dest = queue_name("ptx")

    def scenario(pool: ClientPool):
        consumer = pool.tcp(running.tcp_port)
        # Unacknowledged, the messages stay in the store (not put and removed
        # in one commit batch).
        consumer.subscribe(dest, ack="client-individual")
        producer = pool.tcp(running.tcp_port)
        tx = producer.begin()
        for i in range(5):
            producer.send(
                dest,
                f"tx{i}",
                headers={"persistent": "true", "transaction": tx},
                receipt=True,
            )
        consumer.assert_no_message()
        assert queue_count(running, dest) == 0
        before = on_reactor(lambda: running.broker.store.stats()["batches"])
        producer.commit(tx)
        # COMMIT's receipt came after the commit of its persistent messages.
        assert on_reactor(lambda: running.broker.store.stats()["batches"]) > before
        got = consumer.next_messages(5)
        assert [m.body for m in got] == [f"tx{i}" for i in range(5)]
        assert all(m.headers["persistent"] == "true" for m in got)
        for m in got:
            consumer.ack(m)

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_disconnect_receipt_after_persistent_receipts(make_broker, tmp_path):
    running = await make_broker(store="sqlite", data_dir=str(tmp_path))
    dest = queue_name("pdisc")
    total = 20

    def scenario(pool: ClientPool):
        producer = pool.raw(running.tcp_port)
        producer.connect()
        data = b"".join(
            encode_frame(
                "SEND",
                {"destination": dest, "persistent": "true", "receipt": f"r{i}"},
                f"m{i}".encode(),
            )
            for i in range(total)
        )
        producer.send_bytes(data + encode_frame("DISCONNECT", {"receipt": "bye"}))
        frames = [producer.read_frame() for _ in range(total + 1)]
        assert [f.headers.get("receipt-id") for f in frames] == [
            *(f"r{i}" for i in range(total)),
            "bye",
        ]
        producer.wait_eof()
        assert queue_state(running, dest)[0] == total
        consumer = pool.tcp(running.tcp_port)
        consumer.subscribe(dest)
        assert [m.body for m in consumer.next_messages(total)] == [f"m{i}" for i in range(total)]

    await run_clients(scenario)


# -- regressions: broker bugs these tests found --------------------------------------


@pytest_twisted.ensureDeferred
async def test_commit_rejected_by_full_queue_publishes_nothing(make_broker):
    running = await make_broker(max_queue_length=2, overflow="reject")
    dest = queue_name("txreject")

    def scenario(pool: ClientPool):
        raw = pool.raw(running.tcp_port)
        raw.connect()
        data = encode_frame("BEGIN", {"transaction": "t"})
        for i in range(3):
            data += encode_frame("SEND", {"destination": dest, "transaction": "t"}, b"m%d" % i)
        raw.send_bytes(data + encode_frame("COMMIT", {"transaction": "t", "receipt": "c"}))
        read_error_and_eof(raw, "c")
        # A failed COMMIT must not have published part of the transaction.
        assert queue_count(running, dest) == 0

    await run_clients(scenario)


@pytest_twisted.ensureDeferred
async def test_error_does_not_swallow_pending_persistent_receipt(make_broker, tmp_path):
    running = await make_broker(store="sqlite", data_dir=str(tmp_path))
    dest = queue_name("pendingreceipt")

    def scenario(pool: ClientPool):
        raw = pool.raw(running.tcp_port)
        raw.connect()
        raw.send_bytes(
            encode_frame(
                "SEND", {"destination": dest, "persistent": "true", "receipt": "r1"}, b"kept"
            )
            + encode_frame("SEND", {"destination": dest, "expires": "x", "receipt": "r2"}, b"bad")
        )
        frames = read_until(raw, "ERROR")
        raw.wait_eof()
        # The first message was accepted (it is in the queue) ...
        assert queue_count(running, dest) == 1
        # ... so its RECEIPT must come, before the ERROR for the second.
        assert [(f.command, f.headers.get("receipt-id")) for f in frames] == [
            ("RECEIPT", "r1"),
            ("ERROR", "r2"),
        ]

    await run_clients(scenario)
