"""
The application API's cost: ``Messaging.publish()`` from Python to a topic
with WebSocket subscribers, against a STOMP producer sending the same
messages over TCP.

A broker embedded in a child process (``makeService``, memory store) has an
``/app/bench/{count}`` handler that publishes ``count`` messages with
``Messaging.publish``, ``--batch`` (500) per reactor turn. ``--subscribers``
(10) WebSocket connections, in ``--workers`` (2) processes, subscribe to
``/topic/bench``. Each round sends ``--messages`` (20,000) messages to them,
first through the API (one SEND to ``/app/bench/N`` starts it), then from a
STOMP producer over TCP (pipelined, batches of 500), and reports the time
from the start to the last subscriber's last message, the delivery rate,
and the CPU time of the broker, the subscribers and the producer.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

from harness import cpu_seconds
from loadgen import Target, encode, open_session, own_cpu

HERE = Path(__file__).resolve().parent
TOPIC = "/topic/bench"


def serve(batch: int) -> None:
    """The broker process: print its ports, then serve until stdin closes."""
    sys.path.insert(0, str(HERE.parent))
    from twisted.internet import reactor, task

    from stomptw.application import Messaging
    from stomptw.config import BrokerConfig
    from stomptw.service import makeService

    listen = "tcp:0:interface=127.0.0.1"
    config = BrokerConfig(
        tcp_endpoints=[listen],
        ws_endpoints=[listen],
        store="memory",
        app_prefix="/app/",
        heartbeat_send_ms=0,
        heartbeat_receive_ms=0,
    )
    service = makeService(config, reactor)
    messaging = Messaging.of(service.broker)

    def bench(request):
        count = int(request.params["count"])

        def work():
            for n in range(count):
                messaging.publish(TOPIC, b"x" * 100, {"seq": str(n)})
                if n % batch == batch - 1:
                    yield None

        return task.cooperate(work()).whenDone()

    messaging.route("/app/bench/{count}", bench)
    service.startService()

    def ready(_):
        ports = {each.kind: each.port.getHost().port for each in service.listeners()}
        print(ports["stomp"], ports["ws"], flush=True)

    service.whenListening().addCallback(ready)
    reactor.run()  # until the parent's SIGTERM


def subscriber(port: int, connections: int, count: int, ready, results) -> None:
    """``connections`` WebSocket subscribers; report when each had ``count`` messages."""
    target = Target("stomptw", "ws", port)
    deadline = time.monotonic() + 600
    conns = [open_session(target, deadline) for _ in range(connections)]
    for conn in conns:
        conn.subscribe(TOPIC, "auto", deadline)
    ready.put(True)
    for _round in range(2):
        got = [0] * connections
        import selectors

        sel = selectors.DefaultSelector()
        for i, conn in enumerate(conns):
            sel.register(conn.sock, selectors.EVENT_READ, i)
        while min(got) < count:
            for key, _ in sel.select(timeout=5):
                i = key.data
                for command, _, _ in conns[i].read(0.001):
                    if command == b"MESSAGE":
                        got[i] += 1
        sel.close()
        results.put((time.monotonic(), own_cpu()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.batch)
        return 0
    import subprocess

    broker = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--batch", str(args.batch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        tcp, ws = (int(p) for p in broker.stdout.readline().split())
        ready, results = multiprocessing.Queue(), multiprocessing.Queue()
        per = args.subscribers // args.workers
        workers = [
            multiprocessing.Process(
                target=subscriber, args=(ws, per, args.messages, ready, results)
            )
            for _ in range(args.workers)
        ]
        for w in workers:
            w.start()
        for _ in workers:
            ready.get(timeout=60)
        n = args.messages
        print(
            f"{'producer':16} {'messages':>9} {'deliveries':>10} {'seconds':>8} "
            f"{'deliveries/s':>12} {'broker cpu s':>12} {'subs cpu s':>10} {'producer cpu s':>14}"
        )
        deadline = time.monotonic() + 600
        control = open_session(Target("stomptw", "tcp", tcp), deadline)
        sub_cpu = [0.0] * len(workers)
        for label in ("application API", "STOMP over TCP"):
            cpu0, gen0, t0 = cpu_seconds(broker.pid), own_cpu(), time.monotonic()
            if label == "application API":
                control.send([encode("SEND", {"destination": f"/app/bench/{n}"})])
            else:
                body = b"x" * 100
                for first in range(0, n, args.batch):
                    control.send(
                        [
                            encode("SEND", {"destination": TOPIC, "seq": str(s)}, body)
                            for s in range(first, min(n, first + args.batch))
                        ]
                    )
            produced = own_cpu() - gen0
            done = [results.get(timeout=600) for _ in workers]
            finished = max(t for t, _ in done)
            cpus = sorted(c for _, c in done)
            used = sum(cpus) - sum(sub_cpu)
            sub_cpu = cpus
            elapsed = finished - t0
            deliveries = n * per * len(workers)
            print(
                f"{label:16} {n:9d} {deliveries:10d} {elapsed:8.2f} {deliveries / elapsed:12.0f} "
                f"{cpu_seconds(broker.pid) - cpu0:12.2f} {used:10.2f} {produced:14.2f}",
                flush=True,
            )
        control.close()
        for w in workers:
            w.join(30)
    finally:
        broker.terminate()
        broker.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
