"""Reports: the bench report (speedups from pytest-benchmark JSON, the markdown table, the bar
chart), the evaluation report (against scikit-learn, by hand) and the run report; every PNG is
opened and checked for its size and that it is not blank."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from fbdl_fast.reports.bench import markdown_table, rows_from_pytest_benchmark, write_report
from fbdl_fast.reports.chart import (
    FASTER,
    SLOWER,
    bar_chart_png,
    confusion_figure,
    curves_figure,
    reliability_figure,
)
from fbdl_fast.reports.evaluation import evaluate_logits
from fbdl_fast.reports.run_report import write_run_report

MACHINE = {"cpu": "Test CPU", "cores": 2, "gpu": None, "torch": "2.x", "triton": "3.x"}


def _bench(
    group: str, variant: str, median: float, role: str = "candidate", **extra: float
) -> dict:
    return {
        "group": group,
        "name": f"bench[{variant}]",
        "param": variant,
        "stats": {"median": median},
        "extra_info": {"variant": variant, "role": role, **extra},
    }


def _sample() -> dict:
    return {
        "benchmarks": [
            _bench("layer_norm fwd", "torch", 2.0, role="reference"),
            _bench("layer_norm fwd", "fbdl_fast", 0.5),
            _bench("train step cnn", "patched fp32", 3.0),  # no reference in its group
            _bench("train step lstm", "reference fp32", 1.0, role="reference"),
            _bench("train step lstm", "patched fp32", 2.0, speedup=0.9),
        ]
    }


def _decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of a PNG, decoded by Pillow (matplotlib's own
    dependency), after checking the signature."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = image.size
    raw = image.tobytes()
    return width, height, [raw[y * 3 * width : (y + 1) * 3 * width] for y in range(height)]


def test_speedup_is_reference_median_over_candidate_median() -> None:
    rows = rows_from_pytest_benchmark(_sample())
    speedups = {(r.group, r.variant): r.speedup for r in rows}
    assert speedups[("layer_norm fwd", "fbdl_fast")] == pytest.approx(4.0)
    assert speedups[("layer_norm fwd", "torch")] is None
    assert speedups[("train step cnn", "patched fp32")] is None
    # A speedup the benchmark measured itself (timed in turns) wins over the ratio of medians.
    assert speedups[("train step lstm", "patched fp32")] == pytest.approx(0.9)


def test_markdown_names_the_machine_and_each_row() -> None:
    table = markdown_table(rows_from_pytest_benchmark(_sample()), MACHINE)
    assert "Test CPU (2 cores), no GPU" in table
    assert "| layer_norm fwd | fbdl_fast | 500 ms | 4.00x |" in table
    assert "| layer_norm fwd | torch | 2 s | reference |" in table


def test_bar_lengths_are_proportional_to_the_values() -> None:
    width, _, rows = _decode_png(bar_chart_png("t", ["a", "b"], [2.0, 0.5]))

    def bar_length(color: tuple[int, int, int]) -> int:
        pixel = bytes(color)
        return max(sum(row[x : x + 3] == pixel for x in range(0, 3 * width, 3)) for row in rows)

    faster, slower = bar_length(FASTER), bar_length(SLOWER)
    assert faster == pytest.approx(4 * slower, abs=4)  # 2.0 vs 0.5, up to rounding and text


def test_write_report_writes_three_files(tmp_path: Path) -> None:
    paths = write_report(rows_from_pytest_benchmark(_sample()), MACHINE, tmp_path / "out")
    assert [p.name for p in paths] == ["report.md", "report.json", "speedups.png"]
    document = json.loads(paths[1].read_text())
    assert document["machine"]["cpu"] == "Test CPU"
    assert [r["speedup"] for r in document["results"]] == [None, 4.0, None, None, 0.9]
    width, height, rows = _decode_png(paths[2].read_bytes())
    assert (width, height) == (900, 200)  # 9 x (1.2 + 0.4 a bar) inches at 100 dpi; 2 bars
    assert len({row for row in rows}) > 20  # not blank: bars, labels, axes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)


def test_chart_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match="2 labels for 1 values"):
        bar_chart_png("t", ["a", "b"], [1.0])


FAKE_BENCHES = """
import time


