#!/usr/bin/env python3
"""
A STOMP 1.2 load generator on raw sockets, over TCP and over WebSocket.

Standard library only; Linux (``fork`` workers). Every client runs in a
worker process of its own (``multiprocessing``), so that producers and
consumers do not share a GIL; each worker reports the CPU time it used
(``harness.cpu_seconds`` of itself), summed as the generator's CPU beside the
broker's. Producers pipeline SENDs in batches of about 256 KiB; consumers
parse frames incrementally (frames may be split at any byte). Every socket
has ``TCP_NODELAY``. Only loopback addresses are used.

WebSocket framing is the minimal client side of RFC 6455: an HTTP/1.1
Upgrade with ``Sec-WebSocket-Protocol: v12.stomp``, one masked text frame per
STOMP frame out (several frames per socket write when pipelining), unmasked
frames in (continuations joined, pings answered, close = end of stream).

The client (:class:`Conn`, :func:`open_session`, :class:`Sends`,
:class:`Tally`) is the benchmarks' only one: ``persistence.py`` uses it too,
from threads. The scenarios are functions returning a dict of figures;
``compare.py`` runs them against several brokers. Each takes a ``Target``
(where the broker listens and how to CONNECT to it). A scenario's worker
processes get their parameters as one frozen dataclass each (``*Spec``) and
what they share with the run (start gate, result queue, ...) as ``Shared``.
"""

from __future__ import annotations

import base64
import multiprocessing as mp
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness import LOCALHOST, Target, cpu_seconds, raise_fd_limit

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Event

BATCH = 256 * 1024

_CTX = mp.get_context("fork")

#: A parsed frame: (command, raw header block starting with a newline, body length).
Frame = tuple[bytes, bytes, int]


def own_cpu() -> float:
    """CPU seconds this process has used (a worker's share of the generator's CPU)."""
    return cpu_seconds(os.getpid())


# -- frames ---------------------------------------------------------------------------------


