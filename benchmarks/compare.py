#!/usr/bin/env python3
"""
Side-by-side benchmark: stomptw against RabbitMQ (STOMP and Web-STOMP plugins)
and ActiveMQ Classic (STOMP over TCP).

Starts the brokers as subprocesses on loopback ports of their own, each with
its data under a temporary directory (RabbitMQ with its own node name, epmd
port and Erlang cookie), runs each selected scenario against them in turn
(A B C, then C B A, ... ``--rounds`` times), then prints a table of medians
with the ratio of stomptw's figure to each other broker's, plus one ``JSON``
line per run. The load generator is ``loadgen.py`` (raw STOMP frames over TCP
and WebSocket, one worker process per client). Linux only (reads /proc).

Example::

    python benchmarks/compare.py --brokers stomptw,rabbitmq,activemq \\
        --messages 20000 --rounds 3 --connections 10000

``--cluster`` runs cluster mode instead (``benchmarks/cluster.py``): one
plain node, one node with ``--cluster`` and two nodes, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compiledgen  # noqa: E402
import gencheck  # noqa: E402
import harness  # noqa: E402
import loadgen  # noqa: E402
from harness import BrokerProcess  # noqa: E402

SCENARIOS = ("queue", "topic", "individual", "persistent", "backlog", "latency", "connections")
BROKERS = ("stomptw", "rabbitmq", "activemq")
WARM_UP_MESSAGES = 20000


# -- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row of the table: a scenario with its parameters (``name`` is the row's label)."""

    scenario: str
    name: str
    transport: str
    size: int = 100
    producers: int = 1  # queue: P producers and as many consumers
    rate: int = 0  # latency: messages per second


def cases(args: argparse.Namespace) -> list[Case]:
    """Every (scenario, parameters) combination selected on the command line."""
    # Scenarios that run once per body size, with the case's name before the transport.
    per_size = {
        "topic": f"topic 1->{args.subscribers}",
        "individual": "client-individual 1->1",
        "persistent": "persistent 1->1",
        "backlog": "persistent backlog",
    }
    chosen = args.scenario_list
    out = []
    for t in args.transport_list:
        if "queue" in chosen:
            for p in (1, 4):
                for size in args.size_list:
                    out.append(Case("queue", f"queue {p}->{p} {t} {size}B", t, size, producers=p))
        for sc, name in per_size.items():
            if sc in chosen:
                for size in args.size_list:
                    out.append(Case(sc, f"{name} {t} {size}B", t, size))
        if "latency" in chosen:
            for rate in (1000, 10000):
                out.append(Case("latency", f"latency {rate // 1000}k/s {t} 100B", t, rate=rate))
    if "connections" in chosen:
        for t in args.transport_list:
            out.append(Case("connections", f"idle {t} connections x{args.connections}", t))
    return out


def run_case(broker: BrokerProcess, case: Case, args: argparse.Namespace, nice: int = 0) -> dict:
    """
    One run of ``case`` against ``broker``: the scenario's figures, by the
    generator ``--generator`` chose (``nice`` below 0 raises the compiled
    generator's CPU priority, for ``--check-generator``).
    """
    target = broker.target(case.transport)
    sc = case.scenario
    measured: dict = {"timeout": args.timeout, "cpu_of_broker": broker.cpu}
    gen = loadgen
    if args.generator == "stompgen":
        gen = compiledgen
        measured["nice"] = nice
    if sc in ("queue", "individual", "persistent", "backlog"):
        return gen.throughput(
            target,
            producers=case.producers,
            consumers=case.producers,
            messages=backlog_messages(args, case.size) if sc == "backlog" else args.messages,
            size=case.size,
            ack="client-individual" if sc == "individual" else "auto",
            persistent=sc in ("persistent", "backlog"),
            backlog=sc == "backlog",
            **measured,
        )
    if sc == "topic":
        return gen.fanout(
            target, subscribers=args.subscribers, messages=args.messages, size=case.size, **measured
        )
    if sc == "latency":
        if args.latency_realtime:
            measured["realtime"] = True
        return gen.latency(target, rate=case.rate, seconds=args.latency_seconds, **measured)
    if sc == "connections":
        return loadgen.connections(
            broker.idle_target(case.transport),
            count=args.connections,
            workers=args.conn_workers,
            timeout=max(args.timeout, 300.0),
            rss_of_broker=broker.rss,
        )
    raise ValueError(sc)


