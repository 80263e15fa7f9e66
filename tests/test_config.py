"""
Each setting declared once (stomptw.config), the twistd options generated from
the declarations (stomptw.tap), and the ``--config`` TOML file.

Plain pytest: no reactor runs here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from twisted.python import reflect, usage

from stomptw.config import LIST, SWITCH, VALUE, BrokerConfig, InvalidSetting, settings
from stomptw.configfile import ConfigError, load_config_file
from stomptw.frame import Limits
from stomptw.tap import Options, makeService

REPO = Path(__file__).resolve().parents[1]

#: Options of twistd stomptw that are the process's, not a BrokerConfig field's.
PROCESS_OPTIONS = {"config", "no-gc-freeze"}


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def write(tmp_path: Path, text: str, name: str = "stomptw.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def usage_error(*args: str) -> str:
    with pytest.raises(usage.UsageError) as info:
        parse(*args)
    return str(info.value)


def flagged() -> list:
    return [s for s in settings() if s.flag]


# -- the declarations ------------------------------------------------------------------


def test_every_field_is_declared():
    """Every field (the Limits' too) has a flag or is explicitly declared without one."""
    declared = {path for s in settings() for path in s.fields}
    fields = set()
    for f in dataclasses.fields(BrokerConfig):
        if f.name == "limits":
            fields |= {f"limits.{inner.name}" for inner in dataclasses.fields(Limits)}
        else:
            fields.add(f.name)
    assert sorted(fields - declared) == [], "fields with no declaration"
    assert sorted(declared - fields) == []
    paths = [path for s in settings() for path in s.fields]
    assert len(paths) == len(set(paths)), "a field declared twice"
    # The fields only code sets are few and known.
    assert sorted(s.fields[0] for s in settings() if s.flag is None) == [
        "expiry_interval",
        "server_name",
    ]
    for s in settings():
        assert s.help.strip(), s.fields


def test_flags_and_keys_are_unique_and_well_formed():
    names = []
    for s in flagged():
        names += [s.key] + ([s.off_key] if s.off_key else [])
        assert re.fullmatch(r"--[a-z][a-z-]*", s.flag), s.flag
    assert len(names) == len(set(names))
    assert not set(names) & PROCESS_OPTIONS


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


def test_defaults_are_the_fields_defaults():
    config = parse().config
    assert config == BrokerConfig()
    # Giving every default explicitly changes nothing either.
    args = [f"--{s.key}={s.text(s.default)}" for s in flagged() if s.kind == VALUE]
    assert parse(*args).config == BrokerConfig()
    for s in flagged():
        assert s.get(BrokerConfig()) == (False if s.kind == SWITCH else s.default)


def test_parameters_hold_the_values_in_force_after_parsing():
    options = parse("--max-connections", "5", "--heartbeat", "0,20")
    assert options["max-connections"] == 5
    assert options["heartbeat"] == (0, 20)
    assert options["store"] == "sqlite"
    assert options["max-frame-size"] == Limits().max_frame_size


def test_ws_close_handshake_timeout_can_be_set():
    assert parse().config.ws_close_handshake_timeout == 5.0
    config = parse("--ws-close-handshake-timeout", "2.5").config
    assert config.ws_close_handshake_timeout == 2.5
    message = usage_error("--ws-close-handshake-timeout", "0")
    assert message.startswith("--ws-close-handshake-timeout: must be positive")


# -- errors on the command line -----------------------------------------------------


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


def test_embedders_get_the_field_names():
    with pytest.raises(InvalidSetting, match="^login_timeout must be positive") as info:
        BrokerConfig(login_timeout=0)
    assert info.value.setting.key == "login-timeout"
    with pytest.raises(ValueError, match="heartbeat_send_ms and heartbeat_receive_ms"):
        BrokerConfig(heartbeat_receive_ms=-1)
    with pytest.raises(ValueError, match="store must be one of sqlite, memory"):
        BrokerConfig(store="disk")


# -- the configuration file --------------------------------------------------------


def test_file_sets_every_kind_of_setting(tmp_path):
    path = write(
        tmp_path,
        """
        tcp = ["tcp:1234", "tcp:1235"]
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
        'max-connections = 7\nstore = "memory"\ntcp = ["tcp:1"]\nno-ws = true\nadmin = ["tcp:2"]\n',
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


def test_kinds_are_known():
    assert {s.kind for s in settings()} == {VALUE, SWITCH, LIST}


# -- the admin token ----------------------------------------------------------------


def test_admin_token_is_read_once(tmp_path):
    """postOptions reads it; makeService uses what it read, not the file again."""
    token = tmp_path / "token"
    token.write_text(" s3cret \n")
    options = parse("--store", "memory", "--admin", "tcp:0", "--admin-token-file", str(token))
    assert options.admin_token == "s3cret"
    token.unlink()
    service = makeService(options)
    assert [listener.kind for listener in service.listeners("admin")] == ["admin"]


def test_admin_token_file_from_the_config_file_is_named_so(tmp_path):
    path = write(tmp_path, f'admin-token-file = "{tmp_path / "absent"}"\n')
    assert usage_error("--config", path).startswith(f"{path}: admin-token-file: cannot read")
