"""Runs written by fbdl_fast 0.1.0 (tests/fixtures/run-0.1.0, see its MADE_BY.md) still load and
predict what that version predicted, through fbdl_fast.load_run and `fbdl-fast predict` alike,
for best.pt, last.pt, model.int8.pt and model.onnx; and for a run trained by today's CLI, the
library's predictions are the CLI's rows.

The fixture is copied before use: nothing may be written into it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import fbdl_fast
from fbdl_fast.cli import main
from fbdl_fast.training.loading import Prediction
from tiny_run import tiny_model_args, write_posts_csv

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "run-0.1.0"
EXPECTED = json.loads((FIXTURE / "expected_predictions.json").read_text(encoding="utf-8"))
CHECKPOINTS = ("best", "last", "int8", "onnx")
# expected_predictions.json holds predict's rows, probabilities rounded to 6 decimals (at most
# 5e-7 away from the value computed).
TOLERANCE = 1e-6


def _tree(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 of every file in `folder`."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the 0.1.0 run folder."""
    return Path(shutil.copytree(FIXTURE / "run", tmp_path_factory.mktemp("old") / "run"))


def _cli_rows(
    run: Path, checkpoint: str, texts: list[str], capsys: pytest.CaptureFixture[str]
) -> list[dict]:
    """`fbdl-fast predict --run RUN --checkpoint CHECKPOINT --text ...`'s rows on stdout."""
    capsys.readouterr()
    argv = ["predict", "--run", str(run), "--checkpoint", checkpoint, "--quiet"]
    assert main([*argv, *[a for t in texts for a in ("--text", t)]]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _row(prediction: Prediction) -> dict:
    """A library Prediction as predict writes it in JSON lines (probabilities to 6 decimals)."""
    return {
        "text": prediction.text,
        "label": prediction.label,
        "probability": round(prediction.probability, 6),
        "probabilities": {n: round(p, 6) for n, p in prediction.probabilities.items()},
    }


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_old_run_predicts_what_it_predicted(
    old_run: Path, checkpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """load_run(checkpoint=...) of the 0.1.0 run gives 0.1.0's labels and probabilities
    (within 1e-6), and `fbdl-fast predict` prints the library's rows, which are 0.1.0's."""
    run = fbdl_fast.load_run(old_run, checkpoint=checkpoint)
    expected = EXPECTED["predictions"][checkpoint]
    predictions = run.predict(EXPECTED["texts"])
    assert [p.text for p in predictions] == EXPECTED["texts"]
    assert [p.label for p in predictions] == [row["label"] for row in expected]
    for got, want in zip(predictions, expected):
        assert list(got.probabilities) == list(want["probabilities"])
        for name, value in want["probabilities"].items():
            assert abs(got.probabilities[name] - value) <= TOLERANCE, (name, got, want)
        assert abs(got.probability - want["probability"]) <= TOLERANCE
    rows = _cli_rows(old_run, checkpoint, EXPECTED["texts"], capsys)
    assert rows == [_row(p) for p in predictions]
    assert rows == expected


def test_loading_an_old_run_writes_nothing_into_it(old_run: Path) -> None:
    """Loading and predicting with every kind of weights leaves the folder's files as they
    were (no cache, no upgrade written beside them)."""
    before = _tree(old_run)
    assert before == _tree(FIXTURE / "run")  # the copy is the fixture
    for checkpoint in CHECKPOINTS:
        fbdl_fast.load_run(old_run, checkpoint=checkpoint).predict(["hello"])
    assert _tree(old_run) == before


@pytest.fixture(scope="module")
def new_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Transformer trained by today's `fbdl-fast train --calibrate`, exported to int8,
    ONNX and int8 ONNX."""
    root = tmp_path_factory.mktemp("new")
    data = write_posts_csv(root / "posts.csv", 120, seed=3)
    run = root / "run"
    argv = ["train", "--data", str(data), "--output", str(run), "--epochs", "2", "--calibrate"]
    assert main([*argv, *tiny_model_args("transformer"), "--quiet"]) == 0
    for fmt in ("int8", "onnx", "onnx-int8"):
        assert main(["export", "--run", str(run), "--format", fmt, "--quiet"]) == 0
    return run


@pytest.mark.parametrize("checkpoint", ["best", "int8", "onnx", "onnx-int8"])
def test_library_predictions_are_the_cli_rows_for_a_new_run(
    new_run: Path, checkpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """fbdl_fast.load_run(RUN).predict(texts) equals `fbdl-fast predict`'s output, row for row,
    for best.pt, model.int8.pt, model.onnx and model.int8.onnx of a run trained by today's
    CLI."""
    texts = EXPECTED["texts"]
    run = fbdl_fast.load_run(new_run, checkpoint=checkpoint)
    assert run.temperature != 1.0  # --calibrate: the probabilities are calibrated ones
    rows = _cli_rows(new_run, checkpoint, texts, capsys)
    assert rows == [_row(p) for p in run.predict(texts)]
