"""Accuracy, macro-F1, per-class scores and confused pairs against hand-computed values and
scikit-learn."""

from __future__ import annotations

import math

import pytest
import torch

from fbdl_fast.metrics import (
    accuracy,
    class_counts,
    class_scores,
    confused_pairs,
    confusion_matrix,
    macro_f1,
    per_class_f1,
    row_normalized,
)


def test_confusion_matrix_rows_are_true_classes() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert torch.equal(confusion_matrix(preds, labels, 3), expected)


def test_accuracy_by_hand() -> None:
    assert accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2])) == 0.75


def test_macro_f1_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    # class 0: TP 1, FP 1, FN 1 -> 2/4; class 1: TP 1, FP 1, FN 0 -> 2/3;
    # class 2: TP 2, FP 0, FN 1 -> 4/5.
    expected = (2 / 4 + 2 / 3 + 4 / 5) / 3
    assert macro_f1(preds, labels, 3) == pytest.approx(expected, abs=1e-12)


def test_macro_f1_skips_classes_absent_from_preds_and_labels() -> None:
    # Class 3 never occurs: scikit-learn's default label set leaves it out of the mean.
    labels = torch.tensor([0, 1, 1, 2])
    preds = torch.tensor([0, 1, 2, 2])
    f1 = per_class_f1(preds, labels, 4)
    assert math.isnan(f1[3].item())
    # class 0: 1; class 1: TP 1, FN 1 -> 2/3; class 2: TP 1, FP 1 -> 2/3.
    assert macro_f1(preds, labels, 4) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3, abs=1e-12)


def test_class_never_predicted_counts_as_zero() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    preds = torch.tensor([0, 0, 0, 0])
    # class 0: TP 2, FP 2 -> 4/6; class 1: TP 0, FN 2 -> 0.
    assert macro_f1(preds, labels, 2) == pytest.approx((4 / 6 + 0) / 2, abs=1e-12)


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"same shape"):
        macro_f1(torch.tensor([0, 1]), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match=r"preds hold class ids in \[0, 5\].*num_classes=3"):
        macro_f1(torch.tensor([0, 5]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))


def _random_predictions(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels over classes 0..classes-2 (the last never occurs in them), predictions that are
    right 60% of the time and never name class 1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes - 1, (n,), generator=g)
    preds = torch.where(
        torch.rand(n, generator=g) < 0.6, labels, torch.randint(0, classes, (n,), generator=g)
    )
    return preds.masked_fill(preds == 1, 0), labels


def test_class_scores_match_scikit_learn() -> None:
    from sklearn.metrics import precision_recall_fscore_support

    preds, labels = _random_predictions(500, 7, seed=3)
    scores = class_scores(preds, labels, 7)
    p, r, f, s = precision_recall_fscore_support(
        labels.numpy(), preds.numpy(), labels=list(range(7)), zero_division=0
    )
    assert scores.precision.tolist() == pytest.approx(p.tolist(), abs=1e-12)
    assert scores.recall.tolist() == pytest.approx(r.tolist(), abs=1e-12)
    assert scores.support.tolist() == s.tolist()
    # F1 equals scikit-learn's where defined; class 6 is predicted but never true: F1 0, and
    # class 1 is true but never predicted: precision 0, F1 0.
    assert scores.f1.tolist() == pytest.approx(f.tolist(), abs=1e-12)
    assert scores.precision[1] == 0 and scores.support[6] == 0


def test_class_counts_agree_with_the_confusion_matrix() -> None:
    preds, labels = _random_predictions(2000, 300, seed=4)
    tp, fp, fn = class_counts(preds, labels, 300)
    cm = confusion_matrix(preds, labels, 300)
    assert torch.equal(tp, cm.diagonal())
    assert torch.equal(fp, cm.sum(dim=0) - cm.diagonal())
    assert torch.equal(fn, cm.sum(dim=1) - cm.diagonal())


def test_row_normalized_by_hand() -> None:
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    expected = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]  # no samples: row of 0
    assert row_normalized(cm).tolist() == expected


def test_confused_pairs_most_frequent_first() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    preds = torch.tensor([1, 1, 0, 0, 2, 0, 0, 0, 2, 2])
    # mistakes: 2->0 x3, 0->1 x2, 1->2 x2, 1->0 x1; equal counts: lower (true, predicted) first
    assert confused_pairs(preds, labels, 3) == [(2, 0, 3), (0, 1, 2), (1, 2, 2), (1, 0, 1)]
    assert confused_pairs(preds, labels, 3, top=2) == [(2, 0, 3), (0, 1, 2)]
    assert confused_pairs(labels, labels, 3) == []