def test_slow(benchmark):
    benchmark.group = "sleep"
    benchmark.extra_info.update(variant="slow", role="reference")
    benchmark.pedantic(time.sleep, args=(0.02,), rounds=3)


def test_fast(benchmark):
    benchmark.group = "sleep"
    benchmark.extra_info.update(variant="fast", role="candidate")
    benchmark.pedantic(time.sleep, args=(0.005,), rounds=3)
"""


def test_bench_command_runs_the_suite_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fbdl_fast.cli import main

    benches = tmp_path / "benches"
    benches.mkdir()
    (benches / "test_fake.py").write_text(FAKE_BENCHES)
    out = tmp_path / "report"
    assert main(["bench", "--benches", str(benches), "--output", str(out), "--", "-q"]) == 0
    document = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in document["results"]}
    assert rows["slow"]["speedup"] is None
    # The ratio of the two medians measured in that run (no assertion on the times themselves).
    expected = rows["slow"]["median_s"] / rows["fast"]["median_s"]
    assert rows["fast"]["speedup"] == pytest.approx(expected)
    assert document["machine"]["cores"] >= 1 and document["machine"]["torch"]
    assert "| sleep | fast |" in capsys.readouterr().out
    assert (out / "speedups.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_command_writes_the_report_of_the_benches_that_ran_when_one_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fbdl_fast.cli import main

    benches = tmp_path / "benches"
    benches.mkdir()
    broken = "\n\ndef test_broken(benchmark):\n    benchmark(lambda: None)\n    assert False\n"
    (benches / "test_fake.py").write_text(FAKE_BENCHES + broken)
    out = tmp_path / "report"
    assert main(["bench", "--benches", str(benches), "--output", str(out), "--", "-q"]) == 1
    variants = {r["variant"] for r in json.loads((out / "report.json").read_text())["results"]}
    assert {"slow", "fast"} <= variants
    assert "the report holds the" in capsys.readouterr().err


def test_interleaved_medians_time_each_step_in_turns() -> None:
    from fbdl_fast.reports.speed import interleaved_medians

    order: list[str] = []
    medians = interleaved_medians(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1
    )
    assert order == ["a", "b"] * 4  # one warm-up turn, then three timed turns
    assert set(medians) == {"a", "b"} and all(m >= 0 for m in medians.values())


# ----------------------------------------------------------------------------- evaluation


def check_png(data: bytes, size: tuple[int, int]) -> None:
    """A PNG of `size` pixels with a picture in it: many colours, over 3% of it not white."""
    width, height, _ = _decode_png(data)
    assert (width, height) == size
    image = Image.open(io.BytesIO(data)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    white = sum(n for n, rgb in colours if rgb == (255, 255, 255))
    assert white < 0.97 * width * height


def _logits(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g)
    logits[torch.arange(n), labels] += 1.0
    return 3 * logits, labels


def test_evaluation_matches_scikit_learn_classification_report() -> None:
    from sklearn.metrics import classification_report

    logits, labels = _logits(400, 5, seed=1)
    names = ["neg", "neu", "pos", "spam", "other"]
    report = evaluate_logits(logits, labels, names).to_dict()
    expected = classification_report(
        labels.numpy(), logits.argmax(1).numpy(), target_names=names, output_dict=True
    )
    for row in report["per_class"]:
        theirs = expected[row["label"]]
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx(
            [theirs["precision"], theirs["recall"], theirs["f1-score"]], abs=1e-12
        )
        assert row["support"] == theirs["support"]
    for ours, key in ((report["macro_avg"], "macro avg"), (report["weighted_avg"], "weighted avg")):
        theirs = expected[key]
        assert [ours["precision"], ours["recall"], ours["f1"]] == pytest.approx(
            [theirs["precision"], theirs["recall"], theirs["f1-score"]], abs=1e-12
        )
    assert report["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    counts = torch.tensor(report["confusion_matrix"]["counts"])
    assert counts.sum() == 400 and counts.sum(dim=1).tolist() == [
        r["support"] for r in report["per_class"]
    ]
    pairs = report["confused_pairs"]
    assert len(pairs) == 10 and pairs[0]["count"] == counts.fill_diagonal_(0).max()
    assert pairs[0]["share_of_true"] == pytest.approx(
        pairs[0]["count"] / expected[pairs[0]["true"]]["support"]
    )
    json.dumps(report, allow_nan=False)  # valid JSON: no NaN


def test_evaluation_calibration_before_and_after() -> None:
    from fbdl_fast.calibration import expected_calibration_error, nll

    logits, labels = _logits(300, 4, seed=2)
    plain = evaluate_logits(logits, labels, list("abcd")).to_dict()["calibration"]
    assert plain["temperature"] is None and plain["ece_after"] is None
    assert plain["ece_before"] == pytest.approx(
        expected_calibration_error(torch.softmax(logits.double(), 1), labels), abs=1e-12
    )
    report = evaluate_logits(logits, labels, list("abcd"), temperature=2.0).to_dict()
    calibrated = report["calibration"]
    assert calibrated["ece_before"] == plain["ece_before"]
    assert calibrated["ece_after"] == pytest.approx(
        expected_calibration_error(torch.softmax(logits.double() / 2, 1), labels), abs=1e-12
    )
    assert report["ece"] == calibrated["ece_after"]  # what predict's probabilities score
    assert calibrated["nll_after"] == pytest.approx(nll(logits, labels, 2.0), abs=1e-12)
    assert sum(calibrated["reliability_after"]["counts"]) == 300


def test_many_classes_give_the_confusion_as_non_zero_cells() -> None:
    logits, labels = _logits(500, 150, seed=3)
    evaluation = evaluate_logits(logits, labels, [f"c{i}" for i in range(150)])
    confusion = evaluation.to_dict()["confusion_matrix"]
    assert confusion["counts"] is None
    dense = torch.zeros(150, 150, dtype=torch.long)
    for true, predicted, count in confusion["nonzero"]:
        dense[true, predicted] = count
    assert torch.equal(dense, evaluation.confusion())
    assert "confusion matrix: 150 classes, in --json and --report" in evaluation.text()
    # The heat map: the 40 classes with the most posts, in class order.
    shown = evaluation.heatmap_classes()
    assert shown is not None and len(shown) == 40 and shown == sorted(shown)
    support = evaluation.scores.support
    assert support[shown].min() >= max(s for i, s in enumerate(support.tolist()) if i not in shown)
    assert torch.equal(evaluation.confusion(shown), evaluation.confusion()[shown][:, shown])


def test_evaluation_text_and_markdown_by_hand() -> None:
    # 3 posts of "a" (2 right), 1 of "b" (right): a's recall 2/3, b's precision 1/2.
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    evaluation = evaluate_logits(logits, torch.tensor([0, 0, 0, 1]), ["a", "b"])
    text = evaluation.text()
    assert "\na                1.0000  0.6667  0.8000        3\n" in text
    assert "\nb                0.5000  1.0000  0.6667        1\n" in text
    assert "\nmacro avg        0.7500  0.8333  0.7333        4\n" in text
    assert "a -> b: 1 (33.3% of a)" in text
    markdown = evaluation.markdown()
    assert "| a | 1.0000 | 0.6667 | 0.8000 | 3 |" in markdown
    assert "| a | 2 (67%) | 1 (33%) |" in markdown
    assert "| b | 0 (0%) | 1 (100%) |" in markdown


def test_evaluation_writes_the_report_and_two_pictures(tmp_path: Path) -> None:
    logits, labels = _logits(300, 4, seed=4)
    evaluation = evaluate_logits(logits, labels, ["neg", "neu", "pos", "spam"], temperature=1.7)
    paths = evaluation.write(tmp_path / "new" / "report", title="Evaluation of tiny")
    assert [p.name for p in paths] == ["report.md", "confusion.png", "reliability.png"]
    text = paths[0].read_text()
    assert (
        text.startswith("# Evaluation of tiny\n") and "![confusion matrix](confusion.png)" in text
    )
    check_png(paths[1].read_bytes(), (590, 470))  # 4 classes: (4.7 + 1.2) x 4.7 in, 100 dpi
    check_png(paths[2].read_bytes(), (1040, 540))  # two panels: before and after


def test_confusion_heat_map_colours_are_the_row_shares() -> None:
    counts = [[8, 2, 0], [1, 1, 0], [0, 0, 0]]
    figure = confusion_figure(counts, ["x", "y", "z"])
    shares = figure.axes[0].images[0].get_array()
    assert shares.tolist() == [[0.8, 0.2, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]
    texts = {t.get_text() for t in figure.axes[0].texts}
    assert {"8\n80%", "2\n20%", "1\n50%", "0\n0%"} <= texts  # zero off the diagonal: no text
    with pytest.raises(ValueError, match="square matrix, one row per name"):
        confusion_figure(counts, ["x", "y"])


def test_reliability_diagram_bars_are_the_bin_accuracies() -> None:
    from fbdl_fast.calibration import reliability

    rel = reliability(
        torch.tensor([0.95, 0.95, 0.55, 0.4], dtype=torch.float64),
        torch.tensor([True, False, True, True]),
    )
    figure = reliability_figure(rel)
    bars = figure.axes[0].containers[0]  # accuracy bars, filled bins only
    assert sorted(round(b.get_height(), 6) for b in bars) == [0.5, 1.0, 1.0]
    assert "ECE" in figure.axes[0].get_title()


def test_curves_plot_the_history_and_mark_the_best_epoch(tmp_path: Path) -> None:
    from fbdl_fast.training.trainer import History

    history = History(
        train_losses=[1.2, 0.8, 0.6],
        val_losses=[1.0, 0.7, 0.75],
        train_accs=[0.5, 0.7, 0.8],
        val_accs=[0.55, 0.72, 0.7],
        val_f1s=[0.5, 0.7, 0.69],
        learning_rates=[1e-3, 5e-4, 1e-4],
        epoch_times=[1.0, 1.1, 1.0],
        skipped_steps=[0, 0, 0],
        best_epoch=2,
        best_val_loss=0.7,
    )
    figure = curves_figure(history, "tiny")
    loss, acc, f1, lr = figure.axes
    lines = {line.get_label(): line for line in loss.get_lines()}
    assert list(lines["train"].get_ydata()) == history.train_losses
    assert list(lines["validation"].get_ydata()) == history.val_losses
    assert list(lines["best epoch 2"].get_xdata()) == [2, 2]  # the vertical line
    assert [line.get_ydata() for line in acc.get_lines()][1].tolist() == history.val_accs
    assert f1.get_lines()[0].get_ydata().tolist() == history.val_f1s
    assert lr.get_lines()[0].get_ydata().tolist() == history.learning_rates
    paths = write_run_report(tmp_path, history, None, "Run report: tiny", "CNN", "best.pt")
    check_png(paths[1].read_bytes(), (1100, 750))
    markdown = paths[0].read_text()
    assert "| 2 (best) | 0.8000 | 0.7000 | 0.7000 | 0.7200 | 0.7000 | 0.0005 | 1.1 |" in markdown
    assert "best epoch 2 of 3 (lowest validation loss)" in markdown


def test_a_diverged_run_still_gets_its_curves_and_a_clear_error(tmp_path: Path) -> None:
    from fbdl_fast.training.trainer import History

    nan = float("nan")
    history = History(
        train_losses=[1.0, nan],
        val_losses=[nan, nan],
        train_accs=[0.4, 0.25],
        val_accs=[0.25, 0.25],
        val_f1s=[0.1, 0.1],
        learning_rates=[1e-3, 1e-3],
        epoch_times=[1.0, 1.0],
        skipped_steps=[0, 3],
    )
    paths = write_run_report(tmp_path, history, None, "Run report: nan", "CNN", "last.pt")
    assert "2 epochs, none with a finite validation loss" in paths[0].read_text()
    check_png(paths[1].read_bytes(), (1100, 750))
    logits = torch.tensor([[0.0, 1.0], [nan, 0.0], [math.inf, 0.0]])
    with pytest.raises(ValueError, match="NaN or infinite values for 2 of 3 posts"):
        evaluate_logits(logits, torch.tensor([0, 1, 0]), ["a", "b"])
