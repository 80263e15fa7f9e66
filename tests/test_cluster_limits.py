"""
Queue limits across the nodes of a cluster (``--max-queue-length``,
``--max-queue-bytes``, ``--overflow block|reject``): a real ``redis-server``
and two ``twistd -n stomptw --cluster ...`` nodes, stomp.py clients. A
queue's length is its stream's in Redis and its bytes a counter kept beside
it, so what producers on one node sent counts on the other.
"""

from __future__ import annotations

import pytest
from clients import ClientPool, unique, wait_until
from redisnodes import REDIS_SERVER, metric

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
)


def xlen(redis, subject: str) -> int:
    return int(redis.cli("XLEN", f"stomptw:0:queue:{subject}").strip())


def counted_bytes(redis, subject: str) -> int:
    return int(redis.cli("HGET", "stomptw:0:queue-bytes", subject).strip() or 0)


def depth_seen(node, subject: str, depth: int) -> None:
    wait_until(
        lambda: node.cluster()["queues"]["depths"].get(subject) == depth,
        f"node {node.node_id} to see {depth} in {subject}",
    )


def test_reject_counts_what_every_node_sent_and_refuses_a_transaction_whole(cluster):
    redis, a, b = cluster.pair("--max-queue-length", "5", "--overflow", "reject")
    queue = "/queue/" + unique("capped")
    subject = "/" + queue
    with ClientPool() as pool:
        on_a = pool.tcp(a.port)
        for i in range(5):
            on_a.send(queue, f"m{i}", receipt=True)
        assert xlen(redis, subject) == 5
        # Node B sent none of them, and refuses the sixth all the same.
        depth_seen(b, subject, 5)
        on_b = pool.tcp(b.port)
        on_b.conn.send(queue, "sixth", headers={"receipt": "r6"})
        error = on_b.next_error()
        assert error.headers["receipt-id"] == "r6"
        assert error.headers["message"] == f"destination {queue} is full"
        assert "5 messages across the cluster, the limit is 5" in error.body
        assert xlen(redis, subject) == 5
        # A consumer on B takes and acknowledges two: there is room for two again.
        consumer = pool.tcp(b.port)
        sub = consumer.subscribe(queue, ack="client-individual", **{"prefetch-count": "2"})
        got = consumer.next_messages(2)
        assert [m.body for m in got] == ["m0", "m1"]
        for message in got:
            consumer.ack(message)
        wait_until(lambda: xlen(redis, subject) == 3, "two entries gone")
        consumer.unsubscribe(sub)
        depth_seen(a, subject, 3)
        # A transaction of three would make six: none of it is stored.
        tx = on_a.begin()
        for i in range(3):
            on_a.send(queue, f"t{i}", transaction=tx)
        on_a.conn.commit(tx, headers={"receipt": "c"})
        error = on_a.next_error()
        assert "None of the transaction took effect" in error.body
        assert "3 messages across the cluster and 3 more" in error.body
        assert xlen(redis, subject) == 3
        # Two fit.
        again = pool.tcp(a.port)
        tx = again.begin()
        for i in range(2):
            again.send(queue, f"u{i}", transaction=tx)
        again.commit(tx)
        assert xlen(redis, subject) == 5


def test_a_byte_limit_counts_stored_sizes_and_forgets_them_when_acknowledged(cluster):
    # Each 1 KiB message counts for its stored size plus 512, as on a single
    # node: three fit in 4,500 bytes, a fourth does not.
    redis, a, b = cluster.pair("--max-queue-bytes", "4500", "--overflow", "reject")
    queue = "/queue/" + unique("heavy")
    subject = "/" + queue
    body = "x" * 1024
    with ClientPool() as pool:
        producer = pool.tcp(a.port)
        for _ in range(3):
            producer.send(queue, body, receipt=True)
        stored = counted_bytes(redis, subject)
        assert 3 * (1024 + 512) < stored < 3 * (1024 + 512 + 300)  # plus headers, envelope
        producer.conn.send(queue, body, headers={"receipt": "r4"})
        error = producer.next_error()
        assert f"{stored} bytes held across the cluster, the limit is 4500" in error.body
        consumer = pool.tcp(b.port)
        consumer.subscribe(queue, ack="client-individual")
        for message in consumer.next_messages(3):
            consumer.ack(message)
        wait_until(lambda: xlen(redis, subject) == 0, "the queue empty")
        wait_until(lambda: counted_bytes(redis, subject) == 0, "its bytes forgotten")
        depth_seen(a, subject, 0)
        pool.tcp(a.port).send(queue, body, receipt=True)
        assert consumer.next_message().body == body


def test_block_holds_producers_on_any_node_until_a_consumer_makes_room(cluster):
    redis, a, b = cluster.pair("--max-queue-length", "20")
    queue = "/queue/" + unique("blocking")
    subject = "/" + queue
    count = 500
    padding = "." * 1024
    with ClientPool() as pool:
        producer = pool.tcp(a.port)
        for i in range(count):
            producer.conn.send(queue, f"m{i}{padding}")
        wait_until(lambda: metric(a, "stomptw_producers_blocked_total") >= 1, "a blocked producer")
        depth_seen(a, subject, xlen(redis, subject))
        held = xlen(redis, subject)
        # At the limit: this node counts its own SENDs on their way to Redis
        # (past it at most by one read of the producer's frames, 64 KiB).
        assert 20 <= held <= 20 + 64, held
        consumer = pool.tcp(b.port)
        consumer.subscribe(queue, ack="client-individual", **{"prefetch-count": "10"})
        got = []
        while len(got) < count:
            message = consumer.next_message()
            got.append(message.body)
            consumer.ack(message, receipt=False)
        assert got == [f"m{i}{padding}" for i in range(count)]
        producer.barrier()
        consumer.assert_no_message()
        wait_until(lambda: xlen(redis, subject) == 0, "the queue empty")


def test_script_flush_in_redis_loses_no_receipted_message(cluster):
    """The nodes send queue messages through a script; an operator's SCRIPT FLUSH is survived."""
    redis, a, b = cluster.pair()
    queue = "/queue/" + unique("flushed")
    with ClientPool() as pool:
        consumer = pool.tcp(b.port)
        consumer.subscribe(queue, ack="client-individual")
        producer = pool.tcp(a.port)
        for i in range(5):
            producer.send(queue, f"m{i}", headers={"persistent": "true"}, receipt=True)
        redis.cli("SCRIPT", "FLUSH")
        for i in range(5, 10):
            producer.send(queue, f"m{i}", headers={"persistent": "true"}, receipt=True)
        got = consumer.next_messages(10)
        assert [m.body for m in got] == [f"m{i}" for i in range(10)]
        redis.cli("SCRIPT", "FLUSH")
        for message in got:
            consumer.ack(message)
        wait_until(lambda: xlen(redis, "/" + queue) == 0, "every entry acknowledged")
        wait_until(lambda: counted_bytes(redis, "/" + queue) == 0, "and its bytes")