def encode(command: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    head = "".join(f"{name}:{value}\n" for name, value in headers.items())
    return f"{command}\n{head}\n".encode() + body + b"\x00"


def header(head: bytes, name: bytes) -> bytes | None:
    """The first value of header ``name`` in a raw header block (no unescaping)."""
    key = b"\n" + name + b":"
    i = head.find(key)
    if i < 0:
        return None
    i += len(key)
    j = head.find(b"\n", i)
    value = head[i:] if j < 0 else head[i:j]
    return value.rstrip(b"\r")


class FrameParser:
    """
    Incremental STOMP frame parser. ``feed`` returns complete frames as
    (command, raw header block starting with a newline, body length). The
    body is ``content-length`` bytes when present, else up to the first NUL.
    """

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self.buf
        buf += data
        frames = []
        pos = 0
        size = len(buf)
        while True:
            while pos < size and buf[pos] in (10, 13):
                pos += 1
            end = buf.find(b"\n\n", pos)
            if end < 0:
                # CRLF frames: normalise lazily only if the broker uses them.
                crlf = buf.find(b"\r\n\r\n", pos)
                if crlf < 0:
                    break
                end, start = crlf, crlf + 4
            else:
                start = end + 2
                crlf = buf.find(b"\r\n\r\n", pos, end + 2)
                if crlf >= 0 and crlf < end:
                    end, start = crlf, crlf + 4
            block = bytes(buf[pos:end])
            nl = block.find(b"\n")
            command = (block if nl < 0 else block[:nl]).rstrip(b"\r")
            head = b"" if nl < 0 else block[nl:] + b"\n"
            length = header(head, b"content-length")
            if length is not None:
                stop = start + int(length)
                if size <= stop:
                    break
            else:
                stop = buf.find(b"\x00", start)
                if stop < 0:
                    break
            frames.append((command, head, stop - start))
            pos = stop + 1
        del buf[:pos]
        return frames


@dataclass(frozen=True)
class Sends:
    """
    ``count`` SEND frames to ``destination``, numbered from ``first`` in a
    ``seq`` header, each with ``content-length`` and a body of ``size`` bytes,
    ``persistent:true`` if ``persistent``, and a ``receipt`` (its number) on
    every SEND (``receipts="each"``), on the last one (``"last"``) or on none.
    """

    destination: str
    count: int
    size: int
    first: int = 0
    persistent: bool = False
    receipts: str = "none"

    def frames(self) -> Iterator[bytes]:
        """The frames, one by one."""
        body = b"x" * self.size
        extra = "persistent:true\n" if self.persistent else ""
        prefix = f"SEND\ndestination:{self.destination}\n{extra}content-length:{self.size}\n"
        prefix_bytes = prefix.encode()
        each = self.receipts == "each"
        last = self.first + self.count - 1 if self.receipts == "last" else -1
        for seq in range(self.first, self.first + self.count):
            number = str(seq).encode()
            receipt = b"receipt:" + number + b"\n" if each or seq == last else b""
            yield prefix_bytes + receipt + b"seq:" + number + b"\n\n" + body + b"\x00"

    def batches(self) -> Iterator[list[bytes]]:
        """The frames in lists of about ``BATCH`` bytes: one socket write each, pipelined."""
        batch: list[bytes] = []
        batched = 0
        for frame in self.frames():
            batch.append(frame)
            batched += len(frame)
            if batched >= BATCH:
                yield batch
                batch = []
                batched = 0
        if batch:
            yield batch


def ws_frame_head(buf: bytearray, pos: int) -> tuple[int, int, int, bool] | None:
    """
    The head of the WebSocket frame at ``pos``: (first byte, payload length,
    head length, masked), or None while the head is not all in ``buf``.
    """
    size = len(buf)
    if size - pos < 2:
        return None
    b0, b1 = buf[pos], buf[pos + 1]
    n = b1 & 0x7F
    hl = 2
    if n == 126:
        if size - pos < 4:
            return None
        n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        hl = 4
    elif n == 127:
        if size - pos < 10:
            return None
        n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        hl = 10
    return b0, n, hl, bool(b1 & 0x80)


# -- connections ------------------------------------------------------------------------------


def connect_socket(port: int, timeout: float, rcvbuf: int = 0, sndbuf: int = 0) -> socket.socket:
    """A TCP connection to ``port`` on loopback, with TCP_NODELAY (and buffer sizes if given)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    sock.connect((LOCALHOST, port))
    return sock


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """One final client frame: masked with a random key (XOR done on big ints)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = random.randbytes(4)
    if n:
        mask = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + payload


class Conn:
    """
    A byte stream to the broker: raw TCP, or STOMP frames in WebSocket messages.

    One thread may read (:meth:`read`, :meth:`read_before`) while another writes
    (:meth:`send`): ``persistence.py``'s producer reads its RECEIPTs in a
    thread of their own. ``rcvbuf`` and ``sndbuf`` set the socket's buffer
    sizes when given (a small receive buffer makes a subscriber that never
    reads stall sooner).
    """

    def __init__(
        self, target: Target, timeout: float = 10.0, rcvbuf: int = 0, sndbuf: int = 0
    ) -> None:
        self.ws = target.transport == "ws"
        # Writes may wait while the broker applies flow control, up to this long.
        self.send_timeout = timeout
        self.sock = connect_socket(target.port, timeout, rcvbuf, sndbuf)
        self.wsbuf = bytearray()
        self.closed = False
        self.parser = FrameParser()
        self.pending: list[Frame] = []
        if self.ws:
            self._handshake(target)

    def _handshake(self, target: Target) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {target.ws_path} HTTP/1.1\r\nHost: {LOCALHOST}:{target.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: v12.stomp\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        data = b""
        for _ in range(100):
            if b"\r\n\r\n" in data:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("WebSocket handshake: connection closed")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"WebSocket handshake refused: {head[:200]!r}")
        self.wsbuf += rest

    def send(self, frames: list[bytes]) -> None:
        """
        Write ``frames`` in one go, waiting while the broker is not reading
        (flow control) for at most ``send_timeout`` seconds. A timeout of the
        socket's is only a chance to look at the clock: a thread reading this
        connection may have set a shorter one.
        """
        data = b"".join(ws_frame(f) for f in frames) if self.ws else b"".join(frames)
        deadline = time.monotonic() + self.send_timeout
        self.sock.settimeout(self.send_timeout)
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError("the broker stopped reading from us") from None

    def _ws_decode(self) -> bytes:
        buf = self.wsbuf
        out = bytearray()
        pos = 0
        size = len(buf)
        while True:
            head = ws_frame_head(buf, pos)
            if head is None:
                break
            b0, n, hl, masked = head
            if masked:
                raise ConnectionError("masked frame from the server")
            if size - pos < hl + n:
                break
            payload = bytes(buf[pos + hl : pos + hl + n])
            pos += hl + n
            opcode = b0 & 0x0F
            if opcode in (0, 1, 2):
                out += payload
            elif opcode == 9:
                self.sock.sendall(ws_frame(payload, 10))
            elif opcode == 8:
                self.closed = True
                break
        del buf[:pos]
        return bytes(out)

    def read(self, timeout: float) -> list[Frame]:
        """
        The frames kept back (by :meth:`subscribe`) if any, else those of one
        ``recv`` of at most ``timeout`` seconds: perhaps none. Raise at EOF.
        """
        if self.pending:
            frames, self.pending = self.pending, []
            return frames
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1024 * 1024)
        except TimeoutError:
            return []
        if not data:
            raise ConnectionError("the broker closed the connection")
        if self.ws:
            self.wsbuf += data
            data = self._ws_decode()
            if self.closed:
                raise ConnectionError("the broker closed the WebSocket")
        return self.parser.feed(data)

    def read_before(self, deadline: float) -> list[Frame]:
        """:meth:`read` for at most a second; raise TimeoutError once ``deadline`` has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame before the deadline")
        return self.read(min(remaining, 1.0))

    def next_frame(self, deadline: float) -> Frame:
        while not self.pending:
            self.pending.extend(self.read_before(deadline))
        return self.pending.pop(0)

    def stomp_connect(self, target: Target, deadline: float) -> None:
        headers = {"accept-version": "1.2", "host": "localhost", "heart-beat": "0,0"}
        headers.update(target.connect_headers)
        self.send([encode("CONNECT", headers)])
        command, head, _ = self.next_frame(deadline)
        if command != b"CONNECTED":
            raise ConnectionError(f"CONNECT refused: {command!r} {head[:300]!r}")

    def subscribe(self, destination: str, ack: str, deadline: float, sub_id: str = "s0") -> None:
        """SUBSCRIBE with a receipt, and wait for it."""
        self.send(
            [
                encode(
                    "SUBSCRIBE",
                    {"destination": destination, "id": sub_id, "ack": ack, "receipt": "sub"},
                )
            ]
        )
        # Messages already waiting may come before the receipt: keep them.
        early = []
        command, head, length = self.next_frame(deadline)
        while command == b"MESSAGE":
            early.append((command, head, length))
            command, head, length = self.next_frame(deadline)
        if command != b"RECEIPT":
            raise ConnectionError(f"SUBSCRIBE failed: {command!r} {head[:300]!r}")
        self.pending[:0] = early

    def disconnect(self, deadline: float) -> None:
        """DISCONNECT, wait for its receipt (the broker has read all we sent), close."""
        self.send([encode("DISCONNECT", {"receipt": "bye"})])
        try:
            self.next_frame(deadline)
        except (ConnectionError, TimeoutError):
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def receipts_in(frames: list[Frame]) -> int:
    """How many of ``frames`` are RECEIPTs, all of them: any other frame is an error."""
    for command, head, _ in frames:
        if command != b"RECEIPT":
            raise ConnectionError(f"got {command!r}: {head[:300]!r}")
    return len(frames)


def open_session(target: Target, deadline: float, rcvbuf: int = 0, sndbuf: int = 0) -> Conn:
    """A connection to ``target`` whose CONNECT the broker has answered with CONNECTED."""
    conn = Conn(target, max(1.0, deadline - time.monotonic()), rcvbuf, sndbuf)
    conn.stomp_connect(target, deadline)
    return conn


def stomp_ready(target: Target, deadline: float) -> bool:
    """Poll (bounded) until a STOMP CONNECT succeeds on ``target``: a ``harness.Probe``."""
    while time.monotonic() < deadline:
        try:
            conn = open_session(target, min(deadline, time.monotonic() + 5))
            conn.close()
            return True
        except (OSError, TimeoutError):
            time.sleep(0.25)
    return False


class Tally:
    """
    Which of ``total`` sequence numbers (``seq`` headers) have arrived, and
    how many arrived again: a consumer's exactly-once check.
    """

    def __init__(self, total: int) -> None:
        self.seen = bytearray(total)
        self.distinct = 0
        self.duplicates = 0

    def count(
        self, conn: Conn, frames: list[Frame], ack_each: bool, latencies: list[float] | None = None
    ) -> int:
        """
        Count the MESSAGEs in ``frames`` (any other frame is an error) and
        return how many were new. With ``ack_each``, ACK every one of them, in
        one write; with ``latencies``, append each one's age (now minus its
        ``ts`` header).
        """
        now = time.monotonic()
        seen = self.seen
        fresh = 0
        acks = []
        for command, head, _ in frames:
            if command != b"MESSAGE":
                raise ConnectionError(f"got {command!r}: {head[:300]!r}")
            seq = int(header(head, b"seq"))
            if seen[seq]:
                self.duplicates += 1
            else:
                seen[seq] = 1
                fresh += 1
            if latencies is not None:
                latencies.append(now - float(header(head, b"ts")))
            if ack_each:
                acks.append(encode("ACK", {"id": header(head, b"ack").decode()}))
        if acks:
            conn.send(acks)
        self.distinct += fresh
        return fresh


# -- worker processes -----------------------------------------------------------------------


@dataclass(frozen=True)
class Shared:
    """What the worker processes of one run share with it (inherited through ``fork``)."""

    deadline: float  # time.monotonic() by which everything must be over
    start: Event  # the start gate, opened once every worker has reported ready
    producer_done: Event  # set by a producer when it has finished (or failed)
    release: Event  # idle holders close their sessions
    results: Queue  # {"role": "ready"} notes, then each worker's figures
    counter: Synchronized  # distinct messages received by all pooled consumers

    def ready(self) -> None:
        """Report ready, then wait (bounded) for the start gate."""
        self.results.put({"role": "ready"})
        self.start.wait(max(0.0, self.deadline - time.monotonic()))

    def report(self, out: dict) -> None:
        """Hand a worker's figures to the run, with the CPU time the worker used."""
        out["cpu"] = own_cpu()
        self.results.put(out)


