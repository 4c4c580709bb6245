"""benches/studies/ngram_speed.py: the posts it trains on and the table it prints (the timing
itself is the study's run, never a test)."""

from __future__ import annotations

from pathlib import Path

from tiny_run import load_bench_script, write_csv

ngram_speed = load_bench_script("studies/ngram_speed.py")


def test_posts_are_the_first_n_of_the_file_or_synthetic(tmp_path: Path) -> None:
    """--data gives its first n (text, label) rows in order; no --data gives n synthetic
    posts with their labels."""
    rows = [(f"post {i}", "a" if i % 2 else "b") for i in range(7)]
    path = write_csv(tmp_path / "posts.csv", rows, header=("text", "label"))
    assert ngram_speed.posts(str(path), 5) == (
        [f"post {i}" for i in range(5)],
        ["b", "a", "b", "a", "b"],
    )
    texts, labels = ngram_speed.posts(None, 12)
    assert len(texts) == len(labels) == 12 and len(set(labels)) > 1


def test_report_shows_the_medians_and_the_rates() -> None:
    """The table gives the training line and, per checkpoint, the library's rate, the CLI's
    raw rate and its rate once the process has started, and the start time."""
    row = {
        "library_posts_per_s": 25_000.4,
        "cli_wall_s": 10.0,
        "cli_start_s": 4.5,
        "cli_posts_per_s": 5_000.0,
        "cli_posts_per_s_after_start": 9_090.9,
    }
    figures = {
        "posts": 10_000,
        "data": "synthetic",
        "train": {"total_s": 9.84, "fit_s": 7.77, "val_macro_f1": 0.7671, "runs_total_s": [9.8]},
        "predict": {"best": row, "onnx": row | {"cli_posts_per_s_after_start": None}},
        "load_average": (1.0, 1.0, 1.0),
    }
    text = ngram_speed.report(figures)
    assert text.startswith(
        "train, 10,000 posts (synthetic), 1 thread: total 9.8 s (runs: [9.8]), fit 7.8 s, "
        "validation macro-F1 0.767"
    )
    assert "| best | 25,000 | 5,000 | 9,091 | 4.50 |" in text
    # A one-post process as slow as the whole file: no rate after the start, not a huge one.
    assert "| onnx | 25,000 | 5,000 | - | 4.50 |" in text
