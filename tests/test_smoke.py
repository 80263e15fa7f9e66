import pytest_twisted
import stomp
from twisted.internet.threads import deferToThread


@pytest_twisted.ensureDeferred
async def test_smoke(broker):
    def client():
        c = stomp.Connection12([("127.0.0.1", broker.tcp_port)])
        c.connect(wait=True)
        c.disconnect()
        return True

    assert await deferToThread(client)
