"""
Fuzz a live broker: random and mutated STOMP frames over TCP and WebSocket
from several connections, with a well-behaved producer and consumer beside
them, bounded by ``--frames`` (1,000,000) and ``--seconds`` (300).

``twistd stomptw`` runs on its defaults (SQLite store) on loopback. Each
fuzzing connection (``--workers`` threads, alternating TCP and WebSocket)
sends ``--per-connection`` (20) frames: valid ones mutated (bytes flipped,
inserted, cut, headers garbled, bad escapes, lying content-length, NULs) or
random bytes, then reads until the broker closes it or a second passes.
Meanwhile a producer sends persistent messages with a sequence number to
``/queue/fuzz-good`` and a consumer takes them with client-individual ACKs.

It reports, and fails (exit status 1) on any of: the broker process dying,
a traceback in its log, a well-behaved message lost or duplicated, a
fresh client not served afterwards, or the broker's RSS more than
``--max-rss-growth`` (10 %) above its baseline once the fuzzing connections
are gone. ``--rounds`` repeats the fuzzing and samples the RSS after each
round, to tell a leak (growing every round) from memory kept once.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from pathlib import Path

from harness import Stomptw, memory
from loadgen import Conn, Tally, encode, open_session, own_cpu

GOOD = "/queue/fuzz-good"

VALID = [
    encode("CONNECT", {"accept-version": "1.2", "host": "x", "heart-beat": "100,100"}),
    encode("STOMP", {"accept-version": "1.0,1.1,1.2", "host": "x"}),
    encode("SUBSCRIBE", {"id": "1", "destination": "/queue/fz", "ack": "client"}),
    encode("SUBSCRIBE", {"id": "2", "destination": "/stream/fz", "x-stream-offset": "first"}),
    # Already expired (expires:1): accepted, routed and dropped, so that what
    # the broker holds afterwards is not the fuzzers' messages but leaks.
    encode("SEND", {"destination": "/queue/fz", "receipt": "r", "expires": "1"}, b"body"),
    encode("SEND", {"destination": "/topic/fz", "persistent": "true"}, b"x" * 100),
    encode(
        "SEND",
        {"destination": "/queue/fz", "AMQ_SCHEDULED_DELAY": "10", "priority": "7", "expires": "1"},
    ),
    encode("SEND", {"destination": "/queue/fz", "reply-to": "/temp-queue/r", "expires": "1"}, b"q"),
    encode("ACK", {"id": "1"}),
    encode("NACK", {"id": "1", "transaction": "t"}),
    encode("BEGIN", {"transaction": "t"}),
    encode("COMMIT", {"transaction": "t", "receipt": "c"}),
    encode("UNSUBSCRIBE", {"id": "1"}),
    encode("DISCONNECT", {"receipt": "d"}),
    b"\n\n",
]


def mutate(rng: random.Random) -> bytes:
    """One fuzzed frame: a valid one mutated, or random bytes."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randint(1, 300))
    frame = bytearray(rng.choice(VALID))
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        pos = rng.randrange(len(frame) + 1)
        if kind == 0 and frame:
            frame[min(pos, len(frame) - 1)] = rng.randrange(256)
        elif kind == 1:
            frame[pos:pos] = rng.randbytes(rng.randint(1, 20))
        elif kind == 2:
            del frame[pos : pos + rng.randint(1, 20)]
        elif kind == 3:
            frame[pos:pos] = rng.choice([b"\\x", b"\\", b":", b"\r", b"\x00", b"\n\n"])
        elif kind == 4:
            frame[pos:pos] = (
                b"content-length:" + str(rng.choice([-1, 0, 99999999, 7])).encode() + b"\n"
            )
        elif kind == 5:
            frame[pos:pos] = (
                b"h" * rng.randint(1, 2000) + b":" + b"v" * rng.randint(0, 2000) + b"\n"
            )
        else:
            frame = frame * rng.randint(2, 5)
    return bytes(frame)


def fuzzer(target_tcp, target_ws, budget, stats, seed: int, deadline: float, per: int) -> None:
    rng = random.Random(seed)
    use_ws = seed % 2 == 1
    while time.monotonic() < deadline:
        with budget["lock"]:
            if budget["left"] <= 0:
                return
            budget["left"] -= per
        target = target_ws if use_ws else target_tcp
        use_ws = not use_ws
        try:
            conn = Conn(target, timeout=5)
        except OSError:
            stats["connect_failed"] += 1
            continue
        frames = [mutate(rng) for _ in range(per)]
        if rng.random() < 0.7:
            frames.insert(0, VALID[0])
        try:
            conn.send(frames)
            stats["frames"] += len(frames)
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                got = conn.read(0.2)
                if any(command == b"ERROR" for command, _, _ in got):
                    stats["error_frames"] += 1
                    break
        except (ConnectionError, OSError, TimeoutError):
            stats["closed"] += 1
        finally:
            conn.close()
        stats["connections"] += 1


