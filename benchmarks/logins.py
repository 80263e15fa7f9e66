"""
What a burst of logins costs: stomptw with ``--auth users:FILE`` (argon2id
hashes), a steady open-loop flow of 1 KiB-or-smaller messages at ``--rate``
msgs/s whose one-way latency is measured (``loadgen.latency``), and, in
alternate rounds, ``--clients`` sessions logging in at once every
``--every`` seconds meanwhile.

Prints, per round: the flow's p50/p99/p99.9 latency with and without the
bursts, how long each burst took to get every CONNECTED back (logins per
second), and the CPU time of the broker and of this generator. Standard
library only; the users file is written by the ``stomptw-users`` of the
checkout being measured.

    .venv/bin/python benchmarks/logins.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness
import loadgen

USER, PASSWORD = "bench", "bench-password-1"


def make_users_file(directory: Path, code: Path) -> Path:
    """One user, hashed by the checkout's own stomptw-users."""
    path = directory / "users.toml"
    env = dict(os.environ, PYTHONPATH=str(code))
    subprocess.run(
        [sys.executable, "-m", "stomptw.userscli", "add", str(path), USER],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        capture_output=True,
        env=env,
    )
    return path


def burst(target: harness.Target, clients: int, timeout: float, nice: int = 0) -> float:
    """``clients`` sessions CONNECT at once; seconds until every CONNECTED came back."""
    barrier = threading.Barrier(clients + 1)
    errors: list[str] = []

    def one() -> None:
        if nice:
            # The login clients must not take the flow's measuring processes'
            # CPU: what is measured is the broker.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        barrier.wait()
        try:
            conn = loadgen.open_session(target, time.monotonic() + timeout)
            conn.close()
        except Exception as e:  # a refused or slow login fails the run below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    begun = time.monotonic()
    for t in threads:
        t.join(timeout)
    took = time.monotonic() - begun
    if errors:
        raise RuntimeError(f"{len(errors)} logins failed, e.g. {errors[0]}")
    return took


def bursts_during(
    target: harness.Target, clients: int, every: float, seconds: float, timeout: float, nice: int
) -> tuple[threading.Thread, list[float]]:
    """A thread that runs a burst every ``every`` seconds for ``seconds``; their durations."""
    took: list[float] = []

    def run() -> None:
        end = time.monotonic() + seconds
        time.sleep(min(1.0, every))  # let the flow settle first
        while time.monotonic() + 1.0 < end:
            started = time.monotonic()
            took.append(burst(target, clients, timeout, nice))
            time.sleep(max(0.0, every - (time.monotonic() - started)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=float, default=1000.0, help="msgs/s of the measured flow")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each flow")
    p.add_argument("--clients", type=int, default=50, help="sessions per login burst")
    p.add_argument("--every", type=float, default=2.0, help="seconds between bursts")
    p.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"))
    p.add_argument("--code", type=Path, default=harness.REPO_ROOT)
    p.add_argument(
        "--checker",
        choices=("users", "memory"),
        default="users",
        help="users: the hashed users file (argon2id); memory: no hashing, a control "
        "that shows what the connections alone cost",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=10,
        help="scheduling niceness of the login clients' threads (0: as the flow's)",
    )
    p.add_argument(
        "--broker-args",
        nargs="*",
        default=[],
        help="more twistd stomptw options, e.g. --broker-args=--connects-per-turn=0",
    )
    p.add_argument("--json", action="store_true", help="print the rows as JSON too")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="stomptw-logins-") as tmp:
        work = Path(tmp)
        if a.checker == "users":
            auth = f"users:{make_users_file(work, a.code.resolve())}"
        else:
            auth = f"memory:{USER}:{PASSWORD}"
        broker = harness.Stomptw(
            work / "broker",
            a.twistd,
            ["--store", "memory", "--auth", auth, "--max-failed-logins", "0", *a.broker_args],
            ws=False,
            code=a.code.resolve(),
            connect_headers={"login": USER, "passcode": PASSWORD},
        )
        try:
            target = broker.target("tcp")
            for n in range(a.rounds):
                for with_bursts in (False, True):
                    cpu0, gen0 = broker.cpu(), loadgen.own_cpu()
                    took: list[float] = []
                    thread = None
                    if with_bursts:
                        thread, took = bursts_during(
                            target, a.clients, a.every, a.seconds, 60.0, a.nice
                        )
                    result = loadgen.latency(target, rate=a.rate, seconds=a.seconds)
                    if thread is not None:
                        thread.join(120)
                    row = {
                        "round": n + 1,
                        "bursts": len(took),
                        "p50_ms": round(result["p50_ms"], 3),
                        "p99_ms": round(result["p99_ms"], 3),
                        "p999_ms": round(result["p999_ms"], 3),
                        "max_ms": round(result["max_ms"], 3),
                        "lost": result["lost"],
                        "burst_s": round(statistics.median(took), 3) if took else None,
                        "logins_per_s": round(a.clients / statistics.median(took), 1)
                        if took
                        else None,
                        "broker_cpu_s": round(broker.cpu() - cpu0, 2),
                        "burst_gen_cpu_s": round(loadgen.own_cpu() - gen0, 2),
                        "flow_gen_cpu_s": round(result.get("gen_cpu_s", 0.0), 2),
                    }
                    rows.append(row)
                    print(
                        f"round {row['round']} {'bursts' if with_bursts else 'quiet '}: "
                        f"p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
                        f"p99.9 {row['p999_ms']} ms  max {row['max_ms']} ms  lost {row['lost']}  "
                        + (
                            f"{row['bursts']} bursts of {a.clients}: median {row['burst_s']} s "
                            f"= {row['logins_per_s']} logins/s  "
                            if with_bursts
                            else ""
                        )
                        + f"broker cpu {row['broker_cpu_s']} s",
                        flush=True,
                    )
        finally:
            broker.stop()
    quiet = statistics.median(r["p99_ms"] for r in rows if not r["bursts"])
    busy = statistics.median(r["p99_ms"] for r in rows if r["bursts"])
    print(f"median p99: quiet {quiet} ms, during bursts {busy} ms ({busy / quiet:.2f}x)")
    if a.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
