"""
The ``twistd stomptw`` plugin (:mod:`stomptw.tap`): its options, generated
from the settings' declarations, their defaults and errors, and the service
it builds from them. The service tree itself is in test_service.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from options import PROCESS_OPTIONS, flagged, parse, write
from twisted.application.service import IService
from twisted.python import reflect, usage

from stomptw.config import DEFAULT_TCP, DEFAULT_WS, LIST, SWITCH, VALUE, BrokerConfig
from stomptw.configfile import load_config_file
from stomptw.frame import Limits
from stomptw.service import BrokerService
from stomptw.tap import Options, makeService


def test_defaults():
    config = parse().config
    assert config.tcp_endpoints == [DEFAULT_TCP] == ["tcp:61613:interface=127.0.0.1"]
    assert config.ws_endpoints == [DEFAULT_WS] == ["tcp:15674:interface=127.0.0.1"]
    assert config.ws_path == "/ws"
    assert (config.heartbeat_send_ms, config.heartbeat_receive_ms) == (1000, 1000)
    assert config == BrokerConfig()
    assert config.ws_message_limit == 64 * 1024 * 1024


def test_repeatable_endpoints_and_limits():
    config = parse(
        "--allow-anonymous",
        "--tcp",
        "tcp:1234",
        "--tcp=tcp:1235",
        "--ws",
        "tcp:8080",
        "--ws-path",
        "stomp",
        "--heartbeat",
        "0,5000",
        "--heartbeat-grace",
        "2",
        "--max-frame-size",
        "1000",
        "--max-body-size",
        "500",
        "--max-headers",
        "10",
        "--max-header-line",
        "100",
        "--login-timeout",
        "3",
        "--prefetch",
        "7",
        "--ws-max-message-size",
        "30000",
        "--allowed-origins",
        "https://*.example.com, http://app.test:8080",
        "--allowed-origins=null",
    ).config
    assert config.ws_message_limit == 30000
    assert config.allowed_origins == ["https://*.example.com", "http://app.test:8080", "null"]
    assert config.tcp_endpoints == ["tcp:1234", "tcp:1235"]
    assert config.ws_endpoints == ["tcp:8080"]
    assert config.ws_path == "/stomp"
    assert (config.heartbeat_send_ms, config.heartbeat_receive_ms) == (0, 5000)
    assert config.heartbeat_grace == 2.0
    assert config.limits.max_frame_size == 1000
    assert config.limits.max_body_size == 500
    assert config.limits.max_headers == 10
    assert config.limits.max_header_line == 100
    assert config.login_timeout == 3.0
    assert config.default_prefetch == 7


def test_switch_listeners_off():
    config = parse("--no-tcp").config
    assert config.tcp_endpoints == [] and config.ws_endpoints == [DEFAULT_WS]
    config = parse("--no-ws").config
    assert config.ws_endpoints == [] and config.tcp_endpoints == [DEFAULT_TCP]


@pytest.mark.parametrize(
    "args",
    [
        ["--no-tcp", "--tcp", "tcp:1"],
        ["--no-ws", "--ws", "tcp:1"],
        ["--heartbeat", "10"],
        ["--max-frame-size", "0"],
        ["--heartbeat-grace", "0.5"],
        ["--login-timeout", "-1"],
    ],
)
def test_bad_options(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_make_service_is_an_iservice():
    service = makeService(parse())
    assert IService.providedBy(service)
    assert isinstance(service, BrokerService)
    kinds = sorted(listener.kind for listener in service.listeners())
    assert kinds == ["stomp", "ws"]


def test_twistd_freezes_the_heap_once_ready_unless_told_not_to():
    assert makeService(parse()).freeze_heap_when_ready is True
    assert makeService(parse("--no-gc-freeze")).freeze_heap_when_ready is False
    # An embedding application's service leaves its process's collector alone.
    from stomptw.service import makeService as make

    assert make(BrokerConfig(store="memory")).freeze_heap_when_ready is False


def test_make_service_uses_the_reactor_it_is_given():
    from twisted.internet.testing import MemoryReactorClock

    clock = MemoryReactorClock()
    service = makeService(parse("--store", "memory"), reactor=clock)
    assert service.broker.clock is clock


# -- options generated from the declarations -----------------------------------------------


def test_every_option_comes_from_a_declaration():
    """optParameters, optFlags, opt_* handlers: generated, but --config and --no-gc-freeze."""
    expected = {s.key: s.kind for s in flagged()}
    expected |= {s.off_key: "off" for s in flagged() if s.off_key}
    parameters: list = []
    reflect.accumulateClassList(Options, "optParameters", parameters)
    flags: list = []
    reflect.accumulateClassList(Options, "optFlags", flags)
    handlers = {
        name[len("opt_") :].replace("_", "-")
        for name in vars(Options)
        if name.startswith("opt_") and callable(getattr(Options, name))
    }
    found = {p[0]: VALUE for p in parameters}
    found |= {f[0]: SWITCH if expected.get(f[0]) == SWITCH else "off" for f in flags}
    found |= {h: LIST for h in handlers}
    for name in PROCESS_OPTIONS:
        assert name in found
        del found[name]
    assert found == expected
    # --help lists each with its declared help.
    text = " ".join(Options().getUsage(width=10_000).split())
    for s in flagged():
        assert f"--{s.key}" in text
        assert " ".join(s.help.split()) in text, s.key


def test_parameters_hold_the_values_in_force_after_parsing():
    options = parse("--max-connections", "5", "--heartbeat", "0,20")
    assert options["max-connections"] == 5
    assert options["heartbeat"] == (0, 20)
    assert options["store"] == "sqlite"
    assert options["max-frame-size"] == Limits().max_frame_size


def test_file_is_read_once(tmp_path, monkeypatch):
    import stomptw.tap

    path = write(tmp_path, "max-connections = 3\n")
    reads = []

    def counting(name):
        reads.append(name)
        return load_config_file(name)

    monkeypatch.setattr(stomptw.tap, "load_config_file", counting)
    options = parse("--config", path)
    Path(path).unlink()
    assert options.config.max_connections == 3
    assert reads == [path]
    assert stomptw.tap.config_from_options(options).max_connections == 3


def test_admin_token_is_read_once(tmp_path):
    """postOptions reads it; makeService uses what it read, not the file again."""
    token = tmp_path / "token"
    token.write_text(" s3cret \n")
    options = parse("--store", "memory", "--admin", "tcp:0", "--admin-token-file", str(token))
    assert options.admin_token == "s3cret"
    token.unlink()
    service = makeService(options)
    assert [listener.kind for listener in service.listeners("admin")] == ["admin"]


def test_options():
    options = Options()
    options.parseOptions(["--slow-topic-timeout", "2.5"])
    assert options.config.slow_topic_timeout == 2.5
    assert options.config.slow_topic_policy == "block"
    options = Options()
    options.parseOptions(["--slow-topic-policy", "drop-oldest", "--slow-topic-timeout", "0"])
    assert options.config.slow_topic_policy == "drop-oldest"
    assert options.config.slow_topic_timeout == 0
    with pytest.raises(usage.UsageError, match="--slow-topic-policy"):
        Options().parseOptions(["--slow-topic-policy", "wait"])
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--slow-topic-timeout", "-1"])


# -- errors a newcomer understands --------------------------------------------------------


def test_an_unknown_option_suggests_the_nearest_and_keeps_the_usage_short():
    options = Options()
    with pytest.raises(usage.UsageError) as caught:
        options.parseOptions(["--max-conections", "5"])
    assert str(caught.value) == (
        "option --max-conections not recognized; did you mean --max-connections?"
    )
    assert options.getUsage() == "Run 'twistd stomptw --help' to list every option.\n"
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--zzzzzz"])
    assert str(caught.value) == "option --zzzzzz not recognized"
    assert "--max-connections" in Options().getUsage()  # --help is whole


@pytest.mark.parametrize(
    ("args", "where", "string"),
    [
        (["--tcp", "tcp:6161x"], "--tcp", "tcp:6161x"),
        (["--ws", "tcp:1:interfce=127.0.0.1"], "--ws", "tcp:1:interfce=127.0.0.1"),
        (["--tcp", "61623"], "--tcp", "61623"),
        (["--admin", "tcp:abc"], "--admin", "tcp:abc"),
    ],
)
def test_a_bad_endpoint_string_names_its_option_and_shows_an_example(args, where, string):
    with pytest.raises(usage.UsageError) as caught:
        parse(*args)
    message = str(caught.value)
    assert message.startswith(f"{where}: {string!r} is not a valid endpoint string (")
    assert "For example: tcp:61613:interface=127.0.0.1" in message


def _busy_port():
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_every_busy_listener_is_named_with_the_option_that_moves_it():
    from stomptw.tap import busy_listeners

    first, port1 = _busy_port()
    second, port2 = _busy_port()
    try:
        config = parse(
            "--tcp",
            f"tcp:{port1}:interface=127.0.0.1",
            "--tcp",
            "tcp:0:interface=127.0.0.1",
            "--ws",
            f"tcp:{port2}:interface=127.0.0.1",
        ).config
        lines = busy_listeners(config)
    finally:
        first.close()
        second.close()
    assert lines == [
        f"--tcp tcp:{port1}:interface=127.0.0.1: 127.0.0.1:{port1} is already in use; "
        "stop what uses it, or move this listener, e.g. --tcp tcp:61614:interface=127.0.0.1",
        f"--ws tcp:{port2}:interface=127.0.0.1: 127.0.0.1:{port2} is already in use; "
        "stop what uses it, or move this listener, e.g. --ws tcp:15675:interface=127.0.0.1",
    ]
    assert busy_listeners(config) == []  # free again


def test_twistd_says_which_ports_are_busy_without_a_traceback_or_touching_the_store(tmp_path):
    """End to end: one paragraph naming both busy listeners; the data directory is never made."""
    import os
    import subprocess
    import sys

    first, port1 = _busy_port()
    second, port2 = _busy_port()
    try:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        result = subprocess.run(
            [
                twistd,
                "-n",
                "--pidfile=",
                "stomptw",
                "--tcp",
                f"tcp:{port1}:interface=127.0.0.1",
                "--ws",
                f"tcp:{port2}:interface=127.0.0.1",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
        )
        typo = subprocess.run(
            [twistd, "-n", "--pidfile=", "stomptw", "--max-conections", "5"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=env,
        )
    finally:
        first.close()
        second.close()
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert f"127.0.0.1:{port1} is already in use" in output
    assert f"127.0.0.1:{port2} is already in use" in output
    assert not (tmp_path / "data").exists()
    typo_output = typo.stdout + typo.stderr
    assert typo.returncode == 1 and "did you mean --max-connections?" in typo_output
    assert len(typo_output.strip().splitlines()) <= 4, typo_output


def test_an_address_this_machine_does_not_have_is_named_before_anything_starts():
    from stomptw.tap import busy_listeners

    # 192.0.2.0/24 is reserved for documentation: no machine has it.
    config = parse(
        "--auth",
        "anonymous",
        "--tcp",
        "tcp:0:interface=192.0.2.1",
        "--ws",
        "tcp:15674:interface=192.0.2.1",
    ).config
    assert busy_listeners(config) == [
        "--tcp tcp:0:interface=192.0.2.1: 192.0.2.1 is not an address of this machine "
        "(Cannot assign requested address); use one of its addresses, e.g. interface=127.0.0.1",
        "--ws tcp:15674:interface=192.0.2.1: 192.0.2.1 is not an address of this machine "
        "(Cannot assign requested address); use one of its addresses, e.g. interface=127.0.0.1",
    ]


def _twistd(tmp_path: Path, *args: str):
    import os
    import subprocess
    import sys

    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run(
        [twistd, "-n", "--pidfile=", "stomptw", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )


def test_a_listener_that_fails_after_the_store_opened_leaves_it_closed_cleanly(tmp_path):
    """
    A listener the early check cannot probe (a UNIX socket in a missing
    directory) fails once the store is open: one paragraph naming the option,
    no traceback, and the store marked as closed cleanly for the next start.
    """
    import sqlite3

    result = _twistd(
        tmp_path, "--tcp", "unix:/nonexistent/stomptw.sock", "--ws", "tcp:0:interface=127.0.0.1"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "stomptw cannot start: --tcp unix:/nonexistent/stomptw.sock: " in output
    with sqlite3.connect(tmp_path / "data" / "stomptw.sqlite3") as db:
        assert db.execute("SELECT value FROM meta WHERE name = 'closed'").fetchone() == ("1",)


def test_a_bad_permissions_file_is_one_paragraph(tmp_path):
    (tmp_path / "rules.toml").write_text("[[users\n")
    result = _twistd(
        tmp_path,
        "--permissions",
        "rules.toml",
        "--tcp",
        "tcp:0:interface=127.0.0.1",
        "--ws",
        "tcp:0:interface=127.0.0.1",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert output.strip().startswith(
        "stomptw cannot start: --permissions rules.toml: not valid TOML"
    )
    assert len(output.strip().splitlines()) == 1, output
