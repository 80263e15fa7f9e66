"""
The broker's memory stays bounded when a fast producer meets a subscriber
that never reads.

Each test runs a real broker as a ``twistd -n stomptw`` subprocess (the
repository's code, ``--store memory``, small limits) and reads its resident
set size from ``/proc/<pid>/status`` while one producer on a raw socket
pushes 64 KiB messages as fast as the broker takes them:

* to a queue whose only subscriber (auto ack, tiny receive buffer) never
  reads its socket: the queue fills up to ``--max-queue-bytes`` and the
  broker stops reading from the producer (overflow ``block``);
* to a topic with such a subscriber: the broker keeps reading, holds back at
  most ``--slow-topic-limit`` messages for it and drops the oldest;
* to a queue whose subscriber is a WebSocket client that never reads.

The peak RSS growth must stay under a bound derived from the limits
(``max-queue-bytes + 2 x write-high-water`` plus allocator slack), although
the producer offers far more data than that.

Three more cases cover a client that sends SENDs with receipts and never
reads its RECEIPTs (the broker stops reading from it), a topic subscriber in
``client-individual`` mode that reads but never ACKs (its unacknowledged
messages are capped, then the slow-subscriber policy applies), and a
transaction that is never committed (refused past --max-transaction-bytes).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websocket
from clients import FrameReader, RawFrame, encode_frame

from stomptw.config import BrokerConfig

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the broker's RSS from /proc"
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
LOCALHOST = "127.0.0.1"

MiB = 1024 * 1024
MAX_QUEUE_BYTES = 8 * MiB
WRITE_HIGH_WATER = 256 * 1024
SLOW_TOPIC_LIMIT = 16
BODY_SIZE = 64 * 1024
#: Room for the allocator, Python's heap growth and the parser's buffers.
SLACK = 40 * MiB
RSS_BOUND = MAX_QUEUE_BYTES + 2 * WRITE_HIGH_WATER + SLACK
#: What the producer offers: far more than any limit.
OFFERED = 256 * MiB
#: The producer gives up once the broker has not read for this long.
STALL = 1.5
#: Upper bound on one push, whatever happens.
PUSH_TIME = 12.0
TIMEOUT = 10.0

BROKER_ARGS = [
    "--store",
    "memory",
    "--max-queue-bytes",
    str(MAX_QUEUE_BYTES),
    "--write-high-water",
    str(WRITE_HIGH_WATER),
    "--slow-topic-limit",
    str(SLOW_TOPIC_LIMIT),
    "--slow-topic-policy",
    "drop-oldest",
    "--overflow",
    "block",
    "--heartbeat",
    "0,0",
]


# -- the broker subprocess ---------------------------------------------------------------


class BrokerProcess:
    """``twistd -n stomptw`` on ephemeral loopback ports, running the repo's code."""

    def __init__(self, tmp_path: Path, extra_args: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self.log_path = tmp_path / "broker.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "stomptw",
                "--tcp",
                f"tcp:0:interface={LOCALHOST}",
                "--ws",
                f"tcp:0:interface={LOCALHOST}",
                "--data-dir",
                str(tmp_path / "data"),
                *extra_args,
            ],
            cwd=tmp_path,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.tcp_port, self.ws_port = self._wait_for_ports()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_for_ports(self) -> tuple[int, int]:
        deadline = time.monotonic() + 20
        pattern = re.compile(r"(stomp|ws) listening on \S+ \(127\.0\.0\.1:(\d+)\)")
        while time.monotonic() < deadline:
            ports = {name: int(port) for name, port in pattern.findall(self.log())}
            if "stomp" in ports and "ws" in ports:
                return ports["stomp"], ports["ws"]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"broker did not start listening:\n{self.log()}")

    def rss(self) -> int:
        """The broker's resident set size in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match.group(1)) * 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def start_broker(tmp_path):
    started: list[BrokerProcess] = []

    def start(*extra_args: str) -> BrokerProcess:
        broker = BrokerProcess(tmp_path, [*BROKER_ARGS, *extra_args])
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


# -- raw STOMP clients --------------------------------------------------------------------


class RawClient:
    """A STOMP 1.2 session on a plain socket (no heart-beats)."""

    def __init__(self, port: int, rcvbuf: int = 0, sndbuf: int = 0) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(TIMEOUT)
        sock.connect((LOCALHOST, port))
        self.sock = sock
        self.reader = FrameReader()
        self.send("CONNECT", {"accept-version": "1.2", "host": "localhost", "heart-beat": "0,0"})
        frame = self.read_frame()
        assert frame.command == "CONNECTED", frame

    def send(self, command: str, headers: dict, body: bytes = b"") -> None:
        self.sock.sendall(encode_frame(command, headers, body))

    def read_frame(self, deadline: float | None = None) -> RawFrame:
        deadline = deadline or time.monotonic() + TIMEOUT
        while True:
            frame = self.reader.next_frame()
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no frame before the deadline")
            self.sock.settimeout(remaining)
            data = self.sock.recv(1024 * 1024)
            if not data:
                raise AssertionError("the broker closed the connection")
            self.reader.feed(data)

    def subscribe(self, destination: str, sub_id: str, ack: str = "auto") -> list[RawFrame]:
        """SUBSCRIBE and wait for its RECEIPT; return the MESSAGEs that came first."""
        receipt = f"sub-{sub_id}"
        self.send(
            "SUBSCRIBE",
            {"destination": destination, "id": sub_id, "ack": ack, "receipt": receipt},
        )
        messages = []
        deadline = time.monotonic() + TIMEOUT
        while True:
            frame = self.read_frame(deadline)
            if frame.command != "MESSAGE":
                break
            messages.append(frame)
        assert (frame.command, frame.headers.get("receipt-id")) == ("RECEIPT", receipt), frame
        return messages

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def send_frame_bytes(destination: str, seq: int, body: bytes, receipt: str = "") -> bytes:
    head = f"SEND\ndestination:{destination}\ncontent-length:{len(body)}\nseq:{seq}\n"
    if receipt:
        head += f"receipt:{receipt}\n"
    return head.encode() + b"\n" + body + b"\x00"


@dataclass
class Producer:
    """
    Pushes ``offered`` bytes of 64 KiB SENDs (or the frames ``make_frame``
    returns for each sequence number) from a thread until the broker stops
    reading for ``STALL`` seconds or ``PUSH_TIME`` is over.
    """

    client: RawClient
    destination: str
    body: bytes = field(default_factory=lambda: b"x" * BODY_SIZE)
    make_frame: Callable[[int], bytes] | None = None
    offered: int = OFFERED
    sent_bytes: int = 0
    #: SEND frames written completely.
    frames: int = 0
    #: The rest of a frame the broker stopped reading in the middle of.
    unsent: bytes = b""
    stalled: bool = False
    finished: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        sock = self.client.sock
        sock.settimeout(STALL)
        deadline = time.monotonic() + PUSH_TIME
        try:
            while self.sent_bytes < self.offered and time.monotonic() < deadline:
                if self.make_frame is not None:
                    frame = self.make_frame(self.frames)
                else:
                    frame = send_frame_bytes(self.destination, self.frames, self.body)
                view = memoryview(frame)
                while view:
                    try:
                        n = sock.send(view)
                    except TimeoutError:
                        self.stalled = True
                        self.unsent = bytes(view)
                        return
                    view = view[n:]
                    self.sent_bytes += n
                self.frames += 1
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            sock.settimeout(TIMEOUT)
            self.finished.set()

    def finish_frame(self) -> None:
        """Write the rest of the frame cut short by the stall (the broker reads again)."""
        if self.unsent:
            self.client.sock.sendall(self.unsent)
            self.sent_bytes += len(self.unsent)
            self.unsent = b""
            self.frames += 1


def watch_rss(
    broker: BrokerProcess, producer: Producer, settle: float = 0.5, closed_ok: bool = False
) -> list[int]:
    """Sample the broker's RSS until the producer is done (and a little after)."""
    samples = []
    hard_deadline = time.monotonic() + PUSH_TIME + 2 * STALL + 5
    while not producer.finished.is_set() and time.monotonic() < hard_deadline:
        samples.append(broker.rss())
        producer.finished.wait(0.01)
    assert producer.finished.is_set(), "the producer thread did not stop"
    if not (closed_ok and isinstance(producer.error, ConnectionError)):
        assert producer.error is None, producer.error
    settle_until = time.monotonic() + settle
    while time.monotonic() < settle_until:
        samples.append(broker.rss())
        time.sleep(0.05)
    return samples


