"""
``stomptw-store check`` and ``salvage``, and what the broker says about a
store it cannot open: a truncated store, random bytes, a sound one.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from stomptw.store import DB_NAME, SQLiteStore, StoredMessage
from stomptw.storecli import main

ROOT = Path(__file__).resolve().parent.parent


async def _store_with(directory: Path, count: int, body: bytes = b"x" * 2000) -> None:
    store = SQLiteStore(str(directory), reactor, "normal")
    store.load()
    for key in range(1, count + 1):
        store.put(
            StoredMessage(key, "/queue/q", f"m-{key}", "/queue/q", {"n": str(key)}, body, 0, 0)
        )
    store.put_subscription("durable:app/d", "app", "d", "/topic/t")
    await store.sync()
    await store.close()


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()


@pytest_twisted.ensureDeferred
async def test_check_and_salvage_a_sound_store_copy_everything(tmp_path):
    await _store_with(tmp_path / "data", 50)
    assert run("check", str(tmp_path / "data")) == (
        0,
        f"{tmp_path / 'data' / DB_NAME}: sound; 50 message(s), 1 durable subscription(s)\n",
    )
    status, text = run("salvage", str(tmp_path / "data"), str(tmp_path / "new"))
    assert status == 0 and text.startswith("salvaged 50 message(s) and 1 durable subscription(s)")
    store = SQLiteStore(str(tmp_path / "new"), reactor, "normal")
    state = store.load()
    try:
        assert [m.key for m in state.messages] == list(range(1, 51))
        assert state.subscriptions == {"durable:app/d": ("app", "d", "/topic/t")}
        assert not state.unclean
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_store_with_damaged_pages_gives_back_what_is_readable(tmp_path):
    await _store_with(tmp_path / "data", 400)
    path = tmp_path / "data" / DB_NAME
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)
    size = path.stat().st_size
    with path.open("r+b") as f:  # three pages in the middle overwritten
        f.seek(size // 2 // 4096 * 4096)
        f.write(random.Random(7).randbytes(3 * 4096))
    status, text = run("check", str(tmp_path / "data"))
    assert status == 1 and "damaged" in text
    status, text = run("salvage", str(tmp_path / "data"), str(tmp_path / "new"))
    assert status == 0, text
    salvaged = int(text.split()[1])
    assert 300 < salvaged < 400, text
    store = SQLiteStore(str(tmp_path / "new"), reactor, "normal")
    try:
        state = store.load()
        assert len(state.messages) == salvaged
        assert all(m.body == b"x" * 2000 and m.headers["n"] == str(m.key) for m in state.messages)
    finally:
        await store.close()


def test_random_bytes_salvage_nothing_and_the_broker_says_what_to_do(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / DB_NAME).write_bytes(os.urandom(20000))
    status, text = run("salvage", str(data), str(tmp_path / "new"))
    assert status == 1 and text.startswith("salvaged 0 message(s)")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    result = subprocess.run(
        [twistd, "-n", "--pidfile=", "stomptw", "--data-dir", str(data)]
        + ["--tcp", "tcp:0:interface=127.0.0.1", "--ws", "tcp:0:interface=127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "stomptw-store salvage" in output and "--data-dir" in output