@dataclass(frozen=True)
class ProducerSpec:
    """
    A producer: pipeline ``sends`` to ``target``, then DISCONNECT. With a
    receipt on every SEND, it reads them between batches and reports how
    many came (``receipts``) and when the last did (``receipted_at``).
    """

    target: Target
    sends: Sends


def _producer(spec: ProducerSpec, shared: Shared) -> None:
    out = {"role": "producer", "error": "", "receipts": 0, "receipted_at": 0.0}
    deadline = shared.deadline
    expected = spec.sends.count if spec.sends.receipts == "each" else 0
    try:
        conn = open_session(spec.target, deadline)
        shared.ready()
        receipts = 0
        for batch in spec.sends.batches():
            conn.send(batch)
            if expected:
                receipts += receipts_in(conn.read(0.0))
            if time.monotonic() > deadline:
                raise TimeoutError("producer deadline")
        while receipts < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"producer deadline: {receipts} of {expected} receipts")
            receipts += receipts_in(conn.read(0.05))
        out["receipts"] = receipts
        out["receipted_at"] = time.monotonic()
        conn.disconnect(deadline)
    except Exception as e:  # reported, not raised: the parent decides
        out["error"] = f"producer: {e!r}"
    shared.producer_done.set()
    shared.report(out)


@dataclass(frozen=True)
class ConsumerSpec:
    """
    A consumer: subscribe to ``destination`` with ``ack``, report ready, then
    read MESSAGEs (ACKing each unless ``ack`` is ``auto``). A ``pooled``
    consumer is one of several sharing a queue: the run's shared counter of
    distinct messages ends it at ``total``. Any other stops at ``total`` of
    its own, or ``idle`` seconds without data once the producer has finished
    (its DISCONNECT receipt came: the broker has read every SEND). With
    ``latency`` it records each message's one-way latency (``ts`` header).
    """

    target: Target
    destination: str
    total: int
    ack: str = "auto"
    pooled: bool = False
    idle: float = 3.0
    latency: bool = False


