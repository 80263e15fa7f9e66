"""
permessage-deflate with a real browser: headless Chromium offers it, the
broker negotiates it (or declines with ``--ws-compression off``), and text
and binary messages round-trip intact through compressed frames both ways,
with a stomp.py client over TCP on the other side.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import stomp
from browser import PAGE_TIMEOUT, load_page, run_js
from clients import wait_until
from test_browser_stompjs import PAGE_READY, _page
from twisted.internet.threads import deferToThread

#: A JSON body of about 1 KiB, as a page would publish it.
BODY = json.dumps(
    [{"id": i, "symbol": f"SYM{i % 7}", "price": 100 + i / 4, "side": "buy"} for i in range(18)]
)

ROUND_TRIP = """
const c = clients.a.client;
const [text, binary] = [args[0], new Uint8Array(args[1])];
const got = {text: [], binary: []};
await new Promise((resolve) => {
  c.subscribe('/topic/echo', (m) => {
    if (m.headers['content-type'] === 'application/octet-stream') {
      got.binary.push(Array.from(m.binaryBody));
    } else got.text.push(m.body);
    if (got.text.length + got.binary.length === 2) resolve();
  }, {receipt: 'sub-echo'});
  c.watchForReceipt('sub-echo', () => {
    c.publish({destination: '/topic/echo', body: text});
    c.publish({destination: '/topic/echo', binaryBody: binary,
               headers: {'content-type': 'application/octet-stream'}});
    c.publish({destination: '/queue/to-tcp', body: text});
  });
});
return {extensions: c.webSocket.extensions, got};
"""


@pytest.mark.parametrize("setting", ["on", "off"])
@pytest_twisted.ensureDeferred
async def test_chromium_round_trips_through_permessage_deflate(
    setting, make_broker, chrome, stompjs, page_server
):
    running = await make_broker(ws_compression=setting)
    url = await _page(page_server, stompjs)
    binary = list(range(256)) * 4

    def scenario():
        load_page(chrome, url, PAGE_READY)
        tcp = stomp.Connection12([("127.0.0.1", running.tcp_port)])
        listener = stomp.listener.TestListener()
        tcp.set_listener("", listener)
        tcp.connect(wait=True)
        try:
            tcp.subscribe("/queue/to-tcp", id="1", ack="auto")
            run_js(chrome, "await openClient('a', args[0]);", running.ws_url)
            result = run_js(chrome, ROUND_TRIP, BODY + " \u2713", binary)
            wait_until(lambda: len(listener.message_list) == 1, "the TCP copy", PAGE_TIMEOUT)
            return result, listener.message_list[0][1]
        finally:
            tcp.disconnect()

    result, tcp_body = await deferToThread(scenario)
    # The browser's WebSocket, from the broker's side.
    [ws] = [s.transport for s in running.service.broker.sessions if s.transport.name == "ws"]
    if setting == "on":
        assert result["extensions"].startswith("permessage-deflate")
        # Chromium compressed what it sent (Autobahn inflated it), and the
        # broker's MESSAGE frames went out through the shared compressor.
        stats = ws.trafficStats
        assert stats.incomingOctetsAppLevel > stats.incomingOctetsWebSocketLevel > 0
        assert ws.deflate is not None and ws.deflate.messages >= 2
    else:
        assert result["extensions"] == ""
        assert ws.deflate is None
    assert result["got"]["text"] == [BODY + " \u2713"]
    assert result["got"]["binary"] == [binary]
    assert tcp_body == BODY + " \u2713"
