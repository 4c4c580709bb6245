"""What users look at, through the command line: `train` writes report.md and curves.png,
`train --calibrate` stores a temperature that `predict` applies, `evaluate` shows the per-class
table, the confusion matrix, the confused pairs and the ECE before and after, in text, --json
and --report DIR."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from fbdl_fast.cli import main
from test_report import check_png
from tiny_run import make_run, tiny_model_args, write_posts_csv

LABELS = ["negative", "neutral", "positive", "spam"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(posts CSV, run folder) of a tiny CNN trained for 3 epochs with --calibrate."""
    root = tmp_path_factory.mktemp("reports")
    data = write_posts_csv(root / "posts.csv", 240, seed=1)
    run = root / "run"
    argv = ["train", "--data", str(data), "--output", str(run), "--epochs", "3", "--calibrate"]
    assert main([*argv, "--lr", "5e-3", *tiny_model_args(), "--quiet"]) == 0
    return data, run


def _validation(data: Path, run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits and labels of the run's best.pt on its validation posts, split as train did."""
    from fbdl_fast.data import load_posts, split_posts
    from fbdl_fast.training.loading import load_run

    loaded = load_run(run, device="cpu")
    _, val = split_posts(load_posts(data, "text", "label"), 0.1, 42)
    ids = loaded.label_map.encode_all(val)
    logits, labels, _ = loaded.trainer.outputs(loaded.loader(val.texts, ids, 32))
    assert labels is not None
    return logits, labels


def test_train_writes_report_and_curves(calibrated: tuple[Path, Path]) -> None:
    _, run = calibrated
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    report = (run / "report.md").read_text()
    best_epoch = max(entry["epoch"] for entry in log if entry["best"])
    for entry in log:
        best = " (best)" if entry["epoch"] == best_epoch else ""
        row = (
            f"| {entry['epoch']}{best} | {entry['train_loss']:.4f} | {entry['val_loss']:.4f} | "
            f"{entry['train_acc']:.4f} | {entry['val_acc']:.4f} | {entry['val_f1']:.4f} | "
        )
        assert row in report
    assert "## Validation posts, best.pt" in report and "![curves](curves.png)" in report
    for label in LABELS:  # the per-class table of the validation posts
        assert re.search(rf"^\| {label} \| [01]\.\d{{4}} \| [01]\.\d{{4}} \| ", report, re.M)
    check_png((run / "curves.png").read_bytes(), (1100, 750))


def test_calibrate_fits_the_validation_posts_and_stores_the_temperature(
    calibrated: tuple[Path, Path],
) -> None:
    from fbdl_fast.calibration import fit_temperature
    from fbdl_fast.checkpoint import load_checkpoint

    data, run = calibrated
    stored = load_checkpoint(run / "best.pt")["calibration"]
    fit = fit_temperature(*_validation(data, run))
    assert stored["temperature"] == pytest.approx(fit.temperature, rel=1e-9)
    assert stored["temperature"] != 1.0 and stored["nll_after"] < stored["nll_before"]
    assert stored["num_samples"] == 24  # 10% of 240 posts
    assert "calibration" not in load_checkpoint(run / "last.pt")  # fitted for best.pt only
    report = (run / "report.md").read_text()
    assert f"with temperature {stored['temperature']:.4g}" in report


def test_predict_applies_the_temperature(calibrated: tuple[Path, Path]) -> None:
    from fbdl_fast.checkpoint import load_checkpoint
    from fbdl_fast.data import loader_order
    from fbdl_fast.training.loading import load_run

    _, run = calibrated
    out = run.parent / "predictions.jsonl"
    texts = ["free prize!!! click https://bit.ly/x", "so sad today :("]
    argv = ["predict", "--run", str(run), "--text", texts[0], "--text", texts[1]]
    assert main([*argv, "--output", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    loaded = load_run(run, device="cpu")
    loader = loaded.loader(texts, None, 8)
    sorted_logits, _, _ = loaded.trainer.outputs(loader)
    logits = torch.empty_like(sorted_logits)
    logits[loader_order(loader)] = sorted_logits  # the loader sorts by length
    temperature = load_checkpoint(run / "best.pt")["calibration"]["temperature"]
    expected = torch.softmax(logits.double() / temperature, dim=1)
    raw = torch.softmax(logits.double(), dim=1)
    for row, probs, plain in zip(rows, expected, raw):
        got = torch.tensor([row["probabilities"][label] for label in LABELS], dtype=torch.float64)
        torch.testing.assert_close(got, probs, atol=2e-6, rtol=0)  # written rounded to 1e-6
        assert not torch.allclose(got, plain, atol=1e-3)  # not the uncalibrated ones


def _reference_ece(confidence: list[float], correct: list[bool], bins: int = 15) -> float:
    total = 0.0
    for b in range(bins):
        inside = [
            i for i, c in enumerate(confidence) if (b == 0 or c > b / bins) and c <= (b + 1) / bins
        ]
        if inside:
            accuracy = sum(correct[i] for i in inside) / len(inside)
            mean = sum(confidence[i] for i in inside) / len(inside)
            total += len(inside) / len(confidence) * abs(accuracy - mean)
    return total


def test_evaluate_json_holds_everything(
    calibrated: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.metrics import classification_report, confusion_matrix

    data, run = calibrated
    out = run.parent / "all.jsonl"
    assert main(["predict", "--run", str(run), "--data", str(data), "--output", str(out)]) == 0
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    truth = [row["label"] for row in _rows(data)]
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    predicted = [row["label"] for row in predictions]
    expected = classification_report(truth, predicted, labels=LABELS, output_dict=True)
    for row in report["per_class"]:
        theirs = expected[row["label"]]
        assert [row["precision"], row["recall"], row["f1"], row["support"]] == pytest.approx(
            [theirs["precision"], theirs["recall"], theirs["f1-score"], theirs["support"]]
        )
    assert (
        report["confusion_matrix"]["counts"]
        == confusion_matrix(truth, predicted, labels=LABELS).tolist()
    )
    assert report["confusion_matrix"]["normalized"][0] == pytest.approx(
        [
            n / sum(report["confusion_matrix"]["counts"][0])
            for n in report["confusion_matrix"]["counts"][0]
        ]
    )
    mistakes = Counter((t, p) for t, p in zip(truth, predicted) if t != p)
    ranked = sorted(
        mistakes.items(), key=lambda m: (-m[1], LABELS.index(m[0][0]), LABELS.index(m[0][1]))
    )
    assert [(r["true"], r["predicted"], r["count"]) for r in report["confused_pairs"]] == [
        (t, p, n) for (t, p), n in ranked[:10]
    ]
    calibration = report["calibration"]
    assert calibration["bins"] == 15 and calibration["temperature"] > 0
    # ECE after: of the (calibrated) probabilities predict wrote, computed here by hand.
    confidence = [row["probability"] for row in predictions]
    correct = [t == p for t, p in zip(truth, predicted)]
    assert calibration["ece_after"] == pytest.approx(_reference_ece(confidence, correct), abs=1e-4)
    assert report["ece"] == calibration["ece_after"]
    assert calibration["ece_before"] != calibration["ece_after"]


def _rows(data: Path) -> list[dict[str, str]]:
    with open(data, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_evaluate_prints_the_tables_and_writes_the_report(
    calibrated: tuple[Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, run = calibrated
    folder = tmp_path / "eval"
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--report", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"^class +precision +recall +f1 +support$", out, re.M)
    for label in LABELS:
        assert re.search(
            rf"^{label} +[01]\.\d{{4}} +[01]\.\d{{4}} +([01]\.\d{{4}}|-) +\d+$", out, re.M
        )
    assert "confusion matrix (rows: true class, columns: predicted)" in out
    assert "row-normalised (share of each true class)" in out
    assert re.search(r"^calibration: ECE \d\.\d{4} -> \d\.\d{4} with temperature ", out, re.M)
    assert f"report written to {folder}: report.md, confusion.png, reliability.png" in err
    assert "## Per class" in (folder / "report.md").read_text()
    check_png((folder / "confusion.png").read_bytes(), (590, 470))
    check_png((folder / "reliability.png").read_bytes(), (1040, 540))


def test_evaluate_an_uncalibrated_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run")
    data = write_posts_csv(tmp_path / "posts.csv", 60, seed=2)
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json"]) == 0
    calibration = json.loads(capsys.readouterr().out)["calibration"]
    assert calibration["temperature"] is None and calibration["ece_after"] is None
    assert 0 <= calibration["ece_before"] <= 1
    assert main(["evaluate", "--run", str(run), "--data", str(data)]) == 0
    assert "no temperature in the checkpoint" in capsys.readouterr().out


def test_a_model_giving_nan_keeps_its_run_without_a_per_class_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fbdl_fast.checkpoint import load_checkpoint
    from fbdl_fast.training.trainer import Trainer

    real = Trainer.outputs

    def diverged(self: Trainer, loader: object) -> tuple[torch.Tensor, torch.Tensor, float]:
        logits, labels, loss = real(self, loader)  # type: ignore[arg-type]
        return logits.fill_(float("nan")), labels, loss  # type: ignore[return-value]

    monkeypatch.setattr(Trainer, "outputs", diverged)
    data = write_posts_csv(tmp_path / "posts.csv", 80, seed=3)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(run), "--epochs", "1", "--calibrate"]
    assert main([*argv, *tiny_model_args(), "--quiet"]) == 0
    assert (
        "best.pt gives NaN or infinite logits on validation posts: no per-class report and "
        "no calibration" in capsys.readouterr().err
    )
    assert "## Validation posts" not in (run / "report.md").read_text()
    check_png((run / "curves.png").read_bytes(), (1100, 750))
    assert "calibration" not in load_checkpoint(run / "best.pt")


def test_a_multi_label_run_gets_its_curves_and_per_epoch_report(tmp_path: Path) -> None:
    from tiny_run import MULTI_LABEL_TRAIN as TRAIN
    from tiny_run import multi_label_posts_jsonl

    data = multi_label_posts_jsonl(tmp_path / "posts.jsonl", n=80)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--output", str(run), *TRAIN, "--epochs", "2"]
    assert main([*argv, "--multi-label"]) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    report = (run / "report.md").read_text()
    assert f"| 2{' (best)' if log[1]['best'] else ''} | {log[1]['train_loss']:.4f} | " in report
    assert "several labels a post" in report and "### Per class" not in report
    check_png((run / "curves.png").read_bytes(), (1100, 750))