def _consumer(spec: ConsumerSpec, shared: Shared) -> None:
    out = {"role": "consumer", "error": "", "received": 0, "duplicates": 0, "done_at": 0.0}
    deadline = shared.deadline
    counter = shared.counter
    producer_done = shared.producer_done
    tally = Tally(spec.total)
    lat: list[float] | None = [] if spec.latency else None
    try:
        conn = open_session(spec.target, deadline)
        conn.subscribe(spec.destination, spec.ack, deadline)
        shared.ready()
        last_data = time.monotonic()
        ack_each = spec.ack != "auto"
        done_at = 0.0
        while True:
            now = time.monotonic()
            if now > deadline:
                out["error"] = "consumer: deadline passed"
                break
            if spec.pooled and counter.value >= spec.total:
                break
            if not spec.pooled and (
                tally.distinct >= spec.total
                or (producer_done.is_set() and now - max(last_data, done_at) > spec.idle)
            ):
                break
            if done_at == 0.0 and producer_done.is_set():
                done_at = now
            frames = conn.read(0.05)
            if not frames:
                continue
            last_data = time.monotonic()
            fresh = tally.count(conn, frames, ack_each, lat)
            out["done_at"] = last_data
            if spec.pooled and fresh:
                with counter.get_lock():
                    counter.value += fresh
        out["received"] = tally.distinct
        out["duplicates"] = tally.duplicates
        conn.close()
    except Exception as e:
        out["error"] = f"consumer: {e!r}"
    out["seen"] = bytes(tally.seen) if spec.pooled else b""
    out["latencies"] = lat or []
    shared.report(out)


