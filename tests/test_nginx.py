"""
contrib/nginx/stomptw.conf against a real nginx: STOMP over WebSocket through
the proxy (subprotocol, heart-beats both ways, messages), the broker's origin check
still working behind it, and read timeouts longer than the heart-beats.

The committed file itself is included by a minimal nginx.conf; only its
listen port and upstream port are substituted.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import pytest_twisted
import websocket
from twisted.internet.threads import deferToThread

from stomptw.config import BrokerConfig

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "contrib" / "nginx" / "stomptw.conf"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed: apt-get install nginx")

UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _directive(text: str, name: str) -> str:
    found = re.findall(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE)
    assert len(found) == 1, (name, found)
    return found[0].strip()


def _seconds(value: str) -> float:
    """An nginx time value (``3600s``, ``60m``, ``1h30m``, ``90``) in seconds."""
    parts = re.findall(r"(\d+)(ms|[smhd]?)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", ""), value
    return sum(int(n) / 1000 if u == "ms" else int(n) * UNITS[u] for n, u in parts)


def _substitute(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} is not in {CONF} exactly once"
    return text.replace(old, new)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_nginx(tmp: Path, ws_port: int) -> tuple[subprocess.Popen, int]:
    """nginx in the foreground, every file it writes in ``tmp``."""
    port = _free_port()
    site = CONF.read_text()
    site = _substitute(site, "listen 80;", f"listen 127.0.0.1:{port};")
    site = _substitute(site, "http://127.0.0.1:15674;", f"http://127.0.0.1:{ws_port};")
    (tmp / "stomptw.conf").write_text(site)
    temp = "\n".join(
        f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    (tmp / "nginx.conf").write_text(
        f"""
