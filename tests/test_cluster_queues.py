"""
Queues across the nodes of a cluster, end to end: a real ``redis-server``
and two or three ``twistd -n stomptw --cluster ...`` nodes as real processes
(:mod:`redisnodes`), driven by stomp.py and websocket-client.

What must not arrive is checked after a later message of the same queue
(a queue's messages from one producer come in order while one subscriber
takes them) or a receipt round trip; nothing sleeps to let something happen.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from clients import LOCALHOST, TIMEOUT, ClientPool, unique, wait_until
from redisnodes import REDIS_SERVER, joined, metric

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
)


def bodies(messages) -> list[str]:
    return [m.body for m in messages]


def test_a_message_sent_on_one_node_reaches_one_subscriber_on_another(cluster):
    redis, a, b = cluster.pair()
    queue = "/queue/" + unique("orders")
    with ClientPool() as pool:
        producer = pool.tcp(a.port)
        # Sent before anyone subscribes anywhere: the messages wait in Redis.
        for i in range(5):
            producer.send(queue, f"m{i}", headers={"persistent": "true", "n": str(i)}, receipt=True)
        consumer = pool.tcp(b.port)
        consumer.subscribe(queue)
        got = consumer.next_messages(5)
        assert bodies(got) == [f"m{i}" for i in range(5)]
        assert len({m.headers["message-id"] for m in got}) == 5
        assert all(m.headers["destination"] == queue for m in got)
        assert all("redelivered" not in m.headers for m in got)
        producer.send(queue, "later", receipt=True)
        assert consumer.next_message().body == "later"
        consumer.assert_no_message()
    wait_until(lambda: a.cluster()["queues"]["depths"].get("/" + queue) == 0, "depth 0")
    wait_until(lambda: sorted(b.cluster()["nodes_alive"]) == ["na", "nb"], "both alive")
    assert b.cluster()["queues"]["taken"] == 6
    assert metric(b, "stomptw_cluster_nodes_alive") == 2


def test_subscribers_on_several_nodes_share_a_queue_each_message_once(cluster):
    """prefetch-count=1 on every node: each node takes one at a time, so all of them serve."""
    redis, a, b = cluster.pair(ws=True)
    queue = "/queue/" + unique("shared")
    count = 60
    got: dict[str, list] = {"tcp": [], "ws": []}
    done = threading.Event()
    with ClientPool() as pool:
        on_a = pool.tcp(a.port)
        on_a.subscribe(queue, ack="client-individual", **{"prefetch-count": "1"})
        ws = pool.websocket(f"ws://{LOCALHOST}:{b.ws_port}/ws", ["v12.stomp"])
        ws.connect()
        ws.send_frame(
            "SUBSCRIBE",
            {
                "destination": queue,
                "id": "1",
                "ack": "client-individual",
                "prefetch-count": "1",
                "receipt": "r1",
            },
        )
        assert ws.recv_frame()[1].command == "RECEIPT"

        def consume_tcp() -> None:
            while not done.is_set():
                try:
                    message = on_a.listener.messages.get(timeout=0.05)
                except Exception:
                    continue
                got["tcp"].append(message.body)
                on_a.ack(message, receipt=False)

        reader = threading.Thread(target=consume_tcp, daemon=True)
        reader.start()
        producer = pool.tcp(a.port)
        for i in range(count):
            producer.conn.send(queue, f"m{i}")
        producer.barrier()
        # The last messages may go to the TCP subscriber: the WebSocket is
        # read with a short timeout until every message is in.
        ws.ws.settimeout(0.1)
        deadline = time.monotonic() + 30
        try:
            while len(got["tcp"]) + len(got["ws"]) < count:
                assert time.monotonic() < deadline, got
                try:
                    _, frame = ws.recv_frame()
                except AssertionError:
                    continue  # nothing within 0.1 s
                assert frame.command == "MESSAGE", frame
                got["ws"].append(frame.body.decode())
                ws.send_frame("ACK", {"id": frame.headers["ack"]})
        finally:
            done.set()
            reader.join(TIMEOUT)
        everything = got["tcp"] + got["ws"]
        assert sorted(everything) == sorted(f"m{i}" for i in range(count))
        # Both nodes served (one message at a time each, so neither takes them all).
        assert got["tcp"] and got["ws"], got
        on_a.assert_no_message()


def test_nack_redelivers_and_a_departing_subscriber_returns_messages_to_other_nodes(cluster):
    redis, a, b = cluster.pair()
    queue = "/queue/" + unique("returns")
    with ClientPool() as pool:
        on_b = pool.tcp(b.port)
        on_b.subscribe(queue, ack="client-individual", **{"prefetch-count": "10"})
        producer = pool.tcp(a.port)
        for i in range(3):
            producer.send(queue, f"m{i}", receipt=True)
        first = on_b.next_messages(3)
        assert bodies(first) == ["m0", "m1", "m2"]
        assert [m.headers["x-delivery-count"] for m in first] == ["0"] * 3
        # NACK on B with B's subscriber still there: delivered again on B.
        on_b.nack(first[0])
        again = on_b.next_message()
        assert again.body == "m0"
        assert again.headers["redelivered"] == "true"
        assert again.headers["x-delivery-count"] == "1"  # earlier deliveries
        on_b.ack(first[1])
        # B's subscriber goes away holding m0 and m2: A's subscriber gets them.
        on_a = pool.tcp(a.port)
        on_a.subscribe(queue, ack="client-individual")
        on_b.drop()
        returned = on_a.next_messages(2)
        assert sorted(bodies(returned)) == ["m0", "m2"]
        counts = {m.body: m.headers["x-delivery-count"] for m in returned}
        assert counts == {"m0": "2", "m2": "1"}
        assert all(m.headers["redelivered"] == "true" for m in returned)
        ids = {m.body: m.headers["message-id"] for m in first}
        assert all(m.headers["message-id"] == ids[m.body] for m in returned)
        for m in returned:
            on_a.ack(m)
        on_a.assert_no_message()
    wait_until(lambda: a.cluster()["queues"]["depths"].get("/" + queue) == 0, "depth 0")


def test_the_dead_letter_queue_after_max_redeliveries_spans_the_nodes(cluster):
    redis, a, b = cluster.pair("--max-redeliveries", "1")
    queue = "/queue/" + unique("poison")
    with ClientPool() as pool:
        on_b = pool.tcp(b.port)
        on_b.subscribe(queue, ack="client-individual")
        dead = pool.tcp(a.port)
        dead.subscribe("/queue/DLQ." + queue[len("/queue/") :])
        producer = pool.tcp(a.port)
        producer.send(queue, "poison", receipt=True)
        on_b.nack(on_b.next_message())
        on_b.nack(on_b.next_message())
        dl = dead.next_message()
        assert dl.body == "poison"
        on_b.assert_no_message()


def _consume(
    client, seen: list, stop: threading.Event, acks: int | None = None
) -> threading.Thread:
    """
    A thread that records ``(body, redelivered)`` for each message and ACKs
    it (only the first ``acks``, when given: the rest stay unacknowledged).
    """

    def run() -> None:
        while not stop.is_set():
            try:
                message = client.listener.messages.get(timeout=0.05)
            except Exception:
                continue
            seen.append((message.body, message.headers.get("redelivered") == "true"))
            if acks is None or len(seen) <= acks:
                try:
                    client.ack(message, receipt=False)
                except Exception:
                    return  # its node was killed

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_kill_9_of_a_node_mid_consume_loses_no_receipted_message(cluster):
    """10,000 persistent receipted messages; the node of one consumer is killed midway."""
    redis, a, b = cluster.pair("--cluster-node-timeout", "1")
    queue = "/queue/" + unique("kill9")
    count = 10_000
    on_a_seen: list = []
    on_b_seen: list = []
    stop = threading.Event()
    with ClientPool() as pool:
        on_a = pool.tcp(a.port)
        on_a.subscribe(queue, ack="client-individual", **{"prefetch-count": "50"})
        on_b = pool.tcp(b.port)
        on_b.subscribe(queue, ack="client-individual", **{"prefetch-count": "200"})
        # B's subscriber stops acknowledging after 300: it holds up to its
        # prefetch-count (200) unacknowledged when its node is killed.
        threads = [_consume(on_a, on_a_seen, stop), _consume(on_b, on_b_seen, stop, 300)]
        producer = pool.tcp(a.port)
        receipts = []
        try:
            for i in range(count):
                rid = f"r{i}"
                receipts.append(rid)
                producer.conn.send(queue, str(i), headers={"persistent": "true", "receipt": rid})
                if i == count // 3:
                    wait_until(lambda: len(on_b_seen) >= 400, "B holding 100", TIMEOUT)
                    b.kill9()
            producer.listener.wait_receipt(receipts[-1], timeout=60)
            assert set(receipts) <= producer.listener._receipts

            # Every message reaches A, but those B's subscriber acknowledged;
            # what B held unacknowledged comes again on A once B is silent.
            def everything() -> bool:
                done = on_a_seen + on_b_seen[:300]
                return {int(body) for body, _ in done} >= set(range(count))

            wait_until(everything, "every message acknowledged", 60)
        finally:
            stop.set()
            for thread in threads:
                thread.join(TIMEOUT)
        # A message B had and may not have seen acknowledged came again on A, marked.
        on_b_bodies = {body for body, _ in on_b_seen}
        for body, redelivered in on_a_seen:
            if body in on_b_bodies:
                assert redelivered, body
        # Nothing was delivered twice on A itself.
        assert len({body for body, _ in on_a_seen}) == len(on_a_seen)
    status = a.cluster()
    assert status["queues"]["claimed"] >= 100
    assert "from node nb, silent for over 1 s" in a.log_text()


def test_a_node_restarted_with_its_id_delivers_its_old_unacknowledged_messages_once(cluster):
    args = ("--cluster-node-timeout", "1")
    redis, a, b = cluster.pair(*args)
    queue = "/queue/" + unique("restart")
    with ClientPool() as pool:
        on_b = pool.tcp(b.port)
        on_b.subscribe(queue, ack="client-individual")
        producer = pool.tcp(a.port)
        for i in range(20):
            producer.send(queue, str(i), headers={"persistent": "true"}, receipt=i == 19)
        held = on_b.next_messages(20)
        for message in held[:5]:
            on_b.ack(message)
        # An ACK that had not reached Redis when its node died would come
        # again (at least once): wait until Redis has them all.
        key = "stomptw:0:queue:/" + queue
        wait_until(
            lambda: redis.cli("XPENDING", key, "stomptw").split()[0] == "15", "ACKs in Redis"
        )
        b.kill9()
        again = cluster.start("nb", "--cluster", redis.url, *args)
        joined(again)
        consumer = pool.tcp(again.port)
        consumer.subscribe(queue, ack="client-individual")
        back = consumer.next_messages(15)
        assert sorted(int(m.body) for m in back) == list(range(5, 20))
        assert all(m.headers["redelivered"] == "true" for m in back)
        for message in back:
            consumer.ack(message)
        producer.send(queue, "end", receipt=True)
        assert consumer.next_message().body == "end"
        consumer.assert_no_message()
    assert again.cluster()["queues"]["claimed"] == 15


def _all_receipts(client, receipts: list[str], timeout: float = 60) -> None:
    client.listener.wait_receipt(receipts[-1], timeout=timeout)
    missing = set(receipts) - client.listener._receipts
    assert not missing, sorted(missing)[:5]


@pytest.mark.parametrize("failure", ["restart", "freeze"])
def test_redis_restarted_or_frozen_mid_stream_keeps_sessions_and_loses_nothing(cluster, failure):
    """Redis with AOF (appendfsync always) killed and restarted, or SIGSTOPped a while."""
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    redis, a, b = cluster.pair("--cluster-node-timeout", "2", redis=aof)
    queue = "/queue/" + unique(failure)
    count = 1000
    seen: list = []
    stop = threading.Event()
    with ClientPool() as pool:
        consumer = pool.tcp(b.port)
        consumer.subscribe(queue, ack="client-individual", **{"prefetch-count": "100"})
        thread = _consume(consumer, seen, stop)
        producer = pool.tcp(a.port)
        receipts = []
        try:
            for i in range(count):
                receipts.append(f"r{i}")
                producer.conn.send(
                    queue, str(i), headers={"persistent": "true", "receipt": receipts[-1]}
                )
                if i == count // 2:
                    if failure == "restart":
                        redis.kill()
                        redis.start()
                    else:
                        redis.proc.send_signal(signal.SIGSTOP)
                        wait_until(lambda: not a.cluster()["connected"], "A noticed", 20)
                        redis.proc.send_signal(signal.SIGCONT)
            _all_receipts(producer, receipts)
            wait_until(
                lambda: {int(body) for body, _ in seen} >= set(range(count)),
                "every message delivered",
                60,
            )
            # Later messages still flow, on the same sessions.
            producer.send(queue, "after", receipt=True)
            wait_until(lambda: any(body == "after" for body, _ in seen), "after")
        finally:
            stop.set()
            thread.join(TIMEOUT)
        assert producer.listener.errors.empty() and consumer.listener.errors.empty()
        assert not producer.listener.disconnected.is_set()
        assert not consumer.listener.disconnected.is_set()
    for node in (a, b):
        node.wait_cluster(True)
        assert "Traceback" not in node.log_text()


def test_a_send_waiting_longer_than_the_send_timeout_gets_an_error(cluster):
    redis = cluster.redis()
    a = cluster.start("na", "--cluster", redis.url, "--cluster-send-timeout", "1")
    joined(a)
    queue = "/queue/" + unique("timeout")
    with ClientPool() as pool:
        bystander = pool.tcp(a.port)
        bystander.subscribe("/topic/" + unique("calm"))
        persistent, plain = pool.tcp(a.port), pool.tcp(a.port)
        persistent.send(queue, "before", headers={"persistent": "true"}, receipt=True)
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: not a.cluster()["connected"], "A noticed", 20)
            persistent.conn.send(queue, "stuck", headers={"persistent": "true", "receipt": "r1"})
            plain.conn.send(queue, "stuck too")
            errors = [persistent.next_error(timeout=20), plain.next_error(timeout=20)]
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        # The persistent message's RECEIPT waited for Redis: its ERROR says it was not stored.
        assert errors[0].headers["message"] == "message could not be stored"
        assert errors[0].headers["receipt-id"] == "r1"
        assert errors[1].headers["message"] == "cluster unavailable"
        for error in errors:
            assert "Redis has been unreachable for" in error.body
        # Other sessions stay, and the cluster comes back.
        a.wait_cluster(True)
        bystander.barrier()
    assert "dropped 2 queue messages that waited" in a.log_text()
