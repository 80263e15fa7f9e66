"""
Chaos in CI: SIGKILL a real ``twistd -n stomptw`` broker (SQLite store, the
default) at bad moments, restart it on the same data directory and check
exactly what docs/delivery.md promises:

* a ``persistent:true`` message whose RECEIPT arrived (or whose
  transaction's COMMIT RECEIPT arrived) is delivered after the restart;
* a transaction's persistent messages go into the store in one commit:
  after a crash all of them are there or none;
* a message that was delivered but not acknowledged is delivered again,
  marked ``redelivered:true`` with ``x-delivery-count`` at least 1 (after a
  crash every restored message is marked so);
* an ``ACK``'s RECEIPT does not wait for the store, so an acknowledged
  message may come back after a crash (marked redelivered). It may not
  come back once a later persistent SEND on the same connection was
  RECEIPTed: that RECEIPT is sent only once the store committed, and the
  acknowledgement's removal went into that commit or an earlier one
  ("removes the message from the store in the next commit").
* duplicates only ever carry ``redelivered:true``; restored messages keep
  their original order.

Each scenario runs a few iterations on one chain of brokers (each restart
serves the next iteration, on new destinations), with the kill moment drawn
from a seeded random generator. The seed is fixed (``STOMPTW_CHAOS_SEED``
overrides it to explore, ``STOMPTW_CHAOS_ITERATIONS`` runs more
iterations) and every assertion message names it, the iteration and the
kill plan, so a failure can be replayed. Each iteration also prints its
plan, where the kill landed and what survived (``pytest -s``, or shown
with a failure).

The broker processes, the raw-socket clients and the helpers
(:class:`BrokerRunner`, :class:`FrameCollector`, :func:`write_windowed`,
:func:`publish`) are those of ``test_durability``. Nothing sleeps to let
something happen: frames, exits and ports are awaited with deadlines that
only bound a failure. The only deliberate pauses are the randomised kill
delays themselves (a few milliseconds, busy-waited).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clients import TIMEOUT, ConnectionClosed, RawFrame, RawStompSocket, encode_frame, unique
from test_durability import (
    BrokerProcess,
    BrokerRunner,
    FrameCollector,
    describe,
    publish,
    send_frame,
    write_windowed,
)

#: The seed every kill plan is drawn from; fixed so that CI is repeatable.
SEED = int(os.environ.get("STOMPTW_CHAOS_SEED", "20240611"))
#: Iterations per scenario (each one a kill and a restart); more to explore.
ITERATIONS = int(os.environ.get("STOMPTW_CHAOS_ITERATIONS", "3"))


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[BrokerRunner]:
    """A :class:`BrokerRunner` for the test; every broker it started is killed afterwards."""
    runner = BrokerRunner(tmp_path)
    try:
        yield runner
    finally:
        runner.close()


def plan_rng(scenario: str, iteration: int) -> random.Random:
    """The random generator of one iteration: the same plan for the same seed."""
    return random.Random(f"{SEED}/{scenario}/{iteration}")


def spin(seconds: float) -> None:
    """Busy-wait ``seconds`` (a kill delay of a few ms: ``time.sleep`` is too coarse)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class Killer:
    """
    SIGKILLs one broker exactly once, from whichever thread decides first,
    and remembers why (for the assertion messages).
    """

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.reason: str | None = None
        self._lock = threading.Lock()

    def kill(self, reason: str) -> bool:
        """Kill now unless already done; True if this call killed."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason = reason
            # Only the test's main thread reaps the process (wait_exit), after
            # the kill: the pid cannot have been reused yet.
            os.kill(self.broker.pid, signal.SIGKILL)
            return True

    def reap(self) -> None:
        """Wait for the killed broker to be gone; it must have died of SIGKILL."""
        assert self.reason is not None, "the broker was never killed"
        status = self.broker.wait_exit()
        assert status == -signal.SIGKILL, (status, self.reason, self.broker.runner.logs())


class Chain:
    """
    One broker at a time on the test's data directory: :meth:`restart` reaps
    the killed one and starts the next, which serves the next iteration too.
    """

    def __init__(self, runner: BrokerRunner) -> None:
        self.runner = runner
        self.broker = runner.start()

    def killer(self) -> Killer:
        return Killer(self.broker)

    def restart(self, killer: Killer) -> BrokerProcess:
        killer.reap()
        self.broker = self.runner.start()
        return self.broker


def context(scenario: str, iteration: int, plan: str) -> str:
    """The replay line every assertion message starts with."""
    return f"[chaos seed={SEED} scenario={scenario} iteration={iteration}: {plan}]"


class FileWatch(threading.Thread):
    """
    Kills the broker while SQLite writes ``path``: on the ``nth`` burst of
    changes to the file (its size or mtime; bursts are apart by at least
    ``quiet`` seconds without a change), wait ``delay`` and kill.

    Polling the file is the only way to see SQLite at work from outside.
    The main database file is written only by WAL checkpoints (one takes a
    few ms here); the ``-wal`` file by every commit.
    """

    def __init__(
        self, path: Path, killer: Killer, nth: int, delay: float, what: str, quiet: float = 0.005
    ) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.killer = killer
        self.nth = nth
        self.delay = delay
        self.what = what
        self.quiet = quiet
        self.stopped = threading.Event()
        #: Taken now: changes from this moment on count.
        self.baseline = self._stat()

    def _stat(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (-1, 0)
        return st.st_size, st.st_mtime_ns

    def run(self) -> None:
        last = self.baseline
        bursts = 0
        changed_at = float("-inf")
        deadline = time.monotonic() + TIMEOUT * 4
        while not self.stopped.is_set() and time.monotonic() < deadline:
            current = self._stat()
            now = time.monotonic()
            if current != last:
                if now - changed_at >= self.quiet:
                    bursts += 1
                    if bursts == self.nth:
                        spin(self.delay)
                        self.killer.kill(
                            f"{self.delay * 1000:.2f} ms into {self.what} {self.nth} "
                            f"({self.path.name} {last[0]} -> {current[0]} bytes)"
                        )
                        return
                changed_at = now
                last = current
            time.sleep(0.0002)

    def finish(self) -> None:
        self.stopped.set()
        self.join(TIMEOUT)


# -- reading what survived ---------------------------------------------------------------


def read_until(
    raw: RawStompSocket, done: Callable[[RawFrame], bool]
) -> tuple[list[RawFrame], list[str]]:
    """
    Read frames until ``done(frame)`` is true for a MESSAGE; return the
    MESSAGEs (the last one included) and the receipt ids seen. An ERROR
    fails the test.
    """
    messages: list[RawFrame] = []
    receipts: list[str] = []
    while True:
        frame = raw.read_frame()
        if frame.command == "RECEIPT":
            receipts.append(frame.headers["receipt-id"])
            continue
        assert frame.command == "MESSAGE", frame
        messages.append(frame)
        if done(frame):
            return messages, receipts


def drain_queue(port: int, destination: str) -> list[RawFrame]:
    """
    Everything ``destination`` holds, consumed (``ack:auto``) on a raw
    socket, in arrival order. An end marker sent first queues behind every
    message already there, so "everything" needs no waiting for silence.
    """
    raw = RawStompSocket(port)
    try:
        raw.connect()
        end = unique("end").encode()
        raw.send("SEND", {"destination": destination, "receipt": "end"}, end)
        frame = raw.read_frame()
        assert (frame.command, frame.headers.get("receipt-id")) == ("RECEIPT", "end"), frame
        raw.send("SUBSCRIBE", {"destination": destination, "id": "drain", "ack": "auto"})
        messages, _ = read_until(raw, lambda f: f.body == end)
        return messages[:-1]
    finally:
        raw.close()


def seqs(frames: list[RawFrame]) -> list[int]:
    return [int(f.headers["seq"]) for f in frames]


def check_restored(frames: list[RawFrame], body: Callable[[int], bytes], where: str) -> None:
    """
    What docs/delivery.md says of messages restored after a crash: each is
    marked ``redelivered:true`` with ``x-delivery-count`` >= 1, has the body
    it was sent with, and they come back in their original order. (So a
    seq seen twice is marked redelivered, as duplicates must be.)
    """
    unmarked = [f for f in frames if f.headers.get("redelivered") != "true"]
    assert not unmarked, f"{where} restored without redelivered:true: {describe(unmarked)[:10]}"
    low = [f for f in frames if int(f.headers.get("x-delivery-count", "0")) < 1]
    assert not low, f"{where} restored with x-delivery-count < 1: {describe(low)[:10]}"
    damaged = [f.headers["seq"] for f in frames if f.body != body(int(f.headers["seq"]))]
    assert not damaged, f"{where} bodies changed: seqs {damaged[:10]}"
    got = seqs(frames)
    assert got == sorted(got), f"{where} not in their original order: {got[:40]}"


def message_body(seq: int) -> bytes:
    """The body :func:`test_durability.send_frame` gives ``seq``."""
    return f"message {seq}".encode()


# -- acknowledgements and store barriers ------------------------------------------------


class AckLedger:
    """
    The ACKs one consumer connection sent, in order, with a store barrier
    (a small persistent SEND asking for a RECEIPT) after every ``every``
    of them.

    A barrier's RECEIPT is sent only once the store committed it, and the
    removals of the ACKs sent before it on the connection went into that
    commit or an earlier one: those messages are gone for good
    (:meth:`settled`). ACKs after the last confirmed barrier may or may not
    have reached the disk.
    """

    def __init__(self, raw: RawStompSocket, barrier_queue: str, every: int, tag: str) -> None:
        self.raw = raw
        self.barrier_queue = barrier_queue
        self.every = every
        self.tag = tag
        #: Seqs acknowledged, in the order the ACKs were written.
        self.sent: list[int] = []
        self.receipts: set[str] = set()
        # Barrier receipt id -> how many ACKs were written before it.
        self._barriers: dict[str, int] = {}

    def ack(self, frame: RawFrame) -> bool:
        """ACK ``frame`` with a receipt (and a barrier if due); False if the write failed."""
        seq = int(frame.headers["seq"])
        data = encode_frame("ACK", {"id": frame.headers["ack"], "receipt": f"{self.tag}-ack-{seq}"})
        # Counted before the write: a half-written ACK may or may not count.
        self.sent.append(seq)
        if len(self.sent) % self.every == 0:
            rid = f"{self.tag}-barrier-{len(self._barriers)}"
            self._barriers[rid] = len(self.sent)
            headers = {"destination": self.barrier_queue, "persistent": "true", "receipt": rid}
            data += encode_frame("SEND", headers, rid.encode())
        try:
            self.raw.send_bytes(data)
        except OSError:
            return False
        return True

    def barrier(self) -> str:
        """Write a barrier now (after the ACKs so far); return its receipt id."""
        rid = f"{self.tag}-barrier-{len(self._barriers)}"
        self._barriers[rid] = len(self.sent)
        headers = {"destination": self.barrier_queue, "persistent": "true", "receipt": rid}
        self.raw.send("SEND", headers, rid.encode())
        return rid

    def settled(self) -> set[int]:
        """Seqs whose ACK preceded a barrier whose RECEIPT arrived."""
        done = [n for rid, n in self._barriers.items() if rid in self.receipts]
        return set(self.sent[: max(done, default=0)])

    def confirmed_barriers(self) -> set[str]:
        return {rid for rid in self._barriers if rid in self.receipts}


def restored_barriers(port: int, barrier_queue: str) -> set[str]:
    """The barrier messages the store kept (their bodies are their receipt ids)."""
    return {f.body.decode() for f in drain_queue(port, barrier_queue)}


# -- 1. kill -9 during a burst of persistent SENDs ---------------------------------------


def test_kill9_during_persistent_send_burst(brokers: BrokerRunner) -> None:
    """
    A client pipelines persistent SENDs, each asking for a RECEIPT, at most
    ``window`` unanswered; the broker is killed at the n-th RECEIPT or as
    the n-th SEND is written. Every RECEIPTed message is delivered after
    the restart; unreceipted ones may be there or not; nothing that was
    never sent appears.
    """
    chain = Chain(brokers)
    for iteration in range(ITERATIONS):
        burst_iteration(chain, iteration)


def burst_iteration(chain: Chain, iteration: int, count: int = 2000) -> None:
    """One kill in a burst of ``count`` persistent SENDs (see the test)."""
    rng = plan_rng("burst", iteration)
    window = rng.choice([50, 200, 500])
    mode = rng.choice(["receipt", "written"])
    at = rng.randint(20, 400) if mode == "receipt" else rng.randint(window + 20, window + 600)
    plan = f"window {window}, kill at the {at}th {'RECEIPT' if mode == 'receipt' else 'SEND'}"
    where = context("burst", iteration, plan)
    destination = "/queue/" + unique("chaos-burst")
    killer = chain.killer()

    def on_receipt(received: int) -> None:
        if mode == "receipt" and received >= at:
            killer.kill(f"after {received} RECEIPTs")

    def frames() -> Iterator[bytes]:
        for seq in range(count):
            if mode == "written" and seq == at:
                killer.kill(f"as SEND {seq} was about to be written")
            yield send_frame(destination, seq)

    raw = RawStompSocket(chain.broker.port)
    try:
        raw.connect()
        reader = FrameCollector(raw, on_receipt=on_receipt)
        reader.start()
        written = write_windowed(raw, reader, frames(), window)
        reader.finish()
    finally:
        raw.close()
    assert killer.reason is not None, f"{where} the stream ended before the kill"
    where += f" ({killer.reason})"
    assert reader.error is None, (where, reader.error)
    assert not reader.others, (where, reader.others)
    # RECEIPTs come in frame order: the receipted messages are a prefix.
    assert reader.receipts == [f"send-{s}" for s in range(len(reader.receipts))], where
    receipted = set(range(len(reader.receipts)))
    assert written < count, f"{where} every SEND was written before the kill"

    broker = chain.restart(killer)
    frames_after = drain_queue(broker.port, destination)
    got = seqs(frames_after)
    lost = receipted - set(got)
    assert not lost, (
        f"{where} {len(lost)} RECEIPTed message(s) lost, e.g. {sorted(lost)[:10]} "
        f"({len(receipted)} receipted, {written} written, {len(got)} restored)\n"
        f"{chain.runner.logs()}"
    )
    assert set(got) <= set(range(written)), f"{where} a message never sent arrived"
    check_restored(frames_after, message_body, where)
    print(where, f"{len(receipted)} receipted, {written} written, {len(got)} restored")


# -- 2. kill -9 during a transaction's COMMIT --------------------------------------------


class Stream(threading.Thread):
    """
    A producer in the background: persistent SENDs with receipts to
    ``destination`` (``frame(destination, seq)`` for seqs ``start`` to
    ``start + count``), ``window`` unanswered at most, until all are
    RECEIPTed or the broker dies (the kill is someone else's). Then
    ``on_done()`` runs, if given.
    """

    def __init__(
        self,
        port: int,
        destination: str,
        window: int = 50,
        frame: Callable[[str, int], bytes] = send_frame,
        start: int = 0,
        count: int = 10**6,
        on_done: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.destination = destination
        self.window = window
        self.frame = frame
        self.start_seq = start
        self.count = count
        self.on_done = on_done
        self.raw = RawStompSocket(port)
        self.raw.connect()
        # Stops reading once all are RECEIPTed, so finish() works on a live broker too.
        self.reader = FrameCollector(self.raw, stop_after=count)
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.reader.start()
            numbers = range(self.start_seq, self.start_seq + self.count)
            frames = (self.frame(self.destination, seq) for seq in numbers)
            self.written = write_windowed(self.raw, self.reader, frames, self.window)
            self.reader.wait_receipts(self.written)
        except BaseException as e:  # reported by finish()
            self.error = e
        finally:
            if self.on_done is not None:
                self.on_done()

    def wait_receipts(self, count: int) -> None:
        """Block until the stream is flowing (``count`` RECEIPTs in)."""
        assert self.reader.wait_receipts(count), "the stream ended early"

    def finish(self) -> set[int]:
        """Once the broker is dead or all are RECEIPTed: the seqs whose RECEIPT arrived."""
        self.join(TIMEOUT * 3)
        assert not self.is_alive(), "stream still running"
        self.reader.finish()
        self.raw.close()
        assert self.error is None, self.error
        assert self.reader.error is None, self.reader.error
        assert not self.reader.others, self.reader.others
        return {int(r.removeprefix("send-")) for r in self.reader.receipts}


def test_kill9_during_transaction_commit(brokers: BrokerRunner) -> None:
    """
    BEGIN, N persistent SENDs split over two queues, COMMIT with a receipt,
    all written at once while another connection keeps the store busy; the
    broker is killed right after the COMMIT is written (at once, after a
    random few milliseconds, or the moment its RECEIPT arrives). After the
    restart the transaction is there whole or not at all, and whole if its
    RECEIPT arrived. The background stream's RECEIPTed messages survive too.
    """
    chain = Chain(brokers)
    # From early to late: the moment the COMMIT is written; as the store
    # starts writing the transaction's batch to the WAL (no background load
    # then, so that write is the transaction's); a few ms later; as the
    # RECEIPT arrives.
    modes = ["written", "wal", "delay", "receipt"] * max(1, ITERATIONS // 3)
    outcomes = [commit_iteration(chain, iteration, mode) for iteration, mode in enumerate(modes)]
    # Killed as the RECEIPT arrived: the transaction was stored.
    assert outcomes[-1] == "all", (SEED, outcomes)


def commit_iteration(chain: Chain, iteration: int, mode: str) -> str:
    """One kill around a COMMIT (see the test); returns ``"all"`` or ``"none"``."""
    rng = plan_rng("commit", iteration)
    n = rng.randint(20, 80)
    # The COMMIT's RECEIPT takes some 2-3 ms here.
    delay = {"delay": rng.uniform(0.001, 0.004), "wal": rng.uniform(0.0, 0.0005)}.get(mode, 0.0)
    plan = f"{n} messages, kill {mode}" + (f" + {delay * 1000:.2f} ms" if delay else "")
    where = context("commit", iteration, plan)
    queues = ["/queue/" + unique(f"chaos-tx{i}") for i in range(2)]
    load_queue = "/queue/" + unique("chaos-load")

    def body(seq: int) -> bytes:
        return message_body(seq) * 20

    killer = chain.killer()
    # In "wal" mode nothing else writes: the first WAL write is the transaction's.
    load = Stream(chain.broker.port, load_queue, count=0 if mode == "wal" else 10**6)
    load.start()
    if mode == "wal":
        # A store barrier: what the broker wrote before (the last drains) is committed.
        publish(chain.broker.port, "/queue/" + unique("chaos-barrier"), [0])
    else:
        load.wait_receipts(100)
    wal = FileWatch(chain.runner.data_dir / "stomptw.sqlite3-wal", killer, 1, delay, "WAL write")
    raw = RawStompSocket(chain.broker.port)
    frames: list[RawFrame] = []
    try:
        raw.connect()
        tx = unique("tx")
        data = encode_frame("BEGIN", {"transaction": tx})
        for seq in range(n):
            headers = {
                "destination": queues[seq % 2],
                "transaction": tx,
                "persistent": "true",
                "seq": str(seq),
            }
            data += encode_frame("SEND", headers, body(seq))
        data += encode_frame("COMMIT", {"transaction": tx, "receipt": "commit"})
        if mode == "wal":
            wal.start()
        raw.send_bytes(data)
        if mode in ("written", "delay"):
            spin(delay)
            killer.kill(f"{delay * 1000:.2f} ms after the COMMIT was written")
        try:
            while True:
                frame = raw.read_frame()
                frames.append(frame)
                if frame.command == "RECEIPT" and mode == "receipt":
                    killer.kill("as the COMMIT's RECEIPT arrived")
        except (ConnectionClosed, OSError):
            pass
    finally:
        raw.close()
        if wal.is_alive():
            wal.finish()
    receipted_load = load.finish()
    assert killer.reason is not None, f"{where} no RECEIPT, no kill: {frames}"
    where += f" ({killer.reason})"
    assert all(f.command == "RECEIPT" for f in frames), (where, frames)
    # Whatever reached the socket was sent before the broker died.
    committed = [f.headers["receipt-id"] for f in frames] == ["commit"]

    broker = chain.restart(killer)
    restored = [drain_queue(broker.port, q) for q in queues]
    for q, frames_after in zip(queues, restored, strict=True):
        assert all(f.headers["destination"] == q for f in frames_after), (where, q)
        check_restored(frames_after, body, where)
    got = sorted(seqs(restored[0]) + seqs(restored[1]))
    assert got in ([], list(range(n))), (
        f"{where} half a transaction after the crash: {len(got)} of {n} messages "
        f"{got[:20]} (COMMIT RECEIPT {'arrived' if committed else 'not seen'})\n"
        f"{chain.runner.logs()}"
    )
    if committed:
        assert got == list(range(n)), (
            f"{where} the COMMIT was RECEIPTed but its messages are gone\n{chain.runner.logs()}"
        )

    load_frames = drain_queue(broker.port, load_queue)
    check_restored(load_frames, message_body, where + " background stream")
    load_after = seqs(load_frames)
    lost = receipted_load - set(load_after)
    assert not lost, f"{where} background stream lost RECEIPTed {sorted(lost)[:10]}"
    assert set(load_after) <= set(range(load.written)), where
    print(where, f"transaction: {len(got)} of {n}; background: {len(load_after)} restored")
    return "all" if got else "none"


# -- 3. kill -9 during a durable subscription's redelivery --------------------------------


def durable_subscribe(
    port: int, topic: str, client_id: str, name: str, **headers: str
) -> RawStompSocket:
    """
    A raw connection with ``client-id`` subscribed (ActiveMQ style,
    ``activemq.subscriptionName``, client-individual acks) to the durable
    subscription ``name``. Its RECEIPT ``subscribed`` is only sent once the
    store has the subscription, possibly after its first MESSAGEs.
    """
    raw = RawStompSocket(port)
    raw.connect(**{"client-id": client_id})
    raw.send(
        "SUBSCRIBE",
        {
            "destination": topic,
            "id": "durable",
            "ack": "client-individual",
            "activemq.subscriptionName": name,
            "receipt": "subscribed",
            **headers,
        },
    )
    return raw


def read_until_receipt(raw: RawStompSocket, receipt: str) -> tuple[list[RawFrame], list[str]]:
    """Read until the RECEIPT ``receipt``; return the MESSAGEs and receipt ids on the way."""
    messages: list[RawFrame] = []
    receipts: list[str] = []
    while True:
        frame = raw.read_frame()
        if frame.command == "MESSAGE":
            messages.append(frame)
            continue
        assert frame.command == "RECEIPT", frame
        receipts.append(frame.headers["receipt-id"])
        if receipts[-1] == receipt:
            return messages, receipts


def publish_marker(port: int, topic: str, body: bytes) -> None:
    """Publish one non-persistent message to ``topic`` and wait for its RECEIPT."""
    raw = RawStompSocket(port)
    try:
        raw.connect()
        raw.send("SEND", {"destination": topic, "receipt": "marker"}, body)
        frame = raw.read_frame()
        assert (frame.command, frame.headers.get("receipt-id")) == ("RECEIPT", "marker"), frame
    finally:
        raw.close()


def test_kill9_during_durable_subscription_redelivery(brokers: BrokerRunner) -> None:
    """
    A durable topic subscriber gets M persistent messages, acknowledges a
    random few (settled by a store barrier) and disconnects: the rest go
    back to its subscription. It reconnects with a small prefetch and gets
    them again, marked ``redelivered:true``, acking each as it comes (with
    a barrier every few ACKs); the broker is killed at a random one of
    those redeliveries. After the restart the subscription still exists and
    delivers every message never acknowledged, marked redelivered; settled
    ones do not come back.
    """
    chain = Chain(brokers)
    for iteration in range(ITERATIONS):
        durable_iteration(chain, iteration)


def durable_iteration(chain: Chain, iteration: int, m: int = 30) -> None:
    """One kill during a durable subscription's redelivery (see the test)."""
    rng = plan_rng("durable", iteration)
    first_acked = set(rng.sample(range(m), rng.randint(0, 10)))
    prefetch = rng.randint(1, 6)
    kill_at = rng.randint(1, m - len(first_acked) - 1)
    plan = (
        f"{len(first_acked)} of {m} acked first, prefetch {prefetch}, kill at redelivery {kill_at}"
    )
    where = context("durable", iteration, plan)
    topic = "/topic/" + unique("chaos-news")
    client_id = unique("chaos-cid")
    name = unique("chaos-sub")
    barriers = "/queue/" + unique("chaos-barrier")

    # First delivery: some acknowledged for good, the rest left unacked.
    first = durable_subscribe(chain.broker.port, topic, client_id, name)
    try:
        before, _ = read_until_receipt(first, "subscribed")
        assert not before, (where, describe(before))
        publish(chain.broker.port, topic, range(m))
        delivered, _ = read_until(first, lambda f: f.headers["seq"] == str(m - 1))
        assert seqs(delivered) == list(range(m)), (where, describe(delivered))
        assert all("redelivered" not in f.headers for f in delivered), where
        ledger = AckLedger(first, barriers, every=m + 1, tag="first")
        for frame in delivered:
            if int(frame.headers["seq"]) in first_acked:
                ledger.ack(frame)
        rid = ledger.barrier()
        # DISCONNECT without acknowledging the rest: they go back.
        first.send("DISCONNECT", {"receipt": "bye"})
        _, receipts = read_until_receipt(first, "bye")
        ledger.receipts.update(receipts)
        assert rid in ledger.receipts, (where, receipts)
        assert ledger.settled() == first_acked, where
    finally:
        first.close()

    # Redelivery, acked one by one, killed part way.
    killer = chain.killer()
    second = durable_subscribe(
        chain.broker.port, topic, client_id, name, **{"prefetch-count": str(prefetch)}
    )
    ledger2 = AckLedger(second, barriers, every=3, tag="again")
    redelivered: list[RawFrame] = []
    try:
        while True:
            try:
                frame = second.read_frame()
            except (ConnectionClosed, OSError):
                break
            if frame.command == "RECEIPT":
                ledger2.receipts.add(frame.headers["receipt-id"])
                continue
            assert frame.command == "MESSAGE", (where, frame)
            redelivered.append(frame)
            if len(redelivered) == kill_at:
                killer.kill(f"at redelivery {kill_at}")
            elif killer.reason is None:
                ledger2.ack(frame)
    finally:
        second.close()
    assert killer.reason is not None, f"{where} only {len(redelivered)} redeliveries"
    # Before the crash: only unacknowledged messages came again, marked so.
    again = seqs(redelivered)
    assert not set(again) & first_acked, f"{where} acked message delivered again: {again}"
    unmarked = [f for f in redelivered if f.headers.get("redelivered") != "true"]
    assert not unmarked, (where, describe(unmarked))

    broker = chain.restart(killer)
    third = durable_subscribe(broker.port, topic, client_id, name)
    try:
        end = unique("end").encode()
        # The restored messages may come before the SUBSCRIBE's RECEIPT; the
        # marker, published once it is in, queues behind them all.
        early, _ = read_until_receipt(third, "subscribed")
        publish_marker(broker.port, topic, end)
        rest, _ = read_until(third, lambda f: f.body == end)
        frames_after = early + rest[:-1]
        # Remove the subscription: later restarts need not restore it.
        third.send(
            "UNSUBSCRIBE", {"id": "durable", "activemq.subscriptionName": name, "receipt": "gone"}
        )
        read_until_receipt(third, "gone")
    finally:
        third.close()
    got = seqs(frames_after)
    never_acked = set(range(m)) - first_acked - set(ledger2.sent)
    lost = never_acked - set(got)
    assert not lost, (
        f"{where} unacknowledged message(s) lost from the durable subscription: "
        f"{sorted(lost)} (restored {got})\n{chain.runner.logs()}"
    )
    back = (first_acked | ledger2.settled()) & set(got)
    assert not back, f"{where} settled ACKs undone by the crash: {sorted(back)}"
    assert set(got) <= set(range(m)), (where, got)
    check_restored(frames_after, message_body, where)
    print(where, f"redelivered {len(redelivered)}, restored {len(got)}")
    kept = restored_barriers(broker.port, barriers)
    missing = (ledger.confirmed_barriers() | ledger2.confirmed_barriers()) - kept
    assert not missing, f"{where} RECEIPTed barrier(s) lost: {sorted(missing)}"


# -- 4. kill -9 during a store checkpoint ----------------------------------------------------

#: Body size in scenario 4: big enough that SQLite's WAL (autocheckpoint at
#: 1000 pages, about 4 MB) is checkpointed every few dozen messages.
BIG = 64 * 1024


def big_body(seq: int) -> bytes:
    """A 64 KiB body that is a function of ``seq`` (so damage shows)."""
    return hashlib.sha256(str(seq).encode()).hexdigest().encode() * (BIG // 64)


def big_frame(destination: str, seq: int) -> bytes:
    """A persistent SEND of :func:`big_body` asking for the RECEIPT ``send-{seq}``."""
    body = big_body(seq)
    headers = {
        "destination": destination,
        "persistent": "true",
        "seq": str(seq),
        "receipt": f"send-{seq}",
        "content-length": str(len(body)),
    }
    return encode_frame("SEND", headers, body)


def quick_check(db: Path) -> list[tuple]:
    """SQLite's own consistency check of the store, on a read-only connection."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        return conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()


def test_kill9_during_store_checkpoint(brokers: BrokerRunner) -> None:
    """
    A queue gets 64 KiB persistent messages (a backlog first, then a
    stream) while a consumer acknowledges them one by one, with a store
    barrier every few ACKs; the broker is killed a random moment into a
    WAL checkpoint. After the restart: every RECEIPTed message not
    acknowledged is there, with its body intact; no message whose ACK a
    confirmed barrier followed is back; acknowledged messages that do come
    back are marked redelivered (the ACK's RECEIPT promised nothing more);
    the database passes SQLite's quick_check.
    """
    chain = Chain(brokers)
    for iteration in range(ITERATIONS):
        checkpoint_iteration(chain, iteration)


def checkpoint_iteration(chain: Chain, iteration: int, backlog: int = 40) -> None:
    """One kill during a WAL checkpoint (see the test)."""
    rng = plan_rng("checkpoint", iteration)
    nth = rng.randint(1, 3)
    delay = rng.uniform(0.0, 0.003)
    prefetch = rng.choice([16, 64, 256])
    every = rng.randint(3, 8)
    # The consumer leaves about this share of its messages unacknowledged:
    # at the kill some RECEIPTed messages are delivered and not acked.
    hold = rng.uniform(0.2, 0.5)
    holds = random.Random(rng.random())
    plan = (
        f"kill {delay * 1000:.2f} ms into checkpoint {nth}, prefetch {prefetch}, "
        f"barrier every {every} ACKs, {hold:.0%} left unacked"
    )
    where = context("checkpoint", iteration, plan)
    db = chain.runner.data_dir / "stomptw.sqlite3"
    destination = "/queue/" + unique("chaos-big")
    barriers = "/queue/" + unique("chaos-barrier")

    # A backlog on disk for the consumer to delete from.
    prefill = Stream(chain.broker.port, destination, 8, big_frame, 0, backlog)
    prefill.start()
    receipted = prefill.finish()
    assert receipted == set(range(backlog)), where

    killer = chain.killer()
    watch = FileWatch(db, killer, nth, delay, "checkpoint")
    producer = Stream(
        chain.broker.port,
        destination,
        window=8,
        frame=big_frame,
        start=backlog,
        count=400,
        # Only reached if no checkpoint was seen: that fails below.
        on_done=lambda: killer.kill("the stream ended: no checkpoint seen"),
    )
    consumer = RawStompSocket(chain.broker.port)
    ledger = AckLedger(consumer, barriers, every, tag="big")
    damaged: list[str] = []
    try:
        consumer.connect()
        consumer.send(
            "SUBSCRIBE",
            {
                "destination": destination,
                "id": "big",
                "ack": "client-individual",
                "prefetch-count": str(prefetch),
            },
        )
        watch.start()
        producer.start()
        while True:
            try:
                frame = consumer.read_frame()
            except (ConnectionClosed, OSError):
                break
            if frame.command == "RECEIPT":
                ledger.receipts.add(frame.headers["receipt-id"])
                continue
            assert frame.command == "MESSAGE", (where, frame)
            if frame.body != big_body(int(frame.headers["seq"])):
                damaged.append(frame.headers["seq"])
            if killer.reason is None and holds.random() >= hold:
                ledger.ack(frame)
    finally:
        consumer.close()
        watch.finish()
    receipted |= producer.finish()
    assert killer.reason is not None, where
    where += f" ({killer.reason}; {len(ledger.sent)} ACKs sent)"
    assert "into checkpoint" in killer.reason, f"{where}\n{chain.runner.logs()}"
    assert not damaged, f"{where} damaged bodies delivered before the crash: {damaged[:10]}"

    broker = chain.restart(killer)
    frames_after = drain_queue(broker.port, destination)
    got = seqs(frames_after)
    lost = receipted - set(ledger.sent) - set(got)
    assert not lost, (
        f"{where} {len(lost)} RECEIPTed, unacknowledged message(s) lost: "
        f"{sorted(lost)[:10]}\n{chain.runner.logs()}"
    )
    back = ledger.settled() & set(got)
    back_all = set(ledger.sent) & set(got)
    assert not back, (
        f"{where} {len(back)} message(s) acknowledged before a RECEIPTed barrier "
        f"came back: {sorted(back)[:10]}\n{chain.runner.logs()}"
    )
    assert set(got) <= set(range(backlog + producer.written)), where
    check_restored(frames_after, big_body, where)
    missing = ledger.confirmed_barriers() - restored_barriers(broker.port, barriers)
    assert not missing, f"{where} RECEIPTed barrier(s) lost: {sorted(missing)}"
    assert quick_check(db) == [("ok",)], where
    print(
        where,
        f"receipted {len(receipted)}, of which unacked {len(receipted - set(ledger.sent))}, "
        f"restored {len(got)}, {len(back_all)} acked came back, "
        f"{len(ledger.settled())} settled",
    )