@dataclass(frozen=True)
class TimedProducerSpec:
    """
    An open-loop producer: for ``seconds``, message i is due at start + i /
    ``rate`` and carries that time in a ``ts`` header.
    """

    target: Target
    destination: str
    rate: float
    seconds: float
    size: int


def _timed_producer(spec: TimedProducerSpec, shared: Shared) -> None:
    out = {"role": "producer", "error": "", "behind_max": 0.0}
    deadline = shared.deadline
    rate = spec.rate
    try:
        conn = open_session(spec.target, deadline)
        shared.ready()
        body = b"x" * spec.size
        prefix = f"SEND\ndestination:{spec.destination}\ncontent-length:{spec.size}\nseq:".encode()
        count = int(rate * spec.seconds)
        start = time.monotonic()
        i = 0
        while i < count:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError("producer deadline")
            due = min(count, int((now - start) * rate) + 1)
            if due <= i:
                time.sleep(min(start + i / rate - now, 0.01))
                continue
            out["behind_max"] = max(out["behind_max"], now - (start + i / rate))
            frames = []
            for seq in range(i, due):
                ts = repr(start + seq / rate).encode()
                frames.append(prefix + str(seq).encode() + b"\nts:" + ts + b"\n\n" + body + b"\0")
            conn.send(frames)
            i = due
        conn.disconnect(deadline)
    except Exception as e:
        out["error"] = f"producer: {e!r}"
    shared.producer_done.set()
    shared.report(out)


@dataclass(frozen=True)
class HolderSpec:
    """An idle holder: ``count`` sessions to ``target``, each CONNECTed and SUBSCRIBEd."""

    target: Target
    destination: str
    count: int


