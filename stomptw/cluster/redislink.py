"""
One connection to Redis, kept up (:class:`RedisLink`): reconnected with
backoff when it drops, and dropped when Redis stops answering (a PING
unanswered, or a login that never completes), so that a frozen Redis is
noticed like a lost one. Used by :mod:`stomptw.cluster.redisbus`, on
txredisapi's protocols.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

__all__ = ["INITIAL_DELAY", "MAX_DELAY", "PING_INTERVAL", "PING_TIMEOUT", "RedisLink"]

#: Seconds before the first reconnection attempt, and the most between two
#: (doubling in between, with 10 % jitter).
INITIAL_DELAY = 0.5
MAX_DELAY = 10.0
#: Seconds between PINGs on a usable connection, and how long an answer (or
#: a new connection's login) may take before the connection is dropped.
PING_INTERVAL = 1.0
PING_TIMEOUT = 3.0


class _Factory(Factory):
    """
    What a txredisapi protocol asks of its factory, without txredisapi's
    pool and its reconnecting (which :class:`RedisLink` does, logging only
    changes of state).
    """

    #: txredisapi logs a refused AUTH or SELECT itself unless this is False.
    isLazy = False
    #: No "Starting factory" line at each reconnection.
    noisy = False

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> txredisapi.BaseRedisProtocol:
        protocol = self.link.build()
        protocol.factory = self
        return protocol

    def stopTrying(self) -> None:
        """txredisapi's call when AUTH or SELECT fails: the link retries with backoff anyway."""

    def connectionError(self, why: str) -> None:
        self.link.reason = why


class HeardProtocol:
    """
    A mixin for the protocols a :class:`RedisLink` keeps up: every read
    calls ``on_heard``, since any answer shows that Redis is there (a
    PING's may come late behind a long run of others).
    """

    #: Set by the link: called with no arguments on every read.
    on_heard: Callable[[], None] | None = None

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        heard = self.on_heard
        if heard is not None:
            heard()
        super().dataReceived(data)  # type: ignore[misc]


class RedisLink:
    """
    One connection to Redis, kept up: reconnects with exponential backoff
    (:data:`INITIAL_DELAY` to :data:`MAX_DELAY`), PINGs it every
    :data:`PING_INTERVAL` seconds and drops it when an answer (or the login
    of a new connection) takes more than :data:`PING_TIMEOUT` with nothing
    at all received meanwhile (a PING's answer may queue behind many
    others under load); calls
    ``changed`` each time it becomes usable or stops being so.

    :param endpoint: where Redis is.
    :param clock: schedules the retries and the PINGs.
    :param build: makes the protocol of a new connection (with its
        password and database, which it sends on connecting).
    :param prepare: ``protocol -> Deferred or None``, run once the connection
        is logged in (to PSUBSCRIBE); the link is usable when it fires.
    :param changed: called when the link becomes usable or stops being so,
        and when a connection attempt fails.

    :ivar protocol: the connection while it is usable, else None.
    :ivar reason: why it is not usable, as last seen ("" while it is).
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        build: Callable[[], txredisapi.BaseRedisProtocol],
        prepare: Callable[[Any], defer.Deferred | None],
        changed: Callable[[], None],
    ) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.build = build
        self.prepare = prepare
        self.changed = changed
        self.protocol: Any = None
        self.reason = ""
        #: When the connection last received anything (a sign of life).
        self.heard = 0.0
        self._connection: Any = None
        self._attempt = 0
        self._retry: Any = None
        self._timeout: Any = None
        self._connecting: defer.Deferred | None = None
        self._stopped = False

    def start(self) -> None:
        """Connect, and keep reconnecting until :meth:`stop`."""
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        if self._stopped:
            return
        d = self._connecting = self.endpoint.connect(_Factory(self))
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: Any) -> None:
        self._connecting = None
        self._connection = protocol
        self.heard = self.clock.seconds()
        # Any answer shows that Redis is there: a PING's may come late
        # behind a long run of others, which the node is still reading.
        protocol.on_heard = self._heard
        protocol.whenDisconnected().addCallback(self._lost)
        self._expect(protocol, "logging in")
        protocol.whenConnected().addCallback(self._logged_in)

    def _heard(self) -> None:
        self.heard = self.clock.seconds()

    def _logged_in(self, protocol: Any) -> None:
        d = defer.maybeDeferred(self.prepare, protocol)

        def ready(_: object) -> None:
            if protocol is not self._connection or self._stopped:
                return
            self._cancel_timeout()
            self._attempt = 0
            self.reason = ""
            self.protocol = protocol
            self.changed()
            self._ping_later(protocol)

        def refused(failure: Failure) -> None:
            self.reason = failure.getErrorMessage()
            protocol.transport.loseConnection()

        d.addCallbacks(ready, refused)

    # -- noticing a Redis that stopped answering ----------------------------------------

    def _expect(self, protocol: Any, what: str) -> None:
        """Drop ``protocol`` unless :meth:`_cancel_timeout` is called within PING_TIMEOUT."""
        self._cancel_timeout()
        self._timeout = self.clock.callLater(PING_TIMEOUT, self._no_answer, protocol, what)

    def _no_answer(self, protocol: Any, what: str) -> None:
        self._timeout = None
        if protocol is not self._connection:
            return
        silent = self.clock.seconds() - self.heard
        if silent < PING_TIMEOUT:
            # Redis is answering, just not this yet: wait as long again.
            self._timeout = self.clock.callLater(
                PING_TIMEOUT - silent, self._no_answer, protocol, what
            )
            return
        if protocol is self._connection:
            self.reason = f"no answer from Redis within {PING_TIMEOUT:g} s while {what}"
            protocol.transport.abortConnection()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def _ping_later(self, protocol: Any) -> None:
        self._retry = self.clock.callLater(PING_INTERVAL, self._ping, protocol)

    def _ping(self, protocol: Any) -> None:
        self._retry = None
        if protocol is not self.protocol or self._stopped:
            return
        self._expect(protocol, "waiting for PING's answer")

        def answered(_: object) -> None:
            if protocol is self.protocol and not self._stopped:
                self._cancel_timeout()
                self._ping_later(protocol)

        try:
            d = protocol.ping()
        except txredisapi.ConnectionError:
            return  # lost meanwhile: _lost reconnects
        d.addCallbacks(answered, lambda _: None)

    # -- losing it ------------------------------------------------------------------------

    def _lost(self, protocol: Any) -> None:
        if protocol is not self._connection:
            return
        self._connection = None
        self._cancel_timeout()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()  # the next PING
        self.reason = self.reason or "connection lost"
        self.protocol = None
        self.changed()
        self._schedule()

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(defer.CancelledError):
            return
        self.reason = failure.getErrorMessage()
        self.changed()
        self._schedule()

    def _schedule(self) -> None:
        if self._stopped:
            return
        self._attempt += 1
        delay = min(MAX_DELAY, INITIAL_DELAY * 2 ** min(self._attempt - 1, 10))
        self._retry = self.clock.callLater(delay * random.uniform(0.9, 1.1), self._connect)

    def stop(self) -> defer.Deferred:
        """Stop reconnecting and close the connection; fires once it is closed."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._cancel_timeout()
        if self._connecting is not None:
            self._connecting.cancel()
        connection, self._connection = self._connection, None
        self.protocol = None
        if connection is None or not connection.connected:
            return defer.succeed(None)
        closed = connection.whenDisconnected()
        connection.transport.loseConnection()
        return closed.addCallback(lambda _: None)
