"""Sphinx configuration of the stomptw documentation site.

Build it from the repository root with
``.venv/bin/python -m sphinx -W -b html docs docs/_build/html``.
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# The repository's stomptw (not an installed copy) and the local extensions.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import stomptw  # noqa: E402

project = "stomptw"
author = "the stomptw authors"
copyright = "the stomptw authors"
release = stomptw.__version__
version = release

extensions = ["myst_parser", "stomptw_sphinx"]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]

# Keep "--option" and quotes as typed: the pages are full of command lines.
smartquotes = False

# Markdown (MyST): the pages stay plain Markdown that reads well on a file
# browser; links between them (delivery.md, guide.md#options) become links
# between pages.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"stomptw {release}"
# stomptw.css wraps long command lines instead of clipping them.
html_static_path = ["_static"]
html_css_files = ["stomptw.css"]
