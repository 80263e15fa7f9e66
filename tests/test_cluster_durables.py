"""
Durable topic subscriptions across the nodes of a cluster, end to end: a
real ``redis-server`` and ``twistd -n stomptw --cluster ...`` nodes as real
processes (:mod:`redisnodes`), driven by stomp.py. A durable subscription
keeps collecting while its subscriber's node is down, and resumes on
whichever node the subscriber comes back to.
"""

from __future__ import annotations

import pytest
from clients import ClientPool, unique, wait_until
from redisnodes import REDIS_SERVER

from stomptw.model import durable_owner

pytestmark = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is not installed (apt-get install redis-server; .ci/run installs it)",
)

#: The two ways clients name a durable subscription: ActiveMQ's header, and
#: RabbitMQ's ``durable:true`` with the subscription id as the name.
CONVENTIONS = {
    "activemq": {"activemq.subscriptionName": "keep"},
    "rabbitmq": {"durable": "true", "auto-delete": "false"},
}


def durable(pool: ClientPool, port: int, topic: str, convention: str, client_id: str):
    client = pool.tcp(port, connect=False)
    client.connect(headers={"client-id": client_id})
    client.subscribe(topic, "keep", ack="client-individual", **CONVENTIONS[convention])
    return client


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_a_durable_subscription_collects_while_its_node_is_down_and_resumes_elsewhere(
    cluster, convention
):
    redis, a, b = cluster.pair("--cluster-node-timeout", "1")
    topic = "/topic/" + unique("durable")
    client_id = unique("client")
    with ClientPool() as pool:
        on_b = durable(pool, b.port, topic, convention, client_id)
        producer = pool.tcp(a.port)
        for seq in range(2):
            producer.send(topic, f"live {seq}", receipt=True)
        live = on_b.next_messages(2)
        assert [m.body for m in live] == ["live 0", "live 1"]
        on_b.ack(live[0])  # "live 1" stays unacknowledged
        # An ACK that had not reached Redis when its node died would come
        # again (at least once): wait until Redis has it.
        key = "stomptw:0:durable:/" + topic
        group = durable_owner(client_id, "keep")
        wait_until(lambda: redis.cli("XPENDING", key, group).split()[0] == "1", "ACK in Redis")
        b.kill9()
        for seq in range(3):
            producer.send(topic, f"away {seq}", receipt=True)
        # Back on the other node: what was unacknowledged, then what came meanwhile.
        on_a = durable(pool, a.port, topic, convention, client_id)
        got = on_a.next_messages(4)
        assert [m.body for m in got] == ["live 1", "away 0", "away 1", "away 2"]
        assert got[0].headers["redelivered"] == "true"
        assert all("redelivered" not in m.headers for m in got[1:])
        for message in got:
            on_a.ack(message)
        producer.send(topic, "later", receipt=True)
        assert on_a.next_message().body == "later"
        on_a.assert_no_message()


def test_an_unsubscribed_durable_subscription_is_gone_on_every_node(cluster):
    redis, a, b = cluster.pair()
    topic = "/topic/" + unique("gone")
    client_id = unique("client")
    with ClientPool() as pool:
        first = durable(pool, b.port, topic, "activemq", client_id)
        first.disconnect()
        producer = pool.tcp(a.port)
        producer.send(topic, "kept", receipt=True)
        # The subscriber comes back on A: the subscription made on B, with its message.
        again = durable(pool, a.port, topic, "activemq", client_id)
        kept = again.next_message()
        assert kept.body == "kept"
        again.ack(kept)
        rid = unique("unsubscribe")
        again.conn.unsubscribe(
            id="keep", headers={"activemq.subscriptionName": "keep", "receipt": rid}
        )
        again.listener.wait_receipt(rid)
        # Deleted (UNSUBSCRIBE with its name): a new one on B starts from now.
        producer.send(topic, "after removal", receipt=True)
        fresh = durable(pool, b.port, topic, "activemq", client_id)
        producer.send(topic, "new", receipt=True)
        assert fresh.next_message().body == "new"
        fresh.assert_no_message()
