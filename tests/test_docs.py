"""
The documentation site builds with warnings as errors, its configuration
reference lists every option of ``twistd stomptw``, and the guide's
hand-written options table keeps up with the options.

The option names come from ``Options().getUsage()`` (what ``--help`` prints),
read when the test runs, so options added later are checked too.
"""

from __future__ import annotations

import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from stomptw.tap import Options

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Options every twisted.python.usage.Options has; not stomptw's to document.
BUILTIN = {"help", "version"}


def option_names() -> set[str]:
    """Long names of every ``twistd stomptw`` option, as ``--help`` lists them."""
    names = set()
    for line in Options().getUsage().splitlines():
        match = re.match(r"\s+(?:-\w, )?--([a-z][\w-]*)", line)
        if match:
            names.add(match.group(1))
    return names - BUILTIN


def test_usage_lists_options():
    """The parsing above finds the options (guards the tests below)."""
    names = option_names()
    assert {"tcp", "ws", "no-tcp", "allowed-origins", "data-dir", "max-redeliveries"} <= names


def guide_options_table() -> str:
    text = (DOCS / "guide.md").read_text(encoding="utf-8")
    section = re.search(r"^## Options\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "docs/guide.md has no '## Options' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
    assert len(rows) > 2, "docs/guide.md's Options section has no table"
    return "\n".join(row.split("|")[1] for row in rows)


def test_guide_options_table_lists_every_option():
    documented = set(re.findall(r"--([a-z][\w-]*)", guide_options_table()))
    missing = sorted(option_names() - documented)
    assert not missing, f"options missing from docs/guide.md's Options table: {missing}"
    unknown = sorted(documented - option_names())
    assert not unknown, f"docs/guide.md's Options table lists unknown options: {unknown}"


def _missing_sphinx() -> str | None:
    for module in ("sphinx", "myst_parser"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install '.[test]' installs it)"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    reason = _missing_sphinx()
    if reason:
        pytest.skip(f"cannot build the documentation site: {reason}")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + ["-d", str(out / ".doctrees"), str(DOCS), str(out / "html")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    return out / "html"


def page_text(site: Path, name: str) -> str:
    raw = (site / name).read_text(encoding="utf-8")
    return html.unescape(re.sub(r"<[^>]+>", "", raw))


def test_site_builds_with_every_page(site):
    index = page_text(site, "index.html")
    for page in (
        "getting-started",
        "configuration",
        "guide",
        "delivery",
        "policy",
        "embedding",
        "operations",
        "performance",
        "changelog",
    ):
        assert (site / f"{page}.html").is_file(), page
        assert f'href="{page}.html"' in (site / "index.html").read_text(encoding="utf-8"), page
    assert "stomptw" in index


def test_configuration_reference_lists_every_option(site):
    text = page_text(site, "configuration.html")
    assert "--data-dir" in text and "--max-redeliveries" in text
    assert "/queue/DLQ.{name}" in text  # defaults are shown
    assert "Listen for STOMP over TCP on this endpoint string" in text  # opt_tcp's docstring
    missing = sorted(name for name in option_names() if f"--{name}" not in text)
    assert not missing, f"options missing from the configuration reference: {missing}"
    # Each value is named for what it is, not VALUE.
    for spelled in ("--login-timeout SECONDS", "--max-frame-size BYTES", "--store sqlite|memory"):
        assert spelled in text, spelled
    assert " VALUE" not in text


def test_long_command_lines_wrap_on_the_site(site):
    css = (site / "_static" / "stomptw.css").read_text()
    assert "white-space: pre-wrap" in css
    assert "stomptw.css" in (site / "guide.html").read_text(encoding="utf-8")


def test_embedding_page_includes_the_examples(site):
    text = page_text(site, "embedding.html")
    assert "makeService(config).setServiceParent(application)" in text
    assert 'live.putChild(b"stomp", websocket_resource(broker, config, reactor))' in text


def test_links_between_pages_resolve(site):
    guide = (site / "guide.html").read_text(encoding="utf-8")
    assert 'href="delivery.html"' in guide and 'href="policy.html"' in guide
    operations = page_text(site, "operations.html")
    assert "contrib/systemd/" in operations


def _readme_python_sample() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Try it") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("```", start)]


@pytest_twisted.ensureDeferred
async def test_the_readme_sample_prints_the_message_and_disconnects(make_broker):
    """The README's stomp.py sample, run as written against a broker (on a free port)."""
    from twisted.internet.threads import deferToThread

    running = await make_broker()
    sample = _readme_python_sample()
    assert "61613" in sample
    code = sample.replace("61613", str(running.tcp_port))

    def run():
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
        )

    result = await deferToThread(run)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "received hi from /queue/hello\n"
    assert running.broker.stats["published"] == 1


def _blocks_after(page: Path, heading: str) -> list[tuple[str, str]]:
    """The (language, text) code blocks of ``page`` between ``heading`` and the next heading."""
    text = page.read_text()
    section = text[text.index(heading) + len(heading) :]
    section = re.split(r"\n#{1,6} ", section, maxsplit=1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL)


def test_the_local_tls_recipe_works_as_written(tmp_path):
    """browsers.md's openssl and twistd commands and its stomp.py client, run as written."""
    import os
    import socket
    import time

    (_, shell), (_, client) = _blocks_after(DOCS / "browsers.md", "### A local TLS recipe")
    openssl, twistd = shell.replace("\\\n", " ").strip().splitlines()
    with socket.socket() as probe:  # a free port instead of 61614
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    subprocess.run(openssl, shell=True, cwd=tmp_path, check=True, capture_output=True)
    venv_bin = str(Path(sys.executable).parent) + "/"
    command = twistd.replace(".venv/bin/", venv_bin).replace("61614", port)
    command = command.replace("twistd -n ", "twistd -n --pidfile= ") + " --no-ws --store memory"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # exec: the shell becomes twistd, so that terminate() stops the broker itself.
    broker = subprocess.Popen(
        "exec " + command,
        shell=True,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", int(port))) == 0:
                    break
            time.sleep(0.1)
        result = subprocess.run(
            [sys.executable, "-c", client.replace("61614", port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "received hi over TLS\n"
        # The client checks the certificate: one it does not trust is refused.
        other = tmp_path / "other"
        other.mkdir()
        subprocess.run(openssl, shell=True, cwd=other, check=True, capture_output=True)
        untrusted = client.replace("61614", port).replace('"cert.pem"', '"other/cert.pem"')
        refused = subprocess.run(
            [sys.executable, "-c", untrusted],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0 and "received" not in refused.stdout
    finally:
        broker.terminate()
        broker.wait(timeout=30)