def _idle_holder(spec: HolderSpec, shared: Shared) -> None:
    """Open the sessions, report, hold them until released."""
    raise_fd_limit()
    deadline = shared.deadline
    conns = []
    failures = 0
    errors: list[str] = []
    for _ in range(spec.count):
        if time.monotonic() > deadline:
            failures += 1
            continue
        try:
            conn = open_session(spec.target, deadline)
            conn.subscribe(spec.destination, "auto", deadline)
            conns.append(conn)
        except Exception as e:
            failures += 1
            if len(errors) < 3:
                errors.append(repr(e))
    shared.report(
        {
            "role": "holder",
            "opened": len(conns),
            "failures": failures,
            "errors": errors,
            "done_at": time.monotonic(),
        }
    )
    shared.release.wait(max(0.0, deadline - time.monotonic()))
    for conn in conns:
        conn.close()


# -- running a scenario ---------------------------------------------------------------------


class Run:
    """
    The worker processes of one scenario run, with a start gate and a result
    queue, and the broker's CPU time from the opening of the gate
    (``cpu_of_broker``, if given, returns the broker's CPU seconds so far).
    """

    def __init__(self, timeout: float, cpu_of_broker: Callable[[], float] | None = None) -> None:
        self.shared = Shared(
            deadline=time.monotonic() + timeout,
            start=_CTX.Event(),
            producer_done=_CTX.Event(),
            release=_CTX.Event(),
            results=_CTX.Queue(),
            counter=_CTX.Value("q", 0),
        )
        self.deadline = self.shared.deadline
        self.cpu_of_broker = cpu_of_broker
        self.cpu_at_start = 0.0
        self.procs: list = []

    def spawn(self, worker: Callable[[Any, Shared], None], spec: Any) -> None:
        """Start ``worker(spec, shared)`` in a process of its own."""
        proc = _CTX.Process(target=worker, args=(spec, self.shared), daemon=True)
        proc.start()
        self.procs.append(proc)

    def collect(self, count: int, role: str | None = None) -> list[dict]:
        """``count`` messages from the workers (of ``role`` if given), until the deadline."""
        got: list[dict] = []
        results = self.shared.results
        while len(got) < count:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"only {len(got)} of {count} workers reported")
            try:
                item = results.get(timeout=min(remaining, 1.0))
            except Exception:
                if not any(p.is_alive() for p in self.procs) and results.empty():
                    raise RuntimeError(f"workers died: {len(got)} of {count} reported") from None
                continue
            if role is None or item["role"] == role:
                got.append(item)
            elif item["role"] == "ready":
                raise RuntimeError("unexpected ready")
        return got

    def wait_ready(self, count: int) -> None:
        self.collect(count, "ready")

    def go(self) -> float:
        """Open the start gate (every worker spawned so far is ready); return when."""
        self.cpu_at_start = self._broker_cpu()
        start = time.monotonic()
        self.shared.start.set()
        return start

    def broker_cpu_s(self) -> float:
        """The broker's CPU seconds since :meth:`go`."""
        return self._broker_cpu() - self.cpu_at_start

    def _broker_cpu(self) -> float:
        return self.cpu_of_broker() if self.cpu_of_broker else 0.0

    def finish(self) -> None:
        for proc in self.procs:
            proc.join(max(0.1, min(5.0, self.deadline - time.monotonic())))
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def _error_of(items: list[dict]) -> str:
    return "; ".join(i["error"] for i in items if i.get("error"))[:500]


def _costs(items: list[dict], broker_cpu_s: float) -> dict:
    """The figures every message scenario ends with: CPU of both sides, errors."""
    return {
        "broker_cpu_s": broker_cpu_s,
        "gen_cpu_s": sum(i.get("cpu", 0.0) for i in items),
        "error": _error_of(items),
    }


def _delivery(received: int, expected: int, duplicates: int, size: int, seconds: float) -> dict:
    """The figures of a run that moved ``received`` of ``expected`` messages in ``seconds``."""
    return {
        "msgs_per_s": received / seconds,
        "mb_per_s": received * size / seconds / 1e6,
        "seconds": seconds,
        "messages": expected,
        "received": received,
        "duplicates": duplicates,
        "lost": expected - received,
    }


