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
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
from loadgen import LOCALHOST, Target  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FD_LIMIT = 65536
SCENARIOS = ("queue", "topic", "individual", "persistent", "backlog", "latency", "connections")
BROKERS = ("stomptw", "rabbitmq", "activemq")
WARM_UP_MESSAGES = 20000


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def _high_fd_limit() -> None:  # preexec_fn of broker subprocesses
    loadgen.raise_fd_limit(FD_LIMIT)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024


def stomp_ready(target: Target, deadline: float) -> bool:
    """Poll (bounded) until a STOMP CONNECT succeeds on ``target``."""
    while time.monotonic() < deadline:
        try:
            conn = loadgen.open_session(target, min(deadline, time.monotonic() + 5))
            conn.close()
            return True
        except (OSError, TimeoutError):
            time.sleep(0.25)
    return False


class BrokerProcess:
    name = ""
    pid = 0
    transports = ("tcp", "ws")

    def target(self, transport: str) -> Target:
        raise NotImplementedError

    def idle_target(self, transport: str) -> Target:
        """Where the idle connections scenario connects."""
        return self.target(transport)

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def rss(self) -> int:
        return proc_rss(self.pid)


class Stomptw(BrokerProcess):
    name = "stomptw"

    def __init__(self, workdir: Path, twistd: str, extra: list[str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.tcp_port, self.ws_port = free_port(), free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self.log_path = workdir / "stomptw.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                twistd,
                "-n",
                "--pidfile=",
                "stomptw",
                "--tcp",
                f"tcp:{self.tcp_port}:interface={LOCALHOST}",
                "--ws",
                f"tcp:{self.ws_port}:interface={LOCALHOST}",
                "--data-dir",
                str(workdir / "data"),
                "--heartbeat",
                "0,0",
                *(extra or []),
            ],
            cwd=workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_high_fd_limit,
        )
        self.pid = self.proc.pid
        if not stomp_ready(self.target("tcp"), time.monotonic() + 30):
            self.stop()
            raise RuntimeError(f"stomptw did not start:\n{self.log_path.read_text()[-3000:]}")

    def target(self, transport: str) -> Target:
        port = self.tcp_port if transport == "tcp" else self.ws_port
        return Target("stomptw", transport, port)

    def stop(self) -> None:
        loadgen.stop_process(self.proc)
        self._log.close()


def find_rabbitmq_server() -> str | None:
    for path in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")):
        if path and os.access(path, os.X_OK):
            return path
    return None


