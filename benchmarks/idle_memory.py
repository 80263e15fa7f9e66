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
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_CLIENT = r"""
import base64, os, socket, sys
port, n, transport = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
subscribe = sys.argv[4] == "1"

def ws_frame(payload):
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    return head + mask + body

socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    frames = [b"CONNECT\naccept-version:1.2\nhost:/\nheart-beat:0,0\n\n\x00",
              b"SUBSCRIBE\nid:0\ndestination:/topic/idle-%d\n\n\x00" % i]
    if transport == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(("GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Protocol: v12.stomp\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        frames = [ws_frame(f) for f in frames]
    s.sendall(frames[0])
    got = b""
    while b"CONNECTED" not in got:
        got += s.recv(4096)
    if subscribe:
        s.sendall(frames[1])
    socks.append(s)
print("ready", flush=True)
sys.stdin.readline()
"""


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--transport", choices=("ws", "tcp"), default="ws")
    parser.add_argument("--top", type=int, default=25, help="allocation sites to list")
    parser.add_argument(
        "--no-subscribe", action="store_true", help="CONNECT only, without the SUBSCRIBE"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
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
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

        def snapshot(_: object) -> None:
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

        # Settle a second after the last CONNECTED, so the SUBSCRIBEs land.
        d = deferToThread(client.stdout.readline)
        d.addCallback(lambda _: reactor.callLater(1.0, snapshot, None))

    reactor.callWhenRunning(measure)
    reactor.run()
    if "total" not in result:
        sys.exit("no measurement was taken")


if __name__ == "__main__":
    main()
