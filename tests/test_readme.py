"""The README's tour runs as written, and its claims about the set-up hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str, language: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no ```{language} block under '## {heading}' in README.md"
    return match.group(1)


def test_the_tour_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {}
    exec(compile(_block("A tour", "python"), "README.md:tour", "exec"), namespace)
    train_losses, val_losses = namespace["train_losses"], namespace["val_losses"]
    assert len(train_losses) == len(val_losses) == 2
    out = capsys.readouterr().out
    assert "patched 5 LayerNorm, 2 MultiheadAttention" in out  # 2 blocks x 2 + final norm
    assert "layer_norm: torch" in out


def test_setup_gives_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = [line.split("#")[0].strip() for line in _block("Set up", "bash").splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
