"""
Cluster mode end to end: a real ``redis-server`` on a free loopback port in
a temporary directory, and two or three ``twistd -n stomptw --cluster ...``
nodes as real processes (:mod:`redisnodes`), driven by stomp.py and
websocket-client.

Nothing sleeps to let something happen: a node is used once its admin API
says it joined (``GET /api/cluster``), and what must not arrive is checked
after an end marker the same producer sent later (per-producer order holds
across nodes), plus a receipt round trip.

Skipped only when ``redis-server`` is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from clients import LOCALHOST, TIMEOUT, ClientPool, StompPyClient, encode_frame, unique, wait_until
from redisnodes import REDIS_SERVER, Node, joined, metric, refused
from test_durability import free_port

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
)

#: stomp.py logs in with these on nodes started with AUTH.
AUTH = ("--auth", "memory:alice:secret")


def login(pool: ClientPool, node: Node) -> StompPyClient:
    client = pool.tcp(node.port, connect=False)
    client.connect(username="alice", passcode="secret")
    return client


# -- topics across nodes ---------------------------------------------------------------


def test_topic_messages_reach_every_subscriber_on_every_node_once(cluster):
    redis = cluster.redis()
    a = cluster.start("na", "--cluster", redis.url, *AUTH)
    b = cluster.start("nb", "--cluster", redis.url, *AUTH)
    c = cluster.start("nc", "--cluster", redis.url, *AUTH, ws=True)
    joined(a, b, c)
    topic = "/topic/" + unique("fan")
    end = "/topic/" + unique("end")
    with ClientPool() as pool:
        on_a, on_b = login(pool, a), login(pool, b)
        for client in (on_a, on_b):
            client.subscribe(topic)
        ws = pool.websocket(f"ws://{LOCALHOST}:{c.ws_port}/ws", ["v12.stomp"])
        ws.connect(login="alice", passcode="secret")
        ws.send_frame("SUBSCRIBE", {"destination": topic, "id": "1", "receipt": "r1"})
        assert ws.recv_frame()[1].command == "RECEIPT"
        # Subscribed on every node: now publish on A, from a producer of its own.
        producer = login(pool, a)
        binary = bytes(range(256)) + b"\x00\r\n\x00"
        producer.send(topic, "héllo", headers={"colour": "blue", "x-seq": "1"})
        producer.conn.send(topic, binary, headers={"x-seq": "2", "content-type": "app/bin"})
        producer.send(topic, "last", headers={"x-seq": "3"}, receipt=True)
        frames = {}
        for name, client in (("a", on_a), ("b", on_b)):
            got = client.next_messages(3)
            assert [m.headers["x-seq"] for m in got] == ["1", "2", "3"], name
            assert got[0].body == "héllo" and got[0].headers["colour"] == "blue"
            assert all(m.headers["user-id"] == "alice" for m in got), name
            frames[name] = got
            client.assert_no_message()
        ws_frames = [ws.recv_frame()[1] for _ in range(3)]
        assert [f.headers["x-seq"] for f in ws_frames] == ["1", "2", "3"]
        assert ws_frames[1].body == binary  # bytes-safe across the hop
        assert ws_frames[1].headers["content-type"] == "app/bin"
        assert {f.headers["user-id"] for f in ws_frames} == {"alice"}
        # The same message has the same id on every node; ids differ between messages.
        ids = [m.headers["message-id"] for m in frames["a"]]
        assert [m.headers["message-id"] for m in frames["b"]] == ids
        assert [f.headers["message-id"] for f in ws_frames] == ids
        assert len(set(ids)) == 3
        # Exactly once on C: the next thing there is a later message of the same producer.
        ws.send_frame("SUBSCRIBE", {"destination": end, "id": "2", "receipt": "r2"})
        assert ws.recv_frame()[1].command == "RECEIPT"
        producer.send(end, "end", receipt=True)
        assert ws.recv_frame()[1].headers["destination"] == end
    assert metric(a, "stomptw_cluster_up") == 1
    assert metric(a, "stomptw_cluster_messages_published_total") >= 4
    assert metric(b, "stomptw_cluster_messages_received_total") >= 3
    status = c.cluster()
    assert status["node"] == "nc" and status["engine"] == redis.url
    for node in (a, b, c):
        log = node.log_text()
        assert f"cluster: node {node.node_id} joined the cluster on Redis {redis.url}" in log
        assert "Traceback" not in log


def test_many_producers_on_several_nodes_keep_their_order(cluster):
    redis, a, b = cluster.pair()
    topic = "/topic/" + unique("order")
    count = 300
    with ClientPool() as pool:
        subscribers = [pool.tcp(a.port), pool.tcp(b.port)]
        for client in subscribers:
            client.subscribe(topic)
        producers = {"pa": pool.tcp(a.port), "pb": pool.tcp(b.port)}
        for seq in range(count):
            for name, producer in producers.items():
                producer.conn.send(topic, f"{name} {seq}", headers={"p": name, "seq": str(seq)})
        for producer in producers.values():
            producer.barrier()
        for client in subscribers:
            got = client.next_messages(2 * count)
            for name in producers:
                seqs = [int(m.headers["seq"]) for m in got if m.headers["p"] == name]
                assert seqs == list(range(count)), name
            client.assert_no_message()


def test_a_burst_crosses_whole_and_in_order(cluster):
    """15,000 pipelined SENDs on A (more than Redis answers at once) all reach B, in order."""
    redis = cluster.redis()
    a = cluster.start("na", "--cluster", redis.url)
    # Room for the whole burst should this test's reader fall behind: the
    # topic's backlog limit is not what is tested here.
    b = cluster.start("nb", "--cluster", redis.url, "--slow-topic-limit", "20000")
    joined(a, b)
    topic = "/topic/" + unique("burst")
    count = 15_000
    with ClientPool() as pool:
        subscriber = pool.raw(b.port)
        subscriber.connect()
        subscriber.send("SUBSCRIBE", {"destination": topic, "id": "1", "receipt": "r"})
        assert subscriber.read_frame().command == "RECEIPT"
        producer = pool.raw(a.port)
        producer.connect()
        burst = b"".join(
            encode_frame("SEND", {"destination": topic, "seq": str(seq)}, b"x" * 100)
            for seq in range(count)
        )
        sending = threading.Thread(target=producer.send_bytes, args=(burst,), daemon=True)
        sending.start()
        seqs = [int(subscriber.read_frame().headers["seq"]) for _ in range(count)]
        sending.join(TIMEOUT)
        assert seqs == list(range(count))
    assert metric(a, "stomptw_cluster_messages_local_only_total") == 0


def test_a_durable_subscription_collects_what_other_nodes_publish(cluster):
    redis, a, b = cluster.pair()
    topic = "/topic/" + unique("durable")
    with ClientPool() as pool:
        away = pool.tcp(b.port, connect=False)
        away.connect(headers={"client-id": "dur-client"})
        away.subscribe(topic, "s1", ack="client", **{"activemq.subscriptionName": "keep"})
        away.disconnect()
        producer = pool.tcp(a.port)
        for seq in range(3):
            producer.send(topic, f"while away {seq}", headers={"seq": str(seq)})
        producer.barrier()
        # The messages are on B once B's counters say so; then the subscriber comes back.
        wait_until(
            lambda: metric(b, "stomptw_cluster_messages_received_total") >= 3,
            "node nb received the messages",
        )
        back = pool.tcp(b.port, connect=False)
        back.connect(headers={"client-id": "dur-client"})
        back.subscribe(topic, "s1", ack="client", **{"activemq.subscriptionName": "keep"})
        got = back.next_messages(3)
        assert [m.headers["seq"] for m in got] == ["0", "1", "2"]
        for message in got:
            back.ack(message)
        back.assert_no_message()


def test_nodes_join_over_tls_and_over_a_unix_socket(cluster, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl; .ci/run installs it)")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", "key.pem", "-out", "cert.pem", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    cert = tmp_path / "cert.pem"
    # A short path: a UNIX socket's must fit in 108 bytes.
    sockets = Path(tempfile.mkdtemp(prefix="stomptw-redis-"))
    try:
        redis = cluster.redis(
            "--unixsocket", str(sockets / "redis.sock"), tls=(cert, tmp_path / "key.pem")
        )
        over_tls = f"rediss://127.0.0.1:{redis.port}/0?ca={cert}"
        a = cluster.start("na", "--cluster", over_tls)
        b = cluster.start("nb", "--cluster", f"unix://{sockets}/redis.sock?db=0")
        untrusted = refused(tmp_path, "--cluster", f"rediss://127.0.0.1:{redis.port}/0")
        joined(a, b)
        topic = "/topic/" + unique("tls")
        with ClientPool() as pool:
            on_a, on_b = pool.tcp(a.port), pool.tcp(b.port)
            for client in (on_a, on_b):
                client.subscribe(topic)
            pool.tcp(a.port).send(topic, "from a", receipt=True)
            pool.tcp(b.port).send(topic, "from b", receipt=True)
            for client in (on_a, on_b):
                assert sorted(m.body for m in client.next_messages(2)) == ["from a", "from b"]
                client.assert_no_message()
        output, _ = untrusted.communicate(timeout=60)
        assert untrusted.returncode != 0
        assert "the TLS handshake with Redis failed (CERTIFICATE_VERIFY_FAILED)" in output, output
        assert f"joined the cluster on Redis rediss://127.0.0.1:{redis.port}/0" in a.log_text()
        assert f"joined the cluster on Redis unix://{sockets}/redis.sock?db=0" in b.log_text()
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


# -- refusing to start ------------------------------------------------------------------


def test_a_node_that_cannot_join_refuses_to_start_saying_why(cluster, tmp_path):
    locked = cluster.redis("--requirepass", "right horse")
    (tmp_path / "wrong").write_text("battery staple\n")
    (tmp_path / "right").write_text("right horse\n")
    nobody = free_port()
    cases = {
        "bad URL": (
            ["--cluster", "http://127.0.0.1:6379"],
            "--cluster: unknown scheme http:",
        ),
        "unreachable": (
            ["--cluster", f"redis://127.0.0.1:{nobody}/0"],
            f"stomptw cannot start: --cluster redis://127.0.0.1:{nobody}/0: Redis cannot "
            "be reached (Connection refused)",
        ),
        "wrong password": (
            ["--cluster", locked.url, "--cluster-password-file", "wrong"],
            f"stomptw cannot start: --cluster {locked.url}: Redis refused the password",
        ),
        "no password": (
            ["--cluster", locked.url],
            f"stomptw cannot start: --cluster {locked.url}: Redis requires a password",
        ),
        "no such database": (
            [
                "--cluster",
                f"redis://127.0.0.1:{locked.port}/99",
                "--cluster-password-file",
                "right",
            ],
            "Redis has no database 99",
        ),
        "missing password file": (
            ["--cluster", locked.url, "--cluster-password-file", "missing"],
            "stomptw cannot start: --cluster-password-file missing: cannot read it",
        ),
    }
    procs = {name: refused(tmp_path, *args) for name, (args, _) in cases.items()}
    for name, (_, expected) in cases.items():
        output, _ = procs[name].communicate(timeout=60)
        assert procs[name].returncode != 0, (name, output)
        assert expected in output, (name, output)
        assert "Traceback" not in output, (name, output)
        assert "battery" not in output and "right horse" not in output, (name, output)


# -- when Redis goes away ------------------------------------------------------------------


def test_redis_restart_keeps_sessions_and_fan_out_resumes(cluster):
    redis, a, b = cluster.pair(ws=True)
    topic = "/topic/" + unique("restart")
    with ClientPool() as pool:
        on_a, on_b = pool.tcp(a.port), pool.tcp(b.port)
        for client in (on_a, on_b):
            client.subscribe(topic)
        ws = pool.websocket(f"ws://{LOCALHOST}:{b.ws_port}/ws", ["v12.stomp"])
        ws.connect()
        ws.send_frame("SUBSCRIBE", {"destination": topic, "id": "1", "receipt": "r1"})
        assert ws.recv_frame()[1].command == "RECEIPT"
        producer = pool.tcp(a.port)
        producer.send(topic, "before", receipt=True)
        for client in (on_a, on_b):
            assert client.next_message().body == "before"
        assert ws.recv_frame()[1].body == b"before"

        redis.kill()
        a.wait_cluster(False)
        b.wait_cluster(False)
        # Meanwhile: local subscribers only, and every session stays up.
        producer.send(topic, "while down", receipt=True)
        assert on_a.next_message().body == "while down"
        on_b.assert_no_message()
        assert metric(a, "stomptw_cluster_up") == 0
        assert metric(a, "stomptw_cluster_messages_local_only_total") == 1

        redis.start()
        a.wait_cluster(True)
        b.wait_cluster(True)
        producer.send(topic, "after", receipt=True)
        assert on_a.next_message().body == "after"
        assert on_b.next_message().body == "after"  # not "while down": nothing was queued
        _, frame = ws.recv_frame()
        assert frame.body == b"after"  # the WebSocket session lived through it too
        for client in (on_a, on_b):
            client.assert_no_message()
    for node in (a, b):
        log = node.log_text()
        assert log.count(f"cluster: node {node.node_id} lost Redis {redis.url}") == 1, log
        assert log.count(f"cluster: node {node.node_id} is back on Redis {redis.url}") == 1, log
        assert "Traceback" not in log
        assert node.cluster()["reconnects"] == 1


def test_a_frozen_redis_is_noticed_and_fan_out_resumes_when_it_thaws(cluster):
    """SIGSTOP: connections stay open but nothing answers; the nodes' PINGs notice."""
    redis, a, b = cluster.pair()
    topic = "/topic/" + unique("frozen")
    with ClientPool() as pool:
        on_a, on_b = pool.tcp(a.port), pool.tcp(b.port)
        for client in (on_a, on_b):
            client.subscribe(topic)
        producer = pool.tcp(a.port)
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            a.wait_cluster(False)
            b.wait_cluster(False)
            producer.send(topic, "while frozen", receipt=True)
            assert on_a.next_message().body == "while frozen"
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        a.wait_cluster(True)
        b.wait_cluster(True)
        producer.send(topic, "thawed", receipt=True)
        assert on_a.next_message().body == "thawed"
        assert on_b.next_message().body == "thawed"
        for client in (on_a, on_b):
            client.assert_no_message()
    for node in (a, b):
        log = node.log_text()
        assert "no answer from Redis within 3 s" in log, log
        assert log.count(f"cluster: node {node.node_id} is back on Redis") == 1, log
        node.stop()  # SIGTERM: an orderly stop, the Redis connections closed with it


