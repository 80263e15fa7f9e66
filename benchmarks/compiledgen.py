"""
The compiled load generator (``benchmarks/stompgen``, Rust, standard library
only), driven with the same calls as :mod:`loadgen`'s scenarios.

``compare.py --generator stompgen`` runs it instead of the Python workers.
Each scenario is one ``stompgen`` process with an OS thread per connection.
It opens every connection, prints ``READY``, and waits; this side reads the
broker's CPU time, writes ``GO``, and reads the one JSON line of figures
(the same keys as :mod:`loadgen`'s, plus the generator's CPU per thread).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from harness import Target

CRATE = Path(__file__).resolve().parent / "stompgen"
BINARY = CRATE / "target" / "release" / "stompgen"


def cargo() -> str | None:
    """The cargo that builds the generator, if there is one."""
    return shutil.which("cargo") or next(
        (p for p in (str(Path.home() / ".cargo" / "bin" / "cargo"),) if os.access(p, os.X_OK)),
        None,
    )


def available() -> bool:
    """Whether the compiled generator is built or can be."""
    return BINARY.exists() or cargo() is not None


def build() -> Path:
    """Build the generator (offline: it has no dependencies) unless it is up to date."""
    sources = [CRATE / "Cargo.toml", *sorted((CRATE / "src").glob("*.rs"))]
    newest = max(p.stat().st_mtime for p in sources)
    if BINARY.exists() and BINARY.stat().st_mtime >= newest:
        return BINARY
    tool = cargo()
    if tool is None:
        raise RuntimeError("cargo not found: install Rust's toolchain to build benchmarks/stompgen")
    subprocess.run(
        [tool, "build", "--release", "--offline", "--quiet"],
        cwd=CRATE,
        check=True,
        timeout=600,
    )
    return BINARY


def _target_args(target: Target, consumers_at: Target | None = None) -> list[str]:
    args = ["--port", str(target.port), "--transport", target.transport]
    if consumers_at is not None:
        args += ["--consumer-port", str(consumers_at.port)]
    if target.transport == "ws":
        args += ["--ws-path", target.ws_path]
    for name, value in target.connect_headers.items():
        args += ["--header", f"{name}:{value}"]
    return args


def run(
    scenario: str,
    target: Target,
    options: list[str],
    timeout: float,
    cpu_of_broker: Callable[[], float] | None = None,
    nice: int = 0,
    consumers_at: Target | None = None,
) -> dict:
    """
    One ``stompgen`` run: its figures, with the broker's CPU from GO to the
    end (``broker_cpu_s``). ``nice`` below 0 raises the generator's CPU
    priority (its scheduler weight), for ``compare.py --check-generator``.
    ``consumers_at`` puts the consumers and subscribers on another node of a
    cluster (``target`` has the producers).
    """
    command = [str(build()), scenario, *_target_args(target, consumers_at), *options]
    command += ["--timeout", str(timeout), "--gate"]
    deadline = time.monotonic() + timeout + 30
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        ready = proc.stdout.readline().strip()
        if ready != "READY":
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            error = (ready + " " + proc.stderr.read()).strip()[:500]
            return {"ok": False, "error": f"stompgen: {error or 'exited before READY'}"}
        cpu_at_go = cpu_of_broker() if cpu_of_broker else 0.0
        proc.stdin.write("GO\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        broker_cpu = (cpu_of_broker() - cpu_at_go) if cpu_of_broker else 0.0
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not line.strip():
        return {"ok": False, "error": f"stompgen: no figures ({proc.stderr.read()[:500]})"}
    result = json.loads(line)
    result["broker_cpu_s"] = broker_cpu
    return result


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
    nice: int = 0,
    consumers_at: Target | None = None,
) -> dict:
    """As :func:`loadgen.throughput`, by the compiled generator."""
    options = [
        "--producers", str(producers),
        "--consumers", str(consumers),
        "--messages", str(messages),
        "--size", str(size),
        "--ack", ack,
    ]  # fmt: skip
    options += ["--persistent"] if persistent else []
    options += ["--backlog"] if backlog else []
    return run("throughput", target, options, timeout, cpu_of_broker, nice, consumers_at)


def fanout(
    target: Target,
    *,
    subscribers: int,
    messages: int,
    size: int,
    timeout: float = 120.0,
    idle: float = 3.0,
    cpu_of_broker: Callable[[], float] | None = None,
    nice: int = 0,
    consumers_at: Target | None = None,
) -> dict:
    """As :func:`loadgen.fanout`, by the compiled generator."""
    options = [
        "--subscribers", str(subscribers),
        "--messages", str(messages),
        "--size", str(size),
        "--idle", f"{idle:g}",
    ]  # fmt: skip
    return run("fanout", target, options, timeout, cpu_of_broker, nice, consumers_at)


def latency(
    target: Target,
    *,
    rate: float,
    seconds: float,
    size: int = 100,
    timeout: float = 60.0,
    idle: float = 3.0,
    cpu_of_broker: Callable[[], float] | None = None,
    nice: int = 0,
    realtime: bool = False,
    consumers_at: Target | None = None,
) -> dict:
    """
    As :func:`loadgen.latency`, by the compiled generator. With ``realtime``
    its producer and consumer threads run SCHED_FIFO (root only), so that
    their own late wake-ups do not count as the broker's latency.
    """
    options = ["--rate", f"{rate:g}", "--seconds", f"{seconds:g}", "--size", str(size)]
    options += ["--idle", f"{idle:g}"] + (["--realtime"] if realtime else [])
    return run("latency", target, options, timeout + seconds, cpu_of_broker, nice, consumers_at)
