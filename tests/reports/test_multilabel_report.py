"""A multi-label run's evaluation report: `fbdl-fast evaluate --report DIR` and the library's
`run.evaluate(data).details.write(DIR)` write report.md (the overall figures, and per class the
threshold, precision, recall, F1 and support), per_class.png (F1 and support) and
thresholds.png (F1 against each class's threshold), as one set, as the single-label report is
written; every PNG is opened and checked for its size and that it is not blank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fbdl_fast.checkpoint import load_checkpoint
from fbdl_fast.cli import main
from fbdl_fast.data import LabelMap, load_posts
from fbdl_fast.reports.multilabel_report import REPORT_FILES, multilabel_details
from fbdl_fast.training.loading import MultiLabelEvaluation, load_run
from test_escaping import MARKUP, NAMES, _cells, _literal, _unescaped
from test_report import check_png
from tiny_run import MULTI_LABEL_TRAIN, multi_label_posts_jsonl

LABELS = ["negative", "spam", "sport"]  # the tiny run's classes, in class order
# per_class.png: 10 x (1.5 + 0.35 a class) inches; thresholds.png: 4 panels a row, each 3.2 x
# 2.6 inches, plus 0.6 x 1.0; at 100 dpi.
BARS_SIZE, CURVES_SIZE = (1000, 255), (1020, 360)
# overall figures for details built in a test (report.md prints them as given)
FIGURES = {"loss": 0.5, "subset_accuracy": 0.5, "micro_f1": 0.5, "macro_f1": 0.5, "hamming_loss": 0}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(posts JSONL, run folder) of a tiny CNN trained 3 epochs with --multi-label
    --tune-thresholds on 160 posts of three labels."""
    root = tmp_path_factory.mktemp("multilabel_report")
    data = multi_label_posts_jsonl(root / "posts.jsonl")
    run = root / "run"
    argv = ["train", "--data", str(data), "--output", str(run), *MULTI_LABEL_TRAIN, "--epochs", "3"]
    assert main([*argv, "--multi-label", "--tune-thresholds"]) == 0
    return data, run


def _table(report: str, heading: str) -> list[list[str]]:
    """The rows (cells as text) of the markdown table under `heading`, header and rule left out."""
    section = report.split(f"{heading}\n", 1)[1].split("\n## ", 1)[0]
    return [_cells(line) for line in section.splitlines() if line.startswith("|")][2:]


