"""
Writes that fail: a full disk or an I/O error while the broker runs.

The persistent SENDs whose write failed get an ERROR and never a RECEIPT;
the broker serves everything else; once writes work again it catches up by
itself (the failed writes are retried, so the store ends up as the broker's
memory is), and nothing that got a RECEIPT is lost.

Three levels: the SQLite store with an I/O error injected into its commit
(real SQLite, real reactor); a broker on a Clock whose store fails through
the store interface; and a real ``twistd -n stomptw`` whose data directory is
a small tmpfs that the test fills up (as root only, where mounting works).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from clients import ConnectionClosed, RawStompSocket
from fakes import stored
from test_durability import brokers  # noqa: F401 (a fixture)
from test_store import rows
from twisted.internet import defer, reactor
from zope.interface import implementer

from stomptw import store as store_module
from stomptw.interfaces import IMessageStore
from stomptw.store import MemoryStore, SQLiteStore, StoreError
from stomptw.testing import BrokerOnClock

# -- the SQLite store ---------------------------------------------------------------------


class FailingCommits:
    """Wraps a store's commit: the next ``failures`` commits fail as a full disk does."""

    def __init__(self, store: SQLiteStore, failures: int) -> None:
        self.commit = store._commit
        self.failures = failures
        store._commit = self

    def __call__(self, batch) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        self.commit(batch)


@pytest.fixture
def fast_retry(monkeypatch):
    monkeypatch.setattr(store_module, "RETRY_SECONDS", 0.05)


@pytest_twisted.ensureDeferred
async def test_a_failed_commit_is_retried_and_the_store_catches_up(tmp_path, fast_retry):
    store = SQLiteStore(str(tmp_path), reactor)
    store.load()
    try:
        store.put(stored(1))
        store.put(stored(2))
        await store.sync()
        FailingCommits(store, failures=2)
        store.put(stored(3))
        store.remove(1)
        store.set_delivery_count(2, 4)
        with pytest.raises(StoreError, match="database or disk is full"):
            await store.sync()
        assert store.failing == "database or disk is full"
        assert store.stats()["failed_commits"] == 1
        # Meanwhile the broker goes on: a later message, and a removal of the
        # message whose write failed, join the writes kept for the retry.
        store.put(stored(4))
        store.put(stored(5))
        store.remove(5)
        with pytest.raises(StoreError):
            await store.sync()  # the retry fails too
        await store.sync()  # and the next one works
        assert store.failing is None
        assert store.stats()["failed_commits"] == 0
        assert rows(tmp_path) == [(2, "/queue/a", 4), (3, "/queue/a", 0), (4, "/queue/a", 0)]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_that_cannot_be_written_is_not_retried_forever(tmp_path, fast_retry):
    store = SQLiteStore(str(tmp_path), reactor)
    store.load()
    try:
        store.put(stored(1, headers={"bad": object()}))  # not JSON: a bug, not the disk
        with pytest.raises(StoreError):
            await store.sync()
        store.put(stored(2))
        await store.sync()
        assert rows(tmp_path) == [(2, "/queue/a", 0)]
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_closing_while_writes_fail_tries_once_more_and_keeps_the_crash_mark(
    tmp_path, fast_retry
):
    store = SQLiteStore(str(tmp_path), reactor)
    store.load()
    FailingCommits(store, failures=1)
    store.put(stored(1))
    with pytest.raises(StoreError):
        await store.sync()
    await store.close()  # the last try works
    assert rows(tmp_path) == [(1, "/queue/a", 0)]
    assert not SQLiteStore(str(tmp_path), reactor).load().unclean


# -- the broker, through the store interface ------------------------------------------------


@implementer(IMessageStore)
class BrokenDisk(MemoryStore):
    """A memory store whose commits fail while ``broken`` is set."""

    durable = True

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.failing: str | None = None

    def sync(self) -> defer.Deferred:
        if self.broken:
            self.failing = "disk I/O error"
            return defer.fail(StoreError("message store commit failed: disk I/O error"))
        self.failing = None
        return defer.succeed(None)


