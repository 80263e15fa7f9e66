#!/usr/bin/env python3
"""
Queue throughput of the stomptw broker on this machine: non-persistent
versus persistent SENDs, per message store and ack mode.

Standard library only. Every run starts a fresh broker as a subprocess
(``twistd -n stomptw`` from the Python environment running this script, with
the repository root first on PYTHONPATH so that the repository's code runs),
listening on an ephemeral loopback port (``harness.Stomptw``), with one
raw-socket producer that pipelines SENDs and one raw-socket consumer on the
same queue, both ``loadgen`` connections, in threads of this process.

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
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Stomptw  # noqa: E402
from loadgen import Conn, Sends, Tally, open_session, receipts_in  # noqa: E402

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


@dataclass(frozen=True)
class Settings:
    """What every run of one invocation shares (from the command line)."""

    twistd: str
    workroot: Path  # each run's broker gets a data directory of its own below it
    messages: int
    stall_mb: int
    timeout: float

    def broker(self, name: str, store: list[str]) -> Stomptw:
        """A fresh broker, STOMP over TCP only, with ``store``'s options."""
        return Stomptw(self.workroot / name, self.twistd, store, ws=False)


@dataclass(frozen=True)
class Scenario:
    """A throughput scenario, ``STORE/SEND/ACK`` (see the module's docstring)."""

    store: str
    send: str
    ack: str

    @classmethod
    def parse(cls, name: str) -> Scenario:
        """The scenario called ``name``; ValueError if there is none."""
        parts = name.split("/")
        if (
            len(parts) != 3
            or parts[0] not in STORES
            or parts[1] not in SEND_MODES
            or parts[2] not in ACK_MODES
        ):
            raise ValueError(f"unknown scenario {name!r}")
        return cls(*parts)

    @property
    def name(self) -> str:
        return f"{self.store}/{self.send}/{self.ack}"

    def sends(self, destination: str, count: int, size: int) -> Sends:
        """The producer's SENDs: persistent or not, a receipt on each or on the last."""
        return Sends(
            destination,
            count,
            size,
            persistent=self.send.startswith("p-"),
            receipts="each" if self.send.endswith("-each") else "last",
        )


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

    def __init__(self, conn: Conn, count: int, ack: str, deadline: float) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.count = count
        self.ack_each = ack != "auto"
        self.deadline = deadline
        self.tally = Tally(count)
        self.finished_at = 0.0
        self.error = ""

    def run(self) -> None:
        tally = self.tally
        try:
            while tally.distinct < self.count:
                tally.count(self.conn, self.conn.read_before(self.deadline), self.ack_each)
            self.finished_at = time.perf_counter()
        except Exception as e:
            self.error = f"consumer: {e!r}"


