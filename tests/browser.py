"""
Headless Chromium for the browser tests, driven through selenium.

The browser is Debian's ``chromium`` with its ``chromium-driver``; nothing
is downloaded at test time (selenium's driver manager is kept offline). On
a machine without them the tests skip with :data:`INSTALL_HINT`.

Selenium calls block, so a test runs its whole browser part in a thread
(``await deferToThread(scenario, driver)``) while the reactor serves the
broker.

Tests open their pages with :func:`load_page`, not ``driver.get`` alone, so
that what they script is the document they asked for, with its scripts run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from clients import wait_until

INSTALL_HINT = (
    "install Debian's chromium and chromium-driver "
    "(sudo apt-get install chromium chromium-driver) and the test extra "
    "(pip install '.[test]', which brings selenium)"
)

#: How long a test waits for something to happen in a page.
PAGE_TIMEOUT = 15.0

NPM_HINT = "install Node.js and npm (sudo apt-get install npm) so the test setup can fetch it"

#: What a closed network needs, and no throttling of background tabs
#: (tests keep several pages open). Pages at ``*.test`` resolve to
#: loopback, so a page can come from an origin the broker does not allow.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-features=HttpsUpgrades,Translate,MediaRouter",
    "--host-resolver-rules=MAP *.test 127.0.0.1",
    "--window-size=1200,900",
)


def _find(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def missing() -> str | None:
    """Why the browser tests cannot run here, or ``None`` if they can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed: {INSTALL_HINT}"
    if _find("chromium", "chromium-browser") is None:
        return f"Chromium is not installed: {INSTALL_HINT}"
    if _find("chromedriver") is None:
        return f"chromedriver is not installed: {INSTALL_HINT}"
    return None


def start_chromium() -> Any:
    """Start headless Chromium with a fresh profile; returns the WebDriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Never let selenium's driver manager go looking on the network.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "chromium-browser") or ""
    profile = tempfile.mkdtemp(prefix="stomptw-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_find("chromedriver")), options=options)
    driver.set_script_timeout(20)
    driver.set_page_load_timeout(20)
    driver._stomptw_profile = profile
    return driver


def stop_chromium(driver: Any) -> None:
    """Quit the browser and remove its profile."""
    profile = getattr(driver, "_stomptw_profile", None)
    try:
        driver.quit()
    finally:
        if profile:
            shutil.rmtree(profile, ignore_errors=True)


def reset(driver: Any) -> None:
    """Close every tab but one and leave it blank, for the next test."""
    handles = driver.window_handles
    for handle in handles[1:]:
        driver.switch_to.window(handle)
        driver.close()
    driver.switch_to.window(handles[0])
    driver.get("about:blank")


def load_page(driver: Any, url: str, ready: str = "true") -> None:
    """
    Open ``url`` in the current tab and return once the tab's document is
    that page (``location.href == url``), fully loaded, and the JavaScript
    expression ``ready`` is true in it: the page's own scripts have defined
    what the test is about to use (``"typeof openClient === 'function'"``).

    Otherwise it fails within :data:`PAGE_TIMEOUT` saying what the tab holds
    instead (address, ready state, title, the start of the HTML), so that a
    wrong or half-loaded page is named as such rather than showing up later
    as a ``ReferenceError`` in :func:`run_js`. ``ready`` must not throw
    (use ``typeof``).
    """
    driver.get(url)
    probe = (
        "return {href: location.href, state: document.readyState, title: document.title,"
        f" ready: Boolean({ready}), html: document.documentElement.outerHTML.slice(0, 300)}};"
    )
    seen: dict[str, Any] = {}

    def arrived() -> bool:
        seen.update(driver.execute_script(probe))
        return seen["href"] == url and seen["state"] == "complete" and seen["ready"]

    try:
        wait_until(arrived, f"{url} loaded with {ready}", PAGE_TIMEOUT)
    except AssertionError as e:
        raise AssertionError(f"{e}; the tab holds {seen}") from None


def run_js(driver: Any, body: str, *args: Any) -> Any:
    """
    Run ``body`` as the body of an async function in the current page
    (``args`` are its ``args`` array) and return what it returns; a thrown
    error fails the test with the browser's message.
    """
    script = (
        "const done = arguments[arguments.length - 1];"
        "const args = Array.prototype.slice.call(arguments, 0, -1);"
        f"(async (args) => {{ {body} }})(args).then("
        "  (value) => done({ok: true, value: value === undefined ? null : value}),"
        "  (error) => done({ok: false, error: String(error && error.stack || error)}));"
    )
    result = driver.execute_async_script(script, *args)
    if not result["ok"]:
        raise AssertionError(f"in the browser: {result['error']}")
    return result["value"]


def npm_install(package: str, target: Path) -> Path:
    """
    ``npm install`` ``package`` into ``target`` (a scratch directory, never
    the checkout) and return its ``node_modules`` directory. Raises
    :class:`RuntimeError` with npm's output when that fails.
    """
    npm = _find("npm")
    if npm is None:
        raise RuntimeError(f"npm is not installed: {NPM_HINT}")
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(target), package],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm install {package} failed: {result.stdout}{result.stderr}")
    return target / "node_modules"
