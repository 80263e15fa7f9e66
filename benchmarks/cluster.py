"""
Cluster mode side by side, in one run on this machine: one plain node, one
node with ``--cluster``, and two nodes with ``--cluster`` with the producers
on one and the consumers (or subscribers) on the other. Each setup runs each
case ``--rounds`` times, interleaved, against a ``redis-server`` of its own
(append-only file on, ``appendfsync everysec``, Redis's usual durable
setting), driven by the compiled generator (``benchmarks/stompgen``).

    .venv/bin/python benchmarks/cluster.py --messages 50000 --rounds 3

Per case and setup it prints the median figure, its ratio to the plain
node's, and where the CPU went per 1,000 messages delivered: the nodes,
Redis and the generator (its busiest thread's share of a CPU shows it is
not the limit). Each run is also printed as one ``JSON {...}`` line, and
``--json FILE`` writes them all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import compiledgen
import harness

SETUPS = ("single", "cluster-1", "cluster-2")


@dataclass(frozen=True)
class Case:
    """One scenario with its parameters."""

    name: str
    scenario: str  # queue, topic, persistent, latency


CASES = (
    Case("queue 1->1 tcp 100B", "queue"),
    Case("topic 1->10 tcp 100B", "topic"),
    Case("persistent 1->1 tcp 100B", "persistent"),
    Case("latency 1k/s tcp 100B", "latency"),
)
FIGURE = {
    "queue": ("msgs/s", "msgs_per_s", True),
    "topic": ("delivered/s", "msgs_per_s", True),
    "persistent": ("msgs/s", "msgs_per_s", True),
    "latency": ("p99 ms", "p99_ms", False),
}


class Redis:
    """A ``redis-server`` on a free loopback port, with its files in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server not found (apt-get install redis-server)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = harness.free_port()
        self.workdir = workdir
        self._log = open(workdir / "redis.log", "wb")  # closed in stop()
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", harness.LOCALHOST, "--save", ""]
            + ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(workdir)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._cli("PING")

    @property
    def url(self) -> str:
        return f"redis://{harness.LOCALHOST}:{self.port}/0"

    def _cli(self, *args: str) -> str:
        deadline = time.monotonic() + 10
        while True:
            done = subprocess.run(
                ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True
            )
            if done.returncode == 0 and not done.stdout.startswith("Could not connect"):
                return done.stdout
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer: {done.stdout}{done.stderr}")
            time.sleep(0.05)

    def flush(self) -> None:
        """Empty it between runs (each run has queues and streams of its own)."""
        self._cli("FLUSHALL")

    def cpu(self) -> float:
        return harness.cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        harness.stop_process(self.proc)
        self._log.close()


class Setup:
    """The nodes of one setup; producers connect to the first, consumers to the last."""

    def __init__(
        self, name: str, workdir: Path, twistd: str, redis: Redis, extra: tuple[str, ...] = ()
    ) -> None:
        self.name = name
        self.redis = redis if name != "single" else None
        count = 2 if name == "cluster-2" else 1
        self.nodes = []
        for i in range(count):
            args = list(extra)
            if self.redis is not None:
                args += ["--cluster", redis.url, "--node-id", f"n{i + 1}"]
            node = harness.Stomptw(workdir / f"{name}-n{i + 1}", twistd, args, ws=False)
            self.nodes.append(node)
        for node in self.nodes:
            self._wait_joined(node)

    def _wait_joined(self, node: harness.Stomptw) -> None:
        if self.redis is None:
            return
        deadline = time.monotonic() + 30
        while "joined the cluster" not in node.log(None):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: a node did not join:\n{node.log()}")
            time.sleep(0.05)

    def nodes_cpu(self) -> float:
        return sum(node.cpu() for node in self.nodes)

    def cpu(self) -> float:
        """The nodes' CPU and Redis's: what the generator measures as the broker's."""
        return self.nodes_cpu() + (self.redis.cpu() if self.redis is not None else 0.0)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def run_case(setup: Setup, case: Case, args: argparse.Namespace) -> dict:
    """One run of ``case`` on ``setup``, with the CPU each part used."""
    producers = setup.nodes[0].target("tcp")
    consumers = setup.nodes[-1].target("tcp") if len(setup.nodes) > 1 else None
    if setup.redis is not None:
        setup.redis.flush()
    nodes0 = setup.nodes_cpu()
    redis0 = setup.redis.cpu() if setup.redis is not None else 0.0
    measured = {"timeout": args.timeout, "cpu_of_broker": setup.cpu, "consumers_at": consumers}
    sc = case.scenario
    if sc in ("queue", "persistent"):
        result = compiledgen.throughput(
            producers,
            producers=1,
            consumers=1,
            messages=args.messages,
            size=100,
            persistent=sc == "persistent",
            **measured,
        )
    elif sc == "topic":
        result = compiledgen.fanout(
            producers, subscribers=10, messages=args.messages, size=100, **measured
        )
    else:
        result = compiledgen.latency(producers, rate=1000, seconds=args.latency_seconds, **measured)
    result["nodes_cpu_s"] = setup.nodes_cpu() - nodes0
    result["redis_cpu_s"] = (setup.redis.cpu() - redis0) if setup.redis is not None else 0.0
    result.update(setup=setup.name, case=case.name)
    return result


