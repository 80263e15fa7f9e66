"""
End-to-end durability tests: the broker runs as a real ``twistd -n stomptw``
subprocess (TCP only, SQLite store under ``tmp_path``), is killed with
SIGKILL or stopped with SIGTERM, restarted on the same data directory, and
real clients (stomp.py 1.2, raw sockets where stomp.py cannot pipeline)
check what survived.

Conventions:

* Every message carries a ``seq`` header; a queue is drained after a
  restart by first sending an end marker (which queues behind everything
  the store restored) and consuming until it arrives, so "everything" is
  known without waiting for silence.
* The store writes delivery counts and acknowledgements in the background.
  Where a test needs them on disk before a crash it uses :func:`store_barrier`:
  a persistent SEND whose RECEIPT is only sent once everything the broker
  wrote before it is committed.
* Nothing sleeps to let something happen: frames and exits are awaited
  with deadlines that only bound a failure; a new subprocess's port is
  polled (connect attempts) until a deadline.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from clients import TIMEOUT, ClientPool, ConnectionClosed, RawStompSocket, encode_frame, unique

ROOT = Path(__file__).resolve().parents[1]
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
LOCALHOST = "127.0.0.1"

#: Deadline for a broker subprocess to listen, or to exit once told to.
START_DEADLINE = 15.0
EXIT_DEADLINE = 10.0


# -- the broker subprocess -------------------------------------------------------------


#: Ports :func:`free_port` handed out lately: the kernel may offer one
#: again before the process it went to has bound it.
_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=512)


def free_port() -> int:
    """A loopback port that was free a moment ago, and not handed out lately."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOCALHOST, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            break
    _HANDED_OUT.append(port)
    return port