def test_queue_messages_keep_their_sender_and_each_node_checks_permissions(cluster, tmp_path):
    """Logins and permissions are each node's own (same files); user-id survives the hop."""
    permissions = tmp_path / "permissions.toml"
    permissions.write_text(
        "[users.alice]\n"
        'read = ["/queue/jobs.*"]\n'
        'write = ["/queue/jobs.*", "/topic/e2e.barrier"]\n'
        'create = ["/queue/jobs.*"]\n'
        "[users.bob]\n"
        'read = ["/queue/other.*"]\n'
        'write = ["/queue/jobs.*"]\n'
        'create = ["/queue/jobs.*"]\n'
    )
    args = ("--auth", "memory:alice:secret", "--auth", "memory:bob:hunter2")
    args += ("--permissions", str(permissions))
    redis = cluster.redis()
    a = cluster.start("na", "--cluster", redis.url, *args)
    b = cluster.start("nb", "--cluster", redis.url, *args)
    joined(a, b)
    queue = "/queue/jobs." + unique("q")
    with ClientPool() as pool:
        consumer = login(pool, b)
        consumer.subscribe(queue)
        bob = pool.tcp(a.port, connect=False)
        bob.connect(username="bob", passcode="hunter2")
        # A forged user-id is replaced by the sender's node with the login.
        bob.send(queue, "from bob", headers={"user-id": "alice"}, receipt=True)
        got = consumer.next_message()
        assert got.body == "from bob" and got.headers["user-id"] == "bob"
        # Node B checks its own permissions: bob may not read the queue there.
        reader = pool.tcp(b.port, connect=False)
        reader.connect(username="bob", passcode="hunter2")
        reader.conn.subscribe(queue, id="1", headers={"receipt": "r"})
        error = reader.next_error()
        assert "read" in error.headers["message"] and queue in error.headers["message"]
        consumer.assert_no_message()
