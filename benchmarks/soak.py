"""
A bounded soak run: many heart-beating WebSocket sessions plus steady traffic.

Starts ``twistd -n stomptw`` on loopback (through :mod:`harness`, SQLite store
with ``--store-sync full``, ``--heartbeat 1000,1000``, ``--max-connections``
raised to fit, an admin listener for ``/metrics``), then:

* opens ``--connections`` (10,000) STOMP-over-WebSocket sessions from
  ``--workers`` (4) processes, each a ``selectors`` event loop doing the
  RFC 6455 handshake and masking its frames by hand. Each session CONNECTs
  with ``heart-beat:MS,MS`` (``--heartbeat-ms``, 10000), then is idle but
  for beats: it sends a masked ``\\n`` every 0.8 x the interval the broker
  asked for, answers the broker's WebSocket pings, and counts the broker's
  beats, ERROR frames and closes, and the longest silence from the broker.
  At a random moment within its first interval it SUBSCRIBEs, with a
  receipt, to a topic nobody publishes to: the receipt shows the session is
  served, and as the broker beats when it has not written for a while, it
  spreads the broker's beats over the interval (as clients connecting at
  random times would) instead of one burst per interval;
* once all are open, for ``--seconds`` (600): a producer sends
  ``persistent:true`` messages numbered in a ``seq`` header, each with a
  receipt, to a queue at ``--rate`` (100) msgs/s, a consumer takes them with
  ``ack:client-individual`` and ACKs each; a second producer publishes to a
  topic at ``--topic-rate`` (``--rate``) msgs/s for ``--subscribers`` (3)
  subscribers. Each traffic client is a process of its own (the loadgen
  client, over WebSocket by default, without heart-beats);
* then drains (at most ``--drain-seconds``): the consumer and subscribers
  read until they have every message sent, the consumer DISCONNECTs with a
  receipt (so its ACKs are in) and a fresh session checks the queue is empty.

Every ``--sample-every`` (10) seconds it prints a row: the broker's RSS and
CPU share of one core, the generator's CPU (all its processes), beats per
second each way, traffic counts and the broker's own connection count from
``/metrics``. At the end it gives the RSS slope (MiB/min) and the CPU slope
(percentage points of a core per minute), least squares over the samples
taken while the traffic ran (all sessions open) after ``--warmup`` (60 s, at
most half of ``--seconds``: the broker's first WebSocket pings and caches
filling), with whether each is flat; the heart-beat figures; lost,
duplicated and left-over messages; and each generator process's CPU beside
the broker's; and last a ``JSON {...}`` line with the figures.

Exit status 1 on any of: a session not opened; a heart-beat timeout, ERROR
frame or close by the broker on a healthy session (client side), a broker
silence longer than twice its negotiated beat interval, a heart-beat timeout
in the broker's ``/metrics`` or log; a queue or topic message lost or
duplicated, a SEND without its receipt, a message left in the queue; an RSS
slope above ``--max-rss-slope`` (1.0 MiB/min); a traceback in the broker's
log; the broker dying; a generator error. The CPU slope is reported against
``--max-cpu-slope`` but fails the run only with ``--fail-on-cpu-slope``.

Run from the repository root (Linux; needs an fd hard limit above
``--connections``; everything on loopback, bounded by the flags)::

    .venv/bin/python benchmarks/soak.py                 # 10,000 sessions, 600 s
    .venv/bin/python benchmarks/soak.py --connections 500 --seconds 40
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import heapq
import json
import math
import multiprocessing as mp
import os
import random
import re
import resource
import selectors
import shlex
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import LOCALHOST, Stomptw, Target, cpu_seconds, memory, raise_fd_limit  # noqa: E402
from loadgen import (  # noqa: E402
    FrameParser,
    Tally,
    encode,
    header,
    open_session,
    own_cpu,
    receipts_in,
    ws_frame,
    ws_frame_head,
)

_CTX = mp.get_context("fork")

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: A session not open (handshake + CONNECTED) this long after its connect started has failed.
OPEN_TIMEOUT = 30.0
#: Client beats go out at this share of the interval the broker asked for.
BEAT_SHARE = 0.8
#: A broker silent for more than this many of its negotiated beat intervals is late
#: (stomp.js's rule for declaring the broker dead).
SILENCE_FACTOR = 2.0

# Per-holder counters in a shared array (one writer each; read by the main process).
(
    H_OPENED,
    H_FAILED,
    H_BEATS_OUT,
    H_BEATS_IN,
    H_PINGS,
    H_ERRORS,
    H_CLOSED,
    H_LATE,
    H_SEND_FAIL,
    H_MAX_GAP,
    H_MAX_LAG,
    H_RECEIPTS,
) = range(12)
H_SLOTS = 12

# Traffic counters in another shared array.
Q_SENT, Q_RECEIPTS, Q_DONE, Q_RECEIVED, T_SENT, T_DONE = range(6)
T_RECEIVED = 6  # + subscriber index


# -- heart-beating WebSocket sessions --------------------------------------------------------


@dataclass(frozen=True)
class HolderSpec:
    """One holder process: ``count`` sessions to ``port``, ``in_flight`` at most opening."""

    index: int
    port: int
    ws_path: str
    count: int
    heartbeat_ms: int
    in_flight: int
    idle_topic: str
    open_deadline: float  # time.monotonic() by which every session must be open
    hard_deadline: float  # the holder stops by then, released or not


@dataclass(frozen=True)
class Shared:
    """What the run's worker processes share with it (inherited through ``fork``)."""

    results: Any  # multiprocessing Queue of dicts with a "role"
    release: Any  # Event: holders report and close
    start: Any  # Event: traffic starts
    holder_stats: Any  # Array('d', workers * H_SLOTS)
    traffic: Any  # Array('q', T_RECEIVED + subscribers)


CONNECTING, UPGRADING, LOGGING_IN, OPEN, DEAD = range(5)


class Session:
    """One WebSocket STOMP session of a holder, driven by its selector loop."""

    __slots__ = (
        "sock",
        "state",
        "buf",
        "key",
        "parser",
        "msg",
        "started",
        "last_rx",
        "max_gap",
        "beat_every",
        "silence_limit",
        "late",
        "index",
    )

    def __init__(self, sock: socket.socket, index: int, now: float) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.buf = bytearray()
        self.key = b""
        self.parser: FrameParser | None = None
        self.msg: bytearray | None = None
        self.started = now
        self.last_rx = now
        self.max_gap = 0.0
        self.beat_every = 0.0
        self.silence_limit = 0.0
        self.late = False
        self.index = index


