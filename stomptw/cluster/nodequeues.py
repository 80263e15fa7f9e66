"""
This node's side of the cluster's queues (:class:`NodeQueues`, for
:class:`~stomptw.cluster.node.ClusterNode`): each vhost's queues become
:class:`~stomptw.cluster.queues.ClusterQueue`, whose messages are the
cluster's, handed to this node by the engine
(:class:`~stomptw.interfaces.IClusterQueues`) as its subscribers can take
them; and what the admin API and ``/metrics`` show of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from stomptw.cluster.codec import decode_topic_message
from stomptw.cluster.queues import ClusterQueue

if TYPE_CHECKING:
    from stomptw.broker import Broker
    from stomptw.interfaces import IClusterQueues

__all__ = ["NodeQueues"]

log = Logger()


class NodeQueues:
    """
    The cluster queues of every vhost of ``broker``, on ``engine``.

    :param broker: the default vhost's broker.
    :param engine: the cluster's queues.
    :param node_id: this node's id, and ``instance`` its process's token,
        written into each message it sends.
    :param read_ahead: ``--cluster-read-ahead``.
    :param malformed: called for each entry that is not one of ours.
    """

    def __init__(
        self,
        broker: Broker,
        engine: IClusterQueues,
        node_id: str,
        instance: str,
        read_ahead: int,
        malformed: Callable[[], None],
    ) -> None:
        self.broker = broker
        self.engine = engine
        self.node_id = node_id
        self.instance = instance
        self.read_ahead = read_ahead
        self._malformed = malformed

    def start(self) -> None:
        """Make every vhost's queues the cluster's, and start taking entries."""
        engine = self.engine
        for name, vhost in self.broker.vhosts.items():
            vhost.make_queue = functools.partial(self.make_queue, name, vhost)
            vhost.cluster_together = engine.together
        engine.on_up = self._up
        engine.on_gave_up = self._gave_up
        engine.on_room = self._room
        engine.start(self.arrive)

    def release(self) -> None:
        """The node stops: new queues are its own again; what waits here goes back."""
        for vhost in self.broker.vhosts.values():
            vhost.make_queue = None
            vhost.cluster_together = None
        for queue in self.queues():
            queue.give_back_all()

    def make_queue(self, vhost_name: str, vhost: Broker, name: str, dead: bool) -> ClusterQueue:
        """The queue ``name`` of the vhost ``vhost_name``: the cluster's."""
        return ClusterQueue(
            name,
            vhost.context,
            self.engine,
            self.node_id,
            self.instance,
            vhost_name,
            self.read_ahead,
            dead_letter=dead,
        )

    def arrive(self, subject: str, entry_id: bytes, payload: bytes, deliveries: int) -> None:
        """An entry of a cluster queue, handed to this node: to its queue here."""
        try:
            remote = decode_topic_message(payload)
        except ValueError as e:
            self._malformed()
            log.warn("cluster: a queue entry in Redis is not one of ours ({error})", error=e)
            self.engine.done(subject, entry_id)
            return
        message = remote.message
        message.delivery_count = deliveries
        vhost = self.broker.vhosts.get(remote.vhost)
        dest = vhost.destinations.get(message.destination) if vhost is not None else None
        if not isinstance(dest, ClusterQueue) or not dest.subscriptions:
            # Nobody here takes it any more: back for the other nodes.
            self.engine.give_back(subject, entry_id, payload, deliveries)
            return
        dest.arrive(entry_id, message)

    def queues(self) -> list[ClusterQueue]:
        """This node's cluster queues, in every vhost."""
        return [
            dest
            for vhost in self.broker.vhosts.values()
            for dest in vhost.destinations.values()
            if isinstance(dest, ClusterQueue)
        ]

    def _gave_up(self, why: str) -> None:
        """SENDs that waited too long for the cluster were dropped: tell their producers."""
        for queue in self.queues():
            queue.give_up(why)

    def _room(self, subject: str) -> None:
        """A queue with blocked producers changed length across the cluster."""
        for queue in self.queues():
            if queue.subject == subject:
                queue.cluster_back()

    def _up(self) -> None:
        """The cluster's queues are back: producers blocked meanwhile may send again."""
        for queue in self.queues():
            queue.cluster_back()

    # -- what the operator sees --------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The live nodes and the queues' figures, for ``GET /api/cluster``."""
        engine = self.engine
        return {
            "nodes_alive": list(engine.nodes),
            "queues": {
                "connected": bool(engine.connected),
                "depths": dict(engine.depths),
                "taken": getattr(engine, "taken", 0),
                "claimed": getattr(engine, "claimed", 0),
                "given_back": getattr(engine, "given_back", 0),
            },
        }

    def metric_families(self, node: dict[str, str]) -> list[tuple[str, str, str, list]]:
        """``(name, type, help, samples)`` for ``/metrics``, labelled with ``node``."""
        engine = self.engine
        depths = [({**node, "queue": subject}, depth) for subject, depth in engine.depths.items()]
        return [
            (
                "stomptw_cluster_queue_depth",
                "gauge",
                "Messages a cluster queue holds in Redis (waiting and unacknowledged), "
                "across every node, as last read.",
                depths,
            ),
            (
                "stomptw_cluster_nodes_alive",
                "gauge",
                "Nodes whose liveness key is in the cluster's Redis, as last read.",
                [(node, len(engine.nodes))],
            ),
            (
                "stomptw_cluster_queue_messages_claimed_total",
                "counter",
                "Unacknowledged queue messages this node took over from a silent node "
                "(or from itself before a restart), to deliver again.",
                [(node, getattr(engine, "claimed", 0))],
            ),
        ]
