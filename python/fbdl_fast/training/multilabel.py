"""Multi-label classification: any number of labels a post, one sigmoid output a class.

    loss = MultiLabelLoss()                     # BCE over every (post, class); gamma: focal
    counts = multilabel_counts(probs, targets, thresholds)    # summable over batches and ranks
    metrics = multilabel_metrics(counts)        # subset accuracy, micro/macro-F1, Hamming loss
    thresholds = tune_thresholds(probs, targets)              # per class, best F1 on validation

Targets are multi-hot float tensors (N, C): 1 where the post carries the class. A class is
predicted when its probability sigmoid(logit) reaches its threshold (0.5 unless tuned).

The focal form is our focal loss's binary case: a sigmoid probability is the softmax of the two
logits (0, z), so each (post, class) is a 2-class row [0, z] with target y, through the same
fused kernel (fbdl_fast.nn.functional.focal_loss) as single-label runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_THRESHOLD = 0.5
# Thresholds tried per class by tune_thresholds: 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


class MultiLabelLoss(nn.Module):
    """Mean over posts and classes of binary cross-entropy on the logits, or with gamma the
    binary focal loss (1 - p_t)^gamma * BCE, p_t the probability given to the true value."""

    def __init__(self, gamma: Optional[float] = None) -> None:
        super().__init__()
        if gamma is not None and not gamma >= 0:
            raise ValueError(f"multi-label focal loss: gamma={gamma!r}; expected a number >= 0")
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape or logits.dim() != 2:
            raise ValueError(
                f"multi-label loss: logits {tuple(logits.shape)} and targets "
                f"{tuple(targets.shape)} must both be (N, C) multi-hot; a single-label batch "
                "(class ids) needs a run without multi_label"
            )
        if self.gamma is None:
            return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
        from fbdl_fast.nn.functional import focal_loss

        rows = torch.stack([torch.zeros_like(logits), logits], dim=-1).reshape(-1, 2)  # (N*C, 2)
        return focal_loss(rows, targets.reshape(-1).long(), gamma=self.gamma)

    def extra_repr(self) -> str:
        return "bce" if self.gamma is None else f"focal, gamma={self.gamma}"


def _thresholds(thresholds: Any, classes: int, device: torch.device) -> torch.Tensor:
    if thresholds is None:
        return torch.full((classes,), DEFAULT_THRESHOLD, device=device)
    t = torch.as_tensor(thresholds, dtype=torch.float32, device=device)
    if t.shape != (classes,):
        raise ValueError(f"thresholds must be {classes} numbers, one per class; got {t.shape}")
    return t


def predict_labels(probs: torch.Tensor, thresholds: Any = None) -> torch.Tensor:
    """(N, C) bool: the classes whose probability reaches their threshold."""
    return probs >= _thresholds(thresholds, probs.shape[-1], probs.device)


def multilabel_counts(
    probs: torch.Tensor, targets: torch.Tensor, thresholds: Any = None
) -> torch.Tensor:
    """float64 (3 + 3C,): posts, posts with every class right, wrong (post, class) pairs, then
    true positives, false positives and false negatives per class. Sums of batches or ranks
    give the counts of their union."""
    pred = predict_labels(probs, thresholds)
    true = targets > 0.5
    head = torch.stack(
        [
            torch.tensor(float(pred.shape[0]), dtype=torch.float64, device=pred.device),
            (pred == true).all(dim=-1).sum().double(),
            (pred != true).sum().double(),
        ]
    )
    tp = (pred & true).sum(dim=0).double()
    fp = (pred & ~true).sum(dim=0).double()
    fn = (~pred & true).sum(dim=0).double()
    return torch.cat([head, tp, fp, fn])


def multilabel_metrics(counts: torch.Tensor) -> dict[str, float]:
    """accuracy (subset accuracy: every class of the post right), micro_f1, macro_f1 (mean over
    the classes present in the targets or the predictions, as metrics.macro_f1: a class
    predicted but never true counts with F1 0, as in scikit-learn's f1_score(average="macro",
    zero_division=0)), hamming_loss
    (share of wrong (post, class) pairs) and num_samples, from multilabel_counts."""
    counts = counts.double().cpu()
    classes = (counts.numel() - 3) // 3
    n, exact, wrong = counts[:3].tolist()
    tp, fp, fn = counts[3:].view(3, classes)
    f1 = 2 * tp / (2 * tp + fp + fn)  # NaN for a class never true nor predicted
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())
    return {
        "accuracy": exact / n,
        "micro_f1": micro.item() if not micro.isnan() else 0.0,
        "macro_f1": f1[~f1.isnan()].mean().item() if (~f1.isnan()).any() else 0.0,
        "hamming_loss": wrong / (n * classes),
        "num_samples": n,
    }


def tune_thresholds(
    probs: torch.Tensor, targets: torch.Tensor, grid: Sequence[float] = THRESHOLD_GRID
) -> list[float]:
    """Per class, the threshold of `grid` with the best F1 on (probs, targets), e.g. the
    validation posts; ties go to the one nearest 0.5, and a class without positives there
    keeps 0.5 (nothing to tune on)."""
    true = targets > 0.5
    grid_t = torch.as_tensor(grid, dtype=probs.dtype)  # (G,)
    pred = probs[:, :, None] >= grid_t  # (N, C, G)
    tp = (pred & true[:, :, None]).sum(0).double()  # (C, G)
    fp = (pred & ~true[:, :, None]).sum(0).double()
    fn = (~pred & true[:, :, None]).sum(0).double()
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    out = []
    for c in range(probs.shape[1]):
        if not true[:, c].any():
            out.append(DEFAULT_THRESHOLD)
            continue
        best = f1[c].max()
        ties = [g for g, v in zip(grid, f1[c].tolist()) if v == best.item()]
        out.append(float(min(ties, key=lambda g: (abs(g - DEFAULT_THRESHOLD), g))))
    return out


THRESHOLDS_KEY = "thresholds"


def store_thresholds(
    path: Union[str, os.PathLike[str]], thresholds: Sequence[float]
) -> dict[str, Any]:
    """Write per-class thresholds into a checkpoint (rewritten atomically); returns it."""
    from fbdl_fast.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(path)
    state.pop("format_version", None)
    state[THRESHOLDS_KEY] = [float(t) for t in thresholds]
    save_checkpoint(state, path)
    return state


__all__ = [
    "DEFAULT_THRESHOLD",
    "THRESHOLDS_KEY",
    "THRESHOLD_GRID",
    "MultiLabelLoss",
    "multilabel_counts",
    "multilabel_metrics",
    "predict_labels",
    "store_thresholds",
    "tune_thresholds",
]
