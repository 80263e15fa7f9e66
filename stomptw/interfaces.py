"""
zope.interface definitions for the pluggable parts of the broker.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IMessageConsumer(Interface):
    """
    Something the broker delivers messages to: in practice one client
    session (a STOMP connection). The broker calls it; it never sees a socket.
    """

    writable = Attribute(
        "False while the consumer's connection cannot take more data (its "
        "output buffer is over the high-water mark); nothing is delivered "
        "to its subscriptions until it is True again and the destination's "
        "``ready`` is called."
    )

    def slow_consumer(subscription, reason):  # noqa: N805
        """
        ``subscription`` stayed too slow for its topic and the broker's
        policy is to disconnect it: end the session with an ERROR saying
        ``reason``.
        """

    def block(queue):  # noqa: N805
        """
        Stop reading from this client (it sends to ``queue``, which is full,
        or to a topic with a subscriber at its backlog limit) until
        :meth:`unblock` is called for every destination that blocked it.
        """

    def unblock(queue):  # noqa: N805
        """``queue`` (a queue or topic) has room again."""

    def deliver(subscription, message):  # noqa: N805 - zope.interface style
        """
        Hand ``message`` (a :class:`stomptw.broker.Message`) to the client
        through ``subscription`` (a :class:`stomptw.broker.Subscription`).

        In the client acknowledgement modes the consumer records the message
        in ``subscription.unacked`` under an ack id of its choosing.

        Return True when the message was sent; False when this consumer
        cannot take it (it is closing, or the message is too large for its
        transport): a queue then keeps the message for another subscriber, a
        topic drops this subscriber's copy.
        """


class IDestination(Interface):
    """
    A named place messages are sent to: a queue or a topic.
    """

    name = Attribute("The destination's full name, e.g. ``/queue/orders``.")
    shares_encodings = Attribute(
        "True when every delivery of a message goes to several subscribers "
        "(a topic): the MESSAGE parts they share are then encoded once and "
        "kept on the message."
    )

    def publish(message, producer=None, reject=True):  # noqa: N805
        """
        Route a message to the destination's subscribers. ``producer`` (an
        :class:`IMessageConsumer`, the sending session) may be blocked when
        the destination is full; a destination may instead raise
        :class:`stomptw.broker.DestinationFull`, unless ``reject`` is false
        (the sender checked for room beforehand).
        """

    def subscribe(subscription):  # noqa: N805
        """Start delivering to ``subscription``."""

    def unsubscribe(subscription):  # noqa: N805
        """
        Stop delivering to ``subscription``; what it received and did not
        acknowledge is dealt with as the destination's policy says.
        """

    def acked(subscription, messages):  # noqa: N805
        """The client acknowledged ``messages`` received through ``subscription``."""

    def nacked(subscription, messages):  # noqa: N805
        """The client refused ``messages`` received through ``subscription``."""

    def ready(subscription):  # noqa: N805
        """``subscription`` can take more messages (after acks, for instance)."""

    def is_idle():
        """True when the destination holds nothing and nobody subscribes."""


class IMessageStore(Interface):
    """
    Where persistent messages and durable subscriptions are kept between
    restarts (:mod:`stomptw.store`).

    Every method is called on the reactor thread and must not block it:
    writes are collected and committed in the background, and :meth:`sync`
    says when they are on disk.
    """

    durable = Attribute("True if what is written survives a restart.")

    def load(window=0, pageable=None):  # noqa: N805
        """
        Open the store and return a :class:`stomptw.store.StoredState` with
        the messages and durable subscriptions it holds. Called once, before
        the broker accepts connections; it may block. With a ``window``, a
        durable store may leave each ``pageable(owner)`` owner's messages
        beyond the first ``window`` on disk, described by
        :attr:`~stomptw.store.StoredState.pages`.
        """

    def put(message):  # noqa: N805
        """Keep a :class:`stomptw.store.StoredMessage` (under its ``key``)."""

    def set_delivery_count(key, count):  # noqa: N805
        """Record that ``count`` deliveries of the message ``key`` were started."""

    def remove(key):  # noqa: N805
        """Forget the message ``key`` (acknowledged, expired or moved)."""

    def put_subscription(owner, client_id, name, destination):  # noqa: N805
        """Keep a durable subscription whose messages are stored under ``owner``."""

    def remove_subscription(owner):  # noqa: N805
        """Forget the durable subscription ``owner``."""

    def read(owner, first_key, last_key, limit):  # noqa: N805
        """
        Read back up to ``limit`` of ``owner``'s messages with keys from
        ``first_key`` to ``last_key``, in key order, after every write made
        before the call: a Deferred firing with a list of
        :class:`stomptw.store.StoredMessage` (a paged backlog coming back).
        """

    def remove_range(owner, first_key, last_key):  # noqa: N805
        """Forget ``owner``'s messages with keys from ``first_key`` to ``last_key``."""

    def remove_oldest(owner, first_key, last_key, count):  # noqa: N805
        """Forget the oldest ``count`` of ``owner``'s messages in that key range."""

    def sync():
        """
        A Deferred that fires once everything written before the call is
        durable, or fails with :class:`stomptw.store.StoreError`.
        """

    def close():
        """Write what is pending and close; a Deferred that fires when done."""

    def stats():
        """A dict of counters for monitoring (commits, last commit duration)."""


