"""
The broker's service tree, for twistd and for applications that embed it.

::

    from stomptw.config import BrokerConfig
    from stomptw.service import makeService

    service = makeService(BrokerConfig(tcp_endpoints=["tcp:61613:interface=127.0.0.1"]))
    service.setServiceParent(application)
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from urllib.parse import quote

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stomptw import __version__
from stomptw.admin import admin_site, load_token
from stomptw.auth import make_checker
from stomptw.authenticator import build_authenticator
from stomptw.broker import Broker
from stomptw.config import BrokerConfig, is_loopback_address
from stomptw.diskalarm import DiskAlarm
from stomptw.interfaces import IMessageStore
from stomptw.listeners import ConnectionLimit, LimitedStompFactory, require_tls_version
from stomptw.memalarm import MemoryAlarm, resolve_watermark
from stomptw.model import format_peer
from stomptw.store import MemoryStore, SQLiteStore, StoreError
from stomptw.systemd import SystemdNotifications
from stomptw.wssite import websocket_site

__all__ = ["BrokerService", "makeService"]

log = Logger()


def freeze_heap() -> int:
    """
    Collect garbage, then move every object alive now out of the cyclic
    garbage collector's view (:func:`gc.freeze`); return how many.

    Called once the broker is ready, this takes the modules, the service
    tree and the restored messages (tens of thousands of objects) out of
    every later full collection, which otherwise walks them all each time
    (docs/performance.md has what that cost). Reference counting still frees
    frozen objects as usual; only cycles among them are never collected.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@implementer(IStreamServerEndpoint)
