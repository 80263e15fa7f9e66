"""
Shared fixtures: a real broker on ephemeral loopback ports, on the real
reactor (pytest-twisted).

Blocking clients (stomp.py, websocket-client, raw sockets) must run in a
thread (``await deferToThread(fn)``) so the reactor keeps serving them.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.protocols.policies import WrappingFactory
from twisted.web.server import Site
from twisted.web.static import File

from stomptw.config import BrokerConfig
from stomptw.service import BrokerService, makeService

LOOPBACK = "tcp:0:interface=127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunningBroker:
    """A broker service started on ephemeral loopback ports."""

    service: BrokerService
    tcp_port: int
    ws_port: int
    ws_path: str
    #: The admin API's port when ``admin_endpoints`` were given, else 0.
    admin_port: int = 0

    @property
    def broker(self):
        return self.service.broker

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}{self.ws_path}"


@pytest.fixture
def cluster(tmp_path):
    """A :class:`redisnodes.Cluster` for the test; everything it started is killed after."""
    from redisnodes import Cluster

    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def make_broker():
    """
    An async factory: ``running = await make_broker(**config_overrides)``
    starts a broker (TCP and WebSocket on ephemeral loopback ports); every
    broker started is stopped after the test.
    """
    started: list[BrokerService] = []

    async def start(**overrides) -> RunningBroker:
        overrides.setdefault("tcp_endpoints", [LOOPBACK])
        overrides.setdefault("ws_endpoints", [LOOPBACK])
        # Durable storage is tested on purpose, with its own data directory.
        overrides.setdefault("store", "memory")
        config = dataclasses.replace(BrokerConfig(), **overrides)
        service = makeService(config, reactor)
        service.startService()
        started.append(service)
        ports = await service.whenListening()
        tcp = ports["stomp"][0].getHost().port if ports["stomp"] else 0
        ws = ports["ws"][0].getHost().port if ports["ws"] else 0
        admin = ports["admin"][0].getHost().port if ports.get("admin") else 0
        return RunningBroker(service, tcp, ws, config.ws_path, admin)

    yield start
    for service in started:
        pytest_twisted.blockon(service.stopService())


@pytest_twisted.async_fixture
async def broker(make_broker):
    """A broker with the default configuration on ephemeral ports."""
    return await make_broker()


@pytest.fixture
def env():
    """
    A broker on a Clock whose clients are the real StompProtocol on a
    StringTransport (:class:`inprocess.Env`).
    """
    from inprocess import Env

    return Env()


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """
    A fresh virtualenv with the project installed by a plain ``pip install``:
    only what setup.cfg declares, unlike the test virtualenv (where the test
    extras, treq for one, bring in more, e.g. pyOpenSSL).
    """
    tmp = tmp_path_factory.mktemp("pkg")
    source = tmp / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis"
        ),
    )
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    result = subprocess.run(
        [str(pip), "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return env_dir


@pytest.fixture(scope="session")
def chromium():
    """
    One headless Chromium for the session (tests run their browser part in a
    thread). Skips, saying how to install it, when Chromium is missing.
    """
    import browser

    why = browser.missing()
    if why:
        pytest.skip(f"browser tests skipped: {why}")
    driver = browser.start_chromium()
    yield driver
    browser.stop_chromium(driver)


@pytest.fixture
def chrome(chromium):
    """The session's Chromium, back to one blank tab after the test."""
    chromium.get_log("browser")  # what earlier tests left in the console
    yield chromium
    import browser

    browser.reset(chromium)


@pytest.fixture(scope="session")
def stompjs(tmp_path_factory) -> Path:
    """
    ``@stomp/stompjs``'s browser bundle, installed from npm into a scratch
    directory (never committed); skips, saying how to get npm, without it.
    """
    import browser

    try:
        modules = browser.npm_install("@stomp/stompjs@7", tmp_path_factory.mktemp("npm"))
    except RuntimeError as e:
        pytest.skip(f"@stomp/stompjs tests skipped: {e}")
    bundle = modules / "@stomp" / "stompjs" / "bundles" / "stomp.umd.js"
    assert bundle.is_file(), bundle
    return bundle


class _NoStoreFile(File):
    """A directory of test pages, each sent with ``Cache-Control: no-store``."""

    def render_GET(self, request):
        request.setHeader(b"cache-control", b"no-store")
        return super().render_GET(request)


class _PageServer(WrappingFactory):
    """
    One ``page_server`` site on a loopback port, keeping track of the
    connections it accepted so that :meth:`stop` can close them.

    A later test's server may get the same ephemeral port, and so serve a
    different page at the same URL. Closing this server's connections (not
    only its listening port, which is all ``stopListening`` closes) leaves
    the browser no keep-alive connection on which this server would answer
    for that later page, and ``no-store`` leaves it no stored copy of this
    page to show instead (``twisted.web.static.File`` answers a revalidation
    with 304 when the new file's mtime is in the same second).
    """

    def __init__(self, root: Path) -> None:
        site = Site(_NoStoreFile(str(root)))
        site.noisy = False
        super().__init__(site)
        self._all_closed: list[defer.Deferred] = []
        self.port = reactor.listenTCP(0, self, interface="127.0.0.1")

    def unregisterProtocol(self, p) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._all_closed = self._all_closed, []
            for d in waiters:
                d.callback(None)

    async def stop(self) -> None:
        """Stop listening, then close every connection and wait until all are gone."""
        await self.port.stopListening()
        if self.protocols:
            closed: defer.Deferred = defer.Deferred()
            self._all_closed.append(closed)
            for protocol in list(self.protocols):
                protocol.transport.loseConnection()
            await closed


@pytest.fixture
def page_server(tmp_path):
    """
    ``serve(files) -> port``: serve ``{name: bytes or Path}`` over HTTP on
    loopback (a page from another origin than the broker's listener). Each
    server's pages are never cached and its connections end with the test
    (see :class:`_PageServer`).
    """
    servers: list[_PageServer] = []

    def serve(files: dict) -> int:
        root = tmp_path / f"site{len(servers)}"
        root.mkdir()
        for name, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            (root / name).write_bytes(data)
        server = _PageServer(root)
        servers.append(server)
        return server.port.getHost().port

    yield serve
    for server in servers:
        pytest_twisted.blockon(defer.ensureDeferred(server.stop()))


@pytest.fixture
def ws_in_process():
    """
    ``(protocol, transport)``: a StompWebSocketProtocol over a StringTransport
    with a Clock, after the opening handshake (no socket, no reactor).
    """
    from twisted.internet.task import Clock
    from wsinprocess import open_in_process

    from stomptw.broker import Broker
    from stomptw.config import BrokerConfig
    from stomptw.websocket import StompWebSocketFactory

    clock = Clock()
    config = BrokerConfig()
    return open_in_process(StompWebSocketFactory(Broker(config, clock=clock), config, clock))
