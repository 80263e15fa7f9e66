"""
The broker's data model: messages, subscriptions and the rules about them.

Everything here is plain data and small rules (acknowledgement modes,
message sizing, which SEND headers travel on, durable subscription names);
no module of the broker is imported, so every other module can use it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stomptw.encoding import encode_frame, join_message, message_head, message_parts
from stomptw.frame import CLIENT_COMMANDS, SERVER_COMMANDS
from stomptw.interfaces import IDestination, IMessageConsumer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from stomptw.config import BrokerConfig
    from stomptw.interfaces import IMessageStore

__all__ = [
    "ACK_MODES",
    "COUNTED_COMMANDS",
    "Counters",
    "DestinationContext",
    "DURABLE_NAME_HEADERS",
    "DestinationError",
    "DestinationFull",
    "DurableSubscription",
    "MESSAGE_OVERHEAD",
    "Message",
    "NOT_FORWARDED",
    "DEFAULT_PRIORITY",
    "priority_of",
    "check_priority",
    "QUEUE_PREFIX",
    "STAT_NAMES",
    "Subscription",
    "TOPIC_PREFIX",
    "durable_name",
    "durable_owner",
    "encode_delivery",
    "format_peer",
    "message_size",
]

#: The acknowledgement modes a subscription may ask for.
ACK_MODES = ("auto", "client", "client-individual")

QUEUE_PREFIX = "/queue/"
TOPIC_PREFIX = "/topic/"


class DestinationFull(Exception):
    """A queue at its limits refuses a message (overflow policy ``reject``)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name} is full ({reason})")
        self.name = name
        self.reason = reason


#: The priority of a message sent without one (JMS's and ActiveMQ's).
DEFAULT_PRIORITY = 4


_PRIORITIES = {str(n): n for n in range(10)}


def priority_of(message: Message) -> int:
    """A message's ``priority`` header (0-9), or the default for none or any other value."""
    return _PRIORITIES.get(message.headers.get("priority", ""), DEFAULT_PRIORITY)


def check_priority(value: str) -> None:
    """``ValueError`` unless ``value`` is a priority header: one digit, 0 to 9."""
    if value not in _PRIORITIES:
        raise ValueError(
            f"priority must be a digit from 0 (lowest) to 9 (highest), got {value[:40]!r}"
        )


class DestinationError(ValueError):
    """A destination name the broker cannot route to."""


#: What each message counts for against a queue's byte limit besides its
#: body and headers: the broker's own bookkeeping for it.
MESSAGE_OVERHEAD = 512


def message_size(headers: dict[str, str], body: bytes) -> int:
    """What a message counts for against a queue's byte limit."""
    size = len(body) + MESSAGE_OVERHEAD
    for name, value in headers.items():
        size += len(name) + len(value)
    return size


class Message:
    """
    A message accepted by the broker.

    :ivar message_id: unique for the broker's lifetime and across restarts.
    :ivar destination: the destination it was sent to.
    :ivar headers: the sender's headers that travel with it (``content-type``
        and user headers), without the per-delivery ones.
    :ivar body: the body bytes.
    :ivar persistent: sent with ``persistent:true``: a queue keeps it in the
        message store until it is acknowledged.
    :ivar expires: when it expires, in milliseconds since the epoch; 0 never.
    :ivar delivery_count: how many deliveries of it a queue has started
        (the one under way included); topics leave it at 0.
    :ivar key: its key in the message store while it is stored, else 0.
    :ivar size: what it counts for against a queue's byte limit.
    :ivar encoded: ``(version, parts)``: the MESSAGE frame parts that
        every delivery in that protocol version shares (see
        :func:`stomptw.encoding.message_parts`), set by the first delivery of
        a topic message; ``None`` until then (and for queue messages). The
        headers and body must not change once it is set.
    """

    __slots__ = (
        "message_id",
        "destination",
        "headers",
        "body",
        "persistent",
        "expires",
        "delivery_count",
        "key",
        "size",
        "encoded",
    )

    def __init__(
        self,
        message_id: str,
        destination: str,
        headers: dict[str, str],
        body: bytes,
        persistent: bool = False,
        expires: int = 0,
        delivery_count: int = 0,
    ) -> None:
        self.message_id = message_id
        self.destination = destination
        self.headers = headers
        self.body = body
        self.persistent = persistent
        self.expires = expires
        self.delivery_count = delivery_count
        self.key = 0
        # message_size(), inline: this runs for every message.
        size = len(body) + MESSAGE_OVERHEAD
        for name, value in headers.items():
            size += len(name) + len(value)
        self.size = size
        self.encoded: tuple[str, tuple[bytes, bytes] | None] | None = None

    @property
    def redelivered(self) -> bool:
        """True when an earlier delivery of this message was started."""
        return self.delivery_count > 1

    def copy(self) -> Message:
        """A fresh copy for another queue (a durable subscription's)."""
        return Message(
            self.message_id,
            self.destination,
            self.headers,
            self.body,
            self.persistent,
            self.expires,
        )

    def __repr__(self) -> str:
        return f"<Message {self.message_id} to {self.destination}>"


