"""
Attach the whole broker (its TCP and WebSocket listeners) to an existing
Twisted application's service tree. Run it with
``twistd -n -y docs/examples/embed_service.py``.
"""

from twisted.application.service import Application

from stomptw.config import BrokerConfig
from stomptw.service import makeService

application = Application("my-app")

config = BrokerConfig(
    tcp_endpoints=["tcp:61613:interface=127.0.0.1"],
    ws_endpoints=["tcp:15674:interface=127.0.0.1"],
    heartbeat_send_ms=5000,
)
makeService(config).setServiceParent(application)
