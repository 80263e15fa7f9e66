"""
What logins and permissions add to each message, without sockets: a
publisher and a subscriber on :mod:`stomptw.testing` (the real session and
broker on a Clock), 100-byte SENDs through a topic, in three modes: no
``--auth``; a login (so every MESSAGE carries ``user-id``); a login and a
permissions file. Prints nanoseconds per message, best and median of
``--rounds``. Imports the checkout's stomptw (run it from the repository).

    .venv/bin/python benchmarks/auth_cost.py
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stomptw.auth import make_checker  # noqa: E402
from stomptw.authenticator import build_authenticator  # noqa: E402
from stomptw.encoding import encode_frame  # noqa: E402
from stomptw.testing import BrokerOnClock  # noqa: E402

TOPIC = "/topic/bench-cost"
RULES = '[users.bench]\nread = ["/topic/bench-*"]\nwrite = ["/topic/bench-*"]\n'


def per_message(mode: str, rules: str, messages: int) -> float:
    """Nanoseconds per message through one broker in ``mode``."""
    env = BrokerOnClock(permissions_file=rules if mode == "permissions" else "")
    login = {}
    if mode != "anonymous":
        checkers = [make_checker("memory:bench:pw")]
        env.broker.auth = build_authenticator(env.config, checkers, env.clock)
        login = {"login": "bench", "passcode": "pw"}
    subscriber = env.connect(**login)
    subscriber.send("SUBSCRIBE", destination=TOPIC, id="1")
    publisher = env.connect(**login)
    batch = encode_frame("SEND", {"destination": TOPIC}, b"x" * 100) * 100
    begun = time.perf_counter()
    for _ in range(messages // 100):
        publisher.raw(batch)
        subscriber.transport.clear()
    return (time.perf_counter() - begun) / messages * 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--messages", type=int, default=50_000)
    a = p.parse_args(argv)
    modes = ("anonymous", "login", "permissions")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as rules:
        rules.write(RULES)
        rules.flush()
        gc.disable()  # a collection in one mode's run would be noise
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(a.rounds):
            for mode in modes:  # interleaved, so that drift hits every mode alike
                times[mode].append(per_message(mode, rules.name, a.messages))
                gc.collect()
    base = min(times["anonymous"])
    for mode in modes:
        best, median = min(times[mode]), statistics.median(times[mode])
        print(f"{mode:12} best {best:7.0f} ns  median {median:7.0f} ns  ({best / base:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