def _evaluate(run: Path, data: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_report_holds_the_thresholds_and_the_figures_of_evaluate_json(
    tuned: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """evaluate --report DIR on a multi-label run exits 0 and writes report.md whose per-class
    table holds each class's stored threshold and the precision, recall, F1 and support of
    predict's label sets (scikit-learn's), the same as --json's per_class; the micro and macro
    rows and the overall table are --json's figures; both PNGs are pictures."""
    from sklearn.metrics import precision_recall_fscore_support

    data, run = tuned
    folder = tmp_path / "eval"
    figures = _evaluate(run, data, capsys, "--report", str(folder))
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert report.startswith(f"# Evaluation of run (best.pt) on {data.name}\n")
    stored = load_checkpoint(run / "best.pt")["thresholds"]
    assert stored != [0.5] * 3  # tuned: the test tells them from the default
    assert "tuned on the validation posts" in report

    # predict's label sets at the stored thresholds, scored by scikit-learn
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", "--run", str(run), "--data", str(data), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    truth = LabelMap(LABELS).multi_hot(load_posts(data, label_separator="|")).astype(int)
    pred = np.array([[name in row["labels"] for name in LABELS] for row in rows]).astype(int)
    precision, recall, f1, support = precision_recall_fscore_support(truth, pred, zero_division=0)
    table = _table(report, "## Per class")
    assert [row[0] for row in table] == [*LABELS, "micro avg", "macro avg"]
    for i, (row, per_class) in enumerate(zip(table, figures["per_class"])):
        assert float(row[1]) == stored[i] == per_class["threshold"]
        expected = [precision[i], recall[i], f1[i]]
        assert [float(v) for v in row[2:5]] == pytest.approx(expected, abs=5e-5)
        assert [per_class[k] for k in ("precision", "recall", "f1")] == pytest.approx(expected)
        assert int(row[5]) == support[i] == per_class["support"]
        assert int(row[6]) == pred[:, i].sum() == per_class["predicted"]
    assert float(table[-2][4]) == pytest.approx(figures["micro_f1"], abs=5e-5)
    assert float(table[-1][4]) == pytest.approx(figures["macro_f1"], abs=5e-5)
    overall = {row[0].split(" (")[0]: float(row[1]) for row in _table(report, "## Overall")}
    assert overall == pytest.approx(
        {
            "loss": figures["loss"],
            "subset accuracy": figures["subset_accuracy"],
            "micro-F1": figures["micro_f1"],
            "macro-F1": figures["macro_f1"],
            "Hamming loss": figures["hamming_loss"],
        },
        abs=5e-5,
    )
    check_png((folder / "per_class.png").read_bytes(), BARS_SIZE)
    check_png((folder / "thresholds.png").read_bytes(), CURVES_SIZE)


def test_library_writes_the_cli_report(
    tuned: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """load_run(run).evaluate(data) of a multi-label run carries the report: details.write
    gives the CLI's report.md byte for byte, and the two PNGs."""
    data, run = tuned
    cli = tmp_path / "cli"
    argv = ["evaluate", "--run", str(run), "--data", str(data), "--report", str(cli)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"report written to {cli}: report.md, per_class.png, thresholds.png" in err
    result = load_run(run, device="cpu").evaluate(data)
    assert isinstance(result, MultiLabelEvaluation)
    library = tmp_path / "library"
    title = f"Evaluation of run (best.pt) on {data.name}"
    assert result.details.write(library, title) == [library / name for name in REPORT_FILES]
    assert (library / "report.md").read_bytes() == (cli / "report.md").read_bytes()
    check_png((library / "per_class.png").read_bytes(), BARS_SIZE)
    check_png((library / "thresholds.png").read_bytes(), CURVES_SIZE)


def test_report_into_the_run_folder_and_never_over_a_users_files(
    tuned: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--report RUN writes into RUN/evaluation (the run's own report.md is kept); a folder
    holding a file of the user's is refused in one line and left as it was; an earlier report
    folder, single-label or multi-label, is replaced by the new set."""
    data, run = tuned
    own = (run / "report.md").read_bytes()
    argv = ["evaluate", "--run", str(run), "--data", str(data), "--report"]
    assert main([*argv, str(run)]) == 0
    assert sorted(p.name for p in (run / "evaluation").iterdir()) == sorted(REPORT_FILES)
    assert (run / "report.md").read_bytes() == own
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main([*argv, str(users)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files of its own (notes.txt)" in err
    assert [p.name for p in users.iterdir()] == ["notes.txt"]
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for name in ("report.md", "confusion.png", "reliability.png"):  # a single-label report
        (earlier / name).write_text("old")
    assert main([*argv, str(earlier)]) == 0
    assert sorted(p.name for p in earlier.iterdir()) == sorted(REPORT_FILES)


def test_untuned_thresholds_are_reported_as_the_default(
    tuned: tuple[Path, Path], tmp_path: Path
) -> None:
    """A run without tuned thresholds: report.md says so and each class's threshold is 0.5."""
    data, run = tuned
    loaded = load_run(run, device="cpu")
    loaded.trainer.thresholds = None  # as a run trained without --tune-thresholds
    loaded.evaluate(data).details.write(tmp_path / "untuned")
    report = (tmp_path / "untuned" / "report.md").read_text(encoding="utf-8")
    assert "this run's thresholds were not tuned" in report
    assert [row[1] for row in _table(report, "## Per class")[:3]] == ["0.5"] * 3


def test_threshold_curves_are_f1_at_each_threshold() -> None:
    """details.curves(): each class's F1 when it is predicted at probability >= t, for t in
    0.01 .. 0.99, equals scikit-learn's; at the class's threshold it is the table's F1."""
    from sklearn.metrics import f1_score

    g = torch.Generator().manual_seed(3)
    targets = (torch.rand(200, 4, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.0])).float()
    logits = torch.randn(200, 4, generator=g) + 2 * (targets - 0.5)
    thresholds = [0.3, 0.45, 0.5, 0.7]
    names = ["a", "b", "c", "never true"]
    details = multilabel_details(logits, targets, names, thresholds, FIGURES)
    grid, curves = details.curves()
    assert len(grid) == 99 and grid[0] == 0.01 and grid[-1] == 0.99
    probs = torch.sigmoid(logits)
    for t in (0.01, 0.3, 0.45, 0.5, 0.7, 0.93):
        j = grid.index(t)
        for c in range(3):
            expected = f1_score(targets[:, c], probs[:, c] >= t, zero_division=0)
            assert curves[c, j].item() == pytest.approx(expected), (t, c)
    for c, t in enumerate(thresholds):
        torch.testing.assert_close(curves[c, grid.index(t)], details.scores.f1[c], equal_nan=True)
    # a class never true: F1 0 where something is predicted, undefined where nothing is
    predicted_any = (probs[:, 3][:, None] >= torch.tensor(grid)).any(0)
    assert (curves[3][predicted_any] == 0).all() and curves[3][~predicted_any].isnan().all()


def test_many_classes_chart_the_most_supported_and_say_so(tmp_path: Path) -> None:
    """25 classes: report.md's table holds all 25, the threshold curves show the 20 with the
    most support (a 4 x 5 grid) and report.md says which; the bars show all 25."""
    g = torch.Generator().manual_seed(5)
    rates = torch.linspace(0.02, 0.5, 25)[torch.randperm(25, generator=g)]
    targets = (torch.rand(300, 25, generator=g) < rates).float()
    logits = torch.randn(300, 25, generator=g) + 2.5 * (targets - 0.5)
    names = [f"class {i}" for i in range(25)]
    details = multilabel_details(logits, targets, names, [0.5] * 25, FIGURES)
    shown = details.most_supported(20)
    support = targets.sum(0)
    left_out = [i for i in range(25) if i not in shown]
    assert len(shown) == 20 and support[shown].min() >= support[left_out].max()
    details.write(tmp_path / "many")
    report = (tmp_path / "many" / "report.md").read_text(encoding="utf-8")
    assert len(_table(report, "## Per class")) == 25 + 2
    assert "The threshold curves show the 20 classes with the most support, of 25." in report
    assert "F1 and support bars show" not in report  # every class has its bar
    check_png((tmp_path / "many" / "thresholds.png").read_bytes(), (1340, 1400))
    check_png((tmp_path / "many" / "per_class.png").read_bytes(), (1000, 1025))


def test_labels_holding_markup_show_as_text(tmp_path: Path) -> None:
    """Class names holding HTML or markdown: in report.md's per-class table each is escaped (no
    unescaped markup character, one column per cell, no heading of its own) and reads back as
    written; the charts draw them (a "$" would start matplotlib's math mode)."""
    g = torch.Generator().manual_seed(1)
    targets = (torch.rand(60, len(NAMES), generator=g) < 0.4).float()
    logits = torch.randn(60, len(NAMES), generator=g) + 2 * (targets - 0.5)
    details = multilabel_details(logits, targets, NAMES, [0.5] * len(NAMES), FIGURES)
    details.write(tmp_path / "marked", "labels")
    report = (tmp_path / "marked" / "report.md").read_text(encoding="utf-8")
    lines = report.splitlines()
    assert [line for line in lines if line.startswith("#")] == [
        "# labels",
        "## Overall",
        "## Per class",
    ]
    for line in (line for line in lines if line.startswith("|")):
        cells = _unescaped(line).strip("|").split("|")  # unescaped pipes alone split cells
        assert len(cells) in (2, 7), line  # overall; per class
        assert len(_cells(line)) == len(cells), line
        for cell in _cells(line):
            assert not MARKUP & set(_unescaped(cell)), cell
    names = [_literal(row[0]) for row in _table(report, "## Per class")]
    assert names == [*NAMES, "micro avg", "macro avg"]
    check_png((tmp_path / "marked" / "per_class.png").read_bytes(), (1000, 360))
