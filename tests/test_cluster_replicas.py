"""
RECEIPTs that wait for Redis replicas (``--cluster-replicas``, Redis's
``WAIT``): a real ``redis-server`` primary with a real replica, and a
``twistd -n stomptw --cluster ...`` node, driven by stomp.py.
"""

from __future__ import annotations

import os
import signal

import pytest
from clients import ClientPool, unique, wait_until
from redisnodes import REDIS_SERVER, joined

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
)


def xlen(redis, subject: str) -> int:
    return int(redis.cli("XLEN", f"stomptw:0:queue:{subject}").strip())


def test_a_persistent_receipt_follows_the_replicas_and_fails_when_they_lag(cluster):
    primary = cluster.redis()
    replica = cluster.redis("--replicaof", "127.0.0.1", str(primary.port))
    wait_until(
        lambda: "master_link_status:up" in replica.cli("INFO", "replication"),
        "the replica in sync",
        timeout=15,
    )
    node = cluster.start(
        "na",
        "--cluster",
        primary.url,
        "--cluster-replicas",
        "1",
        "--cluster-replica-timeout",
        "0.5",
    )
    joined(node)
    queue = "/queue/" + unique("replicated")
    subject = "/" + queue
    with ClientPool() as pool:
        producer = pool.tcp(node.port)
        for i in range(20):
            producer.send(queue, f"m{i}", headers={"persistent": "true"}, receipt=True)
            # The RECEIPT came after the replica had it.
            assert xlen(replica, subject) == i + 1
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            other = pool.tcp(node.port)
            # A message without persistent:true does not wait for replicas.
            other.send(queue, "fast", receipt=True)
            producer.conn.send(queue, "lagging", headers={"persistent": "true", "receipt": "r"})
            error = producer.next_error()
            assert error.headers["message"] == "message not replicated"
            assert error.headers["receipt-id"] == "r"
            assert "only 0 of 1 Redis replicas confirmed" in error.body
            assert "within 0.5 s" in error.body
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)
        # Stored on the primary all the same: it is delivered.
        consumer = pool.tcp(node.port)
        consumer.subscribe(queue)
        got = [m.body for m in consumer.next_messages(22)]
        assert got[:20] == [f"m{i}" for i in range(20)]
        assert sorted(got[20:]) == ["fast", "lagging"]
    assert "only 0 of 1 Redis replicas confirmed" in node.log_text()