#: The backlog of a subscription nothing waits for (shared, never appended to).
NO_BACKLOG: Any = ()


class Subscription:
    """
    One client subscription to one destination.

    :ivar consumer: the session that receives the messages.
    :ivar id: the subscription id the client chose.
    :ivar destination: the destination's name.
    :ivar ack_mode: one of :data:`ACK_MODES`.
    :ivar prefetch: the most unacknowledged messages it may hold in a client
        mode; 0 means no limit.
    :ivar durable: for a durable topic subscription, its
        ``(client id, name)``; else None.
    :ivar unacked: ack id -> message, in delivery order, for messages
        delivered in a client mode and not yet acknowledged.
    :ivar backlog: topic messages waiting for this subscription to be ready.
    :ivar active: False once the subscription is being torn down; it then
        receives nothing more.
    """

    __slots__ = (
        "consumer",
        "id",
        "destination",
        "ack_mode",
        "prefetch",
        "durable",
        "unacked",
        "backlog",
        "dropped",
        "target",
        "active",
        "stream_start",
        "head",
    )

    def __init__(
        self,
        consumer: IMessageConsumer,
        id: str,
        destination: str,
        ack_mode: str = "auto",
        prefetch: int = 0,
        durable: tuple[str, str] | None = None,
    ) -> None:
        if ack_mode not in ACK_MODES:
            raise ValueError(f"unknown ack mode {ack_mode!r}")
        self.consumer = consumer
        self.id = id
        self.destination = destination
        self.ack_mode = ack_mode
        self.prefetch = prefetch
        self.durable = durable
        self.unacked: dict[str, Message] = {}
        #: Topic messages waiting for this subscriber (see
        #: :meth:`hold_back`); empty and shared until the first one waits,
        #: as an empty deque takes about 600 bytes.
        self.backlog: deque[Message] = NO_BACKLOG
        self.dropped = 0
        self.target: IDestination | None = None
        self.active = True
        #: Where a subscription to a stream starts reading
        #: (:class:`stomptw.streams.StreamStart`); None: new messages only.
        self.stream_start: Any = None
        #: The version and the first lines of every MESSAGE to this
        #: subscription (:func:`~stomptw.encoding.message_head`), once made.
        self.head: tuple[str, bytes] | None = None

    def is_ready(self) -> bool:
        """Whether this subscription may be handed another message now."""
        if not self.active or not self.consumer.writable:
            return False
        return self.prefetch <= 0 or self.ack_mode == "auto" or len(self.unacked) < self.prefetch

    def deliver(self, message: Message) -> bool:
        """Pass ``message`` to the consumer; False if it could not take it."""
        return self.consumer.deliver(self, message)

    def take(self, ack_id: str, cumulative: bool) -> list[tuple[str, Message]]:
        """
        Remove and return ``(ack id, message)`` for the unacknowledged
        message ``ack_id`` and, when ``cumulative``, for every message
        delivered before it.
        """
        unacked = self.unacked
        if ack_id not in unacked:
            return []
        if not cumulative:
            return [(ack_id, unacked.pop(ack_id))]
        taken = []
        for key in list(unacked):
            taken.append((key, unacked.pop(key)))
            if key == ack_id:
                break
        return taken


