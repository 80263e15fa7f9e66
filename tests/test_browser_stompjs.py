"""
The broker with ``@stomp/stompjs`` (installed from npm by the test setup)
in headless Chromium: the library web developers use, in a real browser,
over the browser's own WebSocket.

The page comes from its own loopback HTTP server, so it is a cross-origin
page the broker allows because it is on loopback; the Origin tests load
the same kind of page from ``*.test`` names (mapped to loopback in the
browser) that the broker does not allow.
"""

from __future__ import annotations

import time

import pytest_twisted
import stomp
from browser import PAGE_TIMEOUT, load_page, run_js
from clients import wait_until
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread, deferToThread

#: The test page: the stompjs bundle and a helper that opens a client and
#: records what happens to it in ``window.clients[name]``.
PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>stompjs</title>
<script src="stomp.umd.js"></script>
<script>
window.clients = {};
window.openClient = function (name, url, options) {
  const record = {log: [], connects: 0, messages: [], closes: [], errors: [], frame: null};
  window.clients[name] = record;
  return new Promise((resolve, reject) => {
    const client = new StompJs.Client(Object.assign({
      brokerURL: url,
      connectHeaders: {host: "/"},
      reconnectDelay: 0,
      debug: (line) => record.log.push(line),
      onConnect: (frame) => {
        record.connects += 1;
        record.frame = {command: frame.command, headers: frame.headers};
        if (options && options.subscribe) {
          client.subscribe(options.subscribe, (message) => record.messages.push({
            body: message.body, headers: message.headers,
          }));
        }
        resolve(record.connects);
      },
      onStompError: (frame) => record.errors.push(frame.headers.message),
      onWebSocketClose: (event) => {
        record.closes.push(event.code);
        if (!record.connects) reject(new Error("closed before CONNECTED, code " + event.code));
      },
    }, (options && options.config) || {}));
    record.client = client;
    client.activate();
  });
};
</script>
"""


#: True in :data:`PAGE` once its scripts have run.
PAGE_READY = "typeof openClient === 'function'"


async def _page(page_server, stompjs, host: str = "127.0.0.1") -> str:
    port = page_server({"index.html": PAGE, "stomp.umd.js": stompjs})
    return f"http://{host}:{port}/"


@pytest_twisted.ensureDeferred
async def test_stompjs_negotiates_and_exchanges_text_and_binary(
    make_broker, chrome, stompjs, page_server
):
    """
    stompjs connects with its default subprotocol list and gets STOMP 1.2;
    text (UTF-8) and binary bodies go both ways, between the browser and a
    stomp.py client over TCP.
    """
    running = await make_broker()
    url = await _page(page_server, stompjs)

    def scenario():
        load_page(chrome, url, PAGE_READY)
        run_js(chrome, "await openClient('a', args[0]);", running.ws_url)
        info = run_js(
            chrome,
            """const c = clients.a;
               return {protocol: c.client.webSocket.protocol, frame: c.frame,
                       version: c.client.connectedVersion};""",
        )
        assert info["protocol"] == "v12.stomp"
        assert info["version"] == "1.2"
        assert info["frame"]["headers"]["version"] == "1.2"
        assert info["frame"]["headers"]["server"].startswith("stomptw")

        tcp = stomp.Connection12([("127.0.0.1", running.tcp_port)])
        listener = stomp.listener.TestListener()
        tcp.set_listener("", listener)
        tcp.connect(wait=True)
        try:
            tcp.subscribe("/queue/from-browser", id="1", ack="auto")
            time.sleep(0.1)
            got = run_js(
                chrome,
                """const c = clients.a.client;
                   const text = [], binary = [];
                   await new Promise((resolve) => {
                     c.subscribe('/queue/to-browser', (m) => {
                       // stompjs hands every incoming body over as bytes.
                       if (m.headers['content-type'] === 'application/octet-stream') {
                         binary.push(Array.from(m.binaryBody));
                       }
                       else text.push(m.body);
                       if (text.length + binary.length === 2) resolve();
                     }, {receipt: 'sub-1'});
                     c.watchForReceipt('sub-1', () => {
                       c.publish({destination: '/queue/to-browser', body: 'h\u00e9llo \u2713'});
                       c.publish({destination: '/queue/to-browser',
                                  binaryBody: new Uint8Array([0, 1, 2, 255, 0, 10]),
                                  headers: {'content-type': 'application/octet-stream'}});
                     });
                   });
                   c.publish({destination: '/queue/from-browser', body: 'caf\u00e9 from the page',
                              headers: {'x-origin': 'browser'}});
                   c.publish({destination: '/queue/from-browser',
                              binaryBody: new Uint8Array([7, 0, 8, 254])});
                   return {text, binary};""",
            )
            assert got["text"] == ["h\u00e9llo \u2713"]
            assert got["binary"] == [[0, 1, 2, 255, 0, 10]]
            wait_until(
                lambda: len(listener.message_list) == 2, "two messages over TCP", PAGE_TIMEOUT
            )
            (first_headers, first_body), (second_headers, second_body) = listener.message_list
            assert first_body == "caf\u00e9 from the page"
            assert first_headers["x-origin"] == "browser"
            tcp.send("/queue/to-browser-2", "from tcp \u2603")
        finally:
            tcp.disconnect()
        assert second_headers["content-length"] == "4"
        assert len(second_body) in (3, 4)  # stomp.py decodes bodies as UTF-8, lossy
        received = run_js(
            chrome,
            """return await new Promise((resolve) => {
                 clients.a.client.subscribe('/queue/to-browser-2', (m) => resolve(m.body));
               });""",
        )
        assert received == "from tcp \u2603"

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_stompjs_receipts(make_broker, chrome, stompjs, page_server):
    """Receipts requested on SEND and SUBSCRIBE come back, each with its id."""
    running = await make_broker()
    url = await _page(page_server, stompjs)

    def scenario():
        load_page(chrome, url, PAGE_READY)
        run_js(chrome, "await openClient('a', args[0]);", running.ws_url)
        receipts = run_js(
            chrome,
            """const c = clients.a.client;
               const wait = (id) => new Promise((resolve) => c.watchForReceipt(id, (f) =>
                 resolve(f.headers['receipt-id'])));
               const r1 = wait('send-1'), r2 = wait('sub-1'), r3 = wait('send-2');
               c.publish({destination: '/topic/receipts', body: 'x', headers: {receipt: 'send-1'}});
               c.subscribe('/topic/receipts', () => {}, {receipt: 'sub-1'});
               c.publish({destination: '/queue/receipts', body: 'y', headers: {receipt: 'send-2'}});
               return await Promise.all([r1, r2, r3]);""",
        )
        assert receipts == ["send-1", "sub-1", "send-2"]

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_stompjs_heartbeats_in_both_directions(make_broker, chrome, stompjs, page_server):
    """
    With heart-beats every 500 ms both ways and nothing else sent, the
    session outlives several intervals: the broker sends beats the browser
    sees, and the browser's beats keep the broker from closing it (it
    would after 1.5 s of silence).
    """
    running = await make_broker(heartbeat_send_ms=500, heartbeat_receive_ms=500)
    url = await _page(page_server, stompjs)

    def scenario():
        load_page(chrome, url, PAGE_READY)
        run_js(
            chrome,
            "await openClient('a', args[0], {config: "
            "{heartbeatIncoming: 500, heartbeatOutgoing: 500}});",
            running.ws_url,
        )
        heartbeat = run_js(chrome, "return clients.a.frame.headers['heart-beat'];")
        assert heartbeat == "500,500"
        time.sleep(3.0)
        state = run_js(
            chrome,
            """const r = clients.a;
               return {connected: r.client.connected, closes: r.closes,
                       pings: r.log.filter((l) => l === '>>> PING').length,
                       pongs: r.log.filter((l) => l === '<<< PONG').length};""",
        )
        assert state["connected"] and state["closes"] == [], state
        assert state["pings"] >= 4, state
        assert state["pongs"] >= 4, state
        assert len(running.broker.sessions) == 1

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_stompjs_graceful_disconnect_with_receipt(make_broker, chrome, stompjs, page_server):
    """
    ``deactivate()`` sends DISCONNECT with a receipt, the broker answers
    with the RECEIPT, and the WebSocket closes cleanly (1000).
    """
    running = await make_broker()
    url = await _page(page_server, stompjs)

    def scenario():
        load_page(chrome, url, PAGE_READY)
        run_js(chrome, "await openClient('a', args[0]);", running.ws_url)
        assert len(running.broker.sessions) == 1
        record = run_js(
            chrome,
            """const r = clients.a;
               await r.client.deactivate();
               for (let i = 0; i < 100 && !r.closes.length; i++) {
                 await new Promise((ok) => setTimeout(ok, 50));
               }
               return {log: r.log, closes: r.closes};""",
        )
        log = "\n".join(record["log"])
        assert ">>> DISCONNECT" in log and "receipt:" in log, log
        assert "<<< RECEIPT" in log, log
        assert record["closes"] == [1000], record
        wait_until(lambda: not running.broker.sessions, "the session to end", PAGE_TIMEOUT)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_stompjs_reconnects_after_the_broker_closes(
    make_broker, chrome, stompjs, page_server
):
    """
    When the broker ends the session (an operator closes it), stompjs
    reconnects on its own, subscribes again and receives what is sent next.
    """
    running = await make_broker()
    url = await _page(page_server, stompjs)

    def scenario():
        load_page(chrome, url, PAGE_READY)
        run_js(
            chrome,
            "await openClient('a', args[0], {subscribe: '/topic/again', "
            "config: {reconnectDelay: 200}});",
            running.ws_url,
        )
        (session,) = list(running.broker.sessions)
        blockingCallFromThread(reactor, session.close_by_operator, "reconnect test")
        wait_until(
            lambda: run_js(chrome, "return clients.a.connects;") == 2,
            "stompjs to reconnect",
            PAGE_TIMEOUT,
        )
        record = run_js(chrome, "return {errors: clients.a.errors, closes: clients.a.closes};")
        assert record["errors"] == ["closed by the operator"], record
        assert len(record["closes"]) == 1, record

        def subscribed():
            sessions = list(running.broker.sessions)
            return len(sessions) == 1 and sessions[0].subscriptions

        wait_until(subscribed, "the new session to subscribe", PAGE_TIMEOUT)
        tcp = stomp.Connection12([("127.0.0.1", running.tcp_port)])
        tcp.connect(wait=True)
        tcp.send("/topic/again", "after the reconnect", receipt="r")
        tcp.disconnect()
        wait_until(
            lambda: (
                run_js(chrome, "return clients.a.messages.map((m) => m.body);")
                == ["after the reconnect"]
            ),
            "the message after reconnecting",
            PAGE_TIMEOUT,
        )

    await deferToThread(scenario)


#: A page that opens a plain browser WebSocket and reports how it ended.
ORIGIN_PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>origin</title>
<script>
window.tryConnect = (url) => new Promise((resolve) => {
  const ws = new WebSocket(url, ["v12.stomp"]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send("CONNECT\\naccept-version:1.2\\nhost:/\\n\\n\\u0000");
  ws.onmessage = (event) => { resolve({opened: true, data: String(event.data)}); ws.close(); };
  ws.onclose = (event) => resolve({opened: false, code: event.code});
});
</script>
"""

