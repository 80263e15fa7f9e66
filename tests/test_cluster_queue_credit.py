"""
A cluster queue without Redis: :class:`~stomptw.cluster.queues.ClusterQueue`
and :class:`~stomptw.cluster.node.ClusterNode` on a Clock, with in-memory
engines that record what the node asks of them (how many entries it wants,
which it is done with, which it gives back), for queues and for durable
subscriptions. tests/test_cluster_queues.py
runs real nodes on a real Redis.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
from fakes import FakeConsumer, make_broker, settle, subscribe
from test_cluster import Hub, MemoryBus
from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from stomptw.cluster.codec import decode_topic_message, encode_topic_message
from stomptw.cluster.node import ClusterNode
from stomptw.cluster.queues import ClusterQueue
from stomptw.interfaces import IClusterDurables, IClusterQueues
from stomptw.model import DestinationFull, Message, durable_owner


@implementer(IClusterQueues)
class MemoryQueues:
    """The cluster's queues in memory: one list of entries per subject, for one node."""

    def __init__(self) -> None:
        self.connected = True
        self.depths: dict[str, int] = {}
        self.nodes: list[str] = ["n1"]
        self.entries: dict[str, list[tuple[bytes, bytes, int]]] = {}
        self.wants: dict[str, int] = {}
        self.done_ids: list[bytes] = []
        self.given_back: list[tuple[bytes, int]] = []
        self.deliver = None
        self.on_up = self.on_gave_up = None
        self.full = False
        self.watched: dict[str, bool] = {}
        self._ids = itertools.count(1)

    def start(self, deliver) -> None:
        self.deliver = deliver

    def add(self, subject: str, payload: bytes) -> None:
        if self.full:
            raise OverflowError("64 MiB of messages wait for the cluster's Redis to come back")
        entry = b"%d-0" % next(self._ids)
        self.entries.setdefault(subject, []).append((entry, payload, 0))

    def want(self, subject: str, credit: int) -> None:
        self.wants[subject] = credit

    def together(self):
        return contextlib.nullcontext()  # one process's lists: atomic already

    def held(self, subject: str) -> tuple[int, int]:
        entries = self.entries.get(subject, [])
        return len(entries), sum(len(payload) for _, payload, _ in entries)

    def watch(self, subject: str, on: bool) -> None:
        self.watched[subject] = on

    def purge(self, subject: str):
        entries = self.entries.pop(subject, [])
        return defer.succeed(len(entries))

    def hand_over(self, subject: str) -> int:
        """Hand the node as many waiting entries as it wants; return how many."""
        waiting = self.entries.get(subject, [])
        count = 0
        while waiting and self.wants.get(subject, 0) > 0:
            entry, payload, deliveries = waiting.pop(0)
            self.wants[subject] -= 1
            self.deliver(subject, entry, payload, deliveries)
            count += 1
        return count

    def done(self, subject: str, entry_id: bytes) -> None:
        self.done_ids.append(entry_id)

    def give_back(self, subject: str, entry_id: bytes, payload: bytes, deliveries: int) -> None:
        self.given_back.append((entry_id, deliveries))
        self.entries.setdefault(subject, []).append((b"back-" + entry_id, payload, deliveries))

    def sync(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)


@pytest.fixture
def node():
    broker, clock = make_broker()
    queues = MemoryQueues()
    cluster = ClusterNode(broker, MemoryBus(Hub(), "n1"), queues, read_ahead=4)
    cluster.privilegedStartService()
    cluster.startService()
    yield broker, queues
    cluster.stopService()


def send(broker, body: str, destination: str = "/queue/q", **headers) -> None:
    broker.send(destination, dict(headers), body.encode())


def test_the_engine_provides_the_interface():
    verifyObject(IClusterQueues, MemoryQueues())


def test_a_send_goes_to_the_cluster_not_to_local_subscribers(node):
    broker, queues = node
    consumer = FakeConsumer()
    subscribe(broker, consumer, "/queue/q", prefetch=2)
    send(broker, "hello", colour="blue")
    assert consumer.delivered == []  # only once the engine hands it over
    ((entry, payload, deliveries),) = queues.entries["//queue/q"]
    remote = decode_topic_message(payload)
    assert (remote.node, remote.vhost, remote.message.body) == ("n1", "/", b"hello")
    assert remote.message.headers["colour"] == "blue"
    assert isinstance(broker.destinations["/queue/q"], ClusterQueue)
    assert queues.hand_over("//queue/q") == 1
    assert consumer.delivered == [("s", b"hello", 1, False)]


def test_credit_is_prefetch_less_unacked_or_the_read_ahead(node):
    broker, queues = node
    for i in range(10):
        send(broker, f"m{i}")
    sub = subscribe(broker, FakeConsumer(), "/queue/q", prefetch=3)
    assert queues.wants["//queue/q"] == 3
    assert queues.hand_over("//queue/q") == 3
    assert queues.wants["//queue/q"] == 0
    settle(broker, sub)  # one ACK: room for one more
    assert queues.done_ids == [b"1-0"]
    assert queues.wants["//queue/q"] == 1
    # A subscriber without prefetch-count adds the read-ahead.
    reader = FakeConsumer()
    auto = subscribe(broker, reader, "/queue/q", ack="auto", sub_id="t")
    assert queues.wants["//queue/q"] == 1 + 4
    queues.hand_over("//queue/q")
    # A subscriber whose connection cannot take more adds nothing.
    reader.writable = False
    settle(broker, sub)
    assert queues.wants["//queue/q"] == 1
    reader.writable = True
    broker.ready(auto)
    assert queues.wants["//queue/q"] == 1 + 4


