"""
The service tree (:mod:`stomptw.service`): ``makeService`` and its
listeners by kind, ``whenListening`` and ``unbound_listeners``, a listen
that fails (at once or later), the startup log and the frozen heap, and
``stopService``: listeners first, then every session told and closed (over
WebSocket with a Close frame, under twistd), their unacknowledged messages
back in their queues, then the store. And the embedding example.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import pytest_twisted
import websocket
from clients import TIMEOUT, load_example
from inprocess import Client, messages
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.service import BrokerService, makeService

LOOPBACK = "tcp:0:interface=127.0.0.1"


# -- listeners -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_listeners_by_kind_unbound_until_listening_then_grouped_by_kind():
    config = BrokerConfig(
        tcp_endpoints=[LOOPBACK, LOOPBACK],
        ws_endpoints=[LOOPBACK],
        admin_endpoints=[LOOPBACK],
        store="memory",
    )
    service = makeService(config, reactor)
    assert [listener.kind for listener in service.listeners()] == ["stomp", "stomp", "ws", "admin"]
    assert [listener.kind for listener in service.listeners("ws")] == ["ws"]
    assert service.unbound_listeners() == [
        f"stomp listener {LOOPBACK} not bound",
        f"stomp listener {LOOPBACK} not bound",
        f"ws listener {LOOPBACK} not bound",
        f"admin listener {LOOPBACK} not bound",
    ]
    service.startService()
    try:
        ports = await service.whenListening()
        assert {kind: len(found) for kind, found in ports.items()} == {
            "stomp": 2,
            "ws": 1,
            "admin": 1,
        }
        assert ports["ws"] == [service.listeners("ws")[0].port]
        assert service.unbound_listeners() == []
        # Asked again once bound: at once, the same ports.
        again = await service.whenListening()
        assert again == ports
    finally:
        await service.stopService()


# -- listeners -----------------------------------------------------------------------------


def test_when_listening_after_a_failed_listen_fails_instead_of_hanging():
    """
    When the endpoint's listen fails asynchronously, a whenListening() asked
    afterwards (BrokerService.whenListening, the embedding API the tests
    use) fails at once with that failure instead of never firing.
    """
    from twisted.internet import defer
    from twisted.internet.error import CannotListenError

    from stomptw.service import _Listener

    pending: defer.Deferred = defer.Deferred()

    class SlowEndpoint:
        def listen(self, factory):
            return pending

    listener = _Listener(SlowEndpoint(), None, "slow:", "stomp")
    listener.privilegedStartService()
    pending.errback(CannotListenError("127.0.0.1", 1, OSError("in use")))
    late = listener.whenListening()
    failures = []
    late.addErrback(failures.append)
    assert late.called and failures, "whenListening() never fires after a failed listen"


def test_listen_failure_refuses_to_start():
    """A port already taken stops twistd from starting rather than running deaf."""
    import socket

    from stomptw.service import makeService as make

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = make(
            BrokerConfig(
                tcp_endpoints=[f"tcp:{port}:interface=127.0.0.1"], ws_endpoints=[], store="memory"
            ),
            reactor,
        )
        with pytest.raises(Exception, match="[Aa]ddress already in use|CannotListen"):
            service.privilegedStartService()


class _Endpoint:
    """An endpoint whose listen() returns the given Deferred."""

    def __init__(self, d):
        self.d = d

    def listen(self, factory):
        return self.d


def test_listen_failure_is_logged_once_and_reported():
    """
    At once (the service refuses to start) or later: one log entry, and
    whenListening fails with it, asked before or after.
    """
    from twisted.internet import defer
    from twisted.internet.error import CannotListenError
    from twisted.logger import LogLevel, globalLogPublisher

    from stomptw.service import _Listener

    def failure() -> CannotListenError:
        return CannotListenError("127.0.0.1", 1, OSError("in use"))

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        now = _Listener(_Endpoint(defer.fail(failure())), None, "now:", "stomp")
        with pytest.raises(CannotListenError):
            now.privilegedStartService()
        pending: defer.Deferred = defer.Deferred()
        later = _Listener(_Endpoint(pending), None, "later:", "stomp")
        later.privilegedStartService()
        before: list = []
        later.whenListening().addErrback(before.append)
        pending.errback(failure())
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = [e for e in events if e.get("log_level") == LogLevel.error or "log_failure" in e]
    assert [e.get("endpoint") for e in logged] == ["now:", "later:"]
    for listener in (now, later):
        after: list = []
        listener.whenListening().addErrback(after.append)
        assert after and after[0].check(CannotListenError)
    assert before and before[0].check(CannotListenError)


@pytest_twisted.ensureDeferred
async def test_startup_logs_listeners_and_acceleration():
    from twisted.logger import globalLogPublisher

    from stomptw.service import makeService as make

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    service = make(
        BrokerConfig(
            tcp_endpoints=["tcp:0:interface=127.0.0.1"],
            ws_endpoints=["tcp:0:interface=127.0.0.1"],
            store="memory",
        ),
        reactor,
    )
    try:
        service.privilegedStartService()
        service.startService()
        await service.whenListening()
    finally:
        await service.stopService()
        globalLogPublisher.removeObserver(events.append)
    formats = [e.get("log_format", "") for e in events]
    assert sum("starting" in f and "stomptw" in f for f in formats) == 1
    assert any("NVX" in f for f in formats)
    assert sum("listening on" in f for f in formats) == 2


@pytest_twisted.ensureDeferred
async def test_frozen_heap_once_ready():
    """The objects alive when the listeners are bound leave the collector's view."""
    import gc

    from stomptw.service import makeService as make

    service = make(BrokerConfig(tcp_endpoints=["tcp:0:interface=127.0.0.1"], ws_endpoints=[],
                                store="memory"), reactor)  # fmt: skip
    service.freeze_heap_when_ready = True
    gc.unfreeze()
    try:
        service.privilegedStartService()
        service.startService()
        await service.whenListening()
        frozen = gc.get_freeze_count()
        assert frozen > 10000  # the modules and the service tree, at least
        assert all(o is not service.broker for o in gc.get_objects())
    finally:
        gc.unfreeze()
        await service.stopService()


