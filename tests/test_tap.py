"""
The twistd options, the service tree and the embedding helpers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import pytest_twisted
import treq
import websocket
from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.python import usage

from stomptw.config import DEFAULT_TCP, DEFAULT_WS, BrokerConfig
from stomptw.service import BrokerService
from stomptw.tap import Options, makeService

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults():
    config = parse().config
    assert config.tcp_endpoints == [DEFAULT_TCP] == ["tcp:61613:interface=127.0.0.1"]
    assert config.ws_endpoints == [DEFAULT_WS] == ["tcp:15674:interface=127.0.0.1"]
    assert config.ws_path == "/ws"
    assert (config.heartbeat_send_ms, config.heartbeat_receive_ms) == (1000, 1000)
    assert config == BrokerConfig()
    assert config.ws_message_limit == 64 * 1024 * 1024


def test_repeatable_endpoints_and_limits():
    config = parse(
        "--tcp",
        "tcp:1234",
        "--tcp=tcp:1235",
        "--ws",
        "tcp:8080",
        "--ws-path",
        "stomp",
        "--heartbeat",
        "0,5000",
        "--heartbeat-grace",
        "2",
        "--max-frame-size",
        "1000",
        "--max-body-size",
        "500",
        "--max-headers",
        "10",
        "--max-header-line",
        "100",
        "--login-timeout",
        "3",
        "--prefetch",
        "7",
        "--ws-max-message-size",
        "30000",
        "--allowed-origins",
        "https://*.example.com, http://app.test:8080",
        "--allowed-origins=null",
    ).config
    assert config.ws_message_limit == 30000
    assert config.allowed_origins == ["https://*.example.com", "http://app.test:8080", "null"]
    assert config.tcp_endpoints == ["tcp:1234", "tcp:1235"]
    assert config.ws_endpoints == ["tcp:8080"]
    assert config.ws_path == "/stomp"
    assert (config.heartbeat_send_ms, config.heartbeat_receive_ms) == (0, 5000)
    assert config.heartbeat_grace == 2.0
    assert config.limits.max_frame_size == 1000
    assert config.limits.max_body_size == 500
    assert config.limits.max_headers == 10
    assert config.limits.max_header_line == 100
    assert config.login_timeout == 3.0
    assert config.default_prefetch == 7


def test_switch_listeners_off():
    config = parse("--no-tcp").config
    assert config.tcp_endpoints == [] and config.ws_endpoints == [DEFAULT_WS]
    config = parse("--no-ws").config
    assert config.ws_endpoints == [] and config.tcp_endpoints == [DEFAULT_TCP]


@pytest.mark.parametrize(
    "args",
    [
        ["--no-tcp", "--tcp", "tcp:1"],
        ["--no-ws", "--ws", "tcp:1"],
        ["--heartbeat", "10"],
        ["--max-frame-size", "0"],
        ["--heartbeat-grace", "0.5"],
        ["--login-timeout", "-1"],
    ],
)
def test_bad_options(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_make_service_is_an_iservice():
    service = makeService(parse())
    assert IService.providedBy(service)
    assert isinstance(service, BrokerService)
    kinds = sorted(listener.kind for listener in service.listeners())
    assert kinds == ["stomp", "ws"]


def _load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest_twisted.ensureDeferred
async def test_embedded_resource_example():
    """docs/examples/embed_resource.py mounts the endpoint beside other pages."""
    site = _load_example("embed_resource").make_site(reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        number = port.getHost().port

        def client():
            ws = websocket.create_connection(
                f"ws://127.0.0.1:{number}/live/stomp", subprotocols=["v12.stomp"], timeout=10
            )
            try:
                ws.send("CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
                connected = ws.recv()
                ws.send("SUBSCRIBE\nid:1\ndestination:/topic/e\n\n\x00")
                ws.send("SEND\ndestination:/topic/e\nreceipt:r\n\nembedded\x00")
                frames = [ws.recv(), ws.recv()]
                return ws.subprotocol, connected, frames
            finally:
                ws.close()

        subprotocol, connected, frames = await deferToThread(client)
        assert subprotocol == "v12.stomp"
        assert connected.startswith("CONNECTED\n")
        assert any(f.startswith("MESSAGE\n") and f.endswith("embedded\x00") for f in frames)
        # The example pages, mounted beside it, point at the mounted endpoint.
        config_js = await treq.get(f"http://127.0.0.1:{number}/live/examples/config.js")
        assert (await config_js.text()) == 'window.STOMPTW_WS_PATH = "/live/stomp";\n'
        page = await treq.get(f"http://127.0.0.1:{number}/live/examples/chat.html")
        assert page.code == 200 and "chat.js" in await page.text()
    finally:
        await port.stopListening()


def test_embedded_service_example():
    module = _load_example("embed_service")
    services = list(IService(module.application))
    assert len(services) == 1 and isinstance(services[0], BrokerService)
    assert services[0].config.heartbeat_send_ms == 5000


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


def test_twistd_freezes_the_heap_once_ready_unless_told_not_to():
    assert makeService(parse()).freeze_heap_when_ready is True
    assert makeService(parse("--no-gc-freeze")).freeze_heap_when_ready is False
    # An embedding application's service leaves its process's collector alone.
    from stomptw.service import makeService as make

    assert make(BrokerConfig(store="memory")).freeze_heap_when_ready is False


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


def test_make_service_uses_the_reactor_it_is_given():
    from twisted.internet.testing import MemoryReactorClock

    clock = MemoryReactorClock()
    service = makeService(parse("--store", "memory"), reactor=clock)
    assert service.broker.clock is clock


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
    from twisted.logger import globalLogPublisher

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
    logged = [e for e in events if "log_failure" in e or e.get("isError")]
    assert [e.get("endpoint") for e in logged] == ["now:", "later:"]
    for listener in (now, later):
        after: list = []
        listener.whenListening().addErrback(after.append)
        assert after and after[0].check(CannotListenError)
    assert before and before[0].check(CannotListenError)