class Holder:
    """The selector loop of one holder process."""

    def __init__(self, spec: HolderSpec, shared: Shared) -> None:
        self.spec = spec
        self.shared = shared
        self.sel = selectors.DefaultSelector()
        self.sessions: list[Session] = []
        self.beats: list[tuple[float, int]] = []  # heap of (due, session index)
        self.subscribes: list[tuple[float, int]] = []  # heap of (due, session index)
        self.stats = [0.0] * H_SLOTS
        self.opening = 0
        self.errors: list[str] = []  # first few error descriptions
        self.subscribe_frame = encode(
            "SUBSCRIBE", {"id": "idle", "destination": spec.idle_topic, "receipt": "idle"}
        )
        self.connect_frame = ws_frame(
            encode(
                "CONNECT",
                {
                    "accept-version": "1.2",
                    "host": "localhost",
                    "heart-beat": f"{spec.heartbeat_ms},{spec.heartbeat_ms}",
                },
            )
        )

    def note(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text)

    # -- opening ---------------------------------------------------------------------------

    def start_open(self, now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        session = Session(sock, len(self.sessions), now)
        self.sessions.append(session)
        self.opening += 1
        err = sock.connect_ex((LOCALHOST, self.spec.port))
        if err not in (0, 115):  # EINPROGRESS
            self.fail_open(session, f"connect: {os.strerror(err)}")
            return
        self.sel.register(sock, selectors.EVENT_WRITE, session)

    def fail_open(self, session: Session, why: str) -> None:
        self.note(f"open: {why}")
        self.stats[H_FAILED] += 1
        self.opening -= 1
        self.drop(session)

    def drop(self, session: Session) -> None:
        if session.sock.fileno() >= 0:
            try:
                self.sel.unregister(session.sock)
            except (KeyError, ValueError):  # never registered (connect failed at once)
                pass
        session.state = DEAD
        session.sock.close()

    def connected_tcp(self, session: Session) -> None:
        err = session.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail_open(session, f"connect: {os.strerror(err)}")
            return
        session.key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {self.spec.ws_path} HTTP/1.1\r\nHost: {LOCALHOST}:{self.spec.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {session.key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: v12.stomp\r\n\r\n"
        ).encode()
        session.state = UPGRADING
        self.sel.modify(session.sock, selectors.EVENT_READ, session)
        if not self.write(session, request):
            self.fail_open(session, "handshake: short write")

    def upgraded(self, session: Session) -> None:
        """The handshake's answer is in ``session.buf``: check it, send CONNECT."""
        head, _, rest = bytes(session.buf).partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(session.key + WS_GUID).digest())
        if not lines[0].startswith(b"HTTP/1.1 101"):
            self.fail_open(session, f"handshake refused: {lines[0][:100]!r}")
            return
        if fields.get(b"sec-websocket-accept") != accept:
            self.fail_open(session, "handshake: bad Sec-WebSocket-Accept")
            return
        if fields.get(b"sec-websocket-protocol") != b"v12.stomp":
            self.fail_open(session, "handshake: no v12.stomp subprotocol")
            return
        session.buf = bytearray(rest)
        session.state = LOGGING_IN
        if not self.write(session, self.connect_frame):
            self.fail_open(session, "CONNECT: short write")

    def logged_in(self, session: Session, head: bytes, now: float) -> None:
        beats = (header(head, b"heart-beat") or b"0,0").split(b",")
        sx, sy = int(beats[0]), int(beats[1])
        if not sx or not sy:
            self.fail_open(session, f"heart-beats not negotiated: {sx},{sy}")
            return
        session.state = OPEN
        self.opening -= 1
        self.stats[H_OPENED] += 1
        session.beat_every = sy / 1000.0 * BEAT_SHARE
        session.silence_limit = sx / 1000.0 * SILENCE_FACTOR
        session.last_rx = now
        # Spread the first beats over one interval: sessions open in bursts. The
        # broker beats when it has written nothing for a while, so the receipt
        # of a SUBSCRIBE at a random moment spreads its beats likewise.
        due = now + random.uniform(0.05, session.beat_every)
        heapq.heappush(self.beats, (due, session.index))
        due = now + random.uniform(0.05, session.beat_every)
        heapq.heappush(self.subscribes, (due, session.index))

    # -- I/O -------------------------------------------------------------------------------

    def write(self, session: Session, data: bytes) -> bool:
        """Write a small frame at once; False if the socket did not take all of it."""
        try:
            return session.sock.send(data) == len(data)
        except OSError:
            return False

    def lost(self, session: Session, why: str) -> None:
        """The broker closed (or broke) an open session, or one still opening."""
        if session.state == OPEN:
            self.stats[H_CLOSED] += 1
            self.note(f"closed: {why}")
            self.drop(session)
        else:
            self.fail_open(session, why)

    def readable(self, session: Session, now: float) -> None:
        try:
            data = session.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.lost(session, repr(e))
            return
        if not data:
            self.lost(session, "EOF")
            return
        buf = session.buf
        buf += data
        if session.state == UPGRADING:
            if b"\r\n\r\n" not in buf:
                if len(buf) > 16384:
                    self.fail_open(session, "handshake: answer too long")
                return
            self.upgraded(session)
            if session.state != LOGGING_IN:
                return
            buf = session.buf
        self.frames(session, buf, now)

    def frames(self, session: Session, buf: bytearray, now: float) -> None:
        """The server's (unmasked) WebSocket frames in ``buf``."""
        pos = 0
        size = len(buf)
        while session.state != DEAD:
            head = ws_frame_head(buf, pos)
            if head is None:
                break
            b0, n, hl, masked = head
            if masked:
                self.stats[H_ERRORS] += 1
                self.lost(session, "masked frame from the server")
                return
            if size - pos < hl + n:
                break
            payload = bytes(buf[pos + hl : pos + hl + n])
            pos += hl + n
            opcode = b0 & 0x0F
            if opcode == 9:  # ping
                self.stats[H_PINGS] += 1
                if not self.write(session, ws_frame(payload, 10)):
                    self.stats[H_SEND_FAIL] += 1
            elif opcode == 8:  # close
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                self.lost(session, f"WebSocket close {code} {payload[2:80]!r}")
                return
            elif opcode in (0, 1, 2):
                if opcode:
                    session.msg = bytearray(payload)
                elif session.msg is not None:
                    session.msg += payload
                if b0 & 0x80 and session.msg is not None:
                    message, session.msg = bytes(session.msg), None
                    self.message(session, message, now)
        if session.state != DEAD:
            del buf[:pos]

    def message(self, session: Session, payload: bytes, now: float) -> None:
        """
        One whole WebSocket message: heart-beat EOLs, or STOMP frames. Only
        these count as hearing from the broker, as for a client in a browser,
        which never sees WebSocket pings.
        """
        if session.state == OPEN:
            gap = now - session.last_rx
            if gap > session.max_gap:
                session.max_gap = gap
                if gap > self.stats[H_MAX_GAP]:
                    self.stats[H_MAX_GAP] = gap
            session.last_rx = now
        if not payload.strip(b"\r\n"):
            self.stats[H_BEATS_IN] += payload.count(b"\n")
            return
        if session.parser is None:
            session.parser = FrameParser()
        for command, head, _ in session.parser.feed(payload):
            if command == b"CONNECTED" and session.state == LOGGING_IN:
                self.logged_in(session, head, now)
            elif command == b"RECEIPT" and header(head, b"receipt-id") == b"idle":
                self.stats[H_RECEIPTS] += 1
            elif command == b"ERROR":
                self.stats[H_ERRORS] += 1
                message = header(head, b"message") or b""
                self.note(f"ERROR {message[:120]!r}")
                if session.state == LOGGING_IN:
                    self.fail_open(session, f"CONNECT refused: {message[:120]!r}")
                    return
            else:
                self.stats[H_ERRORS] += 1
                self.note(f"unexpected {command!r}")

    # -- time ------------------------------------------------------------------------------

    def beat(self, now: float) -> None:
        """Send every beat that is due (the heap is in order of due time)."""
        beats = self.beats
        sessions = self.sessions
        frame_of = ws_frame
        while beats and beats[0][0] <= now:
            due, index = heapq.heappop(beats)
            session = sessions[index]
            if session.state != OPEN:
                continue
            lag = now - due
            if lag > self.stats[H_MAX_LAG]:
                self.stats[H_MAX_LAG] = lag
            if self.write(session, frame_of(b"\n")):
                self.stats[H_BEATS_OUT] += 1
            else:
                self.stats[H_SEND_FAIL] += 1
            heapq.heappush(beats, (due + session.beat_every, index))
        subscribes = self.subscribes
        while subscribes and subscribes[0][0] <= now:
            _, index = heapq.heappop(subscribes)
            session = sessions[index]
            if session.state == OPEN and not self.write(session, frame_of(self.subscribe_frame)):
                self.stats[H_SEND_FAIL] += 1

    def scan(self, now: float) -> None:
        """Once a second: opens that take too long, brokers that went silent."""
        for session in self.sessions:
            state = session.state
            if state == OPEN:
                if not session.late and now - session.last_rx > session.silence_limit:
                    session.late = True
                    self.stats[H_LATE] += 1
                    self.note(f"broker silent for {now - session.last_rx:.1f} s")
                elif session.late and now - session.last_rx <= session.silence_limit:
                    session.late = False
            elif state != DEAD and now - session.started > OPEN_TIMEOUT:
                self.fail_open(session, f"not open after {OPEN_TIMEOUT:.0f} s (state {state})")

    def publish(self) -> None:
        base = self.spec.index * H_SLOTS
        self.shared.holder_stats[base : base + H_SLOTS] = self.stats

    def final_gap(self, now: float) -> float:
        gaps = [s.max_gap for s in self.sessions if s.state == OPEN]
        gaps += [now - s.last_rx for s in self.sessions if s.state == OPEN]
        return max(gaps + [self.stats[H_MAX_GAP]])

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> dict:
        spec = self.spec
        to_open = spec.count
        reported = False
        open_started = time.monotonic()
        next_scan = open_started + 1.0
        while True:
            now = time.monotonic()
            if now >= spec.hard_deadline:
                self.note("hard deadline reached before release")
                break
            while to_open and self.opening < spec.in_flight and now < spec.open_deadline:
                self.start_open(now)
                to_open -= 1
            if not reported and ((to_open == 0 and self.opening == 0) or now >= spec.open_deadline):
                if to_open or self.opening:
                    self.note(f"{to_open + self.opening} session(s) not open by the deadline")
                for session in self.sessions:
                    if session.state not in (OPEN, DEAD):
                        self.fail_open(session, "open deadline")
                self.stats[H_FAILED] += to_open
                to_open = 0
                self.publish()
                self.shared.results.put(
                    {
                        "role": "opened",
                        "index": spec.index,
                        "opened": int(self.stats[H_OPENED]),
                        "failed": int(self.stats[H_FAILED]),
                        "seconds": now - open_started,
                        "errors": list(self.errors),
                    }
                )
                reported = True
            timeout = next_scan - now
            if self.beats:
                timeout = min(timeout, self.beats[0][0] - now)
            if self.subscribes:
                timeout = min(timeout, self.subscribes[0][0] - now)
            if self.opening:
                timeout = min(timeout, 0.02)
            for key, _ in self.sel.select(max(timeout, 0.0)):
                session = key.data
                if session.state == CONNECTING:
                    self.connected_tcp(session)
                elif session.state != DEAD:
                    self.readable(session, time.monotonic())
            now = time.monotonic()
            self.beat(now)
            if now >= next_scan:
                next_scan = now + 1.0
                self.scan(now)
                self.publish()
                if reported and self.shared.release.is_set():
                    break
        now = time.monotonic()
        self.scan(now)
        self.stats[H_MAX_GAP] = self.final_gap(now)
        self.publish()
        still_open = sum(1 for s in self.sessions if s.state == OPEN)
        for session in self.sessions:
            if session.state != DEAD:
                session.sock.close()
        return {"still_open": still_open}


def _holder(spec: HolderSpec, shared: Shared) -> None:
    out: dict[str, Any] = {"role": "holder", "index": spec.index, "error": ""}
    holder = None
    try:
        raise_fd_limit()
        holder = Holder(spec, shared)
        out.update(holder.run())
    except Exception as e:  # reported: the run fails on it
        out["error"] = f"holder {spec.index}: {e!r}"
    if holder is not None:
        out["stats"] = list(holder.stats)
        out["errors"] = list(holder.errors)
    out["cpu"] = own_cpu()
    shared.results.put(out)


# -- traffic ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficSpec:
    """
    One traffic client: ``role`` is ``queue-producer``, ``queue-consumer``,
    ``topic-producer`` or ``topic-subscriber``; producers send ``rate``
    msgs/s for ``seconds``; everyone gives up at start + ``seconds`` +
    ``drain`` seconds.
    """

    role: str
    target: Target
    destination: str
    rate: float
    seconds: float
    drain: float
    size: int
    slot: int = 0  # a subscriber's index


def _capacity(spec: TrafficSpec) -> int:
    return int(math.ceil(spec.rate * spec.seconds)) + 1


def _produce(spec: TrafficSpec, shared: Shared, out: dict) -> None:
    """Send ``rate`` msgs/s for ``seconds`` (queue: persistent, each with a receipt)."""
    queue = spec.role == "queue-producer"
    sent_slot, done_slot = (Q_SENT, Q_DONE) if queue else (T_SENT, T_DONE)
    counters = shared.traffic
    conn = open_session(spec.target, time.monotonic() + 30)
    shared.results.put({"role": "ready"})
    if not shared.start.wait(600):
        raise TimeoutError("never started")
    start = time.monotonic()
    deadline = start + spec.seconds + spec.drain
    count = int(spec.rate * spec.seconds)
    body = b"x" * spec.size
    extra = b"persistent:true\n" if queue else b""
    prefix = b"SEND\ndestination:" + spec.destination.encode() + b"\n" + extra
    prefix += b"content-length:" + str(spec.size).encode() + b"\n"
    sent = receipts = 0
    behind = 0.0
    while sent < count:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"producer deadline: {sent} of {count} sent")
        due = min(count, int((now - start) * spec.rate) + 1)
        if due > sent:
            behind = max(behind, now - (start + sent / spec.rate))
            frames = []
            for seq in range(sent, due):
                number = str(seq).encode()
                receipt = b"receipt:" + number + b"\n" if queue else b""
                frames.append(prefix + receipt + b"seq:" + number + b"\n\n" + body + b"\0")
            conn.send(frames)
            sent = due
            counters[sent_slot] = sent
        # Reading is the pause between batches (and answers the broker's pings).
        wait = start + sent / spec.rate - time.monotonic()
        receipts += receipts_in(conn.read(min(max(wait, 0.001), 0.05)))
        if queue:
            counters[Q_RECEIPTS] = receipts
    expected = sent if queue else 0
    while receipts < expected:
        receipts += receipts_in(conn.read_before(deadline))
        counters[Q_RECEIPTS] = receipts
    conn.disconnect(deadline)
    counters[done_slot] = 1
    out.update(sent=sent, receipts=receipts, behind_max=behind)