class IStompTransport(Interface):
    """
    How a :class:`stomptw.session.StompSession` reaches its client: the
    seam between the sans-IO session and a concrete transport (a TCP or TLS
    connection, a WebSocket). The session calls it; it never sees the
    reactor or a socket.
    """

    name = Attribute("A label for logs and metrics: ``tcp``, ``tls`` or ``ws``.")
    peer = Attribute("The client's address as ``host:port``.")
    max_message_size = Attribute(
        "The largest single write the transport can carry (a WebSocket "
        "message limit), or 0 for no limit."
    )
    disconnecting = Attribute("True once nothing more written will reach the client.")

    def write(data):  # noqa: N805
        """Send ``data``: one whole frame, or a heart-beat EOL."""

    def pause_reading():
        """Stop reading from the client until :meth:`resume_reading`."""

    def resume_reading():
        """Read from the client again."""

    def call_soon(f, *args):  # noqa: N805
        """
        Call ``f(*args)`` on a later turn of the event loop, not from inside
        the caller (for work that must not run re-entrantly).
        """

    def client_certificate():
        """
        The client's TLS certificate, verified against the listener's CA
        (a :class:`~stomptw.auth.CertificateCredentials`), or None.
        """

    def close(linger):  # noqa: N805
        """
        Close in order once what was written has gone out (a TCP half-close,
        TLS close_notify, the WebSocket closing handshake); drop the
        connection if the client has not closed within ``linger`` seconds.
        The session then hears :meth:`StompSession.connection_lost`.
        """


class IDeadlineTarget(Interface):
    """Something a :class:`stomptw.timers.DeadlineSweep` calls back."""

    def tick(now):  # noqa: N805
        """
        A deadline it asked for is due (or nearly, for early deadlines) at
        ``now``: do what is due and schedule the next one.
        """


class IClusterBus(Interface):
    """
    What a node of a cluster asks of the engine that ties the nodes together
    (:mod:`stomptw.cluster`; Redis is :class:`stomptw.cluster.redisbus.RedisBus`).
    Another engine implements this, and sessions and the broker do not change.
    """

    node_id = Attribute("This node's id in the cluster (str).")
    where = Attribute("Where the engine is, for logs and the admin API, without credentials.")
    connected = Attribute(
        "True while what :meth:`broadcast` sends reaches the other nodes "
        "(and theirs reaches this one)."
    )
    reconnects = Attribute("How many times the bus came back after being down (int).")

    def check():
        """
        Join the engine once, blocking, before the reactor runs: raise
        :class:`stomptw.cluster.probe.ClusterUnavailable` saying why it
        cannot be joined (unreachable, credentials refused, ...).
        """

    def start(receive):  # noqa: N805
        """
        Connect, and keep reconnecting while started; call ``receive`` with
        every payload any node broadcasts (this node's own included) while
        connected.
        """

    def broadcast(subject, payload):  # noqa: N805
        """
        Send ``payload`` to every node, in order with this node's other
        broadcasts; ``subject`` (vhost and destination) names what it is
        about. False when it cannot be sent now (the bus is down): nothing
        is queued for later.
        """

    def stop():
        """Disconnect; a Deferred that fires once the connections are closed."""


