"""Evaluation of a model on labelled posts: what `fbdl-fast evaluate` prints and writes.

`evaluate_logits`: from a model's logits and the true labels, per-class precision, recall, F1
and support, the confusion matrix (counts and row-normalised), the most confused pairs and the
expected calibration error, before and after the checkpoint's temperature when it has one. As a
dict for --json, text for the terminal, markdown plus two PNGs for --report (the confusion heat
map, the reliability diagram).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from fbdl_fast.files import folder_atomic, write_atomic

if TYPE_CHECKING:
    import torch

    from fbdl_fast.calibration import Reliability
    from fbdl_fast.metrics import ClassScores


# ====================
# Evaluation: per-class figures, confusion, calibration
# ====================

# --json holds the dense confusion matrix up to this many classes; beyond, its non-zero cells
# (at most one per post) as [true, predicted, count]: 10,000 classes would be 10^8 numbers.
DENSE_CONFUSION_MAX = 100
MATRIX_TEXT_MAX = 20  # the terminal and report.md print the matrix up to this many classes
HEATMAP_MAX = 40  # the heat map shows every class up to this many, else the most frequent
TOP_PAIRS = 10  # most confused pairs listed
REPORT_FILES = ("report.md", "confusion.png", "reliability.png")  # what --report DIR holds


@dataclass
class Evaluation:
    """A model's predictions on labelled posts, summed up (see `evaluate_logits`)."""

    names: list[str]  # class names, index = class id
    preds: torch.Tensor  # (N,) int64 predicted class ids
    labels: torch.Tensor  # (N,) int64 true class ids
    scores: ClassScores
    accuracy: float
    macro_f1: float
    pairs: list[tuple[int, int, int]]  # (true, predicted, count), most frequent first
    reliability: Reliability  # of softmax(logits)
    nll: float
    temperature: Optional[float] = None  # the checkpoint's calibration, if any
    calibrated: Optional[Reliability] = None  # of softmax(logits / temperature)
    nll_calibrated: Optional[float] = None

    @property
    def ece(self) -> float:
        """ECE of the probabilities predict writes (calibrated when there is a temperature)."""
        return (self.calibrated or self.reliability).ece

    def confusion(self, classes: Optional[list[int]] = None) -> torch.Tensor:
        """The confusion matrix (row = true, column = predicted), over `classes` only if given."""
        from fbdl_fast.metrics import confusion_matrix

        if classes is None:
            return confusion_matrix(self.preds, self.labels, len(self.names))
        import torch

        index = torch.full((len(self.names),), -1, dtype=torch.long)
        index[torch.tensor(classes)] = torch.arange(len(classes))
        true, pred = index[self.labels], index[self.preds]
        kept = (true >= 0) & (pred >= 0)
        k = len(classes)
        return torch.bincount(true[kept] * k + pred[kept], minlength=k * k).view(k, k)

    def averages(self) -> dict[str, dict[str, float]]:
        """scikit-learn's classification_report rows: the macro average over the classes
        present in labels or predictions, and the average weighted by support."""
        s = self.scores
        present = ~s.f1.isnan()
        weights = s.support.double() / s.support.sum()
        return {
            name: {
                "precision": reduce(s.precision),
                "recall": reduce(s.recall),
                "f1": reduce(s.f1.nan_to_num(0.0)),
                "support": int(s.support.sum()),
            }
            for name, reduce in (
                ("macro avg", lambda v: v[present].mean().item()),
                ("weighted avg", lambda v: (v * weights).sum().item()),
            )
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN as null)."""
        from fbdl_fast.metrics import row_normalized

        s, names = self.scores, self.names
        per_class = [
            {
                "label": name,
                "precision": s.precision[i].item(),
                "recall": s.recall[i].item(),
                "f1": _number(s.f1[i].item()),
                "support": int(s.support[i]),
            }
            for i, name in enumerate(names)
        ]
        averages = self.averages()
        confusion: dict[str, Any] = {"labels": names, "rows": "true", "columns": "predicted"}
        if len(names) <= DENSE_CONFUSION_MAX:
            cm = self.confusion()
            confusion["counts"] = cm.tolist()
            confusion["normalized"] = row_normalized(cm).tolist()
        else:
            confusion["counts"] = confusion["normalized"] = None
            confusion["nonzero"] = _nonzero_cells(self.preds, self.labels, len(names))
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "ece": self.ece,
            "per_class": per_class,
            "macro_avg": averages["macro avg"],
            "weighted_avg": averages["weighted avg"],
            "confusion_matrix": confusion,
            "confused_pairs": [
                {
                    "true": names[t],
                    "predicted": names[p],
                    "count": n,
                    "share_of_true": n / int(s.support[t]),
                }
                for t, p, n in self.pairs
            ],
            "calibration": {
                "bins": self.reliability.bins,
                "temperature": self.temperature,
                "ece_before": self.reliability.ece,
                "ece_after": None if self.calibrated is None else self.calibrated.ece,
                "nll_before": self.nll,
                "nll_after": self.nll_calibrated,
                "reliability_before": self.reliability.to_dict(),
                "reliability_after": None if self.calibrated is None else self.calibrated.to_dict(),
            },
        }

    # ------------------------------------------------------------------ text and markdown
    def _class_rows(self) -> list[list[str]]:
        s = self.scores
        rows = [
            [
                name,
                f"{s.precision[i].item():.4f}",
                f"{s.recall[i].item():.4f}",
                _fixed(s.f1[i].item()),
                str(int(s.support[i])),
            ]
            for i, name in enumerate(self.names)
        ]
        for label, avg in self.averages().items():
            rows.append(
                [
                    label,
                    f"{avg['precision']:.4f}",
                    f"{avg['recall']:.4f}",
                    f"{avg['f1']:.4f}",
                    str(avg["support"]),
                ]
            )
        return rows

    def _pair_lines(self, markdown: bool = False) -> list[str]:
        support = self.scores.support
        names = self.names
        if markdown:  # each line is a list item: its first name starts the item's text
            names = [markdown_text(name, line_start=True) for name in self.names]
        return [
            f"{names[t]} -> {names[p]}: {n} ({n / int(support[t]):.1%} of {names[t]})"
            for t, p, n in self.pairs
        ]

    def _calibration_line(self) -> str:
        bins = self.reliability.bins
        if self.calibrated is None:
            return f"ECE {self.reliability.ece:.4f} ({bins} bins; no temperature in the checkpoint)"
        return (
            f"ECE {self.reliability.ece:.4f} -> {self.calibrated.ece:.4f} with temperature "
            f"{self.temperature:.4g} ({bins} bins; the temperature was fitted to minimise the "
            f"validation NLL, not the ECE: NLL here {self.nll:.4f} -> {self.nll_calibrated:.4f})"
        )

    def text(self) -> str:
        """The report for a terminal: aligned columns."""
        header = ["class", "precision", "recall", "f1", "support"]
        lines = [_aligned([header, *self._class_rows()])]
        n = len(self.names)
        if n <= MATRIX_TEXT_MAX:
            cm = self.confusion()
            lines.append("\nconfusion matrix (rows: true class, columns: predicted)")
            lines.append(_aligned([["", *self.names], *_matrix_rows(self.names, cm.tolist())]))
            lines.append("\nrow-normalised (share of each true class)")
            shares = [[f"{v:.2f}" for v in row] for row in _normalized(cm)]
            lines.append(_aligned([["", *self.names], *_matrix_rows(self.names, shares)]))
        else:
            lines.append(f"\nconfusion matrix: {n} classes, in --json and --report")
        if self.pairs:
            lines.append("\nmost confused (true -> predicted)")
            lines.extend(f"  {line}" for line in self._pair_lines())
        lines.append("\ncalibration: " + self._calibration_line())
        return "\n".join(lines) + "\n"

    def markdown(self, heading: str = "##") -> str:
        """The report as markdown sections (per class, confusion, pairs, calibration)."""
        out = [f"{heading} Per class", ""]
        out += markdown_table_lines(
            ["class", "precision", "recall", "F1", "support"],
            self._class_rows(),
            right=[1, 2, 3, 4],
        )
        n = len(self.names)
        out += ["", f"{heading} Confusion matrix", ""]
        if n <= MATRIX_TEXT_MAX:
            cm = self.confusion()
            out.append("Rows: true class; columns: predicted class; count (share of the row).")
            out.append("")
            cells = [
                [f"{c} ({v:.0%})" for c, v in zip(row, shares)]
                for row, shares in zip(cm.tolist(), _normalized(cm))
            ]
            out += markdown_table_lines(
                ["true \\ predicted", *self.names],
                _matrix_rows(self.names, cells),
                right=list(range(1, n + 1)),
            )
        else:
            out.append(f"{n} classes: see the heat map and `--json`.")
        out += ["", f"{heading} Most confused pairs", ""]
        out += [f"- {line}" for line in self._pair_lines(markdown=True)] or ["No mistakes."]
        out += ["", f"{heading} Calibration", "", self._calibration_line() + "."]
        return "\n".join(out) + "\n"

    def heatmap_classes(self) -> Optional[list[int]]:
        """The classes the heat map shows: None for all, else the HEATMAP_MAX most frequent."""
        if len(self.names) <= HEATMAP_MAX:
            return None
        import torch

        order = torch.sort(self.scores.support, descending=True, stable=True).indices
        return sorted(order[:HEATMAP_MAX].tolist())

    def write(self, out_dir: Path, title: str = "Evaluation") -> list[Path]:
        """report.md, confusion.png and reliability.png in `out_dir`, as one set: written in a
        temporary folder renamed whole (files.folder_atomic), so a failure midway (a full
        disk) leaves no partial set. `out_dir` may be new, empty or an earlier report of these
        files; a folder holding anything else is refused (FileExistsError naming it)."""
        with folder_atomic(out_dir, REPORT_FILES) as tmp:
            self._write_files(tmp, title)
        return [out_dir / name for name in REPORT_FILES]

    def _write_files(self, out_dir: Path, title: str) -> None:
        from fbdl_fast.reports.chart import confusion_figure, png, reliability_figure

        classes = self.heatmap_classes()
        note = "" if classes is None else f"the {len(classes)} most frequent of {len(self.names)}"
        names = self.names if classes is None else [self.names[i] for i in classes]
        paths = [out_dir / name for name in REPORT_FILES]
        summary = (
            f"{int(self.scores.support.sum())} posts, {len(self.names)} classes: accuracy "
            f"{self.accuracy:.4f}, macro-F1 {self.macro_f1:.4f}, ECE {self.ece:.4f}."
        )
        document = (
            f"# {title}\n\n{summary}\n\n![confusion matrix](confusion.png)\n\n"
            f"![reliability diagram](reliability.png)\n\n{self.markdown()}"
        )
        write_atomic(paths[0], document)
        write_atomic(
            paths[1], png(confusion_figure(self.confusion(classes).tolist(), names, note=note))
        )
        diagram = reliability_figure(self.reliability, self.calibrated, self.temperature)
        write_atomic(paths[2], png(diagram))


def evaluate_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    temperature: Optional[float] = None,
    top_pairs: int = TOP_PAIRS,
) -> Evaluation:
    """Sum up a classifier's raw logits (N, C) against the true class ids (N,); `temperature`
    (a checkpoint's calibration, != 1) adds the calibrated probabilities' figures."""
    import torch

    from fbdl_fast import calibration, metrics

    if logits.dim() != 2 or logits.shape[1] != len(names):
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} for {len(names)} class names; expected (N, "
            f"{len(names)})"
        )
    labels = labels.detach().long().cpu()
    bad = int((~torch.isfinite(logits.detach())).any(dim=1).sum())
    if bad:
        raise ValueError(
            f"the model's logits hold NaN or infinite values for {bad} of {len(logits)} posts; "
            "its weights diverged or are damaged, and no probability can be judged"
        )
    confidence, preds, nll = calibration.top_label(logits, labels)
    classes = len(names)
    evaluation = Evaluation(
        names=[str(name) for name in names],
        preds=preds,
        labels=labels,
        scores=metrics.class_scores(preds, labels, classes),
        accuracy=metrics.accuracy(preds, labels),
        macro_f1=metrics.macro_f1(preds, labels, classes),
        pairs=metrics.confused_pairs(preds, labels, classes, top_pairs),
        reliability=calibration.reliability(confidence, preds == labels),
        nll=nll,
    )
    if temperature is not None and temperature != 1.0:
        confidence, _, nll = calibration.top_label(logits, labels, temperature)
        evaluation.temperature = temperature
        evaluation.calibrated = calibration.reliability(confidence, preds == labels)
        evaluation.nll_calibrated = nll
    return evaluation


def _number(value: float) -> Optional[float]:
    return None if math.isnan(value) else value


def _fixed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _normalized(cm: torch.Tensor) -> list[list[float]]:
    from fbdl_fast.metrics import row_normalized

    return row_normalized(cm).tolist()


def _nonzero_cells(preds: torch.Tensor, labels: torch.Tensor, classes: int) -> list[list[int]]:
    import torch

    cells, counts = torch.unique(labels * classes + preds, return_counts=True)
    return [[int(c) // classes, int(c) % classes, int(n)] for c, n in zip(cells, counts)]


def _matrix_rows(names: list[str], rows: list[list[Any]]) -> list[list[str]]:
    return [[name, *map(str, row)] for name, row in zip(names, rows)]


def _aligned(rows: list[list[str]]) -> str:
    """Rows as text columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        )
        for row in rows
    )


