"""
What the WebSocket listener serves at ``/``: the live example pages (a chat
room, a work queue, a frame inspector, with the ``config.js`` that tells
them about this broker), or a one-line text page with ``--no-examples``.
Plain twisted.web resources; :mod:`stomptw.websocket` mounts the STOMP
endpoint beside them.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.static import File

from stomptw import __version__

if TYPE_CHECKING:
    from stomptw.config import BrokerConfig

__all__ = ["EXAMPLES_DIR", "IndexPage", "examples_resource"]


class IndexPage(Resource):
    """A plain page at ``/`` that says where the STOMP endpoint is."""

    isLeaf = False

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def getChild(self, path: bytes, request):
        if path == b"":
            return self
        return Resource.getChild(self, path, request)

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            f"stomptw {__version__}: STOMP over WebSocket is served at {self._path}\n"
            "(subprotocols v12.stomp, v11.stomp, v10.stomp).\n"
        ).encode()


#: The directory of the example pages inside the package.
EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples")

#: Sent with every example page and file: nothing is fetched from elsewhere,
#: scripts come only from the broker, and WebSocket connections may go to
#: any broker (the live feed example takes a URL).
_EXAMPLE_HEADERS = {
    b"content-security-policy": (
        b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-cache",
}


class _ExampleConfig(Resource):
    """
    ``config.js``: tells the example pages where the STOMP endpoint is,
    whether the broker asks for a login (then they show a login form), and
    the STOMP-over-TCP listeners (the index page shows them).
    """

    isLeaf = True

    def __init__(self, ws_path: str, auth: bool = False, tcp: list[str] | None = None) -> None:
        super().__init__()
        self._body = (
            f"window.STOMPTW_WS_PATH = {json.dumps(ws_path)};\n"
            f"window.STOMPTW_AUTH = {json.dumps(auth)};\n"
            f"window.STOMPTW_TCP = {json.dumps(list(tcp or []))};\n"
        ).encode()

    def render_GET(self, request) -> bytes:
        for name, value in _EXAMPLE_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", b"text/javascript; charset=utf-8")
        return self._body


class _ExampleFiles(File):
    """The example pages, with no directory listings and safe headers."""

    contentTypes = {
        **File.contentTypes,
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".html": "text/html; charset=utf-8",
        ".png": "image/png",
    }

    def directoryListing(self):
        return notFound(brief="No such page.")

    def render_GET(self, request):
        for name, value in _EXAMPLE_HEADERS.items():
            request.setHeader(name, value)
        return super().render_GET(request)

    def createSimilarFile(self, path):
        similar = super().createSimilarFile(path)
        similar.contentTypes = self.contentTypes
        return similar


def examples_resource(config: BrokerConfig) -> Resource:
    """
    Return the live examples (a chat room, a work queue and a frame
    inspector, plain HTML and JavaScript) as a ``twisted.web`` resource.

    The pages connect to ``config.ws_path`` on the host that served them;
    mount the STOMP endpoint there
    (:func:`~stomptw.websocket.websocket_resource`), e.g. as a child of this
    resource, which is what :func:`~stomptw.wssite.websocket_site` does.
    """
    root = _ExampleFiles(EXAMPLES_DIR, defaultType="application/octet-stream")
    root.indexNames = ["index.html"]
    root.putChild(
        b"config.js", _ExampleConfig(config.ws_path, bool(config.auth), config.tcp_endpoints)
    )
    return root
