"""
The cluster's queues on Redis Streams (:class:`RedisQueues`), with
txredisapi.

Each queue is a stream, ``stomptw:<db>:queue:<vhost><destination>``, with
one consumer group, ``stomptw``, in which each node is a consumer named by
its node id. A SEND is an ``XADD``. A node reads with ``XREADGROUP ... >``
only as many entries as its subscribers can take (their credit), on a
connection of its own that blocks until entries come
(:class:`~stomptw.cluster.redisreads.Reads`). The SENDs on their
way are :class:`~stomptw.cluster.redissends.Sends`; the entries the node
holds, and their acknowledgements and give-backs,
:class:`~stomptw.cluster.redissettles.Settles`; the queue limits,
:class:`~stomptw.cluster.redislimits.ClusterLimits`.

Each node keeps a liveness key, ``stomptw:<db>:node:<id>``, renewed well
within ``--cluster-node-timeout``. A node with subscribers looks, every
quarter of that time, for entries pending with a node whose key has
expired (or with itself, from before a restart, and not held now), and
claims them with ``XCLAIM``; Redis's delivery counter then says how many
deliveries were started, so the next one is marked redelivered. ``XCLAIM``
with a minimum idle time makes two nodes racing for the same entry take it
once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import txredisapi
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from stomptw.cluster.redisbus import CommandConnection, ReaderConnection
from stomptw.cluster.redislimits import POLL_INTERVAL, ClusterLimits
from stomptw.cluster.redisliveness import GROUP, STATUS_INTERVAL, Liveness, every, stop_all
from stomptw.cluster.redisreads import Reads
from stomptw.cluster.redissends import Sends
from stomptw.cluster.redissettles import Settles
from stomptw.interfaces import IClusterQueues

if TYPE_CHECKING:
    from stomptw.cluster.redisbus import RedisBus
    from stomptw.cluster.redislink import RedisLink

__all__ = ["GROUP", "RedisQueues", "queue_key", "registry_key"]

log = Logger()


def queue_key(db: int, subject: str) -> str:
    """The stream of the queue ``subject`` (vhost and destination) in database ``db``."""
    return f"stomptw:{db}:queue:{subject}"


def registry_key(db: int) -> str:
    """The set of every cluster queue's subject in database ``db``."""
    return f"stomptw:{db}:queues"


