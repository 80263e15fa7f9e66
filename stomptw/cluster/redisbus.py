"""
The cluster bus on Redis pub/sub, with txredisapi (a native Twisted client;
hiredis parses the replies when it is installed, which setup.cfg asks for).

Two connections per node: one PUBLISHes this node's topic messages on
``stomptw:<db>:topic:<vhost><destination>``, the other PSUBSCRIBEs to
``stomptw:<db>:topic:*`` and hands every payload to the node. (Redis's
channels are the same in every database; the db number in the name keeps two
clusters sharing one Redis apart.) Each connection is kept up by a
:class:`~stomptw.cluster.redislink.RedisLink` (reconnected with backoff,
dropped when Redis stops answering), and the bus logs one line when the
cluster goes down and one when it is back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw.cluster.probe import CHECK_TIMEOUT, ClusterUnavailable, check_redis
from stomptw.cluster.redisdurables import DEFAULT_LOG_LENGTH, durable_log_key
from stomptw.cluster.redislink import HeardProtocol, RedisLink
from stomptw.cluster.settings import RedisTarget, read_password_file
from stomptw.interfaces import IClusterBus

__all__ = [
    "CommandConnection",
    "ReaderConnection",
    "RedisBus",
    "channel_prefix",
    "redis_endpoint",
]

log = Logger()

#: Bytes of PUBLISH commands written and not yet answered past which topic
#: messages stay on their node (a Redis that far behind is as good as down
#: for them); this bounds the memory they hold.
MAX_UNANSWERED_BYTES = 64 * 1024 * 1024


def channel_prefix(target: RedisTarget) -> str:
    """The prefix of the cluster's topic channels in ``target``'s database."""
    return f"stomptw:{target.db}:topic:"


def redis_endpoint(target: RedisTarget, reactor: Any) -> IStreamClientEndpoint:
    """The client endpoint that reaches ``target`` (TCP, TLS or a UNIX socket)."""
    if target.scheme == "unix":
        return UNIXClientEndpoint(reactor, target.path, timeout=CHECK_TIMEOUT)
    endpoint = HostnameEndpoint(reactor, target.host, target.port, timeout=CHECK_TIMEOUT)
    if target.scheme == "rediss":
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        trust = None
        if target.ca:
            with open(target.ca, "rb") as f:
                trust = Certificate.loadPEM(f.read())
        options = optionsForClientTLS(target.host, trustRoot=trust)
        endpoint = wrapClientTLS(options, endpoint)
    return endpoint


class _Subscriber(HeardProtocol, txredisapi.SubscriberProtocol):
    """A subscriber connection that hands each message's payload to ``on_message``."""

    on_message: Callable[[bytes], None] = staticmethod(lambda payload: None)

    def messageReceived(self, pattern: bytes, channel: bytes, message: bytes) -> None:
        self.on_message(message)


class ReaderConnection(HeardProtocol, txredisapi.RedisProtocol):
    """A plain txredisapi connection kept up by a link (the cluster queues' blocking reads)."""


