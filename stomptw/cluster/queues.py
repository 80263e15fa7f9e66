"""
A queue that spans the cluster (:class:`ClusterQueue`). Sans-IO: the
engine behind :class:`~stomptw.interfaces.IClusterQueues` holds the queue's
messages; this node takes as many as its subscribers can take now (their
credit), and hands them out with the single-node queue's rules (round robin,
ack modes, ``prefetch-count``, NACK and returns, the dead-letter queue).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet import defer

from stomptw.cluster.codec import encode_topic_message
from stomptw.destinations import Queue
from stomptw.errors import cluster_unreachable
from stomptw.model import DestinationFull

if TYPE_CHECKING:
    from collections.abc import Callable

    from stomptw.interfaces import IClusterDurables, IClusterQueues, IMessageConsumer
    from stomptw.model import DestinationContext, Message

__all__ = ["ClusterQueue", "DurableLog"]


class ClusterQueue(Queue):
    """
    A queue whose messages are the cluster's, not this node's.

    A message sent here is appended to the engine's queue at once; it
    reaches this node's subscribers only when the engine hands it back,
    like any other node's. The node asks for as many messages as its
    subscribers can take: ``prefetch-count`` less what each holds
    unacknowledged, or ``read_ahead`` for a subscriber without one, less
    what already waits here. A message acknowledged (or expired, or dead
    lettered) is done with in the engine; one returned with no subscriber
    left here goes back to the engine for the other nodes.

    :param node: this node's id, written into each message it sends.
    :param instance: this process's instance token, likewise.
    :param vhost: the virtual host the queue belongs to.
    :param engine: the cluster's queues.
    :param read_ahead: messages taken ahead for a subscriber without a
        prefetch limit.
    """

    def __init__(
        self,
        name: str,
        context: DestinationContext,
        engine: IClusterQueues,
        node: str,
        instance: str,
        vhost: str,
        read_ahead: int,
        dead_letter: bool = False,
        priorities: bool = True,
    ) -> None:
        super().__init__(name, context, dead_letter=dead_letter, priorities=priorities)
        self.engine = engine
        self.subject = vhost + name
        self.read_ahead = read_ahead
        self._sender = (node, instance, vhost)
        #: The engine's entry id of each message held here.
        self._entries: dict[Message, bytes] = {}
        #: The credit last told to the engine.
        self._asked = 0
        #: Whether the engine watches this queue's room for blocked producers.
        self._watching = False

    # -- what clients send -------------------------------------------------------------

    def publish(
        self, message: Message, producer: IMessageConsumer | None = None, reject: bool = True
    ) -> None:
        """Append ``message`` to the cluster's queue (it comes back here only if read here)."""
        if reject and self.overflow == "reject" and self.is_full():
            self.check_room()  # raises DestinationFull
        try:
            self.engine.add(self.subject, self._encode(message))
        except OverflowError as e:
            self.context.stats["rejected"] += 1
            raise DestinationFull(self.name, str(e)) from None
        self.messages_in += 1
        self.bytes_in += len(message.body)
        if producer is None or producer in self.blocked:
            return
        # Like a full queue: the producer waits until the cluster is back,
        # or until the queue has room across the cluster.
        if self.engine.connected:
            if self.overflow == "reject" or not self.is_full():
                return
            if self._consumes(producer) and not self._at(2):
                return  # blocking it would also stop the ACKs that make room
        self.blocked.add(producer)
        self.context.stats["producers_blocked"] += 1
        producer.block(self)
        self.engine.watch(self.subject, True)
        self._watching = True

    # -- limits across the cluster -----------------------------------------------------

    def _at(self, share: float = 1.0) -> bool:
        config = self.context.config
        if not (config.max_queue_length or config.max_queue_bytes):
            return False
        count, size = self.engine.held(self.subject)
        return bool(
            (config.max_queue_length and count >= config.max_queue_length * share)
            or (config.max_queue_bytes and size >= config.max_queue_bytes * share)
        )

    def is_full(self) -> bool:
        """Whether the queue is at its limits, counted across the cluster."""
        return self._at()

    _scope = " across the cluster"

    def _held(self) -> tuple[int, int]:
        return self.engine.held(self.subject)

    def _has_room(self) -> bool:
        return self.engine.connected and super()._has_room()

    def _check_room(self) -> None:
        super()._check_room()
        # Runs for every ACK: tell the engine only when it was watching.
        if self._watching and not self.blocked:
            self._watching = False
            self.engine.watch(self.subject, False)

    def cluster_back(self) -> None:
        """The cluster's queues are reachable again, or have room: let blocked producers go."""
        self._check_room()

    def give_up(self, why: str) -> None:
        """The SENDs that waited for the cluster were dropped: their producers get an ERROR."""
        blocked, self.blocked = self.blocked, set()
        for producer in blocked:
            fail = getattr(producer, "fail", None)
            if fail is not None:
                fail(cluster_unreachable(why))
            else:
                producer.unblock(self)

    def _encode(self, message: Message) -> bytes:
        node, instance, vhost = self._sender
        return encode_topic_message(node, instance, vhost, message)

    # -- what the engine hands over ----------------------------------------------------

    def arrive(self, entry_id: bytes, message: Message) -> None:
        """The engine handed ``message`` (entry ``entry_id``) to this node: deliver it."""
        self._entries[message] = entry_id
        self._hold(message)
        self._enqueue(message)
        self._dispatch()
        if not self.subscriptions:
            self._give_back_waiting()

    def _release(self, message: Message) -> None:
        super()._release(message)  # counts, and a message restored from this node's store
        entry = self._entries.pop(message, None)
        if entry is not None:
            self.engine.done(self.subject, entry)

    def _dispatch(self) -> None:
        super()._dispatch()
        self._ask()

    def unsubscribe(self, subscription) -> None:  # type: ignore[no-untyped-def]
        super().unsubscribe(subscription)
        if not self.subscriptions:
            self._give_back_waiting()
            self._ask()

    def credit(self) -> int:
        """How many more messages this node's subscribers can take now."""
        if self.context.stopping:
            return 0
        total = 0
        for sub in self.subscriptions:
            if not sub.active:
                continue
            if sub.prefetch > 0 and sub.ack_mode != "auto":
                total += max(0, sub.prefetch - len(sub.unacked))
            elif sub.consumer.writable:
                total += self.read_ahead
        return max(0, total - len(self.pending))

    def _ask(self) -> None:
        credit = self.credit()
        if credit != self._asked:
            self._asked = credit
            self.engine.want(self.subject, credit)

    def _give_back_waiting(self) -> None:
        """No subscriber here: what waits goes back to the cluster's queue, for the others."""
        while self.pending:
            message = self.pending.popleft()
            entry = self._entries.pop(message, None)
            self._forget(message)
            if entry is not None:
                self.engine.give_back(
                    self.subject, entry, self._encode(message), message.delivery_count
                )
                continue
            # Restored from this node's store (it ran alone before): now the cluster's.
            self.engine.add(self.subject, self._encode(message))
            if message.key:
                self.context.store.remove(message.key)
                message.key = 0

    def purge_all(self) -> defer.Deferred:
        """
        Purge across the cluster: what waits here, and what waits in the
        engine unread by any node (what other nodes took for their
        subscribers, at most their credit, is still delivered). Fires with
        how many were dropped.
        """
        here = self.purge()
        return self.engine.purge(self.subject).addCallback(lambda there: here + there)

    def give_back_all(self) -> None:
        """The node stops: what waits here goes back to the cluster's queue."""
        self._give_back_waiting()


