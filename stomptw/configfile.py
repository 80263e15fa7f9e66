"""
A :class:`~stomptw.config.BrokerConfig` from where settings are given: a
TOML configuration file (``--config FILE``) and the command line, the later
overriding the earlier; errors name the option, or the file and the key.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stomptw.config import BrokerConfig, settings
from stomptw.settings import SWITCH_SETTING, InvalidSetting, Setting, nested_classes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "SettingValues", "config_from_values", "load_config_file", "origin_of"]


class ConfigError(ValueError):
    """A setting given on the command line or in a file is unusable; the message says where."""


@dataclass
class SettingValues:
    """
    Settings given in one place: values (as :meth:`Setting.from_text` or
    :meth:`Setting.from_toml` return them) by :attr:`Setting.key`.

    :ivar origin: the configuration file they come from; None for the
        command line.
    """

    values: dict[str, Any]
    origin: str | None = None

    def where(self, key: str) -> str:
        """How errors name ``key`` from here: ``--key``, or ``FILE: key``."""
        return f"{self.origin}: {key}" if self.origin else f"--{key}"


def origin_of(key: str | None, *sources: SettingValues) -> str:
    """How errors name setting ``key``: from the last of ``sources`` that gives it."""
    for source in reversed(sources):
        if key in source.values:
            return source.where(key)
    return f"--{key}"


def config_from_values(*sources: SettingValues) -> BrokerConfig:
    """
    A :class:`BrokerConfig` from settings given in several places, each
    overriding the ones before it (a configuration file, then the command
    line); fields given nowhere keep their defaults. Raises
    :class:`ConfigError` naming the option (or file and key) of a bad value.
    """
    by_key = {s.key: s for s in settings() if s.key}
    chosen: dict[str, Any] = {}
    for source in sources:
        for key, value in source.values.items():
            if key not in by_key:
                raise ConfigError(f"{source.where(key)}: no such setting")
            chosen[key] = value
    arguments: dict[str, Any] = {}
    for key, value in chosen.items():
        try:
            by_key[key].check(value)
        except ValueError as e:
            raise ConfigError(f"{origin_of(key, *sources)}: {e}") from None
        by_key[key].assign(arguments, value)
    for name, cls in nested_classes(BrokerConfig).items():
        if name in arguments:
            arguments[name] = cls(**arguments[name])
    try:
        return BrokerConfig(**arguments)
    except InvalidSetting as e:
        raise ConfigError(f"{origin_of(e.setting.key, *sources)}: {e.reason}") from None


def _suggestion(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'max-connections'?)`` for a field name or a near miss."""
    by_field = {path.rsplit(".", 1)[-1]: s.key for s in settings() if s.key for path in s.fields}
    guess = by_field.get(key.lstrip("-").replace("-", "_"))
    if guess is None:
        close = difflib.get_close_matches(key.lstrip("-"), list(known), n=1)
        guess = close[0] if close else None
    return f" (did you mean {guess!r}?)" if guess else ""


def load_config_file(path: str) -> SettingValues:
    """
    Read a TOML configuration file: its keys are the long option names of
    ``twistd stomptw`` without the dashes (``max-connections = 100``,
    ``tcp = ["tcp:61613"]``, ``no-examples = true``). Raises
    :class:`ConfigError` naming the file (and the key) if it cannot be read,
    is not TOML, has an unknown key, or a value of the wrong type.
    """
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read the configuration file {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not a valid TOML file: {e}") from None
    keys: dict[str, Setting] = {}
    for s in settings():
        for key in filter(None, (s.key, s.off_key)):
            keys[key] = s
    values: dict[str, Any] = {}
    for key, raw in document.items():
        s = keys.get(key)
        if s is None:
            raise ConfigError(f"{path}: unknown key {key!r}{_suggestion(key, keys)}")
        try:
            value = s.from_toml(raw) if key == s.key else SWITCH_SETTING.from_toml(raw)
        except ValueError as e:
            raise ConfigError(f"{path}: {key}: {e}") from None
        if key == s.key:
            values[key] = value
        elif value and s.key in document:
            raise ConfigError(f"{path}: {key} and {s.key} contradict each other")
        elif value:
            values[s.key] = []
    return SettingValues(values, path)
