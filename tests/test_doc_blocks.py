"""
Every shell and Python block in README.md and docs/ runs as written.

Each page's blocks run in order in a sandbox directory, as a reader who copies
them would run them one after another from a checkout with ``.venv``:

- ``.venv`` in the sandbox is the environment running these tests, which the
  README's install command built, so ``python3 -m venv .venv`` and
  ``.venv/bin/pip install ...`` are already done and are not repeated;
- a ``twistd ... stomptw`` command starts the broker in the background; the
  test waits until every listener it names accepts connections (or fails on
  the broker's output if it exits), and keeps it running for the page's next
  blocks until another broker command or the end of the page;
- the well-known ports (61613, 15674, ...) become free loopback ports, every
  listener is bound to 127.0.0.1 (this machine's servers listen on loopback
  only), and ``/etc/stomptw`` and ``/var/lib/stomptw`` are directories in the
  sandbox. Listeners a command leaves at their defaults are named explicitly
  with the substituted ports;
- files a page takes for granted are prepared: a self-signed ``key.pem`` and
  ``cert.pem`` (also as ``server.key``, ``server.pem``, ``clients-ca.pem``), a
  JWT public key, and a ``users.toml`` with alice (password ``the password``)
  unless the page creates it itself; a ``toml`` block whose first line is a
  ``# /path`` comment is written to that path;
- a ``NAME=value`` line sets a variable for the page's later commands, as in
  one terminal; a command's standard input is ``the password``, which is what
  ``stomptw-users`` reads when it is not on a terminal.

A block that cannot run here is marked in the page, just before it, with
``<!-- doc-test: skip: WHY -->``; the test requires a reason and checks that
the mark is on a block it would otherwise run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WELL_KNOWN_PORTS = ("61613", "61614", "15674", "15673", "15670", "8080")
PASSWORD = "the password"

BLOCK = re.compile(
    r"(?:<!-- doc-test: (?P<mark>[^\n]*?) -->\n\s*)?"
    r"^(?P<indent>[ ]*)```(?P<lang>[\w{}.-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
    re.MULTILINE | re.DOTALL,
)
ENDPOINT = re.compile(r"\b((?:tcp|ssl|mtls):(\d+))((?::[^\s'\"]*)?)")
BROKER_COMMAND = re.compile(r"(^|/)(twistd|twist)\b.*\bstomptw\b")
INSTALL_COMMAND = re.compile(r"^(python3 -m venv \.venv|\.venv/bin/pip install \S+)$")


@dataclass
class Block:
    """One fenced block of a page."""

    page: Path
    line: int
    lang: str
    body: str
    mark: str | None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` with the mark before each, if any."""
    text = page.read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("indent")) + 1
        body = textwrap.dedent(match["indent"] + match["body"])
        found.append(Block(page, line, match["lang"], body, match["mark"]))
    return found


def runnable(block: Block) -> bool:
    """Whether the test runs this kind of block."""
    return block.lang in ("sh", "python")


