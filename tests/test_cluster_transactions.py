"""
Transactions across the nodes of a cluster: a real ``redis-server`` and two
``twistd -n stomptw --cluster ...`` nodes, stomp.py on one and
websocket-client on the other. A COMMIT's SENDs reach Redis in one
``MULTI``/``EXEC`` (all stored or none); an ABORT sends nothing; ACKs in a
transaction settle the cluster's entries only on COMMIT.
"""

from __future__ import annotations

import re

import pytest
from clients import LOCALHOST, ClientPool, unique, wait_until
from redisnodes import REDIS_SERVER

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
)


def exec_calls(redis) -> int:
    """How many EXECs the Redis has run (its INFO commandstats)."""
    found = re.search(r"cmdstat_exec:calls=(\d+)", redis.cli("INFO", "commandstats"))
    return int(found.group(1)) if found else 0


def xlen(redis, subject: str) -> int:
    return int(redis.cli("XLEN", f"stomptw:0:queue:{subject}").strip())


def test_a_commit_on_one_node_stores_its_sends_together_for_a_subscriber_on_another(cluster):
    redis, a, b = cluster.pair(ws=True)
    orders = "/queue/" + unique("orders")
    audit = "/queue/" + unique("audit")
    with ClientPool() as pool:
        ws = pool.websocket(f"ws://{LOCALHOST}:{b.ws_port}/ws", ["v12.stomp"])
        ws.connect()
        for n, queue in enumerate((orders, audit)):
            ws.send_frame(
                "SUBSCRIBE",
                {"destination": queue, "id": str(n), "ack": "client-individual", "receipt": "s"},
            )
            assert ws.recv_frame()[1].command == "RECEIPT"
        producer = pool.tcp(a.port)
        execs = exec_calls(redis)

        aborted = producer.begin()
        producer.send(orders, "never", transaction=aborted)
        producer.abort(aborted)

        tx = producer.begin()
        for i in range(3):
            producer.send(orders, f"o{i}", transaction=tx, headers={"persistent": "true"})
        producer.send(audit, "a0", transaction=tx)
        # Nothing of the open transaction is in Redis, nor delivered.
        assert xlen(redis, "/" + orders) == 0
        producer.commit(tx)  # its RECEIPT follows EXEC's answer
        assert exec_calls(redis) == execs + 1
        assert xlen(redis, "/" + orders) == 3 and xlen(redis, "/" + audit) == 1

        got = [ws.recv_frame()[1] for _ in range(4)]
        assert all(f.command == "MESSAGE" for f in got)
        by_queue = {
            queue: [f.body.decode() for f in got if f.headers["destination"] == queue]
            for queue in (orders, audit)
        }
        assert by_queue == {orders: ["o0", "o1", "o2"], audit: ["a0"]}

        # ACKs in a transaction: an ABORT leaves the entries with the node;
        # the COMMIT settles them in Redis.
        ws.send_frame("BEGIN", {"transaction": "t1"})
        for frame in got:
            ws.send_frame("ACK", {"id": frame.headers["ack"], "transaction": "t1"})
        ws.send_frame("ABORT", {"transaction": "t1", "receipt": "aborted"})
        assert ws.recv_frame()[1].headers["receipt-id"] == "aborted"
        assert xlen(redis, "/" + orders) == 3
        ws.send_frame("BEGIN", {"transaction": "t2"})
        for frame in got:
            ws.send_frame("ACK", {"id": frame.headers["ack"], "transaction": "t2"})
        ws.send_frame("COMMIT", {"transaction": "t2", "receipt": "committed"})
        assert ws.recv_frame()[1].headers["receipt-id"] == "committed"
        wait_until(
            lambda: xlen(redis, "/" + orders) == 0 and xlen(redis, "/" + audit) == 0,
            "the acknowledged entries gone from Redis",
        )
        # The aborted SEND never arrives: a later message comes next.
        producer.send(orders, "after", receipt=True)
        frame = ws.recv_frame()[1]
        assert frame.body == b"after"