def baseline(broker: BrokerProcess) -> int:
    """RSS after startup with an idle client connected (lowest of a few samples)."""
    idle = RawClient(broker.tcp_port)
    try:
        return min(broker.rss() for _ in range(3))
    finally:
        idle.close()


def report(name: str, base: int, samples: list[int], producer: Producer) -> int:
    peak = max(samples)
    growth = peak - base
    print(
        f"{name}: baseline {base / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB "
        f"(+{growth / MiB:.1f} MiB, bound {RSS_BOUND / MiB:.1f} MiB) over {len(samples)} "
        f"samples; producer sent {producer.sent_bytes / MiB:.1f} MiB in {producer.frames} "
        f"frames, stalled={producer.stalled}"
    )
    return growth


# -- tests --------------------------------------------------------------------------------


def test_queue_with_a_subscriber_that_never_reads(start_broker):
    broker = start_broker()
    base = baseline(broker)

    stalled = RawClient(broker.tcp_port, rcvbuf=4096)
    stalled.subscribe("/queue/mem.q", "stalled")
    producer = Producer(RawClient(broker.tcp_port, sndbuf=64 * 1024), "/queue/mem.q")
    producer.start()
    samples = watch_rss(broker, producer)
    growth = report("queue", base, samples, producer)

    # The broker stopped reading: the producer got nowhere near what it offered.
    assert producer.stalled, "the producer was never throttled"
    assert producer.sent_bytes < OFFERED / 4
    assert "blocked: /queue/mem.q is full" in broker.log()
    # It did get past the queue's limit plus what the subscriber's buffers take.
    assert producer.sent_bytes > MAX_QUEUE_BYTES
    assert growth < RSS_BOUND, f"RSS grew by {growth / MiB:.1f} MiB"

    # Nothing the broker accepted is lost: once the stalled subscriber is gone,
    # a consumer that reads gets everything that was still queued, in order,
    # up to a last message whose RECEIPT proves the broker took it.
    stalled.close()
    drainer = RawClient(broker.tcp_port)
    early = drainer.subscribe("/queue/mem.q", "drainer")
    producer.finish_frame()
    last = producer.frames
    producer.client.sock.sendall(
        send_frame_bytes("/queue/mem.q", last, b"last", receipt="last-send")
    )
    # Drain while waiting for the RECEIPT: the blocked producer is let go only
    # once the queue is under 90% of its limit, which may take more than the
    # kernel's socket buffers can hold without the drainer reading.
    seqs = [int(frame.headers["seq"]) for frame in early]
    drained: list[BaseException] = []

    def drain() -> None:
        try:
            deadline = time.monotonic() + 4 * TIMEOUT
            while not seqs or seqs[-1] != last:
                frame = drainer.read_frame(deadline)
                assert frame.command == "MESSAGE", frame
                seqs.append(int(frame.headers["seq"]))
        except BaseException as e:  # reported below
            drained.append(e)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    receipt = producer.client.read_frame(time.monotonic() + 4 * TIMEOUT)
    assert (receipt.command, receipt.headers.get("receipt-id")) == ("RECEIPT", "last-send")
    reader.join(8 * TIMEOUT)
    assert not reader.is_alive() and not drained, drained
    # Messages up to seqs[0] - 1 went to the stalled subscriber (auto ack);
    # every later one arrives, once, in order.
    assert seqs == list(range(seqs[0], last + 1))
    # ... and the queue really held about max-queue-bytes of them.
    assert len(seqs) * BODY_SIZE >= 0.8 * MAX_QUEUE_BYTES, len(seqs)
    drainer.close()
    producer.client.close()


