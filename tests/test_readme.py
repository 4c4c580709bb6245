"""The Python blocks of the README and docs/library.md run as written, and the README's claims
about the set-up hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LIBRARY = ROOT / "docs" / "library.md"


def _block(heading: str, language: str, page: Path = README) -> str:
    text = page.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no ```{language} block under '## {heading}' in {page.name}"
    return match.group(1)


@pytest.mark.slow
def test_the_tour_trains_from_python_and_ends_with_a_prediction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tour trains a run with fbdl_fast.train, loads it with fbdl_fast.load_run and prints
    one label and probability per text it predicts, the labels being the run's classes."""
    import fbdl_fast

    monkeypatch.chdir(tmp_path)  # the tour writes runs/tour where it runs
    namespace: dict[str, object] = {}
    exec(compile(_block("A tour", "python"), "README.md:tour", "exec"), namespace)
    run = namespace["run"]
    assert isinstance(run, fbdl_fast.Run)
    assert (tmp_path / "runs" / "tour" / "best.pt").is_file()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("best epoch ")
    predicted = [line.rsplit(" ", 1) for line in lines[1:]]
    assert len(predicted) == 2  # one line per text of run.predict([...])
    classes = {str(label) for label in run.label_map.labels}
    for label, probability in predicted:
        assert label in classes
        assert 1 / len(classes) <= float(probability) <= 1  # the most probable class's share


def test_the_building_blocks_run_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/library.md's building-blocks block trains with the Trainer, patches a reference model
    (its 5 LayerNorms: 2 blocks x 2 + the final one) and explains which path a LayerNorm takes."""
    namespace: dict[str, object] = {}
    code = _block("The building blocks", "python", LIBRARY)
    exec(compile(code, "docs/library.md:blocks", "exec"), namespace)
    train_losses, val_losses = namespace["train_losses"], namespace["val_losses"]
    assert len(train_losses) == len(val_losses) == 2  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "patched 5 LayerNorm, 2 MultiheadAttention" in out
    assert "layer_norm: torch" in out


def test_setup_gives_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    """The set-up block is `make demo` and `make test`, and .ci/run runs the second."""
    commands = [line.split("#")[0].strip() for line in _block("Set up", "bash").splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
