#!/usr/bin/env python3
"""
Queue throughput of the stomptw broker on this machine: non-persistent
versus persistent SENDs, per message store and ack mode.

Standard library only. Every run starts a fresh broker as a subprocess
(``twistd -n stomptw`` from the Python environment running this script, with
the repository root first on PYTHONPATH so that the repository's code runs),
listening on an ephemeral loopback port, with one raw-socket producer that
pipelines SENDs and one raw-socket consumer on the same queue.

Scenario names are ``STORE/SEND/ACK``:

* STORE: ``memory``, ``sqlite-full`` (``--store sqlite --store-sync full``)
  or ``sqlite-normal`` (``--store-sync normal``);
* SEND: ``np`` non-persistent, receipt on the last SEND only; ``np-each``
  non-persistent, receipt on every SEND; ``p-last`` ``persistent:true``,
  receipt on the last SEND only; ``p-each`` ``persistent:true``, receipt on
  every SEND;
* ACK: ``auto`` or ``individual`` (``client-individual``, one ACK per
  message).

``stalled`` is the bounded-memory figure: a producer offers ``--stall-mb``
MB of 64 KiB messages to a queue whose only subscriber never reads; the
broker's peak RSS is printed. ``stalled-persistent`` does the same with
``persistent:true`` SENDs and the SQLite store (sync full).

Example::

    python benchmarks/persistence.py --messages 20000 --sizes 100,4096
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Stomptw  # noqa: E402
from loadgen import FrameParser, connect_socket, encode, header  # noqa: E402

MiB = 1024 * 1024

STORES = {
    "memory": ["--store", "memory"],
    "sqlite-full": ["--store", "sqlite", "--store-sync", "full"],
    "sqlite-normal": ["--store", "sqlite", "--store-sync", "normal"],
}
SEND_MODES = ("np", "np-each", "p-last", "p-each")
ACK_MODES = {"auto": "auto", "individual": "client-individual"}
STALLED = ("stalled", "stalled-persistent")

DEFAULT_SCENARIOS = [
    "memory/np/auto",
    "memory/np/individual",
    "memory/p-each/auto",
    "sqlite-full/np/auto",
    "sqlite-full/p-last/auto",
    "sqlite-full/p-each/auto",
    "sqlite-full/p-last/individual",
    "sqlite-full/p-each/individual",
    "sqlite-normal/p-last/auto",
    "sqlite-normal/p-each/auto",
    "sqlite-normal/p-last/individual",
    "stalled",
    "stalled-persistent",
]


def start_broker(twistd: str, workdir: Path, store: list[str]) -> Stomptw:
    """A fresh broker, STOMP over TCP only, with ``store``'s options."""
    return Stomptw(workdir, twistd, store, ws=False)


# -- STOMP on raw sockets ---------------------------------------------------------------


