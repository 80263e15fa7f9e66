#!/usr/bin/env python3
"""
A STOMP 1.2 load generator on raw sockets, over TCP and over WebSocket.

Standard library only; Linux (``fork`` workers). Every client runs in a
worker process of its own (``multiprocessing``), so that producers and
consumers do not share a GIL; each worker reports the CPU time it used
(``harness.sample`` of itself), summed as the generator's CPU beside the
broker's. Producers pipeline SENDs in batches of about 256 KiB; consumers
parse frames incrementally (frames may be split at any byte). Every socket
has ``TCP_NODELAY``. Only loopback addresses are used.

WebSocket framing is the minimal client side of RFC 6455: an HTTP/1.1
Upgrade with ``Sec-WebSocket-Protocol: v12.stomp``, one masked text frame per
STOMP frame out (several frames per socket write when pipelining), unmasked
frames in (continuations joined, pings answered, close = end of stream).

The scenarios are functions returning a dict of figures; ``compare.py`` runs
them against several brokers. Each takes a ``Target`` (where the broker
listens and how to CONNECT to it).
"""

from __future__ import annotations

import base64
import multiprocessing as mp
import os
import random
import socket
import time
import uuid

from harness import LOCALHOST, Target, raise_fd_limit, sample

BATCH = 256 * 1024

_CTX = mp.get_context("fork")


