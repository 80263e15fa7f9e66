"""
The rules of the house (docs/architecture.md), checked on the source: imports
run one way with no cycle among stomptw modules, the codecs and the session
are sans-IO, the broker knows nothing of transports, and the Autobahn
internals the WebSocket fast paths use are all still there.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stomptw"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports at run time (``TYPE_CHECKING`` blocks left out)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            # ``from stomptw import commands`` imports a module.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m != name and m != "stomptw"}
        for name, path in modules.items()
    }


def test_no_import_cycle_among_stomptw_modules():
    graph = _graph()
    assert "stomptw.session" in graph and "stomptw.broker" in graph
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                walk(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


#: Modules that must stay sans-IO: no reactor, no Twisted transport or protocol.
SANS_IO = (
    "stomptw.frame",
    "stomptw.encoding",
    "stomptw.wsframes",
    "stomptw.session",
    "stomptw.ending",
    "stomptw.sessionout",
    "stomptw.commands",
    "stomptw.settling",
    "stomptw.model",
    "stomptw.errors",
    "stomptw.receipts",
    "stomptw.transactions",
    "stomptw.access",
)

#: What of Twisted a sans-IO module may use: Deferreds, failures, logging.
SANS_IO_TWISTED = {"twisted.internet.defer", "twisted.python.failure", "twisted.logger"}


@pytest.mark.parametrize("module", SANS_IO)
def test_codecs_and_session_are_sans_io(module):
    path = PACKAGE / (module.split(".", 1)[1] + ".py")
    twisted = {
        m
        for m in _imports(path)
        if m.startswith("twisted")
        and not any(m == ok or m.startswith(ok + ".") for ok in SANS_IO_TWISTED)
    }
    assert not twisted, f"{module} imports {sorted(twisted)}"
    stomptw = {m for m in _imports(path) if m.startswith("stomptw.")}
    transports = {"stomptw.protocol", "stomptw.websocket", "stomptw.service", "stomptw.listeners"}
    assert not stomptw & transports, f"{module} imports {sorted(stomptw & transports)}"


@pytest.mark.parametrize(
    "module", ["stomptw.broker", "stomptw.destinations", "stomptw.model", "stomptw.store"]
)
def test_the_broker_knows_nothing_of_transports_or_sessions(module):
    imports = _graph()[module]
    forbidden = {
        "stomptw.protocol",
        "stomptw.websocket",
        "stomptw.session",
        "stomptw.commands",
        "stomptw.settling",
        "stomptw.service",
        "stomptw.admin",
        "stomptw.listeners",
    }
    assert not imports & forbidden, f"{module} imports {sorted(imports & forbidden)}"


def test_destinations_do_not_import_the_broker():
    assert "stomptw.broker" not in _graph()["stomptw.destinations"]


def test_admin_does_not_import_the_service():
    assert "stomptw.service" not in _graph()["stomptw.admin"]


def test_every_autobahn_internal_the_fast_paths_use_is_there(ws_in_process):
    """
    Fails loudly when an Autobahn release renames or removes one of the
    non-public names the WebSocket fast paths rely on (listed once, in
    stomptw.websocket.AUTOBAHN_INTERNALS): update the fast paths, their
    tests and the autobahn bound in setup.cfg together.
    """
    from stomptw.websocket import AUTOBAHN_INTERNALS

    proto, _ = ws_in_process
    missing = [name for name in AUTOBAHN_INTERNALS if not hasattr(proto, name)]
    assert missing == [], f"Autobahn no longer has {missing}"
    assert proto.state == proto.STATE_OPEN
    assert proto.current_frame is None and proto.inside_message is False
    assert proto.data == b"" and list(proto.send_queue) == []


def test_the_handshake_autobahn_keeps_is_let_go_once_open(ws_in_process):
    """
    Autobahn still names the handshake's leftovers as the broker expects
    (it sets them while handshaking), and an open connection holds none.
    """
    from autobahn.websocket.protocol import WebSocketServerProtocol

    from stomptw.wslean import HANDSHAKE_LEFTOVERS as _HANDSHAKE_LEFTOVERS

    source = inspect.getsource(WebSocketServerProtocol.processHandshake)
    source += inspect.getsource(WebSocketServerProtocol.succeedHandshake)
    unknown = [name for name in _HANDSHAKE_LEFTOVERS if f"self.{name}" not in source]
    assert unknown == [], f"Autobahn no longer sets {unknown} while handshaking"
    proto, _ = ws_in_process
    assert [getattr(proto, name) for name in _HANDSHAKE_LEFTOVERS] == [None] * len(
        _HANDSHAKE_LEFTOVERS
    )