# Characters that start markdown, HTML or math markup anywhere in a line. A label is the user's
# text: "<b>x</b>", "**y**", "[z](url)" or "$x$" must show as written, and "a|b" must not open
# a new table column.
_MARKUP = re.compile(r"([\\`*_\[\]<>#|~&$])")
# At the start of a line (a list item "- NAME -> ..."), these make a list or a heading.
_LINE_START = re.compile(r"^([-+=])|^(\d+)([.)])")


def markdown_text(text: str, line_start: bool = False) -> str:
    """`text` (e.g. a label) as markdown that shows it literally: markup characters
    backslash-escaped, line breaks read as spaces; with line_start (text that begins a line or
    a list item) a leading list or heading marker too. Not for numbers in table cells, whose
    "-0.5" or "1." mean nothing there."""
    text = _MARKUP.sub(r"\\\1", " ".join(str(text).splitlines()))
    if not line_start:
        return text
    return _LINE_START.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", text)


def markdown_table_lines(header: list[str], rows: list[list[str]], right: list[int]) -> list[str]:
    """A markdown table as lines: the header, the rule (columns in `right` right-aligned), rows.
    Header and row cells are text, escaped with markdown_text."""
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = [list(map(markdown_text, header)), rule, *(list(map(markdown_text, r)) for r in rows)]
    return ["| " + " | ".join(line) + " |" for line in lines]