class RabbitMQ(BrokerProcess):
    """A private RabbitMQ node: own name, ports, epmd port, cookie and directories."""

    name = "rabbitmq"

    def __init__(self, workdir: Path, server: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.node = f"bench{os.getpid()}@localhost"
        ports = [free_port() for _ in range(5)]
        self.amqp_port, self.dist_port, self.stomp_port, self.ws_port, self.epmd_port = ports
        conf = workdir / "rabbitmq.conf"
        conf.write_text(
            f"listeners.tcp.1 = {LOCALHOST}:{self.amqp_port}\n"
            f"stomp.listeners.tcp.1 = {LOCALHOST}:{self.stomp_port}\n"
            f"web_stomp.tcp.port = {self.ws_port}\n"
            f"web_stomp.tcp.ip = {LOCALHOST}\n"
            "loopback_users = none\n"
            "stomp.default_user = guest\n"
            "stomp.default_pass = guest\n"
        )
        plugins = workdir / "enabled_plugins"
        plugins.write_text("[rabbitmq_stomp,rabbitmq_web_stomp].\n")
        env = dict(os.environ)
        env.update(
            HOME=str(workdir),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=LOCALHOST,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(conf),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins),
            RABBITMQ_MNESIA_BASE=str(workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(workdir / "log"),
            RABBITMQ_PID_FILE=str(workdir / "rabbitmq.pid"),
            ERL_EPMD_ADDRESS=LOCALHOST,
            ERL_EPMD_PORT=str(self.epmd_port),
        )
        self.env = env
        self.log_path = workdir / "rabbitmq.out"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [server],
            cwd=workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_high_fd_limit,
            start_new_session=True,
        )
        if not stomp_ready(self.target("tcp"), time.monotonic() + 120):
            log = self.log_tail()
            self.stop()
            raise RuntimeError(f"RabbitMQ did not accept a STOMP CONNECT in 120 s:\n{log}")
        try:
            self.pid = self._beam_pid()
        except Exception:
            self.stop()
            raise

    def log_tail(self) -> str:
        text = self.log_path.read_text(errors="replace")[-2000:]
        for path in sorted((self.workdir / "log").glob("*.log")):
            text += f"\n--- {path.name}\n" + path.read_text(errors="replace")[-2000:]
        return text

    def _pids_with(self, predicate) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if predicate(entry):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def _beam_pid(self) -> int:
        def is_beam(entry: Path) -> bool:
            cmd = (entry / "cmdline").read_bytes()
            return b"beam.smp" in cmd and b"\0-home\0" + bytes(self.workdir) + b"\0" in cmd

        pids = self._pids_with(is_beam)
        if not pids:
            raise RuntimeError("RabbitMQ's beam.smp process not found")
        return pids[0]

    def target(self, transport: str) -> Target:
        port = self.stomp_port if transport == "tcp" else self.ws_port
        return Target(
            "rabbitmq",
            transport,
            port,
            "/ws",
            {"host": "/", "login": "guest", "passcode": "guest"},
        )

    def stop(self) -> None:
        ctl = Path(find_rabbitmq_server() or "rabbitmq-server").with_name("rabbitmqctl")
        if self.proc.poll() is None and ctl.exists():
            try:
                subprocess.run(
                    [str(ctl), "-n", self.node, "stop"],
                    env=self.env,
                    cwd=self.workdir,
                    timeout=60,
                    capture_output=True,
                )
            except subprocess.TimeoutExpired:
                pass
        loadgen.stop_process(self.proc, 30, group=True)
        marker = f"ERL_EPMD_PORT={self.epmd_port}".encode()

        def is_our_epmd(entry: Path) -> bool:
            return b"epmd" in (entry / "cmdline").read_bytes() and marker in (
                entry / "environ"
            ).read_bytes().split(b"\0")

        for pid in self._pids_with(is_our_epmd):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._log.close()


ACTIVEMQ_HOME = Path("/usr/share/activemq")  # Debian's activemq package

ACTIVEMQ_XML = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans
    http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
    http://activemq.apache.org/schema/core
    http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="bench" useJmx="false"
          dataDirectory="${{activemq.data}}">
    <persistenceAdapter><kahaDB directory="${{activemq.data}}/kahadb"/></persistenceAdapter>
    <transportConnectors>
      <transportConnector name="stomp"
          uri="{scheme}://{host}:{port}?transport.tcpNoDelay=true"/>
      <transportConnector name="stomp-idle"
          uri="stomp+nio://{host}:{idle_port}?transport.tcpNoDelay=true"/>
    </transportConnectors>
  </broker>
