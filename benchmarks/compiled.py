#!/usr/bin/env python3
"""
Would a compiled hot path pay? Cython-compile a copy of the broker's hot
modules, unchanged, and measure it against the pure-Python code.

The copy is built in a temporary directory (``cythonize`` with
``annotation_typing=False``, so type hints keep their Python meaning); the
checkout is not touched. Two measurements, each alternating pure and
compiled code:

* the frame parser and ``encode_message`` in a child process (best of 15
  rounds; SEND frames of 100-byte bodies fed in 4 KiB reads);
* ``compare.py`` against the broker run from each tree (``--stomptw-code``),
  with the compiled generator, over TCP with 100-byte bodies.

Needs Cython and a C compiler (``pip install Cython``). Usage::

    .venv/bin/python benchmarks/compiled.py --runs 2 --rounds 3

What it found is in docs/performance.md ("A compiled hot path").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: The modules a message passes through, from the read to the write.
HOT = (
    "frame,encoding,session,sessionout,commands,brokersend,queuedispatch,topics,"
    "protocol,model,receipts,flow,access,broker,destinations"
)

_BUILD = """
import sys
from Cython.Build import cythonize
from setuptools import setup
modules = sys.argv.pop(1).split(",")
setup(
    ext_modules=cythonize(
        [f"stomptw/{m}.py" for m in modules],
        compiler_directives={"language_level": 3, "annotation_typing": False, "binding": True},
        quiet=True,
    ),
    script_args=["build_ext", "--inplace", "-q"],
)
"""

_MICRO = """
import json, time
import stomptw.encoding as E
import stomptw.frame as F
send = (b"SEND\\ndestination:/queue/bench-1\\ncontent-type:text/plain\\nreceipt:r1\\n"
        b"content-length:100\\n\\n" + b"x" * 100 + b"\\x00")
data = send * 2000
def parse():
    p = F.FrameParser()
    n = 0
    for i in range(0, len(data), 4096):
        p.feed(data[i:i + 4096])
        while p.next_frame() is not None:
            n += 1
    return n
parse_ns = encode_ns = 1e12
parts = E.message_parts("m-1", "/queue/bench-1", {"content-type": "text/plain"}, b"x" * 100, "1.2")
for _ in range(15):
    t = time.perf_counter(); n = parse()
    parse_ns = min(parse_ns, (time.perf_counter() - t) / n * 1e9)
    t = time.perf_counter()
    for _ in range(20000):
        E.encode_message(parts, "sub-1", "1.2", None, False, 0)
    encode_ns = min(encode_ns, (time.perf_counter() - t) / 20000 * 1e9)
print(json.dumps({"file": F.__file__, "parse_ns": parse_ns, "encode_ns": encode_ns}))
"""


def build(tree: Path, modules: str) -> None:
    """Copy stomptw into ``tree`` and compile ``modules`` there."""
    shutil.copytree(
        REPO / "stomptw", tree / "stomptw", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-c", _BUILD, modules], cwd=tree, check=True, stdout=subprocess.DEVNULL
    )


def micro(code: Path) -> dict:
    """Parse and encode costs, in ns, with ``code`` first on the path."""
    # In ``code``: ``python -c`` puts its working directory first on the path.
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(
        [sys.executable, "-c", _MICRO],
        cwd=code,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def compare(code: Path, rounds: int, messages: int) -> list[str]:
    """compare.py's stomptw rows with the broker run from ``code``."""
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "compare.py"),
            "--generator",
            "stompgen",
            "--brokers",
            "stomptw",
            "--scenarios",
            "queue,topic,individual",
            "--sizes",
            "100",
            "--transports",
            "tcp",
            "--rounds",
            str(rounds),
            "--messages",
            str(messages),
            "--stomptw-code",
            str(code),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return [
        line for line in out.stdout.splitlines() if line.startswith(("queue", "topic", "client"))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default=HOT, help="stomptw modules to compile")
    parser.add_argument("--runs", type=int, default=2, help="alternations of pure and compiled")
    parser.add_argument("--rounds", type=int, default=3, help="compare.py rounds per run")
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--micro-only", action="store_true", help="skip compare.py")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stomptw-compiled-") as tmp:
        tree = Path(tmp)
        build(tree, args.modules)
        trees = {"pure": REPO, "compiled": tree}
        for run in range(1, args.runs + 1):
            for name, code in trees.items():
                m = micro(code)
                print(
                    f"run {run} {name:<8} parse {m['parse_ns']:6.0f} ns/frame  "
                    f"encode {m['encode_ns']:4.0f} ns/message  ({m['file']})",
                    flush=True,
                )
                if not args.micro_only:
                    for line in compare(code, args.rounds, args.messages):
                        print(f"run {run} {name:<8} {line}", flush=True)


if __name__ == "__main__":
    main()
