"""
Structured logs: a broker run under ``twistd`` with the JSON observer of
:mod:`stomptw.logging` (and under ``twist --log-format=json``) writes one JSON
object per event, the connection events carry their fields as keys, and no
passcode or message body ever reaches the log.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = os.path.dirname(sys.executable)
PASSCODE = "s3cret-PASSCODE-value"
BODY = "BODY-SECRET-123"


def _read_frame(sock: socket.socket, buffer: bytearray) -> bytes:
    """The next frame (heart-beat newlines skipped), read with a deadline."""
    deadline = time.monotonic() + 10
    while True:
        while buffer[:1] in (b"\n", b"\r"):
            del buffer[:1]
        end = buffer.find(b"\x00")
        if end >= 0:
            frame = bytes(buffer[:end])
            del buffer[: end + 1]
            return frame
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no frame within 10 s; have {bytes(buffer)!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed; have {bytes(buffer)!r}")
        buffer += chunk


def _connect(port: int) -> tuple[socket.socket, bytearray, str]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    buffer = bytearray()
    sock.sendall(
        f"CONNECT\naccept-version:1.2\nhost:/\nlogin:alice\npasscode:{PASSCODE}\n"
        "heart-beat:0,0\n\n\x00".encode()
    )
    frame = _read_frame(sock, buffer)
    assert frame.startswith(b"CONNECTED\n"), frame
    host, port = sock.getsockname()[:2]
    return sock, buffer, f"{host}:{port}"


def _session(port: int) -> dict[str, str]:
    """
    Two sessions: one sends a message and disconnects cleanly, one breaks
    the protocol with a header line that shows the passcode (the ERROR
    frame quotes it back; the log must not). Returns the peers.
    """
    sock, buffer, clean = _connect(port)
    with sock:
        sock.sendall(
            f"SEND\ndestination:/queue/logged\nreceipt:r1\n\n{BODY}\x00"
            "DISCONNECT\nreceipt:bye\n\n\x00".encode()
        )
        assert _read_frame(sock, buffer).startswith(b"RECEIPT\nreceipt-id:r1")
        assert _read_frame(sock, buffer).startswith(b"RECEIPT\nreceipt-id:bye")
    sock, buffer, broken = _connect(port)
    with sock:
        sock.sendall(f"SEND\ndestination:/queue/logged\npasscode {PASSCODE}\n\nx\x00".encode())
        error = _read_frame(sock, buffer)
        assert error.startswith(b"ERROR\n"), error
        # The client is told what was wrong, with its own line quoted.
        assert PASSCODE.encode() in error
        sock.settimeout(10)
        while sock.recv(65536):
            pass
    return {"clean": clean, "broken": broken}


def _wait_for_port(output: Path, proc: subprocess.Popen, parse) -> int:
    """The STOMP port, from the broker's "listening on" event."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for event in parse(output.read_text(errors="replace"), complete=False):
            if event.get("kind") == "stomp" and "address" in event:
                return int(event["address"].rsplit(":", 1)[1])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"broker did not listen; output: {output.read_text(errors='replace')}")