#: True in :data:`ORIGIN_PAGE` once its script has run.
ORIGIN_READY = "typeof tryConnect === 'function'"


@pytest_twisted.ensureDeferred
async def test_page_from_a_disallowed_origin_cannot_connect(make_broker, chrome, page_server):
    """
    A page from ``http://evil.test:PORT`` (another origin, not loopback by
    name) is refused at the handshake (HTTP 403; the browser sees 1006);
    the same page from ``127.0.0.1`` connects.
    """
    running = await make_broker()
    port = page_server({"index.html": ORIGIN_PAGE})

    def scenario():
        load_page(chrome, f"http://evil.test:{port}/", ORIGIN_READY)
        assert run_js(chrome, "return location.origin;") == f"http://evil.test:{port}"
        refused = run_js(chrome, "return await tryConnect(args[0]);", running.ws_url)
        assert refused == {"opened": False, "code": 1006}, refused
        console = " ".join(entry["message"] for entry in chrome.get_log("browser"))
        assert "Unexpected response code: 403" in console, console
        load_page(chrome, f"http://127.0.0.1:{port}/", ORIGIN_READY)
        allowed = run_js(chrome, "return await tryConnect(args[0]);", running.ws_url)
        assert allowed["opened"] and allowed["data"].startswith("CONNECTED\n"), allowed

    await deferToThread(scenario)

    def closed():
        sessions = running.broker.sessions
        return not sessions or all(s.transport is None for s in sessions)

    # The page closes its WebSocket once CONNECTED arrives; the close
    # handshake is still under way when the scenario returns.
    await deferToThread(wait_until, closed, "the page's session to end", PAGE_TIMEOUT)


