"""
The operator's console (stomptw.console) in headless Chromium, against a
real broker with ``--auth`` (an administrator and a plain user) and an
admin listener: logging in, every page with real data, charts and tables
that follow real STOMP traffic, purge, peek and close, a non-administrator
refused, and a browser console without errors.

With ``STOMPTW_CONSOLE_SCREENSHOTS=DIR`` the main test also saves the
screenshots of the documentation there (``console-*.png``).
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from browser import PAGE_TIMEOUT, load_page
from clients import ClientPool, unique, wait_until
from twisted.internet.threads import deferToThread

from stomptw.users import User, hash_password, write_users

LOOPBACK = "tcp:0:interface=127.0.0.1"
#: A body that would run script if it were ever parsed as HTML.
HOSTILE = '<img src=x onerror="window.pwned=1"><b>bold?</b> & "quotes"'


@pytest.fixture
def users_file(tmp_path: Path) -> str:
    path = tmp_path / "users.toml"
    write_users(
        str(path),
        [
            User("root", hash_password("r-pw"), tags=("administrator",)),
            User("carol", hash_password("c-pw")),
        ],
    )
    return str(path)


async def start(make_broker, users_file: str):
    running = await make_broker(
        auth=[f"users:{users_file}"], admin_endpoints=[LOOPBACK], login_failure_delay=0.01
    )
    return running, f"http://127.0.0.1:{running.admin_port}/"


def js(driver, expression: str):
    """The value of a JavaScript expression in the page."""
    return driver.execute_script(f"return ({expression});")


def wait_js(driver, expression: str, what: str, timeout: float = PAGE_TIMEOUT):
    """Wait until ``expression`` is truthy in the page; return its value."""
    seen = {}

    def check() -> bool:
        seen["value"] = js(driver, expression)
        return bool(seen["value"])

    wait_until(check, what, timeout, interval=0.1)
    return seen["value"]


def click(driver, selector: str, what: str) -> None:
    """Click the element ``selector`` finds, in one step in the page (tables re-render)."""
    script = (
        f"const e = document.querySelector({selector!r}); if (!e || e.disabled) return false;"
        " e.click(); return true;"
    )
    wait_until(lambda: driver.execute_script(script), what, PAGE_TIMEOUT, interval=0.1)


def log_in(driver, url: str, user: str, password: str) -> None:
    load_page(driver, url, "window.consoleReady === true")
    wait_js(driver, "!document.getElementById('login').hidden", "the login form")
    driver.find_element("id", "login-user").send_keys(user)
    driver.find_element("id", "login-password").send_keys(password)
    click(driver, "#login-submit", "the log-in button")


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def cell(driver, row_id: str, key: str) -> str:
    """The text of a table cell, by its row's id and its column's key ('' if absent)."""
    return js(
        driver,
        f"(() => {{ const r = [...document.querySelectorAll('.tab:not([hidden]) tr[data-id]')]"
        f".find((tr) => tr.dataset.id === {row_id!r});"
        f" const c = r && r.querySelector('td[data-key={key}]');"
        " return c ? c.textContent : ''; })()",
    )


def tab(driver, name: str) -> None:
    click(driver, f"#nav a[data-tab={name}]", f"the {name} tab")
    wait_js(driver, f"!document.getElementById({name!r}).hidden", f"the {name} page")


#: Where the screenshots go, if anywhere.
SCREENSHOTS = os.environ.get("STOMPTW_CONSOLE_SCREENSHOTS", "")


def shoot(driver, name: str) -> None:
    if SCREENSHOTS:
        time.sleep(1.5)
        driver.save_screenshot(str(Path(SCREENSHOTS) / f"console-{name}.png"))


@pytest_twisted.ensureDeferred
async def test_console_shows_live_data_and_acts(make_broker, chrome, users_file):
    running, url = await start(make_broker, users_file)
    queue = "/queue/" + unique("console")
    topic = "/topic/" + unique("console")
    pool = ClientPool()
    pool.__enter__()
    stop = threading.Event()

    def scenario():
        chrome.set_window_size(1200, 800)
        chrome.get("about:blank")
        # A viewport of 1200x800 (the screenshots' size).
        extra = js(chrome, "window.outerHeight - window.innerHeight")
        chrome.set_window_size(1200, 800 + extra)
        log_in(chrome, url, "root", "r-pw")
        wait_js(chrome, "!document.getElementById('nav').hidden", "the console after logging in")
        assert js(chrome, "document.getElementById('user').textContent") == "root"
        # The overview: facts, and charts drawn from the history.
        facts = wait_js(chrome, "document.getElementById('facts').textContent", "the facts")
        assert "stomptw" in facts and "up " in facts and "memory store" in facts
        wait_js(
            chrome, "document.querySelector('#chart-rates canvas').dataset.samples > 0", "a chart"
        )
        before = js(chrome, "document.querySelector('#chart-rates canvas').toDataURL()")

        # Real traffic: a consumer (client acks, one at a time) that leaves
        # messages waiting, a producer, a durable subscriber that goes away.
        consumer = pool.tcp(running.tcp_port, connect=False, heartbeats=(10000, 10000))
        consumer.connect(login="carol", passcode="c-pw")
        consumer.subscribe(queue, "c1", ack="client-individual", **{"prefetch-count": "1"})
        durable = pool.tcp(running.tcp_port, connect=False)
        durable.connect(login="carol", passcode="c-pw", headers={"client-id": "reports"})
        durable.subscribe(topic, "d1", **{"activemq.subscriptionName": "daily"})
        durable.disconnect()
        auditor = pool.ws(running.ws_port, running.ws_path, connect=False)
        auditor.connect(login="carol", passcode="c-pw", headers={"client-id": "audit"})
        auditor.subscribe(topic, "a1", **{"activemq.subscriptionName": "all"})
        producer = pool.tcp(running.tcp_port, connect=False)
        producer.connect(login="carol", passcode="c-pw")
        producer.send(queue, HOSTILE, receipt=True)
        for i in range(5):
            producer.send(queue, f"waiting {i}", receipt=True)
        producer.send(topic, "for the durable one", receipt=True)

        def publish() -> None:
            started = time.monotonic()
            while not stop.is_set():
                producer.send(topic, "tick")
                # A pace that varies, for charts worth a look.
                time.sleep(0.02 + 0.015 * math.sin((time.monotonic() - started) / 4))

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        wait_js(
            chrome,
            "parseFloat(document.querySelector('[data-tile=publish] .tile-value').textContent) > 0",
            "the publish rate to move",
        )
        wait_js(
            chrome,
            "document.querySelector('#chart-rates [data-series=publish] .value').textContent"
            " !== '0/s'",
            "the chart's legend to move",
        )
        after = js(chrome, "document.querySelector('#chart-rates canvas').toDataURL()")
        assert after != before, "the rate chart was not redrawn with the traffic"
        connections = js(
            chrome, "document.querySelector('[data-tile=connections] .tile-value').textContent"
        )
        assert int(connections) >= 3
        if SCREENSHOTS:
            time.sleep(60)  # a minute of history on the charts
        shoot(chrome, "overview")

        # Queues and topics: depth and unacked, then the detail, peek, purge.
        tab(chrome, "destinations")
        wait_until(
            lambda: cell(chrome, queue, "depth") == "5", "the queue's depth", PAGE_TIMEOUT, 0.1
        )
        assert cell(chrome, queue, "unacked") == "1"
        assert cell(chrome, queue, "consumers") == "1"
        wait_until(
            lambda: cell(chrome, topic, "rate_in") not in ("", "0/s"),
            "the topic's rate",
            PAGE_TIMEOUT,
            0.1,
        )
        chrome.find_element("css selector", ".tab:not([hidden]) .filter").send_keys("console")
        wait_js(
            chrome,
            "document.querySelector('.paging-status').textContent.endsWith(' of 2')",
            "the filter",
        )
        click(chrome, f"tr[data-id='{queue}'] a.dest-link", "the queue's name")
        wait_js(
            chrome, "document.querySelector('#destination-detail dd[data-key=depth]')", "the detail"
        )
        wait_js(
            chrome,
            "document.querySelectorAll('#destination-detail .subs tbody tr').length === 1",
            "its subscription",
        )
        click(chrome, "#destination-detail button.peek", "peek")
        bodies = wait_js(
            chrome,
            "[...document.querySelectorAll('#destination-detail pre.body')]"
            ".map((p) => p.textContent)",
            "the peeked messages",
        )
        assert bodies == [f"waiting {i}" for i in range(5)]
        shoot(chrome, "queues")
        click(chrome, "#destination-detail button.purge", "purge")
        click(chrome, "#destination-detail button.confirm-purge", "confirm purge")
        wait_js(
            chrome,
            "document.querySelector('#destination-detail .notice')"
            ".textContent.includes('Purged 5')",
            "the purge",
        )
        wait_until(
            lambda: cell(chrome, queue, "depth") == "0", "the depth to drop to 0", PAGE_TIMEOUT, 0.1
        )
        # The unacknowledged one (hostile) comes back when the consumer lets go.
        consumer.unsubscribe("c1")
        wait_until(
            lambda: cell(chrome, queue, "depth") == "1", "the returned message", PAGE_TIMEOUT, 0.1
        )
        click(chrome, "#destination-detail button.peek", "peek again")
        wait_js(
            chrome,
            "document.querySelectorAll('#destination-detail pre.body').length === 1",
            "one message",
        )
        shown = js(chrome, "document.querySelector('#destination-detail pre.body').textContent")
        assert shown == HOSTILE
        assert js(chrome, "document.querySelectorAll('#destination-detail pre.body *').length") == 0
        assert js(chrome, "window.pwned === undefined")

        # Durable subscriptions: away, with a backlog.
        tab(chrome, "durables")
        owners = {d.name: f"{d.client_id}/{d.name}" for d in running.broker.durables.values()}
        away, active = owners["daily"], owners["all"]
        wait_until(lambda: cell(chrome, away, "active") == "away", "the durable", PAGE_TIMEOUT, 0.1)
        assert int(cell(chrome, away, "backlog").replace(",", "")) >= 1
        assert cell(chrome, active, "active") == "active"
        assert cell(chrome, active, "session_id") != "–"
        shoot(chrome, "durables")

        # Connections: close the producer's with a reason.
        tab(chrome, "connections")
        session_id = max(running.broker.sessions, key=lambda s: s.frames_in).session_id
        wait_until(
            lambda: cell(chrome, session_id, "user") == "carol", "the connection", PAGE_TIMEOUT, 0.1
        )
        assert cell(chrome, session_id, "transport") == "tcp"
        assert cell(chrome, session_id, "version") == "1.2"
        assert cell(chrome, session_id, "heartbeat_send_ms").endswith("ms")
        shoot(chrome, "connections")
        stop.set()
        publisher.join(5)
        click(chrome, f"tr[data-id='{session_id}'] button.close-connection", "close…")
        wait_js(chrome, "!document.querySelector('.close-panel').hidden", "the close panel")
        chrome.execute_script(
            "document.querySelector('.close-panel .reason').value = 'console test';"
        )
        click(chrome, ".close-panel button.confirm-close", "close the connection")
        error = producer.next_error()
        assert error.headers["message"] == "closed by the operator"
        assert "console test" in error.body
        wait_js(
            chrome,
            "document.querySelector('.close-panel .notice').textContent.startsWith('Closed')",
            "closed",
        )
        wait_until(
            lambda: cell(chrome, session_id, "user") == "", "the row to go", PAGE_TIMEOUT, 0.1
        )
        assert severe(chrome) == []

    try:
        await deferToThread(scenario)
    finally:
        stop.set()
        await deferToThread(pool.__exit__, None, None, None)


@pytest_twisted.ensureDeferred
async def test_a_non_administrator_cannot_log_in(make_broker, chrome, users_file):
    running, url = await start(make_broker, users_file)

    def scenario():
        log_in(chrome, url, "carol", "c-pw")
        message = wait_js(chrome, "document.getElementById('login-error').textContent", "a refusal")
        assert "administrator tag" in message
        assert js(chrome, "document.getElementById('nav').hidden")
        assert js(chrome, "document.getElementById('overview').hidden")
        # A reload does not get in either: no session was made.
        load_page(chrome, url, "window.consoleReady === true")
        assert js(chrome, "!document.getElementById('login').hidden")
        # Nothing but the refused login itself went wrong in the page.
        assert all("api/console/session" in m and "403" in m for m in severe(chrome))

    await deferToThread(scenario)
    assert running.broker.auth.counters.succeeded >= 1  # carol's password was right


@pytest_twisted.ensureDeferred
async def test_token_login_and_logout_without_auth(make_broker, chrome, tmp_path):
    token = tmp_path / "admin-token"
    token.write_text("s3cret-token\n")
    running = await make_broker(admin_endpoints=[LOOPBACK], admin_token_file=str(token))
    url = f"http://127.0.0.1:{running.admin_port}/"

    def scenario():
        load_page(chrome, url, "window.consoleReady === true")
        wait_js(chrome, "!document.getElementById('login').hidden", "the login form")
        assert js(chrome, "document.getElementById('user-field').hidden")
        assert js(chrome, "document.getElementById('password-label').textContent") == "Admin token"
        chrome.find_element("id", "login-password").send_keys("s3cret-token")
        click(chrome, "#login-submit", "log in")
        wait_js(chrome, "!document.getElementById('nav').hidden", "the console")
        wait_js(
            chrome, "document.getElementById('live').classList.contains('on')", "the live stream"
        )
        load_page(chrome, url, "window.consoleReady === true")
        wait_js(chrome, "!document.getElementById('nav').hidden", "still logged in after a reload")
        click(chrome, "#logout", "log out")
        wait_js(chrome, "!document.getElementById('login').hidden", "the login form again")
        assert severe(chrome) == []

    await deferToThread(scenario)
