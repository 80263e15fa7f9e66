"""
Purge and expiry of a queue that spans the cluster: a real ``redis-server``
and two ``twistd -n stomptw --cluster ...`` nodes, stomp.py clients, the
admin API over HTTP. A purge on one node empties what waits in Redis (what
the other node already took for its subscriber stays there); a message
that expires while it waits in Redis is never delivered, and goes to its
dead-letter queue.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest
from clients import LOCALHOST, ClientPool, unique, wait_until
from redisnodes import REDIS_SERVER

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
)

TOKEN = "cluster-purge-token-0123456789abcdef"


def xlen(redis, subject: str) -> int:
    return int(redis.cli("XLEN", f"stomptw:0:queue:{subject}").strip())


def purge(node, queue: str) -> dict:
    request = urllib.request.Request(
        f"http://{LOCALHOST}:{node.admin_port}/api/destinations/"
        + quote(queue, safe="")
        + "/messages",
        method="DELETE",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _token_file(tmp_path) -> str:
    """The admin token in a file only its owner may read, for --admin-token-file."""
    token = tmp_path / "admin-token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    return str(token)


def test_a_purge_on_one_node_empties_what_waits_in_redis(cluster, tmp_path):
    redis, a, b = cluster.pair("--admin-token-file", _token_file(tmp_path))
    queue = "/queue/" + unique("purged")
    subject = "/" + queue
    with ClientPool() as pool:
        consumer = pool.tcp(b.port)
        consumer.subscribe(queue, ack="client-individual", **{"prefetch-count": "2"})
        producer = pool.tcp(a.port)
        for i in range(10):
            producer.send(queue, f"m{i}", headers={"persistent": "true"}, receipt=True)
        held = consumer.next_messages(2)
        assert [m.body for m in held] == ["m0", "m1"]
        wait_until(lambda: b.cluster()["queues"]["taken"] == 2, "node B took two")
        assert xlen(redis, subject) == 10
        # Node A has no subscriber and holds nothing: it purges Redis.
        answer = purge(a, queue)
        assert answer == {"destination": queue, "purged": 8}
        assert xlen(redis, subject) == 2  # B's two, delivered and unacknowledged
        for message in held:
            consumer.ack(message)
        wait_until(lambda: xlen(redis, subject) == 0, "the queue empty")
        assert int(redis.cli("HEXISTS", "stomptw:0:queue-bytes", subject).strip()) == 0
        producer.send(queue, "after", receipt=True)
        assert consumer.next_message().body == "after"  # nothing purged comes back
    assert "purged 8 message(s) from " + queue + " across the cluster" in a.log_text()


def test_a_purge_while_redis_is_unreachable_answers_503(cluster, tmp_path):
    redis, a, b = cluster.pair("--admin-token-file", _token_file(tmp_path))
    queue = "/queue/" + unique("unreachable")
    with ClientPool() as pool:
        pool.tcp(a.port).send(queue, "kept", headers={"persistent": "true"}, receipt=True)
    redis.kill()
    a.wait_cluster(connected=False)
    with pytest.raises(urllib.error.HTTPError) as refused:
        purge(a, queue)
    assert refused.value.code == 503
    assert "could not purge" in json.loads(refused.value.read())["error"]


def test_a_purge_cut_off_when_redis_goes_away_fails_as_unreachable():
    """Redis lost during the purge: the builtin ConnectionError the admin API maps to 503."""
    import txredisapi
    from twisted.internet import defer

    from stomptw.cluster.redisqueues import RedisQueues

    class Limits:
        def purge(self, protocol, subject, group):
            return defer.fail(txredisapi.ConnectionError("Lost connection"))

    class Engine:
        limits = Limits()

        def _protocol(self):
            return object()

        def flush(self):
            pass

    failures = []
    RedisQueues.purge(Engine(), "//queue/q").addErrback(failures.append)
    assert failures and failures[0].check(ConnectionError)
    assert not failures[0].check(txredisapi.ConnectionError)


def test_a_message_that_expires_while_waiting_in_redis_is_never_delivered(cluster):
    redis, a, b = cluster.pair("--dead-letter-expired")
    queue = "/queue/" + unique("ttl")
    with ClientPool() as pool:
        producer = pool.tcp(a.port)
        # Already past its time when a node takes it (expires is absolute, in ms).
        producer.send(queue, "stale", headers={"expires": "1000"}, receipt=True)
        producer.send(queue, "fresh", receipt=True)
        dead = pool.tcp(a.port)
        dead.subscribe("/queue/DLQ." + queue[len("/queue/") :])
        consumer = pool.tcp(b.port)
        consumer.subscribe(queue)
        assert consumer.next_message().body == "fresh"
        expired = dead.next_message()
        assert expired.body == "stale"
        consumer.assert_no_message()
    wait_until(lambda: xlen(redis, "/" + queue) == 0, "the queue empty")
