"""
Broker processes for the benchmarks: start one, find its ports, sample it, stop it.

Standard library only; Linux (reads ``/proc``). ``compare.py`` and
``persistence.py`` start their brokers through this module, and every figure
of CPU time or memory, the broker's or a load generator worker's own, comes
from :func:`sample`.

* :class:`Stomptw`: ``twistd -n stomptw`` from the Python environment running
  the benchmark, with the repository root first on ``PYTHONPATH`` (so that the
  repository's code runs, not an installed copy), listening on ephemeral
  loopback ports that it reads from the broker's log.
* :class:`RabbitMQ`: a private node (own name, ports, epmd port, Erlang cookie
  and directories) with the STOMP and Web-STOMP plugins.
* :class:`ActiveMQ`: ActiveMQ Classic (Debian's package), STOMP over TCP.

RabbitMQ and ActiveMQ are ready when a STOMP CONNECT succeeds; this module
has no STOMP client, so the caller passes that check in (``probe``, e.g.
``loadgen.stomp_ready``). Every broker's data lives under the directory it is
given, and nothing outside it (a system service, say) is used or touched.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

LOCALHOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FD_LIMIT = 65536


@dataclass
class Target:
    """A broker endpoint: ``transport`` is ``tcp`` or ``ws``."""

    name: str
    transport: str
    port: int
    ws_path: str = "/ws"
    connect_headers: dict[str, str] = field(default_factory=dict)


#: Polls (bounded by the deadline) until a STOMP CONNECT to the target succeeds.
Probe = Callable[[Target, float], bool]


# -- processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One look at a process in ``/proc``."""

    cpu_s: float  # user plus system CPU time used so far
    rss: int  # resident set now (VmRSS), bytes
    peak_rss: int  # highest resident set since it started (VmHWM), bytes


def cpu_seconds(pid: int) -> float:
    """
    User plus system CPU time of process ``pid`` so far.

    ``/proc`` counts CPU time in clock ticks (usually 10 ms). For this very
    process (a load generator worker measuring itself) the same total comes
    from ``getrusage`` to the microsecond instead: the generator's CPU is a
    sum over many short-lived workers, where ticks would lose up to one each.
    """
    if pid == os.getpid():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields 14 and 15 of proc(5), counted after "pid (comm)", which may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory(pid: int) -> tuple[int, int]:
    """``(rss, peak rss)`` of process ``pid`` in bytes (a zombie's read as 0)."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
    return int(kib.get("VmRSS", 0)) * 1024, int(kib.get("VmHWM", 0)) * 1024


def sample(pid: int) -> Sample:
    """CPU time and memory of process ``pid`` (:func:`cpu_seconds`, :func:`memory`)."""
    rss, peak = memory(pid)
    return Sample(cpu_s=cpu_seconds(pid), rss=rss, peak_rss=peak)


def pids_where(predicate: Callable[[Path], bool]) -> list[int]:
    """The processes whose ``/proc/<pid>`` directory satisfies ``predicate``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if predicate(entry):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """Raise RLIMIT_NOFILE's soft limit as far as the hard limit allows; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _high_fd_limit() -> None:  # preexec_fn of broker subprocesses
    raise_fd_limit(FD_LIMIT)


def stop_process(proc: subprocess.Popen, timeout: float = 20.0, group: bool = False) -> None:
    """SIGTERM a subprocess (its process group if ``group``), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def free_port() -> int:
    """A loopback TCP port nobody listens on now (for brokers that cannot report theirs)."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


# -- brokers --------------------------------------------------------------------------------


class BrokerProcess:
    """
    A broker subprocess with its output in a log file under ``workdir``, and a
    raised fd limit (for the idle connections scenario). Subclasses build the
    command line and say where to connect (:meth:`target`).
    """

    name: ClassVar[str] = ""
    transports: ClassVar[tuple[str, ...]] = ("tcp", "ws")
    stop_timeout: ClassVar[float] = 20.0

    def __init__(
        self,
        workdir: Path,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        own_group: bool = False,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.own_group = own_group
        self.log_path = workdir / f"{self.name}.log"
        self._log = open(self.log_path, "wb")  # closed in stop()
        try:
            self.proc = subprocess.Popen(
                list(command),
                cwd=workdir,
                env=env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_high_fd_limit,
                start_new_session=own_group,
            )
        except BaseException:  # no such executable, say
            self._log.close()
            raise
        #: The process to measure (RabbitMQ's is not the one started).
        self.pid = self.proc.pid

    def log(self, tail: int | None = 3000) -> str:
        """The broker's output: its last ``tail`` characters, or all of it."""
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def sample(self) -> Sample:
        """The broker's CPU time and memory now."""
        return sample(self.pid)

    def cpu(self) -> float:
        """CPU seconds used so far (what the scenarios take as ``cpu_of_broker``)."""
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        """Resident set now, bytes (the connections scenario's ``rss_of_broker``)."""
        return memory(self.pid)[0]

    def target(self, transport: str) -> Target:
        raise NotImplementedError

    def idle_target(self, transport: str) -> Target:
        """Where the idle connections scenario connects."""
        return self.target(transport)

    def wait_ready(self, probe: Probe, seconds: float) -> None:
        """Return once a STOMP CONNECT succeeds; stop the broker and raise if none does."""
        if not probe(self.target("tcp"), time.monotonic() + seconds):
            log = self.log()
            self.stop()
            raise RuntimeError(
                f"{self.name} did not accept a STOMP CONNECT in {seconds:.0f} s:\n{log}"
            )

    def stop(self) -> None:
        stop_process(self.proc, self.stop_timeout, group=self.own_group)
        self._log.close()