class ReceiptReader(threading.Thread):
    """Counts the producer's RECEIPTs, while it writes; notes when the last expected one came."""

    def __init__(self, conn: Conn, expected: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.conn = conn
        self.expected = expected
        self.deadline = deadline
        self.count = 0
        self.last_at = 0.0
        self.error = ""

    def run(self) -> None:
        try:
            while self.count < self.expected:
                self.count += receipts_in(self.conn.read_before(self.deadline))
            self.last_at = time.perf_counter()
        except Exception as e:
            self.error = f"producer: {e!r}"


def run_throughput(settings: Settings, name: str, size: int, rnd: int) -> Result:
    """One run of scenario ``name`` with ``size``-byte bodies, on a broker of its own."""
    scenario = Scenario.parse(name)
    count = settings.messages
    broker = settings.broker(f"{name.replace('/', '_')}-{size}-{rnd}", STORES[scenario.store])
    target = broker.target("tcp")
    destination = "/queue/bench"
    sends = scenario.sends(destination, count, size)
    error = ""
    consumer = receipts = None
    producer = subscriber = None
    start = sent = 0.0
    cpu0 = cpu1 = 0.0
    try:
        deadline = time.monotonic() + settings.timeout
        subscriber = open_session(target, deadline)
        subscriber.subscribe(destination, ACK_MODES[scenario.ack], deadline)
        producer = open_session(target, deadline)
        consumer = Consumer(subscriber, count, ACK_MODES[scenario.ack], deadline)
        receipts = ReceiptReader(producer, count if sends.receipts == "each" else 1, deadline)
        cpu0 = broker.cpu()
        consumer.start()
        receipts.start()
        start = time.perf_counter()
        for batch in sends.batches():
            producer.send(batch)
            if time.monotonic() > deadline:
                raise TimeoutError("the broker stopped reading until the deadline")
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
        for conn in (producer, subscriber):
            if conn is not None:
                conn.close()
        broker.stop()
    tally = consumer.tally if consumer else Tally(0)
    ok = bool(
        not error
        and consumer is not None
        and tally.distinct == count
        and tally.duplicates == 0
        and all(tally.seen)
    )
    if tally.duplicates:
        error = error or f"{tally.duplicates} duplicate deliveries"
    elapsed = (consumer.finished_at - start) if ok else 0.0
    cpu = cpu1 - cpu0 if cpu1 else 0.0
    return Result(
        scenario=name,
        size=size,
        round=rnd,
        messages=count,
        received=tally.distinct,
        ok=ok,
        seconds=round(elapsed, 4),
        msgs_per_s=round(count / elapsed, 1) if elapsed else 0.0,
        mb_per_s=round(count * size / elapsed / 1e6, 2) if elapsed else 0.0,
        send_seconds=round(sent - start, 4) if sent else 0.0,
        last_receipt_s=round(receipts.last_at - start, 4) if receipts and receipts.last_at else 0.0,
        receipts=receipts.count if receipts else 0,
        broker_cpu_s=round(cpu, 3),
        cpu_us_per_msg=round(cpu / count * 1e6, 1) if count else 0.0,
        rss_mib=round(end.rss / MiB, 1) if end else 0.0,
        peak_rss_mib=round(end.peak_rss / MiB, 1) if end else 0.0,
        error=error,
    )


# -- the stalled consumer ------------------------------------------------------------------


def run_stalled(settings: Settings, name: str, rnd: int) -> dict:
    """
    Offer ``--stall-mb`` MB of 64 KiB messages to a queue whose subscriber
    never reads; return the broker's peak RSS and how much it accepted.
    ``stalled``: non-persistent SENDs, memory store; ``stalled-persistent``:
    ``persistent:true`` SENDs, SQLite store with sync full.
    """
    body_size = 64 * 1024
    stall = 2.0
    persistent = name == "stalled-persistent"
    store = STORES["sqlite-full"] if persistent else STORES["memory"]
    offered_mb = settings.stall_mb
    broker = settings.broker(f"{name}-{rnd}", store)
    target = broker.target("tcp")
    clients: list[Conn] = []
    try:
        deadline = time.monotonic() + settings.timeout
        clients.append(open_session(target, deadline))  # idle, part of the baseline
        baseline = min(broker.rss() for _ in range(3))
        stalled = open_session(target, deadline, rcvbuf=4096)
        clients.append(stalled)
        stalled.subscribe("/queue/stalled", "auto", deadline)
        producer = open_session(target, deadline, sndbuf=256 * 1024)
        clients.append(producer)

        offered = offered_mb * 1_000_000
        frames = Sends(
            "/queue/stalled", offered // body_size + 1, body_size, persistent=persistent
        ).frames()
        sent = 0
        seq = 0
        peak_sampled = 0
        throttled = False
        # Short writes, so that a broker that stops reading is noticed within ``stall``.
        producer.sock.settimeout(0.02)
        last_progress = time.monotonic()
        start = time.perf_counter()
        frame = b""
        while sent < offered and time.monotonic() < deadline:
            if not frame:
                frame = next(frames)
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
        blocked = "blocked: /queue/stalled is full" in broker.log(None)
    finally:
        for client in clients:
            client.close()
        broker.stop()
    peak = max(end.peak_rss, peak_sampled)
    return {
        "scenario": name,
        "store": " ".join(store),
        "offered_mb": offered_mb,
        "accepted_mb": round(sent / 1e6, 1),
        "throttled": throttled,
        "producer_blocked_logged": blocked,
        "push_seconds": round(push_seconds, 2),
        "baseline_rss_mib": round(baseline / MiB, 1),
        "peak_rss_mib": round(peak / MiB, 1),
        "peak_growth_mib": round((peak - baseline) / MiB, 1),
        "rss_after_mib": round(end.rss / MiB, 1),
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
        if name not in STALLED:
            try:
                Scenario.parse(name)
            except ValueError as e:
                parser.error(str(e))
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
    settings = Settings(args.twistd, workroot, args.messages, args.stall_mb, args.timeout)
    results: list[Result] = []
    stalled: list[dict] = []
    try:
        env = environment(workroot)
        print("JSON " + json.dumps({"environment": env}), flush=True)
        for rnd in range(1, args.rounds + 1):
            for name in args.scenario_list:
                if name in STALLED:
                    outcome = run_stalled(settings, name, rnd)
                    outcome["round"] = rnd
                    stalled.append(outcome)
                    print("JSON " + json.dumps(outcome), flush=True)
                    continue
                for size in args.size_list:
                    result = run_throughput(settings, name, size, rnd)
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
