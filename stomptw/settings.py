"""
How a setting is declared: once, on its dataclass field, with everything the
command line and a configuration file need to set it (flag, help text,
parser, checks). :mod:`stomptw.config` declares the broker's settings with
these helpers; :mod:`stomptw.tap` and :mod:`stomptw.configfile` read them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Check",
    "InvalidSetting",
    "LIST",
    "SWITCH",
    "SWITCH_SETTING",
    "Setting",
    "VALUE",
    "at_least",
    "declared",
    "nested",
    "nested_classes",
    "non_negative",
    "one_of",
    "part_of",
    "positive",
    "repeatable",
    "setting",
    "switch",
    "toml_value",
]

#: The key of a field's declaration in its :func:`dataclasses.field` metadata.
_KEY = "stomptw.setting"

#: :attr:`Setting.kind` values.
VALUE, SWITCH, LIST = "value", "switch", "list"

#: A validation: returns if the value is acceptable, raises :class:`ValueError`
#: with the reason ("must be positive, got -1") if not.
Check = Callable[[Any], None]


# -- validations ----------------------------------------------------------------------


def positive(value: float) -> None:
    """Refuse zero and negative numbers."""
    if value <= 0:
        raise ValueError(f"must be positive, got {value!r}")


def non_negative(value: float) -> None:
    """Refuse negative numbers."""
    if value < 0:
        raise ValueError(f"must not be negative, got {value!r}")


def at_least(minimum: float, reason: str = "") -> Check:
    """A check refusing numbers below ``minimum`` (with ``reason`` as the message)."""

    def check(value: float) -> None:
        if value < minimum:
            raise ValueError(f"{reason or f'must be at least {minimum}'}, got {value!r}")

    return check


def one_of(*choices: str) -> Check:
    """A check refusing anything but ``choices``."""

    def check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")

    return check


# -- declarations ---------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """``value`` as it is written in TOML (for examples and error messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # TOML's basic strings escape as JSON does
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return repr(value)


@dataclass(frozen=True)
class Setting:
    """
    One setting as the command line and the configuration file know it.

    Declared on a :class:`BrokerConfig` field with :func:`setting`,
    :func:`switch`, :func:`repeatable`, :func:`nested` (and :func:`part_of`);
    :func:`settings` returns the declarations bound to their fields.

    :ivar flag: the command-line flag, such as ``"--max-connections"``; None
        for a field only code sets.
    :ivar help: what the setting does, for ``--help`` and the reference.
    :ivar kind: ``"value"`` (a value for one or more fields), ``"switch"``
        (a flag that turns the field's default around) or ``"list"`` (a
        repeatable option; each occurrence adds to the list).
    :ivar parse: reads the command-line text of a value that is not a plain
        ``int``, ``float`` or ``str`` (which the default's type reads).
    :ivar checks: validations of the value (see :data:`Check`).
    :ivar off: for a list, the flag that empties it (``"--no-tcp"``).
    :ivar off_help: what ``off`` does.
    :ivar split: for a list, the separator of several items in one occurrence.
    :ivar metavar: what the value is called in the reference.
    :ivar fields: the fields it sets, dotted for fields of a nested object
        (``"limits.max_frame_size"``); bound by :func:`settings`.
    :ivar default: the field's default (a tuple for several fields); bound by
        :func:`settings`.
    """

    flag: str | None
    help: str
    kind: str = VALUE
    parse: Callable[[str], Any] | None = None
    checks: tuple[Check, ...] = ()
    off: str | None = None
    off_help: str = ""
    split: str | None = None
    metavar: str = "VALUE"
    fields: tuple[str, ...] = ()
    default: Any = None

    @property
    def key(self) -> str | None:
        """The long option name without dashes: its name in ``Options`` and its TOML key."""
        return self.flag[2:] if self.flag else None

    @property
    def off_key(self) -> str | None:
        """``off`` without dashes, if there is one."""
        return self.off[2:] if self.off else None

    @property
    def expected(self) -> str:
        """What a value in the configuration file has to be, for errors."""
        if self.kind == SWITCH:
            return "true or false"
        if self.kind == LIST:
            return "an array of strings"
        if self.parse is not None or isinstance(self.default, str):
            return "a string"
        return "an integer" if isinstance(self.default, int) else "a number"

    def text(self, value: Any) -> str:
        """``value`` spelled as on the command line (``1000,1000`` for a pair)."""
        if isinstance(value, tuple):
            return ",".join(str(part) for part in value)
        return str(value)

    def from_text(self, text: str) -> Any:
        """
        The value of one command-line occurrence (for a list, the items it
        adds). Raises :class:`ValueError` saying what was expected.
        """
        if self.kind == LIST:
            if self.split is None:
                return [text]
            return [item.strip() for item in text.split(self.split) if item.strip()]
        if self.parse is not None:
            return self.parse(text)
        if isinstance(self.default, str):
            return text
        wanted = int if isinstance(self.default, int) else float
        try:
            return wanted(text)
        except ValueError:
            raise ValueError(f"expected {self.expected}, got {text!r}") from None

    def from_toml(self, raw: Any) -> Any:
        """
        The value of this setting's key in a configuration file. Raises
        :class:`ValueError` if it has the wrong type.
        """
        if self.kind == SWITCH:
            if isinstance(raw, bool):
                return raw
        elif self.kind == LIST:
            if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
                return [item for text in raw for item in self.from_text(text)]
        elif self.parse is not None or isinstance(self.default, str):
            if isinstance(raw, str):
                return self.from_text(raw)
        elif isinstance(raw, bool):
            pass  # TOML's booleans are no numbers, though Python's are ints
        elif isinstance(self.default, float):
            if isinstance(raw, int | float):
                return float(raw)
        elif isinstance(raw, int):
            return raw
        raise ValueError(f"expected {self.expected}, got {toml_value(raw)}")

    def toml_lines(self) -> dict[str, str]:
        """Keys to an example line for the configuration file (the defaults)."""
        if not self.key:
            return {}
        if self.kind == SWITCH:
            lines = {self.key: f"{self.key} = true"}
        elif self.parse is not None:
            lines = {self.key: f"{self.key} = {toml_value(self.text(self.default))}"}
        else:
            lines = {self.key: f"{self.key} = {toml_value(self.default)}"}
        if self.off_key:
            lines[self.off_key] = f"{self.off_key} = true"
        return lines

    def check(self, value: Any) -> None:
        """Run the validations; raises :class:`ValueError` with the reason."""
        for check in self.checks:
            check(value)

    def get(self, config: Any) -> Any:
        """This setting's value in ``config`` (for a switch: whether it is on)."""
        values = []
        for path in self.fields:
            target = config
            for name in path.split("."):
                target = getattr(target, name)
            values.append(target)
        value = tuple(values) if len(values) > 1 else values[0]
        return value != self.default if self.kind == SWITCH else value

    def assign(self, arguments: dict[str, Any], value: Any) -> None:
        """
        Put ``value`` into ``arguments``, keyword arguments of
        :class:`BrokerConfig` (a nested object's arguments as a dict).
        """
        if self.kind == SWITCH:
            value = not self.default if value else self.default
        parts = value if len(self.fields) > 1 else (value,)
        for path, part in zip(self.fields, parts, strict=True):
            *outer, name = path.split(".")
            target = arguments
            for step in outer:
                target = target.setdefault(step, {})
            target[name] = part


@dataclass(frozen=True)
class _Nested:
    """The declaration of a field holding an object whose fields are settings."""

    cls: type
    settings: dict[str, Setting]


@dataclass(frozen=True)
class _PartOf:
    """The declaration of a field set by another field's setting."""

    flag: str


#: How an ``off`` key (``no-tcp = true``) is read from a file.
SWITCH_SETTING = Setting(None, "", kind=SWITCH)


def _field(default: Any, declaration: object) -> Any:
    metadata = {_KEY: declaration}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def setting(
    default: Any,
    flag: str | None,
    help: str,
    *,
    parse: Callable[[str], Any] | None = None,
    checks: Iterable[Check] = (),
    metavar: str = "VALUE",
) -> Any:
    """
    A :class:`BrokerConfig` field with a value set by ``flag`` (None: a field
    only code sets, explicitly not on the command line or in the file);
    ``metavar`` is what the reference calls its value (``SECONDS``, ``FILE``).
    """
    declaration = Setting(flag, help, parse=parse, checks=tuple(checks), metavar=metavar)
    return _field(default, declaration)


def switch(default: bool, flag: str, help: str) -> Any:
    """A boolean field whose ``flag`` turns its default around."""
    return _field(default, Setting(flag, help, kind=SWITCH))


def repeatable(
    default: list[str],
    flag: str,
    help: str,
    *,
    off: str | None = None,
    off_help: str = "",
    split: str | None = None,
    metavar: str = "VALUE",
    checks: Iterable[Check] = (),
) -> Any:
    """
    A list field: each ``flag`` adds to it (``split`` separates several items
    in one), replacing the default; ``off`` empties it. ``--help`` adds
    "(repeatable; default ...)" to ``help``. ``checks`` see the whole list.
    """
    declaration = Setting(
        flag,
        help,
        kind=LIST,
        off=off,
        off_help=off_help,
        split=split,
        metavar=metavar,
        checks=tuple(checks),
    )
    return _field(default, declaration)


def nested(cls: type, **declarations: Setting) -> Any:
    """A field holding a ``cls`` whose fields are set by ``declarations`` (by name)."""
    return field(default_factory=cls, metadata={_KEY: _Nested(cls, declarations)})


def part_of(flag: str, default: Any) -> Any:
    """A field set, together with the one that declares ``flag``, by that setting."""
    return _field(default, _PartOf(flag))


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


class InvalidSetting(ValueError):
    """
    :class:`BrokerConfig` refuses a value.

    :ivar setting: the :class:`Setting` of the field.
    :ivar reason: what is wrong (``"must be positive, got 0"``).
    """

    def __init__(self, setting: Setting, reason: str) -> None:
        super().__init__(f"{' and '.join(setting.fields)} {reason}")
        self.setting = setting
        self.reason = reason


def declared(cls: type) -> tuple[Setting, ...]:
    """
    Every declared setting of the dataclass ``cls``, in field order, with
    its fields and defaults bound. Fields with no declaration are left out.
    """
    fields = dataclasses.fields(cls)
    parts: dict[str, list[dataclasses.Field]] = {}
    for f in fields:
        declaration = f.metadata.get(_KEY)
        if isinstance(declaration, _PartOf):
            parts.setdefault(declaration.flag, []).append(f)
    found: list[Setting] = []
    for f in fields:
        declaration = f.metadata.get(_KEY)
        if isinstance(declaration, Setting):
            group = [f, *parts.pop(declaration.flag, [])]
            defaults = tuple(_default(member) for member in group)
            found.append(
                dataclasses.replace(
                    declaration,
                    fields=tuple(member.name for member in group),
                    default=defaults if len(group) > 1 else defaults[0],
                )
            )
        elif isinstance(declaration, _Nested):
            for inner in dataclasses.fields(declaration.cls):
                if inner.name in declaration.settings:
                    found.append(
                        dataclasses.replace(
                            declaration.settings[inner.name],
                            fields=(f"{f.name}.{inner.name}",),
                            default=_default(inner),
                        )
                    )
    if parts:
        raise TypeError(f"part_of() names flags that no field declares: {sorted(parts)}")
    return tuple(found)


def nested_classes(cls: type) -> dict[str, type]:
    """The fields of ``cls`` declared with :func:`nested`, and their dataclasses."""
    found = {}
    for f in dataclasses.fields(cls):
        declaration = f.metadata.get(_KEY)
        if isinstance(declaration, _Nested):
            found[f.name] = declaration.cls
    return found
