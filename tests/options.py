"""
Helpers for the tests of the settings: ``twistd stomptw``'s options parsed
(:class:`~stomptw.tap.Options`), configuration files written, and the usage
errors they give.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from stomptw.config import settings
from stomptw.tap import Options

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