def good_traffic(target, count: int, tally: Tally, done: threading.Event, errors: list) -> None:
    """A producer and a consumer moving ``count`` persistent messages, exactly once."""
    deadline = time.monotonic() + 600
    try:
        consumer = open_session(target, deadline)
        consumer.send(
            [encode("SUBSCRIBE", {"destination": GOOD, "id": "g", "ack": "client-individual"})]
        )
        producer = open_session(target, deadline)
        for first in range(0, count, 100):
            batch = [
                encode("SEND", {"destination": GOOD, "persistent": "true", "seq": str(n)}, b"g")
                for n in range(first, min(count, first + 100))
            ]
            producer.send(batch)
            time.sleep(0.05)
        while tally.distinct < count and time.monotonic() < deadline:
            tally.count(consumer, consumer.read_before(deadline), ack_each=True)
        producer.close()
        consumer.close()
    except Exception as e:  # noqa: BLE001 - reported, the run fails on it
        errors.append(repr(e))
    finally:
        done.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--per-connection", type=int, default=20)
    parser.add_argument("--good", type=int, default=20_000, help="well-behaved messages")
    parser.add_argument(
        "--rounds", type=int, default=1, help="fuzz this many times, RSS sampled after each"
    )
    parser.add_argument(
        "--max-rss-growth",
        type=float,
        default=0.10,
        help="fail when the RSS after is more than this share above the baseline",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=35.0,
        help="seconds to wait after the fuzzing before the RSS is read (the broker trims "
        "its heap every 30 s)",
    )
    parser.add_argument(
        "--twistd", default=str(Path(__file__).resolve().parent.parent / ".venv/bin/twistd")
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        broker = Stomptw(Path(work), args.twistd, ["--max-connections", "0"])
        try:
            tcp, ws = broker.target("tcp"), broker.target("ws")
            time.sleep(1.0)
            baseline = memory(broker.pid)[0]
            stats = dict.fromkeys(
                ("frames", "connections", "error_frames", "closed", "connect_failed"), 0
            )
            budget = {"left": args.frames, "lock": threading.Lock()}
            tally, done, errors = Tally(args.good), threading.Event(), []
            good = threading.Thread(
                target=good_traffic, args=(tcp, args.good, tally, done, errors), daemon=True
            )
            gen0, t0 = own_cpu(), time.monotonic()
            deadline = t0 + args.seconds
            good.start()
            rounds = []
            for round_number in range(args.rounds):
                budget["left"] = args.frames
                workers = [
                    threading.Thread(
                        target=fuzzer,
                        args=(
                            tcp,
                            ws,
                            budget,
                            stats,
                            seed + round_number * args.workers,
                            deadline,
                            args.per_connection,
                        ),
                        daemon=True,
                    )
                    for seed in range(args.workers)
                ]
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                time.sleep(2)
                rounds.append(memory(broker.pid)[0] / 2**20)
            fuzz_seconds = time.monotonic() - t0
            done.wait(120)
            alive = broker.proc.poll() is None
            # Closing connections let go of their memory, and the broker gives
            # freed heap back to the system every 30 s.
            time.sleep(args.settle)
            after = memory(broker.pid)[0] if alive else 0
            probe_ok = False
            if alive:
                probe = open_session(tcp, time.monotonic() + 10)
                probe.send([encode("SEND", {"destination": "/queue/probe", "receipt": "p"})])
                command, _, _ = probe.next_frame(time.monotonic() + 10)
                probe_ok = command == b"RECEIPT"
                probe.close()
            log = broker.log(None)
        finally:
            broker.stop()
    tracebacks = log.count("Traceback")
    lost = args.good - tally.distinct
    growth = (after - baseline) / baseline if baseline else 0.0
    print(
        f"{stats['frames']} fuzzed frames over {stats['connections']} connections in "
        f"{fuzz_seconds:.0f} s ({stats['frames'] / fuzz_seconds:.0f} frames/s); "
        f"ERROR frames seen on {stats['error_frames']}, closed by the broker {stats['closed']}, "
        f"connect failures {stats['connect_failed']}; generator CPU {own_cpu() - gen0:.1f} s"
    )
    print(
        f"well-behaved: {tally.distinct}/{args.good} delivered, {tally.duplicates} duplicate(s), "
        f"{lost} lost{'; ' + errors[0] if errors else ''}"
    )
    print(
        f"broker alive: {alive}; fresh client served: {probe_ok}; tracebacks in log: "
        f"{tracebacks}; RSS {baseline / 2**20:.1f} MiB before, {after / 2**20:.1f} MiB after "
        f"({growth:+.0%}); after each round: " + ", ".join(f"{r:.0f} MiB" for r in rounds)
    )
    ok = alive and probe_ok and not tracebacks and not lost and not errors
    ok = ok and growth <= args.max_rss_growth
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
