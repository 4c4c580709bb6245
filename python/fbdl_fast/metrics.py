"""Classification metrics computed from predicted and true class ids: accuracy and macro-F1.

Plain torch, no scikit-learn. Macro-F1 follows scikit-learn's `f1_score(average="macro")` with its
default label set: the mean of the per-class F1 over the classes that occur in the labels or in
the predictions. A class that occurs in neither has no F1 (0/0), so it is left out rather than
counted as 0 or 1.
"""

from __future__ import annotations

import torch


def _check(preds: torch.Tensor, labels: torch.Tensor) -> None:
    if preds.shape != labels.shape or preds.dim() != 1:
        raise ValueError(
            f"preds and labels must be 1-D and of the same shape; got preds "
            f"{tuple(preds.shape)} and labels {tuple(labels.shape)}"
        )
    if preds.numel() == 0:
        raise ValueError("preds and labels are empty; metrics need at least one sample")


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    _check(preds, labels)
    for name, ids in (("preds", preds), ("labels", labels)):
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"{name} hold class ids in [{low}, {high}]; accepted: ids in "
                f"[0, num_classes={num_classes})"
            )
    flat = labels.long().cpu() * num_classes + preds.long().cpu()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose predicted class equals the true class."""
    _check(preds, labels)
    return (preds == labels).double().mean().item()


def per_class_f1(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """F1 of each class, float64 (num_classes,); NaN for a class absent from preds and labels."""
    cm = confusion_matrix(preds, labels, num_classes).double()
    tp = cm.diagonal()
    fp = cm.sum(dim=0) - tp  # predicted as the class, but another class
    fn = cm.sum(dim=1) - tp  # of the class, predicted as another
    # F1 = 2 P R / (P + R) = 2 TP / (2 TP + FP + FN): one formula, no 0/0 when only P or R is 0.
    return 2 * tp / (2 * tp + fp + fn)


def macro_f1(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 over the classes present in preds or labels."""
    f1 = per_class_f1(preds, labels, num_classes)
    return f1[~f1.isnan()].mean().item()


__all__ = ["accuracy", "confusion_matrix", "macro_f1", "per_class_f1"]
