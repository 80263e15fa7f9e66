"""
Sphinx helpers for the stomptw documentation.

- ``twistd-options``: a directive that renders every option of a
  ``twisted.python.usage.Options`` subclass (parameters, flags and ``opt_*``
  handlers) as a table, straight from the class, so the configuration
  reference cannot drift from ``twistd stomptw --help``. A class with a
  ``configFileLines`` mapping (option name to a line of its configuration
  file) gets a column with them; an ``opt_*`` handler's ``metavar``
  attribute names its value::

      ```{twistd-options} stomptw.tap.Options
      ```

- Links in the Markdown pages to files of the repository outside ``docs/``
  (such as ``../contrib/systemd/``) work in a file browser but are not part of
  the site: they are rendered as their plain text instead of broken links.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from twisted.python import reflect, usage

__all__ = ["OptionDoc", "gather_options", "setup"]


@dataclass(frozen=True)
class OptionDoc:
    """One command-line option, as ``--help`` knows it."""

    name: str  # long name without the dashes
    short: str | None  # one-letter alias, if any
    kind: str  # "parameter", "flag" or "handler"
    metavar: str | None  # what the value is called, None for flags
    default: str  # rendered default, "" when there is none
    help: str
    config_line: str = ""  # the option's line in a configuration file, if it has one


def _text(value: object) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def gather_options(cls: type[usage.Options]) -> list[OptionDoc]:
    """Every option of ``cls`` (its bases' included), sorted by name like ``--help``.

    ``--help`` and ``--version``, which every ``usage.Options`` has, are left out.
    """
    found: dict[str, OptionDoc] = {}

    parameters: list = []
    reflect.accumulateClassList(cls, "optParameters", parameters)
    metavars = getattr(cls, "optMetavars", {})
    for entry in parameters:
        long, short, default, doc = (list(entry) + [None] * 4)[:4]
        found[long] = OptionDoc(
            name=long,
            short=short,
            kind="parameter",
            metavar=metavars.get(long, "VALUE"),
            default=_text(default),
            help=_text(doc),
        )

    flags: list = []
    reflect.accumulateClassList(cls, "optFlags", flags)
    for entry in flags:
        long, short, doc = (list(entry) + [None] * 3)[:3]
        found[long] = OptionDoc(
            name=long, short=short, kind="flag", metavar=None, default="off", help=_text(doc)
        )

    builtin = {name for name in dir(usage.Options) if name.startswith("opt_")}
    for attribute in sorted(dir(cls)):
        if not attribute.startswith("opt_") or attribute in builtin:
            continue
        method = getattr(cls, attribute)
        if not callable(method):
            continue
        arguments = [
            p
            for p in inspect.signature(method).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ][1:]  # drop self
        long = attribute[len("opt_") :].replace("_", "-")
        found.setdefault(
            long,
            OptionDoc(
                name=long,
                short=None,
                kind="handler",
                metavar=getattr(method, "metavar", None)
                or (arguments[0].name.upper() if arguments else None),
                default="",
                help=_text(inspect.getdoc(method)),
            ),
        )

    lines = getattr(cls, "configFileLines", {})
    return [
        dataclasses.replace(found[name], config_line=lines.get(name, "")) for name in sorted(found)
    ]


def _import(dotted: str) -> type[usage.Options]:
    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, usage.Options)):
        raise TypeError(f"{dotted} is not a twisted.python.usage.Options subclass")
    return cls


def _cell(*children: nodes.Node) -> nodes.entry:
    entry = nodes.entry()
    entry += nodes.paragraph("", "", *children)
    return entry


class TwistdOptionsDirective(SphinxDirective):
    """``twistd-options dotted.path.to.Options``: a table of every option."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        try:
            cls = _import(self.arguments[0])
        except Exception as e:
            raise self.error(f"twistd-options: cannot load {self.arguments[0]}: {e}") from e
        module = inspect.getmodule(cls)
        if module is not None and getattr(module, "__file__", None):
            self.env.note_dependency(module.__file__)

        result: list[nodes.Node] = []
        if getattr(cls, "longdesc", ""):
            result.append(nodes.paragraph("", _text(cls.longdesc)))

        options = gather_options(cls)
        titles = ["Option", "Default", "Description"]
        widths = [30, 20, 50]
        if any(option.config_line for option in options):
            titles.append("Configuration file")
            widths = [24, 14, 38, 24]
        table = nodes.table(classes=["twistd-options"])
        group = nodes.tgroup(cols=len(titles))
        table += group
        for width in widths:
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        row = nodes.row()
        for title in titles:
            row += _cell(nodes.Text(title))
        head += row
        body = nodes.tbody()
        group += body

        for option in options:
            spelled = f"--{option.name}"
            if option.metavar:
                spelled += f" {option.metavar}"
            names: list[nodes.Node] = [nodes.literal(spelled, spelled)]
            if option.short:
                names += [nodes.Text(", "), nodes.literal(f"-{option.short}", f"-{option.short}")]
            row = nodes.row(ids=[nodes.make_id(f"option-{option.name}")])
            row += _cell(*names)
            row += (
                _cell(nodes.literal(option.default, option.default)) if option.default else _cell()
            )
            row += _cell(nodes.Text(option.help))
            if len(titles) > 3:
                line = option.config_line
                row += _cell(nodes.literal(line, line)) if line else _cell()
            body += row

        result.append(table)
        return result


def _unlink_outside_sources(app: Sphinx, doctree: nodes.document) -> None:
    """Render MyST links to repository paths outside the source folder as text."""
    srcdir = Path(app.srcdir).resolve()
    docdir = Path(app.env.doc2path(app.env.docname)).resolve().parent
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst" or node.get("refdomain") not in (None, ""):
            continue
        target = str(node.get("reftarget", "")).split("#", 1)[0]
        if not target or "://" in target:
            continue
        path = (docdir / target).resolve()
        if path.is_relative_to(srcdir) or not path.exists():
            continue
        node.replace_self(node.children or [nodes.literal(target, target)])


def setup(app: Sphinx) -> dict:
    app.add_directive("twistd-options", TwistdOptionsDirective)
    app.connect("doctree-read", _unlink_outside_sources)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
