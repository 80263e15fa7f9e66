"""
The broker: a registry of destinations, sessions and subscriptions. Its send
path (accepting and routing messages) is
:class:`~stomptw.brokersend.BrokerSending`, a base class.

It knows nothing of sockets or of STOMP's wire format; client sessions talk
to it through :class:`Subscription` objects and the
:class:`~stomptw.interfaces.IMessageConsumer` interface.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from stomptw.brokerschedule import BrokerScheduling
from stomptw.brokersend import BrokerSending
from stomptw.deadletters import DeadLetters
from stomptw.destinations import DestinationContext, Queue
from stomptw.durables import Durables
from stomptw.expiry import ExpirySweep
from stomptw.interfaces import IDestination, IMessageStore
from stomptw.lifetime import BrokerLifetime
from stomptw.logging import ConnectionLogBudget
from stomptw.model import (
    ACK_MODES,
    COUNTED_COMMANDS,
    MESSAGE_OVERHEAD,
    QUEUE_PREFIX,
    STAT_NAMES,
    TOPIC_PREFIX,
    Counters,
    DestinationError,
    DestinationFull,
    DurableSubscription,
    Message,
    Subscription,
    durable_owner,
    message_size,
)
from stomptw.permissions import compile_patterns
from stomptw.scheduled import SCHEDULED_OWNER, Scheduler
from stomptw.streams import STREAM_PREFIX, Stream, StreamLimits, parse_limit
from stomptw.tempqueues import REPLY_PREFIX, TEMP_PREFIX
from stomptw.topics import Topic
from stomptw.userdest import USER_PREFIX, UserDestination, user_destination

if TYPE_CHECKING:
    from stomptw.config import BrokerConfig

# The model's names are imported from here by older code; stomptw.model is
# their home.
__all__ = [
    "ACK_MODES",
    "Broker",
    "COUNTED_COMMANDS",
    "Counters",
    "DestinationError",
    "DestinationFull",
    "DurableSubscription",
    "MESSAGE_OVERHEAD",
    "Message",
    "Subscription",
    "durable_owner",
    "message_size",
]


#: Destination names the message store's owners use for the broker's own records.
RESERVED_PREFIXES = ("durable:", SCHEDULED_OWNER)


class Broker(BrokerSending, BrokerScheduling, BrokerLifetime):
    """
    Routes messages between client sessions.

    Destinations are created on first use: names starting with ``/topic/``
    are topics; ``/queue/`` names, and any other name, are queues (as in
    ActiveMQ). A destination that holds nothing and has no subscribers is
    forgotten.

    :param config: the delivery policy (limits, dead letters, expiry).
    :param store: where persistent messages are kept; in memory by default.
    :param clock: the reactor's time, for expiry.
    :param stats: the message counters to add to (a vhost shares its
        broker's); new ones by default.

    :ivar stats: counters of what happened to messages, by name (see
        :data:`STAT_NAMES`).
    :ivar counters: the sessions' traffic counters (:class:`Counters`).
    """

    def __init__(
        self,
        config: BrokerConfig | None = None,
        store: IMessageStore | None = None,
        clock: IReactorTime | None = None,
        stats: dict[str, int] | None = None,
    ) -> None:
        if config is None:
            from stomptw.config import BrokerConfig

            config = BrokerConfig()
        if store is None:
            from stomptw.store import MemoryStore

            store = MemoryStore()
        self.config = config
        self.store = store
        self.clock = clock
        self.destinations: dict[str, IDestination] = {}
        # Message ids stay unique across restarts thanks to the random prefix.
        self._prefix = os.urandom(6).hex()
        self._message_ids = itertools.count(1)
        self._session_ids = itertools.count(1)
        self._keys = itertools.count(1)
        self.sessions: set[object] = set()
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0) if stats is None else stats
        self.counters = Counters()
        #: The dead-letter policy.
        self.dead_letters = DeadLetters(
            config.dead_letter_queue,
            config.dead_letter_expired,
            self.stats,
            self.destination,
            self._forget_if_idle,
            self.new_message_id,
        )
        #: The sessions' shared deadline sweep (:mod:`stomptw.timers`), made
        #: by the first listener's factory on its clock.
        self.deadlines = None
        #: What the destinations see of the broker.
        self.context = DestinationContext(
            config,
            self.stats,
            store,
            clock,
            self.new_key,
            self.now_ms,
            self.dead_letters.expire,
            self.dead_letters.dead_letter,
        )
        self._durables = Durables(
            self.context, store, self.destination, self.unsubscribe, self._forget_if_idle
        )
        self._expiry = ExpirySweep(
            clock,
            config.expiry_interval,
            self.now_ms,
            self.destinations,
            self._durables.by_owner,
            self._forget_if_idle,
        )
        self._opened = False
        #: Messages held back by AMQ_SCHEDULED_DELAY until they are due.
        self.scheduled = Scheduler(self.context, self._route_due, self.deadline_sweep)
        self._stream_limits = _stream_limits(
            StreamLimits(
                config.stream_max_count,
                config.stream_max_bytes,
                int(config.stream_max_age * 1000),
            ),
            config.stream_limits,
        )
        #: The logins (:class:`~stomptw.authenticator.Authenticator`); None: every
        #: session is anonymous and may do everything.
        self.auth = None
        #: How many per-connection lines the sessions may log (``--log-level``,
        #: ``--log-connections-per-second``), shared by every vhost.
        self.connection_log = ConnectionLogBudget(
            config.log_connections_per_second, config.log_level
        )
        #: The disk alarm (:class:`stomptw.diskalarm.DiskAlarm`) when the store
        #: is on disk and ``--disk-free-limit`` is set; None otherwise.
        self.disk_alarm = None
        #: The memory alarm (:class:`stomptw.memalarm.MemoryAlarm`) when
        #: ``--memory-high-watermark`` is set; None otherwise.
        self.memory_alarm = None
        #: The application API (:class:`stomptw.application.Messaging`) once
        #: the embedding application asked for it (``Messaging.of``).
        self.messaging = None
        #: The virtual hosts by name, this broker as ``/`` (:meth:`add_vhost`).
        self.vhosts: dict[str, Broker] = {"/": self}
        #: This node's part of a cluster (:class:`stomptw.cluster.node.ClusterNode`)
        #: with ``--cluster``, on the default vhost's broker; None otherwise.
        self.cluster = None
        #: Called with each topic message this broker accepted, to pass it on
        #: to the other nodes of a cluster; None on a single node.
        self.on_topic_message: Callable[[Message], None] | None = None
        #: ``(name, dead_letter) -> Queue``: makes this broker's queues in a
        #: cluster (they span the nodes); None on a single node.
        self.make_queue: Callable[[str, bool], Queue] | None = None
        #: ``() -> Deferred`` that fires once every message sent to a
        #: cluster queue so far is stored by the cluster; None on a single node.
        self.cluster_sync: Callable[[], Any] | None = None
        #: ``() -> context manager`` within which the messages sent to cluster
        #: queues are stored all together or not at all; None on a single node.
        self.cluster_together: Callable[[], Any] | None = None
        self._root = True

    def use_cluster_durables(self, cluster: Any) -> None:
        """
        Keep durable subscriptions in the cluster (``cluster`` makes their
        queues and hears of each attach and removal); None: this node's own.
        """
        self._durables.cluster = cluster

    @property
    def durables(self) -> dict[str, DurableSubscription]:
        """The durable topic subscriptions, by their store name."""
        return self._durables.by_owner

    def new_session_id(self) -> str:
        """A session identifier for a new client connection."""
        return f"{self._prefix}-{next(self._session_ids)}"

    def new_message_id(self) -> str:
        """A message id unique for the broker's lifetime and across restarts."""
        return f"{self._prefix}-{next(self._message_ids)}"

    def new_key(self) -> int:
        """A fresh message store key."""
        return next(self._keys)

    def now_ms(self) -> int:
        """The time, in milliseconds since the epoch."""
        seconds = self.clock.seconds() if self.clock is not None else time.time()
        return int(seconds * 1000)

    # -- routing ---------------------------------------------------------------------

    @staticmethod
    def check_destination(name: str) -> None:
        """
        Raise :class:`DestinationError` if ``name`` cannot be routed to.
        """
        if not name:
            raise DestinationError("destination is empty")
        if name.startswith(RESERVED_PREFIXES):
            raise DestinationError(
                f"{name!r}: names starting with {' or '.join(RESERVED_PREFIXES)} are the "
                "broker's own (its message store uses them)"
            )
        if name.startswith(TEMP_PREFIX):
            raise DestinationError(
                f"{name} names a client connection's temporary queue, which only "
                "that connection's own frames can use"
            )
        for prefix in (QUEUE_PREFIX, TOPIC_PREFIX, STREAM_PREFIX):
            if name.startswith(prefix) and len(name) == len(prefix):
                raise DestinationError(f"destination {name!r} has no name after the prefix")
        if name.startswith(USER_PREFIX):
            user_destination(name)

    def destination(self, name: str) -> IDestination:
        """Return the destination called ``name``, creating it if needed."""
        dest = self.destinations.get(name)
        if dest is None:
            self.check_destination(name)
            if name.startswith(REPLY_PREFIX):
                raise DestinationError(f"{name}: no such temporary queue (its connection ended)")
            if name.startswith(TOPIC_PREFIX):
                dest = Topic(name, self.context)
            elif name.startswith(USER_PREFIX):
                dest = UserDestination(name, self.context)
            elif name.startswith(STREAM_PREFIX):
                dest = Stream(name, self.context, self._stream_limits(name))
            elif self.make_queue is not None:
                dest = self.make_queue(name, self.is_dead_letter_queue(name))
            else:
                dest = Queue(name, self.context, dead_letter=self.is_dead_letter_queue(name))
            self.destinations[name] = dest
        return dest

    def subscribe(self, subscription: Subscription) -> None:
        """
        Start delivering messages from its destination to ``subscription``.

        A durable subscription is created on first use and attached to its
        queue; raises :class:`DestinationError` if another session is
        attached to it already.
        """
        if subscription.durable is None:
            dest = self.destination(subscription.destination)
        else:
            dest = self._durables.attach(subscription)
        subscription.target = dest
        dest.subscribe(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        """
        Stop ``subscription``. Its unacknowledged messages go back to their
        queue (redelivered); on a topic they are dropped. A durable
        subscription stays, and keeps collecting messages.
        """
        subscription.active = False
        dest = subscription.target
        if dest is None:
            return
        subscription.target = None
        dest.unsubscribe(subscription)
        self._forget_if_idle(dest)

    def remove_durable(self, client_id: str, name: str) -> bool:
        """
        Delete the durable subscription ``name`` of ``client_id`` and the
        messages it holds; False if there is none.
        """
        return self._durables.remove(client_id, name)

    def ack(self, subscription: Subscription, messages: list[Message]) -> None:
        """``messages``, taken from ``subscription.unacked``, are done with."""
        if subscription.target is not None and messages:
            self.stats["acked"] += len(messages)
            subscription.target.acked(subscription, messages)

    def nack(self, subscription: Subscription, messages: list[Message]) -> None:
        """``messages``, taken from ``subscription.unacked``, were refused."""
        if subscription.target is not None and messages:
            self.stats["nacked"] += len(messages)
            subscription.target.nacked(subscription, messages)

    def ready(self, subscription: Subscription) -> None:
        """``subscription``'s consumer can take messages again."""
        if subscription.target is not None and subscription.active:
            subscription.target.ready(subscription)

    # -- dead letters and expiry ----------------------------------------------------

    def is_dead_letter_queue(self, name: str) -> bool:
        """Whether ``name`` is a dead-letter queue (whose messages never move on)."""
        return self.dead_letters.is_dead_letter_queue(name)

    def dead_letter_destination(self, destination: str) -> str | None:
        """Where messages from ``destination`` go when they die; None to drop them."""
        return self.dead_letters.target(destination)

    def expire(self, queue: Queue | None, message: Message) -> None:
        """``message`` (already out of ``queue``) has expired."""
        self.dead_letters.expire(queue, message)

    def _forget_if_idle(self, dest: IDestination) -> None:
        if dest.is_idle() and self.destinations.get(dest.name) is dest:
            del self.destinations[dest.name]


def _stream_limits(
    default: StreamLimits, overrides: Iterable[str]
) -> Callable[[str], StreamLimits]:
    """``name -> limits``: the first matching ``--stream-limit``'s, else ``default``."""
    compiled = []
    for text in overrides:
        pattern, limits = parse_limit(text)
        compiled.append((compile_patterns([pattern]), limits))

    def lookup(name: str) -> StreamLimits:
        for matches, limits in compiled:
            if matches(name):
                return limits
        return default

    return lookup
