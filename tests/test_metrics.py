"""Accuracy and macro-F1 against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fbdl_fast.metrics import accuracy, confusion_matrix, macro_f1, per_class_f1


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
