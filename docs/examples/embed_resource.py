"""
Mount the stomptw WebSocket endpoint in an existing twisted.web site.

Run it with ``python docs/examples/embed_resource.py``: the page at
http://127.0.0.1:8080/ stays the application's own, STOMP over WebSocket is
served at ws://127.0.0.1:8080/live/stomp, and the broker's live examples at
http://127.0.0.1:8080/live/examples/.
"""

from twisted.web.resource import Resource
from twisted.web.server import Site

from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.websocket import examples_resource, websocket_resource


class Home(Resource):
    """The application's own home page."""

    isLeaf = True

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return b"<h1>My application</h1>"


def make_site(reactor) -> Site:
    """
    The application's own site, with the broker mounted at /live/stomp and
    its example pages at /live/examples/.
    """
    broker = Broker()
    # The example pages connect to ws_path on the host that served them.
    config = BrokerConfig(ws_path="/live/stomp")

    root = Resource()
    root.putChild(b"", Home())
    live = Resource()
    root.putChild(b"live", live)
    live.putChild(b"stomp", websocket_resource(broker, config, reactor))
    live.putChild(b"examples", examples_resource(config))
    return Site(root)


if __name__ == "__main__":
    from twisted.internet import reactor

    reactor.listenTCP(8080, make_site(reactor), interface="127.0.0.1")
    reactor.run()