def commands(body: str) -> list[str]:
    """A shell block's commands: one per line, continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            found.append(line)
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Sandbox:
    """A page's working directory, its substitutions and its running broker."""

    path: Path
    ports: dict[str, str]
    broker: subprocess.Popen | None = None
    broker_command: str = ""
    log: Path | None = None
    variables: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def rewrite(self, text: str) -> str:
        """``text`` with this sandbox's ports, loopback listeners and directories."""
        for port, free in self.ports.items():
            text = re.sub(rf"\b{port}\b", free, text)
        text = text.replace("interface=0.0.0.0", "interface=127.0.0.1")

        def loopback(match: re.Match) -> str:
            options = match[3]
            if "interface=" in options:
                return match[0]
            return f"{match[1]}:interface=127.0.0.1{options}"

        text = ENDPOINT.sub(loopback, text)
        text = text.replace("/etc/stomptw/", f"{self.path}/etc/stomptw/")
        return text.replace("/var/lib/stomptw", f"{self.path}/var/lib/stomptw")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
        # Not the venv's bin: a page must say .venv/bin/ (or how to activate).
        env["PATH"] = os.pathsep.join(
            p
            for p in env.get("PATH", "").split(os.pathsep)
            if Path(p) != Path(sys.executable).parent
        )
        env.update(self.variables)
        return env

    def assign(self, name: str, value: str, where: Block) -> None:
        """``NAME=value`` as a shell would keep it for the next commands."""
        self.variables[name] = self.run(f"printf %s {value}", where, shell=True)

    def start_broker(self, command: str, where: Block) -> None:
        """Start the broker ``command`` names and wait until it serves."""
        self.stop_broker()
        command = self.rewrite(command)
        if "--config" not in command:
            if "--tcp" not in command and "--no-tcp" not in command:
                command += f" --tcp tcp:{self.ports['61613']}:interface=127.0.0.1"
            if "--ws " not in command and "--no-ws" not in command:
                command += f" --ws tcp:{self.ports['15674']}:interface=127.0.0.1"
        listening = {int(port) for _, port, _ in ENDPOINT.findall(command)}
        config = re.search(r"--config (\S+)", command)
        if config:
            listening |= {int(p) for _, p, _ in ENDPOINT.findall(Path(config[1]).read_text())}
        self.log = self.path / "broker.log"
        with self.log.open("w") as out:
            self.broker = subprocess.Popen(
                ["bash", "-c", "exec " + command],
                cwd=self.path,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.broker_command = command
        deadline = time.monotonic() + 60
        waiting = set(listening)
        while waiting and time.monotonic() < deadline:
            if self.broker.poll() is not None:
                pytest.fail(f"{where}: {command!r} exited:\n{self.log.read_text()}")
            for port in list(waiting):
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        waiting.discard(port)
            time.sleep(0.05)
        assert not waiting, f"{where}: {command!r} never listened on {waiting}"

    def stop_broker(self) -> None:
        """Stop the running broker; it must stop cleanly, without a traceback."""
        if self.broker is None:
            return
        broker, self.broker = self.broker, None
        if broker.poll() is None:
            os.killpg(broker.pid, signal.SIGTERM)
        try:
            broker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(broker.pid, signal.SIGKILL)
            broker.wait()
            pytest.fail(f"{self.broker_command!r} did not stop on SIGTERM")
        output = self.log.read_text()
        assert "Traceback" not in output, f"{self.broker_command!r}:\n{output}"

    def run(self, argv: list[str] | str, where: Block, shell: bool = False) -> str:
        result = subprocess.run(
            argv,
            shell=shell,
            executable="/bin/bash" if shell else None,
            cwd=self.path,
            env=self.env(),
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        shown = argv if shell else "python block"
        assert result.returncode == 0, (
            f"{where}: {shown} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
        assert "Traceback" not in result.stderr, f"{where}: {shown}:\n{result.stderr}"
        return result.stdout


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A self-signed loopback certificate and its key, and an RSA public key for JWTs."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (apt-get install openssl)")
    where = tmp_path_factory.mktemp("certificate")
    subprocess.run(
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost"
        " -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout key.pem -out cert.pem"
        " && openssl rsa -in key.pem -pubout -out idp-public.pem",
        shell=True,
        cwd=where,
        check=True,
        capture_output=True,
    )
    return where


def prepare(path: Path, page: Path, certificate: Path) -> Sandbox:
    """A sandbox for ``page`` with the files its blocks take for granted."""
    (path / ".venv").symlink_to(Path(sys.prefix))
    ports = {port: str(free_port()) for port in WELL_KNOWN_PORTS}
    sandbox = Sandbox(path, ports)
    etc = path / "etc" / "stomptw"
    etc.mkdir(parents=True)
    (path / "var" / "lib" / "stomptw").mkdir(parents=True)
    for where in (path, etc):
        for name in ("key.pem", "cert.pem"):
            shutil.copy(certificate / name, where / name)
        shutil.copy(certificate / "key.pem", where / "server.key")
        shutil.copy(certificate / "cert.pem", where / "server.pem")
        shutil.copy(certificate / "cert.pem", where / "clients-ca.pem")
    shutil.copy(certificate / "idp-public.pem", etc / "idp-public.pem")
    token = etc / "admin-token"
    token.write_text("a-token-for-the-docs\n")
    token.chmod(0o600)
    creates_users = any(
        "stomptw-users add users.toml" in command
        for block in blocks(page)
        if block.lang == "sh" and not block.mark
        for command in commands(block.body)
    )
    if not creates_users:
        users = Path(sys.prefix) / "bin" / "stomptw-users"
        for where in (path, etc):
            subprocess.run(
                [str(users), "add", str(where / "users.toml"), "alice"],
                input=PASSWORD + "\n",
                text=True,
                check=True,
                capture_output=True,
            )
    return sandbox


def top_level_parts(command: str) -> list[str]:
    """``command`` split at the ``&&`` outside parentheses, trailing comment dropped."""
    command = re.sub(r"\s+#[^'\"]*$", "", command)
    parts, depth, start = [], 0, 0
    for i, char in enumerate(command):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and command.startswith("&&", i):
            parts.append(command[start:i])
            start = i + 2
    return [part.strip() for part in [*parts, command[start:]]]


def run_shell(sandbox: Sandbox, block: Block) -> None:
    for command in commands(block.body):
        for part in top_level_parts(command):
            if INSTALL_COMMAND.match(part):
                continue  # the sandbox's .venv is the installed project
            assignment = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", part)
            if assignment:
                sandbox.assign(assignment[1], sandbox.rewrite(assignment[2]), block)
            elif BROKER_COMMAND.search(part):
                sandbox.start_broker(part, block)
            else:
                sandbox.outputs.append(sandbox.run(sandbox.rewrite(part), block, shell=True))


def run_page(page: Path, path: Path, certificate: Path) -> list[str]:
    """Run the page's blocks in order; the blocks that ran."""
    sandbox = prepare(path, page, certificate)
    ran = []
    try:
        for block in blocks(page):
            if block.mark is not None:
                assert block.mark.startswith("skip: ") and len(block.mark) > 12, (
                    f"{block}: a mark is 'skip: WHY', not {block.mark!r}"
                )
                assert runnable(block), f"{block}: the mark is on a {block.lang} block"
                continue
            if block.lang == "toml" and block.body.startswith("# /"):
                target = Path(sandbox.rewrite(block.body.splitlines()[0][2:].strip()))
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(sandbox.rewrite(block.body))
            elif block.lang == "sh":
                run_shell(sandbox, block)
            elif block.lang == "python":
                sandbox.run([sys.executable, "-c", sandbox.rewrite(block.body)], block)
            else:
                continue
            ran.append(str(block))
    finally:
        sandbox.stop_broker()
    return ran


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_block_runs_as_written(page, tmp_path, certificate):
    """The page's shell and Python blocks succeed, in order, in a sandbox."""
    if "curl " in page.read_text() and shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    run_page(page, tmp_path, certificate)


def test_only_a_few_blocks_are_skipped():
    """Skipping is for blocks that need root, systemd or a remote party, not a habit."""
    every = [b for page in PAGES for b in blocks(page) if runnable(b)]
    skipped = [b for b in every if b.mark]
    assert len(every) > 40
    assert len(skipped) <= len(every) // 3, [str(b) for b in skipped]


def test_commands_name_the_venv():
    """A command copied into a fresh shell finds its program: ``.venv/bin/`` or a system tool."""
    programs = ("twistd", "twist", "stomptw-users", "pip", "pytest")
    for page in PAGES:
        for block in blocks(page):
            if block.lang != "sh" or block.mark:
                continue
            for command in commands(block.body):
                for part in re.split(r"&&|\|", command):
                    words = shlex.split(part, comments=True)
                    if words and words[0] in programs:
                        pytest.fail(f"{block}: {words[0]!r} without .venv/bin/")


def test_help_commands_in_the_prose_name_the_venv():
    """``twistd stomptw --help`` in a sentence is also copied into a shell."""
    for page in PAGES:
        for span in re.findall(r"`([^`\n]+)`", page.read_text()):
            if re.match(r"(twistd|twist|stomptw-users)\b.*--help", span):
                pytest.fail(f"{page.relative_to(ROOT)}: `{span}` without .venv/bin/")
