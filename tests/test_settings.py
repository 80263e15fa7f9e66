"""
How a setting is declared (:mod:`stomptw.settings`), on a small dataclass of
its own: the checks, what ``declared`` binds (fields, defaults, nested and
grouped fields), reading values from the command line and from TOML, the
example lines, and getting and assigning values. BrokerConfig's own
declarations are in test_config.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from stomptw.settings import (
    LIST,
    SWITCH,
    VALUE,
    InvalidSetting,
    Setting,
    at_least,
    declared,
    nested,
    nested_classes,
    non_negative,
    one_of,
    part_of,
    positive,
    repeatable,
    setting,
    switch,
    toml_value,
)


def _pair(text: str) -> int:
    low, _, high = text.partition(",")
    if not (low.isdigit() and high.isdigit()):
        raise ValueError(f"expected two integers, got {text!r}")
    return int(low), int(high)


@dataclass(frozen=True)
class Inner:
    size: int = 10
    depth: int = 3


@dataclass(frozen=True)
class Example:
    count: int = setting(5, "--count", "How many.", checks=[non_negative])
    ratio: float = setting(0.5, "--ratio", "How much.", checks=[positive])
    mode: str = setting("fast", "--mode", "Which way.", checks=[one_of("fast", "slow")])
    low: int = setting(1, "--range", "From and to.", parse=_pair)
    high: int = part_of("--range", 2)
    quiet: bool = switch(False, "--quiet", "Say less.")
    hosts: list = repeatable(["a"], "--host", "Where.", off="--no-host", split=",")
    inner: Inner = nested(Inner, size=Setting("--size", "How big."))
    secret: str = setting("", None, "Only code sets it.")
    plain: int = 7


def by_key() -> dict:
    return {s.key: s for s in declared(Example)}


def test_checks_say_what_is_wrong():
    positive(1)
    non_negative(0)
    at_least(3)(3)
    one_of("a", "b")("b")
    with pytest.raises(ValueError, match=r"^must be positive, got 0$"):
        positive(0)
    with pytest.raises(ValueError, match=r"^must not be negative, got -1$"):
        non_negative(-1)
    with pytest.raises(ValueError, match=r"^must be at least 3, got 2$"):
        at_least(3)(2)
    with pytest.raises(ValueError, match=r"^too few, got 2$"):
        at_least(3, "too few")(2)
    with pytest.raises(ValueError, match=r"^must be one of a, b, got 'c'$"):
        one_of("a", "b")("c")


def test_toml_values_are_written_as_toml_writes_them():
    assert toml_value(True) == "true" and toml_value(False) == "false"
    assert toml_value('say "hi"') == '"say \\"hi\\""'
    assert toml_value(["a", 1, 2.5]) == '["a", 1, 2.5]'
    assert toml_value(("x",)) == '["x"]'
    assert toml_value(3) == "3"


def test_declared_binds_fields_and_defaults_in_field_order():
    settings = declared(Example)
    assert [s.fields for s in settings] == [
        ("count",),
        ("ratio",),
        ("mode",),
        ("low", "high"),
        ("quiet",),
        ("hosts",),
        ("inner.size",),
        ("secret",),
    ]
    keys = by_key()
    assert keys["count"].default == 5 and keys["count"].kind == VALUE
    assert keys["range"].default == (1, 2)
    assert keys["quiet"].kind == SWITCH and keys["quiet"].default is False
    assert keys["host"].kind == LIST and keys["host"].default == ["a"]
    assert keys["host"].off_key == "no-host" and keys["count"].off_key is None
    assert keys["size"].default == 10  # the nested class's own default
    (code_only,) = [s for s in settings if s.flag is None]
    assert code_only.key is None and code_only.fields == ("secret",)
    assert nested_classes(Example) == {"inner": Inner}
    # Each list field gets its own list.
    assert Example().hosts is not Example().hosts


def test_part_of_a_flag_nobody_declares_is_an_error():
    @dataclass
    class Broken:
        orphan: int = part_of("--nowhere", 0)

    with pytest.raises(TypeError, match="--nowhere"):
        declared(Broken)


def test_values_from_the_command_line():
    keys = by_key()
    assert keys["count"].from_text("12") == 12
    assert keys["ratio"].from_text("2") == 2.0
    assert keys["mode"].from_text("slow") == "slow"
    assert keys["range"].from_text("3,4") == (3, 4)
    assert keys["host"].from_text(" b, c ,") == ["b", "c"]
    with pytest.raises(ValueError, match=r"^expected an integer, got 'ten'$"):
        keys["count"].from_text("ten")
    with pytest.raises(ValueError, match=r"^expected a number, got 'x'$"):
        keys["ratio"].from_text("x")
    with pytest.raises(ValueError, match="two integers"):
        keys["range"].from_text("3")
    assert keys["range"].text((3, 4)) == "3,4"
    assert keys["count"].text(12) == "12"


@pytest.mark.parametrize(
    "key, raw, expected",
    [
        ("count", 3, 3),
        ("ratio", 2, 2.0),
        ("mode", "slow", "slow"),
        ("range", "5,6", (5, 6)),
        ("quiet", True, True),
        ("host", ["b, c", "d"], ["b", "c", "d"]),
    ],
)
def test_values_from_a_configuration_file(key, raw, expected):
    value = by_key()[key].from_toml(raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "key, raw, message",
    [
        ("count", True, "expected an integer, got true"),
        ("count", 1.5, "expected an integer, got 1.5"),
        ("ratio", "2", 'expected a number, got "2"'),
        ("mode", 1, "expected a string, got 1"),
        ("range", [5, 6], "expected a string, got [5, 6]"),
        ("quiet", "yes", 'expected true or false, got "yes"'),
        ("host", "b", 'expected an array of strings, got "b"'),
        ("host", [1], "expected an array of strings, got [1]"),
    ],
)
def test_wrong_types_in_a_configuration_file(key, raw, message):
    with pytest.raises(ValueError) as info:
        by_key()[key].from_toml(raw)
    assert str(info.value) == message


def test_example_lines_show_the_defaults():
    keys = by_key()
    assert keys["count"].toml_lines() == {"count": "count = 5"}
    assert keys["range"].toml_lines() == {"range": 'range = "1,2"'}
    assert keys["quiet"].toml_lines() == {"quiet": "quiet = true"}
    assert keys["host"].toml_lines() == {"host": 'host = ["a"]', "no-host": "no-host = true"}
    code_only = next(s for s in declared(Example) if s.flag is None)
    assert code_only.toml_lines() == {}


def test_get_and_assign_go_through_every_field_of_a_setting():
    keys = by_key()
    config = Example(low=3, high=4, quiet=True, inner=Inner(size=20))
    assert keys["range"].get(config) == (3, 4)
    assert keys["quiet"].get(config) is True  # a switch: whether it is on
    assert keys["quiet"].get(Example()) is False
    assert keys["size"].get(config) == 20
    arguments: dict = {}
    keys["range"].assign(arguments, (8, 9))
    keys["quiet"].assign(arguments, True)
    keys["size"].assign(arguments, 30)
    assert arguments == {"low": 8, "high": 9, "quiet": True, "inner": {"size": 30}}
    arguments["inner"] = Inner(**arguments["inner"])
    assert dataclasses.replace(Example(), **arguments).inner.size == 30
    keys["quiet"].assign(arguments, False)
    assert arguments["quiet"] is False


def test_check_runs_the_declared_checks_and_invalid_setting_names_the_fields():
    keys = by_key()
    keys["mode"].check("fast")
    with pytest.raises(ValueError, match="must be one of fast, slow"):
        keys["mode"].check("medium")
    error = InvalidSetting(keys["range"], "must be ordered, got (4, 3)")
    assert str(error) == "low and high must be ordered, got (4, 3)"
    assert error.setting is keys["range"] and error.reason == "must be ordered, got (4, 3)"
    assert isinstance(error, ValueError)
