"""
This node's part of the cluster: a service between the broker and the
:class:`~stomptw.interfaces.IClusterBus`. It passes each topic message a
client of this node sends on to the other nodes, and delivers theirs to this
node's subscribers without passing them on again.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from stomptw.cluster.codec import decode_topic_message, encode_topic_message, sender
from stomptw.cluster.settings import default_node_id, parse_cluster_url
from stomptw.interfaces import IClusterBus
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

    :ivar published: topic messages passed on to the other nodes.
    :ivar received: topic messages from other nodes delivered here (or
        dropped because no subscriber here wants them).
    :ivar local_only: topic messages that reached this node's subscribers
        only, because the bus was down.
    """

    name = "cluster"

    def __init__(self, broker: Broker, bus: IClusterBus) -> None:
        self.broker = broker
        self.bus = bus
        self.node_id = bus.node_id
        #: Tells this process apart from another that uses the same node id.
        self.instance = os.urandom(8).hex()
        self._me = (self.node_id.encode(), self.instance.encode())
        self.published = 0
        self.received = 0
        self.local_only = 0
        self.malformed = 0
        self._impostor_logged = False
        broker.cluster = self

    def privilegedStartService(self) -> None:
        """Check that the bus can be joined (raises ClusterUnavailable if not)."""
        super().privilegedStartService()
        self.bus.check()

    def startService(self) -> None:
        super().startService()
        for name, vhost in self.broker.vhosts.items():
            vhost.on_topic_message = functools.partial(self._publish, name)
        self.bus.start(self._receive)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for vhost in self.broker.vhosts.values():
            vhost.on_topic_message = None
        return self.bus.stop()

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
        if sender(payload) == self._me:
            return  # this node's own, back from the bus
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
        vhost = self.broker.vhosts.get(remote.vhost)
        if vhost is not None:
            vhost.route_remote(message)

    def status(self) -> dict[str, Any]:
        """This node's view of the cluster, for the admin API (``GET /api/cluster``)."""
        bus = self.bus
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
        }

    def metric_families(self) -> list[tuple[str, str, str, list]]:
        """``(name, type, help, samples)`` for ``/metrics``, labelled with the node id."""
        node = {"node": self.node_id}
        return [
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


def join_cluster(broker: Broker, config: BrokerConfig, reactor: Any) -> ClusterNode:
    """
    This node's part of the cluster ``config.cluster`` names, on the Redis
    bus (imported only here, so that a single node never loads a Redis
    client). Add it to the service tree before the listeners: its
    ``privilegedStartService`` checks that Redis can be joined.
    """
    from stomptw.cluster.redisbus import RedisBus

    target = parse_cluster_url(config.cluster)
    node_id = config.node_id or default_node_id(config.data_dir)
    bus = RedisBus(target, node_id, reactor, config.cluster_password_file)
    return ClusterNode(broker, bus)
