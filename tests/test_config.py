"""
The broker's settings (:mod:`stomptw.config`): each declared once on its
``BrokerConfig`` field, with flags and keys that are well formed, defaults
that are the fields' own, and the checks ``BrokerConfig`` makes itself
(embedders get field names in its errors). How the declarations become
options is in test_tap.py; the command line and the configuration file in
test_configfile.py; the declaring helpers in test_settings.py.

Plain pytest: no reactor runs here.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from options import PROCESS_OPTIONS, flagged, parse, usage_error

from stomptw.config import LIST, SWITCH, VALUE, BrokerConfig, InvalidSetting, settings
from stomptw.frame import Limits

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


def test_defaults_are_the_fields_defaults():
    config = parse().config
    assert config == BrokerConfig()
    # Giving every default explicitly changes nothing either.
    args = [f"--{s.key}={s.text(s.default)}" for s in flagged() if s.kind == VALUE]
    assert parse(*args).config == BrokerConfig()
    for s in flagged():
        assert s.get(BrokerConfig()) == (False if s.kind == SWITCH else s.default)


def test_ws_close_handshake_timeout_can_be_set():
    assert parse().config.ws_close_handshake_timeout == 5.0
    config = parse("--ws-close-handshake-timeout", "2.5").config
    assert config.ws_close_handshake_timeout == 2.5
    message = usage_error("--ws-close-handshake-timeout", "0")
    assert message.startswith("--ws-close-handshake-timeout: must be positive")


# -- errors on the command line -----------------------------------------------------


def test_embedders_get_the_field_names():
    with pytest.raises(InvalidSetting, match="^login_timeout must be positive") as info:
        BrokerConfig(login_timeout=0)
    assert info.value.setting.key == "login-timeout"
    with pytest.raises(ValueError, match="heartbeat_send_ms and heartbeat_receive_ms"):
        BrokerConfig(heartbeat_receive_ms=-1)
    with pytest.raises(ValueError, match="store must be one of sqlite, memory"):
        BrokerConfig(store="disk")


# -- the configuration file --------------------------------------------------------


def test_kinds_are_known():
    assert {s.kind for s in settings()} == {VALUE, SWITCH, LIST}


# -- the admin token ----------------------------------------------------------------


def test_block_is_the_default():
    config = BrokerConfig()
    assert config.slow_topic_policy == "block"
    assert config.slow_topic_timeout == 30.0


def test_websocket_limit_too_small_for_the_frame_limit_is_refused():
    """
    A WebSocket message limit that could not carry every MESSAGE built from
    an accepted SEND would leave a message no WebSocket consumer can take
    (offered again and again): the configuration is refused up front.
    """
    from stomptw.frame import Limits

    limits = Limits(max_frame_size=1000, max_body_size=1000, max_header_line=100)
    with pytest.raises(ValueError, match="ws_max_message_size"):
        BrokerConfig(limits=limits, ws_max_message_size=1000)
    config = BrokerConfig(limits=limits, ws_max_message_size=2 * 1000 + 2 * 100 + 4096)
    assert config.ws_message_limit == config.min_ws_message_size
