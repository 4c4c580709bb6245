"""benches/studies/ngram_convex.py: one line per task and C, the convex fit's test macro-F1 on
the training posts (less the share `train` holds out, with --held-out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_run import load_bench_script, write_posts_csv

study = load_bench_script("studies/ngram_convex.py")


def test_the_study_prints_a_line_per_task_and_c(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    task = tmp_path / "task"
    task.mkdir()
    write_posts_csv(task / "train.csv", 120, seed=1)
    write_posts_csv(task / "test.csv", 40, seed=2)
    argv = ["--task", str(task), "--buckets", "1024", "--c", "10", "1", "--held-out", "0.1"]
    lines = study.main(argv)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == lines and [line["c"] for line in lines] == [1.0, 10.0]
    assert all(0.0 <= line["test_macro_f1"] <= 1.0 for line in lines)
    assert lines[0]["train_posts"] == 108  # 10% of 120 held out, as `train` holds them out
    assert all(line["word_chars"] for line in lines)
    plain = study.main([*argv, "--no-word-chars"])
    assert not any(line["word_chars"] for line in plain)
