"""
This node's part of the cluster: a service between the broker and the
:class:`~stomptw.interfaces.IClusterBus`. It passes each topic message a
client of this node sends on to the other nodes, and delivers theirs to this
node's subscribers without passing them on again. With the cluster's queues
(:class:`~stomptw.interfaces.IClusterQueues`), each vhost's queues are
:class:`~stomptw.cluster.queues.ClusterQueue`: their messages are the
cluster's, handed to this node as its subscribers can take them.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from stomptw.cluster.codec import (
    decode_topic_message,
    encode_topic_message,
    sender,
    topic_subject,
)
from stomptw.cluster.nodequeues import NodeQueues
from stomptw.cluster.queues import ClusterQueue, DurableLog
from stomptw.cluster.settings import default_node_id, parse_cluster_url
from stomptw.deferreds import both
from stomptw.interfaces import IClusterBus, IClusterDurables, IClusterQueues
from stomptw.model import TOPIC_PREFIX

if TYPE_CHECKING:
    from stomptw.broker import Broker
    from stomptw.config import BrokerConfig
    from stomptw.model import Message

__all__ = ["ClusterNode", "join_cluster"]

log = Logger()


class ClusterNode(Service):
    """
    Ties a broker (every vhost of it) to the cluster bus.

    :param broker: the default vhost's broker; it gets this node as its
        ``cluster``, and each vhost its ``on_topic_message``.
    :param bus: the bus to the other nodes.
    :param queues: the cluster's queues; None: each node's queues stay its own.
    :param read_ahead: ``--cluster-read-ahead``.
    :param durables: the cluster's durable subscriptions (with ``queues``);
        None: each node's own.

    :ivar published: topic messages passed on to the other nodes.
    :ivar received: topic messages from other nodes delivered here (or
        dropped because no subscriber here wants them).
    :ivar local_only: topic messages that reached this node's subscribers
        only, because the bus was down.
    """

    name = "cluster"

    def __init__(
        self,
        broker: Broker,
        bus: IClusterBus,
        queues: IClusterQueues | None = None,
        read_ahead: int = 64,
        instance: str = "",
        durables: IClusterDurables | None = None,
    ) -> None:
        self.broker = broker
        self.bus = bus
        self.queues = queues
        self.durables = durables
        self.read_ahead = read_ahead
        self.node_id = bus.node_id
        #: Tells this process apart from another that uses the same node id.
        self.instance = instance or os.urandom(8).hex()
        self._me = (self.node_id.encode(), self.instance.encode())
        self.published = 0
        self.received = 0
        self.local_only = 0
        self.malformed = 0
        self._impostor_logged = False
        #: This node's side of the cluster's queues (None without them).
        self.queue_side = (
            NodeQueues(broker, queues, self.node_id, self.instance, read_ahead, self._malformed)
            if queues is not None
            else None
        )
        broker.cluster = self

    def privilegedStartService(self) -> None:
        """Check that the bus can be joined (raises ClusterUnavailable if not)."""
        super().privilegedStartService()
        self.bus.check()

    def startService(self) -> None:
        super().startService()
        durables = self.durables
        # What a RECEIPT waits for in the cluster: its queue messages, and
        # its durable subscriptions too when they are the cluster's.
        sync = self._sync if durables is not None else getattr(self.queues, "sync", None)
        for name, vhost in self.broker.vhosts.items():
            vhost.on_topic_message = functools.partial(self._publish, name)
            vhost.cluster_sync = sync
        self.bus.start(self._receive)
        if self.queue_side is not None:
            self.queue_side.start()
        if durables is not None:
            for name, vhost in self.broker.vhosts.items():
                vhost.use_cluster_durables(ClusterDurables(self, name, vhost))
            durables.start(self._arrive_durable)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for vhost in self.broker.vhosts.values():
            vhost.on_topic_message = None
        if self.queue_side is not None:
            self.queue_side.release()
        if self.durables is not None:
            self.durables.stop()
        if self.queues is None:
            return self.bus.stop()
        d = self.queues.stop()
        return d.addBoth(lambda _: self.bus.stop())

    def _malformed(self) -> None:
        self.malformed += 1

    def _sync(self) -> defer.Deferred:
        """Once the cluster has every queue message sent and durable subscription made so far."""
        return both(self.queues.sync(), self.durables.sync())

    def _arrive_durable(
        self, topic: str, owner: str, entry_id: bytes, payload: bytes, deliveries: int
    ) -> None:
        """A message of a durable subscription whose subscriber is here: to its queue."""
        try:
            remote = decode_topic_message(payload)
        except ValueError:
            self.malformed += 1
            self.durables.done(topic, owner, entry_id)
            return
        vhost = self.broker.vhosts.get(remote.vhost)
        durable = vhost.durables.get(owner) if vhost is not None else None
        if durable is None or not durable.queue.subscriptions:
            self.durables.release(topic, owner, entry_id)
            return
        message = remote.message
        message.delivery_count = deliveries
        durable.queue.arrive(entry_id, message)

    def _publish(self, vhost: str, message: Message) -> None:
        """A client of this node sent ``message`` to a topic of ``vhost``: on to the others."""
        bus = self.bus
        if bus.connected and bus.broadcast(
            vhost + message.destination,
            encode_topic_message(self.node_id, self.instance, vhost, message),
        ):
            self.published += 1
        else:
            self.local_only += 1

    def _receive(self, payload: bytes) -> None:
        """A payload some node broadcast (this one's too): deliver it here, once."""
        durables = self.durables
        if sender(payload) == self._me:
            # This node's own, back from the bus: its topic's log has it now.
            if durables is not None and durables.attached_topics():
                subject = topic_subject(payload)
                if subject is not None:
                    durables.notify(subject)
            return
        try:
            remote = decode_topic_message(payload)
        except ValueError as e:
            self.malformed += 1
            if self.malformed == 1:
                log.warn("cluster: a message on the bus is not one of ours ({error})", error=e)
            return
        if remote.node == self.node_id:
            if remote.instance != self.instance and not self._impostor_logged:
                self._impostor_logged = True
                log.error(
                    "cluster: another node uses this node's id {node}; each skips the "
                    "other's topic messages as its own: give every node its own --node-id",
                    node=self.node_id,
                )
            return
        message = remote.message
        if not message.destination.startswith(TOPIC_PREFIX):
            self.malformed += 1
            return
        self.received += 1
        if durables is not None:
            durables.notify(remote.vhost + message.destination)
        vhost = self.broker.vhosts.get(remote.vhost)
        if vhost is not None:
            vhost.route_remote(message)

    def status(self) -> dict[str, Any]:
        """This node's view of the cluster, for the admin API (``GET /api/cluster``)."""
        bus = self.bus
        extra = self.queue_side.status() if self.queue_side is not None else {}
        return {
            "enabled": True,
            "node": self.node_id,
            "engine": getattr(bus, "where", ""),
            "connected": bool(bus.connected),
            "reconnects": getattr(bus, "reconnects", 0),
            "topic_messages": {
                "published": self.published,
                "received": self.received,
                "local_only": self.local_only,
                "malformed": self.malformed,
            },
            **extra,
        }

    def metric_families(self) -> list[tuple[str, str, str, list]]:
        """``(name, type, help, samples)`` for ``/metrics``, labelled with the node id."""
        node = {"node": self.node_id}
        families = self.queue_side.metric_families(node) if self.queue_side is not None else []
        return families + [
            (
                "stomptw_cluster_up",
                "gauge",
                "1 while this node is joined to the cluster's Redis (topic messages reach "
                "the other nodes), else 0.",
                [(node, int(bool(self.bus.connected)))],
            ),
            (
                "stomptw_cluster_messages_published_total",
                "counter",
                "Topic messages sent by this node's clients and passed on to the other nodes.",
                [(node, self.published)],
            ),
            (
                "stomptw_cluster_messages_received_total",
                "counter",
                "Topic messages received from other nodes (and delivered to this node's "
                "subscribers of their topics, if any).",
                [(node, self.received)],
            ),
            (
                "stomptw_cluster_messages_local_only_total",
                "counter",
                "Topic messages sent by this node's clients while the cluster was "
                "unreachable: only this node's subscribers got them.",
                [(node, self.local_only)],
            ),
            (
                "stomptw_cluster_reconnects_total",
                "counter",
                "Times this node joined the cluster again after losing Redis.",
                [(node, getattr(self.bus, "reconnects", 0))],
            ),
        ]


class ClusterDurables:
    """
    What a vhost's durable subscriptions ask of the cluster
    (:attr:`stomptw.durables.Durables.cluster`): their queues, fed by their
    topic's log in the cluster, and word of each attach and removal.
    """

    def __init__(self, node: ClusterNode, vhost_name: str, vhost: Broker) -> None:
        self.node = node
        self.vhost_name = vhost_name
        self.vhost = vhost

    def make_queue(self, owner: str, topic: str) -> ClusterQueue:
        """The queue of the durable subscription ``owner`` to ``topic``."""
        node = self.node
        engine = DurableLog(
            node.durables, lambda: bool(node.queues.connected), self.vhost_name + topic, owner
        )
        return ClusterQueue(
            owner,
            self.vhost.context,
            engine,
            node.node_id,
            node.instance,
            self.vhost_name,
            node.read_ahead,
            priorities=False,
        )

    def attached(self, durable: Any) -> None:
        """A subscriber attached to ``durable`` here: it resumes where it left, on any node."""
        self.node.durables.attach(self.vhost_name + durable.topic, durable.owner)

    def removed(self, durable: Any) -> None:
        """``durable`` was deleted (UNSUBSCRIBE with its name, or the admin API)."""
        self.node.durables.remove(self.vhost_name + durable.topic, durable.owner)


def join_cluster(broker: Broker, config: BrokerConfig, reactor: Any) -> ClusterNode:
    """
    This node's part of the cluster ``config.cluster`` names, on the Redis
    bus (imported only here, so that a single node never loads a Redis
    client). Add it to the service tree before the listeners: its
    ``privilegedStartService`` checks that Redis can be joined.
    """
    from stomptw.cluster.redisbus import RedisBus
    from stomptw.cluster.redisdurables import RedisDurables
    from stomptw.cluster.redisqueues import RedisQueues

    target = parse_cluster_url(config.cluster)
    node_id = config.node_id or default_node_id(config.data_dir)
    bus = RedisBus(target, node_id, reactor, config.cluster_password_file)
    instance = os.urandom(8).hex()
    queues = RedisQueues(
        bus,
        reactor,
        config.cluster_node_timeout,
        instance,
        config.cluster_send_timeout,
        config.max_queue_length,
        config.max_queue_bytes,
        config.cluster_replicas,
        config.cluster_replica_timeout,
    )
    durables = RedisDurables(
        queues.command_connection, reactor, target.db, node_id, config.max_queue_length
    )
    bus.log_length = durables.max_length
    queues.watch_up(durables.up)
    return ClusterNode(broker, bus, queues, config.cluster_read_ahead, instance, durables=durables)
