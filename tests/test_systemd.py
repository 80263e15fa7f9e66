"""
systemd integration: sd_notify readiness, watchdog and status, and sockets
inherited through socket activation (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from stomptw.systemd import Notifier, SystemdNotifications, watchdog_interval

REPO = Path(__file__).resolve().parents[1]
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Listener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.address = path

    def receive(self, timeout: float) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode("utf-8")
        return dict(line.split("=", 1) for line in data.splitlines())

    def receive_until(self, key: str, timeout: float) -> list[dict[str, str]]:
        """Messages up to and including the first one with ``key``."""
        deadline = time.monotonic() + timeout
        messages = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} within {timeout}s; got {messages}")
            message = self.receive(left)
            messages.append(message)
            if key in message:
                return messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    path = tmp_path / "notify"
    result = Listener(str(path))
    yield result
    result.close()


# -- units --------------------------------------------------------------------------


def test_notifier_without_notify_socket_does_nothing():
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.notify(ready="1") is False


def test_notifier_sends_name_value_lines(listener):
    notifier = Notifier({"NOTIFY_SOCKET": listener.address})
    assert notifier.notify(ready="1", status="2 connection(s)")
    assert listener.receive(1) == {"READY": "1", "STATUS": "2 connection(s)"}


def test_notifier_reaches_an_abstract_socket():
    name = f"stomptw-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(1)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify(watchdog="1")
        assert sock.recv(100) == b"WATCHDOG=1"


def test_notifier_survives_a_missing_socket(tmp_path):
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "absent")}).notify(ready="1") is False


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({}, 0.0),
        ({"WATCHDOG_USEC": "0"}, 0.0),
        ({"WATCHDOG_USEC": "junk"}, 0.0),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, 0.0),
    ],
)
def test_watchdog_interval_is_half_of_what_systemd_asks(environ, interval):
    assert watchdog_interval(environ) == interval


def test_ready_then_watchdog_from_the_reactor_then_stopping(listener):
    clock = Clock()
    counts = iter(range(100))
    notifications = SystemdNotifications(
        lambda: f"tick {next(counts)}",
        clock,
        Notifier({"NOTIFY_SOCKET": listener.address}),
        interval=5.0,
    )
    notifications.ready()
    assert listener.receive(1) == {"READY": "1", "STATUS": "tick 0"}
    clock.advance(4.9)
    with pytest.raises(socket.timeout):
        listener.receive(0.05)
    clock.advance(0.1)
    assert listener.receive(1) == {"WATCHDOG": "1", "STATUS": "tick 1"}
    clock.advance(5)
    assert listener.receive(1)["WATCHDOG"] == "1"
    notifications.stopping()
    assert listener.receive(1) == {"STOPPING": "1", "STATUS": "stopping"}
    clock.advance(20)
    with pytest.raises(socket.timeout):
        listener.receive(0.05)


def test_no_watchdog_without_notify_socket():
    clock = Clock()
    notifications = SystemdNotifications(lambda: "", clock, Notifier({}), interval=1.0)
    notifications.ready()
    assert clock.getDelayedCalls() == []
    notifications.stopping()


# -- socket activation, end to end ----------------------------------------------------


def _bound_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@pytest.fixture(params=["systemd-socket-activate", "python"])
def launcher(request) -> str:
    """Debian's socket activation launcher, and one written here."""
    if request.param != "python" and shutil.which(request.param) is None:
        pytest.skip(f"{request.param} is not installed (Debian: apt install systemd)")
    return request.param