def test_topic_with_a_subscriber_that_never_reads(start_broker):
    broker = start_broker()
    base = baseline(broker)

    stalled = RawClient(broker.tcp_port, rcvbuf=4096)
    stalled.subscribe("/topic/mem.t", "stalled")
    producer = Producer(RawClient(broker.tcp_port), "/topic/mem.t")
    producer.start()
    samples = watch_rss(broker, producer)
    growth = report("topic", base, samples, producer)

    # Drop-oldest: the broker kept reading and the producer sent everything.
    assert not producer.stalled
    assert producer.sent_bytes >= OFFERED, producer.sent_bytes
    assert growth < RSS_BOUND, f"RSS grew by {growth / MiB:.1f} MiB"
    assert "slow consumer: subscription stalled to /topic/mem.t" in broker.log()

    # The broker handled every frame (a receipt after the last one) and the
    # stalled subscriber's session is still there.
    producer.client.send("SEND", {"destination": "/topic/mem.t", "receipt": "done"}, b"end")
    receipt = producer.client.read_frame()
    assert receipt.headers.get("receipt-id") == "done", receipt
    assert max(broker.rss() for _ in range(3)) - base < RSS_BOUND
    stalled.close()
    producer.client.close()


def test_queue_with_a_websocket_subscriber_that_never_reads(start_broker):
    broker = start_broker()
    base = baseline(broker)

    ws = websocket.create_connection(
        f"ws://{LOCALHOST}:{broker.ws_port}/ws",
        subprotocols=["v12.stomp"],
        sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),),
        timeout=TIMEOUT,
    )
    try:
        ws.send(encode_frame("CONNECT", {"accept-version": "1.2", "heart-beat": "0,0"}).decode())
        assert ws.recv().startswith("CONNECTED\n")
        ws.send(
            encode_frame(
                "SUBSCRIBE",
                {"destination": "/queue/mem.ws", "id": "ws", "ack": "auto", "receipt": "s"},
            ).decode()
        )
        assert ws.recv().startswith("RECEIPT\n")

        producer = Producer(RawClient(broker.tcp_port, sndbuf=64 * 1024), "/queue/mem.ws")
        producer.start()
        samples = watch_rss(broker, producer)
        growth = report("websocket queue", base, samples, producer)

        assert producer.stalled, "the producer was never throttled"
        assert producer.sent_bytes < OFFERED / 4
        assert "blocked: /queue/mem.ws is full" in broker.log()
        assert growth < RSS_BOUND, f"RSS grew by {growth / MiB:.1f} MiB"
        producer.client.close()
    finally:
        ws.sock.close()


