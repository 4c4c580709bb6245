"""benches/studies/ensemble.py on tiny runs: every score through `evaluate`, the ensemble's
equal to the library's, and every timing row through `predict` with several --run.

The "minilm", "ngram" and student runs are tiny untrained CNNs (make_run): the script reads them
as any run folders, and skips the int8 ONNX rows when MiniLM has no model.int8.onnx.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fbdl_fast.training.ensemble import load_ensemble
from tiny_run import load_bench_script, make_run, write_posts_csv

study = load_bench_script("studies/ensemble.py")


def test_the_study_scores_and_times_each_row(tmp_path: Path) -> None:
    data = tmp_path / "task"
    data.mkdir()
    write_posts_csv(data / "test.csv", 30, seed=2)
    runs = tmp_path / "runs"
    make_run(runs / "minilm", seed=0)
    make_run(runs / "ngram", vocab_size=150, seed=5)
    make_run(runs / "cnn-distilled", seed=3)
    argv = ["--data", str(data), "--runs", str(runs), "--posts", "45", "--turns", "1"]
    assert study.main([*argv, "--weights", "0.25"]) == 0
    results = json.loads((runs / "ensemble.json").read_text(encoding="utf-8"))
    scores = results["scores"]
    rows = {"minilm", "ngram", "ensemble", "student", "student-ensemble"}
    assert set(scores) == {*rows, "ensemble-w0.25"}
    want = load_ensemble([runs / "minilm", runs / "ngram"]).evaluate(data / "test.csv")
    assert scores["ensemble"]["macro_f1"] == pytest.approx(want.macro_f1)
    weighted = load_ensemble([runs / "minilm", runs / "ngram"], weights=[0.75, 0.25])
    assert scores["ensemble-w0.25"]["loss"] == pytest.approx(
        weighted.evaluate(data / "test.csv").loss
    )
    assert set(results["timing"]) == rows - {"ngram"}
    assert all(row["posts"] == 45 and row["cpu_s"] > 0 for row in results["timing"].values())
    assert not list(runs.glob("predictions-*"))  # the timed outputs are removed