class IClusterDurables(Interface):
    """
    What a cluster node asks of the engine that keeps the cluster's durable
    topic subscriptions (Redis: :class:`stomptw.cluster.redisdurables.RedisDurables`).
    A subscription is named by its ``topic`` (vhost and destination) and its
    ``owner`` (client-id and name); it collects every message published to
    the topic on any node from its creation on, until :meth:`remove`.
    """

    def start(deliver):  # noqa: N805
        """
        Call ``deliver`` with ``(topic, owner, entry_id, payload, deliveries)``
        for each message handed to this node's subscriber of a subscription.
        """

    def attach(topic, owner):  # noqa: N805
        """
        The subscription's subscriber is on this node now: create it if it
        is new (replacing the owner's subscription to another topic), and
        take over what it had delivered and not seen acknowledged.
        """

    def want(topic, owner, credit):  # noqa: N805
        """The subscriber can take ``credit`` more messages now."""

    def notify(topic):  # noqa: N805
        """A message was published to ``topic``: the attached subscriptions read."""

    def done(topic, owner, entry_id):  # noqa: N805
        """The message was consumed."""

    def release(topic, owner, entry_id):  # noqa: N805
        """The subscriber left without consuming it: it waits for the next attach."""

    def remove(topic, owner):  # noqa: N805
        """Delete the subscription and what it holds."""

    def attached_topics():
        """The topics with a durable subscriber on this node (empty if none)."""

    def sync():
        """A Deferred that fires once every :meth:`attach` so far took effect."""

    def stop():
        """Send what is due (acknowledgements) and stop reading."""


class IClusterQueues(Interface):
    """
    What a cluster node asks of the engine that holds the cluster's queues
    (Redis Streams: :class:`stomptw.cluster.redisqueues.RedisQueues`). A
    queue is named by its ``subject`` (vhost and destination). Each message
    in it is an entry with an id the engine chooses; an entry handed to this
    node stays this node's until :meth:`done` or :meth:`give_back`, or until
    the node is silent for the node timeout and another node takes it.
    """

    connected = Attribute("True while the engine can take and hand out queue messages.")
    depths = Attribute("Queue depths across the cluster, by subject, as last read (dict).")
    nodes = Attribute("The ids of the nodes alive in the cluster, as last read (list).")

    def start(deliver):  # noqa: N805
        """
        Connect, and keep reconnecting while started; call ``deliver`` with
        ``(subject, entry_id, payload, deliveries)`` for each entry handed to
        this node, ``deliveries`` being how many deliveries of it were
        started before (on any node).
        """

    def add(subject, payload):  # noqa: N805
        """
        Append ``payload`` to the queue ``subject``; :meth:`sync` waits for
        it. While the engine is unreachable it is kept until it is back;
        raises :class:`OverflowError` (saying why) when it cannot be kept.
        """

    def want(subject, credit):  # noqa: N805
        """
        This node can take ``credit`` more entries of ``subject`` now (0:
        none; it has no subscriber ready).
        """

    def done(subject, entry_id):  # noqa: N805
        """The entry was consumed (acknowledged, expired or dead-lettered): drop it."""

    def give_back(subject, entry_id, payload, deliveries):  # noqa: N805
        """
        The entry goes back to the queue for any node (this one has no
        subscriber left for it), as ``payload`` with ``deliveries`` started.
        """

    def sync():
        """A Deferred that fires once every :meth:`add` so far is stored by the engine."""

    def held(subject):  # noqa: N805
        """
        ``(messages, bytes)`` in the queue ``subject`` across the cluster, as
        the engine last reported them ((0, 0) when no queue limit is set).
        """

    def watch(subject, on):  # noqa: N805
        """
        While ``on``, read ``subject``'s :meth:`held` often: producers wait
        for it to have room (the node hears when it has).
        """

    def purge(subject):  # noqa: N805
        """
        Drop what waits in the queue ``subject`` that no node has taken yet;
        a Deferred that fires with how many (fails with the builtin
        ``ConnectionError`` if the engine is unreachable or goes away).
        """

    def together():
        """
        A context manager: the :meth:`add` calls made within it are stored
        by the engine all together or not at all (a COMMIT's SENDs).
        """

    def stop():
        """Disconnect; a Deferred that fires once the connections are closed."""
