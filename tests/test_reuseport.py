"""
Several stomptw processes on one machine behind the same port: the
``reuseport:`` endpoint (``SO_REUSEPORT``), with ``--cluster`` tying them
into one broker. Real nodes (:mod:`redisnodes`) and stomp.py.
"""

from __future__ import annotations

import pytest
from clients import ClientPool, unique, wait_until
from redisnodes import REDIS_SERVER, joined, metric
from test_durability import free_port
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString

from stomptw.config import endpoint_scope
from stomptw.reuseport import ReusePortEndpoint


def test_the_endpoint_string_is_known_to_twisted():
    endpoint = serverFromString(reactor, "reuseport:61613:interface=127.0.0.1:backlog=128")
    assert isinstance(endpoint, ReusePortEndpoint)
    assert (endpoint.port, endpoint.interface, endpoint.backlog) == (61613, "127.0.0.1", 128)
    assert endpoint_scope("reuseport:61613:interface=127.0.0.1") == "loopback"
    assert endpoint_scope("reuseport:61613") == "network"


@pytest.mark.parametrize(
    "text", ["reuseport:", "reuseport:http", "reuseport:1:colour=blue", "reuseport:1:2"]
)
def test_a_bad_endpoint_string_is_refused_saying_why(text):
    with pytest.raises(ValueError, match="reuseport:"):
        serverFromString(reactor, text)


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")
def test_two_nodes_share_one_port_and_act_as_one_broker(cluster):
    port = free_port()
    shared = f"reuseport:{port}:interface=127.0.0.1"
    redis, a, b = cluster.pair("--tcp", shared)
    queue = "/queue/" + unique("shared-port")
    count = 24
    with ClientPool() as pool:
        clients = [pool.tcp(port) for _ in range(count)]
        total = lambda: metric(a, "stomptw_connections") + metric(b, "stomptw_connections")  # noqa: E731
        wait_until(lambda: total() == count, "every connection counted")
        # The kernel spread them: each node has some.
        assert metric(a, "stomptw_connections") > 0
        assert metric(b, "stomptw_connections") > 0
        consumer = clients[0]
        consumer.subscribe(queue)
        for i, producer in enumerate(clients[1:]):
            producer.send(queue, str(i), receipt=True)
        got = consumer.next_messages(count - 1)
        assert sorted(int(m.body) for m in got) == list(range(count - 1))
        consumer.assert_no_message()
    joined(a, b)
