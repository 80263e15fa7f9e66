"""
Idle connections that heart-beat: what they cost the broker.

Starts ``twistd -n stomptw`` (through :mod:`harness`) with ``--heartbeat
MS,MS``, opens ``--connections`` STOMP sessions over TCP from ``--workers``
processes, each CONNECTed with ``heart-beat:MS,MS`` and sending an EOL every
0.8 x MS, and holds them for ``--seconds``. Reports the broker's CPU share of
one core while they are held, its resident memory per connection, how many
beats each side sent, the longest gap between two beats any client saw
(a client's own scheduling delays count in it: it bounds the broker's
lateness from above), and how many sessions the broker closed. Everything is
on loopback and bounded in count and time.

``--code DIR`` (repeatable) runs the stomptw of each checkout in turn, so
two versions can be measured side by side on the same machine::

    git worktree add /tmp/before <commit>
    .venv/bin/python benchmarks/heartbeats.py --code /tmp/before --code .
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import selectors
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO_ROOT, Stomptw, Target, cpu_seconds, raise_fd_limit  # noqa: E402
from loadgen import open_session  # noqa: E402

_CTX = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class HolderSpec:
    """
    One worker's share: ``count`` sessions on ``port``, opened by
    ``hold_from`` and held until ``hold_until``.
    """

    port: int
    count: int
    interval_ms: int
    hold_from: float
    hold_until: float


def _connect_all(spec: HolderSpec) -> list[socket.socket]:
    """Open the sessions (loadgen's client), keeping the first ones beating meanwhile."""
    ms = spec.interval_ms
    target = Target("stomptw", "tcp", spec.port, connect_headers={"heart-beat": f"{ms},{ms}"})
    socks = []
    beat_at = time.monotonic() + ms / 2000.0
    for _ in range(spec.count):
        if time.monotonic() > spec.hold_from:
            break
        if time.monotonic() >= beat_at:
            # Sessions opened first keep beating while the rest connect.
            for early in socks:
                try:
                    early.send(b"\n")
                except OSError:
                    pass  # closed by the broker: the hold counts it
            beat_at = time.monotonic() + ms / 2000.0
        socks.append(open_session(target, spec.hold_from).sock)
    for s in socks:
        s.setblocking(False)
    return socks


def holder(spec: HolderSpec, results) -> None:
    """Open the sessions, beat and count beats until the hold ends, report."""
    raise_fd_limit()
    socks = _connect_all(spec)
    selector = selectors.DefaultSelector()
    interval = spec.interval_ms / 1000.0
    now = time.monotonic()
    # [next send time, last beat received, longest gap seen]
    state = {}
    for i, s in enumerate(socks):
        state[s] = [now + interval * 0.8 * i / max(len(socks), 1), None, 0.0]
        selector.register(s, selectors.EVENT_READ)
    due = collections.deque(socks)
    sent = received = closed = 0
    counting = False
    while (now := time.monotonic()) < spec.hold_until:
        if not counting and now >= spec.hold_from:
            # Figures count from the start of the hold; beats flowed before too.
            counting = True
            sent = received = closed = 0
            for entry in state.values():
                entry[1], entry[2] = None, 0.0
        for key, _ in selector.select(timeout=0.005):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            entry = state[s]
            if not data:
                closed += 1
                selector.unregister(s)
                continue
            beats = data.count(b"\n")
            received += beats
            if beats:
                if entry[1] is not None:
                    entry[2] = max(entry[2], now - entry[1])
                entry[1] = now
        # Every session beats at the same interval, so the queue stays in
        # order of next send time: only the ones due are looked at.
        while due and state[due[0]][0] <= now:
            s = due.popleft()
            try:
                s.send(b"\n")
                sent += 1
            except (BlockingIOError, OSError):
                pass
            state[s][0] = now + interval * 0.8
            due.append(s)
    gap = max((entry[2] for entry in state.values()), default=0.0)
    results.put(
        {
            "opened": len(socks),
            "sent": sent,
            "received": received,
            "closed": closed,
            "max_gap": gap,
            "cpu": cpu_seconds(os.getpid()),
        }
    )
    for s in socks:
        s.close()


def measure(code: Path, args: argparse.Namespace, workdir: Path) -> dict:
    """One broker (the stomptw of ``code``) and its held connections."""
    ms = args.interval_ms
    broker = Stomptw(
        workdir,
        args.twistd,
        ["--store", "memory", "--max-connections", "0", "--heartbeat", f"{ms},{ms}"],
        ws=False,
        code=code,
    )
    try:
        before = broker.sample()
        hold_from = time.monotonic() + args.connect_seconds
        shares = [
            args.connections // args.workers + (1 if i < args.connections % args.workers else 0)
            for i in range(args.workers)
        ]
        results = _CTX.Queue()
        procs = []
        for n in shares:
            spec = HolderSpec(broker.ports["stomp"], n, ms, hold_from, hold_from + args.seconds)
            proc = _CTX.Process(target=holder, args=(spec, results), daemon=True)
            proc.start()
            procs.append(proc)
        time.sleep(max(0.0, hold_from - time.monotonic()))
        held = broker.sample()
        time.sleep(max(0.0, hold_from + args.seconds - time.monotonic()))
        after = broker.sample()
        items = [results.get(timeout=args.timeout) for _ in procs]
        for proc in procs:
            proc.join(timeout=10)
    except BaseException:
        print(broker.log(4000), file=sys.stderr)
        raise
    finally:
        broker.stop()
    opened = sum(i["opened"] for i in items)
    return {
        "code": str(code),
        "opened": opened,
        "cpu_share": (after.cpu_s - held.cpu_s) / args.seconds,
        "rss_mib": held.rss / 2**20,
        "kib_per_conn": (held.rss - before.rss) / 1024 / max(opened, 1),
        "client_beats_per_s": sum(i["sent"] for i in items) / args.seconds,
        "broker_beats_per_s": sum(i["received"] for i in items) / args.seconds,
        "max_gap_ms": max(i["max_gap"] for i in items) * 1000,
        "closed": sum(i["closed"] for i in items),
        "gen_cpu_s": sum(i["cpu"] for i in items),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--interval-ms", type=int, default=5000, help="heart-beat interval, both ways"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="how long they are held")
    parser.add_argument(
        "--connect-seconds",
        type=float,
        default=60.0,
        help="time allowed to open every connection before the hold starts",
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--code", action="append", type=Path, help="checkout to run (repeatable)")
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")))
    args = parser.parse_args(argv)
    codes = args.code or [REPO_ROOT]
    print(
        f"{'code':40} {'conns':>6} {'cpu %':>6} {'RSS MiB':>8} {'KiB/conn':>9} "
        f"{'beats in/s':>10} {'beats out/s':>11} {'max gap ms':>10} {'closed':>6} {'gen cpu s':>9}"
    )
    failed = False
    with tempfile.TemporaryDirectory(prefix="stomptw-hb-") as tmp:
        for r in range(args.rounds):
            for i, code in enumerate(codes):
                row = measure(code.resolve(), args, Path(tmp) / f"{r}-{i}")
                failed |= row["closed"] > 0 or row["opened"] < args.connections
                print(
                    f"{row['code'][-40:]:40} {row['opened']:6d} {row['cpu_share'] * 100:6.1f} "
                    f"{row['rss_mib']:8.1f} {row['kib_per_conn']:9.2f} "
                    f"{row['client_beats_per_s']:10.0f} {row['broker_beats_per_s']:11.0f} "
                    f"{row['max_gap_ms']:10.0f} {row['closed']:6d} {row['gen_cpu_s']:9.1f}",
                    flush=True,
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
