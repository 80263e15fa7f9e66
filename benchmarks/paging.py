#!/usr/bin/env python3
"""
A persistent backlog larger than memory: ``--mib`` (2048) MiB of persistent
``--size`` (4096) byte messages sent to one queue that has no consumer, then
drained by one consumer (``client-individual``, one ACK per message).

Standard library only; Linux (it reads ``/proc``). ``twistd -n stomptw``
runs as a subprocess on its SQLite store (sync ``full``), with the queue
limits off (``--max-queue-bytes 0``) so that only paging bounds the
broker's memory; ``--window`` sets ``--queue-memory-window``. The producer
pipelines SENDs, a RECEIPT on every ``--receipt-every`` (500th) message, with
at most ``--in-flight`` (4) RECEIPTs outstanding, as a producer that waits for
its receipts does (what it has in flight the broker holds until it is
stored); the consumer ACKs each message. Both run in this process; their
CPU time is reported beside the broker's, to show which side is the
bottleneck.

With ``--restart`` the broker is stopped after the fill and a new one
drains the backlog from the same store (what a restart costs, and that only
the window is read back). It prints, as one JSON object: the fill's rate and
the broker's peak RSS during it, the store file's size, the drain's rate and
the broker's peak RSS during it, and the exactly-once, in-order check (lost,
duplicated, out of order). Exit status 1 when a message is lost, duplicated
or out of order, or the broker's peak RSS passes ``--max-rss-mib`` (256).
Bounded by ``--seconds`` (1800) for the whole run.

Example (the issue's figure; about 3 GiB of disk for the store)::

    python benchmarks/paging.py --mib 2048
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Stomptw, memory  # noqa: E402
from loadgen import Sends, encode, header, open_session, own_cpu  # noqa: E402

MiB = 1024 * 1024
QUEUE = "/queue/paging"


class Peak(threading.Thread):
    """Samples a process's RSS every ``interval`` seconds; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, memory(self.pid)[0])
            self.stopped.wait(self.interval)

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return self.peak


def fill(broker: Stomptw, count: int, size: int, every: int, in_flight: int, deadline: float):
    """Send ``count`` persistent messages; return once every RECEIPT is in."""
    target = broker.target("tcp")
    conn = open_session(target, deadline)
    sends = Sends(QUEUE, count, size, persistent=True, receipts="none")
    receipts = 0
    expected = 0
    batch: list[bytes] = []
    batched = 0
    for seq, frame in enumerate(sends.frames()):
        if (seq + 1) % every == 0 or seq == count - 1:
            # This SEND asks for a receipt: rebuild it with the header.
            frame = frame.replace(b"\n\n", f"\nreceipt:{seq}\n\n".encode(), 1)
            expected += 1
        batch.append(frame)
        batched += len(frame)
        if batched >= 256 * 1024 or seq == count - 1:
            conn.send(batch)
            batch, batched = [], 0
            while expected - receipts > in_flight:
                receipts += _receipts(conn.read_before(deadline), deadline)
    while receipts < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {receipts} of {expected} RECEIPTs before the deadline")
        receipts += _receipts(conn.read_before(deadline), deadline)
    conn.disconnect(deadline)
    conn.close()


def _receipts(frames, deadline: float) -> int:
    for command, head, _ in frames:
        if command != b"RECEIPT":
            raise ConnectionError(f"got {command!r}: {head[:300]!r}")
    if time.monotonic() > deadline:
        raise TimeoutError("the fill ran out of time")
    return len(frames)


