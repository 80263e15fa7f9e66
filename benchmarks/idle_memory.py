#!/usr/bin/env python3
"""
Where an idle session's memory goes: the Python heap per session, by the
line that allocated it.

A broker from the checkout runs in this process under ``tracemalloc``
(``--store memory``, one listener of the chosen transport). A child process
opens ``--sessions`` connections with raw sockets, each CONNECTing and
SUBSCRIBEing to a topic of its own, as ``compare.py``'s idle rows do
(``--no-subscribe``: CONNECT only), and holds them open. The difference
between two snapshots, before and after, divided by the number of
sessions, is printed by allocation site, largest first. RSS per session,
the figure ``compare.py`` publishes, is larger: it also counts the
allocator's free space and memory that is not Python objects.

Usage, from the repository root::

    .venv/bin/python benchmarks/idle_memory.py --sessions 2000 --transport ws
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import REPO_ROOT, free_port, raise_fd_limit  # noqa: E402

_CLIENT = r"""
import sys, time
sys.path.insert(0, sys.argv[5])
from harness import Target, raise_fd_limit
from loadgen import open_session
port, n, transport, subscribe = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
raise_fd_limit()
deadline = time.monotonic() + 60 + n / 50
target = Target("stomptw", transport, port)
sessions = []
for i in range(n):
    conn = open_session(target, deadline)
    if subscribe:
        conn.subscribe(f"/topic/idle-{i}", "auto", deadline)
    sessions.append(conn)
print("ready", flush=True)
sys.stdin.readline()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--transport", choices=("ws", "tcp"), default="ws")
    parser.add_argument("--top", type=int, default=25, help="allocation sites to list")
    parser.add_argument(
        "--no-subscribe", action="store_true", help="CONNECT only, without the SUBSCRIBE"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(REPO_ROOT))
    raise_fd_limit()
    tracemalloc.start(1)
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread
    from twisted.logger import globalLogBeginner

    # Log events are written and dropped, as under twistd; without an
    # observer, Twisted would keep the first 65,536 in memory.
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)

    from stomptw.config import BrokerConfig
    from stomptw.service import makeService

    port = free_port()
    listener = [f"tcp:{port}:interface=127.0.0.1"]
    config = BrokerConfig(
        tcp_endpoints=listener if args.transport == "tcp" else [],
        ws_endpoints=listener if args.transport == "ws" else [],
        store="memory",
    )
    service = makeService(config, reactor=reactor)
    service.startService()
    result: dict[str, float] = {}

    def measure() -> None:
        gc.collect()
        before = tracemalloc.take_snapshot()
        client = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CLIENT,
                str(port),
                str(args.sessions),
                args.transport,
                "0" if args.no_subscribe else "1",
                str(HERE),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

        def snapshot(line: str) -> None:
            if line != "ready\n":
                client.kill()
                reactor.stop()
                return
            gc.collect()
            stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
            n = args.sessions
            result["total"] = sum(s.size_diff for s in stats) / n
            print(
                f"{args.transport}: {result['total'] / 1024:.2f} KiB of heap per session over {n}"
            )
            for s in stats[: args.top]:
                print(f"{s.size_diff / n:8.0f} B {s.count_diff / n:6.2f} objects  {s.traceback}")
            client.stdin.write("\n")
            client.stdin.flush()
            client.wait()
            reactor.stop()

        # Every SUBSCRIBE was receipted; the collection above settles the rest.
        deferToThread(client.stdout.readline).addCallback(snapshot)

    reactor.callWhenRunning(measure)
    reactor.run()
    if "total" not in result:
        sys.exit("no measurement was taken: the client did not open every session")


if __name__ == "__main__":
    main()