class BrokerProcess:
    """One ``twistd -n stomptw`` subprocess with its log in a file."""

    def __init__(self, runner: BrokerRunner, args: list[str], cwd: Path, log: Path) -> None:
        self.runner = runner
        self.port = free_port()
        self.log_path = log
        self._log = open(log, "wb")  # closed by close()
        env = dict(os.environ)
        # Run the repository's code (and find its twistd plugin), not the
        # installed copy.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        command = [
            TWISTD,
            "-n",
            "--pidfile=",
            "stomptw",
            "--tcp",
            f"tcp:{self.port}:interface={LOCALHOST}",
            "--no-ws",
            *args,
        ]
        self.proc = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self) -> None:
        """Poll-connect to the port until it accepts; fail if the process exits."""
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"broker exited with {self.proc.returncode} before listening\n"
                    + self.runner.logs()
                )
            try:
                socket.create_connection((LOCALHOST, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(
            f"broker not listening on {self.port} after {START_DEADLINE}s\n" + self.runner.logs()
        )

    def wait_exit(self, deadline: float = EXIT_DEADLINE) -> int:
        try:
            return self.proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"broker still running {deadline}s later\n" + self.runner.logs()
            ) from None

    def kill9(self) -> None:
        """SIGKILL: the broker dies at once, without flushing anything."""
        self.proc.send_signal(signal.SIGKILL)
        assert self.wait_exit() == -signal.SIGKILL

    def terminate(self) -> int:
        """SIGTERM (orderly shutdown); returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit()

    def assert_stopped_cleanly(self, status: int) -> None:
        """
        The broker stopped in order after SIGTERM. twistd ends an orderly
        shutdown caused by a signal by re-raising that signal on itself
        (``twisted.application.app._exitWithSignal``), so the status is
        -SIGTERM rather than 0; the log shows the shutdown completed.
        """
        log = self.log_path.read_text(errors="replace")
        assert status in (0, -signal.SIGTERM), (status, self.runner.logs())
        assert "Server Shut Down." in log, self.runner.logs()
        assert "Traceback" not in log, self.runner.logs()

    def stop(self) -> None:
        """SIGTERM, and check the broker stopped in order."""
        self.assert_stopped_cleanly(self.terminate())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_DEADLINE)
        self._log.close()


class BrokerRunner:
    """Starts brokers for one test; every one of them is killed afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "data"
        self.procs: list[BrokerProcess] = []

    def start(
        self,
        *args: str,
        data_dir: Path | None | bool = True,
        cwd: Path | None = None,
        wait: bool = True,
    ) -> BrokerProcess:
        """
        Start a broker; ``data_dir=True`` is the test's data directory,
        ``None``/``False`` passes no ``--data-dir`` at all.
        """
        extra = list(args)
        if data_dir is True:
            data_dir = self.data_dir
        if data_dir:
            extra += ["--data-dir", str(data_dir)]
        log = self.tmp_path / f"broker-{len(self.procs) + 1}.log"
        proc = BrokerProcess(self, extra, cwd or self.tmp_path, log)
        self.procs.append(proc)
        if wait:
            proc.wait_listening()
        return proc

    def logs(self, limit: int = 12000) -> str:
        """Every broker log of this test (the end of it), for assertion messages."""
        parts = []
        for proc in self.procs:
            proc._log.flush()
            text = proc.log_path.read_text(errors="replace")
            parts.append(f"---- {proc.log_path.name} (pid {proc.pid}) ----\n{text}")
        return "\n".join(parts)[-limit:]

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.close()
            except Exception:
                pass


@pytest.fixture
def brokers(tmp_path):
    runner = BrokerRunner(tmp_path)
    try:
        yield runner
    finally:
        runner.close()


# -- clients ---------------------------------------------------------------------------


def queue_name(prefix: str = "dur") -> str:
    return "/queue/" + unique(prefix)


def send_frame(destination: str, seq: int, persistent: bool = True, receipt: bool = True) -> bytes:
    headers = {"destination": destination, "seq": str(seq), "content-type": "text/plain"}
    if persistent:
        headers["persistent"] = "true"
    if receipt:
        headers["receipt"] = f"send-{seq}"
    return encode_frame("SEND", headers, f"message {seq}".encode())


class KillAfterReceipts:
    """
    ``on_receipt`` for a :class:`FrameCollector`: SIGKILL ``broker`` as soon
    as ``count`` RECEIPTs are in; ``killed_at`` is how many there were then.
    """

    def __init__(self, broker: BrokerProcess, count: int) -> None:
        self.broker = broker
        self.count = count
        self.killed_at: int | None = None

    def __call__(self, received: int) -> None:
        if received >= self.count and self.killed_at is None:
            self.killed_at = received
            os.kill(self.broker.pid, signal.SIGKILL)


class FrameCollector(threading.Thread):
    """
    Reads frames from a raw socket in the background until the connection
    ends (or ``stop_after`` RECEIPTs arrived); calls ``on_receipt(count)``
    after each RECEIPT.
    """

    def __init__(self, raw: RawStompSocket, stop_after: int = 0, on_receipt=None) -> None:
        super().__init__(daemon=True)
        self.raw = raw
        self.stop_after = stop_after
        self.on_receipt = on_receipt
        self.receipts: list[str] = []
        self.others: list = []
        self.error: BaseException | None = None
        self.ended = False
        self._cond = threading.Condition()

    def run(self) -> None:
        try:
            while True:
                frame = self.raw.read_frame()
                if frame.command == "RECEIPT":
                    with self._cond:
                        self.receipts.append(frame.headers["receipt-id"])
                        self._cond.notify_all()
                    if self.on_receipt is not None:
                        self.on_receipt(len(self.receipts))
                    if self.stop_after and len(self.receipts) >= self.stop_after:
                        return
                else:
                    self.others.append(frame)
        except (ConnectionClosed, OSError):
            return
        except BaseException as e:  # a timeout: reported by the test
            self.error = e
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def wait_receipts(self, count: int) -> bool:
        """Wait until ``count`` RECEIPTs arrived; False if the connection ended first."""
        with self._cond:
            done = self._cond.wait_for(lambda: self.ended or len(self.receipts) >= count, TIMEOUT)
            assert done, f"only {len(self.receipts)} of {count} RECEIPTs within {TIMEOUT}s"
            return len(self.receipts) >= count

    def finish(self) -> None:
        self.join(TIMEOUT * 3)
        assert not self.is_alive(), "frame reader still running"


def write_windowed(raw: RawStompSocket, reader: FrameCollector, frames, window: int) -> int:
    """
    Write ``frames`` (each asking for a RECEIPT) one at a time, with at most
    ``window`` of them unanswered; stop when the connection ends. Return how
    many were written.
    """
    written = 0
    for data in frames:
        if not reader.wait_receipts(written - window):
            break
        try:
            raw.send_bytes(data)
        except OSError:
            break  # the broker is gone
        written += 1
    return written


def publish(port: int, destination: str, seqs, persistent: bool = True) -> None:
    """Send one message per seq, pipelined, and wait for every RECEIPT."""
    seqs = list(seqs)
    raw = RawStompSocket(port)
    try:
        raw.connect()
        reader = FrameCollector(raw, stop_after=len(seqs))
        reader.start()
        raw.send_bytes(b"".join(send_frame(destination, s, persistent) for s in seqs))
        reader.finish()
        assert reader.error is None, reader.error
        assert not reader.others, reader.others
        assert reader.receipts == [f"send-{s}" for s in seqs]
    finally:
        raw.close()


def send_seqs(client, destination: str, seqs, persistent: bool = True) -> None:
    """Send ``message {seq}`` with a ``seq`` header for each seq, each waiting for its RECEIPT."""
    for seq in seqs:
        client.send(
            destination,
            f"message {seq}",
            receipt=True,
            headers={"persistent": "true" if persistent else "false", "seq": str(seq)},
        )


def store_barrier(client) -> None:
    """
    Everything the broker wrote to its store before this call is committed
    once it returns: a persistent message's RECEIPT waits for the store's
    commit, which takes every write queued before it (delivery counts,
    acknowledgements, durable subscriptions).
    """
    client.send(
        "/queue/durability.barrier", "barrier", receipt=True, headers={"persistent": "true"}
    )


def drain(pool: ClientPool, port: int, destination: str) -> list:
    """
    Consume everything ``destination`` holds (client-individual acks) with
    stomp.py and return the MESSAGE frames in arrival order. An end marker
    sent first queues behind every message already there.
    """
    client = pool.tcp(port)
    end = unique("end")
    client.send(destination, end, receipt=True)
    client.subscribe(destination, ack="client-individual")
    frames = []
    while True:
        frame = client.next_message(timeout=10)
        if frame.body == end:
            client.ack(frame)
            break
        frames.append(frame)
        client.ack(frame, receipt=False)
    client.disconnect()
    return frames


def restart_and_drain(brokers: BrokerRunner, destination: str, *args: str, **kwargs) -> list:
    """Start a broker (``brokers.start(*args, **kwargs)``) and :func:`drain` ``destination``."""
    broker = brokers.start(*args, **kwargs)
    with ClientPool() as pool:
        return drain(pool, broker.port, destination)


def seqs_of(frames) -> list[int]:
    return [int(f.headers["seq"]) for f in frames]


def describe(frames) -> list:
    return [
        (f.headers.get("seq"), f.headers.get("redelivered"), f.headers.get("x-delivery-count"))
        for f in frames
    ]


# -- 1. kill -9 while persistent SENDs are in flight -------------------------------------


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_kill9_mid_stream_loses_no_receipted_message(brokers, sync):
    # store-sync normal skips the fsync but still survives a process crash.
    count = 2000
    # Up to this many SENDs unanswered: the kill lands with hundreds of
    # messages read, being stored or on the wire.
    window = 500
    destination = queue_name("stream")
    broker = brokers.start("--store-sync", sync)
    raw = RawStompSocket(broker.port)
    try:
        raw.connect()
        # Kill as soon as the first receipts are in: the rest of the
        # stream is still being read, stored or answered.
        killer = KillAfterReceipts(broker, 50)
        reader = FrameCollector(raw, on_receipt=killer)
        reader.start()
        frames = (send_frame(destination, seq) for seq in range(count))
        written = write_windowed(raw, reader, frames, window)
        reader.finish()
        assert broker.wait_exit() == -signal.SIGKILL
    finally:
        raw.close()
    assert reader.error is None, reader.error
    assert not reader.others, reader.others
    receipted = {int(r.removeprefix("send-")) for r in reader.receipts}
    # The kill landed mid-stream: some receipts arrived, not all of them.
    assert killer.killed_at is not None, (
        f"never saw 50 receipts ({len(receipted)})\n{brokers.logs()}"
    )
    assert 0 < len(receipted) < written, (len(receipted), written)
    assert written < count, written
    # Receipts come in frame order, so the receipted messages are a prefix.
    assert receipted == set(range(len(receipted)))

    frames = restart_and_drain(brokers, destination, "--store-sync", sync)
    seqs = seqs_of(frames)
    missing = receipted - set(seqs)
    assert not missing, (
        f"{len(missing)} receipted message(s) lost, e.g. {sorted(missing)[:10]}\n{brokers.logs()}"
    )
    assert set(seqs) <= set(range(written)), "a message that was never sent arrived"
    seen: set[int] = set()
    for frame, seq in zip(frames, seqs, strict=True):
        if seq in seen:
            assert frame.headers.get("redelivered") == "true", describe([frame])
        seen.add(seq)
        assert frame.body == f"message {seq}"
    # After a crash every restored message may have been delivered before
    # (deliveries are recorded lazily): all are marked so.
    assert all(f.headers["x-delivery-count"] == "1" for f in frames), describe(frames)[:10]
    assert all(f.headers.get("redelivered") == "true" for f in frames), describe(frames)[:10]
    # Whatever was stored comes back in the order it was sent.
    assert seqs == sorted(seqs)


# -- 2. kill -9 while acknowledging ------------------------------------------------------


def test_kill9_while_acking_keeps_every_unacked_message(brokers):
    count = 1000
    half = count // 2
    destination = queue_name("acks")
    broker = brokers.start()
    publish(broker.port, destination, range(count))

    raw = RawStompSocket(broker.port)
    try:
        raw.connect()
        raw.send(
            "SUBSCRIBE",
            {"destination": destination, "id": "s", "ack": "client-individual"},
        )
        ack_ids: dict[int, str] = {}
        while len(ack_ids) < count:
            frame = raw.read_frame()
            assert frame.command == "MESSAGE", frame
            ack_ids[int(frame.headers["seq"])] = frame.headers["ack"]
        # The delivery counts are on disk before the crash.
        raw.send(
            "SEND",
            {"destination": "/queue/durability.barrier", "persistent": "true", "receipt": "b"},
            b"barrier",
        )
        frame = raw.read_frame()
        assert (frame.command, frame.headers.get("receipt-id")) == ("RECEIPT", "b"), frame

        killer = KillAfterReceipts(broker, half // 5)
        reader = FrameCollector(raw, on_receipt=killer)
        reader.start()
        # At most 50 ACKs unanswered: the kill lands among them.
        acks = (
            encode_frame("ACK", {"id": ack_ids[seq], "receipt": f"ack-{seq}"})
            for seq in range(half)
        )
        ack_written = set(range(write_windowed(raw, reader, acks, 50)))
        reader.finish()
        assert broker.wait_exit() == -signal.SIGKILL
    finally:
        raw.close()
    assert reader.error is None, reader.error
    acked = {int(r.removeprefix("ack-")) for r in reader.receipts}
    assert killer.killed_at is not None, f"never saw {half // 5} ACK receipts\n{brokers.logs()}"
    # The kill landed among the ACKs: some were answered, and the writer,
    # never more than 50 ahead, had not got through them all.
    assert 0 < len(acked) <= len(ack_written) < half, (len(acked), len(ack_written))

    frames = restart_and_drain(brokers, destination)
    seqs = seqs_of(frames)
    never_acked = set(range(count)) - ack_written
    lost = never_acked - set(seqs)
    assert not lost, f"{len(lost)} unacked message(s) lost: {sorted(lost)[:10]}\n{brokers.logs()}"
    assert set(seqs) <= set(range(count))
    assert len(seqs) == len(set(seqs)), "a message arrived twice after the restart"
    # Every message coming back had been delivered before the crash.
    not_marked = [f for f in frames if f.headers.get("redelivered") != "true"]
    assert not not_marked, describe(not_marked)[:10]
    assert all(int(f.headers["x-delivery-count"]) >= 1 for f in frames), describe(frames)[:10]
    # ACKs are committed lazily (their RECEIPT does not wait for the store),
    # so an acknowledged message may come back after kill -9, marked
    # redelivered (checked above). Measured: of the ~100-110 messages whose
    # ACK RECEIPT had arrived, anywhere from 0 to all but one came back,
    # depending on whether the kill beat the removal's commit (often all
    # but one or two). The number is not asserted; ACKs that were written
    # but not answered may go either way too.


# -- 3. delivered but unacknowledged at kill -9 -----------------------------------------------


def test_kill9_with_unacked_deliveries_redelivers_them(brokers):
    count = 20
    destination = queue_name("unacked")
    broker = brokers.start()
    publish(broker.port, destination, range(count))
    with ClientPool() as pool:
        consumer = pool.tcp(broker.port)
        consumer.subscribe(destination, ack="client-individual")
        first = consumer.next_messages(count)
        assert seqs_of(first) == list(range(count))
        assert all(f.headers["x-delivery-count"] == "0" for f in first), describe(first)
        assert all("redelivered" not in f.headers for f in first), describe(first)
        store_barrier(consumer)
        broker.kill9()

    frames = restart_and_drain(brokers, destination)
    assert seqs_of(frames) == list(range(count)), brokers.logs()
    for frame in frames:
        assert frame.headers.get("redelivered") == "true", describe([frame])
        assert int(frame.headers["x-delivery-count"]) >= 1, describe([frame])
        assert frame.headers.get("persistent") == "true"


class StoreLock:
    """
    Hold the store's SQLite write lock from the test (as a slow disk would):
    the broker's background commits wait for it, so whatever it writes
    lazily is not on disk when the broker is killed.
    """

    def __init__(self, data_dir: Path) -> None:
        self.db = sqlite3.connect(data_dir / "stomptw.sqlite3", timeout=5, isolation_level=None)

    def __enter__(self) -> StoreLock:
        self.db.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc) -> None:
        self.db.execute("ROLLBACK")
        self.db.close()


def test_kill9_right_after_delivery_still_marks_it_redelivered(brokers):
    count = 5
    destination = queue_name("unsynced")
    broker = brokers.start()
    publish(broker.port, destination, range(count))
    with StoreLock(brokers.data_dir), ClientPool() as pool:
        consumer = pool.tcp(broker.port)
        consumer.subscribe(destination, ack="client-individual")
        first = consumer.next_messages(count)
        assert all(f.headers["x-delivery-count"] == "0" for f in first), describe(first)
        broker.kill9()

    frames = restart_and_drain(brokers, destination)
    # At least once holds either way.
    assert seqs_of(frames) == list(range(count)), brokers.logs()
    # The documented promise: a message whose delivery had started comes
    # back marked redelivered.
    assert all(f.headers.get("redelivered") == "true" for f in frames), describe(frames)


def test_commit_receipt_means_transaction_survives_kill9(brokers):
    destination = queue_name("tx")
    broker = brokers.start()
    with ClientPool() as pool:
        producer = pool.tcp(broker.port)
        aborted = producer.begin()
        for seq in range(100, 105):
            producer.send(
                destination,
                f"message {seq}",
                headers={"persistent": "true", "seq": str(seq), "transaction": aborted},
            )
        producer.abort(aborted)
        tx = producer.begin()
        for seq in range(20):
            producer.send(
                destination,
                f"message {seq}",
                headers={"persistent": "true", "seq": str(seq), "transaction": tx},
            )
        producer.commit(tx)  # its RECEIPT waits for the 20 messages to be stored
        broker.kill9()

    frames = restart_and_drain(brokers, destination)
    assert seqs_of(frames) == list(range(20)), (describe(frames), brokers.logs())


def test_delivery_count_survives_kill9_up_to_the_dead_letter_queue(brokers):
    destination = queue_name("poison")
    dlq = "/queue/DLQ." + destination.removeprefix("/queue/")
    broker = brokers.start("--max-redeliveries", "1")
    publish(broker.port, destination, [7])
    with ClientPool() as pool:
        consumer = pool.tcp(broker.port)
        consumer.subscribe(destination, ack="client-individual")
        frame = consumer.next_message()
        assert frame.headers["x-delivery-count"] == "0"
        store_barrier(consumer)
        broker.kill9()

    # The crash counts as a delivery: the second one is the last allowed.
    broker = brokers.start("--max-redeliveries", "1")
    with ClientPool() as pool:
        consumer = pool.tcp(broker.port)
        consumer.subscribe(destination, ack="client-individual")
        frame = consumer.next_message()
        assert (frame.headers["seq"], frame.headers.get("redelivered")) == ("7", "true")
        assert frame.headers["x-delivery-count"] == "1"
        consumer.nack(frame)
        consumer.assert_no_message()
        store_barrier(consumer)  # the dead letter is stored
        broker.kill9()

    broker = brokers.start("--max-redeliveries", "1")
    with ClientPool() as pool:
        assert drain(pool, broker.port, destination) == []
        frames = drain(pool, broker.port, dlq)
    assert seqs_of(frames) == [7], (describe(frames), brokers.logs())
    dead = frames[0].headers
    assert dead["x-first-death-queue"] == destination
    assert dead["x-first-death-reason"] == "delivery_limit"
    assert dead["persistent"] == "true"
    assert frames[0].body == "message 7"


# -- 4. orderly shutdown -----------------------------------------------------------------


def test_sigterm_tells_clients_and_requeues_unacked(brokers):
    count = 10
    acked_count = 4
    destination = queue_name("term")
    broker = brokers.start()
    with ClientPool() as pool:
        producer = pool.tcp(broker.port)
        send_seqs(producer, destination, range(count))
        consumer = pool.tcp(broker.port)
        consumer.subscribe(destination, ack="client-individual")
        delivered = consumer.next_messages(count)
        assert seqs_of(delivered) == list(range(count))
        for frame in delivered[:acked_count]:
            consumer.ack(frame)  # waits for the RECEIPT

        broker.proc.send_signal(signal.SIGTERM)
        for client in (consumer, producer):
            error = client.next_error()
            assert error.headers["message"] == "broker is shutting down", error.headers
            client.wait_closed()
        # The clients closed at once, so the broker does not linger.
        broker.assert_stopped_cleanly(broker.wait_exit(5))

    frames = restart_and_drain(brokers, destination)
    assert seqs_of(frames) == list(range(acked_count, count)), brokers.logs()
    for frame in frames:
        assert frame.headers.get("redelivered") == "true", describe([frame])
        assert frame.headers["x-delivery-count"] == "1", describe([frame])


# -- 5. durable topic subscriptions ------------------------------------------------------------


def subscribe_durable(
    pool: ClientPool, port: int, topic: str, sub_id: str, client_id: str | None = None, **headers
):
    """
    A stomp.py client subscribed to ``topic`` as ``sub_id`` with ``headers``
    (``ack`` among them if given); connected with ``client-id`` if one is given.
    """
    if client_id is None:
        client = pool.tcp(port)
    else:
        client = pool.tcp(port, connect=False)
        client.connect(headers={"client-id": client_id})
    client.subscribe(topic, sub_id=sub_id, **headers)
    return client


def receive_through_end_marker(producer, subscriber, topic: str) -> list:
    """
    Publish an end marker to ``topic`` and return every MESSAGE ``subscriber``
    gets up to and including it (so the last one is always the marker).
    """
    end = unique("end")
    producer.send(topic, end, receipt=True)
    frames = []
    while True:
        frame = subscriber.next_message()
        frames.append(frame)
        if frame.body == end:
            return frames


def test_durable_topic_subscription_survives_restart_until_removed(brokers):
    topic = "/topic/" + unique("news")
    client_id = unique("cid")
    name = "news-sub"
    durable = {"activemq.subscriptionName": name}
    broker = brokers.start()
    with ClientPool() as pool:
        subscriber = subscribe_durable(pool, broker.port, topic, "s1", client_id, **durable)
        subscriber.disconnect()

        producer = pool.tcp(broker.port)
        for seq in range(6):
            send_seqs(producer, topic, [seq], persistent=seq != 3)
    broker.stop()

    broker = brokers.start()
    with ClientPool() as pool:
        subscriber = subscribe_durable(pool, broker.port, topic, "s1", client_id, **durable)
        producer = pool.tcp(broker.port)
        frames = receive_through_end_marker(producer, subscriber, topic)
        # The persistent ones, in order; the non-persistent one (3) is gone.
        assert seqs_of(frames[:-1]) == [0, 1, 2, 4, 5], (describe(frames), brokers.logs())
        assert [f.headers["destination"] for f in frames] == [topic] * 6

        # UNSUBSCRIBE naming the subscription deletes it for good.
        rid = unique("unsubscribe")
        subscriber.conn.unsubscribe(id="s1", headers={"receipt": rid, **durable})
        subscriber.listener.wait_receipt(rid)
        send_seqs(producer, topic, range(100, 103))
    broker.stop()

    broker = brokers.start()
    with ClientPool() as pool:
        subscriber = subscribe_durable(pool, broker.port, topic, "s1", client_id, **durable)
        producer = pool.tcp(broker.port)
        frames = receive_through_end_marker(producer, subscriber, topic)
        assert frames[:-1] == [], describe(frames)  # nothing but the end marker


def test_rabbitmq_style_durable_subscription_survives_kill9(brokers):
    topic = "/topic/" + unique("rabbit")
    rabbit = {"durable": "true", "auto-delete": "false"}
    sub_id = unique("rabbit-sub")
    broker = brokers.start()
    with ClientPool() as pool:
        subscriber = subscribe_durable(
            pool, broker.port, topic, sub_id, ack="client-individual", **rabbit
        )
        subscriber.disconnect()
        producer = pool.tcp(broker.port)
        # Each RECEIPT waits for the store, which also commits the
        # subscription itself.
        send_seqs(producer, topic, range(5))
    broker.kill9()

    broker = brokers.start()
    with ClientPool() as pool:
        subscriber = subscribe_durable(
            pool, broker.port, topic, sub_id, ack="client-individual", **rabbit
        )
        producer = pool.tcp(broker.port)
        frames = receive_through_end_marker(producer, subscriber, topic)
        assert seqs_of(frames[:-1]) == list(range(5)), (describe(frames), brokers.logs())
        for frame in frames:
            subscriber.ack(frame)

        # UNSUBSCRIBE with durable:true deletes it; make that durable too.
        rid = unique("unsubscribe")
        subscriber.conn.unsubscribe(id=sub_id, headers={"receipt": rid, **rabbit})
        subscriber.listener.wait_receipt(rid)
        producer.send(topic, "dropped", receipt=True, headers={"persistent": "true", "seq": "99"})
        store_barrier(producer)
    broker.kill9()

    broker = brokers.start()
    with ClientPool() as pool:
        subscriber = subscribe_durable(
            pool, broker.port, topic, sub_id, ack="client-individual", **rabbit
        )
        producer = pool.tcp(broker.port)
        frames = receive_through_end_marker(producer, subscriber, topic)
        assert frames[:-1] == [], describe(frames)  # nothing but the end marker


def test_durable_subscribe_receipt_means_subscription_survives_kill9(brokers):
    topic = "/topic/" + unique("late")
    client_id = unique("cid")
    durable = {"activemq.subscriptionName": "late-sub"}
    broker = brokers.start()
    with ClientPool() as pool:
        subscriber = pool.tcp(broker.port, connect=False)
        subscriber.connect(headers={"client-id": client_id})
        rid = unique("subscribe")
        with StoreLock(brokers.data_dir):
            subscriber.conn.subscribe(topic, id="s1", headers={**durable, "receipt": rid})
            # The store cannot commit yet: the RECEIPT is withheld.
            with pytest.raises(AssertionError, match="no RECEIPT"):
                subscriber.listener.wait_receipt(rid, timeout=1.0)
        subscriber.listener.wait_receipt(rid)  # committed now
        broker.kill9()

    broker = brokers.start()
    with ClientPool() as pool:
        # Published after the restart: the durable subscription should hold them.
        producer = pool.tcp(broker.port)
        send_seqs(producer, topic, range(3))
        subscriber = subscribe_durable(pool, broker.port, topic, "s1", client_id, **durable)
        frames = receive_through_end_marker(producer, subscriber, topic)
        assert seqs_of(frames[:-1]) == [0, 1, 2], describe(frames)


# -- 6. what does not survive ---------------------------------------------------------------


def test_non_persistent_messages_do_not_survive_restart(brokers):
    destination = queue_name("mixed")
    broker = brokers.start()
    publish(broker.port, destination, range(0, 10, 2), persistent=True)
    publish(broker.port, destination, range(1, 10, 2), persistent=False)
    broker.stop()

    frames = restart_and_drain(brokers, destination)
    assert seqs_of(frames) == [0, 2, 4, 6, 8], (describe(frames), brokers.logs())


def test_memory_store_keeps_nothing_across_restart(brokers):
    destination = queue_name("memory")
    broker = brokers.start("--store", "memory")
    publish(broker.port, destination, range(10), persistent=True)
    with ClientPool() as pool:
        # The messages are there while the broker runs.
        client = pool.tcp(broker.port)
        client.subscribe(destination, ack="client-individual")
        assert seqs_of(client.next_messages(10)) == list(range(10))
    broker.stop()

    assert restart_and_drain(brokers, destination, "--store", "memory") == []


def test_expired_persistent_message_is_not_delivered_after_restart(brokers):
    destination = queue_name("ttl")
    broker = brokers.start()
    expires = int(time.time() * 1000) + 300
    with ClientPool() as pool:
        producer = pool.tcp(broker.port)
        producer.send(
            destination,
            "message 0",
            receipt=True,
            headers={"persistent": "true", "seq": "0", "expires": str(expires)},
        )
        send_seqs(producer, destination, [1])
    broker.kill9()
    # Its time runs out while the broker is down (a restart takes longer
    # than this, so this hardly ever waits).
    time.sleep(max(0.0, expires / 1000 + 0.05 - time.time()))

    frames = restart_and_drain(brokers, destination)
    assert seqs_of(frames) == [1], (describe(frames), brokers.logs())


def test_second_broker_on_same_data_dir_loses_nothing(brokers):
    """
    A second broker on a data directory that a running broker holds refuses
    to start: it exits (within a bound: hanging fails) with a non-zero
    status, and its log says that the directory is in use by the first
    broker's pid and to give each broker its own --data-dir. The first
    broker goes on serving and storing: every message sent to it before
    and after the attempt survives its restart.
    """
    destination = queue_name("shared")
    first = brokers.start()
    publish(first.port, destination, [1])
    second = brokers.start(wait=False)
    status = second.wait_exit(START_DEADLINE)
    log = second.log_path.read_text(errors="replace")
    assert status != 0, brokers.logs()
    refusal = (
        f"the data directory {brokers.data_dir} is in use by another broker "
        f"(pid {first.pid}); give each broker its own --data-dir"
    )
    assert refusal in log, brokers.logs()
    assert "Traceback" not in log, log  # one paragraph, not a traceback
    publish(first.port, destination, [2])
    first.stop()

    frames = restart_and_drain(brokers, destination)
    assert seqs_of(frames) == [1, 2], (describe(frames), brokers.logs())


# -- 7. the default data directory -------------------------------------------------------------


def test_default_data_dir_is_created_in_cwd(brokers, tmp_path):
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    destination = queue_name("default-dir")
    broker = brokers.start(data_dir=None, cwd=cwd)
    store = cwd / "stomptw-data"
    assert store.is_dir(), (sorted(p.name for p in cwd.iterdir()), brokers.logs())
    assert (store / "stomptw.sqlite3").is_file()
    publish(broker.port, destination, range(5))
    broker.kill9()

    frames = restart_and_drain(brokers, destination, data_dir=None, cwd=cwd)
    assert seqs_of(frames) == list(range(5)), brokers.logs()
    assert not (tmp_path / "data").exists()


# -- 8. a data directory that cannot be created ------------------------------------------------


def test_uncreatable_data_dir_fails_startup_naming_the_path(brokers, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a regular file")
    data_dir = blocker / "store"
    broker = brokers.start(data_dir=data_dir, wait=False)
    status = broker.wait_exit(START_DEADLINE)
    log = brokers.logs()
    assert status != 0, log
    assert f"cannot open the message store at {data_dir / 'stomptw.sqlite3'}" in log, log
    assert "Not a directory" in log, log
    assert blocker.read_text() == "a regular file"


def test_unreadable_store_file_fails_startup_naming_the_path(brokers, tmp_path):
    data_dir = tmp_path / "garbage"
    data_dir.mkdir()
    database = data_dir / "stomptw.sqlite3"
    database.write_bytes(b"this is not an SQLite database" * 100)
    broker = brokers.start(data_dir=data_dir, wait=False)
    status = broker.wait_exit(START_DEADLINE)
    log = brokers.logs()
    assert status != 0, log
    assert f"cannot open the message store at {database}" in log, log
    # The broker refused it rather than starting over.
    assert database.read_bytes() == b"this is not an SQLite database" * 100


# -- streams and delayed messages --------------------------------------------------------


def test_kill9_keeps_a_streams_messages_offsets_and_epoch(brokers):
    """Every RECEIPTed stream message is back after SIGKILL, at its offset, same epoch."""
    stream = "/stream/" + unique("dur")
    broker = brokers.start()
    # Streams keep every message, persistent:true or not.
    publish(broker.port, stream, range(50), persistent=False)
    with ClientPool() as pool:
        client = pool.tcp(broker.port)
        client.subscribe(stream, "s", **{"x-stream-offset": "last"})
        epoch = client.next_message().headers["x-stream-epoch"]
        broker.kill9()
    again = brokers.start()
    with ClientPool() as pool:
        client = pool.tcp(again.port)
        client.subscribe(stream, "s", **{"x-stream-offset": "offset=10", "x-stream-epoch": epoch})
        frames = client.next_messages(40)
    assert [int(f.headers["x-stream-offset"]) for f in frames] == list(range(10, 50))
    assert seqs_of(frames) == list(range(10, 50))
    assert all("x-stream-recovered" not in f.headers for f in frames)
    assert {f.headers["x-stream-epoch"] for f in frames} == {epoch}


def test_kill9_keeps_a_delayed_persistent_message_until_it_is_due(brokers):
    """A RECEIPTed delayed message survives SIGKILL and still waits for its time."""
    destination = queue_name("later")
    broker = brokers.start()
    with ClientPool() as pool:
        client = pool.tcp(broker.port)
        sent = time.monotonic()
        client.send(
            destination,
            "due in 2 s",
            receipt=True,
            headers={"persistent": "true", "AMQ_SCHEDULED_DELAY": "2000"},
        )
        broker.kill9()
    again = brokers.start()
    with ClientPool() as pool:
        client = pool.tcp(again.port)
        client.subscribe(destination, "s")
        message = client.next_message(timeout=15)
        arrived = time.monotonic()
    assert message.body == "due in 2 s"
    assert arrived - sent >= 2.0