def drain(broker: Stomptw, count: int, deadline: float) -> dict:
    """Consume ``count`` messages with one ACK each; check each arrives once, in order."""
    conn = open_session(broker.target("tcp"), deadline)
    conn.subscribe(QUEUE, "client-individual", deadline)
    seen = bytearray(count)
    received = duplicates = out_of_order = 0
    last = -1
    while received < count:
        if time.monotonic() > deadline:
            break
        frames = conn.read_before(deadline)
        acks = []
        for command, head, _ in frames:
            if command != b"MESSAGE":
                raise ConnectionError(f"got {command!r}: {head[:300]!r}")
            seq = int(header(head, b"seq"))
            if seen[seq]:
                duplicates += 1
            else:
                seen[seq] = 1
                received += 1
            if seq < last:
                out_of_order += 1
            last = seq
            acks.append(encode("ACK", {"id": header(head, b"ack").decode()}))
        if acks:
            conn.send(acks)
    conn.disconnect(deadline)
    conn.close()
    return {
        "received": received,
        "lost": count - received,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=2048, help="MiB of message bodies to send")
    parser.add_argument("--size", type=int, default=4096, help="body size in bytes")
    parser.add_argument("--window", type=int, default=1000, help="--queue-memory-window")
    parser.add_argument("--receipt-every", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--max-rss-mib", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=1800, help="bound on the whole run")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="stop the broker after the fill and drain from a new one on the same store",
    )
    parser.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"))
    parser.add_argument("--workdir", help="where the store goes (a temporary directory)")
    args = parser.parse_args(argv)
    count = args.mib * MiB // args.size
    deadline = time.monotonic() + args.seconds
    with tempfile.TemporaryDirectory(prefix="stomptw-paging-", dir=args.workdir) as tmp:
        broker_args = [
            "--max-queue-bytes",
            "0",
            "--max-queue-length",
            "0",
            "--queue-memory-window",
            str(args.window),
        ]
        broker = Stomptw(Path(tmp), args.twistd, broker_args, ws=False)
        try:
            baseline = broker.rss()
            peak = Peak(broker.pid)
            peak.start()
            cpu0, gen0 = broker.cpu(), own_cpu()
            started = time.monotonic()
            fill(broker, count, args.size, args.receipt_every, args.in_flight, deadline)
            fill_s = time.monotonic() - started
            fill_peak = peak.stop()
            fill_cpu, fill_gen = broker.cpu() - cpu0, own_cpu() - gen0
            after_fill = broker.rss()
            store = Path(tmp) / "data" / "stomptw.sqlite3"
            store_bytes = sum(
                p.stat().st_size for p in store.parent.glob("stomptw.sqlite3*") if p.exists()
            )
            restart = {}
            if args.restart:
                # Stop it and start another on the same store: only the
                # window is read back at startup.
                broker.stop()
                started = time.monotonic()
                broker = Stomptw(Path(tmp), args.twistd, broker_args, ws=False)
                restart = {
                    "restart_seconds": round(time.monotonic() - started, 1),
                    "rss_after_restart_mib": round(broker.rss() / MiB, 1),
                }
            peak = Peak(broker.pid)
            peak.start()
            cpu0, gen0 = broker.cpu(), own_cpu()
            started = time.monotonic()
            check = drain(broker, count, deadline)
            drain_s = time.monotonic() - started
            drain_peak = peak.stop()
            drain_cpu, drain_gen = broker.cpu() - cpu0, own_cpu() - gen0
        finally:
            broker.stop()
    result = {
        "messages": count,
        "size": args.size,
        "window": args.window,
        "baseline_rss_mib": round(baseline / MiB, 1),
        "fill_seconds": round(fill_s, 1),
        "fill_msgs_per_s": round(count / fill_s),
        "fill_peak_rss_mib": round(fill_peak / MiB, 1),
        "rss_after_fill_mib": round(after_fill / MiB, 1),
        "fill_broker_cpu_s": round(fill_cpu, 1),
        "fill_generator_cpu_s": round(fill_gen, 1),
        "store_mib": round(store_bytes / MiB),
        **restart,
        "drain_seconds": round(drain_s, 1),
        "drain_msgs_per_s": round(check["received"] / drain_s) if drain_s else 0,
        "drain_peak_rss_mib": round(drain_peak / MiB, 1),
        "drain_broker_cpu_s": round(drain_cpu, 1),
        "drain_generator_cpu_s": round(drain_gen, 1),
        **check,
    }
    print(json.dumps(result, indent=2))
    peak_mib = max(fill_peak, drain_peak) / MiB
    failed = check["lost"] or check["duplicates"] or check["out_of_order"]
    if peak_mib > args.max_rss_mib:
        print(f"FAIL: peak RSS {peak_mib:.0f} MiB > {args.max_rss_mib} MiB")
        failed = True
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