def _consume(spec: TrafficSpec, shared: Shared, out: dict) -> None:
    """Take every message sent (queue: ACK each one), then look for left-overs."""
    queue = spec.role == "queue-consumer"
    counters = shared.traffic
    sent_slot, done_slot = (Q_SENT, Q_DONE) if queue else (T_SENT, T_DONE)
    mine = Q_RECEIVED if queue else T_RECEIVED + spec.slot
    ack = "client-individual" if queue else "auto"
    conn = open_session(spec.target, time.monotonic() + 30)
    conn.subscribe(spec.destination, ack, time.monotonic() + 30)
    shared.results.put({"role": "ready"})
    if not shared.start.wait(600):
        raise TimeoutError("never started")
    deadline = time.monotonic() + spec.seconds + spec.drain
    tally = Tally(_capacity(spec))
    while not (counters[done_slot] and tally.distinct >= counters[sent_slot]):
        if time.monotonic() > deadline:
            out["error"] = f"{spec.role}: drain deadline passed"
            break
        frames = conn.read(0.2)
        if frames:
            tally.count(conn, frames, ack_each=queue)
            counters[mine] = tally.distinct
    sent = counters[sent_slot]
    conn.disconnect(time.monotonic() + 10)
    seen = tally.seen
    missing = [seq for seq in range(sent) if not seen[seq]]
    out.update(
        received=tally.distinct,
        duplicates=tally.duplicates,
        missing=len(missing),
        missing_first=missing[:10],
        sent_seen=sent,
    )
    if queue:
        # Every ACK was in before the DISCONNECT's receipt: the queue must be empty now.
        probe = open_session(spec.target, time.monotonic() + 10)
        probe.subscribe(spec.destination, "auto", time.monotonic() + 10, sub_id="probe")
        left = []
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            for command, head, _ in probe.read(0.2):
                if command == b"MESSAGE":
                    left.append(int(header(head, b"seq") or -1))
        probe.close()
        out["left_over"] = len(left)
        out["left_over_already_acked"] = sum(1 for s in left if 0 <= s < len(seen) and seen[s])