def _launch(
    args: list[str], env: dict[str, str], log, launcher: str
) -> tuple[subprocess.Popen, int, int]:
    """
    Start ``args`` with two listening sockets passed the way systemd passes
    them (fds 3 and 4, named stomp and ws); return the process and ports.
    """
    stomp, ws = _bound_socket(), _bound_socket()
    ports = stomp.getsockname()[1], ws.getsockname()[1]
    activate = shutil.which(launcher) if launcher != "python" else None
    if activate is not None:
        # Debian's launcher: it binds the sockets itself and execs the broker
        # when the first connection arrives (as systemd does without
        # --now, which Debian 12's version lacks); _trigger makes one.
        stomp.close()
        ws.close()
        command = [
            activate,
            f"--listen=127.0.0.1:{ports[0]}",
            f"--listen=127.0.0.1:{ports[1]}",
            "--fdname=stomp:ws",
            # It passes on only the variables it is told about.
            *(
                f"--setenv={name}"
                for name in ("NOTIFY_SOCKET", "PYTHONPATH", "WATCHDOG_USEC")
                if name in env
            ),
            *args,
        ]
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        return proc, *ports

    # An equivalent launcher: the sockets on fds 3 and 4, and LISTEN_PID set
    # by a shell that then execs the broker (the pid is known only then).
    def child() -> None:
        os.dup2(stomp.fileno(), 3)
        os.dup2(ws.fileno(), 4)

    proc = subprocess.Popen(
        ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", *args],
        env={**env, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "stomp:ws"},
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=child,
        # 3 and 4 too: the fds closed in the child are closed after child().
        pass_fds=(3, 4, stomp.fileno(), ws.fileno()),
    )
    stomp.close()
    ws.close()
    return proc, *ports


def _trigger(port: int) -> socket.socket:
    """
    A first connection: it starts a broker waiting for socket activation,
    waits in the listening socket's backlog meanwhile, and is served once
    the broker runs (no connection is refused during the start).
    """
    deadline = time.monotonic() + 10
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except ConnectionRefusedError:
            # The launcher has not bound its sockets yet.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stomp_roundtrip(sock: socket.socket) -> bytes:
    with sock:
        sock.sendall(
            b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00"
            b"SUBSCRIBE\nid:1\ndestination:/queue/activated\n\n\x00"
            b"SEND\ndestination:/queue/activated\n\nthrough systemd\x00"
        )
        data = b""
        while b"through systemd\x00" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def _start_activated(tmp_path, listener, launcher, *options: str):
    """The broker, as the units run it, on sockets passed by ``launcher``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["NOTIFY_SOCKET"] = listener.address
    env["WATCHDOG_USEC"] = "400000"
    args = [
        TWISTD,
        "--nodaemon",
        "--pidfile=",
        "stomptw",
        # What stomptw.service reads: the listeners on the inherited sockets.
        "--config",
        str(REPO / "contrib" / "systemd" / "stomptw.toml"),
        *options,
    ]
    log_path = tmp_path / "broker.log"
    with open(log_path, "wb") as log:
        return (*_launch(args, env, log, launcher), log_path)


def test_socket_activated_broker_notifies_systemd(tmp_path, listener, launcher):
    proc, stomp_port, ws_port, log_path = _start_activated(
        tmp_path, listener, launcher, "--data-dir", str(tmp_path / "data")
    )
    try:
        first = _trigger(stomp_port)
        first.sendall(b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00")
        messages = listener.receive_until("READY", timeout=30)
        # READY comes once the broker serves on the inherited sockets.
        assert "connection(s)" in messages[-1]["STATUS"]
        with first:
            assert first.recv(100).startswith(b"CONNECTED\n")
        data = _stomp_roundtrip(_trigger(stomp_port))
        assert b"MESSAGE\n" in data and data.endswith(b"through systemd\x00"), data
        with socket.create_connection(("127.0.0.1", ws_port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        log_text = log_path.read_text(errors="replace")
        assert "stomptw ready" in log_text, log_text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log_text = log_path.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text


def test_watchdog_keeps_coming_while_the_reactor_runs(tmp_path, listener, launcher):
    proc, stomp_port, _, _ = _start_activated(tmp_path, listener, launcher, "--store", "memory")
    try:
        with _trigger(stomp_port):
            listener.receive_until("READY", timeout=30)
        started = time.monotonic()
        beats = 0
        while beats < 3:
            message = listener.receive(5)
            if message.get("WATCHDOG") == "1":
                beats += 1
        # Every 0.2 s (half of 0.4 s): three within a couple of seconds.
        assert time.monotonic() - started < 3
        proc.send_signal(signal.SIGTERM)
        stopping = listener.receive_until("STOPPING", timeout=15)
        assert stopping[-1]["STOPPING"] == "1"
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