def print_table(results: list[dict]) -> None:
    """Medians per case and setup, the ratio to the single node, and the CPU split."""
    print()
    header = f"{'case':28} {'setup':10} {'median':>12} {'vs single':>9}"
    print(header + f" {'node ms/1k':>10} {'redis ms/1k':>11} {'gen busiest':>11}")
    for case in CASES:
        label, key, _ = FIGURE[case.scenario]
        base = None
        for name in SETUPS:
            runs = [r for r in results if r["case"] == case.name and r["setup"] == name]
            ok = [r for r in runs if r.get("ok", True) and key in r]
            if not ok:
                errors = "; ".join(r.get("error", "?") for r in runs)[:100]
                print(f"{case.name:28} {name:10} {'failed':>12}  {errors}")
                continue
            med = statistics.median(r[key] for r in ok)
            base = med if name == "single" else base
            ratio = f"{med / base:.2f}x" if base else "-"
            count = ok[0].get("messages") or 1
            node_ms = statistics.median(r["nodes_cpu_s"] for r in ok) * 1e6 / count
            redis_ms = statistics.median(r["redis_cpu_s"] for r in ok) * 1e6 / count
            busiest = max(r.get("gen_busiest_thread_share", 0.0) for r in ok)
            figure = f"{med:,.0f}" if med >= 100 else f"{med:.2f}"
            print(
                f"{case.name:28} {name:10} {figure:>9} {label.split()[0][:2]:>2} {ratio:>9}"
                f" {node_ms:10.1f} {redis_ms:11.1f} {busiest:10.0%}"
            )
    print(
        "\nnode ms/1k, redis ms/1k: CPU milliseconds per 1,000 messages delivered, of all "
        "the setup's nodes and of Redis; gen busiest: the generator's busiest thread's share "
        "of a CPU (well under 100 %: the generator is not the limit)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")))
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument(
        "--node-args",
        default="",
        help="more arguments for every node (plain ones too), e.g. '--max-queue-bytes 0' to "
        "measure without the cluster-wide queue limits",
    )
    args = parser.parse_args(argv)
    compiledgen.build()
    workroot = Path(tempfile.mkdtemp(prefix="stomptw-cluster-bench-"))
    redis = Redis(workroot / "redis")
    setups: dict[str, Setup] = {}
    results = []
    try:
        for name in SETUPS:
            setups[name] = Setup(name, workroot, args.twistd, redis, tuple(args.node_args.split()))
        for round_ in range(args.rounds):
            for case in CASES:
                for name in SETUPS:
                    result = run_case(setups[name], case, args)
                    result["round"] = round_
                    results.append(result)
                    key = FIGURE[case.scenario][1]
                    print(f"round {round_ + 1} {case.name} {name}: {result.get(key, result)}")
                    print("JSON " + json.dumps(result), flush=True)
    finally:
        for setup in setups.values():
            setup.stop()
        redis.stop()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
