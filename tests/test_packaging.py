"""
Packaging: a plain ``pip install .`` into a fresh virtualenv gives a working
``twistd stomptw``, found through the installed dropin.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import venv
from pathlib import Path

import pytest
import websocket

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORTS = (61613, 15674)


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_port() -> int:
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


def _stomp_roundtrip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
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


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with the project installed by a plain ``pip install``."""
    tmp = tmp_path_factory.mktemp("pkg")
    source = tmp / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis"
        ),
    )
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    result = subprocess.run(
        [str(pip), "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return env_dir


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


def test_twistd_serves_tcp_and_websocket(installed: Path, tmp_path: Path) -> None:
    """Start the installed broker as a user would and talk to it."""
    if all(_free(p) for p in DEFAULT_PORTS):
        # Exactly what a user types: the embedded defaults.
        args: list[str] = []
        tcp_port, ws_port = DEFAULT_PORTS
    else:
        tcp_port, ws_port = _ephemeral_port(), _ephemeral_port()
        args = [
            f"--tcp=tcp:{tcp_port}:interface=127.0.0.1",
            f"--ws=tcp:{ws_port}:interface=127.0.0.1",
        ]
    log = tmp_path / "twistd.log"
    with open(log, "w") as logfile:
        proc = subprocess.Popen(
            [str(installed / "bin" / "twistd"), "-n", "--pidfile=", "stomptw", *args],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
    try:
        deadline = time.monotonic() + 60
        _wait_for_port(tcp_port, proc, log, deadline)
        _wait_for_port(ws_port, proc, log, deadline)
        data = _stomp_roundtrip(tcp_port)
        assert data.startswith(b"CONNECTED\n")
        assert b"MESSAGE\n" in data and b"packaged\x00" in data
        assert b"RECEIPT\nreceipt-id:bye\n" in data
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{ws_port}/ws", subprotocols=["v12.stomp"], timeout=10
        )
        try:
            assert ws.subprotocol == "v12.stomp"
            ws.send("CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00")
            assert ws.recv().startswith("CONNECTED\n")
        finally:
            ws.close()
        # The example pages ship in the wheel and are served at /.
        for page, marker in (("/", b"chat.html"), ("/stomp.js", b"StompClient")):
            with urllib.request.urlopen(f"http://127.0.0.1:{ws_port}{page}", timeout=10) as r:
                assert r.status == 200 and marker in r.read(), page
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