class _Reporting:
    """
    A listener's endpoint, whose ``listen`` result reaches the listener
    before :class:`StreamServerEndpointService`'s own error handling.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, listener: _Listener) -> None:
        self._endpoint = endpoint
        self._listener = listener

    def listen(self, factory) -> defer.Deferred:
        d = self._endpoint.listen(factory)
        # _failed sees a refusal by _listening too.
        return d.addCallback(self._listener._listening).addErrback(self._listener._failed)


class _Listener(StreamServerEndpointService):
    """An endpoint service that logs where it listens and reports its port."""

    def __init__(self, endpoint, factory, description: str, kind: str) -> None:
        super().__init__(_Reporting(endpoint, self), factory)
        self.description = description
        self.kind = kind
        self._waiters: list[defer.Deferred] = []
        self.port: IListeningPort | None = None
        self._failure: Failure | None = None
        #: The listener's connection count and limit (none on admin listeners).
        self.connection_limit: ConnectionLimit | None = None
        #: Refuse to serve beyond loopback (no --auth, no --allow-anonymous).
        self.guard_loopback = False

    def privilegedStartService(self) -> None:
        # Bound synchronously and failed (port in use, bad address): the base
        # class raises, so the service refuses to start rather than run
        # without the listener.
        self._raiseSynchronously = True
        super().privilegedStartService()

    @property
    def flag(self) -> str:
        """The option that names this listener (``--tcp``, ``--ws``, ``--admin``)."""
        return {"stomp": "--tcp", "ws": "--ws"}.get(self.kind, "--admin")

    def _failed(self, failure: Failure) -> Failure | None:
        if self._raiseSynchronously:
            # Raised to whoever starts the service: the reason, not a traceback.
            log.error(
                "cannot listen on {endpoint}: {reason}",
                endpoint=self.description,
                reason=failure.getErrorMessage(),
            )
        else:
            log.failure("cannot listen on {endpoint}", failure, endpoint=self.description)
        self._failure = failure
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)
        # Still in privilegedStartService: for the base class to raise. Later
        # (a listen that failed asynchronously) it would only log it again.
        return failure if self._raiseSynchronously else None

    def _listening(self, port: IListeningPort) -> IListeningPort:
        address = port.getHost()
        host = getattr(address, "host", None)
        if self.guard_loopback and host is not None and not is_loopback_address(host):
            # An inherited socket (systemd:) whose string did not say where.
            port.stopListening()
            raise ValueError(
                f"{self.description} is bound to {host}, beyond loopback, and the broker "
                "has no --auth: configure authentication (docs/security.md), bind the "
                "socket to 127.0.0.1, or pass --allow-anonymous on purpose"
            )
        self.port = port
        log.info(
            "{kind} listening on {endpoint} ({address})",
            kind=self.kind,
            endpoint=self.description,
            address=format_peer(address),
        )
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)
        return port

    def whenListening(self) -> defer.Deferred:
        """A Deferred that fires with the listening port once bound."""
        if self.port is not None:
            return defer.succeed(self.port)
        if self._failure is not None:
            return defer.fail(self._failure)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d


class BrokerService(MultiService):
    """
    One broker and its listeners.

    :ivar broker: the :class:`~stomptw.broker.Broker`.
    :ivar config: the configuration it was built from.
    """

    #: Whether to freeze the heap (:func:`freeze_heap`) once every listener
    #: is bound. ``twistd stomptw`` sets it (unless ``--no-gc-freeze``): the
    #: process is the broker's. An application that embeds the service
    #: decides for its own process, and may set it too.
    freeze_heap_when_ready = False

    #: Whether SIGHUP re-reads the permissions and users files
    #: (:meth:`reload`). ``twistd stomptw`` sets it; an embedding
    #: application may call :meth:`reload` from its own handler instead.
    reload_on_sighup = False

    #: Whether a start that fails (the store cannot be opened because another
    #: broker holds the data directory or it has a newer schema; a listener
    #: cannot bind) ends the process with a one-paragraph reason instead of
    #: raising. ``twistd stomptw`` sets it.
    exit_on_start_error = False

    def __init__(self, broker: Broker, config: BrokerConfig, reactor=None) -> None:
        super().__init__()
        self.broker = broker
        self.config = config
        self._announced = False
        if reactor is None:
            from twisted.internet import reactor
        #: Readiness, watchdog and status for systemd (a no-op elsewhere).
        self.systemd = SystemdNotifications(self.status, reactor)
        self._reactor = reactor

    def status(self) -> str:
        """A one-line summary: connections and message counts."""
        broker = self.broker
        queued = sum(getattr(d, "count", 0) for d in broker.destinations.values())
        queued += sum(d.queue.count for d in broker.durables.values())
        stats = broker.stats
        return (
            f"{len(broker.sessions)} connection(s), {queued} message(s) queued, "
            f"{stats['published']} published, {stats['delivered']} delivered"
        )

    def listeners(self, kind: str | None = None) -> list[_Listener]:
        """
        The listener services, optionally only those of ``kind``
        (``"stomp"``, ``"ws"`` or ``"admin"``).
        """
        return [s for s in self if isinstance(s, _Listener) and kind in (None, s.kind)]

    def unbound_listeners(self) -> list[str]:
        """What keeps the listeners from being ready: one line per unbound listener."""
        return [
            f"{listener.kind} listener {listener.description} not bound"
            for listener in self.listeners()
            if listener.port is None
        ]

    def whenListening(self) -> defer.Deferred:
        """
        Fire with ``{"stomp": [port, ...], "ws": [port, ...], "admin": [port, ...]}``
        once every listener is bound.
        """
        listeners = self.listeners()
        d = defer.gatherResults([s.whenListening() for s in listeners], consumeErrors=True)

        def group(ports: list[IListeningPort]) -> dict[str, list[IListeningPort]]:
            result: dict[str, list[IListeningPort]] = {"stomp": [], "ws": [], "admin": []}
            for listener, port in zip(listeners, ports, strict=False):
                result.setdefault(listener.kind, []).append(port)
            return result

        return d.addCallback(group)

    def reload(self) -> defer.Deferred:
        """
        Re-read the permissions file and the users files (what SIGHUP does);
        sessions keep going, and a subscription the new permissions no longer
        allow ends with an ERROR. Fires when done.
        """
        log.info("reloading the permissions and users files")
        return self.broker.auth.reload()

    def _install_sighup(self) -> None:
        if not self.reload_on_sighup or not hasattr(signal, "SIGHUP"):
            return
        reactor = self._reactor

        def on_sighup(signum: int, frame: object) -> None:
            reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, on_sighup)

    def privilegedStartService(self) -> None:
        self._announce()
        # Stored messages are back in their queues before anyone connects.
        try:
            self.broker.open()
        except StoreError as e:
            if not self.exit_on_start_error:
                raise
            raise SystemExit(f"stomptw cannot start: {e}") from None
        try:
            super().privilegedStartService()
        except Exception as e:
            # Nothing was served: close the store now, so that the next start
            # finds it closed cleanly, rather than leave it to the process's end.
            self.broker.close()
            if not self.exit_on_start_error:
                raise
            failed = [each for each in self.listeners() if each._failure is not None]
            where = f"{failed[0].flag} {failed[0].description}: " if failed else ""
            raise SystemExit(f"stomptw cannot start: {where}{e}") from None

    def startService(self) -> None:
        # Embedding code may call startService without privilegedStartService.
        self._announce()
        self.broker.open()
        if self.broker.disk_alarm is not None:
            self.broker.disk_alarm.start()  # the store has made its directory
        if self.broker.memory_alarm is not None:
            self.broker.memory_alarm.start()
        self._install_sighup()
        super().startService()

        def ready(result: object) -> None:
            if self.freeze_heap_when_ready:
                freeze_heap()
            log.info("stomptw ready: {status}", status=self.status())
            self.systemd.ready()

        # A listener that fails to bind has already been reported.
        self.whenListening().addCallbacks(ready, lambda _: None)

    def _announce(self) -> None:
        if self._announced:
            return
        self._announced = True
        from autobahn.websocket import USES_NVX

        log.info("stomptw {version} starting", version=__version__)
        if self.listeners("ws"):
            if USES_NVX:
                log.info("Autobahn native acceleration (NVX) is in use")
            else:
                log.warn(
                    "Autobahn native acceleration (NVX) is NOT in use: WebSocket "
                    "masking and UTF-8 validation run in pure Python and are much slower. "
                    "Install autobahn with its native extension (and do not set "
                    "AUTOBAHN_USE_NVX=0)."
                )

    def stopService(self) -> defer.Deferred:
        """
        Stop listening, then end every session in order (an ERROR saying the
        broker is stopping, then the usual close, at most ``close_linger``
        seconds each, in parallel); fires when all connections are gone.
        """
        log.info(
            "stomptw stopping: closing listeners and {count} client connection(s)",
            count=len(self.broker.sessions),
        )
        self.systemd.stopping()
        if self.broker.disk_alarm is not None:
            self.broker.disk_alarm.stop()
        if self.broker.memory_alarm is not None:
            self.broker.memory_alarm.stop()
        d = defer.maybeDeferred(super().stopService)

        def close_sessions(result: object) -> defer.Deferred:
            # First stop all deliveries, so that what one closing session
            # returns is not handed to another that is about to close.
            self.broker.stop_delivering()
            closing = [session.shutdown() for session in list(self.broker.sessions)]
            return defer.gatherResults(closing, consumeErrors=True).addBoth(lambda _: result)

        def close_store(result: object) -> defer.Deferred:
            # Unacknowledged messages are back in their queues: store that.
            return self.broker.close().addBoth(lambda _: result)

        return d.addBoth(close_sessions).addBoth(close_store)


def make_store(config: BrokerConfig, reactor) -> IMessageStore:
    """The message store ``config`` asks for (not yet opened)."""
    if config.store == "memory":
        return MemoryStore()
    return SQLiteStore(config.data_dir, reactor, config.store_sync)


def make_vhost_store(config: BrokerConfig, reactor, vhost: str) -> IMessageStore:
    """The store of virtual host ``vhost``: its own directory under ``data_dir``."""
    if config.store == "memory":
        return MemoryStore()
    directory = os.path.join(config.data_dir, "vhost-" + quote(vhost, safe=""))
    return SQLiteStore(directory, reactor, config.store_sync)


def makeService(
    config: BrokerConfig | None = None,
    reactor=None,
    admin_token: str | None = None,
    checkers: list | None = None,
) -> BrokerService:
    """
    Build the broker's service: one :class:`~stomptw.broker.Broker` with a
    STOMP-over-TCP listener per ``config.tcp_endpoints`` entry and an
    HTTP/WebSocket listener per ``config.ws_endpoints`` entry, plus the admin
    API (:mod:`stomptw.admin`) on each ``config.admin_endpoints`` entry.
    Each STOMP and WebSocket listener counts its own connections against
    ``config.max_connections`` (:mod:`stomptw.listeners`); its
    :class:`~stomptw.listeners.ConnectionLimit` is the listener service's
    ``connection_limit``.

    Raises :class:`ValueError` if ``config.admin_token_file`` cannot be read
    or is empty.

    :param config: the configuration; defaults to :class:`BrokerConfig`'s.
    :param reactor: the reactor to listen and schedule with; the global one
        by default.
    :param admin_token: the admin API's bearer token if it has been read from
        ``config.admin_token_file`` already (``twistd stomptw`` does, while
        checking its options); None: it is read here.
    :param checkers: the :mod:`twisted.cred` checkers sessions log in with,
        if made already (``twistd stomptw`` makes them while checking its
        options); None: made here from ``config.auth``. No checker at all:
        every session is anonymous.
    """
    if reactor is None:
        from twisted.internet import reactor
    config = config or BrokerConfig()
    token = admin_token
    if token is None and config.admin_token_file:
        token = load_token(config.admin_token_file)
    broker = Broker(config, make_store(config, reactor), reactor)
    if config.disk_free_limit and broker.store.durable:
        broker.disk_alarm = DiskAlarm(config.data_dir, config.disk_free_limit, reactor)
    watermark = resolve_watermark(config.memory_high_watermark)
    if watermark:
        broker.memory_alarm = MemoryAlarm(watermark, reactor)
    if checkers is None:
        checkers = [make_checker(description) for description in config.auth]
    broker.auth = build_authenticator(config, checkers, reactor, [socket.gethostname()])

    def permissions_changed() -> None:
        for session in list(broker.sessions):
            changed = getattr(session, "permissions_changed", None)
            if changed is not None:
                changed()

    broker.auth.on_change = permissions_changed
    for vhost in config.vhosts:
        broker.add_vhost(vhost, make_vhost_store(config, reactor, vhost))
    service = BrokerService(broker, config, reactor)
    if config.cluster:
        # Imported in cluster mode only: a single node never loads a Redis
        # client. Before the listeners: it checks Redis before they bind.
        from stomptw.cluster.node import join_cluster

        join_cluster(broker, config, reactor).setServiceParent(service)
    guard = not config.auth and not config.allow_anonymous

    def count_refused() -> None:
        broker.stats["connections_refused"] = broker.stats.get("connections_refused", 0) + 1

    def client_listener(description: str, kind: str, serve) -> None:
        """A --tcp or --ws listener with its own connection limit (config.max_connections)."""
        endpoint = require_tls_version(
            serverFromString(reactor, description), config.tls_min_version
        )
        limit = ConnectionLimit(
            config.max_connections,
            description,
            reactor,
            count_refused,
            per_ip=config.max_connections_per_ip,
        )
        listener = _Listener(endpoint, serve(description, limit), description, kind)
        listener.connection_limit = limit
        listener.guard_loopback = guard
        listener.setServiceParent(service)

    def stomp_factory(description: str, limit: ConnectionLimit) -> LimitedStompFactory:
        tls = description.split(":", 1)[0] in ("ssl", "tls", "mtls")
        return LimitedStompFactory(broker, config, reactor, "tls" if tls else "tcp", limit)

    for description in config.tcp_endpoints:
        client_listener(description, "stomp", stomp_factory)
    for description in config.ws_endpoints:
        client_listener(
            description, "ws", lambda _, limit: websocket_site(broker, config, reactor, limit)
        )
    if config.admin_endpoints:
        admin = admin_site(broker, service.unbound_listeners, token, reactor)
        for description in config.admin_endpoints:
            endpoint = serverFromString(reactor, description)
            _Listener(endpoint, admin, description, "admin").setServiceParent(service)
    return service
