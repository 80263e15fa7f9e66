"""
The cluster's queues on Redis Streams (:class:`RedisQueues`), with
txredisapi.

Each queue is a stream, ``stomptw:<db>:queue:<vhost><destination>``, with
one consumer group, ``stomptw``, in which each node is a consumer named by
its node id. A SEND is an ``XADD``. A node reads with ``XREADGROUP ... >``
only as many entries as its subscribers can take (their credit), on a
connection of its own that blocks until entries come. The SENDs on their
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
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw.cluster.codec import stream_fields
from stomptw.cluster.redisbus import CommandConnection, ReaderConnection
from stomptw.cluster.redislimits import POLL_INTERVAL, ClusterLimits
from stomptw.cluster.redisliveness import GROUP, STATUS_INTERVAL, Liveness, every, stop_all
from stomptw.cluster.redissends import Sends
from stomptw.cluster.redissettles import Settles
from stomptw.interfaces import IClusterQueues

if TYPE_CHECKING:
    from stomptw.cluster.redisbus import RedisBus
    from stomptw.cluster.redislink import RedisLink

__all__ = ["GROUP", "RedisQueues", "queue_key", "registry_key"]

log = Logger()

#: Milliseconds a read blocks waiting for entries (well under the link's
#: PING timeout, which a blocked read holds up).
BLOCK_MS = 1000
#: The most entries one read takes of one stream.
MAX_READ = 512


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

    :ivar taken: entries read from Redis for this node's subscribers.
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
        self._node = bus.node_id.encode()
        self._bus = bus
        self._clock = clock
        self._db = db
        self._prefix = queue_key(db, "")
        self._registry = registry_key(db)
        self.node_timeout = node_timeout
        self.taken = 0
        self._deliver: Callable[[str, bytes, bytes, int], None] = lambda *a: None
        self._commands: RedisLink | None = None
        self._reader: RedisLink | None = None
        self._reader_id: Any = None
        #: Credit per subject, as the queues last said.
        self._wants: dict[str, int] = {}
        #: Subjects whose group exists (checked on this connection), and being made.
        self._grouped: set[str] = set()
        self._grouping: set[str] = set()
        self._registered: set[str] = set()
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
            lambda protocol, subject: self._register(protocol, subject),
            self.key,
            lambda why: self.on_gave_up(why),
            self.limits,
            replicas,
            replica_timeout,
            self._protocol,
        )
        self._reading: set[str] | None = None
        self._unblocking = False
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
                self._reader_id = client_id

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
        return self.limits.purge(protocol, subject, GROUP)

    def watch(self, subject: str, on: bool) -> None:
        self.limits.watch(subject, on)

    def want(self, subject: str, credit: int) -> None:
        if credit <= 0:
            self._wants.pop(subject, None)
            return
        self._wants[subject] = credit
        if subject not in self._grouped:
            self._make_group(subject)
            return
        if self._reading is None:
            self._read()
        elif subject not in self._reading:
            self._unblock()

    def done(self, subject: str, entry_id: bytes) -> None:
        self.settles.done(subject, entry_id)

    def give_back(self, subject: str, entry_id: bytes, payload: bytes, deliveries: int) -> None:
        self.settles.give_back(subject, entry_id, payload, deliveries)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self._stopped = True
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

    # -- reading ---------------------------------------------------------------------

    def _register(self, protocol: Any, subject: str) -> None:
        if subject not in self._registered:
            self._registered.add(subject)
            protocol.execute_command("SADD", self._registry, subject).addErrback(
                self._unregister, subject
            )

    def _unregister(self, failure: Failure, subject: str) -> None:
        self._registered.discard(subject)

    def _make_group(self, subject: str) -> None:
        protocol = self._protocol()
        if protocol is None or subject in self._grouping:
            return
        self._grouping.add(subject)
        self._register(protocol, subject)
        d = protocol.execute_command(
            "XGROUP", "CREATE", self._prefix + subject, GROUP, "0", "MKSTREAM"
        )

        def made(result: object) -> None:
            self._grouping.discard(subject)
            if isinstance(result, Failure) and "BUSYGROUP" not in result.getErrorMessage():
                return  # the connection went; made again when it is back
            self._grouped.add(subject)
            if self._wants.get(subject):
                if self._reading is None:
                    self._read()
                elif subject not in self._reading:
                    self._unblock()

        d.addBoth(made)

    def _read(self) -> None:
        if self._reading is not None or self._stopped:
            return
        protocol = self._reader_protocol()
        if protocol is None:
            return
        wants = self._wants
        subjects = [s for s, credit in wants.items() if credit > 0 and s in self._grouped]
        if not subjects:
            return
        count = min(MAX_READ, max(wants[s] for s in subjects))
        keys = [self._prefix + s for s in subjects]
        self._reading = set(subjects)
        try:
            d = protocol.execute_command(
                "XREADGROUP",
                "GROUP",
                GROUP,
                self._node,
                "COUNT",
                count,
                "BLOCK",
                BLOCK_MS,
                "STREAMS",
                *keys,
                *([">"] * len(keys)),
            )
        except txredisapi.ConnectionError:
            self._reading = None
            return
        d.addCallbacks(self._read_done, self._read_failed)

    def _read_done(self, reply: Any) -> None:
        try:
            for key, entries in reply or ():
                subject = key[len(self._prefix) :].decode("utf-8", "surrogatepass")
                for entry_id, raw in entries:
                    fields = stream_fields(raw)
                    payload = fields.get(b"m")
                    if payload is None:
                        continue
                    self.taken += 1
                    self.hand_over(subject, entry_id, payload, int(fields.get(b"n", 0)))
        finally:
            self._reading = None
        self._read()

    def _read_failed(self, failure: Failure) -> None:
        subjects = self._reading or set()
        self._reading = None
        if "NOGROUP" in failure.getErrorMessage():
            # A stream deleted under us (FLUSHDB, DEL): make its group again.
            self._grouped.difference_update(subjects)
            for subject in subjects:
                if self._wants.get(subject):
                    self._make_group(subject)
            return
        if self._reader_protocol() is not None and not self._stopped:
            self._clock.callLater(0.1, self._read)

    def hand_over(self, subject: str, entry_id: bytes, payload: bytes, deliveries: int) -> None:
        self.settles.hold(subject, entry_id, len(payload))
        try:
            self._deliver(subject, entry_id, payload, deliveries)
        except Exception:
            log.failure("cluster: a queue message from Redis could not be delivered")

    def _unblock(self) -> None:
        """Cut the blocked read short, so that it is made again with another subject."""
        protocol = self._protocol()
        if protocol is None or self._reader_id is None or self._unblocking:
            return
        self._unblocking = True

        def sent(_: object) -> None:
            self._unblocking = False

        protocol.execute_command("CLIENT", "UNBLOCK", self._reader_id).addBoth(sent)

    # -- Redis up and down -------------------------------------------------------------

    def _commands_up(self, protocol: Any) -> None:
        """A new command connection: groups are checked again, and what waited is sent."""
        self._grouped.clear()
        self._grouping.clear()
        self._registered.clear()
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
        for subject, credit in list(self._wants.items()):
            if credit > 0:
                self._make_group(subject)
        self._read()
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
        return [s for s, credit in self._wants.items() if credit > 0 and s in self._grouped]

    def credit(self, subject: str) -> int:
        """How many messages of ``subject`` this node's subscribers can take now."""
        return self._wants.get(subject, 0)