@implementer(IClusterQueues)
class RedisQueues:
    """
    The cluster's queues on Redis Streams.

    :param bus: the cluster's bus, whose Redis, password and node id these
        connections share (and whose state line they are part of).
    :param clock: the reactor's time.
    :param node_timeout: ``--cluster-node-timeout``.
    :param instance: this process's token, the value of its liveness key.
    :param send_timeout: ``--cluster-send-timeout``.
    :param max_length: ``--max-queue-length``, held across the cluster.
    :param max_bytes: ``--max-queue-bytes``, likewise.
    :param replicas: ``--cluster-replicas``.
    :param replica_timeout: ``--cluster-replica-timeout``.

    :ivar given_back: entries handed back for the other nodes.
    :ivar liveness: this node's liveness key, the claims of silent nodes'
        entries, and the cluster-wide depths and live nodes.
    """

    def __init__(
        self,
        bus: RedisBus,
        clock: Any,
        node_timeout: float,
        instance: str,
        send_timeout: float = 10.0,
        max_length: int = 0,
        max_bytes: int = 0,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        db = bus.target.db
        self.node_id = bus.node_id
        self._bus = bus
        self._clock = clock
        self._db = db
        self._prefix = queue_key(db, "")
        self.node_timeout = node_timeout
        self._deliver: Callable[[str, bytes, bytes, int], None] = lambda *a: None
        self._commands: RedisLink | None = None
        self._reader: RedisLink | None = None
        #: This node's reads, by its subscribers' credit.
        self.reads = Reads(
            clock,
            bus.node_id,
            self._prefix,
            registry_key(db),
            self._protocol,
            self._reader_protocol,
            self.hand_over,
        )
        #: The cluster-wide queue limits, and each queue's view.
        self.limits = ClusterLimits(db, max_length, max_bytes, self.key)
        self.limits.on_view = lambda subject: self.on_room(subject)
        #: The entries this node holds, and their acknowledgements and give-backs.
        self.settles = Settles(clock, self._protocol, self.key, GROUP, self.limits)
        #: The SENDs on their way to Redis.
        self.sends = Sends(
            clock,
            bus.node_id,
            send_timeout,
            self.reads.register,
            self.key,
            lambda why: self.on_gave_up(why),
            self.limits,
            replicas,
            replica_timeout,
            self._protocol,
        )
        self._timers: list[LoopingCall] = []
        self.liveness = Liveness(self, db, instance)
        self._stopped = False
        self._up_watchers: list[Callable[[], None]] = []
        #: Called with no arguments when the queues become usable again.
        self.on_up: Callable[[], None] = lambda: None
        #: Called with the reason when waiting SENDs are given up.
        self.on_gave_up: Callable[[str], None] = lambda why: None
        #: Called with a watched queue's subject when its cluster-wide
        #: length and bytes have room again (its blocked producers may go on).
        self.on_room: Callable[[str], None] = lambda subject: None

    @property
    def depths(self) -> dict[str, int]:
        """Each cluster queue's messages in Redis, as last read."""
        return self.liveness.depths

    @property
    def nodes(self) -> list[str]:
        """The nodes alive, as last read."""
        return self.liveness.nodes

    @property
    def taken(self) -> int:
        """Entries read from Redis for this node's subscribers."""
        return self.reads.taken

    @property
    def given_back(self) -> int:
        """Entries handed back for the other nodes."""
        return self.settles.given_back

    @property
    def claimed(self) -> int:
        """Entries taken over from silent nodes (or from this node before a restart)."""
        return self.liveness.claimed

    def key(self, subject: str) -> str:
        """The stream of the queue ``subject``."""
        return self._prefix + subject

    @property
    def connected(self) -> bool:
        """True while both connections are up (SENDs reach Redis; reads are served)."""
        return self._protocol() is not None and self._reader_protocol() is not None

    def command_connection(self) -> Any:
        """The command connection while it is up, else None."""
        return self._protocol()

    def watch_up(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the queues are usable again (after the others)."""
        self._up_watchers.append(callback)

    def _protocol(self) -> Any:
        link = self._commands
        protocol = link.protocol if link is not None else None
        return protocol if protocol is not None and protocol.connected else None

    def _reader_protocol(self) -> Any:
        link = self._reader
        protocol = link.protocol if link is not None else None
        return protocol if protocol is not None and protocol.connected else None

    # -- IClusterQueues --------------------------------------------------------------

    def start(self, deliver: Callable[[str, bytes, bytes, int], None]) -> None:
        self._deliver = deliver

        def build() -> txredisapi.BaseRedisProtocol:
            return self._bus.protocol(ReaderConnection)

        def build_commands() -> txredisapi.BaseRedisProtocol:
            return self._bus.protocol(CommandConnection)

        def identify(protocol: Any) -> defer.Deferred:
            def known(client_id: Any) -> None:
                self.reads.reader_id = client_id

            return protocol.execute_command("CLIENT", "ID").addCallback(known)

        self._commands = self._bus.open_link(build_commands, self._commands_up)
        self._reader = self._bus.open_link(build, identify)
        self._bus.watch(self._changed)
        interval = max(0.1, self.node_timeout / 4)
        self._timers.append(every(self._clock, interval, self.liveness.heartbeat))
        self._timers.append(every(self._clock, interval, self.sends.give_up_if_late))
        self._timers.append(every(self._clock, interval, self.liveness.scan))
        self._timers.append(every(self._clock, STATUS_INTERVAL, self.liveness.read_status))
        if self.limits.counted:
            self._timers.append(
                every(self._clock, POLL_INTERVAL, lambda: self.limits.poll(self._protocol()))
            )

    def add(self, subject: str, payload: bytes) -> None:
        self.sends.add(self._protocol(), subject, payload)

    def sync(self) -> defer.Deferred:
        return self.sends.sync()

    def together(self) -> Any:
        return self.sends.together(self._protocol)

    def held(self, subject: str) -> tuple[int, int]:
        return self.limits.held(subject)

    def purge(self, subject: str) -> defer.Deferred:
        protocol = self._protocol()
        if protocol is None:
            return defer.fail(ConnectionError("the cluster's Redis is unreachable"))
        self.flush()  # this node's acknowledgements first

        def lost(failure: Any) -> Any:
            # Redis went away during the purge: the same unreachable engine,
            # in the builtin class the admin API answers with 503.
            failure.trap(txredisapi.ConnectionError)
            raise ConnectionError(f"the cluster's Redis went away: {failure.value}")

        return self.limits.purge(protocol, subject, GROUP).addErrback(lost)

    def watch(self, subject: str, on: bool) -> None:
        self.limits.watch(subject, on)

    def want(self, subject: str, credit: int) -> None:
        self.reads.want(subject, credit)

    def done(self, subject: str, entry_id: bytes) -> None:
        self.settles.done(subject, entry_id)

    def give_back(self, subject: str, entry_id: bytes, payload: bytes, deliveries: int) -> None:
        self.settles.give_back(subject, entry_id, payload, deliveries)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self._stopped = True
        self.reads.stopped = True
        stop_all(self._timers, None)
        self.settles.stop()
        protocol = self._protocol()
        if protocol is not None:
            try:
                self.flush()
                # This node's key goes at once, so that the others take
                # what it held without waiting for the key to expire.
                yield self.liveness.leave(protocol)
            except Exception:
                pass

    def flush(self) -> None:
        """Send the acknowledgements and give-backs that wait, now."""
        self.settles.flush()

    # -- what is read --------------------------------------------------------------

    def hand_over(self, subject: str, entry_id: bytes, payload: bytes, deliveries: int) -> None:
        self.settles.hold(subject, entry_id, len(payload))
        try:
            self._deliver(subject, entry_id, payload, deliveries)
        except Exception:
            log.failure("cluster: a queue message from Redis could not be delivered")

    # -- Redis up and down -------------------------------------------------------------

    def _commands_up(self, protocol: Any) -> None:
        """A new command connection: groups are checked again, and what waited is sent."""
        self.reads.forget_groups()
        if self.limits.counted:
            # Ahead of every SEND on this connection, which runs it by its hash.
            self.limits.load(protocol).addErrback(lambda _: None)

    def _changed(self) -> None:
        if not self.connected or self._stopped:
            return
        protocol = self._protocol()
        self.liveness.heartbeat()
        self.sends.resume(protocol)
        self.flush()
        self.reads.resume()
        self.liveness.read_status()
        for watcher in self._up_watchers:
            watcher()
        self.on_up()

    # -- what the liveness checks may claim -------------------------------------------

    def not_claimable(self, subject: str) -> set[bytes]:
        """This node's entries of ``subject`` that are not to be claimed again."""
        return self.settles.not_claimable(subject)

    def claimable_subjects(self) -> list[str]:
        """The queues this node's subscribers can take messages of now."""
        return self.reads.claimable_subjects()

    def credit(self, subject: str) -> int:
        """How many messages of ``subject`` this node's subscribers can take now."""
        return self.reads.credit(subject)
