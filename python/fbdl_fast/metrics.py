"""Classification metrics computed from predicted and true class ids.

Plain torch, no scikit-learn. Macro-F1 follows scikit-learn's `f1_score(average="macro")` with its
default label set: the mean of the per-class F1 over the classes that occur in the labels or in
the predictions. A class that occurs in neither has no F1 (0/0), so it is left out rather than
counted as 0 or 1. Precision and recall of a class never predicted (or never present) are 0, as
scikit-learn's `zero_division` default reports them.

Per-class figures come from three counts per class (true positives, false positives, false
negatives), computed with `torch.bincount` in O(N + C): nothing here builds the C x C confusion
matrix unless asked for it, so 10,000 classes cost what 10 do. A multi-label evaluation can feed
its own per-label counts to `scores_from_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _check(preds: torch.Tensor, labels: torch.Tensor) -> None:
    if preds.shape != labels.shape or preds.dim() != 1:
        raise ValueError(
            f"preds and labels must be 1-D and of the same shape; got preds "
            f"{tuple(preds.shape)} and labels {tuple(labels.shape)}"
        )
    if preds.numel() == 0:
        raise ValueError("preds and labels are empty; metrics need at least one sample")


def _check_ids(
    preds: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(preds, labels) as int64 on the CPU, once their shapes and class ids are checked."""
    _check(preds, labels)
    for name, ids in (("preds", preds), ("labels", labels)):
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} hold class ids in [{low}, {high}]; accepted: ids in "
                f"[0, num_classes={num_classes})"
            )
    return preds.long().cpu(), labels.long().cpu()


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    preds, labels = _check_ids(preds, labels, num_classes)
    flat = labels * num_classes + preds
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def row_normalized(cm: torch.Tensor) -> torch.Tensor:
    """float64 confusion matrix whose rows sum to 1 (the share of each true class predicted as
    each class); the row of a class with no samples stays 0."""
    cm = cm.double()
    return cm / cm.sum(dim=1, keepdim=True).clamp(min=1)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose predicted class equals the true class."""
    _check(preds, labels)
    return (preds == labels).double().mean().item()


@dataclass
class ClassScores:
    """Per-class figures, index = class id: float64 precision/recall/F1, int64 support."""

    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor  # NaN for a class absent from both predictions and labels
    support: torch.Tensor  # samples of the class in the labels


def class_counts(
    preds: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(true positives, false positives, false negatives) of each class, int64 (num_classes,)."""
    preds, labels = _check_ids(preds, labels, num_classes)
    tp = torch.bincount(labels[preds == labels], minlength=num_classes)
    fp = torch.bincount(preds, minlength=num_classes) - tp  # predicted as the class, wrongly
    fn = torch.bincount(labels, minlength=num_classes) - tp  # of the class, predicted otherwise
    return tp, fp, fn


def scores_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> ClassScores:
    """Precision, recall, F1 and support from per-class counts (0 where undefined, F1 aside)."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    # F1 = 2 P R / (P + R) = 2 TP / (2 TP + FP + FN): one formula, no 0/0 when only P or R is 0.
    return ClassScores(
        precision=torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), 0.0),
        recall=torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), 0.0),
        f1=2 * tp / (2 * tp + fp + fn),
        support=(tp + fn).long(),
    )


def class_scores(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ClassScores:
    """Precision, recall, F1 and support of each class (scikit-learn's
    precision_recall_fscore_support with labels=range(num_classes))."""
    return scores_from_counts(*class_counts(preds, labels, num_classes))


def per_class_f1(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """F1 of each class, float64 (num_classes,); NaN for a class absent from preds and labels."""
    return class_scores(preds, labels, num_classes).f1


def macro_f1(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 over the classes present in preds or labels."""
    f1 = per_class_f1(preds, labels, num_classes)
    return f1[~f1.isnan()].mean().item()


def confused_pairs(
    preds: torch.Tensor, labels: torch.Tensor, num_classes: int, top: int = 10
) -> list[tuple[int, int, int]]:
    """The `top` most frequent mistakes as (true class, predicted class, count), most first
    (ties: lower class ids first). Counted from the wrong samples alone, O(N log N)."""
    preds, labels = _check_ids(preds, labels, num_classes)
    wrong = preds != labels
    cells, counts = torch.unique(labels[wrong] * num_classes + preds[wrong], return_counts=True)
    # unique sorts the cells; a stable sort by count keeps that order among equal counts
    order = torch.sort(counts, descending=True, stable=True).indices[:top]
    return [
        (int(cell) // num_classes, int(cell) % num_classes, int(count))
        for cell, count in zip(cells[order], counts[order])
    ]


__all__ = [
    "ClassScores",
    "accuracy",
    "class_counts",
    "class_scores",
    "confused_pairs",
    "confusion_matrix",
    "macro_f1",
    "per_class_f1",
    "row_normalized",
    "scores_from_counts",
]