class DurableLog:
    """
    What a durable subscription's :class:`ClusterQueue` asks of the cluster,
    on :class:`~stomptw.interfaces.IClusterDurables`: its messages come from
    its topic's log, and one returned without a subscriber here waits there
    for the subscriber's next attach, on any node.
    """

    def __init__(
        self, durables: IClusterDurables, connected: Callable[[], bool], topic: str, owner: str
    ) -> None:
        self.durables = durables
        self.topic = topic
        self.owner = owner
        self._connected = connected

    @property
    def connected(self) -> bool:
        """Whether the cluster's Redis is reachable."""
        return self._connected()

    def held(self, subject: str) -> tuple[int, int]:
        """No cluster-wide count: the topic's log is bounded by its own length."""
        return (0, 0)

    def watch(self, subject: str, on: bool) -> None:
        """Nothing to watch: nothing is sent to a durable subscription's queue."""

    def purge(self, subject: str) -> defer.Deferred:
        """Nothing beyond this node: the log is the topic's, for every subscription."""
        return defer.succeed(0)

    def add(self, subject: str, payload: bytes) -> None:
        """Never called: a durable subscription's messages come from its topic."""
        raise OverflowError("a durable subscription takes messages from its topic only")

    def want(self, subject: str, credit: int) -> None:
        self.durables.want(self.topic, self.owner, credit)

    def done(self, subject: str, entry_id: bytes) -> None:
        self.durables.done(self.topic, self.owner, entry_id)

    def give_back(self, subject: str, entry_id: bytes, payload: bytes, deliveries: int) -> None:
        self.durables.release(self.topic, self.owner, entry_id)
