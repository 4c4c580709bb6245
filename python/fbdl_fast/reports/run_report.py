"""The run report `fbdl-fast train` leaves in the run folder: report.md and curves.png.

The per-epoch figures, the best epoch, and the evaluation (`fbdl_fast.reports.evaluation`) of the
chosen checkpoint on the validation posts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from fbdl_fast.files import write_atomic

if TYPE_CHECKING:
    from fbdl_fast.training.trainer import History


from fbdl_fast.reports.evaluation import Evaluation, markdown_table_lines

# ====================
# Run report: report.md and curves.png in the run folder
# ====================

RUN_REPORT, RUN_CURVES = "report.md", "curves.png"


def _learning_rate(value: float) -> str:
    """A learning rate as the table shows it; NaN, no learning rate (the convex n-gram fit's
    one epoch), as a dash."""
    return "—" if math.isnan(value) else f"{value:.3g}"


def run_markdown(
    history: History,
    evaluation: Optional[Evaluation],
    title: str,
    description: str,
    checkpoint: str,
) -> str:
    """report.md of a run: summary, curves, the per-epoch table, the validation evaluation."""
    best = history.best_epoch
    stopped = ", stopped early" if history.stopped_early else ""
    best_text = (
        f"best epoch {best} of {history.epochs} ({history.best_rule}){stopped}"
        if best is not None
        else f"{history.epochs} epochs, none with a finite validation loss"
    )
    out = [f"# {title}", "", f"{description}; {best_text}.", "", f"![curves]({RUN_CURVES})", ""]
    out += ["## Per epoch", ""]
    rows = []
    for i in range(history.epochs):
        rows.append(
            [
                f"{i + 1}{' (best)' if best == i + 1 else ''}",
                f"{history.train_losses[i]:.4f}",
                f"{history.val_losses[i]:.4f}",
                f"{history.train_accs[i]:.4f}",
                f"{history.val_accs[i]:.4f}",
                f"{history.val_f1s[i]:.4f}",
                _learning_rate(history.learning_rates[i]),
                f"{history.epoch_times[i]:.1f}",
            ]
        )
    out += markdown_table_lines(
        [
            "epoch",
            "train loss",
            "val loss",
            "train acc",
            "val acc",
            "val macro-F1",
            "learning rate",
            "time (s)",
        ],
        rows,
        right=list(range(1, 8)),
    )
    if evaluation is not None:
        out += [
            "",
            f"## Validation posts, {checkpoint}",
            "",
            f"Accuracy {evaluation.accuracy:.4f}, macro-F1 {evaluation.macro_f1:.4f}, ECE "
            f"{evaluation.ece:.4f}{' (calibrated)' if evaluation.calibrated else ''}.",
            "",
            evaluation.markdown("###"),
        ]
    return "\n".join(out).rstrip("\n") + "\n"


def add_report_line(run_dir: Path, line: str) -> Path:
    """Add `line` to the run's report.md as a paragraph of its own, right after the summary
    (the first paragraph below the title): what is known of a run once its report is written,
    such as the n-gram baseline fitted beside it (training.ngram_baseline)."""
    path = run_dir / RUN_REPORT
    title, summary, rest = [*path.read_text(encoding="utf-8").split("\n\n", 2), "", ""][:3]
    write_atomic(path, "\n\n".join([title, summary, line, rest]).rstrip("\n") + "\n")
    return path


def write_run_report(
    run_dir: Path,
    history: History,
    evaluation: Optional[Evaluation],
    title: str,
    description: str,
    checkpoint: str,
) -> list[Path]:
    """Write report.md and curves.png into the run folder (each atomically)."""
    from fbdl_fast.reports.chart import curves_figure, png

    paths = [run_dir / RUN_REPORT, run_dir / RUN_CURVES]
    write_atomic(paths[0], run_markdown(history, evaluation, title, description, checkpoint))
    write_atomic(paths[1], png(curves_figure(history, title)))
    return paths
