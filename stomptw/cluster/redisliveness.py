"""
A cluster node's liveness, and what follows from the others' (:class:`Liveness`,
for :class:`~stomptw.cluster.redisqueues.RedisQueues`).

Each node keeps a key, ``stomptw:<db>:node:<id>``, renewed four times per
``--cluster-node-timeout`` and expiring after it, and its id in the set
``stomptw:<db>:nodes``. A node with subscribers looks, as often, for queue
entries pending with a node whose key has expired (or with itself, from
before a restart, and not held now), and claims them with ``XCLAIM``;
Redis's delivery counter then says how many deliveries were started, so
the next one is marked redelivered. ``XCLAIM`` with a minimum idle time
(half the timeout) makes two nodes racing for the same entry take it once.
Every 2 seconds it also reads the depth of every cluster queue and which
nodes are alive, for the admin API and ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import txredisapi
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomptw.cluster.codec import stream_fields

if TYPE_CHECKING:
    from stomptw.cluster.redisqueues import RedisQueues

__all__ = ["GROUP", "STATUS_INTERVAL", "Liveness", "every", "stop_all"]

log = Logger()

#: The consumer group every node reads the queues' streams in.
GROUP = b"stomptw"
#: Entries looked at per claim of a silent node's entries.
MAX_CLAIM = 512
#: Seconds between reads of the cluster-wide depths and live nodes.
STATUS_INTERVAL = 2.0


def every(clock: Any, interval: float, call: Callable[[], object]) -> LoopingCall:
    """
    Run ``call`` every ``interval`` seconds on ``clock``, the first time
    after one interval; a failure is logged and the next runs all the same.
    """

    def safely() -> None:
        try:
            call()
        except Exception:
            log.failure("cluster: a periodic task failed")

    loop = LoopingCall(safely)
    loop.clock = clock
    loop.start(interval, now=False)
    return loop


def stop_all(loops: list[LoopingCall], pending: Any) -> None:
    """Stop ``loops`` and cancel ``pending`` (a delayed call, or None) if it is still due."""
    for loop in loops:
        if loop.running:
            loop.stop()
    if pending is not None and pending.active():
        pending.cancel()


class Liveness:
    """
    This node's liveness key, the claims of silent nodes' queue entries, and
    the cluster's depths and live nodes as last read.

    :param engine: the cluster's queues (their connection, their credit,
        the entries this node holds).
    :param db: the cluster's database.
    :param instance: this process's token, the value of its key.

    :ivar depths: each cluster queue's messages in Redis (waiting and
        unacknowledged), by subject.
    :ivar nodes: the ids of the nodes whose key is there.
    :ivar claimed: entries taken over, from silent nodes or from this node
        before a restart.
    """

    def __init__(self, engine: RedisQueues, db: int, instance: str) -> None:
        self.engine = engine
        self._node = engine.node_id.encode()
        self._node_prefix = f"stomptw:{db}:node:"
        self._members = f"stomptw:{db}:nodes"
        self._registry = f"stomptw:{db}:queues"
        self._instance = instance
        self._claim_idle_ms = int(engine.node_timeout * 500)
        self._scanning = False
        self.depths: dict[str, int] = {}
        self.nodes: list[str] = []
        self.claimed = 0

    # -- this node's key -------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Renew this node's key (and its place in the set of nodes)."""
        engine = self.engine
        protocol = engine.command_connection()
        if protocol is None:
            return
        ttl = int(engine.node_timeout * 1000)
        protocol.execute_command(
            "SET", self._node_prefix + engine.node_id, self._instance, "PX", ttl
        ).addErrback(_ignore)
        protocol.execute_command("SADD", self._members, engine.node_id).addErrback(_ignore)

    def leave(self, protocol: Any) -> defer.Deferred:
        """Delete this node's key (it stops): the others take what it held at once."""
        return protocol.execute_command("DEL", self._node_prefix + self.engine.node_id)

    # -- claims ------------------------------------------------------------------------------

    def scan(self) -> None:
        """Claim what silent nodes held, for the queues this node's subscribers read."""
        engine = self.engine
        if self._scanning:
            return
        protocol = engine.command_connection()
        if protocol is None:
            return
        subjects = engine.claimable_subjects()
        if not subjects:
            return
        self._scanning = True
        engine.flush()  # acknowledgements ahead of the PEL reads, on the same connection

        def finished(result: object) -> None:
            self._scanning = False
            if isinstance(result, Failure) and not result.check(txredisapi.ConnectionError):
                log.failure("cluster: looking for a silent node's messages failed", result)

        self._claim_all(protocol, subjects).addBoth(finished)

    @defer.inlineCallbacks
    def _claim_all(self, protocol: Any, subjects: list[str]) -> Any:
        for subject in subjects:
            yield self._claim(protocol, subject)

    @defer.inlineCallbacks
    def _claim(self, protocol: Any, subject: str) -> Any:
        engine = self.engine
        key = engine.key(subject)
        consumers = yield protocol.execute_command("XINFO", "CONSUMERS", key, GROUP)
        for raw in consumers or ():
            info = stream_fields(raw)
            name = info.get(b"name", b"")
            pending = int(info.get(b"pending", 0))
            if not pending:
                continue
            if name == self._node:
                if pending <= len(engine.not_claimable(subject)):
                    continue
            else:
                alive = yield protocol.execute_command("EXISTS", self._node_prefix.encode() + name)
                if alive:
                    continue
            credit = engine.credit(subject)
            if credit <= 0:
                return
            rows = yield protocol.execute_command(
                "XPENDING",
                key,
                GROUP,
                "IDLE",
                self._claim_idle_ms,
                "-",
                "+",
                min(credit, MAX_CLAIM),
                name,
            )
            mine = engine.not_claimable(subject)
            counts = {row[0]: int(row[3]) for row in rows or () if row[0] not in mine}
            if not counts:
                continue
            entries = yield protocol.execute_command(
                "XCLAIM", key, GROUP, self._node, self._claim_idle_ms, *counts
            )
            mine = engine.not_claimable(subject)
            for entry in entries or ():
                if not entry or entry[0] in mine:
                    continue  # acknowledged meanwhile (its XACK follows)
                entry_id, raw_fields = entry
                fields = stream_fields(raw_fields)
                payload = fields.get(b"m")
                if payload is None:
                    continue
                self.claimed += 1
                deliveries = int(fields.get(b"n", 0)) + counts.get(entry_id, 1)
                engine.hand_over(subject, entry_id, payload, deliveries)
            if name != self._node:
                log.info(
                    "cluster: node {node} took {count} unacknowledged messages of {queue} "
                    "from node {silent}, silent for over {timeout:g} s",
                    node=engine.node_id,
                    count=len(entries or ()),
                    queue=subject,
                    silent=name.decode("utf-8", "replace"),
                    timeout=engine.node_timeout,
                )

    # -- status --------------------------------------------------------------------------------

    def read_status(self) -> None:
        """Read the cluster queues' depths and the live nodes (in the background)."""
        protocol = self.engine.command_connection()
        if protocol is None:
            return

        def failed(failure: Failure) -> None:
            failure.trap(txredisapi.ConnectionError, txredisapi.ResponseError)

        self._status(protocol).addErrback(failed)

    @defer.inlineCallbacks
    def _status(self, protocol: Any) -> Any:
        subjects = yield protocol.execute_command("SMEMBERS", self._registry)
        subjects = sorted(s.decode("utf-8", "surrogatepass") for s in subjects or ())[:1000]
        lengths = yield defer.gatherResults(
            [protocol.execute_command("XLEN", self.engine.key(s)) for s in subjects]
        )
        self.depths = dict(zip(subjects, (int(n) for n in lengths), strict=True))
        limits = self.engine.limits
        if limits.counted:
            sizes = yield protocol.execute_command("HGETALL", limits.hash_key)
            flat = list(sizes or ())
            limits.read_all(self.depths, dict(zip(flat[::2], flat[1::2], strict=True)))
        members = yield protocol.execute_command("SMEMBERS", self._members)
        names = sorted(m.decode("utf-8", "replace") for m in members or ())
        if names:
            keys = [self._node_prefix + n for n in names]
            alive = yield protocol.execute_command("MGET", *keys)
            self.nodes = [n for n, value in zip(names, alive, strict=True) if value is not None]
        else:
            self.nodes = []


def _ignore(failure: Failure) -> None:
    """Best effort: the next heartbeat tries again."""
