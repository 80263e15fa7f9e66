"""
Log bytes per connection: ``--connections`` (3,000) short STOMP connections
(CONNECT, then DISCONNECT with a receipt), opened back to back from one
client against ``twistd stomptw`` (memory store, TCP only), and the bytes
its log grew by while they came and went.

Extra arguments go to ``twistd stomptw``; for what every connection cost
before ``--log-level`` and ``--log-connections-per-second`` existed::

    .venv/bin/python benchmarks/log_bytes.py -- --log-level debug --log-connections-per-second 0
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from harness import Stomptw

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--twistd", default=str(REPO / ".venv/bin/twistd"))
    parser.add_argument("broker_args", nargs="*", help="more twistd stomptw options, after --")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        broker = Stomptw(
            Path(work), args.twistd, ["--store", "memory", *args.broker_args], ws=False
        )
        try:
            port = broker.target("tcp").port
            time.sleep(0.5)
            before = len(broker.log(None).encode())
            started = time.monotonic()
            for _ in range(args.connections):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(
                        b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00DISCONNECT\nreceipt:r\n\n\x00"
                    )
                    while sock.recv(4096):
                        pass
            elapsed = time.monotonic() - started
            time.sleep(1.5)  # the last closes are logged
            grown = len(broker.log(None).encode()) - before
        finally:
            broker.stop()
    options = " ".join(args.broker_args) or "defaults"
    print(
        f"{options}: {args.connections} connections in {elapsed:.1f} s, {grown} log bytes, "
        f"{grown / args.connections:.0f} bytes per connection"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
