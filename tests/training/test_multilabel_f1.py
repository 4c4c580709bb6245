"""Multi-label macro-F1 agrees with scikit-learn's f1_score(average="macro", zero_division=0):
a class the data never carries but the model predicts counts as F1 0, it is not dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from fbdl_fast.training.multilabel import multilabel_counts, multilabel_metrics


def _macro_f1(pred: np.ndarray, true: np.ndarray) -> float:
    """Our macro-F1 of 0/1 predictions against multi-hot targets (thresholds 0.5)."""
    probs = torch.tensor(pred, dtype=torch.float32)
    counts = multilabel_counts(probs, torch.tensor(true, dtype=torch.float32))
    return multilabel_metrics(counts)["macro_f1"]


def test_a_predicted_class_without_positives_in_the_data_counts_as_zero() -> None:
    """Class 1 is in no post's labels but is predicted for one: its F1 is 0 and it is in the
    mean, (1 + 0) / 2 = 0.5 as scikit-learn gives, not 1.0 from the class present alone."""
    true = np.array([[1, 0], [1, 0]])
    pred = np.array([[1, 1], [1, 0]])
    expected = f1_score(true, pred, average="macro", zero_division=0)
    assert expected == pytest.approx(0.5)
    assert _macro_f1(pred, true) == pytest.approx(expected)


def test_a_class_predicted_everywhere_yet_never_true_among_others() -> None:
    """Three classes, the last never true and predicted for every post: scikit-learn's mean."""
    true = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]])
    pred = np.array([[1, 0, 1], [1, 1, 1], [1, 0, 1], [0, 1, 1]])
    expected = f1_score(true, pred, average="macro", zero_division=0)
    assert _macro_f1(pred, true) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(20))
def test_random_sparse_label_sets_match_scikit_learn(seed: int) -> None:
    """Random sparse labels and predictions (classes often never true, or never predicted):
    the same macro-F1 as scikit-learn over the classes the targets or predictions hold (a class
    in neither is left out, as the single-label macro-F1 does)."""
    rng = np.random.default_rng(seed)
    true = (rng.random((12, 6)) < 0.15).astype(int)
    pred = (rng.random((12, 6)) < 0.2).astype(int)
    present = [c for c in range(6) if true[:, c].any() or pred[:, c].any()]
    assert present, "every seed's draw holds some labels"
    expected = f1_score(true, pred, labels=present, average="macro", zero_division=0)
    assert _macro_f1(pred, true) == pytest.approx(expected)