def _run(tmp_path: Path, command: list[str], parse) -> tuple[str, list[dict], dict[str, str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    output, errors = tmp_path / "stdout", tmp_path / "stderr"
    args = [*command, "--tcp", "tcp:0:interface=127.0.0.1", "--no-ws", "--store", "memory"]
    with open(output, "wb") as out, open(errors, "wb") as err:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=err)
    try:
        port = _wait_for_port(output, proc, parse)
        peers = _session(port)
        proc.send_signal(signal.SIGTERM)
        # twistd and twist stop, then exit by the same signal.
        assert proc.wait(timeout=15) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.read_text()
    assert errors.read_text() == ""
    return text, parse(text, complete=True), peers


def _json_lines(text: str, complete: bool) -> list[dict]:
    lines = text.splitlines()
    if not complete and lines and not text.endswith("\n"):
        lines.pop()
    # Every line is a whole JSON object.
    return [json.loads(line) for line in lines]


def _json_seq(text: str, complete: bool) -> list[dict]:
    """RFC 7464 JSON text sequences, as ``twist --log-format=json`` writes."""
    records = text.split("\x1e")
    assert records[0] == ""
    records = records[1:]
    if not complete and records and not records[-1].endswith("\n"):
        records.pop()
    return [json.loads(record) for record in records]


def _find(events: list[dict], start: str, peer: str) -> dict:
    found = [
        e for e in events if e.get("log_format", "").startswith(start) and e.get("peer") == peer
    ]
    assert len(found) == 1, (start, peer, found)
    return found[0]


def _assert_no_secrets(text: str) -> None:
    assert PASSCODE not in text
    assert BODY not in text
    assert "alice" not in text


def test_twistd_json_observer_logs_structured_connection_events(tmp_path):
    text, events, peers = _run(
        tmp_path,
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logger=stomptw.logging.json_observer"]
        + ["stomptw", "--log-level", "debug"],
        _json_lines,
    )
    _assert_no_secrets(text)
    assert all("log_format" in e and "log_time" in e for e in events)
    clean, broken = peers["clean"], peers["broken"]

    opened = _find(events, "connection opened", clean)
    assert (opened["transport"], opened["log_level"]["name"]) == ("tcp", "debug")
    established = _find(events, "session ", clean)
    assert established["transport"] == "tcp"
    assert established["version"] == "1.2"
    session = established["session"]
    assert session
    closed = _find(events, "connection closed", clean)
    assert closed["session"] == session
    assert closed["transport"] == "tcp"
    assert closed["reason"] == "client sent DISCONNECT"
    assert isinstance(closed["duration"], float) and 0 <= closed["duration"] < 30
    assert closed["log_level"]["name"] == "info"

    _find(events, "connection opened", broken)
    session = _find(events, "session ", broken)["session"]
    error = _find(events, "protocol error", broken)
    assert (error["session"], error["transport"]) == (session, "tcp")
    assert error["error"] == "malformed header line"
    closed = _find(events, "connection closed", broken)
    assert closed["session"] == session
    assert closed["reason"] == f"protocol error: {error['error']}"


def test_twist_json_format_logs_no_secrets(tmp_path):
    # twist finds twistd plugins too: the same service, Twisted's own JSON.
    twist = os.path.join(BIN, "twist")
    if not os.path.exists(twist):
        pytest.skip("twist is not installed next to this Python")
    text, events, peers = _run(tmp_path, [twist, "--log-format=json", "stomptw"], _json_seq)
    _assert_no_secrets(text)
    for peer in peers.values():
        closed = _find(events, "connection closed", peer)
        assert {"peer", "transport", "session", "duration", "reason"} <= closed.keys()
    error = _find(events, "protocol error", peers["broken"])
    assert error["session"] == _find(events, "connection closed", peers["broken"])["session"]
    # twist logs at info by default: the debug "connection opened" is left out.
    assert not [e for e in events if e.get("log_format", "").startswith("connection opened")]


# Names whose values must never be passed to a log call: frame headers and
# bodies (passcodes, message contents).
_SECRET_NAMES = {"headers", "body", "frame", "passcode", "data", "message_headers"}


def test_no_log_call_is_given_headers_or_bodies():
    calls = 0
    for path in sorted((REPO / "stomptw").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("debug", "info", "warn", "error", "critical", "failure")
                and "log" in ast.unparse(node.func.value)
            ):
                continue
            calls += 1
            for argument in [*node.args, *(k.value for k in node.keywords)]:
                names = {n.id for n in ast.walk(argument) if isinstance(n, ast.Name)}
                attributes = {n.attr for n in ast.walk(argument) if isinstance(n, ast.Attribute)}
                leaked = (names | attributes) & _SECRET_NAMES
                assert not leaked, f"{path.name}:{node.lineno} logs {leaked}"
    assert calls >= 10


def test_operations_guide_sample_line_is_a_close_event():
    guide = (REPO / "docs" / "operations.md").read_text()
    section = guide.split("## Structured logs (JSON)", 1)[1]
    sample = json.loads(section.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert {"peer", "transport", "session", "duration", "reason"} <= sample.keys()
    assert sample["log_format"].startswith("connection closed")


def _captured(run) -> list[dict]:
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        run()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if e.get("log_namespace", "").startswith("stomptw")]


def _formats(events: list[dict]) -> list[str]:
    return [e["log_format"].split(":")[0].split(" ")[0] for e in events]


def test_connection_lines_are_rate_limited_and_summarized():
    from stomptw.testing import BrokerOnClock

    env = BrokerOnClock(log_connections_per_second=3)

    def burst():
        for _ in range(5):  # 10 lines: established and closed, in the same second
            env.connect().lose()
        env.advance(1.5)
        env.connect()  # a new second: the summary, then its own line

    events = _captured(burst)
    lines = [e["log_format"] for e in events]
    assert sum(f.startswith("session ") for f in lines) == 3, lines
    assert sum(f.startswith("connection closed") for f in lines) == 1, lines
    summary = [e for e in events if "left out" in e["log_format"]]
    assert [e["skipped"] for e in summary] == [7]


def test_log_level_warn_leaves_out_every_connection_line_and_debug_adds_one():
    from stomptw.testing import BrokerOnClock

    quiet = BrokerOnClock(log_level="warn")
    assert _captured(lambda: quiet.connect().lose()) == []
    loud = BrokerOnClock(log_level="debug")
    lines = [e["log_format"] for e in _captured(lambda: loud.connect().lose())]
    assert [line.split(" ")[0] for line in lines] == ["connection", "session", "connection"]
    assert lines[0].startswith("connection opened")