</beans>
"""


def find_activemq() -> str | None:
    """``java`` if ActiveMQ Classic (Debian's package) and a Java runtime are installed."""
    java = shutil.which("java")
    if java and (ACTIVEMQ_HOME / "bin" / "activemq.jar").exists():
        return java
    return None


class ActiveMQ(BrokerProcess):
    """A private ActiveMQ Classic broker: its own base, data and config directories.

    Debian's package has no WebSocket transport, so only STOMP over TCP is measured.
    The JVM is started directly (``java -jar activemq.jar start``, as ``/usr/bin/activemq``
    does) with the package's default heap, and stopped with SIGTERM.
    """

    name = "activemq"
    transports = ("tcp",)

    def __init__(self, workdir: Path, java: str, scheme: str = "stomp") -> None:
        for sub in ("conf", "data", "tmp"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.stomp_port, self.idle_port = free_port(), free_port()
        conf = workdir / "conf"
        (conf / "activemq.xml").write_text(
            ACTIVEMQ_XML.format(
                scheme=scheme, host=LOCALHOST, port=self.stomp_port, idle_port=self.idle_port
            )
        )
        # The package's log configuration: without one, log4j2 prints only warnings.
        packaged = Path("/etc/activemq/instances-available/main/log4j2.properties")
        if packaged.exists():
            shutil.copy(packaged, conf / "log4j2.properties")
        self.log_path = workdir / "activemq.out"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                java,
                "-Xms512M",
                "-Xmx512M",
                "--add-opens",
                "java.base/java.lang=ALL-UNNAMED",
                "--add-reads=java.xml=java.logging",
                f"-Dactivemq.classpath={conf}:",
                f"-Dactivemq.home={ACTIVEMQ_HOME}",
                f"-Dactivemq.base={workdir}",
                f"-Dactivemq.conf={conf}",
                f"-Dactivemq.data={workdir / 'data'}",
                f"-Djava.io.tmpdir={workdir / 'tmp'}",
                "-jar",
                str(ACTIVEMQ_HOME / "bin" / "activemq.jar"),
                "start",
                f"xbean:file:{conf / 'activemq.xml'}",
            ],
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_high_fd_limit,
        )
        self.pid = self.proc.pid
        if not stomp_ready(self.target("tcp"), time.monotonic() + 90):
            log = self.log_path.read_text(errors="replace")[-3000:]
            self.stop()
            raise RuntimeError(f"ActiveMQ did not accept a STOMP CONNECT in 90 s:\n{log}")

    def target(self, transport: str, port: int = 0) -> Target:
        return Target(
            "activemq",
            transport,
            port or self.stomp_port,
            connect_headers={"host": "localhost", "login": "guest", "passcode": "guest"},
        )

    def idle_target(self, transport: str) -> Target:
        # Thousands of idle connections are what the NIO transport is for:
        # the thread-per-connection one would hold a thread (and its stack) each.
        return self.target(transport, self.idle_port)

    def stop(self) -> None:
        loadgen.stop_process(self.proc, 30)
        self._log.close()


# -- scenarios ------------------------------------------------------------------------------


def cases(args) -> list[dict]:
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
                    out.append(
                        dict(scenario="queue", case=f"queue {p}->{p} {t} {size}B", transport=t,
                             producers=p, consumers=p, size=size)
                    )  # fmt: skip
        for sc, name in per_size.items():
            if sc in chosen:
                for size in args.size_list:
                    case = f"{name} {t} {size}B"
                    out.append(dict(scenario=sc, case=case, transport=t, size=size))
        if "latency" in chosen:
            for rate in (1000, 10000):
                out.append(
                    dict(scenario="latency", case=f"latency {rate // 1000}k/s {t} 100B",
                         transport=t, rate=rate)
                )  # fmt: skip
    if "connections" in chosen:
        for t in args.transport_list:
            out.append(
                dict(scenario="connections", case=f"idle {t} connections x{args.connections}",
                     transport=t)
            )  # fmt: skip
    return out


def run_case(broker: BrokerProcess, case: dict, args) -> dict:
    target = broker.target(case["transport"])
    sc = case["scenario"]
    if sc in ("queue", "individual", "persistent", "backlog"):
        return loadgen.throughput(
            target,
            producers=case.get("producers", 1),
            consumers=case.get("consumers", 1),
            messages=backlog_messages(args, case["size"]) if sc == "backlog" else args.messages,
            size=case["size"],
            ack="client-individual" if sc == "individual" else "auto",
            persistent=sc in ("persistent", "backlog"),
            backlog=sc == "backlog",
            timeout=args.timeout,
            cpu_of_broker=broker.cpu,
        )
    if sc == "topic":
        return loadgen.fanout(
            target,
            subscribers=args.subscribers,
            messages=args.messages,
            size=case["size"],
            timeout=args.timeout,
            cpu_of_broker=broker.cpu,
        )
    if sc == "latency":
        return loadgen.latency(
            target,
            rate=case["rate"],
            seconds=args.latency_seconds,
            timeout=args.timeout,
            cpu_of_broker=broker.cpu,
        )
    if sc == "connections":
        return loadgen.connections(
            broker.idle_target(case["transport"]),
            count=args.connections,
            workers=args.conn_workers,
            timeout=max(args.timeout, 300.0),
            rss_of_broker=broker.rss,
        )
    raise ValueError(sc)


