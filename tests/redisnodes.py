"""
What the cluster tests (tests/test_cluster_redis.py) start: a ``redis-server``
of their own on a free loopback port in a temporary directory
(:class:`RedisServer`), and ``twistd -n stomptw --cluster ...`` nodes as real
processes (:class:`Node`, on :class:`~test_durability.BrokerRunner`), with
the admin API on, so that a test waits until a node says it joined
(``GET /api/cluster``) rather than for a while.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import urllib.request
from pathlib import Path

from clients import LOCALHOST, wait_until
from test_durability import ROOT, TWISTD, BrokerProcess, BrokerRunner, free_port

__all__ = [
    "REDIS_SERVER",
    "Cluster",
    "Node",
    "RedisServer",
    "joined",
    "metric",
    "refused",
]

#: The redis-server program; None when it is not installed.
REDIS_SERVER = shutil.which("redis-server")
#: The redis-cli program (Debian's redis-tools, which redis-server depends on).
REDIS_CLI = shutil.which("redis-cli")
#: Bound on waiting for a node to join, leave or rejoin the cluster.
CLUSTER_DEADLINE = 20.0


class RedisServer:
    """
    A ``redis-server`` of the test's own, which it can kill and start again;
    with ``tls`` (a certificate and its key), on a TLS port only.
    """

    def __init__(self, directory: Path, *extra: str, tls: tuple[Path, Path] | None = None) -> None:
        self.port = free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        """The answer of ``redis-cli`` to one command (plain TCP only)."""
        command = [REDIS_CLI, "-h", LOCALHOST, "-p", str(self.port), *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=10, check=True
        ).stdout

    def start(self) -> None:
        ports = ["--port", str(self.port)]
        if self.tls:
            cert, key = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            ports += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            ports += ["--tls-ca-cert-file", str(cert)]
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                [REDIS_SERVER, *ports, "--bind", LOCALHOST, "--save", ""]
                + ["--appendonly", "no", "--dir", str(self.directory), *self.extra],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._answers, f"redis-server on port {self.port}", timeout=10)

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"redis-server exited: {(self.directory / 'redis.log').read_text()[-2000:]}"
            )
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=1) as s:
                if self.tls:
                    context = ssl.create_default_context(cafile=str(self.tls[0]))
                    with context.wrap_socket(s, server_hostname=LOCALHOST) as wrapped:
                        wrapped.sendall(b"PING\r\n")
                        return wrapped.recv(64).startswith(b"+PONG")
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    close = kill


class Node(BrokerProcess):
    """A ``twistd -n stomptw`` cluster node: STOMP over TCP, the admin API, perhaps WebSocket."""

    def __init__(
        self, runner: BrokerRunner, node_id: str, args: list[str], ws: bool = False
    ) -> None:
        self.runner = runner
        self.node_id = node_id
        self.port = free_port()
        self.admin_port = free_port()
        self.ws_port = free_port() if ws else None
        self.log_path = runner.tmp_path / f"node-{node_id}.log"
        self._log = open(self.log_path, "wb")  # closed by close()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        listeners = ["--tcp", f"tcp:{self.port}:interface={LOCALHOST}"]
        listeners += ["--admin", f"tcp:{self.admin_port}:interface={LOCALHOST}"]
        if ws:
            listeners += ["--ws", f"tcp:{self.ws_port}:interface={LOCALHOST}"]
        else:
            listeners += ["--no-ws"]
        command = [TWISTD, "-n", "--pidfile=", "stomptw", *listeners, "--node-id", node_id]
        command += ["--store", "memory", *args]
        self.proc = subprocess.Popen(
            command, cwd=runner.tmp_path, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        runner.procs.append(self)

    def admin(self, path: str) -> str:
        url = f"http://{LOCALHOST}:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def cluster(self) -> dict:
        return json.loads(self.admin("/api/cluster"))

    def wait_cluster(self, connected: bool = True) -> None:
        """Until the node says it is (or is not) joined to the cluster."""

        def reached() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.node_id} exited\n{self.runner.logs()}")
            try:
                return self.cluster()["connected"] is connected
            except OSError:
                return False

        wait_until(reached, f"node {self.node_id} connected={connected}", CLUSTER_DEADLINE)

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class Cluster:
    """
    The Redis servers and nodes of one test: ``redis(*args)`` starts a
    server, ``start(node_id, *args, ws=False)`` a node; :meth:`close` kills
    them all.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.runner = BrokerRunner(tmp_path)
        self.servers: list[RedisServer] = []

    def redis(self, *extra: str, tls: tuple[Path, Path] | None = None) -> RedisServer:
        server = RedisServer(self.tmp_path / f"redis-{len(self.servers) + 1}", *extra, tls=tls)
        self.servers.append(server)
        return server

    def start(self, node_id: str, *args: str, ws: bool = False) -> Node:
        return Node(self.runner, node_id, list(args), ws)

    def pair(
        self, *args: str, ws: bool = False, redis: tuple[str, ...] = ()
    ) -> tuple[RedisServer, Node, Node]:
        """
        A Redis (started with ``redis``) and two nodes on it, ``na`` and ``nb``
        (with more node ``args``, and WebSocket on ``nb`` if ``ws``), joined.
        """
        server = self.redis(*redis)
        a = self.start("na", "--cluster", server.url, *args)
        b = self.start("nb", "--cluster", server.url, *args, ws=ws)
        joined(a, b)
        return server, a, b

    def logs(self) -> str:
        return self.runner.logs()

    def close(self) -> None:
        self.runner.close()
        for server in self.servers:
            server.close()


def joined(*nodes: Node) -> None:
    """Wait until every node listens and says it joined the cluster."""
    for node in nodes:
        node.wait_listening()
    for node in nodes:
        node.wait_cluster(True)


def metric(node: Node, name: str) -> float:
    """The value of ``name`` (its first series) in ``node``'s ``/metrics``."""
    for line in node.admin("/metrics").splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in node {node.node_id}'s /metrics")


def refused(cwd: Path, *args: str) -> subprocess.Popen:
    """A node started with ``args`` that is expected to refuse to start; its output is text."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "stomptw", "--tcp", "tcp:0:interface=127.0.0.1"]
        + ["--no-ws", "--store", "memory", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