@pytest_twisted.ensureDeferred
async def test_allowed_origins_pattern_lets_the_page_in(make_broker, chrome, page_server):
    """``--allowed-origins http://*.test:*`` admits the page refused above."""
    running = await make_broker(allowed_origins=["http://*.test:*"])
    port = page_server({"index.html": ORIGIN_PAGE})

    def scenario():
        load_page(chrome, f"http://app.evil.test:{port}/", ORIGIN_READY)
        allowed = run_js(chrome, "return await tryConnect(args[0]);", running.ws_url)
        assert allowed["opened"] and allowed["data"].startswith("CONNECTED\n"), allowed

    await deferToThread(scenario)


# -- logging in with a token ------------------------------------------------------------


def _signing_key(tmp_path):
    """An RSA key made for the test, and the broker's --auth for its public half."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "idp.pem"
    pem.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return key, f"jwt:key={pem}"


def _token(key, sub: str, lifetime: float) -> str:
    import jwt

    return jwt.encode({"sub": sub, "exp": int(time.time() + lifetime)}, key, algorithm="RS256")


@pytest_twisted.ensureDeferred
async def test_stompjs_logs_in_with_a_token_and_is_refused_with_a_bad_one(
    make_broker, chrome, stompjs, page_server, tmp_path
):
    """connectHeaders carry the token as passcode, as docs/security.md shows."""
    key, auth = _signing_key(tmp_path)
    running = await make_broker(auth=[auth], login_failure_delay=0.05)
    url = await _page(page_server, stompjs)
    good, forged = _token(key, "alice", 300), _token(key, "alice", 300)[:-4] + "AAAA"

    def scenario():
        load_page(chrome, url, PAGE_READY)
        run_js(
            chrome,
            "await openClient('a', args[0], {subscribe: '/topic/tok', "
            "config: {connectHeaders: {host: '/', passcode: args[1]}}});",
            running.ws_url,
            good,
        )
        user = run_js(
            chrome,
            """const r = clients.a;
               r.client.publish({destination: '/topic/tok', body: 'hi',
                                 headers: {'user-id': 'mallory'}});
               for (let i = 0; i < 100 && !r.messages.length; i++)
                 await new Promise((ok) => setTimeout(ok, 50));
               return r.messages.length ? r.messages[0].headers['user-id'] : null;""",
        )
        assert user == "alice"
        refused = run_js(
            chrome,
            """try { await openClient('b', args[0], {config: {reconnectDelay: 0,
                      connectHeaders: {host: '/', passcode: args[1]}}}); }
               catch (e) { }
               const r = clients.b;
               for (let i = 0; i < 100 && !r.errors.length; i++)
                 await new Promise((ok) => setTimeout(ok, 50));
               r.client.deactivate();
               return {errors: r.errors, connects: r.connects};""",
            running.ws_url,
            forged,
        )
        assert refused == {"errors": ["authentication failed"], "connects": 0}

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_stompjs_gets_a_fresh_token_in_before_connect_when_one_expires(
    make_broker, chrome, stompjs, page_server, tmp_path
):
    """
    At exp the broker ends the session with ERROR 'token expired'; stompjs
    reconnects and its beforeConnect puts a fresh token in connectHeaders.
    """
    key, auth = _signing_key(tmp_path)
    running = await make_broker(auth=[auth])
    url = await _page(page_server, stompjs)
    tokens = [_token(key, "alice", 2), _token(key, "alice", 300)]

    def scenario():
        load_page(chrome, url, PAGE_READY)
        run_js(
            chrome,
            """window.tokens = args[1];
               await openClient('r', args[0], {config: {reconnectDelay: 200,
                 beforeConnect: (c) => {
                   c.connectHeaders = {host: '/', passcode: window.tokens.shift()};
                 }}});""",
            running.ws_url,
            tokens,
        )
        state = run_js(
            chrome,
            """const r = clients.r;
               for (let i = 0; i < 200 && r.connects < 2; i++)
                 await new Promise((ok) => setTimeout(ok, 50));
               return {connects: r.connects, errors: r.errors, left: window.tokens.length};""",
        )
        assert state == {"connects": 2, "errors": ["token expired"], "left": 0}

    await deferToThread(scenario)
