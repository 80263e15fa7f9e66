"""
docs/cluster.md's nginx configuration in front of two cluster nodes: the
WebSocket part of the page's ``nginx`` block, run by a real nginx (only its
ports and upstream addresses replaced), spreads connections over both
nodes, and a topic message crosses from one to the other. (The ``stream``
part for STOMP over TCP needs nginx's stream module, which Debian ships
separately; it is not run here.)
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from clients import LOCALHOST, ClientPool, unique, wait_until
from redisnodes import REDIS_SERVER, Cluster, joined
from test_durability import free_port
from test_nginx import stop_nginx

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx not installed: apt-get install nginx"),
    pytest.mark.skipif(
        REDIS_SERVER is None,
        reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
    ),
]


def documented_http_part() -> str:
    """The http-context part of docs/cluster.md's nginx block."""
    page = (ROOT / "docs" / "cluster.md").read_text()
    (block,) = re.findall(r"```nginx\n(.*?)```", page, flags=re.DOTALL)
    http, stream = block.split("# In the main context", 1)
    assert "stream {" in stream and "upstream stomptw_ws" in http
    return http


def start_nginx(directory: Path, site: str) -> tuple[subprocess.Popen, int]:
    """nginx in the foreground serving ``site`` on a free port, its files in ``directory``."""
    port = free_port()
    site = site.replace("listen 80;", f"listen {LOCALHOST}:{port};")
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (directory / "nginx.conf").write_text(
        f"worker_processes 1;\nerror_log {directory}/error.log info;\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\n    access_log {directory}/access.log;\n{temp}\n{site}\n}}\n"
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(directory), "-e", str(directory / "error.log")]
        + ["-c", str(directory / "nginx.conf"), "-g", f"daemon off; pid {directory}/nginx.pid;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError((directory / "error.log").read_text(errors="replace"))
        try:
            socket.create_connection((LOCALHOST, port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(listening, "nginx listening", timeout=15)
    return proc, port


def ws_sessions(node) -> int:
    """WebSocket sessions open on ``node``, from its ``/metrics``."""
    series = 'stomptw_connections{transport="ws"} '
    for line in node.admin("/metrics").splitlines():
        if line.startswith(series):
            return int(float(line[len(series) :]))
    raise AssertionError(f"no {series.strip()} in node {node.node_id}'s /metrics")


def test_nginx_spreads_websocket_clients_over_the_nodes(tmp_path):
    cluster = Cluster(tmp_path)
    proc = None
    try:
        redis = cluster.redis()
        a = cluster.start("na", "--cluster", redis.url, ws=True)
        b = cluster.start("nb", "--cluster", redis.url, ws=True)
        joined(a, b)
        site = documented_http_part()
        site = site.replace("10.0.0.11:15674", f"{LOCALHOST}:{a.ws_port}")
        site = site.replace("10.0.0.12:15674", f"{LOCALHOST}:{b.ws_port}")
        directory = tmp_path / "nginx"
        directory.mkdir()
        proc, port = start_nginx(directory, site)
        topic = "/topic/" + unique("lb")
        url = f"ws://{LOCALHOST}:{port}/ws"
        with ClientPool() as pool:
            subscriber = pool.websocket(url, ["v12.stomp"])
            subscriber.connect()
            subscriber.send_frame("SUBSCRIBE", {"destination": topic, "id": "1", "receipt": "r"})
            assert subscriber.recv_frame()[1].command == "RECEIPT"
            publisher = pool.websocket(url, ["v12.stomp"])
            publisher.connect()
            # Round robin: one connection on each node.
            wait_until(
                lambda: [ws_sessions(a), ws_sessions(b)] == [1, 1],
                "one WebSocket session on each node",
            )
            publisher.send_frame("SEND", {"destination": topic, "receipt": "s"}, b"across")
            assert publisher.recv_frame()[1].command == "RECEIPT"
            _, message = subscriber.recv_frame()
            assert message.command == "MESSAGE" and message.body == b"across"
    finally:
        if proc is not None:
            stop_nginx(proc)
        cluster.close()
