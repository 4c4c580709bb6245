"""Labels are the user's text: in report.md (an evaluation's markdown, a run's report) a label
holding HTML or markdown shows as written, it does not become markup, a heading or a column."""

from __future__ import annotations

import re

import torch

from fbdl_fast.reports.evaluation import evaluate_logits
from fbdl_fast.reports.run_report import run_markdown
from fbdl_fast.training.trainer import History

NAMES = ["<b>x</b>", "a|b", "**y**", "# h", "- z", "[l](http://e.x) $m$ `c` ~~s~~ &amp; \\"]
# Characters that would be markup if a label's text held them unescaped.
MARKUP = set("<>|*#[]`~$&\\")


def _unescaped(text: str) -> str:
    """`text` with every backslash-escaped character (a literal) removed."""
    return re.sub(r"\\.", "", text)


def _literal(text: str) -> str:
    """What markdown shows for `text` holding backslash escapes only."""
    return re.sub(r"\\(.)", r"\1", text)


def _cells(line: str) -> list[str]:
    """A table line's cells, split at its unescaped pipes only, stripped."""
    return [cell.strip() for cell in re.findall(r"(?:\\.|[^|\\])+", line.strip().strip("|"))]


def _evaluation():  # type: ignore[no-untyped-def]
    """Every post of class i predicted as class i + 1 (mod 6), one right a class: each label
    appears in the tables and in the confused pairs."""
    labels = torch.arange(6).repeat(2)
    preds = torch.cat([torch.arange(6), (torch.arange(6) + 1) % 6])
    logits = torch.nn.functional.one_hot(preds, 6).float() * 5
    return evaluate_logits(logits, labels, NAMES)


def _check_report(md: str, headings: list[str]) -> None:
    lines = md.splitlines()
    assert [line for line in lines if line.startswith("#")] == headings
    tables = [line for line in lines if line.startswith("|")]
    assert tables
    for line in tables:
        cells = _unescaped(line).strip("|").split("|")  # unescaped pipes alone split cells
        assert len(cells) in (5, 7, 8), line  # per class; confusion matrix; per epoch
        assert len(_cells(line)) == len(cells), line
        for cell in _cells(line):
            assert not MARKUP & set(_unescaped(cell)), cell
    pairs = [line for line in lines if line.startswith("- ")]
    assert len(pairs) == 6
    for line in pairs:
        body = line[2:]
        assert not body.startswith(("-", "#", "+")), line  # no nested list, no heading
        true, predicted = _unescaped(body).split(" -> ")  # the report's own arrow
        assert not MARKUP & set(true + predicted), line


def test_evaluation_markdown_shows_labels_as_text() -> None:
    """The per-class table, the confusion matrix and the confused pairs hold each label
    escaped: no unescaped markup character, one column per cell, headings only the report's,
    and each label reads back as written."""
    md = _evaluation().markdown()
    _check_report(
        md, ["## Per class", "## Confusion matrix", "## Most confused pairs", "## Calibration"]
    )
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    first_cells = [_literal(_cells(row)[0]) for row in rows]
    for name in NAMES:
        assert first_cells.count(name) == 2, (name, first_cells)  # per class, matrix row


def test_run_report_shows_labels_as_text() -> None:
    """report.md of a run whose classes are such labels: the same, within the run's sections."""
    history = History(
        train_losses=[1.0],
        val_losses=[0.9],
        train_accs=[0.5],
        val_accs=[0.5],
        val_f1s=[0.4],
        learning_rates=[1e-3],
        epoch_times=[1.0],
        skipped_steps=[0],
        best_epoch=1,
        best_val_loss=0.9,
    )
    md = run_markdown(history, _evaluation(), "run", "a test run", "best.pt")
    _check_report(
        md,
        [
            "# run",
            "## Per epoch",
            "## Validation posts, best.pt",
            "### Per class",
            "### Confusion matrix",
            "### Most confused pairs",
            "### Calibration",
        ],
    )


def test_markdown_text_reads_back_as_written() -> None:
    """Escaped text shows its characters, a line break as a space; a list or heading marker
    at the start of a line is escaped there, and numbers in cells are left as they are."""
    from fbdl_fast.reports.evaluation import markdown_text

    for name in NAMES:
        assert _literal(markdown_text(name)) == name
    assert markdown_text("a\nb") == "a b"
    assert markdown_text("- z", line_start=True) == "\\- z"
    assert markdown_text("1. z", line_start=True) == "1\\. z"
    assert markdown_text("-0.5000") == "-0.5000"
