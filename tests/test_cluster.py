"""
Cluster mode without Redis: the ``--cluster`` URL and ``--node-id``, the
payload codec, and :class:`~stomptw.cluster.node.ClusterNode` between brokers
on a :class:`~twisted.internet.task.Clock`, tied by an in-memory bus.
(tests/test_cluster_redis.py runs real nodes on a real Redis.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from options import parse, usage_error
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from stomptw.cluster.codec import decode_topic_message, encode_topic_message, sender
from stomptw.cluster.node import ClusterNode, join_cluster
from stomptw.cluster.probe import ClusterUnavailable, command
from stomptw.cluster.redislink import HeardProtocol
from stomptw.cluster.settings import (
    default_node_id,
    parse_cluster_url,
    read_password_file,
)
from stomptw.config import BrokerConfig, InvalidSetting
from stomptw.encoding import encode_frame
from stomptw.interfaces import IClusterBus
from stomptw.metrics import render_metrics
from stomptw.model import Message
from stomptw.testing import BrokerOnClock

ROOT = Path(__file__).resolve().parent.parent

# -- the settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "where", "fields"),
    [
        ("redis://127.0.0.1:6390/2", "redis://127.0.0.1:6390/2", {"port": 6390, "db": 2}),
        ("redis://redis.example", "redis://redis.example:6379/0", {"host": "redis.example"}),
        ("redis://:s%40cret@h/1", "redis://h:6379/1", {"password": "s@cret", "username": None}),
        ("redis://app:pw@h:1/0", "redis://app@h:1/0", {"username": "app", "password": "pw"}),
        ("rediss://h:6380/0", "rediss://h:6380/0", {"scheme": "rediss"}),
        ("redis://[::1]:7000/0", "redis://[::1]:7000/0", {"host": "::1"}),
        ("unix:///run/redis.sock?db=3", "unix:///run/redis.sock?db=3", {"db": 3}),
        ("unix://:pw@/run/redis.sock", "unix:///run/redis.sock?db=0", {"password": "pw"}),
    ],
)
def test_cluster_urls(url, where, fields):
    target = parse_cluster_url(url)
    assert target.where == where
    for name, value in fields.items():
        assert getattr(target, name) == value, name
    assert "pw" not in repr(target) and "cret" not in repr(target)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h:6379", "unknown scheme http:"),
        ("127.0.0.1:6379", "unknown scheme"),
        ("redis://h:99999/0", "not a Redis URL"),
        ("redis://h/zero", "the database must be a number"),
        ("redis:///0", "no host"),
        ("redis://h:0/0", "port 0"),
        ("redis://h/0?ssl=1", "unknown URL parameter 'ssl'"),
        ("rediss://h/0?ca=/nonexistent/ca.pem", "does not exist"),
        ("unix://", "no socket path"),
        ("unix://h:1/x", "names a path"),
    ],
)
def test_bad_cluster_urls_say_why(url, reason):
    with pytest.raises(ValueError, match="") as info:
        parse_cluster_url(url)
    assert reason in str(info.value)


def test_the_options_check_the_url_and_the_node_id():
    options = parse("--cluster", "redis://127.0.0.1:6390/1", "--node-id", "n1.a_b-c")
    assert options.config.cluster == "redis://127.0.0.1:6390/1"
    assert options.config.node_id == "n1.a_b-c"
    assert parse().config.cluster == ""
    assert usage_error("--cluster", "http://x").startswith("--cluster: unknown scheme http:")
    assert "--node-id: must be 1-64 letters" in usage_error("--node-id", "has space")
    with pytest.raises(InvalidSetting):
        BrokerConfig(node_id="-x")


def test_the_default_node_id_is_stable_and_differs_per_data_dir(tmp_path, monkeypatch):
    first = default_node_id(str(tmp_path / "a"))
    assert first == default_node_id(str(tmp_path / "a"))
    assert first != default_node_id(str(tmp_path / "b"))
    # A relative --data-dir means the same directory wherever it was read from.
    monkeypatch.chdir(tmp_path)
    assert default_node_id("a") == first
    parse("--node-id", first)  # a valid --node-id


def test_the_password_file(tmp_path):
    (tmp_path / "pw").write_text("s3cret\nignored\n")
    assert read_password_file(str(tmp_path / "pw")) == "s3cret"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="it is empty"):
        read_password_file(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="cannot read it"):
        read_password_file(str(tmp_path / "missing"))


def test_a_single_node_never_imports_the_redis_client():
    code = (
        "import sys\n"
        "from stomptw.tap import Options, makeService\n"
        "from twisted.internet.task import Clock\n"
        "options = Options()\n"
        "options.parseOptions(['--store', 'memory', '--no-ws',\n"
        "                      '--tcp', 'tcp:0:interface=127.0.0.1'])\n"
        "makeService(options, Clock())\n"
        "print('txredisapi' in sys.modules, 'stomptw.cluster.redisbus' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["False", "False"], result.stderr


# -- the payload -------------------------------------------------------------------------


def test_a_topic_message_survives_the_hop_byte_for_byte():
    body = bytes(range(256)) + b"\x00\r\n"
    headers = {"content-type": "app/bin", "user-id": "élodie", "x:y": "a\nb", "persistent": "true"}
    message = Message("abc-7", "/topic/prices", headers, body, expires=1_900_000_000_000)
    remote = decode_topic_message(encode_topic_message("n1", "i1", "/", message))
    assert (remote.node, remote.instance, remote.vhost) == ("n1", "i1", "/")
    got = remote.message
    assert (got.message_id, got.destination, got.body) == ("abc-7", "/topic/prices", body)
    assert got.headers == headers and got.expires == 1_900_000_000_000
    assert got.persistent


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x02" + b"\x00" * 10, b"\x01" + b"\x00" * 8 + b"\x00\x05\x00\x00\x00\x09ab"],
)
def test_what_is_not_a_payload_is_refused(payload):
    with pytest.raises(ValueError):
        decode_topic_message(payload)


def test_resp_commands():
    assert command("AUTH", b"p w") == b"*2\r\n$4\r\nAUTH\r\n$3\r\np w\r\n"


# -- nodes on an in-memory bus ---------------------------------------------------------


class Hub:
    """What Redis pub/sub does for the nodes: every broadcast to every started bus."""

    def __init__(self) -> None:
        self.buses: list[MemoryBus] = []
        self.up = True


@implementer(IClusterBus)
class MemoryBus:
    """An :class:`IClusterBus` on a :class:`Hub`."""

    reconnects = 0
    where = "memory://hub"

    def __init__(self, hub: Hub, node_id: str) -> None:
        self.hub = hub
        self.node_id = node_id
        self.receive = None
        self.checked = False
        self.subjects: list[str] = []

    @property
    def connected(self) -> bool:
        return self.hub.up and self.receive is not None

    def check(self) -> None:
        self.checked = True

    def start(self, receive) -> None:
        self.receive = receive
        self.hub.buses.append(self)

    def broadcast(self, subject: str, payload: bytes) -> bool:
        if not self.connected:
            return False
        self.subjects.append(subject)
        for bus in self.hub.buses:
            bus.receive(payload)
        return True

    def stop(self):
        self.hub.buses.remove(self)
        self.receive = None
        return defer.succeed(None)


def node(hub: Hub, node_id: str) -> tuple[BrokerOnClock, ClusterNode]:
    env = BrokerOnClock()
    cluster = ClusterNode(env.broker, MemoryBus(hub, node_id))
    cluster.privilegedStartService()
    cluster.startService()
    return env, cluster


def test_the_buses_provide_the_interface():
    import txredisapi

    from stomptw.cluster.redisbus import _Subscriber

    verifyObject(IClusterBus, MemoryBus(Hub(), "n"))
    # setup.cfg asks for hiredis: txredisapi then parses replies with it.
    assert issubclass(_Subscriber, txredisapi.HiredisProtocol)
    assert txredisapi.RedisProtocol is txredisapi.HiredisProtocol
    config = BrokerConfig(store="memory", cluster="redis://127.0.0.1:1/0", node_id="n9")
    cluster = join_cluster(BrokerOnClock().broker, config, Clock())
    verifyObject(IClusterBus, cluster.bus)
    assert cluster.node_id == "n9" and cluster.bus.where == "redis://127.0.0.1:1/0"


def test_published_on_one_node_delivered_on_the_others():
    """Topics span the nodes, each message once, same id everywhere; queues stay local."""
    hub = Hub()
    (a, node_a), (b, node_b), (c, node_c) = node(hub, "a"), node(hub, "b"), node(hub, "c")
    clients = {}
    for name, env in (("a", a), ("b", b), ("c", c)):
        client = env.connect()
        client.send("SUBSCRIBE", destination="/topic/t", id="1")
        client.send("SUBSCRIBE", destination="/queue/q", id="2")
        clients[name] = client
    producer = b.connect()
    producer.send("SEND", b"\x00one", destination="/topic/t", colour="red")
    producer.send("SEND", b"work", destination="/queue/q")
    producer.send("SEND", b"two", destination="/topic/t")
    ids = set()
    for name, client in clients.items():
        frames = client.frames()
        topic = [f for f in frames if f.headers["destination"] == "/topic/t"]
        assert [f.body for f in topic] == [b"\x00one", b"two"], name
        assert topic[0].headers["colour"] == "red"
        ids.add(tuple(f.headers["message-id"] for f in topic))
        queue = [f for f in frames if f.headers["destination"] == "/queue/q"]
        # Queues are still each node's own.
        assert [f.body for f in queue] == ([b"work"] if name == "b" else []), name
    assert len(ids) == 1  # the same ids on every node
    assert node_b.published == 2 and node_a.received == node_c.received == 2
    assert node_b.received == 0
    assert hub.buses[1].subjects == ["//topic/t", "//topic/t"]
    # A node with no subscriber to a topic does not keep it.
    assert "/topic/other" not in a.broker.destinations
    producer.send("SEND", b"x", destination="/topic/other")
    assert "/topic/other" not in a.broker.destinations


def test_while_the_bus_is_down_topic_messages_stay_local():
    hub = Hub()
    (a, node_a), (b, _) = node(hub, "a"), node(hub, "b")
    on_a, on_b = a.connect(), b.connect()
    for client in (on_a, on_b):
        client.send("SUBSCRIBE", destination="/topic/t", id="1")
    hub.up = False
    a.connect().send("SEND", b"local", destination="/topic/t")
    assert [f.body for f in on_a.frames()] == [b"local"]
    assert on_b.frames() == []
    assert (node_a.published, node_a.local_only) == (0, 1)
    metrics = render_metrics(a.broker)
    assert 'stomptw_cluster_up{node="a"} 0' in metrics
    assert 'stomptw_cluster_messages_local_only_total{node="a"} 1' in metrics
    hub.up = True
    a.connect().send("SEND", b"again", destination="/topic/t")
    assert [f.body for f in on_b.frames()] == [b"again"]
    assert node_a.status() == {
        "enabled": True,
        "node": "a",
        "engine": "memory://hub",
        "connected": True,
        "reconnects": 0,
        "topic_messages": {"published": 1, "received": 0, "local_only": 1, "malformed": 0},
    }


def test_delayed_topic_messages_cross_when_due():
    hub = Hub()
    (a, _), (b, _) = node(hub, "a"), node(hub, "b")
    on_b = b.connect()
    on_b.send("SUBSCRIBE", destination="/topic/t", id="1")
    headers = {"destination": "/topic/t", "AMQ_SCHEDULED_DELAY": "1000"}
    a.connect().raw(encode_frame("SEND", headers, b"later", "1.2", content_length=True))
    assert on_b.frames() == []
    a.advance(1.1)
    assert [f.body for f in on_b.frames()] == [b"later"]


def test_strange_payloads_and_a_second_node_with_the_same_id_are_reported():
    hub = Hub()
    (a, node_a), _ = node(hub, "a"), node(hub, "b")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        node_a._receive(b"not ours")
        node_a._receive(b"not ours either")
        twin = encode_topic_message("a", "another", "/", Message("x-1", "/topic/t", {}, b""))
        node_a._receive(twin)
        node_a._receive(twin)
        elsewhere = encode_topic_message("b", "i", "/nope", Message("x-2", "/topic/t", {}, b""))
        node_a._receive(elsewhere)  # a vhost this node does not have: dropped
        queue = encode_topic_message("b", "i", "/", Message("x-3", "/queue/q", {}, b""))
        node_a._receive(queue)
    finally:
        globalLogPublisher.removeObserver(events.append)
    texts = [
        e.get("log_format", "")
        for e in events
        if e.get("log_namespace", "").startswith("stomptw.cluster")
    ]
    assert sum("not one of ours" in t for t in texts) == 1
    assert sum("another node uses this node's id" in t for t in texts) == 1
    assert node_a.malformed == 3
    assert "/queue/q" not in a.broker.destinations


def test_stopping_detaches_the_broker():
    hub = Hub()
    (a, node_a), (b, _) = node(hub, "a"), node(hub, "b")
    node_a.stopService()
    assert a.broker.on_topic_message is None and hub.buses[0].node_id == "b"
    on_b = b.connect()
    on_b.send("SUBSCRIBE", destination="/topic/t", id="1")
    a.connect().send("SEND", b"x", destination="/topic/t")
    assert on_b.frames() == []


def test_a_password_both_in_the_url_and_in_a_file_is_refused(tmp_path):
    from stomptw.cluster.redisbus import RedisBus

    target = parse_cluster_url("redis://:inline@127.0.0.1:1/0")
    (tmp_path / "pw").write_text("file\n")
    bus = RedisBus(target, "n", Clock(), str(tmp_path / "pw"))
    with pytest.raises(ClusterUnavailable, match="give it in one place only"):
        bus.check()


def test_the_sender_is_read_without_decoding_the_rest():
    payload = encode_topic_message("n1", "i1", "/", Message("x-1", "/topic/t", {"a": "b"}, b"z"))
    assert sender(payload) == (b"n1", b"i1")
    assert sender(b"\x01") == (b"", b"")


def test_publishes_and_txredisapi_commands_share_the_connection_in_order():
    """PUBLISH answers are counted; PING's answer still reaches its Deferred, even among them."""
    from twisted.internet.testing import StringTransport
    from txredisapi import ConnectionError as RedisConnectionError

    from stomptw.cluster.redisbus import CommandConnection

    protocol = CommandConnection(charset=None, convertNumbers=False)
    protocol.factory = None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.publish_now(b"ch", b"\x00body")
    assert transport.value() == b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$5\r\n\x00body\r\n"
    pong = protocol.ping()
    protocol.publish_now(b"ch", b"two")
    assert protocol.unanswered > 0
    answers = []
    pong.addCallback(answers.append)
    protocol.dataReceived(b":1\r\n+PONG\r\n")
    assert answers == [b"PONG"]
    protocol.dataReceived(b":0\r\n")
    assert protocol.unanswered == 0
    # Lost with a PUBLISH and a PING unanswered: the PING fails, nothing hangs.
    protocol.publish_now(b"ch", b"three")
    failed = []
    protocol.ping().addErrback(failed.append)
    protocol.connectionLost(Failure(Exception("gone")))
    assert failed and failed[0].check(RedisConnectionError)
    assert protocol.unanswered == 0