def cpu_self() -> float:
    """CPU seconds this process has used (a worker's share of the generator's CPU)."""
    return sample(os.getpid()).cpu_s


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

    def feed(self, data: bytes) -> list[tuple[bytes, bytes, int]]:
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
    """A byte stream to the broker: raw TCP, or STOMP frames in WebSocket messages."""

    def __init__(self, target: Target, timeout: float = 10.0) -> None:
        self.ws = target.transport == "ws"
        # Writes may wait while the broker applies flow control, up to this long.
        self.send_timeout = timeout
        self.sock = connect_socket(target.port, timeout)
        self.wsbuf = bytearray()
        self.fragments = bytearray()
        self.closed = False
        self.parser = FrameParser()
        self.pending: list[tuple[bytes, bytes, int]] = []
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

    def frame_bytes(self, frame: bytes) -> bytes:
        """What goes on the wire for one STOMP frame."""
        return ws_frame(frame) if self.ws else frame

    def send(self, frames: list[bytes]) -> None:
        self.sock.settimeout(self.send_timeout)
        if self.ws:
            self.sock.sendall(b"".join(ws_frame(f) for f in frames))
        else:
            self.sock.sendall(b"".join(frames))

    def _ws_decode(self) -> bytes:
        buf = self.wsbuf
        out = bytearray()
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            hl = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hl = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hl = 10
            if b1 & 0x80:
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

    def read(self, timeout: float) -> list[tuple[bytes, bytes, int]] | None:
        """Frames from one recv (perhaps none); None on timeout; raise at EOF."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(1024 * 1024)
        except TimeoutError:
            return None
        if not data:
            raise ConnectionError("the broker closed the connection")
        if self.ws:
            self.wsbuf += data
            data = self._ws_decode()
            if self.closed:
                raise ConnectionError("the broker closed the WebSocket")
        return self.parser.feed(data)

    def next_frame(self, deadline: float) -> tuple[bytes, bytes, int]:
        while not self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame before the deadline")
            frames = self.read(min(remaining, 1.0))
            if frames:
                self.pending.extend(frames)
        return self.pending.pop(0)

    def stomp_connect(self, target: Target, deadline: float) -> None:
        headers = {"accept-version": "1.2", "host": "localhost", "heart-beat": "0,0"}
        headers.update(target.connect_headers)
        self.send([encode("CONNECT", headers)])
        command, head, _ = self.next_frame(deadline)
        if command != b"CONNECTED":
            raise ConnectionError(f"CONNECT refused: {command!r} {head[:300]!r}")

    def subscribe(self, destination: str, ack: str, sub_id: str, deadline: float) -> None:
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

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def open_session(target: Target, deadline: float) -> Conn:
    conn = Conn(target, timeout=max(1.0, deadline - time.monotonic()))
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


# -- worker processes -----------------------------------------------------------------------


def _producer(
    target: Target,
    destination: str,
    first: int,
    count: int,
    size: int,
    start_event,
    results,
    deadline: float,
    done_event=None,
    persistent: bool = False,
) -> None:
    """
    Pipeline ``count`` SENDs numbered from ``first``. With ``persistent``
    each SEND has ``persistent:true`` and a ``receipt``; receipts are read
    between batches, and the producer reports when the last one came
    (``receipted_at``) and how many did (``receipts``).
    """
    out = {"role": "producer", "error": "", "receipts": 0, "receipted_at": 0.0}
    try:
        conn = open_session(target, deadline)
        results.put({"role": "ready"})
        start_event.wait(max(0.0, deadline - time.monotonic()))
        body = b"x" * size
        extra = "persistent:true\n" if persistent else ""
        prefix = f"SEND\ndestination:{destination}\n{extra}content-length:{size}\n".encode()
        receipts = 0

        def take_receipts(timeout: float) -> int:
            frames = conn.pending or conn.read(timeout) or []
            conn.pending = []
            for command, head, _ in frames:
                if command != b"RECEIPT":
                    raise ConnectionError(f"got {command!r}: {head[:300]!r}")
            return len(frames)

        batch: list[bytes] = []
        batched = 0
        for seq in range(first, first + count):
            number = str(seq).encode()
            receipt = b"receipt:" + number + b"\n" if persistent else b""
            frame = prefix + receipt + b"seq:" + number + b"\n\n" + body + b"\x00"
            batch.append(frame)
            batched += len(frame)
            if batched >= BATCH:
                conn.send(batch)
                batch = []
                batched = 0
                if persistent:
                    receipts += take_receipts(0.0)
                if time.monotonic() > deadline:
                    raise TimeoutError("producer deadline")
        if batch:
            conn.send(batch)
        while persistent and receipts < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"producer deadline: {receipts} of {count} receipts")
            receipts += take_receipts(0.05)
        out["receipts"] = receipts
        out["receipted_at"] = time.monotonic()
        # A receipt on a final frame tells us the broker has read everything.
        conn.send([encode("DISCONNECT", {"receipt": "bye"})])
        try:
            conn.next_frame(deadline)
        except (ConnectionError, TimeoutError):
            pass
        conn.close()
    except Exception as e:  # reported, not raised: the parent decides
        out["error"] = f"producer: {e!r}"
    if done_event is not None:
        done_event.set()
    out["cpu"] = cpu_self()
    results.put(out)


def _consumer(
    target: Target,
    destination: str,
    ack: str,
    total: int,
    stop_at_total: bool,
    counter,
    start_event,
    results,
    deadline: float,
    idle: float,
    latency: bool,
    done_event=None,
) -> None:
    """
    Subscribe, report ready, then read MESSAGEs. With ``stop_at_total`` the
    shared ``counter`` of distinct messages (over all consumers) ends the
    run at ``total``; otherwise this consumer stops at ``total`` of its own or
    after ``idle`` seconds without data once the producer has finished (its
    DISCONNECT receipt came: the broker has read every SEND).
    """
    out = {"role": "consumer", "error": "", "received": 0, "duplicates": 0, "done_at": 0.0}
    seen = bytearray(total)
    lat: list[float] = []
    last_data = 0.0
    try:
        conn = open_session(target, deadline)
        conn.subscribe(destination, ack, "s0", deadline)
        results.put({"role": "ready"})
        start_event.wait(max(0.0, deadline - time.monotonic()))
        last_data = time.monotonic()
        individual = ack != "auto"
        done_at = 0.0
        mine = 0
        dup = 0
        while True:
            now = time.monotonic()
            if now > deadline:
                out["error"] = "consumer: deadline passed"
                break
            if stop_at_total and counter.value >= total:
                break
            if not stop_at_total and (
                mine >= total or (done_event.is_set() and now - max(last_data, done_at) > idle)
            ):
                break
            if done_at == 0.0 and done_event is not None and done_event.is_set():
                done_at = now
            frames = conn.pending or conn.read(0.05)
            conn.pending = []
            if not frames:
                continue
            now = time.monotonic()
            last_data = now
            acks = []
            fresh = 0
            for command, head, _ in frames:
                if command != b"MESSAGE":
                    raise ConnectionError(f"got {command!r}: {head[:300]!r}")
                seq = int(header(head, b"seq"))
                if seen[seq]:
                    dup += 1
                else:
                    seen[seq] = 1
                    fresh += 1
                if latency:
                    lat.append(now - float(header(head, b"ts")))
                if individual:
                    acks.append(encode("ACK", {"id": header(head, b"ack").decode()}))
            if acks:
                conn.send(acks)
            mine += fresh
            out["done_at"] = now
            if stop_at_total and fresh:
                with counter.get_lock():
                    counter.value += fresh
        out["received"] = mine
        out["duplicates"] = dup
        conn.close()
    except Exception as e:
        out["error"] = f"consumer: {e!r}"
    out["cpu"] = cpu_self()
    out["seen"] = bytes(seen) if stop_at_total else b""
    out["latencies"] = lat
    results.put(out)


def _timed_producer(
    target: Target,
    destination: str,
    rate: float,
    seconds: float,
    size: int,
    start_event,
    results,
    deadline: float,
    done_event=None,
) -> None:
    """Open loop: message i is due at start + i / rate and carries that time in ``ts``."""
    out = {"role": "producer", "error": "", "behind_max": 0.0}
    try:
        conn = open_session(target, deadline)
        results.put({"role": "ready"})
        start_event.wait(max(0.0, deadline - time.monotonic()))
        body = b"x" * size
        prefix = f"SEND\ndestination:{destination}\ncontent-length:{size}\nseq:".encode()
        count = int(rate * seconds)
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
        conn.send([encode("DISCONNECT", {"receipt": "bye"})])
        try:
            conn.next_frame(deadline)
        except (ConnectionError, TimeoutError):
            pass
        conn.close()
    except Exception as e:
        out["error"] = f"producer: {e!r}"
    if done_event is not None:
        done_event.set()
    out["cpu"] = cpu_self()
    results.put(out)


def _idle_holder(target: Target, destination: str, count: int, results, release, deadline: float):
    """Open ``count`` sessions, CONNECT and SUBSCRIBE each, hold them until released."""
    raise_fd_limit()
    conns = []
    failures = 0
    errors: list[str] = []
    for _ in range(count):
        if time.monotonic() > deadline:
            failures += 1
            continue
        try:
            conn = open_session(target, deadline)
            conn.subscribe(destination, "auto", "s0", deadline)
            conns.append(conn)
        except Exception as e:
            failures += 1
            if len(errors) < 3:
                errors.append(repr(e))
    results.put(
        {
            "role": "holder",
            "opened": len(conns),
            "failures": failures,
            "errors": errors,
            "done_at": time.monotonic(),
            "cpu": cpu_self(),
        }
    )
    release.wait(max(0.0, deadline - time.monotonic()))
    for conn in conns:
        conn.close()


# -- running a scenario ---------------------------------------------------------------------


class Run:
    """Worker processes of one scenario run, with a start gate and a result queue."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.start = _CTX.Event()
        self.producer_done = _CTX.Event()
        self.results = _CTX.Queue()
        self.procs: list = []

    def spawn(self, fn, *args) -> None:
        proc = _CTX.Process(target=fn, args=args, daemon=True)
        proc.start()
        self.procs.append(proc)

    def collect(self, count: int, role: str | None = None) -> list[dict]:
        """``count`` messages from the workers (of ``role`` if given), until the deadline."""
        got: list[dict] = []
        while len(got) < count:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"only {len(got)} of {count} workers reported")
            try:
                item = self.results.get(timeout=min(remaining, 1.0))
            except Exception:
                if not any(p.is_alive() for p in self.procs) and self.results.empty():
                    raise RuntimeError(f"workers died: {len(got)} of {count} reported") from None
                continue
            if role is None or item["role"] == role:
                got.append(item)
            elif item["role"] == "ready":
                raise RuntimeError("unexpected ready")
        return got

    def wait_ready(self, count: int) -> None:
        self.collect(count, "ready")

    def finish(self) -> None:
        for proc in self.procs:
            proc.join(max(0.1, min(5.0, self.deadline - time.monotonic())))
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def _error_of(items: list[dict]) -> str:
    return "; ".join(i["error"] for i in items if i.get("error"))[:500]


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
    cpu_of_broker=None,
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
    run = Run(timeout)
    counter = _CTX.Value("q", 0)
    per = [messages // producers + (1 if i < messages % producers else 0) for i in range(producers)]

    def spawn_consumers() -> None:
        for _ in range(consumers):
            run.spawn(
                _consumer,
                target,
                destination,
                ack,
                messages,
                True,
                counter,
                run.start,
                run.results,
                run.deadline,
                0.0,
                False,
            )

    drain_start = 0.0
    try:
        if not backlog:
            spawn_consumers()
            run.wait_ready(consumers)
        first = 0
        for n in per:
            run.spawn(
                _producer,
                target,
                destination,
                first,
                n,
                size,
                run.start,
                run.results,
                run.deadline,
                None,
                persistent,
            )
            first += n
        run.wait_ready(producers)
        cpu0 = cpu_of_broker() if cpu_of_broker else 0.0
        start = time.monotonic()
        run.start.set()
        if backlog:
            items = run.collect(producers, "producer")
            drain_start = time.monotonic()
            spawn_consumers()
            run.wait_ready(consumers)
            items += run.collect(consumers, "consumer")
        else:
            items = run.collect(producers + consumers)
        cpu1 = cpu_of_broker() if cpu_of_broker else 0.0
    finally:
        run.finish()
    cons = [i for i in items if i["role"] == "consumer"]
    seen = bytearray(messages)
    received = 0
    dup = 0
    for c in cons:
        received += c["received"]
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
        "msgs_per_s": distinct / seconds,
        "mb_per_s": distinct * size / seconds / 1e6,
        "seconds": seconds,
        "messages": messages,
        "received": distinct,
        "duplicates": dup,
        "lost": messages - distinct,
        "ok": ok,
        "broker_cpu_s": cpu1 - cpu0,
        "gen_cpu_s": sum(i.get("cpu", 0.0) for i in items),
        "error": _error_of(items),
    }


