"""
The example pages served at ``/`` of the WebSocket listener: how they are
served (any HTTP client), and what they do in headless Chromium (a chat
message typed in one page appears in another, queue work is split between
two pages, the frame inspector shows the session's life).
"""

from __future__ import annotations

import os
import re

import pytest_twisted
import treq
from browser import PAGE_TIMEOUT, load_page, run_js
from clients import wait_until
from selenium.webdriver.common.by import By
from twisted.internet.threads import deferToThread

from stomptw.websocket import EXAMPLES_DIR

PAGES = ("index.html", "chat.html", "work.html", "live.html", "feed.html")


async def _get(url: str) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    response = await treq.get(url)
    body = await response.content()
    return response.code, dict(response.headers.getAllRawHeaders()), body


@pytest_twisted.ensureDeferred
async def test_examples_are_served_at_the_root(make_broker):
    running = await make_broker()
    base = f"http://127.0.0.1:{running.ws_port}"
    code, headers, body = await _get(base + "/")
    assert code == 200
    assert headers[b"Content-Type"] == [b"text/html; charset=utf-8"]
    for page in PAGES[1:]:
        assert page.encode() in body
    # Nothing is fetched from elsewhere; scripts come only from the broker.
    csp = headers[b"Content-Security-Policy"][0]
    assert b"default-src 'self'" in csp and b"connect-src 'self' ws: wss:" in csp
    assert headers[b"X-Content-Type-Options"] == [b"nosniff"]
    code, headers, body = await _get(base + "/stomp.js")
    assert code == 200 and b"export class StompClient" in body
    assert headers[b"Content-Type"] == [b"text/javascript; charset=utf-8"]
    code, headers, body = await _get(base + "/config.js")
    assert (
        code == 200
        and body
        == b'window.STOMPTW_WS_PATH = "/ws";\nwindow.STOMPTW_AUTH = false;\n'
        b'window.STOMPTW_TCP = ["tcp:0:interface=127.0.0.1"];\n'
    )


@pytest_twisted.ensureDeferred
async def test_examples_follow_the_websocket_path(make_broker):
    running = await make_broker(ws_path="/stomp/over/ws")
    code, _, body = await _get(f"http://127.0.0.1:{running.ws_port}/config.js")
    assert code == 200 and body.startswith(b'window.STOMPTW_WS_PATH = "/stomp/over/ws";\n')


@pytest_twisted.ensureDeferred
async def test_examples_list_no_directories_and_serve_nothing_else(make_broker):
    running = await make_broker()
    base = f"http://127.0.0.1:{running.ws_port}"
    for path in ("/nope.html", "/../setup.cfg", "/%2e%2e/setup.cfg", "/..%2fsetup.cfg"):
        code, _, body = await _get(base + path)
        assert code == 404, (path, code)
        assert b"[options]" not in body


@pytest_twisted.ensureDeferred
async def test_examples_switched_off(make_broker):
    """``--no-examples``: ``/`` is a one-line text page, the endpoint stays."""
    running = await make_broker(examples=False)
    code, headers, body = await _get(f"http://127.0.0.1:{running.ws_port}/")
    assert code == 200 and headers[b"Content-Type"] == [b"text/plain; charset=utf-8"]
    assert b"served at /ws" in body
    code, _, _ = await _get(f"http://127.0.0.1:{running.ws_port}/chat.html")
    assert code == 404


def test_example_files_are_all_local():
    """No page loads anything from another host (no CDN, no web fonts)."""
    remote = re.compile(r"""(src=|href=|url\(|@import|from |import\()\s*["']?(https?:)?//""")
    for name in os.listdir(EXAMPLES_DIR):
        with open(os.path.join(EXAMPLES_DIR, name), encoding="utf-8") as f:
            text = f.read()
        for match in remote.finditer(text):
            line = text[: match.start()].count("\n") + 1
            # Links a reader may follow are fine; a stylesheet or script is not.
            context = text[text.rfind("<", 0, match.start()) : match.end()]
            assert context.startswith("<a "), f"{name}:{line}: {context}"


