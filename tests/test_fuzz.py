"""
A short run of the coverage-guided fuzzer (tests/fuzz_stomp.py, atheris) over
the codec and the sans-IO session: ``STOMPTW_FUZZ_SECONDS`` (60) of it, from
the seeds in tests/fuzz_seeds. A crash fails the test with the input, in
base64, to turn into a regression test.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECONDS = int(os.environ.get("STOMPTW_FUZZ_SECONDS", "60"))


def test_fuzzing_the_codec_and_the_session_finds_no_crash(tmp_path):
    pytest.importorskip("atheris", reason="pip install '.[test]' brings atheris (Linux, x86_64)")
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "tests" / "fuzz_seeds", corpus)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "fuzz_stomp.py"),
            f"-max_total_time={SECONDS}",
            "-rss_limit_mb=2048",
            str(corpus),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    found = [base64.b64encode(c.read_bytes()).decode() for c in crashes]
    assert result.returncode == 0 and not found, (found, result.stderr[-4000:])
    runs = [line for line in result.stderr.splitlines() if line.startswith("Done ")]
    assert runs and int(runs[-1].split()[1]) > 1000, result.stderr[-2000:]