def test_an_auto_ack_delivery_is_done_at_once(node):
    broker, queues = node
    subscribe(broker, FakeConsumer(), "/queue/q", ack="auto")
    send(broker, "a")
    queues.hand_over("//queue/q")
    assert queues.done_ids == [b"1-0"]


def test_nack_redelivers_here_and_the_last_subscriber_gives_back_the_rest(node):
    broker, queues = node
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/queue/q", prefetch=5)
    for i in range(3):
        send(broker, f"m{i}")
    queues.hand_over("//queue/q")
    settle(broker, sub, ack=False)  # m0 NACKed: again here, redelivered
    assert consumer.delivered[-1] == ("s", b"m0", 2, True)
    broker.unsubscribe(sub)
    # What this node held goes back, with the deliveries it had.
    assert sorted(queues.given_back) == [(b"1-0", 2), (b"2-0", 1), (b"3-0", 1)]
    assert queues.wants["//queue/q"] == 0
    assert "/queue/q" not in broker.destinations  # nothing left here
    # Another subscriber later gets them marked redelivered, counts carried.
    other = FakeConsumer()
    subscribe(broker, other, "/queue/q", prefetch=5)
    queues.hand_over("//queue/q")
    assert sorted(other.delivered) == [
        ("s", b"m0", 3, True),
        ("s", b"m1", 2, True),
        ("s", b"m2", 2, True),
    ]


def test_an_entry_for_a_queue_nobody_here_takes_goes_back(node):
    broker, queues = node
    send(broker, "orphan")
    queues.wants["//queue/q"] = 1  # asked for while a subscriber was there
    queues.hand_over("//queue/q")
    assert queues.given_back == [(b"1-0", 0)]


def test_dead_letters_after_max_redeliveries_go_through_the_cluster(node):
    broker, queues = node
    broker.config.max_redeliveries = 1
    sub = subscribe(broker, FakeConsumer(), "/queue/q")
    send(broker, "poison")
    queues.hand_over("//queue/q")
    settle(broker, sub, ack=False)
    settle(broker, sub, ack=False)
    assert queues.done_ids == [b"1-0"]
    ((_, payload, _),) = queues.entries["//queue/DLQ.q"]
    assert decode_topic_message(payload).message.body == b"poison"


def test_a_producer_waits_while_the_cluster_is_down_and_may_go_when_it_is_back(node):
    broker, queues = node
    producer = FakeConsumer()
    queues.connected = False
    broker.send("/queue/q", {}, b"held", producer)
    assert producer.blocked == ["/queue/q"]
    queues.connected = True
    queues.on_up()
    assert producer.unblocked == ["/queue/q"]


def test_a_send_the_engine_cannot_keep_is_refused(node):
    broker, queues = node
    queues.full = True
    with pytest.raises(DestinationFull, match="wait for the cluster's Redis"):
        send(broker, "too much")


@implementer(IClusterDurables)
class MemoryDurables:
    """The cluster's durable subscriptions in memory: records what the node asks."""

    def __init__(self) -> None:
        self.deliver = None
        self.attached: list[tuple[str, str]] = []
        self.wants: dict[tuple[str, str], int] = {}
        self.notified: list[str] = []
        self.done_ids: list[bytes] = []
        self.released: list[bytes] = []
        self.removed: list[tuple[str, str]] = []

    def start(self, deliver) -> None:
        self.deliver = deliver

    def attach(self, topic: str, owner: str) -> None:
        self.attached.append((topic, owner))

    def want(self, topic: str, owner: str, credit: int) -> None:
        self.wants[(topic, owner)] = credit

    def notify(self, topic: str) -> None:
        self.notified.append(topic)

    def done(self, topic: str, owner: str, entry_id: bytes) -> None:
        self.done_ids.append(entry_id)

    def release(self, topic: str, owner: str, entry_id: bytes) -> None:
        self.released.append(entry_id)

    def remove(self, topic: str, owner: str) -> None:
        self.removed.append((topic, owner))

    def attached_topics(self):
        return {topic for topic, _ in self.attached}

    def sync(self):
        return defer.succeed(None)

    def stop(self) -> None:
        pass


def test_a_durable_subscription_is_the_clusters():
    """Fed by the engine, not by this node's topic; settled, released and removed there."""
    verifyObject(IClusterDurables, MemoryDurables())
    broker, clock = make_broker()
    durables = MemoryDurables()
    cluster = ClusterNode(broker, MemoryBus(Hub(), "n1"), MemoryQueues(), 4, durables=durables)
    cluster.privilegedStartService()
    cluster.startService()
    consumer = FakeConsumer()
    sub = subscribe(broker, consumer, "/topic/t", durable=("c1", "keep"), prefetch=2)
    key = ("//topic/t", durable_owner("c1", "keep"))
    assert durables.attached == [key]
    assert durables.wants[key] == 2
    # Published here: to the other nodes (and the topic's log), not into the queue here.
    send(broker, "local", "/topic/t")
    assert consumer.delivered == []
    payload = encode_topic_message("n2", "i2", "/", Message("m-1", "/topic/t", {}, b"x"))
    durables.deliver(*key, b"1-0", payload, 0)
    durables.deliver(*key, b"2-0", payload, 1)
    assert consumer.delivered == [("s", b"x", 1, False), ("s", b"x", 2, True)]
    settle(broker, sub)
    assert durables.done_ids == [b"1-0"]
    # The subscriber leaves holding 2-0: it waits in the cluster for the next attach.
    broker.unsubscribe(sub)
    assert durables.released == [b"2-0"]
    assert durables.wants[key] == 0
    assert broker.remove_durable("c1", "keep")
    assert durables.removed == [key]
    cluster.stopService()