def throughput(
    target: Target,
    *,
    producers: int,
    consumers: int,
    messages: int,
    size: int,
    ack: str = "auto",
    persistent: bool = False,
    backlog: bool = False,
    timeout: float = 120.0,
    cpu_of_broker: Callable[[], float] | None = None,
) -> dict:
    """
    Queue scenario: P producers, C consumers on one new /queue/…; N messages
    in total. With ``persistent``, every SEND is ``persistent:true`` with a
    receipt, and the run ends when every message has both arrived and been
    receipted (the broker had stored it). With ``backlog`` the consumers
    subscribe only once every SEND has its receipt, so every message is
    stored before any is delivered; the result then also has the rate at
    which they were stored (``stored_per_s``) and drained (``drain_per_s``,
    from the consumers' start, their connecting included).
    """
    destination = f"/queue/bench-{uuid.uuid4().hex[:12]}"
    run = Run(timeout, cpu_of_broker)
    per = [messages // producers + (1 if i < messages % producers else 0) for i in range(producers)]
    consumer = ConsumerSpec(target, destination, messages, ack, pooled=True)

    def spawn_consumers() -> None:
        for _ in range(consumers):
            run.spawn(_consumer, consumer)

    drain_start = 0.0
    try:
        if not backlog:
            spawn_consumers()
            run.wait_ready(consumers)
        first = 0
        for n in per:
            sends = Sends(
                destination,
                n,
                size,
                first=first,
                persistent=persistent,
                receipts="each" if persistent else "none",
            )
            run.spawn(_producer, ProducerSpec(target, sends))
            first += n
        run.wait_ready(producers)
        start = run.go()
        if backlog:
            items = run.collect(producers, "producer")
            drain_start = time.monotonic()
            spawn_consumers()
            run.wait_ready(consumers)
            items += run.collect(consumers, "consumer")
        else:
            items = run.collect(producers + consumers)
        broker_cpu = run.broker_cpu_s()
    finally:
        run.finish()
    cons = [i for i in items if i["role"] == "consumer"]
    seen = bytearray(messages)
    dup = 0
    for c in cons:
        dup += c["duplicates"]
        if c["seen"]:
            seen = bytearray(a | b for a, b in zip(seen, c["seen"], strict=True))
    distinct = sum(seen)
    end = max((c["done_at"] for c in cons), default=start)
    prods = [i for i in items if i["role"] == "producer"]
    receipts = sum(p["receipts"] for p in prods)
    receipted = max((p["receipted_at"] for p in prods), default=start) - start
    if persistent:
        end = max(end, start + receipted)
    seconds = max(end - start, 1e-9)
    ok = (
        distinct == messages
        and dup == 0
        and not _error_of(items)
        and (receipts == messages or not persistent)
    )
    extra = {"receipts": receipts, "receipt_seconds": receipted} if persistent else {}
    if backlog:
        extra["stored_per_s"] = receipts / max(receipted, 1e-9)
        extra["drain_per_s"] = distinct / max(end - drain_start, 1e-9)
    return {
        **extra,
        **_delivery(distinct, messages, dup, size, seconds),
        "ok": ok,
        **_costs(items, broker_cpu),
    }


def fanout(
    target: Target,
    *,
    subscribers: int,
    messages: int,
    size: int,
    timeout: float = 120.0,
    idle: float = 3.0,
    cpu_of_broker: Callable[[], float] | None = None,
) -> dict:
    """Topic scenario: 1 producer, K subscribers (subscribed, receipt, before it starts)."""
    destination = f"/topic/bench-{uuid.uuid4().hex[:12]}"
    run = Run(timeout, cpu_of_broker)
    try:
        for _ in range(subscribers):
            run.spawn(_consumer, ConsumerSpec(target, destination, messages, idle=idle))
        run.wait_ready(subscribers)
        run.spawn(_producer, ProducerSpec(target, Sends(destination, messages, size)))
        run.wait_ready(1)
        start = run.go()
        items = run.collect(subscribers + 1)
        broker_cpu = run.broker_cpu_s()
    finally:
        run.finish()
    cons = [i for i in items if i["role"] == "consumer"]
    delivered = sum(c["received"] for c in cons)
    expected = messages * subscribers
    end = max((c["done_at"] for c in cons), default=start)
    seconds = max(end - start, 1e-9)
    return {
        **_delivery(delivered, expected, sum(c["duplicates"] for c in cons), size, seconds),
        "ok": delivered == expected and not _error_of(items),
        **_costs(items, broker_cpu),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]


def latency(
    target: Target,
    *,
    rate: float,
    seconds: float,
    size: int = 100,
    timeout: float = 60.0,
    idle: float = 3.0,
    cpu_of_broker: Callable[[], float] | None = None,
) -> dict:
    """Open loop at ``rate`` msgs/s for ``seconds``; one-way latency from the scheduled time."""
    destination = f"/queue/lat-{uuid.uuid4().hex[:12]}"
    run = Run(timeout + seconds, cpu_of_broker)
    count = int(rate * seconds)
    try:
        run.spawn(_consumer, ConsumerSpec(target, destination, count, idle=idle, latency=True))
        run.wait_ready(1)
        run.spawn(_timed_producer, TimedProducerSpec(target, destination, rate, seconds, size))
        run.wait_ready(1)
        run.go()
        items = run.collect(2)
        broker_cpu = run.broker_cpu_s()
    finally:
        run.finish()
    cons = next(i for i in items if i["role"] == "consumer")
    prod = next(i for i in items if i["role"] == "producer")
    lat = sorted(cons["latencies"])
    return {
        "rate": rate,
        "p50_ms": _percentile(lat, 0.50) * 1000,
        "p99_ms": _percentile(lat, 0.99) * 1000,
        "p999_ms": _percentile(lat, 0.999) * 1000,
        "max_ms": (lat[-1] * 1000) if lat else float("nan"),
        "producer_behind_max_ms": prod.get("behind_max", 0.0) * 1000,
        "messages": count,
        "received": cons["received"],
        "lost": count - cons["received"],
        "ok": cons["received"] == count and not _error_of(items),
        **_costs(items, broker_cpu),
    }


def connections(
    target: Target,
    *,
    count: int,
    workers: int = 8,
    timeout: float = 300.0,
    rss_of_broker: Callable[[], int] | None = None,
    settle: float = 1.0,
) -> dict:
    """M idle sessions (each CONNECTed and SUBSCRIBEd with a receipt), spread over workers."""
    raise_fd_limit()
    destination = f"/topic/idle-{uuid.uuid4().hex[:12]}"
    run = Run(timeout)
    workers = max(1, min(workers, count))
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    rss0 = rss_of_broker() if rss_of_broker else 0
    start = time.monotonic()
    try:
        for n in shares:
            run.spawn(_idle_holder, HolderSpec(target, destination, n))
        items = run.collect(workers, "holder")
        end = max(i["done_at"] for i in items)
        # Let the broker finish its bookkeeping before sampling memory (bounded).
        time.sleep(settle)
        rss1 = rss_of_broker() if rss_of_broker else 0
    finally:
        run.shared.release.set()
        run.finish()
    opened = sum(i["opened"] for i in items)
    failures = sum(i["failures"] for i in items)
    errors = [e for i in items for e in i["errors"]][:3]
    return {
        "connections": count,
        "opened": opened,
        "failures": failures,
        "open_seconds": end - start,
        "conns_per_s": opened / max(end - start, 1e-9),
        "rss_before_mib": rss0 / 2**20,
        "rss_after_mib": rss1 / 2**20,
        "rss_per_conn_kib": (rss1 - rss0) / 1024 / max(opened, 1),
        "ok": failures == 0,
        "gen_cpu_s": sum(i.get("cpu", 0.0) for i in items),
        "error": "; ".join(errors)[:500],
    }