# -- in a real browser ------------------------------------------------------


def _text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def _texts(driver, css: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def _open(driver, url: str, new_tab: bool) -> str:
    if new_tab:
        driver.switch_to.new_window("tab")
    load_page(driver, url)
    wait_until(lambda: _text(driver, "#status") == "connected", f"{url} to connect", PAGE_TIMEOUT)
    return driver.current_window_handle


def _no_console_errors(driver) -> None:
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


@pytest_twisted.ensureDeferred
async def test_chat_message_typed_in_one_page_appears_in_another(make_broker, chrome):
    running = await make_broker()
    url = f"http://127.0.0.1:{running.ws_port}/chat.html?room=browser-test"

    def scenario():
        alice = _open(chrome, url, new_tab=False)
        bob = _open(chrome, url, new_tab=True)
        chrome.switch_to.window(alice)
        name = chrome.find_element(By.ID, "name")
        name.clear()
        name.send_keys("alice")
        chrome.find_element(By.ID, "message").send_keys("hello from the first page")
        chrome.find_element(By.ID, "send").click()
        for handle in (bob, alice):
            chrome.switch_to.window(handle)
            wait_until(
                lambda: any(
                    "alice" in t and "hello from the first page" in t
                    for t in _texts(chrome, "#messages li.message")
                ),
                "the chat message in every page",
                PAGE_TIMEOUT,
            )
        # Enter sends too, and the second page's message reaches the first.
        chrome.switch_to.window(bob)
        chrome.find_element(By.ID, "message").send_keys("and back\n")
        chrome.switch_to.window(alice)
        wait_until(
            lambda: any("and back" in t for t in _texts(chrome, "#messages li.message")),
            "the reply",
            PAGE_TIMEOUT,
        )
        _no_console_errors(chrome)

    await deferToThread(scenario)
    assert running.broker.stats["published"] == 2


@pytest_twisted.ensureDeferred
async def test_work_queue_is_split_between_two_pages(make_broker, chrome):
    running = await make_broker()
    url = f"http://127.0.0.1:{running.ws_port}/work.html?delay=150"

    def scenario():
        first = _open(chrome, url, new_tab=False)
        second = _open(chrome, url, new_tab=True)
        chrome.find_element(By.ID, "add10").click()

        def done() -> dict[str, list[str]]:
            result = {}
            for handle in (first, second):
                chrome.switch_to.window(handle)
                result[handle] = _texts(chrome, "#done li.task")
            return result

        wait_until(
            lambda: sum(len(v) for v in done().values()) == 10, "10 tasks done", PAGE_TIMEOUT
        )
        per_page = done()
        tasks = [t for v in per_page.values() for t in v]
        assert len(set(tasks)) == 10, tasks
        assert all(per_page.values()), per_page  # each page did some of the work
        for handle, finished in per_page.items():
            chrome.switch_to.window(handle)
            assert _text(chrome, "#done-count") == str(len(finished))
            _no_console_errors(chrome)

    await deferToThread(scenario)
    stats = running.broker.stats
    assert stats["published"] == 10 and stats["acked"] == 10


@pytest_twisted.ensureDeferred
async def test_live_feed_resumes_its_stream_after_the_broker_drops_it(make_broker, chrome):
    """
    The live feed page reads a /stream/; the broker closes its WebSocket,
    updates are published while it is away, and after stomp.js reconnects
    the page shows every update exactly once, in order.
    """
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    from stomptw.application import Messaging

    running = await make_broker()
    messaging = Messaging.of(running.broker)
    stream = "/stream/live-test"
    for n in range(3):
        await messaging.publish(stream, f"before {n}")
    url = f"http://127.0.0.1:{running.ws_port}/live.html?stream={stream}&reconnect=500"

    def offsets() -> list[int]:
        return [
            int(o)
            for o in run_js(
                chrome,
                "return [...document.querySelectorAll('#updates li.update')]"
                ".map((li) => li.dataset.offset);",
            )
        ]

    def drop_and_publish_while_away():
        (page,) = [s for s in running.broker.sessions if s.transport_name == "ws"]
        page.close_by_operator("test")
        # Same reactor turn: the page cannot be back yet.
        for n in range(4):
            messaging.publish(stream, f"away {n}")

    def scenario():
        _open(chrome, url, new_tab=False)
        wait_until(lambda: len(offsets()) == 3, "the stream's first updates", PAGE_TIMEOUT)
        blockingCallFromThread(reactor, drop_and_publish_while_away)
        wait_until(lambda: _text(chrome, "#reconnects") == "1", "a reconnect", PAGE_TIMEOUT)
        wait_until(lambda: len(offsets()) >= 7, "the missed updates", PAGE_TIMEOUT)
        for n in range(2):
            blockingCallFromThread(reactor, messaging.publish, stream, f"after {n}")
        wait_until(lambda: len(offsets()) >= 9, "live updates again", PAGE_TIMEOUT)
        shown = offsets()
        texts = _texts(chrome, "#updates li.update")
        _no_console_errors(chrome)
        return shown, texts

    shown, texts = await deferToThread(scenario)
    assert shown == list(range(8, -1, -1))  # newest first, each exactly once
    assert texts[-1] == "#0 before 0" and texts[0] == "#8 after 1"
    assert "#3 away 0" in texts


@pytest_twisted.ensureDeferred
async def test_feed_shows_the_session_from_connect_to_disconnect(make_broker, chrome):
    running = await make_broker(heartbeat_send_ms=300, heartbeat_receive_ms=300)
    url = f"http://127.0.0.1:{running.ws_port}/feed.html?connect=0"

    def scenario():
        load_page(chrome, url)
        assert _text(chrome, "#state") == "closed"
        chrome.find_element(By.ID, "connect").click()
        wait_until(lambda: _text(chrome, "#state") == "connected", "connected", PAGE_TIMEOUT)
        frames = lambda: _texts(chrome, "#frames li.frame")  # noqa: E731
        wait_until(lambda: any("CONNECTED" in t for t in frames()), "CONNECTED shown", PAGE_TIMEOUT)
        assert chrome.find_elements(By.CSS_SELECTOR, "#frames li.frame.out")
        body = chrome.find_element(By.ID, "body")
        body.clear()
        body.send_keys("shown in the feed")
        chrome.find_element(By.ID, "publish").click()
        wait_until(
            lambda: any(
                "MESSAGE" in e.text and "shown in the feed" in e.text
                for e in chrome.find_elements(By.CSS_SELECTOR, "#frames li.frame.in")
            ),
            "the MESSAGE in the feed",
            PAGE_TIMEOUT,
        )
        wait_until(
            lambda: chrome.find_elements(By.CSS_SELECTOR, "#frames li.frame.heartbeat.in"),
            "a heart-beat from the broker",
            PAGE_TIMEOUT,
        )
        # The page offers 1000,1000; the broker takes the larger of the two.
        assert "out 1000 ms / in 1000 ms" in _text(chrome, "#heartbeat")
        chrome.find_element(By.ID, "disconnect").click()
        wait_until(lambda: _text(chrome, "#state") == "closed", "closed", PAGE_TIMEOUT)
        assert any("RECEIPT" in t for t in frames())
        _no_console_errors(chrome)

    await deferToThread(scenario)
    wait = deferToThread(wait_until, lambda: not running.broker.sessions, "no sessions", 10.0)
    await wait


@pytest_twisted.ensureDeferred
async def test_index_page_links_every_example(make_broker, chrome):
    running = await make_broker()
    url = f"http://127.0.0.1:{running.ws_port}/"

    def scenario():
        load_page(chrome, url)
        anchors = wait_until(
            lambda: chrome.find_elements(By.CSS_SELECTOR, "a[href]"), "the links", PAGE_TIMEOUT
        )
        links = {e.get_attribute("href") for e in anchors}
        for page in PAGES[1:]:
            assert f"{url}{page}" in links, links
        shown = run_js(chrome, "return document.body.innerText;")
        assert f"ws://127.0.0.1:{running.ws_port}/ws" in shown
        # The TCP listener this broker was given, not the default port.
        assert "over plain TCP on tcp:0:interface=127.0.0.1" in shown
        _no_console_errors(chrome)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_stomp_js_parser_and_encoder(make_broker, chrome):
    """
    The examples' client module, in the browser: frames split at every
    byte, several frames and heart-beats in one chunk, escaped headers,
    content-length bodies holding NUL, and encoding that escapes headers
    except in CONNECT.
    """
    running = await make_broker()
    url = f"http://127.0.0.1:{running.ws_port}/feed.html?connect=0"

    def scenario():
        load_page(chrome, url)
        result = run_js(
            chrome,
            """const m = await import('/stomp.js');
               const frames = []; let beats = 0;
               const parser = new m.FrameParser((f) => frames.push(f), () => beats++);
               const data = 'MESSAGE\\r\\nsubscription:1\\nx-key:a\\\\cb\\\\nc\\\\\\\\\\n'
                 + 'x-key:second\\n\\nhello\\u0000\\n\\r\\n'
                 + 'MESSAGE\\ncontent-length:3\\n\\na\\u0000b\\u0000\\n';
               const bytes = new TextEncoder().encode(data);
               for (let i = 0; i < bytes.length; i++) parser.push(bytes.slice(i, i + 1).buffer);
               const split = frames.map((f) => ({command: f.command, headers: f.headers,
                                                  body: Array.from(f.binaryBody)}));
               frames.length = 0;
               parser.push(data);
               const whole = frames.length;
               const connect = m.encodeFrame('CONNECT', {login: 'a:b'}).text;
               const send = m.encodeFrame('SEND', {'x-k': 'a:b\\nc'}, 'body').text;
               return {split, beats, whole, connect, send};""",
        )
        first, second = result["split"]
        assert first["command"] == "MESSAGE"
        # Escapes undone; a repeated header keeps its first value.
        assert first["headers"] == {"subscription": "1", "x-key": "a:b\nc\\"}
        assert first["body"] == list(b"hello")
        assert second["body"] == [97, 0, 98]
        assert result["beats"] >= 1
        assert result["whole"] == 2
        assert result["connect"].startswith("CONNECT\nlogin:a:b\n")
        assert "x-k:a\\cb\\nc\n" in result["send"]

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_chat_shows_a_login_form_when_the_broker_asks_for_one(make_broker, chrome):
    """With --auth the pages ask for credentials, keep them for the tab, and log in."""
    running = await make_broker(auth=["memory:alice:s3cret"], login_failure_delay=0.05)
    url = f"http://127.0.0.1:{running.ws_port}/chat.html?room=login-test"

    def log_in(user: str, password: str) -> None:
        chrome.find_element(By.ID, "login-user").send_keys(user)
        chrome.find_element(By.ID, "login-passcode").send_keys(password)
        chrome.find_element(By.ID, "login-submit").click()

    def scenario():
        load_page(chrome, url)
        wait_until(lambda: _texts(chrome, "#login-reason"), "the login form", PAGE_TIMEOUT)
        assert "needs a login" in _text(chrome, "#login-reason")
        assert len(running.broker.sessions) == 0  # nothing tried without credentials
        log_in("alice", "wrong")
        wait_until(
            lambda: "authentication failed" in " ".join(_texts(chrome, "#login-reason")),
            "the refusal in the form",
            PAGE_TIMEOUT,
        )
        log_in("alice", "s3cret")
        wait_until(lambda: _text(chrome, "#status") == "connected", "the login", PAGE_TIMEOUT)
        assert chrome.find_elements(By.ID, "login") == []
        chrome.find_element(By.ID, "message").send_keys("signed in\n")
        wait_until(
            lambda: any("signed in" in t for t in _texts(chrome, "#messages li.message")),
            "the message",
            PAGE_TIMEOUT,
        )
        errors = [e["message"] for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
        assert all("not logged in" in e or "authentication failed" in e for e in errors), errors

    await deferToThread(scenario)
    assert running.broker.auth.counters.succeeded == 1