worker_processes 1;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
{temp}
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/stomptw.conf;
}}
"""
    )
    proc = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(tmp),
            "-e",
            str(tmp / "error.log"),
            "-c",
            str(tmp / "nginx.conf"),
            "-g",
            f"daemon off; pid {tmp}/nginx.pid;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                log = (tmp / "error.log").read_text(errors="replace")
                raise AssertionError(f"nginx did not start:\n{log}") from None
            time.sleep(0.05)


@pytest.fixture
def nginx_dir(tmp_path):
    tmp = tmp_path / "nginx"
    tmp.mkdir()
    return tmp


@pytest.fixture
def proxy(nginx_dir):
    """``start(ws_port)`` runs nginx in front of a broker; stopped after the test."""
    procs = []

    def start(ws_port: int) -> int:
        proc, port = _start_nginx(nginx_dir, ws_port)
        procs.append(proc)
        return port

    yield start
    for proc in procs:
        stop_nginx(proc)


def stop_nginx(proc: subprocess.Popen) -> None:
    """A graceful stop (SIGQUIT), then SIGKILL if nginx is still there after 10 s."""
    proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _frame(ws: websocket.WebSocket) -> tuple[str, dict[str, str], str]:
    """The next STOMP frame (heart-beats skipped)."""
    while True:
        data = ws.recv()
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        if data.strip("\r\n"):
            break
    head, _, body = data.lstrip("\r\n").partition("\n\n")
    command, *lines = head.split("\n")
    headers = dict(line.split(":", 1) for line in lines)
    assert body.endswith("\x00"), data
    return command, headers, body[:-1]


def test_read_timeouts_are_longer_than_heartbeats():
    text = CONF.read_text()
    config = BrokerConfig()
    heartbeat = max(config.heartbeat_send_ms, config.heartbeat_receive_ms) / 1000
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        timeout = _seconds(_directive(text, name))
        # Longer than the broker's interval and than what clients commonly ask.
        assert timeout > heartbeat * config.heartbeat_grace
        assert timeout >= 300, (name, timeout)
    assert _seconds("1h30m") == 5400 and _seconds("500ms") == 0.5


def test_config_passes_websocket_upgrade_and_origin():
    text = CONF.read_text()
    assert _directive(text, "proxy_http_version") == "1.1"
    headers = dict(
        line.split(None, 1)
        for line in re.findall(r"^\s*proxy_set_header\s+([^;]+);", text, re.MULTILINE)
    )
    assert headers["Upgrade"] == "$http_upgrade"
    assert headers["Connection"] == "$connection_upgrade"
    assert "map $http_upgrade $connection_upgrade" in text
    # Origin is never overridden or cleared: it reaches the broker as sent.
    assert "Origin" not in headers


@pytest_twisted.ensureDeferred
async def test_stomp_over_websocket_through_nginx(make_broker, proxy):
    running = await make_broker()
    port = await deferToThread(proxy, running.ws_port)
    url = f"ws://127.0.0.1:{port}{running.ws_path}"
    read_timeout = _seconds(_directive(CONF.read_text(), "proxy_read_timeout"))

    def scenario():
        ws = websocket.create_connection(
            url, subprotocols=["v10.stomp", "v11.stomp", "v12.stomp"], timeout=10
        )
        try:
            assert ws.subprotocol == "v12.stomp"
            # The handshake answer came from nginx, not straight from the broker.
            assert ws.getheaders()["server"].startswith("nginx")
            ws.send("CONNECT\naccept-version:1.1,1.2\nhost:/\nheart-beat:10000,10000\n\n\x00")
            command, headers, _ = _frame(ws)
            assert command == "CONNECTED" and headers["version"] == "1.2", headers
            send_ms, receive_ms = (int(v) for v in headers["heart-beat"].split(","))
            assert (send_ms, receive_ms) == (10000, 10000)
            # Beats in either direction come well before nginx's timeout (that
            # they pass nginx at all: test_heart_beats_flow_through_nginx_both_ways).
            assert max(send_ms, receive_ms) / 1000 < read_timeout
            ws.send("SUBSCRIBE\nid:s1\ndestination:/queue/nginx\nreceipt:sub\n\n\x00")
            assert _frame(ws)[:2] == ("RECEIPT", {"receipt-id": "sub"})
            ws.send("SEND\ndestination:/queue/nginx\ncontent-type:text/plain\n\nvia nginx\x00")
            command, headers, body = _frame(ws)
            assert (command, headers["destination"], body) == (
                "MESSAGE",
                "/queue/nginx",
                "via nginx",
            )
            ws.send("DISCONNECT\nreceipt:bye\n\n\x00")
            assert _frame(ws)[:2] == ("RECEIPT", {"receipt-id": "bye"})
        finally:
            ws.close()

    await deferToThread(scenario)
    assert running.broker.stats["delivered"] >= 1


#: The heart-beat interval of the broker in the beat-flow test, in ms.
BEAT_MS = 500


def _beats(ws: websocket.WebSocket) -> int:
    """The next message, which must be heart-beats only: how many EOLs."""
    data = ws.recv()
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    if not data or data.strip("\r\n"):
        pytest.fail(f"not a heart-beat: {data[:200]!r}")
    return data.count("\n")


@pytest_twisted.ensureDeferred
async def test_heart_beats_flow_through_nginx_both_ways(make_broker, proxy):
    """
    Heart-beats really pass the proxy, not just the numbers in CONNECTED: a
    client that sends nothing receives the broker's beats through nginx, on
    average at least one per promised interval; a client whose only traffic
    is beats (one sent back for each received) is not timed out by the
    broker over twice its receive timeout, and once it stops, the broker's
    "heart-beat timeout" ERROR arrives through nginx after that timeout.
    """
    running = await make_broker(heartbeat_send_ms=BEAT_MS, heartbeat_receive_ms=BEAT_MS)
    port = await deferToThread(proxy, running.ws_port)
    url = f"ws://127.0.0.1:{port}{running.ws_path}"
    interval = BEAT_MS / 1000
    receive_timeout = interval * BrokerConfig().heartbeat_grace

    def connect(heart_beat: str) -> websocket.WebSocket:
        ws = websocket.create_connection(url, subprotocols=["v12.stomp"], timeout=10)
        assert ws.getheaders()["server"].startswith("nginx")
        ws.send(f"CONNECT\naccept-version:1.2\nhost:/\nheart-beat:{heart_beat}\n\n\x00")
        return ws

    def broker_to_client() -> None:
        ws = connect(f"0,{BEAT_MS}")
        try:
            command, headers, _ = _frame(ws)
            assert (command, headers["heart-beat"]) == ("CONNECTED", f"{BEAT_MS},0"), headers
            start = time.monotonic()
            # A generous bound on each gap; the average is checked below.
            ws.settimeout(2 * interval)
            beats = 0
            while beats < 6:
                beats += _beats(ws)
            elapsed = time.monotonic() - start
            assert elapsed <= beats * interval, f"{beats} beats took {elapsed:.2f}s"
        finally:
            ws.close()

    def client_to_broker() -> None:
        ws = connect(f"{BEAT_MS},{BEAT_MS}")
        try:
            command, headers, _ = _frame(ws)
            assert (command, headers["heart-beat"]) == ("CONNECTED", f"{BEAT_MS},{BEAT_MS}")
            ws.settimeout(2 * interval)
            start = time.monotonic()
            # Paced by the broker's beats: nothing but beats goes either way.
            while time.monotonic() - start < 2 * receive_timeout:
                _beats(ws)
                ws.send("\n")
            ws.settimeout(10)
            ws.send("SEND\ndestination:/queue/nginx.beats\nreceipt:alive\n\nstill here\x00")
            assert _frame(ws)[:2] == ("RECEIPT", {"receipt-id": "alive"})
            silent_since = time.monotonic()
            command, headers, _ = _frame(ws)
            waited = time.monotonic() - silent_since
            assert (command, headers["message"]) == ("ERROR", "heart-beat timeout"), headers
            assert waited >= receive_timeout - 0.01, waited
        finally:
            ws.close()

    await deferToThread(broker_to_client)
    await deferToThread(client_to_broker)


@pytest_twisted.ensureDeferred
async def test_origin_check_works_through_nginx(make_broker, proxy):
    running = await make_broker()
    port = await deferToThread(proxy, running.ws_port)
    url = f"ws://127.0.0.1:{port}{running.ws_path}"

    def scenario():
        # A page from another site: the broker refuses it, through nginx.
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(
                url, subprotocols=["v12.stomp"], origin="https://evil.example", timeout=10
            )
        assert refused.value.status_code == 403
        # A page served by the proxied site itself (same host and port as the
        # Host header the browser sends to nginx) is allowed.
        host = f"stomp.example.com:{port}"
        ws = websocket.create_connection(
            url, subprotocols=["v12.stomp"], origin=f"https://{host}", host=host, timeout=10
        )
        try:
            assert ws.subprotocol == "v12.stomp"
            ws.send("CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\x00")
            assert _frame(ws)[0] == "CONNECTED"
        finally:
            ws.close()
        # ... but not one from the same host name on another port.
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(
                url,
                subprotocols=["v12.stomp"],
                origin="https://stomp.example.com:4443",
                host=host,
                timeout=10,
            )
        assert refused.value.status_code == 403

    await deferToThread(scenario)


def test_operations_guide_shows_the_committed_file():
    guide = (REPO / "docs" / "operations.md").read_text()
    block = re.search(r"## Behind nginx\n.*?```nginx\n(.*?)```", guide, re.DOTALL)
    assert block is not None
    assert block.group(1) == CONF.read_text()