class DurableSubscription:
    """
    A durable topic subscription: a queue, fed by its topic, that keeps the
    messages published while its subscriber is away.

    :ivar owner: its name in the message store.
    :ivar client_id: the ``client-id`` of the connections that use it.
    :ivar name: its name (the subscription name or id).
    :ivar topic: the topic's name.
    :ivar queue: the queue holding its messages.
    """

    def __init__(
        self, owner: str, client_id: str, name: str, topic: str, queue: IDestination
    ) -> None:
        self.owner = owner
        self.client_id = client_id
        self.name = name
        self.topic = topic
        self.queue = queue


def durable_owner(client_id: str, name: str) -> str:
    """The store name of the durable subscription ``name`` of ``client_id``."""
    return f"durable:{len(client_id)}:{client_id}:{name}"


#: The counters in :attr:`Broker.stats`.
STAT_NAMES = (
    "published",
    "delivered",
    "redelivered",
    "acked",
    "nacked",
    "dead_lettered",
    "expired",
    "dropped",
    "slow_consumer_dropped",
    "slow_consumer_disconnected",
    "producers_blocked",
    "rejected",
    "connections_refused",
)


#: The frame commands counted by name in :class:`Counters`; any other
#: command is counted as ``"OTHER"`` (so that clients cannot grow the table).
COUNTED_COMMANDS = (*sorted(CLIENT_COMMANDS), *sorted(SERVER_COMMANDS), "OTHER")


class Counters:
    """
    Traffic counters that the sessions keep, for metrics.

    Kept as plain attributes and dicts so that counting costs one or two
    increments per frame; read on the reactor thread.

    :ivar frames_received: frames received, by command (see
        :data:`COUNTED_COMMANDS`).
    :ivar frames_sent: frames sent, by command.
    :ivar bytes_received: bytes of STOMP data received (after any
        WebSocket framing is removed).
    :ivar bytes_sent: bytes of STOMP data written, heart-beats included.
    :ivar heartbeat_timeouts: sessions closed because the client's
        heart-beats stopped.
    :ivar sessions_ended: connections that ended, for whatever reason.
    """

    __slots__ = (
        "frames_received",
        "frames_sent",
        "bytes_received",
        "bytes_sent",
        "heartbeat_timeouts",
        "sessions_ended",
    )

    def __init__(self) -> None:
        self.frames_received: dict[str, int] = dict.fromkeys(COUNTED_COMMANDS, 0)
        self.frames_sent: dict[str, int] = dict.fromkeys(COUNTED_COMMANDS, 0)
        self.bytes_received = 0
        self.bytes_sent = 0
        self.heartbeat_timeouts = 0
        self.sessions_ended = 0


#: Headers of a SEND frame that do not travel on to MESSAGE frames; the
#: broker sets its own ``destination``, ``message-id``, ``subscription``,
#: ``ack``, ``content-length``, ``redelivered`` and ``user-id`` (the sender's
#: authenticated name, never the client's say-so).
NOT_FORWARDED = frozenset(
    {
        "destination",
        "message-id",
        "subscription",
        "ack",
        "content-length",
        "transaction",
        "receipt",
        "redelivered",
        "user-id",
    }
)

#: SUBSCRIBE/UNSUBSCRIBE headers that name a durable topic subscription, in
#: order of precedence (ActiveMQ Artemis, then ActiveMQ Classic).
DURABLE_NAME_HEADERS = (
    "durable-subscriber-name",
    "durable-subscription-name",
    "activemq.subscriptionName",
)


def durable_name(headers: dict[str, str], sub_id: str | None) -> str | None:
    """
    The durable subscription a SUBSCRIBE or UNSUBSCRIBE names, if any: one of
    :data:`DURABLE_NAME_HEADERS`, or (RabbitMQ's convention) the ``id`` when
    ``durable:true`` (or the older ``persistent:true``) is set and
    ``auto-delete`` is not ``true``.
    """
    for name in DURABLE_NAME_HEADERS:
        value = headers.get(name)
        if value:
            return value
    if (headers.get("durable") == "true" or headers.get("persistent") == "true") and headers.get(
        "auto-delete"
    ) != "true":
        return sub_id or None
    return None