def test_the_sender_of_a_message_that_was_not_stored_gets_an_error_and_others_go_on():
    disk = BrokenDisk()
    env = BrokerOnClock(store=disk)
    consumer = env.connect()
    consumer.send("SUBSCRIBE", destination="/queue/q", id="1", ack="client-individual")
    producer = env.connect()
    producer.send("SEND", b"kept", destination="/queue/q", persistent="true", receipt="r1")
    assert producer.frame().headers["receipt-id"] == "r1"
    disk.broken = True
    bystander = env.connect()
    producer.send("SEND", b"lost?", destination="/queue/q", persistent="true", receipt="r2")
    (error,) = producer.frames()
    assert error.command == "ERROR"
    assert error.headers["receipt-id"] == "r2"
    assert error.headers["message"] == "message could not be stored"
    assert "disk I/O error" in error.body.decode()
    assert producer.transport.disconnecting
    # Everyone else is served: non-persistent messages, consumers, ACKs.
    bystander.send("SEND", b"light", destination="/queue/q", receipt="b1")
    assert bystander.frame().headers["receipt-id"] == "b1"
    bodies = [f.body for f in consumer.frames()]
    assert bodies[0] == b"kept" and b"light" in bodies
    # Writes work again: persistent SENDs are receipted again.
    disk.broken = False
    again = env.connect()
    again.send("SEND", b"later", destination="/queue/q", persistent="true", receipt="r3")
    assert again.frame().headers["receipt-id"] == "r3"


# -- a real full file system ----------------------------------------------------------------


def can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or not sys.platform.startswith("linux") or not shutil.which("mount"):
        return False
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    if not can_mount_tmpfs(where):
        pytest.skip("needs root and tmpfs mounts to make a real full file system")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> Path:
    """Take every free byte of ``directory``'s file system; return the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)

        except OSError:
            pass
        try:
            while True:
                f.write(b"\0" * 512)

        except OSError:
            pass
    return filler


def send_persistent(port: int, queue: str, bodies: list[bytes]) -> tuple[list[bytes], str]:
    """Send ``bodies`` persistently, each with a receipt: the receipted ones and any ERROR."""
    client = RawStompSocket(port)
    client.connect()
    receipted: list[bytes] = []
    error = ""
    try:
        for body in bodies:
            receipt = uuid.uuid4().hex
            client.send(
                "SEND", {"destination": queue, "persistent": "true", "receipt": receipt}, body
            )
            frame = client.read_frame()
            if frame.command == "ERROR":
                assert frame.headers["receipt-id"] == receipt, frame
                error = frame.headers["message"] + ": " + frame.body.decode()
                break
            assert frame.headers["receipt-id"] == receipt
            receipted.append(body)
    except ConnectionClosed:
        error = error or "closed"
    client.sock.close()
    return receipted, error


def drain(port: int, queue: str, wanted: list[bytes]) -> list[bytes]:
    """Consume from ``queue`` until every one of ``wanted`` came (or no frame comes)."""
    client = RawStompSocket(port)
    client.connect()
    client.send("SUBSCRIBE", {"destination": queue, "id": "1", "ack": "auto"})
    bodies: list[bytes] = []
    missing = set(wanted)
    while missing:
        body = client.read_frame().body
        bodies.append(body)
        missing.discard(body)
    client.send("DISCONNECT", {"receipt": "bye"})
    client.read_frame()
    client.sock.close()
    return bodies


def test_a_full_file_system_errors_persistent_sends_and_the_broker_recovers_by_itself(
    brokers,  # noqa: F811 (the fixture imported above)
    small_disk,
):
    queue = "/queue/full-" + uuid.uuid4().hex[:8]
    broker = brokers.start("--disk-free-limit", "0", data_dir=small_disk / "data")
    body = b"x" * 16384
    before, error = send_persistent(
        broker.port, queue, [b"before-%d" % i + body for i in range(20)]
    )
    assert error == "" and len(before) == 20
    filler = fill(small_disk)
    # The disk is full: some SEND's write fails, its sender gets an ERROR.
    during, error = send_persistent(
        broker.port, queue, [b"during-%d" % i + body for i in range(400)]
    )
    assert error.startswith("message could not be stored"), (error, len(during))
    assert "full" in error
    assert "message store commit failed" in broker.runner.logs()
    # Other traffic goes on meanwhile.
    light = RawStompSocket(broker.port)
    light.connect()
    light.send("SEND", {"destination": queue + "-light", "receipt": "l"}, b"light")
    assert light.read_frame().headers["receipt-id"] == "l"
    light.sock.close()
    # Space comes back: the broker catches up without being restarted.
    filler.unlink()
    after, error = send_persistent(broker.port, queue, [b"after-%d" % i + body for i in range(5)])
    assert error == "" and len(after) == 5, error
    assert "message store writes succeed again" in broker.runner.logs()
    # Nothing that got a RECEIPT is lost, across a crash too.
    broker.kill9()
    broker = brokers.start("--disk-free-limit", "0", data_dir=small_disk / "data")
    receipted = before + during + after
    got = drain(broker.port, queue, receipted)
    assert set(receipted) <= set(got)
    assert len(got) == len(set(got))
    assert "Traceback" not in brokers.logs(100_000)
