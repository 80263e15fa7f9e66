"""
A ``BrokerConfig`` from where settings are given (:mod:`stomptw.configfile`):
the ``--config`` TOML file and the command line, the later overriding the
earlier, and errors that name the option, or the file and the key. Through
``twistd stomptw``'s options, as an operator gives them.

Plain pytest: no reactor runs here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from options import flagged, parse, usage_error, write

from stomptw.config import SWITCH, VALUE, BrokerConfig, InvalidSetting, settings
from stomptw.configfile import ConfigError, load_config_file
from stomptw.frame import Limits
from stomptw.tap import Options

REPO = Path(__file__).resolve().parents[1]


# -- errors on the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    [s for s in flagged() if s.kind == VALUE and isinstance(s.default, int | float)],
    ids=lambda s: s.key,
)
def test_each_bad_number_names_its_option_and_value(setting):
    kind = "an integer" if isinstance(setting.default, int) else "a number"
    assert usage_error(f"--{setting.key}", "ten") == f"--{setting.key}: expected {kind}, got 'ten'"


def test_bad_values_name_the_option():
    assert usage_error("--max-connections", "ten") == (
        "--max-connections: expected an integer, got 'ten'"
    )
    assert usage_error("--heartbeat", "10") == (
        "--heartbeat: expected two integers in milliseconds, e.g. 10000,10000, got '10'"
    )
    assert usage_error("--max-connections", "-1") == (
        "--max-connections: must not be negative, got -1"
    )
    assert usage_error("--store", "disk") == "--store: must be one of sqlite, memory, got 'disk'"
    assert usage_error("--max-frame-size", "0") == "--max-frame-size: must be positive, got 0"
    assert usage_error("--heartbeat-grace", "0.5").startswith("--heartbeat-grace: must be at least")
    assert usage_error("--dead-letter-queue", "/topic/x").startswith("--dead-letter-queue: ")
    assert usage_error("--no-tcp", "--tcp", "tcp:1") == "--no-tcp and --tcp contradict each other"


def test_a_check_across_fields_names_the_flag():
    message = usage_error("--ws-max-message-size", "1000")
    assert message.startswith("--ws-max-message-size: must be at least ")
    assert "ws_max_message_size" not in message


# -- the configuration file ----------------------------------------------------------------


def test_file_sets_every_kind_of_setting(tmp_path):
    path = write(
        tmp_path,
        """
        tcp = ["tcp:1234", "tcp:1235"]
        allow-anonymous = true       # those listen beyond loopback
        no-ws = true
        max-connections = 7
        heartbeat = "0,5000"
        heartbeat-grace = 2          # an integer where a float goes
        login-timeout = 2.5
        max-frame-size = 1000
        store = "memory"
        no-examples = true
        dead-letter-expired = true
        allowed-origins = ["https://*.example.com, http://app.test", "null"]
        ws-close-handshake-timeout = 1.5
        """.replace("        ", ""),
    )
    config = parse("--config", path).config
    assert config.tcp_endpoints == ["tcp:1234", "tcp:1235"]
    assert config.ws_endpoints == []
    assert config.max_connections == 7
    assert (config.heartbeat_send_ms, config.heartbeat_receive_ms) == (0, 5000)
    assert config.heartbeat_grace == 2.0 and isinstance(config.heartbeat_grace, float)
    assert config.login_timeout == 2.5
    assert config.limits.max_frame_size == 1000
    assert config.limits.max_headers == Limits().max_headers
    assert config.store == "memory"
    assert config.examples is False
    assert config.dead_letter_expired is True
    assert config.allowed_origins == ["https://*.example.com", "http://app.test", "null"]
    assert config.ws_close_handshake_timeout == 1.5
    # Everything else keeps its default.
    assert config.data_dir == BrokerConfig().data_dir


def test_switches_set_false_in_the_file_keep_the_default(tmp_path):
    path = write(tmp_path, "no-examples = false\nno-tcp = false\ndead-letter-expired = false\n")
    assert parse("--config", path).config == BrokerConfig()


def test_command_line_overrides_the_file(tmp_path):
    path = write(
        tmp_path,
        'max-connections = 7\nstore = "memory"\ntcp = ["tcp:1"]\nno-ws = true\nadmin = ["tcp:2"]\n'
        "allow-anonymous = true\n",
    )
    config = parse("--config", path, "--max-connections", "10000", "--tcp", "tcp:3").config
    assert config.max_connections == 10000  # the default, given explicitly, still wins
    assert config.store == "memory"  # from the file
    assert config.tcp_endpoints == ["tcp:3"]  # replaced, not added to
    assert config.ws_endpoints == []
    assert config.admin_endpoints == ["tcp:2"]
    # --ws on the command line wins over the file's no-ws, --no-tcp over its tcp.
    config = parse("--config", path, "--ws", "tcp:4", "--no-tcp").config
    assert config.ws_endpoints == ["tcp:4"] and config.tcp_endpoints == []
    # The option after --config or before it: the same.
    assert parse("--store", "sqlite", "--config", path).config.store == "sqlite"


def test_unknown_key_names_key_file_and_the_closest_key(tmp_path):
    path = write(tmp_path, "max-conections = 3\n")
    message = usage_error("--config", path)
    assert message == f"{path}: unknown key 'max-conections' (did you mean 'max-connections'?)"
    # A field name leads to its key, even when they differ.
    path = write(tmp_path, "default_prefetch = 3\n")
    assert usage_error("--config", path).endswith("(did you mean 'prefetch'?)")
    path = write(tmp_path, "examples = false\n")
    assert usage_error("--config", path).endswith("(did you mean 'no-examples'?)")
    path = write(tmp_path, "[broker]\nstore = 'memory'\n")
    assert usage_error("--config", path) == f"{path}: unknown key 'broker'"
    # Process options are not settings.
    path = write(tmp_path, "no-gc-freeze = true\n")
    assert "unknown key 'no-gc-freeze'" in usage_error("--config", path)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('max-connections = "ten"', 'max-connections: expected an integer, got "ten"'),
        ("max-connections = 1.5", "max-connections: expected an integer, got 1.5"),
        ("max-connections = true", "max-connections: expected an integer, got true"),
        ('login-timeout = "5"', 'login-timeout: expected a number, got "5"'),
        ("store = 1", "store: expected a string, got 1"),
        ("heartbeat = [1000, 1000]", "heartbeat: expected a string, got [1000, 1000]"),
        ('heartbeat = "1000"', "heartbeat: expected two integers in milliseconds"),
        ('tcp = "tcp:1"', 'tcp: expected an array of strings, got "tcp:1"'),
        ("tcp = [1]", "tcp: expected an array of strings, got [1]"),
        ('no-examples = "yes"', 'no-examples: expected true or false, got "yes"'),
        ("no-tcp = 1", "no-tcp: expected true or false, got 1"),
        ("[limits]", "unknown key 'limits'"),
    ],
)
def test_wrong_types_name_key_and_file(tmp_path, line, error):
    path = write(tmp_path, line + "\n")
    assert usage_error("--config", path).startswith(f"{path}: {error}")


def test_bad_values_in_the_file_name_key_and_file(tmp_path):
    path = write(tmp_path, "login-timeout = 0\n")
    assert usage_error("--config", path) == f"{path}: login-timeout: must be positive, got 0.0"
    # Given again on the command line, the command line's value is the one named.
    assert usage_error("--config", path, "--login-timeout", "-1") == (
        "--login-timeout: must be positive, got -1.0"
    )
    path = write(tmp_path, "ws-max-message-size = 1000\n")
    message = usage_error("--config", path)
    assert message.startswith(f"{path}: ws-max-message-size: must be at least")
    path = write(tmp_path, 'no-tcp = true\ntcp = ["tcp:1"]\n')
    assert usage_error("--config", path) == f"{path}: no-tcp and tcp contradict each other"


def test_missing_unreadable_or_invalid_file(tmp_path):
    missing = tmp_path / "absent.toml"
    assert usage_error("--config", str(missing)) == (
        f"cannot read the configuration file {missing}: No such file or directory"
    )
    assert usage_error("--config", str(tmp_path)).startswith(
        f"cannot read the configuration file {tmp_path}: "
    )
    path = write(tmp_path, "max-connections = \n")
    assert usage_error("--config", path).startswith(f"{path} is not a valid TOML file: ")
    (tmp_path / "latin1.toml").write_bytes(b'data-dir = "\xe9"\n')
    assert "is not a valid TOML file" in usage_error("--config", str(tmp_path / "latin1.toml"))


def test_every_reference_line_is_valid_in_a_file(tmp_path):
    """The lines the configuration reference shows load, each with its default."""
    lines = Options.configFileLines
    assert lines["max-connections"] == "max-connections = 10000"
    assert lines["tcp"] == 'tcp = ["tcp:61613:interface=127.0.0.1"]'
    assert lines["heartbeat"] == 'heartbeat = "1000,1000"'
    assert lines["no-tcp"] == "no-tcp = true"
    assert set(lines) == {s.key for s in flagged()} | {s.off_key for s in flagged() if s.off_key}
    for key, line in lines.items():
        values = load_config_file(write(tmp_path, line + "\n")).values
        s = next(s for s in settings() if key in (s.key, s.off_key))
        if key == s.off_key:
            assert values == {s.key: []}
        elif s.kind == SWITCH:
            assert values == {key: True}
        else:
            assert values == {key: s.default}
        assert parse("--config", write(tmp_path, line + "\n")).config is not None


def test_the_systemd_example_file(tmp_path):
    """contrib/systemd/stomptw.toml is what the unit's ExecStart reads, and it loads."""
    unit = (REPO / "contrib" / "systemd" / "stomptw.service").read_text(encoding="utf-8")
    exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit, re.M | re.S).group(1)
    assert exec_start.split()[-2:] == ["--config", "/etc/stomptw/stomptw.toml"]
    config = parse("--config", str(REPO / "contrib" / "systemd" / "stomptw.toml")).config
    assert config.tcp_endpoints == ["systemd:domain=INET:name=stomp"]
    assert config.ws_endpoints == ["systemd:domain=INET:name=ws"]
    assert config.data_dir == "/var/lib/stomptw"
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "contrib/systemd/stomptw.toml /etc/stomptw/stomptw.toml" in operations


def test_config_errors_are_value_errors():
    """Code that caught ValueError around the configuration still does."""
    assert issubclass(ConfigError, ValueError) and issubclass(InvalidSetting, ValueError)


def test_admin_token_file_from_the_config_file_is_named_so(tmp_path):
    path = write(tmp_path, f'admin-token-file = "{tmp_path / "absent"}"\n')
    assert usage_error("--config", path).startswith(f"{path}: admin-token-file: cannot read")