def test_client_that_never_reads_its_receipts(start_broker):
    # Every SEND asks for a RECEIPT with a long receipt id, so each frame read
    # makes the broker write about as many bytes back to the same connection.
    broker = start_broker()
    base = baseline(broker)
    receipt_id = "r" * 8000

    def make_frame(seq: int) -> bytes:
        return encode_frame(
            "SEND",
            {"destination": "/topic/mem.nobody", "receipt": f"{receipt_id}-{seq}"},
        )

    client = RawClient(broker.tcp_port, rcvbuf=4096)
    producer = Producer(client, "/topic/mem.nobody", make_frame=make_frame, offered=160 * MiB)
    producer.start()
    samples = watch_rss(broker, producer)
    growth = report("unread receipts", base, samples, producer)
    client.close()

    # Once the RECEIPTs waiting to be sent pass four times the high-water
    # mark the broker stops reading from this client: memory stays bounded.
    assert growth < RSS_BOUND, f"RSS grew by {growth / MiB:.1f} MiB"
    assert producer.stalled, "the broker never stopped reading from a client that never reads"


def test_topic_subscriber_that_reads_but_never_acks(start_broker):
    broker = start_broker()
    base = baseline(broker)

    reader = RawClient(broker.tcp_port)
    reader.subscribe("/topic/mem.noack", "noack", ack="client-individual")
    received = [0]
    progress = threading.Condition()

    def drain() -> None:
        # Reads (so its connection stays under the high-water mark), never ACKs.
        try:
            while data := reader.sock.recv(1024 * 1024):
                with progress:
                    received[0] += len(data)
                    progress.notify_all()
        except OSError:
            pass

    body = b"x" * BODY_SIZE

    def make_frame(seq: int) -> bytes:
        return send_frame_bytes("/topic/mem.noack", seq, body)

    reader.sock.settimeout(PUSH_TIME + 2 * STALL + 5)
    threading.Thread(target=drain, daemon=True).start()
    producer = Producer(
        RawClient(broker.tcp_port), "/topic/mem.noack", make_frame=make_frame, offered=128 * MiB
    )
    producer.start()
    samples = watch_rss(broker, producer)
    growth = report("topic, never acked", base, samples, producer)
    reader.close()
    producer.client.close()

    # It was sent as many messages as it may hold unacknowledged (the
    # --slow-topic-limit), not more; the rest were dropped as its backlog.
    assert received[0] >= BODY_SIZE, "the subscriber was not sent messages"
    assert received[0] < (SLOW_TOPIC_LIMIT + 2) * (BODY_SIZE + 4096), received[0]
    assert "slow consumer" in broker.log()
    # Held messages are bounded (by --slow-topic-limit).
    assert growth < RSS_BOUND, f"RSS grew by {growth / MiB:.1f} MiB"


def test_transaction_that_is_never_committed(start_broker):
    broker = start_broker()
    base = baseline(broker)

    client = RawClient(broker.tcp_port)
    client.send("BEGIN", {"transaction": "tx", "receipt": "begun"})
    frame = client.read_frame()
    assert frame.headers.get("receipt-id") == "begun", frame
    body = b"x" * BODY_SIZE

    def make_frame(seq: int) -> bytes:
        headers = {"destination": "/queue/mem.tx", "transaction": "tx", "seq": str(seq)}
        return encode_frame("SEND", {**headers, "content-length": str(len(body))}, body)

    producer = Producer(client, "/queue/mem.tx", make_frame=make_frame, offered=160 * MiB)
    producer.start()
    # The broker refuses the oversized transaction and closes the connection.
    samples = watch_rss(broker, producer, closed_ok=True)
    growth = report("open transaction", base, samples, producer)

    # It says so: an ERROR, the first frame after BEGIN's receipt, once the
    # transaction would hold more than --max-transaction-bytes (the default).
    limit = BrokerConfig().max_transaction_bytes
    assert producer.sent_bytes > limit
    error = client.read_frame()
    assert (error.command, error.headers.get("message")) == ("ERROR", "transaction too large")
    assert f"more than {limit} bytes".encode() in error.body, error.body
    assert "protocol error" in broker.log() and "transaction too large" in broker.log()
    client.close()

    assert growth < RSS_BOUND, f"RSS grew by {growth / MiB:.1f} MiB"