def fanout(
    target: Target,
    *,
    subscribers: int,
    messages: int,
    size: int,
    timeout: float = 120.0,
    idle: float = 3.0,
    cpu_of_broker=None,
) -> dict:
    """Topic scenario: 1 producer, K subscribers (subscribed, receipt, before it starts)."""
    destination = f"/topic/bench-{uuid.uuid4().hex[:12]}"
    run = Run(timeout)
    counter = _CTX.Value("q", 0)
    try:
        for _ in range(subscribers):
            run.spawn(
                _consumer,
                target,
                destination,
                "auto",
                messages,
                False,
                counter,
                run.start,
                run.results,
                run.deadline,
                idle,
                False,
                run.producer_done,
            )
        run.wait_ready(subscribers)
        run.spawn(
            _producer,
            target,
            destination,
            0,
            messages,
            size,
            run.start,
            run.results,
            run.deadline,
            run.producer_done,
        )
        run.wait_ready(1)
        cpu0 = cpu_of_broker() if cpu_of_broker else 0.0
        start = time.monotonic()
        run.start.set()
        items = run.collect(subscribers + 1)
        cpu1 = cpu_of_broker() if cpu_of_broker else 0.0
    finally:
        run.finish()
    cons = [i for i in items if i["role"] == "consumer"]
    delivered = sum(c["received"] for c in cons)
    expected = messages * subscribers
    end = max((c["done_at"] for c in cons), default=start)
    seconds = max(end - start, 1e-9)
    errors = _error_of(items)
    return {
        "msgs_per_s": delivered / seconds,
        "mb_per_s": delivered * size / seconds / 1e6,
        "seconds": seconds,
        "messages": expected,
        "received": delivered,
        "duplicates": sum(c["duplicates"] for c in cons),
        "lost": expected - delivered,
        "ok": delivered == expected and not errors,
        "broker_cpu_s": cpu1 - cpu0,
        "gen_cpu_s": sum(i.get("cpu", 0.0) for i in items),
        "error": errors,
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
    cpu_of_broker=None,
) -> dict:
    """Open loop at ``rate`` msgs/s for ``seconds``; one-way latency from the scheduled time."""
    destination = f"/queue/lat-{uuid.uuid4().hex[:12]}"
    run = Run(timeout + seconds)
    counter = _CTX.Value("q", 0)
    count = int(rate * seconds)
    try:
        run.spawn(
            _consumer,
            target,
            destination,
            "auto",
            count,
            False,
            counter,
            run.start,
            run.results,
            run.deadline,
            idle,
            True,
            run.producer_done,
        )
        run.wait_ready(1)
        run.spawn(
            _timed_producer,
            target,
            destination,
            rate,
            seconds,
            size,
            run.start,
            run.results,
            run.deadline,
            run.producer_done,
        )
        run.wait_ready(1)
        cpu0 = cpu_of_broker() if cpu_of_broker else 0.0
        run.start.set()
        items = run.collect(2)
        cpu1 = cpu_of_broker() if cpu_of_broker else 0.0
    finally:
        run.finish()
    cons = next(i for i in items if i["role"] == "consumer")
    prod = next(i for i in items if i["role"] == "producer")
    lat = sorted(cons["latencies"])
    errors = _error_of(items)
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
        "ok": cons["received"] == count and not errors,
        "broker_cpu_s": cpu1 - cpu0,
        "gen_cpu_s": sum(i.get("cpu", 0.0) for i in items),
        "error": errors,
    }


def connections(
    target: Target,
    *,
    count: int,
    workers: int = 8,
    timeout: float = 300.0,
    rss_of_broker=None,
    settle: float = 1.0,
) -> dict:
    """M idle sessions (each CONNECTed and SUBSCRIBEd with a receipt), spread over workers."""
    raise_fd_limit()
    destination = f"/topic/idle-{uuid.uuid4().hex[:12]}"
    run = Run(timeout)
    release = _CTX.Event()
    workers = max(1, min(workers, count))
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    rss0 = rss_of_broker() if rss_of_broker else 0
    start = time.monotonic()
    try:
        for n in shares:
            run.spawn(_idle_holder, target, destination, n, run.results, release, run.deadline)
        items = run.collect(workers, "holder")
        end = max(i["done_at"] for i in items)
        # Let the broker finish its bookkeeping before sampling memory (bounded).
        time.sleep(settle)
        rss1 = rss_of_broker() if rss_of_broker else 0
    finally:
        release.set()
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
