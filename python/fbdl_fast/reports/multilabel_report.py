"""A multi-label run's evaluation report: what `fbdl-fast evaluate --report` writes for a run
trained with --multi-label.

`multilabel_details`: from a model's logits (N, C), the true label sets (multi-hot) and the
per-class thresholds, each class's precision, recall, F1 and support at its threshold, and its
F1 against the decision threshold (the threshold curves). As a dict for --json (per_class),
and for --report a markdown file plus two PNGs (REPORT_FILES): the per-class F1 and support
bars, and the threshold curves with each class's threshold marked. Written as one set, as the
single-label report (fbdl_fast.reports.evaluation) is, with its markdown helpers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbdl_fast.files import folder_atomic, write_atomic
from fbdl_fast.reports.evaluation import REPORT_FILES as SINGLE_LABEL_FILES
from fbdl_fast.reports.evaluation import markdown_table_lines

if TYPE_CHECKING:
    import torch

    from fbdl_fast.metrics import ClassScores

REPORT_FILES = ("report.md", "per_class.png", "thresholds.png")  # what --report DIR holds
# Thresholds the curves are drawn at: 0.01, 0.02, ..., 0.99 (the tuning grid is 0.05 apart).
CURVE_STEPS = 99
CURVES_MAX = 20  # threshold panels: every class up to this many, else the most supported
BARS_MAX = 40  # per-class bars: every class up to this many, else the most supported
# The overall figures, in the order report.md lists them, with their names there.
FIGURE_NAMES = {
    "loss": "loss",
    "subset_accuracy": "subset accuracy (every label of the post right)",
    "micro_f1": "micro-F1",
    "macro_f1": "macro-F1",
    "hamming_loss": "Hamming loss (share of wrong post-class pairs)",
}


@dataclass
class MultiLabelDetails:
    """A multi-label model's predictions on labelled posts, per class (`multilabel_details`)."""

    names: list[str]  # class names, index = class id
    probs: torch.Tensor  # (N, C) float32: sigmoid(logits)
    truth: torch.Tensor  # (N, C) bool: the post carries the class
    thresholds: list[float]  # per class: predicted when its probability reaches it
    tuned: bool  # the thresholds were tuned (train --tune-thresholds); else 0.5 each
    figures: dict[str, float]  # the overall figures (FIGURE_NAMES), as evaluate --json prints

    def predicted(self) -> torch.Tensor:
        """(N, C) bool: the classes whose probability reaches their threshold."""
        import torch

        return self.probs >= torch.tensor(self.thresholds, dtype=self.probs.dtype)

    def counts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(true positives, false positives, false negatives) of each class, int64 (C,)."""
        pred, true = self.predicted(), self.truth
        return (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)

    @property
    def scores(self) -> ClassScores:
        """Precision, recall, F1 (NaN: never true nor predicted) and support of each class."""
        from fbdl_fast.metrics import scores_from_counts

        return scores_from_counts(*self.counts())

    def averages(self) -> dict[str, dict[str, float]]:
        """The micro average (over every post-class pair) and the macro average (over the
        classes true or predicted at least once: the macro-F1 of evaluate --json)."""
        tp, fp, fn = (c.sum().item() for c in self.counts())
        s = self.scores
        present = ~s.f1.isnan()
        micro_f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0

        def macro(values: torch.Tensor) -> float:
            return values[present].mean().item() if present.any() else 0.0

        return {
            "micro avg": {
                "precision": tp / (tp + fp) if tp + fp else 0.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0,
                "f1": micro_f1,
            },
            "macro avg": {
                "precision": macro(s.precision),
                "recall": macro(s.recall),
                "f1": macro(s.f1),
            },
        }

    def curves(self) -> tuple[list[float], torch.Tensor]:
        """(thresholds t, F1 of each class at each t, float64 (C, T)): a class predicted when
        its probability reaches t. NaN where the class is neither true nor predicted."""
        import torch

        # from Python floats, so that a threshold of the tuning grid (0.35) is the same float
        grid = torch.tensor([round(0.01 * i, 2) for i in range(1, CURVE_STEPS + 1)])
        grid = grid.to(self.probs.dtype)
        rows = []
        for c in range(len(self.names)):
            # Posts at or above t = all - those below t (searchsorted counts them, O(N log N)).
            every = torch.sort(self.probs[:, c]).values
            positive = torch.sort(self.probs[self.truth[:, c], c]).values
            predicted = len(every) - torch.searchsorted(every, grid)
            tp = len(positive) - torch.searchsorted(positive, grid)
            fp, fn = predicted - tp, len(positive) - tp
            rows.append(2 * tp.double() / (2 * tp + fp + fn).double())
        return [round(t, 2) for t in grid.tolist()], torch.stack(rows)

    def most_supported(self, limit: int) -> list[int]:
        """Every class id up to `limit` classes, else the `limit` with the most true posts (ties:
        the lower id), in class order."""
        import torch

        support = self.truth.sum(0)
        if len(support) <= limit:
            return list(range(len(support)))
        return sorted(torch.sort(support, descending=True, stable=True).indices[:limit].tolist())

    def to_dict(self) -> dict[str, Any]:
        """The per-class figures, JSON-ready (F1 NaN as null): added to evaluate --json."""
        s, (tp, fp, _) = self.scores, self.counts()
        return {
            "per_class": [
                {
                    "label": name,
                    "threshold": self.thresholds[i],
                    "precision": s.precision[i].item(),
                    "recall": s.recall[i].item(),
                    "f1": None if s.f1[i].isnan() else s.f1[i].item(),
                    "support": int(s.support[i]),
                    "predicted": int(tp[i] + fp[i]),  # posts given the class
                }
                for i, name in enumerate(self.names)
            ]
        }

    # ------------------------------------------------------------------ markdown and files
    def threshold_line(self) -> str:
        """Where the thresholds came from, as report.md says it."""
        if self.tuned:
            return (
                "Each class is predicted when its probability reaches its threshold, tuned on "
                "the validation posts (train --tune-thresholds) for the best F1 there."
            )
        return (
            "Each class is predicted when its probability reaches 0.5: this run's thresholds "
            "were not tuned (train --tune-thresholds tunes them)."
        )

    def markdown(self, heading: str = "##") -> str:
        """The report's sections: the overall figures and the per-class table."""
        out = [f"{heading} Overall", ""]
        overall = [[name, _fixed(self.figures[key])] for key, name in FIGURE_NAMES.items()]
        out += markdown_table_lines(["figure", "value"], overall, right=[1])
        out += ["", f"{heading} Per class", "", self.threshold_line(), ""]
        s, (tp, fp, _) = self.scores, self.counts()
        rows = [
            [
                name,
                f"{self.thresholds[i]:.4g}",
                f"{s.precision[i].item():.4f}",
                f"{s.recall[i].item():.4f}",
                _fixed(s.f1[i].item()),
                str(int(s.support[i])),
                str(int(tp[i] + fp[i])),
            ]
            for i, name in enumerate(self.names)
        ]
        for label, avg in self.averages().items():
            figures = (f"{avg[k]:.4f}" for k in ("precision", "recall", "f1"))
            rows.append([label, "", *figures, "", ""])
        header = ["class", "threshold", "precision", "recall", "F1", "support", "predicted"]
        out += markdown_table_lines(header, rows, right=[1, 2, 3, 4, 5, 6])
        return "\n".join(out) + "\n"

    def write(self, out_dir: Path, title: str = "Evaluation") -> list[Path]:
        """report.md, per_class.png and thresholds.png in `out_dir`, as one set (files.
        folder_atomic: a temporary folder renamed whole). `out_dir` may be new, empty or an
        earlier report (multi-label or single-label); a folder holding anything else is
        refused (FileExistsError naming it)."""
        with folder_atomic(out_dir, {*REPORT_FILES, *SINGLE_LABEL_FILES}) as tmp:
            self._write_files(tmp, title)
        return [out_dir / name for name in REPORT_FILES]

    def _write_files(self, out_dir: Path, title: str) -> None:
        from fbdl_fast.reports.chart import class_bars_figure, png, threshold_curves_figure

        n, s = len(self.names), self.scores
        bars, panels = self.most_supported(BARS_MAX), self.most_supported(CURVES_MAX)
        summary = (
            f"{len(self.truth)} posts, {n} classes, any number of them a post: subset "
            f"accuracy {self.figures['subset_accuracy']:.4f}, micro-F1 "
            f"{self.figures['micro_f1']:.4f}, macro-F1 {self.figures['macro_f1']:.4f}."
        )
        for chart, shown in (("F1 and support bars", bars), ("threshold curves", panels)):
            if len(shown) < n:  # the tables below hold every class
                summary += f" The {chart} show {_shown(len(shown), n)}."
        document = (
            f"# {title}\n\n{summary}\n\n![per-class F1 and support]({REPORT_FILES[1]})\n\n"
            f"![F1 against the threshold]({REPORT_FILES[2]})\n\n{self.markdown()}"
        )
        write_atomic(out_dir / REPORT_FILES[0], document)
        figure = class_bars_figure(
            [self.names[i] for i in bars],
            [s.f1[i].item() for i in bars],
            [int(s.support[i]) for i in bars],
            note=_shown(len(bars), n),
        )
        write_atomic(out_dir / REPORT_FILES[1], png(figure))
        grid, f1 = self.curves()
        figure = threshold_curves_figure(
            grid,
            [f1[i].tolist() for i in panels],
            [self.names[i] for i in panels],
            [self.thresholds[i] for i in panels],
            [s.f1[i].item() for i in panels],
            [int(s.support[i]) for i in panels],
            tuned=self.tuned,
            note=_shown(len(panels), n),
        )
        write_atomic(out_dir / REPORT_FILES[2], png(figure))