def _traffic(spec: TrafficSpec, shared: Shared) -> None:
    out: dict[str, Any] = {"role": spec.role, "slot": spec.slot, "error": ""}
    try:
        if spec.role.endswith("producer"):
            _produce(spec, shared, out)
        else:
            _consume(spec, shared, out)
    except Exception as e:  # reported: the run fails on it
        out["error"] = out["error"] or f"{spec.role}: {e!r}"
    out["cpu"] = own_cpu()
    shared.results.put(out)


# -- the run ---------------------------------------------------------------------------------


def scrape(port: int | None) -> dict[str, float]:
    """The broker's ``/metrics`` (a few series), or {} when it cannot be read."""
    if port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://{LOCALHOST}:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name in (
            'stomptw_connections{transport="ws"}',
            "stomptw_heartbeat_timeouts_total",
            "stomptw_messages_queued",
        ):
            out[name.split("{")[0] + ("_ws" if "{" in name else "")] = float(value)
    return out


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (0 with fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


@dataclass
class Row:
    t: float  # seconds since the sessions started opening
    phase: str
    rss_mib: float
    cpu_s: float  # broker's total
    gen_cpu_s: float  # all generator processes' total
    cpu_pct: float = 0.0  # broker, over the interval ending here
    gen_pct: float = 0.0
    metrics: dict = field(default_factory=dict)
    beats_in: float = 0.0
    beats_out: float = 0.0
    beats_in_rate: float = 0.0
    beats_out_rate: float = 0.0
    traffic: list = field(default_factory=list)


class Soak:
    """The broker, the worker processes, the samples."""

    def __init__(self, args: argparse.Namespace, broker: Stomptw, admin_port: int | None) -> None:
        self.args = args
        self.broker = broker
        self.admin_port = admin_port
        self.shared = Shared(
            results=_CTX.Queue(),
            release=_CTX.Event(),
            start=_CTX.Event(),
            holder_stats=_CTX.Array("d", args.workers * H_SLOTS, lock=False),
            traffic=_CTX.Array("q", T_RECEIVED + args.subscribers, lock=False),
        )
        self.procs: list[tuple[str, Any]] = []
        self.rows: list[Row] = []
        self.t0 = time.monotonic()
        self.next_sample = self.t0
        self.inbox: list[dict] = []
        self.phase = "open"
        self.proc_cpu_at: dict[str, dict[int, float]] = {}
        self.proc_cpu_last: dict[int, float] = {}

    def spawn(self, role: str, target, spec) -> None:
        proc = _CTX.Process(target=target, args=(spec, self.shared), daemon=True)
        proc.start()
        self.procs.append((role, proc))

    def gen_cpu(self) -> dict[int, float]:
        out = {}
        for _, proc in self.procs:
            try:
                out[proc.pid] = cpu_seconds(proc.pid)
            except (OSError, IndexError):
                out[proc.pid] = self.proc_cpu_last.get(proc.pid, 0.0)
        self.proc_cpu_last = out
        return out

    def sample(self) -> Row:
        now = time.monotonic()
        pid = self.broker.pid
        gen = self.gen_cpu()
        stats = list(self.shared.holder_stats)
        beats_in = sum(stats[i + H_BEATS_IN] for i in range(0, len(stats), H_SLOTS))
        beats_out = sum(stats[i + H_BEATS_OUT] for i in range(0, len(stats), H_SLOTS))
        row = Row(
            t=now - self.t0,
            phase=self.phase,
            rss_mib=memory(pid)[0] / 2**20,
            cpu_s=cpu_seconds(pid),
            gen_cpu_s=sum(gen.values()),
            metrics=scrape(self.admin_port),
            beats_in=beats_in,
            beats_out=beats_out,
            traffic=list(self.shared.traffic),
        )
        if self.rows:
            prev = self.rows[-1]
            dt = max(row.t - prev.t, 1e-9)
            row.cpu_pct = (row.cpu_s - prev.cpu_s) / dt * 100
            row.gen_pct = (row.gen_cpu_s - prev.gen_cpu_s) / dt * 100
            row.beats_in_rate = (beats_in - prev.beats_in) / dt
            row.beats_out_rate = (beats_out - prev.beats_out) / dt
        self.rows.append(row)
        self.print_row(row)
        self.next_sample = now + self.args.sample_every
        return row

    HEAD = (
        f"{'t s':>6} {'phase':6} {'ws conns':>8} {'RSS MiB':>8} {'cpu %':>6} {'gen %':>6} "
        f"{'beats in/s':>10} {'out/s':>7} {'q sent':>7} {'q rcpt':>7} {'q acked':>7} "
        f"{'t sent':>7} {'t recv':>8} {'queued':>6}"
    )

    def print_row(self, row: Row) -> None:
        ws = row.metrics.get("stomptw_connections_ws")
        queued = row.metrics.get("stomptw_messages_queued")
        tr = row.traffic
        print(
            f"{row.t:6.0f} {row.phase:6} {'-' if ws is None else f'{ws:.0f}':>8} "
            f"{row.rss_mib:8.1f} {row.cpu_pct:6.1f} {row.gen_pct:6.1f} "
            f"{row.beats_in_rate:10.0f} {row.beats_out_rate:7.0f} {tr[Q_SENT]:7d} "
            f"{tr[Q_RECEIPTS]:7d} {tr[Q_RECEIVED]:7d} {tr[T_SENT]:7d} "
            f"{sum(tr[T_RECEIVED:]):8d} {'-' if queued is None else f'{queued:.0f}':>6}",
            flush=True,
        )

    def wait_for(
        self, role: str, count: int, seconds: float, broker_alive: bool = True
    ) -> list[dict]:
        """
        ``count`` reports of ``role`` within ``seconds``, sampling meanwhile
        (with ``broker_alive``: failing as soon as the broker has exited).
        """
        deadline = time.monotonic() + seconds
        while True:
            got = [m for m in self.inbox if m["role"] == role]
            if len(got) >= count:
                for m in got:
                    self.inbox.remove(m)
                return got
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"{len(got)} of {count} {role!r} reports in {seconds:.0f} s")
            if self.broker.proc.poll() is not None:
                if broker_alive:
                    raise RuntimeError("the broker exited")
            elif now >= self.next_sample:
                self.sample()
            try:
                item = self.shared.results.get(timeout=max(0.01, min(0.5, self.next_sample - now)))
                self.inbox.append(item)
            except Exception:  # queue.Empty
                if not any(p.is_alive() for _, p in self.procs):
                    raise RuntimeError("every worker process has exited") from None

    def wait_for_any(self, roles: list[str], seconds: float) -> list[dict]:
        """One report per entry of ``roles`` (names may repeat), within ``seconds``."""
        wanted = collections.Counter(roles)
        got: list[dict] = []
        deadline = time.monotonic() + seconds
        while True:
            for m in list(self.inbox):
                if wanted[m["role"]] > 0:
                    wanted[m["role"]] -= 1
                    got.append(m)
                    self.inbox.remove(m)
            if not +wanted:
                return got
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"no report from {sorted((+wanted).elements())}")
            if self.broker.proc.poll() is not None:
                raise RuntimeError("the broker exited")
            if now >= self.next_sample:
                self.sample()
            try:
                self.inbox.append(
                    self.shared.results.get(timeout=max(0.01, min(0.5, self.next_sample - now)))
                )
            except Exception:  # queue.Empty
                pass

    def hold_until(self, when: float) -> None:
        """
        Sample until ``when``, the last sample at ``when`` itself (one due less
        than half an interval before it is left to that last one).
        """
        while (now := time.monotonic()) < when:
            if self.broker.proc.poll() is not None:
                raise RuntimeError("the broker exited")
            if now >= self.next_sample and when - now > self.args.sample_every / 2:
                self.sample()
            try:
                self.inbox.append(
                    self.shared.results.get(
                        timeout=max(0.01, min(0.5, self.next_sample - now, when - now))
                    )
                )
            except Exception:  # queue.Empty
                pass
        self.sample()

    def finish(self) -> None:
        self.shared.release.set()
        self.shared.start.set()
        deadline = time.monotonic() + 20
        for _, proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
        for _, proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def broker_log_checks(log: str) -> dict:
    return {
        "tracebacks": log.count("Traceback"),
        "heartbeat_timeouts_logged": len(re.findall(r"heart-beat timeout: nothing from", log)),
    }


