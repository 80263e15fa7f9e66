"""
docs/cluster.md's nginx configuration in front of two cluster nodes, run by a
real nginx (only its ports and upstream addresses replaced): the WebSocket
part of the page's ``nginx`` block and its ``stream`` part for STOMP over
TCP each spread connections over both nodes, and messages cross from one
node to the other. The ``stream`` part needs nginx's stream module, which
Debian ships separately (``libnginx-mod-stream``); without it that test
skips.
"""

from __future__ import annotations

import json
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
#: nginx's stream module, where Debian's libnginx-mod-stream installs it.
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx not installed: apt-get install nginx"),
    pytest.mark.skipif(
        REDIS_SERVER is None,
        reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
    ),
]


def documented_parts() -> tuple[str, str]:
    """The http-context part and the ``stream { ... }`` part of docs/cluster.md's nginx block."""
    page = (ROOT / "docs" / "cluster.md").read_text()
    (block,) = re.findall(r"```nginx\n(.*?)```", page, flags=re.DOTALL)
    http, stream = block.split("# In the main context", 1)
    assert "stream {" in stream and "upstream stomptw_ws" in http
    return http, stream[stream.index("stream {") :]


def substitute(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} is not in docs/cluster.md's nginx block exactly once"
    return text.replace(old, new)


def documented_nginx(
    tmp_path: Path, part: str, a_port: int, b_port: int
) -> tuple[subprocess.Popen, int]:
    """
    nginx running docs/cluster.md's ``http`` (WebSocket) or ``stream`` (TCP)
    part in front of two nodes listening on ``a_port`` and ``b_port``; it
    and the port it listens on.
    """
    port = free_port()
    http, stream = documented_parts()
    text, listen, node_port = (
        (http, "listen 80;", "15674") if part == "http" else (stream, "listen 61613;", "61613")
    )
    text = substitute(text, listen, f"listen {LOCALHOST}:{port};")
    text = substitute(text, f"10.0.0.11:{node_port}", f"{LOCALHOST}:{a_port}")
    text = substitute(text, f"10.0.0.12:{node_port}", f"{LOCALHOST}:{b_port}")
    directory = tmp_path / "nginx"
    directory.mkdir()
    if part == "http":
        return start_nginx(directory, port, http=text), port
    return start_nginx(directory, port, stream=text, modules=(STREAM_MODULE,)), port


def start_nginx(
    directory: Path, port: int, http: str = "", stream: str = "", modules: tuple[Path, ...] = ()
) -> subprocess.Popen:
    """
    nginx in the foreground with ``http`` inside its ``http`` block and
    ``stream`` (a whole ``stream { ... }`` block) in its main context, its
    files in ``directory``; returned once it accepts connections on ``port``.
    """
    config = "".join(f"load_module {module};\n" for module in modules)
    config += f"worker_processes 1;\nerror_log {directory}/error.log info;\n"
    config += "events { worker_connections 64; }\n"
    if http:
        temp = "\n".join(
            f"    {kind}_temp_path {directory / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        config += f"http {{\n    access_log {directory}/access.log;\n{temp}\n{http}\n}}\n"
    config += stream
    (directory / "nginx.conf").write_text(config)
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

    try:
        wait_until(listening, "nginx listening", timeout=15)
    except BaseException:
        stop_nginx(proc)
        raise
    return proc


def sessions(node, transport: str) -> int:
    """Connections open on ``node`` over ``transport``, from its ``/metrics``."""
    series = f'stomptw_connections{{transport="{transport}"}} '
    for line in node.admin("/metrics").splitlines():
        if line.startswith(series):
            return int(float(line[len(series) :]))
    raise AssertionError(f"no {series.strip()} in node {node.node_id}'s /metrics")


def session_ids(node) -> set[str]:
    """The session ids of the STOMP sessions open on ``node``, from its admin API."""
    return {c["session_id"] for c in json.loads(node.admin("/api/connections"))}


def test_nginx_spreads_websocket_clients_over_the_nodes(tmp_path):
    cluster = Cluster(tmp_path)
    proc = None
    try:
        redis = cluster.redis()
        a = cluster.start("na", "--cluster", redis.url, ws=True)
        b = cluster.start("nb", "--cluster", redis.url, ws=True)
        joined(a, b)
        proc, port = documented_nginx(tmp_path, "http", a.ws_port, b.ws_port)
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
                lambda: [sessions(a, "ws"), sessions(b, "ws")] == [1, 1],
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


@pytest.mark.skipif(
    not STREAM_MODULE.exists(),
    reason=f"nginx's stream module is not installed ({STREAM_MODULE}): "
    "apt-get install libnginx-mod-stream (.ci/run installs it)",
)
def test_nginx_stream_spreads_tcp_clients_over_the_nodes(cluster, tmp_path):
    _, a, b = cluster.pair()
    proc, port = documented_nginx(tmp_path, "stream", a.port, b.port)
    try:
        with ClientPool() as pool:
            clients = [pool.tcp(port) for _ in range(4)]
            # Round robin: every other connection on each node. (nginx's
            # readiness probe above went to one of them too, and is gone.)
            wait_until(
                lambda: [sessions(a, "tcp"), sessions(b, "tcp")] == [2, 2],
                "two STOMP over TCP sessions on each node",
            )
            by_session = {c.connected_frame.headers["session"]: c for c in clients}
            on = {
                node.node_id: [by_session[s] for s in session_ids(node) & by_session.keys()]
                for node in (a, b)
            }
            assert [len(on["na"]), len(on["nb"])] == [2, 2], on
            # A queue message sent through nginx to node B reaches the
            # subscriber that nginx put on node A.
            queue = "/queue/" + unique("lb")
            on["na"][0].subscribe(queue)
            on["nb"][0].send(queue, "to the other node", receipt=True)
            assert on["na"][0].next_message().body == "to the other node"
            # A topic message published on node A reaches subscribers on both nodes.
            topic = "/topic/" + unique("lb")
            for client in (on["na"][1], on["nb"][1]):
                client.subscribe(topic)
            on["na"][0].send(topic, "to both nodes", receipt=True)
            for client in (on["na"][1], on["nb"][1]):
                assert client.next_message().body == "to both nodes"
                client.assert_no_message()
    finally:
        stop_nginx(proc)
