"""
Streams: how fast a /stream/ takes messages, replays them, and brings a
reconnecting reader current while the stream stays live.

Starts stomptw (``twistd``, TCP only) once per message store and runs, with
this process as the only client (raw sockets, loadgen.Conn):

- **publish**: ``--messages`` (100,000) SENDs of ``--size`` (100) bytes to one
  stream, pipelined in batches of 1,000, the last batch with a RECEIPT: the
  time from the first byte to that RECEIPT (every message stored);
- **replay**: a new subscriber with ``x-stream-offset:first`` reads them all;
- **catch-up**: a reader that resumes ``--behind`` (50,000) messages back
  while a producer keeps publishing at ``--live-rate`` (2,000/s): how long
  until its newest offset is within 10 of the producer's, and its rate.

Each row has the broker's CPU time (from /proc) and this generator's, so a
reader can see that the generator is not what limits the figure.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from harness import Stomptw, cpu_seconds
from loadgen import Conn, encode, header, open_session, own_cpu

STREAM = "/stream/bench"


def _send_all(conn: Conn, count: int, size: int, start: int = 0) -> None:
    body = b"x" * size
    for first in range(start, start + count, 1000):
        last = min(first + 1000, start + count)
        frames = [
            encode("SEND", {"destination": STREAM, "seq": str(n)}, body) for n in range(first, last)
        ]
        if last == start + count:
            frames[-1] = encode(
                "SEND", {"destination": STREAM, "seq": str(last - 1), "receipt": "done"}, body
            )
        conn.send(frames)


def _wait_receipt(conn: Conn, deadline: float) -> None:
    while True:
        command, head, _ = conn.next_frame(deadline)
        if command == b"RECEIPT":
            return
        if command == b"ERROR":
            raise RuntimeError(head[:300])


def _subscribe(conn: Conn, offset: str, deadline: float) -> None:
    conn.send(
        [
            encode(
                "SUBSCRIBE",
                {"destination": STREAM, "id": "r", "x-stream-offset": offset, "receipt": "sub"},
            )
        ]
    )


def _read_until(conn: Conn, predicate, deadline: float) -> tuple[int, int]:
    """Read MESSAGEs until ``predicate(last_offset)``; (messages read, last offset)."""
    read, last = 0, -1
    while True:
        for command, head, _ in conn.read_before(deadline):
            if command == b"MESSAGE":
                read += 1
                last = int(header(head, b"x-stream-offset"))
        if last >= 0 and predicate(last):
            return read, last


def run(store: str, args: argparse.Namespace, twistd: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as work:
        # No byte limit: every one of the messages stays in the stream.
        limits = ["--stream-max-bytes", "0", "--stream-max-count", "0"]
        broker = Stomptw(Path(work), twistd, ["--store", store, *limits], ws=False)
        try:
            target = broker.target("tcp")
            n = args.messages
            deadline = time.monotonic() + args.timeout

            # publish
            producer = open_session(target, deadline)
            cpu0, gen0, t0 = cpu_seconds(broker.pid), own_cpu(), time.perf_counter()
            _send_all(producer, n, args.size)
            _wait_receipt(producer, deadline)
            elapsed = time.perf_counter() - t0
            rows.append(
                {
                    "store": store,
                    "what": "publish",
                    "messages": n,
                    "seconds": elapsed,
                    "broker_cpu": cpu_seconds(broker.pid) - cpu0,
                    "gen_cpu": own_cpu() - gen0,
                }
            )

            # replay
            reader = open_session(target, deadline)
            cpu0, gen0, t0 = cpu_seconds(broker.pid), own_cpu(), time.perf_counter()
            _subscribe(reader, "first", deadline)
            read, _ = _read_until(reader, lambda last: last >= n - 1, deadline)
            elapsed = time.perf_counter() - t0
            rows.append(
                {
                    "store": store,
                    "what": "replay",
                    "messages": read,
                    "seconds": elapsed,
                    "broker_cpu": cpu_seconds(broker.pid) - cpu0,
                    "gen_cpu": own_cpu() - gen0,
                }
            )
            reader.close()

            # catch-up while live
            published = [n]
            stop = threading.Event()

            def live() -> None:
                conn = open_session(target, deadline)
                next_at = time.monotonic()
                while not stop.is_set():
                    batch = max(1, args.live_rate // 100)
                    body = b"y" * args.size
                    conn.send([encode("SEND", {"destination": STREAM}, body) for _ in range(batch)])
                    published[0] += batch
                    next_at += 0.01
                    time.sleep(max(0.0, next_at - time.monotonic()))
                conn.close()

            thread = threading.Thread(target=live, daemon=True)
            thread.start()
            time.sleep(0.5)
            resume = n - args.behind
            catcher = open_session(target, deadline)
            cpu0, gen0, t0 = cpu_seconds(broker.pid), own_cpu(), time.perf_counter()
            _subscribe(catcher, f"offset={resume}", deadline)
            read, _ = _read_until(catcher, lambda last: published[0] - 1 - last <= 10, deadline)
            elapsed = time.perf_counter() - t0
            stop.set()
            thread.join(5)
            rows.append(
                {
                    "store": store,
                    "what": f"catch-up ({args.behind} behind, live {args.live_rate}/s)",
                    "messages": read,
                    "seconds": elapsed,
                    "broker_cpu": cpu_seconds(broker.pid) - cpu0,
                    "gen_cpu": own_cpu() - gen0,
                }
            )
        finally:
            broker.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--behind", type=int, default=50_000)
    parser.add_argument("--live-rate", type=int, default=2000)
    parser.add_argument("--stores", default="sqlite,memory")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--twistd", default=str(Path(__file__).resolve().parent.parent / ".venv/bin/twistd")
    )
    args = parser.parse_args(argv)
    print(
        f"{'store':7} {'what':40} {'messages':>9} {'seconds':>8} {'msgs/s':>9} "
        f"{'broker cpu s':>12} {'gen cpu s':>9}"
    )
    for store in args.stores.split(","):
        for row in run(store, args, args.twistd):
            rate = row["messages"] / row["seconds"]
            print(
                f"{row['store']:7} {row['what']:40} {row['messages']:9d} {row['seconds']:8.2f} "
                f"{rate:9.0f} {row['broker_cpu']:12.2f} {row['gen_cpu']:9.2f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
