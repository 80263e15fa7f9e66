"""
Packaging: a plain ``pip install .`` into a fresh virtualenv gives a working
``twistd stomptw``, found through the installed dropin, with TLS listeners
working on the declared dependencies alone.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import websocket
from clients import twisted_test_pem

DEFAULT_PORTS = (61613, 15674)


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ephemeral_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"twistd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"nothing listening on {port}:\n{log.read_text()}")


def client_tls_context() -> ssl.SSLContext:
    """TLS for a client of a test listener, whose certificate is not checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _stomp_roundtrip(port: int, tls: bool = False) -> bytes:
    """CONNECT, SUBSCRIBE, SEND, DISCONNECT; all the broker wrote until it closed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client_tls_context().wrap_socket(raw, suppress_ragged_eofs=False) if tls else raw as s:
        s.sendall(
            b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00"
            b"SUBSCRIBE\nid:0\ndestination:/queue/pkg\n\n\x00"
            b"SEND\ndestination:/queue/pkg\n\npackaged\x00"
            b"DISCONNECT\nreceipt:bye\n\n\x00"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def test_wheel_layout(installed: Path) -> None:
    python = installed / "bin" / "python"
    code = (
        "import twisted, twisted.plugins, stomptw, pathlib;"
        "p = pathlib.Path(twisted.plugins.__path__[0]);"
        "print((p / 'stomptw_plugin.py').is_file());"
        "from twisted.plugin import getPlugins;"
        "from twisted.application.service import IServiceMaker;"
        "print(sorted(m.tapname for m in getPlugins(IServiceMaker) if m.tapname == 'stomptw'))"
    )
    out = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=60, cwd=installed
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["True", "['stomptw']"]
    site = next((installed / "lib").glob("python*/site-packages"))
    # The dropin must not ship package markers that would shadow Twisted.
    record = next(site.glob("stomptw-*.dist-info")) / "RECORD"
    names = [line.split(",")[0] for line in record.read_text().splitlines()]
    assert "twisted/plugins/stomptw_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names


def test_twistd_help_lists_stomptw(installed: Path) -> None:
    out = subprocess.run(
        [str(installed / "bin" / "twistd"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=installed,
    )
    assert out.returncode == 0, out.stderr
    assert "stomptw" in out.stdout
    out = subprocess.run(
        [str(installed / "bin" / "twistd"), "stomptw", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=installed,
    )
    assert "--tcp=" in out.stdout and "--ws=" in out.stdout


@contextmanager
def running_twistd(installed: Path, cwd: Path, ports: tuple[int, int], args: list[str]):
    """
    The installed ``twistd -n stomptw *args``, once it listens on ``ports``
    (STOMP, WebSocket); yields its log file. On exit it is stopped with
    SIGTERM and must have shut down cleanly, without a traceback.
    """
    log = cwd / "twistd.log"
    with open(log, "w") as logfile:
        proc = subprocess.Popen(
            [str(installed / "bin" / "twistd"), "-n", "--pidfile=", "stomptw", *args],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
    try:
        deadline = time.monotonic() + 60
        for port in ports:
            _wait_for_port(port, proc, log, deadline)
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    text = log.read_text()
    # twistd ends a clean SIGTERM shutdown by re-raising the signal.
    assert proc.returncode in (0, -signal.SIGTERM), text
    assert "Server Shut Down." in text
    assert "stomp listening on" in text and "ws listening on" in text
    assert "Traceback" not in text


def assert_stomp_roundtrip(port: int, tls: bool = False) -> None:
    """A message sent on ``port`` comes back to a subscriber; DISCONNECT has its receipt."""
    data = _stomp_roundtrip(port, tls)
    assert data.startswith(b"CONNECTED\n")
    assert b"MESSAGE\n" in data and b"packaged\x00" in data
    assert b"RECEIPT\nreceipt-id:bye\n" in data


def assert_websocket_connects(url: str, **options) -> None:
    """A STOMP 1.2 CONNECT over a WebSocket at ``url`` is answered with CONNECTED."""
    ws = websocket.create_connection(url, subprotocols=["v12.stomp"], timeout=10, **options)
    try:
        assert ws.subprotocol == "v12.stomp"
        ws.send("CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00")
        assert ws.recv().startswith("CONNECTED\n")
    finally:
        ws.close()


def test_twistd_serves_tcp_and_websocket(installed: Path, tmp_path: Path) -> None:
    """Start the installed broker as a user would and talk to it."""
    if all(_free(p) for p in DEFAULT_PORTS):
        # Exactly what a user types: the embedded defaults.
        args: list[str] = []
        tcp_port, ws_port = DEFAULT_PORTS
    else:
        tcp_port, ws_port = ephemeral_port(), ephemeral_port()
        args = [
            f"--tcp=tcp:{tcp_port}:interface=127.0.0.1",
            f"--ws=tcp:{ws_port}:interface=127.0.0.1",
        ]
    with running_twistd(installed, tmp_path, (tcp_port, ws_port), args):
        assert_stomp_roundtrip(tcp_port)
        assert_websocket_connects(f"ws://127.0.0.1:{ws_port}/ws")
        # The example pages ship in the wheel and are served at /.
        for page, marker in (("/", b"chat.html"), ("/stomp.js", b"StompClient")):
            with urllib.request.urlopen(f"http://127.0.0.1:{ws_port}{page}", timeout=10) as r:
                assert r.status == 200 and marker in r.read(), page


# -- TLS with the declared dependencies ----------------------------------------------------


def test_ssl_endpoint_from_the_docs_works_with_the_declared_dependencies(installed, tmp_path):
    """
    README, guide.md and ``twistd stomptw --help`` advertise
    ``--tcp ssl:61614:privateKey=key.pem:certKey=cert.pem``: after the
    documented ``pip install .`` that must work, so setup.cfg has to declare
    what TLS needs (Twisted's ``[tls]`` extra), or an ssl: endpoint fails with
    ``No module named 'OpenSSL'``. Checked where only the declared
    dependencies are installed (the packaging virtualenv: in the test one
    treq brings pyOpenSSL anyway): the installed twistd takes the documented
    ssl: endpoints on both listeners and serves STOMP over TLS and a
    WebSocket over wss.
    """
    pem = twisted_test_pem()
    ports = (ephemeral_port(), ephemeral_port())
    tcp, ws = (f"ssl:{port}:interface=127.0.0.1:privateKey={pem}:certKey={pem}" for port in ports)
    with running_twistd(installed, tmp_path, ports, [f"--tcp={tcp}", f"--ws={ws}"]):
        assert_stomp_roundtrip(ports[0], tls=True)
        assert_websocket_connects(
            f"wss://127.0.0.1:{ports[1]}/ws",
            sslopt={"cert_reqs": ssl.CERT_NONE, "check_hostname": False},
        )
