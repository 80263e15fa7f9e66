"""
permessage-deflate: bytes on the wire and broker CPU per message, for
JSON-like 1 KiB bodies, with and without compression.

Two parts:

- **end to end**: ``twistd stomptw`` with ``--ws-compression on`` and then
  ``off``. One producer over TCP publishes ``--messages`` JSON bodies of
  about ``--size`` bytes to a topic that ``--subscribers`` WebSocket
  clients read, each offering permessage-deflate; every subscriber inflates
  and checks what it gets. Figures: WebSocket bytes on the wire per
  delivery (frame heads included), the broker's CPU per delivery (from
  /proc), and this generator's CPU beside it.
- **per delivery, in process**: the same MESSAGE frames through the broker's
  shared compressor (:class:`stomptw.wscompress.SharedDeflate`), and through
  Autobahn's per-connection compressor with and without context takeover,
  the design the broker did not take: CPU and bytes per delivery, and the
  memory a connection's compressor keeps.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import selectors
import tempfile
import time
import zlib
from pathlib import Path

from harness import LOCALHOST, Stomptw, Target, cpu_seconds
from loadgen import connect_socket, encode, open_session, own_cpu, ws_frame, ws_frame_head

TOPIC = "/topic/bench-deflate"
SYNC_TAIL = b"\x00\x00\xff\xff"


def json_bodies(count: int, size: int, seed: int = 7) -> list[bytes]:
    """``count`` distinct JSON documents of about ``size`` bytes (prices that move)."""
    rnd = random.Random(seed)
    out = []
    for n in range(count):
        items, text = [], "[]"
        while len(text) < size:
            items.append(
                {
                    "seq": n,
                    "symbol": f"SYM{rnd.randrange(200)}",
                    "price": round(rnd.uniform(10, 500), 2),
                    "qty": rnd.randrange(1, 5000),
                    "side": rnd.choice(("buy", "sell")),
                }
            )
            text = json.dumps(items)
        out.append(text.encode()[:size].ljust(size, b" "))
    return out


class Subscriber:
    """A WebSocket STOMP subscriber that offers permessage-deflate and inflates what it gets."""

    def __init__(self, port: int, path: str, deadline: float) -> None:
        self.sock = connect_socket(port, 10.0)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v12.stomp\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        self.negotiated = b"permessage-deflate" in head.lower()
        self.buf = bytearray(rest)
        self.inflate = zlib.decompressobj(-15)
        self.wire = self.messages = self.payload = 0
        frames = [
            encode("CONNECT", {"accept-version": "1.2", "host": "localhost", "heart-beat": "0,0"}),
            encode("SUBSCRIBE", {"id": "0", "destination": TOPIC, "receipt": "s"}),
        ]
        self.sock.sendall(b"".join(ws_frame(f) for f in frames))
        while self.messages < 2:  # CONNECTED and the RECEIPT
            if time.monotonic() > deadline:
                raise TimeoutError("subscribe")
            self.buf += self.sock.recv(65536)
            self.read()
        self.wire = self.messages = self.payload = 0
        self.sock.setblocking(False)

    def read(self) -> None:
        """Take whole frames from the buffer: count wire bytes, inflate, check."""
        buf, pos = self.buf, 0
        while True:
            head = ws_frame_head(buf, pos)
            if head is None:
                break
            b0, n, hl, _ = head
            if len(buf) < pos + hl + n:
                break
            payload = bytes(buf[pos + hl : pos + hl + n])
            pos += hl + n
            self.wire += hl + n
            if b0 & 0x40:
                payload = self.inflate.decompress(payload + SYNC_TAIL)
            if payload.startswith(b"ERROR"):
                raise RuntimeError(payload[:300])
            self.messages += 1
            self.payload += len(payload)
        del buf[:pos]


def end_to_end(twistd: str, compression: str, args: argparse.Namespace) -> dict:
    """One broker run with ``--ws-compression compression``: the figures of that row."""
    bodies = json_bodies(args.messages, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        broker = Stomptw(Path(tmp), twistd, ["--ws-compression", compression])
        try:
            deadline = time.monotonic() + args.timeout
            subs = [
                Subscriber(broker.ports["ws"], "/ws", deadline) for _ in range(args.subscribers)
            ]
            sel = selectors.DefaultSelector()
            for s in subs:
                sel.register(s.sock, selectors.EVENT_READ, s)
            producer = open_session(Target("stomptw", "tcp", broker.ports["stomp"]), deadline)
            frames = [encode("SEND", {"destination": TOPIC}, b) for b in bodies]
            cpu0, gen0, t0 = cpu_seconds(broker.proc.pid), own_cpu(), time.monotonic()
            expected = args.messages * args.subscribers
            sent = 0
            while sum(s.messages for s in subs) < expected:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{sum(s.messages for s in subs)} of {expected}")
                if sent < len(frames):
                    producer.send(frames[sent : sent + 200])
                    sent += 200
                for key, _ in sel.select(0 if sent < len(frames) else 0.5):
                    sub = key.data
                    try:
                        chunk = sub.sock.recv(1 << 18)
                    except BlockingIOError:
                        continue
                    sub.buf += chunk
                    sub.read()
            seconds = time.monotonic() - t0
            broker_cpu = cpu_seconds(broker.proc.pid) - cpu0
            gen_cpu = own_cpu() - gen0
        finally:
            broker.stop()
    wire = sum(s.wire for s in subs)
    payload = sum(s.payload for s in subs)
    return {
        "compression": compression,
        "negotiated": all(s.negotiated for s in subs),
        "deliveries": expected,
        "wire_bytes_per_delivery": wire / expected,
        "stomp_bytes_per_delivery": payload / expected,
        "broker_cpu_us_per_delivery": broker_cpu / expected * 1e6,
        "deliveries_per_s": expected / seconds,
        "broker_cpu_s": broker_cpu,
        "gen_cpu_s": gen_cpu,
        "seconds": seconds,
    }


def in_process(args: argparse.Namespace) -> list[dict]:
    """The three compressor designs on the same deliveries: CPU and bytes each, and memory."""
    from autobahn.websocket.compress_deflate import PerMessageDeflate

    from stomptw.encoding import encode_message, message_parts
    from stomptw.wscompress import SharedDeflate

    bodies = json_bodies(min(args.messages, 5000), args.size)
    deliveries = []
    for n, body in enumerate(bodies):
        parts = message_parts(f"m-{n}", TOPIC, {"content-type": "application/json"}, body, "1.2")
        for i in range(args.subscribers):
            deliveries.append((i, encode_message(parts, str(i), "1.2")))
    rows = []
    shared = SharedDeflate()
    t0 = time.process_time()
    out = sum(len(shared.compress(frame)) for _, frame in deliveries)
    rows.append(("shared, no context (stomptw)", time.process_time() - t0, out))
    for label, no_context in (
        ("per connection, context kept", False),
        ("per connection, no context", True),
    ):
        pmces = [
            PerMessageDeflate(True, no_context, False, 0, 0, 0) for _ in range(args.subscribers)
        ]
        t0 = time.process_time()
        out = 0
        for i, frame in deliveries:
            p = pmces[i]
            p.start_compress_message()
            out += len(p.compress_message_data(frame) + p.end_compress_message())
        rows.append((label, time.process_time() - t0, out))
    plain = sum(len(f) for _, f in deliveries)
    result = [
        {
            "design": label,
            "cpu_us_per_delivery": cpu / len(deliveries) * 1e6,
            "bytes_per_delivery": size / len(deliveries),
            "ratio": size / plain,
        }
        for label, cpu, size in rows
    ]
    result.append(
        {
            "design": "none",
            "cpu_us_per_delivery": 0.0,
            "bytes_per_delivery": plain / len(deliveries),
            "ratio": 1.0,
        }
    )
    # What a connection's own compressor keeps between messages.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = [PerMessageDeflate(True, False, False, 0, 0, 0) for _ in range(1000)]
    for p in kept:
        p.start_compress_message()
        p.compress_message_data(deliveries[0][1])
        p.end_compress_message()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    result.append({"design": "per-connection compressor memory", "kib_each": grown / 1000})
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--subscribers", type=int, default=10)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--twistd", default=str(Path(os.sys.executable).with_name("twistd")))
    args = p.parse_args()
    for compression in ("off", "on"):
        print(json.dumps(end_to_end(args.twistd, compression, args)), flush=True)
    for row in in_process(args):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