def backlog_messages(args, size: int) -> int:
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
        label, key, higher = FIGURE[sc]
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
            line += f" {meds[b]:>12.1f} {oks:>5} {lost:>7.0f}"
        for b in others:
            ratio = meds["stomptw"] / meds[b] if meds[b] else float("nan")
            line += f" {'-' if ratio != ratio else f'{ratio:.2f}':>12}"
        if others:
            line += f"  {'higher' if higher else 'lower'}"
        print(line)
        for b in brokers:
            runs = per.get(b, [])
            if runs:
                extra_lines.append(f"  {case} [{b}]: " + detail(sc, runs))
    if others:
        print(
            "\nvs X = stomptw / X of the medians; 'better' says which direction is better "
            "(msgs/s, stored/s: higher; latency p99, KiB/conn: lower). ok = runs with every "
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


def detail(sc: str, runs: list[dict]) -> str:
    """The figures behind one table cell, for the lines below the table."""
    ok_runs = [r for r in runs if r.get("ok")] or runs

    def med(key: str) -> float:
        return median([g(r, key) for r in ok_runs])

    if sc == "latency":
        return (
            f"p50 {med('p50_ms'):.2f} ms, p99 {med('p99_ms'):.2f} ms, "
            f"p99.9 {med('p999_ms'):.2f} ms, lost {med('lost'):.0f}, "
            f"broker cpu {med('broker_cpu_s'):.2f} s, generator cpu {med('gen_cpu_s'):.2f} s"
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
        f"broker cpu {med('broker_cpu_s'):.2f} s, generator cpu {med('gen_cpu_s'):.2f} s",
        f"MB/s {med('mb_per_s'):.1f}",
    ]
    return ", ".join(parts)


def parse_args(argv=None) -> argparse.Namespace:
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
    p.add_argument("--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"))
    p.add_argument("--rabbitmq-server", default=None, help="path of rabbitmq-server")
    p.add_argument(
        "--activemq-connector",
        default="stomp",
        choices=("stomp", "stomp+nio"),
        help="ActiveMQ's STOMP transport: a thread per connection (faster with few "
        "connections, 2-4x at 4 KiB), or NIO selector threads",
    )
    p.add_argument(
        "--stomptw-args",
        default="",
        help="extra twistd stomptw options, e.g. '--slow-topic-limit 1000000'",
    )
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
    return a


def warm_up(broker: BrokerProcess, args) -> None:
    """One untimed queue run per transport before measuring, the same for every broker.

    The JVM (ActiveMQ) compiles its hot paths during the first few seconds of load; without
    this, the first round's figures measure its interpreter.
    """
    for transport in broker.transports:
        if transport in args.transport_list:
            loadgen.throughput(
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


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    loadgen.raise_fd_limit(FD_LIMIT)
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
    }
    try:
        factories = {}
        extra = args.stomptw_args.split()
        if "stomptw" in args.broker_list:
            factories["stomptw"] = lambda d: Stomptw(d, args.twistd, extra)
        if "rabbitmq" in args.broker_list:
            server = args.rabbitmq_server or find_rabbitmq_server()
            if not server:
                notes.append("RabbitMQ UNAVAILABLE: rabbitmq-server not found; stomptw only")
            else:
                factories["rabbitmq"] = lambda d: RabbitMQ(d, server)
        if "activemq" in args.broker_list:
            java = find_activemq()
            if not java:
                notes.append(
                    "ActiveMQ UNAVAILABLE: needs Debian's activemq package and java "
                    "(apt-get install activemq)"
                )
            else:
                factories["activemq"] = lambda d: ActiveMQ(d, java, args.activemq_connector)
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
                    if case["transport"] not in brokers[name].transports:
                        continue
                    try:
                        if case["scenario"] == "connections":
                            # Memory per connection needs a broker whose heap has not
                            # grown (and been freed) in earlier scenarios: a fresh one.
                            brokers[name].stop()
                            brokers[name] = factories[name](workroot / f"{name}-conns-{rnd}")
                        settle(brokers)
                        r = run_case(brokers[name], case, args)
                    except Exception as e:
                        r = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
                    r.update(broker=name, round=rnd, case=case["case"], scenario=case["scenario"])
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
    if results:
        print_table(results, names)
    return 0 if all(r.get("ok") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