class Client:
    """A STOMP 1.2 session on a TCP socket (TCP_NODELAY, no heart-beats)."""

    def __init__(self, port: int, timeout: float, rcvbuf: int = 0, sndbuf: int = 0) -> None:
        self.sock = connect_socket(port, timeout, rcvbuf, sndbuf)
        self.parser = FrameParser()
        self.pending: list[tuple[bytes, bytes, int]] = []
        self.sock.sendall(
            encode("CONNECT", {"accept-version": "1.2", "host": "localhost", "heart-beat": "0,0"})
        )
        command, head, _ = self.next_frame(time.monotonic() + timeout)
        if command != b"CONNECTED":
            raise RuntimeError(f"CONNECT refused: {command} {head}")

    def read_frames(self, deadline: float) -> list[tuple[bytes, bytes, int]]:
        """The frames that arrive in the next read (perhaps none); raise at EOF."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(min(remaining, 1.0))
        try:
            data = self.sock.recv(1024 * 1024)
        except TimeoutError:
            return []
        if not data:
            raise ConnectionError("the broker closed the connection")
        return self.parser.feed(data)

    def next_frame(self, deadline: float) -> tuple[bytes, bytes, int]:
        while not self.pending:
            self.pending.extend(self.read_frames(deadline))
        return self.pending.pop(0)

    def subscribe(self, destination: str, ack: str, deadline: float) -> None:
        self.sock.sendall(
            encode(
                "SUBSCRIBE",
                {"destination": destination, "id": "bench", "ack": ack, "receipt": "subscribed"},
            )
        )
        command, head, _ = self.next_frame(deadline)
        if command != b"RECEIPT" or header(head, b"receipt-id") != b"subscribed":
            raise RuntimeError(f"SUBSCRIBE failed: {command} {head}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# -- one throughput run -------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    size: int
    round: int
    messages: int
    received: int
    ok: bool
    seconds: float
    msgs_per_s: float
    mb_per_s: float
    send_seconds: float
    last_receipt_s: float
    receipts: int
    broker_cpu_s: float
    cpu_us_per_msg: float
    rss_mib: float
    peak_rss_mib: float
    error: str = ""


class Consumer(threading.Thread):
    """Reads MESSAGEs until ``count`` distinct sequence numbers arrived."""

    def __init__(self, client: Client, count: int, ack_each: bool, deadline: float) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.count = count
        self.ack_each = ack_each
        self.deadline = deadline
        self.seen = bytearray(count)
        self.distinct = 0
        self.duplicates = 0
        self.finished_at = 0.0
        self.error = ""

    def run(self) -> None:
        client = self.client
        try:
            while self.distinct < self.count:
                frames = client.pending or client.read_frames(self.deadline)
                client.pending = []
                acks = []
                for command, head, _ in frames:
                    if command != b"MESSAGE":
                        raise RuntimeError(f"consumer got {command}: {head}")
                    seq = int(header(head, b"seq"))
                    if self.seen[seq]:
                        self.duplicates += 1
                    else:
                        self.seen[seq] = 1
                        self.distinct += 1
                    if self.ack_each:
                        acks.append(encode("ACK", {"id": header(head, b"ack").decode()}))
                if acks:
                    send_all(client.sock, b"".join(acks), self.deadline)
            self.finished_at = time.perf_counter()
        except Exception as e:
            self.error = f"consumer: {e!r}"


class ReceiptReader(threading.Thread):
    """Counts the producer's RECEIPTs; notes when the last expected one came."""

    def __init__(self, client: Client, expected: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.expected = expected
        self.deadline = deadline
        self.count = 0
        self.last_at = 0.0
        self.error = ""

    def run(self) -> None:
        try:
            while self.count < self.expected:
                for command, head, _ in self.client.read_frames(self.deadline):
                    if command != b"RECEIPT":
                        raise RuntimeError(f"producer got {command}: {head}")
                    self.count += 1
            self.last_at = time.perf_counter()
        except Exception as e:
            self.error = f"producer: {e!r}"


def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """
    ``sock.sendall`` that waits as long as the broker is not reading (overflow
    ``block`` pauses a producer) but no longer than ``deadline``. The socket's
    own timeout is short: another thread reads RECEIPTs from it.
    """
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise TimeoutError("the broker stopped reading until the deadline") from None


def produce(
    sock: socket.socket, count: int, size: int, mode: str, destination: str, deadline: float
) -> None:
    """Pipeline ``count`` SENDs, written in batches of about 256 KiB."""
    body = b"x" * size
    persistent = mode.startswith("p-")
    each = mode.endswith("-each")
    tail = f"content-length:{size}\n"
    if persistent:
        tail += "persistent:true\n"
    prefix = f"SEND\ndestination:{destination}\n"
    batch: list[bytes] = []
    batched = 0
    for seq in range(count):
        head = f"{prefix}{tail}seq:{seq}\n"
        if each or seq == count - 1:
            head += f"receipt:r{seq}\n"
        frame = (head + "\n").encode() + body + b"\x00"
        batch.append(frame)
        batched += len(frame)
        if batched >= 256 * 1024:
            send_all(sock, b"".join(batch), deadline)
            batch.clear()
            batched = 0
    if batch:
        send_all(sock, b"".join(batch), deadline)


def run_throughput(
    twistd: str, workroot: Path, scenario: str, size: int, rnd: int, count: int, timeout: float
) -> Result:
    store, mode, ack = scenario.split("/")
    workdir = workroot / f"{scenario.replace('/', '_')}-{size}-{rnd}"
    broker = start_broker(twistd, workdir, STORES[store])
    destination = "/queue/bench"
    error = ""
    consumer = receipts = None
    producer = subscriber = None
    start = sent = 0.0
    cpu0 = cpu1 = 0.0
    try:
        deadline = time.monotonic() + timeout
        subscriber = Client(broker.ports["stomp"], timeout)
        subscriber.subscribe(destination, ACK_MODES[ack], deadline)
        producer = Client(broker.ports["stomp"], timeout)
        consumer = Consumer(subscriber, count, ack == "individual", deadline)
        receipts = ReceiptReader(producer, count if mode.endswith("-each") else 1, deadline)
        cpu0 = broker.cpu()
        consumer.start()
        receipts.start()
        start = time.perf_counter()
        produce(producer.sock, count, size, mode, destination, deadline)
        sent = time.perf_counter()
        consumer.join(max(0.0, deadline - time.monotonic()) + 2)
        receipts.join(max(0.0, deadline - time.monotonic()) + 2)
        cpu1 = broker.cpu()
        error = consumer.error or receipts.error
        if consumer.is_alive() or receipts.is_alive():
            error = error or "timed out"
    except Exception as e:
        error = repr(e)
    finally:
        end = broker.sample() if broker.proc.poll() is None else None
        rss, peak = (end.rss, end.peak_rss) if end else (0, 0)
        for client in (producer, subscriber):
            if client is not None:
                client.close()
        broker.stop()
    received = consumer.distinct if consumer else 0
    ok = bool(
        not error
        and consumer is not None
        and received == count
        and consumer.duplicates == 0
        and all(consumer.seen)
    )
    if consumer is not None and consumer.duplicates:
        error = error or f"{consumer.duplicates} duplicate deliveries"
    elapsed = (consumer.finished_at - start) if ok else 0.0
    cpu = cpu1 - cpu0 if cpu1 else 0.0
    return Result(
        scenario=scenario,
        size=size,
        round=rnd,
        messages=count,
        received=received,
        ok=ok,
        seconds=round(elapsed, 4),
        msgs_per_s=round(count / elapsed, 1) if elapsed else 0.0,
        mb_per_s=round(count * size / elapsed / 1e6, 2) if elapsed else 0.0,
        send_seconds=round(sent - start, 4) if sent else 0.0,
        last_receipt_s=round(receipts.last_at - start, 4) if receipts and receipts.last_at else 0.0,
        receipts=receipts.count if receipts else 0,
        broker_cpu_s=round(cpu, 3),
        cpu_us_per_msg=round(cpu / count * 1e6, 1) if count else 0.0,
        rss_mib=round(rss / MiB, 1),
        peak_rss_mib=round(peak / MiB, 1),
        error=error,
    )


# -- the stalled consumer ------------------------------------------------------------------


def run_stalled(
    twistd: str, workroot: Path, name: str, offered_mb: int, timeout: float, rnd: int
) -> dict:
    """
    Offer ``offered_mb`` MB of 64 KiB messages to a queue whose subscriber never
    reads; return the broker's peak RSS and how much it accepted. ``stalled``:
    non-persistent SENDs, memory store; ``stalled-persistent``: ``persistent:true``
    SENDs, SQLite store with sync full.
    """
    body_size = 64 * 1024
    stall = 2.0
    persistent = name == "stalled-persistent"
    store = STORES["sqlite-full"] if persistent else STORES["memory"]
    broker = start_broker(twistd, workroot / f"{name}-{rnd}", store)
    clients: list[Client] = []
    try:
        idle = Client(broker.ports["stomp"], timeout)
        clients.append(idle)
        baseline = min(broker.rss() for _ in range(3))
        deadline = time.monotonic() + timeout
        stalled = Client(broker.ports["stomp"], timeout, rcvbuf=4096)
        clients.append(stalled)
        stalled.subscribe("/queue/stalled", "auto", deadline)
        producer = Client(broker.ports["stomp"], timeout, sndbuf=256 * 1024)
        clients.append(producer)

        body = b"x" * body_size
        offered = offered_mb * 1_000_000
        sent = 0
        seq = 0
        peak_sampled = 0
        throttled = False
        producer.sock.settimeout(0.02)
        last_progress = time.monotonic()
        start = time.perf_counter()
        frame = b""
        while sent < offered and time.monotonic() < deadline:
            if not frame:
                frame = (
                    f"SEND\ndestination:/queue/stalled\ncontent-length:{body_size}\n"
                    f"seq:{seq}\n{'persistent:true' + chr(10) if persistent else ''}\n".encode()
                    + body
                    + b"\x00"
                )
                seq += 1
            try:
                n = producer.sock.send(frame)
            except TimeoutError:
                n = 0
            if n:
                frame = frame[n:]
                sent += n
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall:
                throttled = True
                break
            if seq % 16 == 0 or not n:
                peak_sampled = max(peak_sampled, broker.rss())
        push_seconds = time.perf_counter() - start
        end = broker.sample()
        rss, peak = end.rss, end.peak_rss
        blocked = "blocked: /queue/stalled is full" in broker.log(None)
    finally:
        for client in clients:
            client.close()
        broker.stop()
    return {
        "scenario": name,
        "store": " ".join(store),
        "offered_mb": offered_mb,
        "accepted_mb": round(sent / 1e6, 1),
        "throttled": throttled,
        "producer_blocked_logged": blocked,
        "push_seconds": round(push_seconds, 2),
        "baseline_rss_mib": round(baseline / MiB, 1),
        "peak_rss_mib": round(max(peak, peak_sampled) / MiB, 1),
        "peak_growth_mib": round((max(peak, peak_sampled) - baseline) / MiB, 1),
        "rss_after_mib": round(rss / MiB, 1),
        "limits": "max-queue-bytes 64 MiB, write-high-water 256 KiB (defaults)",
    }


# -- the machine ----------------------------------------------------------------------------


def fsync_latency_ms(directory: Path, count: int = 50) -> float:
    """Median time of a 4 KiB write plus fsync in ``directory`` (what sync=full pays)."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"x" * 4096
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return round(times[len(times) // 2] * 1000, 3)


def environment(workroot: Path) -> dict:
    return {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "fsync_ms_median": fsync_latency_ms(workroot),
        "data_dir": str(workroot),
    }


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Scenarios: " + ", ".join(DEFAULT_SCENARIOS),
    )
    parser.add_argument("--messages", type=int, default=20000, help="messages per run")
    parser.add_argument("--sizes", default="100,4096", help="comma-separated body sizes in bytes")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each scenario and size")
    parser.add_argument(
        "--scenarios",
        default="all",
        help="comma-separated STORE/SEND/ACK names and/or 'stalled' ('all': the default set)",
    )
    parser.add_argument("--stall-mb", type=int, default=500, help="MB offered when stalled")
    parser.add_argument(
        "--workdir",
        default=None,
        help="where brokers' data directories go (default: a new temporary directory); "
        "SQLite figures depend on its disk",
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds allowed per run")
    parser.add_argument(
        "--twistd",
        default=os.path.join(os.path.dirname(sys.executable), "twistd"),
        help="the twistd executable (default: next to this Python)",
    )
    args = parser.parse_args(argv)
    args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    names = DEFAULT_SCENARIOS if args.scenarios == "all" else args.scenarios.split(",")
    args.scenario_list = [n.strip() for n in names if n.strip()]
    for name in args.scenario_list:
        if name in STALLED:
            continue
        parts = name.split("/")
        if (
            len(parts) != 3
            or parts[0] not in STORES
            or parts[1] not in SEND_MODES
            or parts[2] not in ACK_MODES
        ):
            parser.error(f"unknown scenario {name!r}")
    if args.messages < 1 or args.rounds < 1 or not args.size_list:
        parser.error("--messages, --rounds and --sizes must be positive")
    if any(size < 1 for size in args.size_list):
        parser.error("--sizes must be positive")
    return args


def print_table(results: list[Result]) -> None:
    columns = [
        ("scenario", "scenario", "{}"),
        ("size", "size", "{}"),
        ("rnd", "round", "{}"),
        ("msgs", "messages", "{}"),
        ("ok", "ok", "{}"),
        ("msgs/s", "msgs_per_s", "{:.0f}"),
        ("MB/s", "mb_per_s", "{:.2f}"),
        ("e2e s", "seconds", "{:.3f}"),
        ("send s", "send_seconds", "{:.3f}"),
        ("rcpt s", "last_receipt_s", "{:.3f}"),
        ("cpu s", "broker_cpu_s", "{:.2f}"),
        ("cpu us/msg", "cpu_us_per_msg", "{:.1f}"),
        ("rss MiB", "rss_mib", "{:.1f}"),
        ("peak MiB", "peak_rss_mib", "{:.1f}"),
    ]
    rows = [[fmt.format(getattr(r, key)) for _, key, fmt in columns] for r in results]
    widths = [
        max(len(title), *(len(row[i]) for row in rows)) for i, (title, _, _) in enumerate(columns)
    ]
    print("  ".join(title.rjust(w) for (title, _, _), w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
    for r in results:
        if r.error:
            print(f"! {r.scenario} size={r.size} round={r.round}: {r.error}")


def print_medians(results: list[Result]) -> None:
    """One line per scenario and size: medians over the rounds (successful runs only)."""
    groups: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        if r.ok:
            groups.setdefault((r.scenario, r.size), []).append(r)
    if not groups:
        return
    width = max(len(name) for name, _ in groups)
    print()
    print(
        f"{'median over rounds':>{width}}  {'size':>5}  {'runs':>4}  {'msgs/s':>7}  "
        f"{'MB/s':>7}  {'rcpt s':>6}  {'cpu us/msg':>10}  {'peak MiB':>8}"
    )
    for (name, size), runs in groups.items():
        print(
            f"{name:>{width}}  {size:>5}  {len(runs):>4}  "
            f"{statistics.median(r.msgs_per_s for r in runs):>7.0f}  "
            f"{statistics.median(r.mb_per_s for r in runs):>7.2f}  "
            f"{statistics.median(r.last_receipt_s for r in runs):>6.3f}  "
            f"{statistics.median(r.cpu_us_per_msg for r in runs):>10.1f}  "
            f"{max(r.peak_rss_mib for r in runs):>8.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not sys.platform.startswith("linux"):
        print("this benchmark reads /proc and runs on Linux only", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so that no broker subprocess is left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    workroot = Path(tempfile.mkdtemp(prefix="stomptw-bench-", dir=args.workdir))
    results: list[Result] = []
    stalled: list[dict] = []
    try:
        env = environment(workroot)
        print("JSON " + json.dumps({"environment": env}), flush=True)
        for rnd in range(1, args.rounds + 1):
            for name in args.scenario_list:
                if name in STALLED:
                    outcome = run_stalled(
                        args.twistd, workroot, name, args.stall_mb, args.timeout, rnd
                    )
                    outcome["round"] = rnd
                    stalled.append(outcome)
                    print("JSON " + json.dumps(outcome), flush=True)
                    continue
                for size in args.size_list:
                    result = run_throughput(
                        args.twistd, workroot, name, size, rnd, args.messages, args.timeout
                    )
                    results.append(result)
                    print("JSON " + json.dumps(asdict(result)), flush=True)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    print()
    print(
        f"machine: {env['cpus']} CPUs, Python {env['python']}, load average "
        f"{env['load_avg_1m']} at start, fsync of 4 KiB in the data directory: "
        f"{env['fsync_ms_median']} ms (median)"
    )
    if results:
        print_table(results)
        if args.rounds > 1:
            print_medians(results)
    for outcome in stalled:
        print(
            f"{outcome['scenario']} (round {outcome['round']}, {outcome['store']}): offered "
            f"{outcome['offered_mb']} MB of 64 KiB messages, broker accepted "
            f"{outcome['accepted_mb']} MB, throttled={outcome['throttled']}; broker RSS baseline "
            f"{outcome['baseline_rss_mib']} MiB, peak {outcome['peak_rss_mib']} MiB "
            f"(+{outcome['peak_growth_mib']} MiB; {outcome['limits']})"
        )
    failed = [r for r in results if not r.ok]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