def format_peer(address: object) -> str:
    """``host:port`` for a Twisted address (or the address itself, as text)."""
    return f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"


def encode_delivery(
    subscription: Subscription, message: Message, version: str, ack_id: str | None
) -> bytes:
    """
    The MESSAGE frame that delivers ``message`` through ``subscription`` in
    protocol ``version`` (``ack_id`` in a client ack mode).

    The parts every delivery of a message shares are encoded once when its
    destination says encodings can be shared (a topic: one message, many
    subscribers) and kept on the message; a queue message, delivered once as
    a rule, is encoded afresh.
    """
    count = message.delivery_count
    encoded = message.encoded
    if encoded is not None and encoded[0] == version:
        parts = encoded[1]
    else:
        parts = message_parts(
            message.message_id, message.destination, message.headers, message.body, version
        )
        target = subscription.target
        if target is not None and target.shares_encodings:
            message.encoded = (version, parts)
    if parts is not None:
        head = subscription.head
        if head is None or head[0] != version:
            head = subscription.head = (version, message_head(subscription.id, version))
        return join_message(
            head[1],
            parts,
            version,
            ack_id if version == "1.2" else None,
            count > 1,
            count - 1 if count else 0,
        )
    # The sender's headers override per-delivery ones: the general path.
    headers = {
        "subscription": subscription.id,
        "message-id": message.message_id,
        "destination": message.destination,
    }
    if ack_id is not None and version == "1.2":
        headers["ack"] = ack_id
    if count > 1:
        headers["redelivered"] = "true"
    headers["x-delivery-count"] = str(count - 1) if count else "0"
    headers.update(message.headers)
    return encode_frame("MESSAGE", headers, message.body, version)


class DestinationContext:
    """
    What a destination may use of the broker that holds it, and nothing
    more: the delivery policy, the counters, the message store, the clock,
    whether the broker is stopping, and the broker's few services to
    destinations (store keys, the time, expiry and dead letters).

    :ivar config: the delivery policy (limits, overflow, slow topics).
    :ivar stats: the broker's message counters, by name.
    :ivar store: where persistent messages are kept.
    :ivar clock: the reactor's time, for slow-subscriber timers; may be None.
    :ivar stopping: True once the broker is stopping: nothing more is
        delivered, and returned messages stay as they are.
    :ivar new_key: ``() -> int``, a fresh message store key.
    :ivar now_ms: ``() -> int``, the time in milliseconds since the epoch.
    :ivar expire: ``(queue, message)``: ``message`` (out of ``queue``) expired.
    :ivar dead_letter: ``(queue, message, reason)``: ``message`` died.
    :ivar revive: ``(stored) -> Message``: a message read back from the store
        (a paged backlog).
    """

    __slots__ = (
        "config",
        "stats",
        "store",
        "clock",
        "stopping",
        "new_key",
        "now_ms",
        "expire",
        "dead_letter",
        "revive",
    )

    def __init__(
        self,
        config: BrokerConfig,
        stats: dict[str, int],
        store: IMessageStore,
        clock: IReactorTime | None,
        new_key: Callable[[], int],
        now_ms: Callable[[], int],
        expire: Callable[[IDestination | None, Message], None],
        dead_letter: Callable[[IDestination | None, Message, str], None],
    ) -> None:
        self.config = config
        self.stats = stats
        self.store = store
        self.clock = clock
        self.stopping = False
        self.new_key = new_key
        self.now_ms = now_ms
        self.expire = expire
        self.dead_letter = dead_letter
        self.revive: Callable[[Any], Message] = _revive_clean


def _revive_clean(stored: Any) -> Message:
    """A stored message as a live one, with the delivery count it was stored with."""
    message = Message(
        stored.message_id,
        stored.destination,
        stored.headers,
        stored.body,
        persistent=True,
        expires=stored.expires,
        delivery_count=stored.delivery_count,
    )
    message.key = stored.key
    return message
