"""
A twisted.web application with its own chat, using the application API.

Run it with ``python docs/examples/chat_app.py``, then open
http://127.0.0.1:8080/ in two tabs:

- the page is the application's own; its script is the broker's ``stomp.js``;
- a chat message goes to ``/app/chat/ROOM``, where the application's handler
  checks it and rebroadcasts it to ``/topic/chat.ROOM`` with the sender's name;
- a background task publishes the time to ``/topic/ticker`` every second.
"""

from __future__ import annotations

import json
import re
import time

from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import Site

from stomptw.application import ApplicationError, Messaging, Request
from stomptw.broker import Broker
from stomptw.config import BrokerConfig
from stomptw.websocket import examples_resource, websocket_resource

ROOM = re.compile(r"[a-z0-9-]{1,32}")
MAX_LENGTH = 500

PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>Chat</title>
<p>Time: <span id="time">...</span></p>
<ul id="messages"></ul>
<form id="form"><input id="text" autocomplete="off" maxlength="500"> <button>Send</button></form>
<p id="error"></p>
<script src="/live/config.js"></script>
<script type="module">
import { StompClient } from "/live/stomp.js";
const client = new StompClient(`ws://${location.host}/live/stomp`);
await client.connect();
client.subscribe("/topic/ticker", (m) => {
  document.getElementById("time").textContent = JSON.parse(m.body).time;
});
client.subscribe("/topic/chat.lobby", (m) => {
  const item = document.createElement("li");
  item.textContent = `${m.headers.sender}: ${m.body}`;
  document.getElementById("messages").append(item);
});
client.onerror = (frame) => {
  document.getElementById("error").textContent = frame.headers.message;
};
document.getElementById("form").onsubmit = async (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  await client.send("/app/chat/lobby", input.value, { receipt: client.nextId("r") });
  input.value = "";
};
</script>
"""


class Page(Resource):
    """The application's own page."""

    isLeaf = True

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE


def chat(request: Request):
    """``/app/chat/{room}``: check a chat message, then rebroadcast it to the room."""
    room = request.params["room"]
    if not ROOM.fullmatch(room):
        raise ApplicationError("no such room", "Rooms are named with a-z, 0-9 and '-'.")
    text = request.text.strip()
    if not text:
        raise ApplicationError("empty message", "Type something before sending.")
    if len(text) > MAX_LENGTH:
        raise ApplicationError("message too long", f"At most {MAX_LENGTH} characters.")
    sender = request.user or "anonymous"
    # The RECEIPT of the client's SEND waits for this Deferred.
    return request.publish(f"/topic/chat.{room}", text, {"sender": sender})


def make_app(reactor) -> tuple[Site, LoopingCall]:
    """
    The site (page at /, broker at /live/stomp, stomp.js at /live/stomp.js)
    and the ticker task, to start with the interval wanted.
    """
    config = BrokerConfig(ws_path="/live/stomp", app_prefix="/app/")
    broker = Broker(config, clock=reactor)
    messaging = Messaging.of(broker)
    messaging.route("/app/chat/{room}", chat)

    def tick():
        now = {"time": time.strftime("%H:%M:%S"), "epoch": time.time()}
        return messaging.publish("/topic/ticker", json.dumps(now))

    ticker = LoopingCall(tick)
    ticker.clock = reactor

    root = Resource()
    root.putChild(b"", Page())
    live = examples_resource(config)  # stomp.js and config.js
    live.putChild(b"stomp", websocket_resource(broker, config, reactor))
    root.putChild(b"live", live)
    return Site(root), ticker


if __name__ == "__main__":
    from twisted.internet import reactor

    site, ticker = make_app(reactor)
    ticker.start(1.0)
    reactor.listenTCP(8080, site, interface="127.0.0.1")
    reactor.run()