def backlog_messages(args: argparse.Namespace, size: int) -> int:
    """
    Messages in a ``backlog`` run: ``--messages``, but no more than fit in
    ``--backlog-mb``. The default (48) stays under stomptw's default
    ``--max-queue-bytes`` of 64 MiB, past which stomptw stops reading from
    the producer until a consumer makes room, which in this scenario never
    comes.
    """
    return max(1, min(args.messages, args.backlog_mb * 2**20 // (size + 1024)))


# (what the table shows, its key, whether higher is better)
FIGURE = {
    "queue": ("msgs/s", "msgs_per_s", True),
    "individual": ("msgs/s", "msgs_per_s", True),
    "persistent": ("msgs/s", "msgs_per_s", True),
    "backlog": ("stored/s", "stored_per_s", True),
    "topic": ("delivered/s", "msgs_per_s", True),
    "latency": ("p99 ms", "p99_ms", False),
    "connections": ("KiB/conn", "rss_per_conn_kib", False),
}


#: Rows a scenario has besides its main figure's.
MORE_FIGURES = {
    "latency": [("p99.9 ms", "p999_ms", False), ("max ms", "max_ms", False)],
}


def g(r: dict, key: str) -> float:
    """A figure of a run, NaN when the run failed before producing it."""
    return r.get(key, float("nan"))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(results: list[dict], brokers: list[str]) -> None:
    """Medians per case and broker, with the ratio of stomptw's to each other broker's."""
    by_case: dict[str, dict[str, list[dict]]] = {}
    for r in results:
        by_case.setdefault(r["case"], {}).setdefault(r["broker"], []).append(r)
    others = [b for b in brokers if b != "stomptw"] if "stomptw" in brokers else []
    head = f"{'scenario':<34} {'figure':<12}"
    for b in brokers:
        head += f" {b:>12} {'ok':>5} {'lost':>7}"
    for b in others:
        head += f" {'vs ' + b:>12}"
    if others:
        head += "  better"
    print(head)
    extra_lines = []
    for case, per in by_case.items():
        sc = next(iter(per.values()))[0]["scenario"]
        for label, key, higher in [FIGURE[sc], *MORE_FIGURES.get(sc, [])]:
            print(_table_line(case, per, brokers, others, label, key, higher, sc))
        for b in brokers:
            runs = per.get(b, [])
            if runs:
                extra_lines.append(f"  {case} [{b}]: " + detail(sc, runs))
    if others:
        print(
            "\nvs X = stomptw / X of the medians; 'better' says which direction is better "
            "(msgs/s, stored/s: higher; latency, KiB/conn: lower). ok = runs with every "
            "message delivered exactly once (connections: no failure); lost = median "
            "messages not delivered (connections: failures); throughput medians are over "
            "the ok runs when there are any; '-' = not measured (ActiveMQ: TCP only)."
        )
    print("\nper broker (medians over rounds):")
    for line in extra_lines:
        print(line)
    for r in results:
        if r.get("error") or not r.get("ok"):
            print(f"! {r['case']} [{r['broker']}] round {r['round']}: {r.get('error') or 'not ok'}")


def _table_line(
    case: str,
    per: dict[str, list[dict]],
    brokers: list[str],
    others: list[str],
    label: str,
    key: str,
    higher: bool,
    sc: str,
) -> str:
    """One row of the table: a figure of a case, per broker, with the ratios."""
    line = f"{case:<34} {label:<12}"
    meds = {}
    for b in brokers:
        runs = per.get(b, [])
        if not runs:
            meds[b] = float("nan")
            line += f" {'-':>12} {'-':>5} {'-':>7}"
            continue
        good = [r for r in runs if r.get("ok")] or runs
        meds[b] = median([r[key] for r in good if key in r])
        oks = f"{sum(1 for r in runs if r.get('ok'))}/{len(runs)}"
        if sc == "connections":
            lost = max((g(r, "failures") for r in runs), default=0)
        else:
            lost = median([g(r, "lost") for r in runs])
        line += f" {meds[b]:>12.{2 if key.endswith('_ms') else 1}f} {oks:>5} {lost:>7.0f}"
    for b in others:
        ratio = meds["stomptw"] / meds[b] if meds[b] else float("nan")
        line += f" {'-' if ratio != ratio else f'{ratio:.2f}':>12}"
    if others:
        line += f"  {'higher' if higher else 'lower'}"
    return line


def detail(sc: str, runs: list[dict]) -> str:
    """The figures behind one table cell, for the lines below the table."""
    ok_runs = [r for r in runs if r.get("ok")] or runs

    def med(key: str) -> float:
        return median([g(r, key) for r in ok_runs])

    if sc == "latency":
        return (
            f"p50 {med('p50_ms'):.2f} ms, p99 {med('p99_ms'):.2f} ms, "
            f"p99.9 {med('p999_ms'):.2f} ms, max {med('max_ms'):.2f} ms, lost {med('lost'):.0f}, "
            f"broker cpu {med('broker_cpu_s'):.2f} s, generator cpu {med('gen_cpu_s'):.2f} s"
            + busiest(ok_runs)
        )
    if sc == "connections":
        return (
            f"opened {med('opened'):.0f}, failures {max(g(r, 'failures') for r in runs)}, "
            f"open time {med('open_seconds'):.2f} s, "
            f"RSS {med('rss_before_mib'):.1f} -> {med('rss_after_mib'):.1f} MiB"
        )
    parts = []
    if sc == "backlog":
        parts.append(f"{med('messages'):.0f} messages")
    if sc in ("persistent", "backlog"):
        parts.append(f"receipts {min(g(r, 'receipts') for r in runs):.0f} (min)")
        parts.append(f"last receipt at {med('receipt_seconds'):.2f} s")
    if sc == "backlog":
        parts.append(f"drained {med('drain_per_s'):.0f} msgs/s")
    parts += [
        f"lost {max(g(r, 'lost') for r in runs)}, dup {max(g(r, 'duplicates') for r in runs)}",
        f"broker cpu {med('broker_cpu_s'):.2f} s, generator cpu {med('gen_cpu_s'):.2f} s"
        + busiest(ok_runs),
        f"MB/s {med('mb_per_s'):.1f}",
    ]
    return ", ".join(parts)


def busiest(runs: list[dict]) -> str:
    """The compiled generator's busiest thread, as a share of a CPU over the run (max)."""
    shares = [r["gen_busiest_thread_share"] for r in runs if "gen_busiest_thread_share" in r]
    return f" (busiest generator thread {max(shares):.0%} of a CPU)" if shares else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=",".join(SCENARIOS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=100000, help="messages per throughput run")
    p.add_argument("--sizes", default="100,4096")
    p.add_argument("--connections", type=int, default=10000, help="idle WebSocket sessions")
    p.add_argument("--conn-workers", type=int, default=8, help="processes opening them")
    p.add_argument("--subscribers", type=int, default=10, help="topic fan-out subscribers")
    p.add_argument("--latency-seconds", type=float, default=5.0)
    p.add_argument(
        "--backlog-mb",
        type=int,
        default=48,
        help="most MiB a persistent backlog run stores (bodies plus 1 KiB a message)",
    )
    p.add_argument("--transports", default="tcp,ws")
    p.add_argument(
        "--brokers",
        default="stomptw,rabbitmq",
        help=",".join(BROKERS) + " (activemq: STOMP over TCP only)",
    )
    p.add_argument("--timeout", type=float, default=180.0, help="seconds allowed per run")
    p.add_argument(
        "--generator",
        default="auto",
        choices=("auto", "stompgen", "python"),
        help="the load generator: the compiled one (benchmarks/stompgen, built with cargo "
        "on first use), the Python workers of loadgen.py, or auto (stompgen when it is "
        "built or cargo is installed). Idle connections are always loadgen's.",
    )
    p.add_argument(
        "--latency-realtime",
        action="store_true",
        help="latency runs: the compiled generator's producer and consumer threads run "
        "SCHED_FIFO (needs root), so their own late wake-ups are not counted as the "
        "broker's latency",
    )
    p.add_argument(
        "--check-generator",
        action="store_true",
        help="instead of the table: run every case --rounds times with the generator as "
        "it is and as many times with twice its CPU weight (nice -3), alternating, and "
        "say for each whether the figure moved by more than the run-to-run noise",
    )
    p.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"))
    p.add_argument("--rabbitmq-server", default=None, help="path of rabbitmq-server")
    p.add_argument(
        "--activemq-connector",
        default="stomp",
        choices=("stomp", "stomp+nio"),
        help="ActiveMQ's STOMP transport: a thread per connection, or NIO selector threads",
    )
    p.add_argument(
        "--stomptw-args",
        default="",
        help="extra twistd stomptw options, e.g. '--slow-topic-limit 1000000'",
    )
    p.add_argument(
        "--stomptw-login",
        default="",
        help="USER:PASSWORD every stomptw client sends in CONNECT (with --stomptw-args "
        "'--auth ...'), to measure what logins and permissions cost",
    )
    p.add_argument(
        "--stomptw-code",
        type=Path,
        default=harness.REPO_ROOT,
        help="the checkout whose stomptw runs (default: this one), e.g. a git worktree "
        "of an earlier commit, to compare two versions with the same generator",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="cluster mode instead: one plain node, one node with --cluster and two nodes "
        "side by side on a redis-server of their own (benchmarks/cluster.py; takes "
        "--messages, --rounds, --latency-seconds, --timeout, --twistd, --json and "
        "--stomptw-args)",
    )
    p.add_argument("--json", type=Path, default=None, help="with --cluster: write every run here")
    a = p.parse_args(argv)
    a.scenario_list = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    a.size_list = [int(s) for s in a.sizes.split(",") if s.strip()]
    a.transport_list = [t.strip() for t in a.transports.split(",") if t.strip()]
    a.broker_list = [b.strip() for b in a.brokers.split(",") if b.strip()]
    for s in a.scenario_list:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    if set(a.transport_list) - {"tcp", "ws"} or set(a.broker_list) - set(BROKERS):
        p.error(f"--transports takes tcp,ws; --brokers takes {','.join(BROKERS)}")
    if a.rounds < 1 or a.messages < 1 or not a.size_list or a.connections < 1:
        p.error("--rounds, --messages, --sizes and --connections must be positive")
    if a.generator == "auto":
        a.generator = "stompgen" if compiledgen.available() else "python"
    if (a.check_generator or a.latency_realtime) and a.generator != "stompgen":
        p.error("--check-generator and --latency-realtime need the compiled generator (cargo)")
    return a


def cluster_mode(args: argparse.Namespace) -> int:
    """``--cluster``: the cluster benchmark (``benchmarks/cluster.py``) with these settings."""
    import cluster

    forwarded = [
        "--messages",
        str(args.messages),
        "--rounds",
        str(args.rounds),
        "--latency-seconds",
        str(args.latency_seconds),
        "--timeout",
        str(args.timeout),
        "--twistd",
        args.twistd,
    ]
    if args.json is not None:
        forwarded += ["--json", str(args.json)]
    if args.stomptw_args:
        forwarded += ["--node-args", args.stomptw_args]
    return cluster.main(forwarded)


def warm_up(broker: BrokerProcess, args: argparse.Namespace) -> None:
    """One untimed queue run per transport before measuring, the same for every broker.

    The JVM (ActiveMQ) compiles its hot paths during the first few seconds of load; without
    this, the first round's figures measure its interpreter.
    """
    for transport in broker.transports:
        if transport in args.transport_list:
            (compiledgen if args.generator == "stompgen" else loadgen).throughput(
                broker.target(transport),
                producers=1,
                consumers=1,
                messages=WARM_UP_MESSAGES,
                size=100,
                timeout=args.timeout,
            )


def settle(brokers: dict[str, BrokerProcess], limit: float = 5.0) -> None:
    """Wait (at most ``limit`` seconds) until no broker is still busy from the last run.

    A JVM collecting garbage or Erlang schedulers spinning after a run would
    otherwise take CPU from the next broker's run on a 2-CPU machine.
    """
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            before = sum(b.cpu() for b in brokers.values())
            time.sleep(0.25)
            if sum(b.cpu() for b in brokers.values()) - before < 0.025:  # under 10 % of a CPU
                return
    except OSError:  # a broker has gone; its run will say so
        return


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cluster:
        return cluster_mode(args)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    harness.raise_fd_limit()
    workroot = Path(tempfile.mkdtemp(prefix="stomptw-compare-"))
    brokers: dict[str, BrokerProcess] = {}
    results: list[dict] = []
    notes: list[str] = []
    machine = {
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "generator": args.generator,
    }
    if args.generator == "stompgen":
        compiledgen.build()
    try:
        factories = {}
        extra = args.stomptw_args.split()
        if "stomptw" in args.broker_list:
            login = {}
            if args.stomptw_login:
                name, _, password = args.stomptw_login.partition(":")
                login = {"login": name, "passcode": password}
            factories["stomptw"] = lambda d: harness.Stomptw(
                d, args.twistd, extra, code=args.stomptw_code.resolve(), connect_headers=login
            )
        if "rabbitmq" in args.broker_list:
            server = args.rabbitmq_server or harness.find_rabbitmq_server()
            if not server:
                notes.append("RabbitMQ UNAVAILABLE: rabbitmq-server not found; stomptw only")
            else:
                factories["rabbitmq"] = lambda d: harness.RabbitMQ(d, server, loadgen.stomp_ready)
        if "activemq" in args.broker_list:
            java = harness.find_activemq()
            if not java:
                notes.append(
                    "ActiveMQ UNAVAILABLE: needs Debian's activemq package and java "
                    "(apt-get install activemq)"
                )
            else:
                factories["activemq"] = lambda d: harness.ActiveMQ(
                    d, java, loadgen.stomp_ready, args.activemq_connector
                )
        for name, factory in list(factories.items()):
            try:
                brokers[name] = factory(workroot / name)
            except Exception as e:
                del factories[name]
                if name == "stomptw":
                    raise
                notes.append(f"{name} UNAVAILABLE: it did not start: {e}")
        for broker in brokers.values():
            warm_up(broker, args)
        if extra:
            machine["stomptw_args"] = args.stomptw_args
        for note in notes:
            print(note, flush=True)
        print("JSON " + json.dumps({"machine": machine}), flush=True)
        selected = cases(args)
        order = list(brokers)
        for rnd in range(1, args.rounds + 1):
            for case in selected:
                # A B A B ...: alternate which broker goes first from round to round.
                names = order if rnd % 2 else order[::-1]
                for name in names:
                    if case.transport not in brokers[name].transports:
                        continue
                    # --check-generator: as it is and with twice the CPU weight, in
                    # an order that alternates from round to round.
                    weights = (0, gencheck.BOOST) if args.check_generator else (0,)
                    if args.check_generator and rnd % 2 == 0:
                        weights = weights[::-1]
                    for nice in weights:
                        try:
                            if case.scenario == "connections":
                                # Memory per connection needs a broker whose heap has not
                                # grown (and been freed) in earlier scenarios: a fresh one.
                                brokers[name].stop()
                                brokers[name] = factories[name](workroot / f"{name}-conns-{rnd}")
                            settle(brokers)
                            r = run_case(brokers[name], case, args, nice)
                        except Exception as e:
                            r = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
                        r.update(broker=name, round=rnd, case=case.name, scenario=case.scenario)
                        r["generator_nice"] = nice
                        results.append(r)
                        print("JSON " + json.dumps(r), flush=True)
    finally:
        for broker in brokers.values():
            broker.stop()
        shutil.rmtree(workroot, ignore_errors=True)
    print()
    print(
        f"machine: {machine['cpus']} CPUs, load average {machine['load_avg_1m']} at start, "
        f"Python {machine['python']}, {machine['date']}"
    )
    for note in notes:
        print(note)
    print(
        f"messages per throughput run {args.messages}, rounds {args.rounds}, "
        f"latency runs {args.latency_seconds} s, {args.connections} idle connections\n"
    )
    names = [b for b in BROKERS if b in brokers]
    print(f"generator: {args.generator}")
    if results and args.check_generator:
        return gencheck.report(results, {sc: (k, h) for sc, (_, k, h) in FIGURE.items()})
    if results:
        print_table(results, names)
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