class Stomptw(BrokerProcess):
    """
    ``twistd -n stomptw`` on ephemeral loopback ports, read from its log, with
    its data in ``workdir/data`` and heart-beats off. ``ws=False`` runs it
    without a WebSocket listener; ``args`` are more ``twistd stomptw`` options
    (a later ``--heartbeat`` overrides the default). ``code`` is the checkout
    whose stomptw runs (this one by default; another, to compare versions).
    ``connect_headers`` go in every CONNECT its targets send (a login).
    """

    name = "stomptw"
    _LISTENING = re.compile(r"(stomp|ws) listening on \S+ \(127\.0\.0\.1:(\d+)\)")

    def __init__(
        self,
        workdir: Path,
        twistd: str,
        args: Sequence[str] = (),
        *,
        ws: bool = True,
        code: Path = REPO_ROOT,
        connect_headers: dict[str, str] | None = None,
    ) -> None:
        #: Sent in every CONNECT (``login`` and ``passcode`` with ``--auth``).
        self.connect_headers = dict(connect_headers or {})
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH", "")) if p)
        listen = f"tcp:0:interface={LOCALHOST}"
        command = [twistd, "-n", "--pidfile=", "stomptw", "--tcp", listen]
        command += ["--ws", listen] if ws else ["--no-ws"]
        command += ["--heartbeat", "0,0", "--data-dir", str(workdir / "data"), *args]
        super().__init__(workdir, command, env)
        self.ports = self._wait_for_ports(time.monotonic() + 30)

    def _wait_for_ports(self, deadline: float) -> dict[str, int]:
        """``{"stomp": port, "ws": port}`` once the broker has logged that it is ready."""
        while time.monotonic() < deadline:
            log = self.log(None)
            if "stomptw ready" in log:
                return {kind: int(port) for kind, port in self._LISTENING.findall(log)}
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = self.log()
        self.stop()
        raise RuntimeError(f"stomptw did not start:\n{log}")

    def target(self, transport: str) -> Target:
        port = self.ports["stomp" if transport == "tcp" else "ws"]
        return Target("stomptw", transport, port, connect_headers=dict(self.connect_headers))


def find_rabbitmq_server() -> str | None:
    """Debian's ``rabbitmq-server``, or one on PATH."""
    for path in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")):
        if path and os.access(path, os.X_OK):
            return path
    return None


class RabbitMQ(BrokerProcess):
    """A private RabbitMQ node: own name, ports, epmd port, cookie and directories."""

    name = "rabbitmq"
    stop_timeout = 30.0

    def __init__(self, workdir: Path, server: str, probe: Probe) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
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
        self.env = dict(os.environ)
        self.env.update(
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
        super().__init__(workdir, [server], self.env, own_group=True)
        self.wait_ready(probe, 120)
        try:
            self.pid = self._beam_pid()
        except Exception:
            self.stop()
            raise

    def log(self, tail: int | None = 2000) -> str:
        """The end of the node's output and of each of its log files."""
        text = super().log(tail)
        for path in sorted((self.workdir / "log").glob("*.log")):
            log = path.read_text(errors="replace")
            text += f"\n--- {path.name}\n" + (log[-tail:] if tail else log)
        return text

    def _beam_pid(self) -> int:
        """The Erlang VM (``beam.smp``) running this node: what is measured."""

        def is_beam(entry: Path) -> bool:
            cmd = (entry / "cmdline").read_bytes()
            return b"beam.smp" in cmd and b"\0-home\0" + bytes(self.workdir) + b"\0" in cmd

        pids = pids_where(is_beam)
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
        """``rabbitmqctl stop``, then signals to the process group, then its epmd."""
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
        super().stop()
        marker = f"ERL_EPMD_PORT={self.epmd_port}".encode()

        def is_our_epmd(entry: Path) -> bool:
            return b"epmd" in (entry / "cmdline").read_bytes() and marker in (
                entry / "environ"
            ).read_bytes().split(b"\0")

        for pid in pids_where(is_our_epmd):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


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
    stop_timeout = 30.0

    def __init__(self, workdir: Path, java: str, probe: Probe, scheme: str = "stomp") -> None:
        for sub in ("conf", "data", "tmp"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
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
        command = [
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
        ]
        super().__init__(workdir, command)
        self.wait_ready(probe, 90)

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
