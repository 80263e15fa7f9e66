"""
Shared fixtures: a real broker on ephemeral loopback ports, on the real
reactor (pytest-twisted).

Blocking clients (stomp.py, websocket-client, raw sockets) must run in a
thread (``await deferToThread(fn)``) so the reactor keeps serving them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import pytest_twisted
from twisted.internet import reactor

from stomptw.config import BrokerConfig
from stomptw.service import BrokerService, makeService

LOOPBACK = "tcp:0:interface=127.0.0.1"


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