def multilabel_details(
    logits: torch.Tensor,
    targets: torch.Tensor,
    names: list[str],
    thresholds: list[float],
    figures: dict[str, float],
    tuned: bool = True,
) -> MultiLabelDetails:
    """Sum up a multi-label model's raw logits (N, C) against the multi-hot targets (N, C) at
    the per-class `thresholds`; `figures` are the overall ones (FIGURE_NAMES) report.md lists;
    `tuned`: whether the thresholds were tuned (report.md says so)."""
    import torch

    classes = len(names)
    if logits.dim() != 2 or logits.shape[1] != classes or targets.shape != logits.shape:
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} and targets of shape "
            f"{tuple(targets.shape)} for {classes} class names; expected both (N, {classes})"
        )
    if len(thresholds) != classes:
        raise ValueError(
            f"{len(thresholds)} thresholds for {classes} classes; expected one a class"
        )
    bad = int((~torch.isfinite(logits.detach())).any(dim=1).sum())
    if bad:
        raise ValueError(
            f"the model's logits hold NaN or infinite values for {bad} of {len(logits)} posts; "
            "its weights diverged or are damaged, and no probability can be judged"
        )
    missing = [key for key in FIGURE_NAMES if key not in figures]
    if missing:
        raise ValueError(f"figures lack {', '.join(missing)}; expected {', '.join(FIGURE_NAMES)}")
    return MultiLabelDetails(
        names=[str(name) for name in names],
        probs=torch.sigmoid(logits.detach().float().cpu()),
        truth=targets.detach().cpu() > 0.5,
        thresholds=[float(t) for t in thresholds],
        tuned=tuned,
        figures=dict(figures),
    )


def _shown(shown: int, classes: int) -> str:
    """A chart's note when it leaves classes out ("" when it shows them all)."""
    return "" if shown == classes else f"the {shown} classes with the most support, of {classes}"


def _fixed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


__all__ = ["REPORT_FILES", "MultiLabelDetails", "multilabel_details"]