def run(args: argparse.Namespace, workdir: Path) -> int:
    soft = raise_fd_limit(65536)
    need_broker = args.connections + args.subscribers + 200
    if soft < need_broker:
        print(
            f"the fd limit is {soft} (hard limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}); "
            f"{args.connections} sessions need about {need_broker}: raise the hard limit "
            "(ulimit -Hn) or use fewer --connections",
            file=sys.stderr,
        )
        return 2
    broker_args = [
        "--max-connections",
        str(args.connections + 1000),
        "--heartbeat",
        "1000,1000",
        "--admin",
        f"tcp:0:interface={LOCALHOST}",
        *shlex.split(args.broker_args),
    ]
    try:
        broker = Stomptw(workdir, args.twistd, broker_args)
    except (RuntimeError, OSError) as e:
        print(f"verdict: FAIL: {e}", file=sys.stderr)
        return 1
    found = re.search(r"admin listening on \S+ \(127\.0\.0\.1:(\d+)\)", broker.log(None))
    admin_port = int(found.group(1)) if found else None
    ws = broker.target("ws")
    traffic_target = broker.target(args.traffic_transport)
    soak = Soak(args, broker, admin_port)
    failures: list[str] = []
    holders_final: list[dict] = []
    traffic_results: list[dict] = []
    opened_reports: list[dict] = []
    slope_rows: list[Row] = []
    beat_rows: list[Row] = []
    soak_start = soak_end = 0.0
    broker_cpu = {}
    log = ""
    try:
        rss0 = memory(broker.pid)[0] / 2**20
        print(
            f"soak: stomptw pid {broker.pid} (RSS {rss0:.1f} MiB), {args.connections} WebSocket "
            f"sessions from {args.workers} processes, heart-beat "
            f"{args.heartbeat_ms},{args.heartbeat_ms}; then {args.seconds:.0f} s of queue "
            f"{args.rate:g} msg/s (persistent, receipts, client-individual) and topic "
            f"{args.topic_rate:g} msg/s x {args.subscribers} subscribers over "
            f"{args.traffic_transport}; a row every {args.sample_every:g} s",
            flush=True,
        )
        print(Soak.HEAD, flush=True)
        now = time.monotonic()
        shares = [
            args.connections // args.workers + (1 if i < args.connections % args.workers else 0)
            for i in range(args.workers)
        ]
        tag = uuid.uuid4().hex[:8]
        hard = now + args.open_seconds + args.seconds + args.drain_seconds + 120
        for i, n in enumerate(shares):
            spec = HolderSpec(
                index=i,
                port=ws.port,
                ws_path=ws.ws_path,
                count=n,
                heartbeat_ms=args.heartbeat_ms,
                in_flight=max(1, args.opening // args.workers),
                idle_topic=f"/topic/soak-idle-{tag}",
                open_deadline=now + args.open_seconds,
                hard_deadline=hard,
            )
            soak.spawn(f"holder {i}", _holder, spec)
        soak.sample()
        opened_reports = soak.wait_for("opened", args.workers, args.open_seconds + 30)
        opened = sum(r["opened"] for r in opened_reports)
        open_s = max(r["seconds"] for r in opened_reports)
        print(f"# {opened}/{args.connections} sessions open in {open_s:.1f} s", flush=True)
        if opened < args.connections:
            errs = [e for r in opened_reports for e in r["errors"]][:5]
            failures.append(f"{args.connections - opened} session(s) not opened: {errs}")
        # Traffic: consumers first (subscribed, with a receipt), then the producers.
        queue, topic = f"/queue/soak-{tag}", f"/topic/soak-{tag}"
        common = {"seconds": args.seconds, "drain": args.drain_seconds, "size": args.size}
        q = {"target": traffic_target, "destination": queue, "rate": args.rate, **common}
        t = {"target": traffic_target, "destination": topic, "rate": args.topic_rate, **common}
        if args.rate > 0:
            soak.spawn("queue-consumer", _traffic, TrafficSpec("queue-consumer", **q))
        for i in range(args.subscribers if args.topic_rate > 0 else 0):
            spec = TrafficSpec("topic-subscriber", slot=i, **t)
            soak.spawn(f"topic-subscriber {i}", _traffic, spec)
        consumers = (args.rate > 0) + (args.subscribers if args.topic_rate > 0 else 0)
        soak.wait_for("ready", consumers, 60)
        if args.rate > 0:
            soak.spawn("queue-producer", _traffic, TrafficSpec("queue-producer", **q))
        if args.topic_rate > 0:
            soak.spawn("topic-producer", _traffic, TrafficSpec("topic-producer", **t))
        soak.wait_for("ready", (args.rate > 0) + (args.topic_rate > 0), 60)
        warmup = min(args.warmup, args.seconds / 2)
        soak.phase = "soak"
        soak.sample()
        first = len(soak.rows) - 1
        broker_cpu["soak_start"] = cpu_seconds(broker.pid)
        soak.proc_cpu_at["soak_start"] = soak.gen_cpu()
        soak_start = time.monotonic()
        soak.shared.start.set()
        soak.hold_until(soak_start + args.seconds)
        soak_end = time.monotonic()
        broker_cpu["soak_end"] = cpu_seconds(broker.pid)
        soak.proc_cpu_at["soak_end"] = soak.gen_cpu()
        # The slopes leave out the warm-up (first WebSocket pings, caches filling).
        slope_rows = [r for r in soak.rows[first:] if r.t >= soak.rows[first].t + warmup]
        beat_rows = soak.rows[first:]
        soak.phase = "drain"
        roles = [r.split(" ")[0] for r, _ in soak.procs if not r.startswith("holder")]
        traffic_results = soak.wait_for_any(roles, args.drain_seconds + 60)
        soak.phase = "end"
        if time.monotonic() - soak.t0 - soak.rows[-1].t > 1.0:
            soak.sample()
        final_metrics = scrape(admin_port)
        soak.shared.release.set()
        holders_final = soak.wait_for("holder", args.workers, 60)
    except (TimeoutError, RuntimeError) as e:
        failures.append(f"run: {e}")
        final_metrics = scrape(admin_port) if broker.proc.poll() is None else {}
        # What the workers said so far, and the holders' figures.
        soak.shared.release.set()
        try:
            holders_final = soak.wait_for("holder", args.workers, 30, broker_alive=False)
        except (TimeoutError, RuntimeError):
            pass
        traffic_results += [m for m in soak.inbox if m["role"] not in ("ready", "opened")]
    finally:
        alive = broker.proc.poll() is None
        soak.finish()
        log = broker.log(None)
        broker.stop()
    if not alive:
        failures.append("the broker process died")
    return report(
        args,
        soak,
        failures,
        opened_reports,
        holders_final,
        traffic_results,
        slope_rows,
        beat_rows,
        max(0.0, soak_end - soak_start),
        broker_cpu,
        final_metrics,
        log,
    )


def report(
    args: argparse.Namespace,
    soak: Soak,
    failures: list[str],
    opened_reports: list[dict],
    holders: list[dict],
    traffic: list[dict],
    rows: list[Row],
    beat_rows: list[Row],
    soak_seconds: float,
    broker_cpu: dict,
    metrics: dict,
    log: str,
) -> int:
    summary: dict[str, Any] = {"connections": args.connections, "seconds": soak_seconds}
    print()
    # -- slopes
    rss_points = [(r.t / 60, r.rss_mib) for r in rows]
    cpu_points = [(r.t / 60, r.cpu_pct) for r in rows[1:]]
    rss_slope, cpu_slope = slope(rss_points), slope(cpu_points)
    rss_flat = rss_slope <= args.max_rss_slope
    cpu_flat = abs(cpu_slope) <= args.max_cpu_slope
    if rows:
        print(
            f"RSS slope: {rss_slope:+.3f} MiB/min over {len(rows)} samples "
            f"(t={rows[0].t:.0f}..{rows[-1].t:.0f} s, {rows[0].rss_mib:.1f} -> "
            f"{rows[-1].rss_mib:.1f} MiB, peak {max(r.rss_mib for r in rows):.1f}): "
            f"{'flat' if rss_flat else 'RISING'} (limit {args.max_rss_slope:g} MiB/min)"
        )
        mean_cpu = sum(y for _, y in cpu_points) / max(len(cpu_points), 1)
        print(
            f"CPU slope: {cpu_slope:+.3f} %/min (broker mean {mean_cpu:.1f} % of a core over "
            f"{len(cpu_points)} intervals): {'flat' if cpu_flat else 'NOT FLAT'} "
            f"(limit {args.max_cpu_slope:g} %/min"
            f"{', fails the run' if args.fail_on_cpu_slope else ', reported only'})"
        )
        summary.update(rss_slope_mib_per_min=rss_slope, cpu_slope_pct_per_min=cpu_slope)
        summary["rss_mib"] = [round(r.rss_mib, 2) for r in rows]
    if rows and not rss_flat:
        failures.append(f"RSS slope {rss_slope:+.3f} MiB/min above {args.max_rss_slope:g}")
    if rows and not cpu_flat and args.fail_on_cpu_slope:
        failures.append(f"CPU slope {cpu_slope:+.3f} %/min beyond {args.max_cpu_slope:g}")
    if rows and rows[-1].t - rows[0].t < 300:
        print(
            f"(a slope over {rows[-1].t - rows[0].t:.0f} s says little: warm-up steps dominate; "
            "run for 10 minutes or more to judge it)"
        )
    # -- heart-beats
    stats = [0.0] * H_SLOTS
    for h in holders:
        for i, v in enumerate(h.get("stats", [])):
            stats[i] = max(stats[i], v) if i in (H_MAX_GAP, H_MAX_LAG) else stats[i] + v
        if h.get("error"):
            failures.append(h["error"])
    opened = sum(r["opened"] for r in opened_reports)
    open_s = max((r["seconds"] for r in opened_reports), default=0.0)
    hb_metric = metrics.get("stomptw_heartbeat_timeouts_total")
    checks = broker_log_checks(log)
    limit_s = args.heartbeat_ms / 1000 * SILENCE_FACTOR
    if len(beat_rows) >= 2:
        span = max(beat_rows[-1].t - beat_rows[0].t, 1e-9)
        rate_in = (beat_rows[-1].beats_in - beat_rows[0].beats_in) / span
        rate_out = (beat_rows[-1].beats_out - beat_rows[0].beats_out) / span
    else:
        rate_in = rate_out = 0.0
    receipts = int(stats[H_RECEIPTS])
    print(
        f"sessions: {opened}/{args.connections} opened in {open_s:.1f} s "
        f"({opened / max(open_s, 1e-9):.0f}/s), {sum(h.get('still_open', 0) for h in holders)} "
        "still open at the end"
    )
    print(
        f"heart-beats: {stats[H_BEATS_IN]:.0f} from the broker, {stats[H_BEATS_OUT]:.0f} sent "
        f"({rate_in:.0f}/s and {rate_out:.0f}/s while the traffic ran), {stats[H_PINGS]:.0f} "
        f"WebSocket pings answered; longest broker silence {stats[H_MAX_GAP]:.1f} s (limit "
        f"{limit_s:.0f} s); generator beat lag max {stats[H_MAX_LAG] * 1000:.0f} ms; "
        f"{receipts}/{opened} idle SUBSCRIBEs receipted"
    )
    if receipts < opened:
        failures.append(f"only {receipts} of {opened} sessions had their SUBSCRIBE receipted")
    unhealthy = {
        "heartbeat_timeouts_broker_metrics": None if hb_metric is None else int(hb_metric),
        "heartbeat_timeouts_broker_log": checks["heartbeat_timeouts_logged"],
        "broker_silences": int(stats[H_LATE]),
        "error_frames": int(stats[H_ERRORS]),
        "disconnects": int(stats[H_CLOSED]),
        "send_failures": int(stats[H_SEND_FAIL]),
    }
    print(
        "healthy sessions: "
        f"{'?' if hb_metric is None else int(hb_metric)} heart-beat timeouts (broker "
        f"/metrics; log {unhealthy['heartbeat_timeouts_broker_log']}), "
        f"{unhealthy['broker_silences']} broker silences over {limit_s:.0f} s, "
        f"{unhealthy['error_frames']} ERROR frames, {unhealthy['disconnects']} disconnects, "
        f"{unhealthy['send_failures']} failed writes"
    )
    errors = [e for h in holders for e in h.get("errors", [])][:5]
    if errors:
        print(f"  first holder notes: {errors}")
    bad = {k: v for k, v in unhealthy.items() if v}
    if bad:
        failures.append(f"unhealthy sessions: {bad}")
    summary.update(opened=opened, open_seconds=open_s, **unhealthy)
    summary.update(
        beats_in=stats[H_BEATS_IN], beats_out=stats[H_BEATS_OUT], max_silence_s=stats[H_MAX_GAP]
    )
    # -- traffic
    by_role: dict[str, list[dict]] = {}
    for item in traffic:
        by_role.setdefault(item["role"], []).append(item)
        if item.get("error"):
            failures.append(item["error"])
    if args.rate > 0:
        prod = (by_role.get("queue-producer") or [{}])[0]
        cons = (by_role.get("queue-consumer") or [{}])[0]
        sent, receipts = prod.get("sent", 0), prod.get("receipts", 0)
        print(
            f"queue: {sent} sent (persistent), {receipts} receipted, {cons.get('received', 0)} "
            f"delivered and ACKed, {cons.get('missing', '?')} lost, "
            f"{cons.get('duplicates', '?')} duplicates, {cons.get('left_over', '?')} left over "
            f"in the queue ({cons.get('left_over_already_acked', '?')} of them already ACKed); "
            f"producer at most {prod.get('behind_max', 0) * 1000:.0f} ms behind schedule"
        )
        if cons.get("missing_first"):
            print(f"  first missing seq: {cons['missing_first']}")
        if not sent or receipts != sent or cons.get("missing") != 0:
            failures.append(f"queue: {sent} sent, {receipts} receipted, {cons.get('missing')} lost")
        if cons.get("duplicates") != 0 or cons.get("left_over") != 0:
            failures.append(
                f"queue: {cons.get('duplicates')} duplicates, {cons.get('left_over')} left over"
            )
        summary.update(queue_sent=sent, queue_lost=cons.get("missing"))
        summary.update(queue_duplicates=cons.get("duplicates"), queue_left=cons.get("left_over"))
    if args.topic_rate > 0:
        prod = (by_role.get("topic-producer") or [{}])[0]
        subs = by_role.get("topic-subscriber", [])
        sent = prod.get("sent", 0)
        lost = sum(s.get("missing", 0) for s in subs) + sent * (args.subscribers - len(subs))
        dup = sum(s.get("duplicates", 0) for s in subs)
        got = sum(s.get("received", 0) for s in subs)
        print(
            f"topic: {sent} sent x {args.subscribers} subscribers: {got} delivered, {lost} lost, "
            f"{dup} duplicates; producer at most {prod.get('behind_max', 0) * 1000:.0f} ms behind"
        )
        if not sent or lost or dup:
            failures.append(f"topic: {sent} sent, {lost} lost, {dup} duplicates")
        summary.update(topic_sent=sent, topic_lost=lost, topic_duplicates=dup)
    # -- CPU
    at0 = soak.proc_cpu_at.get("soak_start", {})
    at1 = soak.proc_cpu_at.get("soak_end", {})
    span = max(soak_seconds, 1e-9)
    final_cpu = {}
    for item in holders + traffic:
        key = f"holder {item['index']}" if item["role"] == "holder" else item["role"]
        if item["role"] == "topic-subscriber":
            key += f" {item['slot']}"
        final_cpu[key] = item.get("cpu", 0.0)
    complete = "soak_end" in broker_cpu
    if complete:
        print(f"CPU while the traffic ran ({soak_seconds:.0f} s) in % of one core; whole run in s:")
        b = (broker_cpu["soak_end"] - broker_cpu["soak_start"]) / span * 100
        print(f"  {'broker (twistd)':22} {b:6.1f} %")
        summary["broker_cpu_pct"] = b
    else:
        print("CPU of each generator process over the whole run, in s:")
    gen_total = 0.0
    for role, proc in soak.procs:
        pct = (at1.get(proc.pid, 0.0) - at0.get(proc.pid, 0.0)) / span * 100
        gen_total += pct
        share = f"{pct:6.1f} %" if complete else " " * 8
        print(f"  {role:22} {share}   {final_cpu.get(role, 0.0):7.1f} s")
    if complete:
        print(f"  {'generator, all':22} {gen_total:6.1f} %")
        summary["generator_cpu_pct"] = gen_total
    # -- broker log
    print(f"broker log: {checks['tracebacks']} tracebacks")
    if checks["tracebacks"]:
        failures.append(f"{checks['tracebacks']} traceback(s) in the broker's log")
        start = log.find("Traceback")
        print(log[max(0, start - 300) : start + 2000])
    summary["failures"] = failures
    summary["ok"] = not failures
    print("verdict: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    print("JSON " + json.dumps(summary))
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000, help="idle WebSocket sessions")
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the traffic runs")
    parser.add_argument("--rate", type=float, default=100.0, help="queue messages/s (0: none)")
    parser.add_argument(
        "--topic-rate", type=float, default=None, help="topic messages/s (default: --rate; 0: none)"
    )
    parser.add_argument("--subscribers", type=int, default=3, help="topic subscribers")
    parser.add_argument("--size", type=int, default=256, help="message body bytes")
    parser.add_argument("--heartbeat-ms", type=int, default=10_000, help="sessions' heart-beat")
    parser.add_argument("--workers", type=int, default=4, help="processes holding the sessions")
    parser.add_argument("--opening", type=int, default=128, help="sessions opening at once")
    parser.add_argument(
        "--open-seconds", type=float, default=300.0, help="time allowed to open every session"
    )
    parser.add_argument(
        "--drain-seconds", type=float, default=60.0, help="time allowed to drain at the end"
    )
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between rows")
    parser.add_argument(
        "--warmup",
        type=float,
        default=60.0,
        help="seconds of traffic left out of the slopes (at most half of --seconds)",
    )
    parser.add_argument(
        "--max-rss-slope", type=float, default=1.0, help="fail above this RSS slope, MiB/min"
    )
    parser.add_argument(
        "--max-cpu-slope",
        type=float,
        default=1.0,
        help="a CPU slope beyond this many %%-points of a core per minute is not flat",
    )
    parser.add_argument("--fail-on-cpu-slope", action="store_true")
    parser.add_argument("--traffic-transport", choices=("ws", "tcp"), default="ws")
    parser.add_argument("--broker-args", default="", help="more twistd stomptw options")
    parser.add_argument("--workdir", type=Path, help="keep the broker's data and log here")
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")))
    args = parser.parse_args(argv)
    if args.topic_rate is None:
        args.topic_rate = args.rate
    if args.connections < 1 or args.workers < 1 or args.seconds <= 0:
        parser.error("--connections, --workers and --seconds must be positive")
    args.workers = min(args.workers, args.connections)
    if os.sep in args.twistd:  # the broker runs in its own directory
        args.twistd = str(Path(args.twistd).resolve())
    if args.workdir:
        return run(args, args.workdir.resolve())
    with tempfile.TemporaryDirectory(prefix="stomptw-soak-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