class CommandConnection(HeardProtocol, txredisapi.RedisProtocol):
    """
    A connection whose commands for every message skip txredisapi's
    per-command machinery (two Deferreds, a closure and a queue entry each,
    too much for every message of a burst): a PUBLISH, or a command given
    as RESP bytes (:meth:`raw`), is written as it is, and its answer
    counted, or handed to a callback, when it comes back. Other commands
    (AUTH, SELECT, PING, ...) go through txredisapi as usual; answers come
    in the order of the commands, and are matched so. The bus publishes on
    one; the cluster's queues send on another.

    :ivar unanswered: bytes of PUBLISH commands written and not yet answered.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unanswered = 0
        #: Whom each answer to come is for, oldest first: a PUBLISH (its
        #: size), a raw command (its callback) or a txredisapi command (None).
        self._expected: deque[Any] = deque()

    def execute_command(self, *args: Any, **kwargs: Any) -> defer.Deferred:
        self._expected.append(None)
        try:
            return super().execute_command(*args, **kwargs)
        except Exception:
            self._expected.pop()
            raise

    def raw(
        self,
        parts: list[bytes],
        answered: Callable[[Any], None],
        before: list[Callable[[Any], None]] = (),  # type: ignore[assignment]
    ) -> None:
        """
        Write a command given as RESP ``parts``; ``answered`` gets its answer
        (an exception instance for an error, or a lost connection). When
        ``parts`` hold several commands (``MULTI`` ... ``EXEC``), ``before``
        gets the answers to all but the last, in order.
        """
        self.transport.writeSequence(parts)
        if before:
            self._expected.extend(before)
        self._expected.append(answered)

    def publish_now(self, channel: bytes, payload: bytes, log: bytes = b"", cap: int = 0) -> None:
        """
        PUBLISH ``payload`` on ``channel``, the body not copied; with ``log``,
        first append it to that stream if it exists (``XADD ... NOMKSTREAM``,
        at most ``cap`` entries kept), so that the stream has it before any
        node hears of it.
        """
        parts = []
        if log:
            limit = b"%d" % cap
            parts.append(
                b"*9\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$10\r\nNOMKSTREAM\r\n$6\r\nMAXLEN\r\n"
                b"$1\r\n~\r\n$%d\r\n%s\r\n$1\r\n*\r\n$1\r\nm\r\n$%d\r\n"
                % (len(log), log, len(limit), limit, len(payload))
            )
            parts += [payload, b"\r\n"]
        head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n" % (
            len(channel),
            channel,
            len(payload),
        )
        parts += [head, payload, b"\r\n"]
        self.transport.writeSequence(parts)
        size = sum(len(part) for part in parts)
        if log:
            self._expected.append(0)  # the XADD's answer
        self._expected.append(size)
        self.unanswered += size

    def replyReceived(self, reply: Any) -> None:
        whom = self._expected.popleft() if self._expected else None
        if whom is None:
            super().replyReceived(reply)  # a txredisapi command's
        elif isinstance(whom, int):
            self.unanswered -= whom
        else:
            whom(reply)

    def connectionLost(self, why: Failure) -> None:
        # What was PUBLISHed and not answered is lost with the connection;
        # raw commands hear of it, and txredisapi fails its own commands'.
        expected, self._expected = self._expected, deque()
        self.unanswered = 0
        for whom in expected:
            if whom is not None and not isinstance(whom, int):
                whom(txredisapi.ConnectionError("Lost connection"))
        super().connectionLost(why)


@implementer(IClusterBus)
class RedisBus:
    """
    The cluster bus on Redis pub/sub.

    :param target: the Redis of the ``--cluster`` URL.
    :param node_id: this node's id (for the logs).
    :param reactor: to connect and schedule with.
    :param password_file: ``--cluster-password-file``, read when the bus is
        checked or started (a password in the URL as well is refused).
    """

    def __init__(
        self, target: RedisTarget, node_id: str, reactor: Any, password_file: str = ""
    ) -> None:
        self.target = target
        self.node_id = node_id
        self.where = target.where
        self.connected = False
        #: Times the cluster came back after being down.
        self.reconnects = 0
        self._reactor = reactor
        self._password_file = password_file
        self._password: str | None = None
        self._prefix = channel_prefix(target)
        self._log_prefix = durable_log_key(target.db, "")
        #: The most entries a topic's durable log keeps (``XADD MAXLEN ~``).
        self.log_length = DEFAULT_LOG_LENGTH
        self._pattern = self._prefix.encode() + b"*"
        self._state = "starting"
        self._joined = False
        self._down_since = 0.0
        self._receive: Callable[[bytes], None] = lambda payload: None
        self._links: list[RedisLink] = []
        self._publisher: RedisLink | None = None
        self._endpoint: IStreamClientEndpoint | None = None
        self._watchers: list[Callable[[], None]] = []

    # -- IClusterBus -----------------------------------------------------------------

    def check(self) -> None:
        """Join Redis once, blocking: raise :class:`ClusterUnavailable` saying why it fails."""
        check_redis(self.target, self._read_password())

    def start(self, receive: Callable[[bytes], None]) -> None:
        self._receive = receive
        password = self._read_password()
        endpoint = self._endpoint = redis_endpoint(self.target, self._reactor)
        target = self.target

        def publisher() -> txredisapi.BaseRedisProtocol:
            return CommandConnection(
                charset=None,
                password=password,
                dbid=target.db,
                convertNumbers=False,
                username=target.username,
            )

        def subscriber() -> txredisapi.BaseRedisProtocol:
            protocol = _Subscriber(
                charset=None, password=password, convertNumbers=False, username=target.username
            )
            protocol.on_message = self._received
            return protocol

        def subscribe(protocol: _Subscriber) -> defer.Deferred:
            return protocol.psubscribe([self._pattern])

        clock = self._reactor
        self._publisher = RedisLink(endpoint, clock, publisher, lambda p: None, self._changed)
        subscribing = RedisLink(endpoint, clock, subscriber, subscribe, self._changed)
        self._links = [self._publisher, subscribing]
        for link in self._links:
            link.start()

    def broadcast(self, subject: str, payload: bytes) -> bool:
        publisher = self._publisher
        protocol = publisher.protocol if publisher is not None else None
        if not self.connected or protocol is None or not protocol.connected:
            return False
        if protocol.unanswered >= MAX_UNANSWERED_BYTES:
            return False
        channel = (self._prefix + subject).encode("utf-8", "surrogatepass")
        log = (self._log_prefix + subject).encode("utf-8", "surrogatepass")
        protocol.publish_now(channel, payload, log, self.log_length)
        return True

    def stop(self) -> defer.Deferred:
        links, self._links = self._links, []
        self.connected = False
        return defer.gatherResults([link.stop() for link in links], consumeErrors=True)

    # -- more connections to the same Redis (the cluster's queues) -------------------------

    def protocol(self, kind: type) -> txredisapi.BaseRedisProtocol:
        """A new connection's protocol of ``kind``, logging in to the cluster's database."""
        return kind(
            charset=None,
            password=self._read_password(),
            dbid=self.target.db,
            convertNumbers=False,
            username=self.target.username,
        )

    def open_link(
        self,
        build: Callable[[], txredisapi.BaseRedisProtocol],
        prepare: Callable[[Any], defer.Deferred | None],
    ) -> RedisLink:
        """
        One more connection, kept up like the bus's own (after :meth:`start`):
        the cluster is up only while it is up too.
        """
        link = RedisLink(self._endpoint, self._reactor, build, prepare, self._changed)
        self._links.append(link)
        link.start()
        return link

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the cluster is up again (every connection usable)."""
        self._watchers.append(callback)

    # -- the rest ----------------------------------------------------------------------

    def _read_password(self) -> str | None:
        if self._password is None and self._password_file:
            if self.target.password is not None:
                raise ClusterUnavailable(
                    f"--cluster-password-file {self._password_file}: the --cluster URL has a "
                    "password too; give it in one place only"
                )
            try:
                self._password = read_password_file(self._password_file)
            except ValueError as e:
                raise ClusterUnavailable(
                    f"--cluster-password-file {self._password_file}: {e}"
                ) from None
        return self._password if self._password is not None else self.target.password

    def _received(self, payload: bytes) -> None:
        try:
            self._receive(payload)
        except Exception:
            log.failure("cluster: a message from {where} could not be delivered", where=self.where)

    def _changed(self) -> None:
        """A link went up or down: log the cluster's state when it changes."""
        up = bool(self._links) and all(link.protocol is not None for link in self._links)
        reason = next((link.reason for link in self._links if link.reason), "")
        if up == self.connected and self._state != "starting":
            return
        if up:
            if not self._joined:
                self._joined = True
                log.info(
                    "cluster: node {node} joined the cluster on Redis {where}",
                    node=self.node_id,
                    where=self.where,
                )
            else:
                self.reconnects += 1
                log.info(
                    "cluster: node {node} is back on Redis {where} after {seconds:.1f} s; "
                    "messages flow between the nodes again",
                    node=self.node_id,
                    where=self.where,
                    seconds=self._reactor.seconds() - self._down_since,
                )
            self._state = "up"
            self.connected = True
            for watcher in self._watchers:
                watcher()
        elif self._state != "down" and (self._state == "up" or reason):
            self._down_since = self._reactor.seconds()
            what = "lost" if self._state == "up" else "cannot join"
            log.warn(
                "cluster: node {node} {what} Redis {where} ({reason}); until it is back, "
                "topic messages reach this node's subscribers only and queue messages wait; "
                "reconnecting",
                node=self.node_id,
                what=what,
                where=self.where,
                reason=reason or "connection lost",
            )
            self._state = "down"
        self.connected = up