# -- stopping ------------------------------------------------------------------------------


def test_shutdown_does_not_bounce_unacked_messages_into_the_dlq():
    config = BrokerConfig(max_redeliveries=1)
    clock = Clock()
    broker = Broker(config, clock=clock)
    service = BrokerService(broker, config)
    consumers = []
    for _ in range(3):
        consumer = Client(broker, clock, config)
        consumer.connect()
        consumer.send("SUBSCRIBE", id="s", destination="/queue/work", ack="client-individual")
        consumers.append(consumer)
    producer = Client(broker, clock, config)
    producer.connect()
    for i in range(3):
        producer.send("SEND", f"job {i}".encode(), destination="/queue/work")
    # Round robin: one unacknowledged message on each consumer.
    for consumer in consumers:
        assert len(messages(consumer.frames())) == 1
    service.stopService()
    # Nothing was NACKed and no consumer went away on its own: a broker stop
    # must put the three messages back, not move them to /queue/DLQ.work.
    assert broker.stats["dead_lettered"] == 0
    handed_out = sum(len(messages(c.frames())) for c in consumers)
    assert handed_out == 0, "messages were delivered to sessions being shut down"
    assert broker.destinations["/queue/work"].count == 3
    assert len(broker.destinations["/queue/work"].pending) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_twistd_shutdown_closes_websocket_sessions_with_a_close_frame():
    """
    policy.md: "Broker shutdown stops the listeners, then closes client
    connections", over WebSocket "with the WebSocket closing handshake".
    Under twistd the reactor's "during shutdown" phase (disconnectAll) would
    drop the TCP connections before a queued Close frame is written (the
    client would see 1006, abnormal closure), so stopService waits, bounded
    by close_linger, until the sessions have closed: the client gets an
    ERROR saying why, then a Close frame with 1000.
    """
    ws_port = _free_port()
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    proc = subprocess.Popen(
        [
            twistd,
            "-n",
            "--pidfile=",
            "stomptw",
            "--no-tcp",
            "--ws",
            f"tcp:{ws_port}:interface=127.0.0.1",
            "--store",
            "memory",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                ws = websocket.create_connection(
                    f"ws://127.0.0.1:{ws_port}/ws", subprotocols=["v12.stomp"], timeout=TIMEOUT
                )
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        ws.send("CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00")
        assert ws.recv().startswith("CONNECTED")
        proc.terminate()
        try:
            opcode, data = ws.recv_data(control_frame=True)
            # The session is told why, in STOMP, then closed in WebSocket.
            assert opcode == websocket.ABNF.OPCODE_TEXT
            assert data.startswith(b"ERROR\n") and b"message:broker is shutting down" in data
            opcode, data = ws.recv_data(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            pytest.fail("broker shutdown dropped the WebSocket connection without a Close frame")
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(data[:2], "big") == 1000
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


@pytest_twisted.ensureDeferred
async def test_stop_service_stops_listening_then_closes_sessions_then_the_store():
    service = makeService(BrokerConfig(tcp_endpoints=[LOOPBACK], ws_endpoints=[], store="memory"))
    service.startService()
    (port,) = (await service.whenListening())["stomp"]
    number = port.getHost().port
    broker = service.broker

    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", number), timeout=TIMEOUT)
        sock.sendall(b"CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00")
        assert sock.recv(65536).startswith(b"CONNECTED\n")
        return sock

    sock = await deferToThread(connect)
    assert port.connected
    seen = {}
    stop_delivering, close = broker.stop_delivering, broker.close

    def stopping() -> None:
        seen["listening when sessions close"] = port.connected
        seen["sessions when sessions close"] = len(broker.sessions)
        stop_delivering()

    def closing():
        seen["sessions when the store closes"] = len(broker.sessions)
        return close()

    broker.stop_delivering, broker.close = stopping, closing
    await service.stopService()
    assert seen == {
        "listening when sessions close": False,
        "sessions when sessions close": 1,
        "sessions when the store closes": 0,
    }

    def rest() -> bytes:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        return data

    data = await deferToThread(rest)
    assert data.startswith(b"ERROR\n") and b"message:broker is shutting down" in data


# -- embedding -----------------------------------------------------------------------------


def test_embedded_service_example():
    module = load_example("embed_service")
    services = list(IService(module.application))
    assert len(services) == 1 and isinstance(services[0], BrokerService)
    assert services[0].config.heartbeat_send_ms == 5000