class _Reads:
    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        pass


class _SilentRedis(HeardProtocol, _Reads):
    """What :class:`RedisLink` uses of a connection, with PINGs left unanswered."""

    def __init__(self) -> None:
        self.connected = 1
        self.pings: list[defer.Deferred] = []
        self.aborted = False
        self.transport = self
        self._lost: defer.Deferred = defer.Deferred()

    def whenDisconnected(self) -> defer.Deferred:  # noqa: N802 - txredisapi's name
        return self._lost

    def whenConnected(self) -> defer.Deferred:  # noqa: N802 - txredisapi's name
        return defer.succeed(self)

    def ping(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pings.append(d)
        return d

    def abortConnection(self) -> None:  # noqa: N802 - Twisted's name
        self.aborted = True


def test_a_ping_answer_late_behind_other_answers_keeps_the_link():
    """Under load a PING's answer queues behind others: Redis is alive while anything comes."""
    from stomptw.cluster.redislink import PING_INTERVAL, PING_TIMEOUT, RedisLink

    clock, redis = Clock(), _SilentRedis()

    class Endpoint:
        def connect(self, factory):
            return defer.succeed(redis)

    link = RedisLink(Endpoint(), clock, lambda: redis, lambda p: None, lambda: None)
    link.start()
    assert link.protocol is redis
    clock.advance(PING_INTERVAL)
    assert len(redis.pings) == 1
    for _ in range(int(PING_TIMEOUT * 4)):
        clock.advance(0.5)
        redis.dataReceived(b":1\r\n")  # other commands' answers keep coming
    assert not redis.aborted and link.protocol is redis
    clock.advance(PING_TIMEOUT)  # then nothing at all: Redis is gone
    assert redis.aborted
    assert (
        link.reason
        == f"no answer from Redis within {PING_TIMEOUT:g} s while waiting for PING's answer"
    )
