"""Losses: each against torch.nn.functional or a value computed by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import fbdl_fast.nn.focal_loss as focal_module
from fbdl_fast.config import ModelConfig
from fbdl_fast.training.losses import (
    CLASSIFICATION_LOSSES,
    LOSSES,
    DiceLoss,
    FocalLoss,
    LossFunctions,
    create_loss,
)


def _config(**overrides: Any) -> ModelConfig:
    return ModelConfig(input_dim=16, num_heads=2, num_classes=3, **overrides)


def _batch(n: int = 12, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, classes) * 2, torch.randint(0, classes, (n,))


def test_registry_names() -> None:
    assert sorted(LOSSES) == sorted(
        ["cross_entropy", "focal", "dice", "huber", "cosine_embedding", "triplet"]
    )
    assert set(CLASSIFICATION_LOSSES) == {"cross_entropy", "focal", "dice"}


def test_cross_entropy_hand_computed_with_label_smoothing() -> None:
    # p = softmax([0, ln 3]) = [1/4, 3/4]; label 1. Smoothing e spreads e/C over the classes.
    logits, labels = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1])
    criterion = LOSSES["cross_entropy"](label_smoothing=0.2)
    nll = [-math.log(0.25), -math.log(0.75)]
    expected = 0.8 * nll[1] + 0.2 * (nll[0] + nll[1]) / 2
    assert criterion(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_create_loss_cross_entropy_honours_class_weights_and_smoothing() -> None:
    criterion = create_loss(_config(class_weights=[1.0, 3.0, 0.5], label_smoothing=0.1))
    logits, labels = _batch()
    expected = F.cross_entropy(
        logits, labels, weight=torch.tensor([1.0, 3.0, 0.5]), label_smoothing=0.1
    )
    torch.testing.assert_close(criterion(logits, labels), expected)
    assert "weight" in dict(criterion.named_buffers())  # moves with .to(device)


def test_class_weights_hand_computed() -> None:
    # losses ln 3 (label 0, weight 1) and ln 2 (label 1, weight 3): mean sum(w_y l) / sum(w_y)
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0]])  # p_y = 1/3, 1/2
    labels = torch.tensor([0, 1])
    criterion = create_loss(_config(class_weights=[1.0, 3.0, 1.0]))
    expected = (1 * math.log(3.0) + 3 * math.log(2.0)) / 4
    assert criterion(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    config = _config(focal_gamma=0.0)
    config.use_focal_loss = True  # the design's switch
    criterion = create_loss(config)
    assert isinstance(criterion, FocalLoss)
    logits, labels = _batch()
    torch.testing.assert_close(criterion(logits, labels), F.cross_entropy(logits, labels))
    # the config's class weights and label smoothing reach the focal loss as they reach CE
    config = _config(
        loss="focal", focal_gamma=0.0, class_weights=[1.0, 3.0, 0.5], label_smoothing=0.1
    )
    expected = F.cross_entropy(
        logits, labels, weight=torch.tensor([1.0, 3.0, 0.5]), label_smoothing=0.1
    )
    torch.testing.assert_close(create_loss(config)(logits, labels), expected)


def test_focal_entry_passes_the_config_to_the_fused_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def spy(input, target, gamma, alpha, weight, ignore_index, reduction, label_smoothing):  # type: ignore[no-untyped-def]
        seen.update(
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
        return input.sum() * 0

    monkeypatch.setattr(focal_module, "focal_loss", spy)
    config = _config(
        loss="focal",
        focal_gamma=1.5,
        focal_alpha=[0.2, 0.3, 0.5],
        class_weights=[1.0, 2.0, 3.0],
        label_smoothing=0.05,
    )
    create_loss(config)(*_batch())
    assert seen["gamma"] == 1.5 and seen["ignore_index"] == -100 and seen["reduction"] == "mean"
    assert seen["label_smoothing"] == 0.05
    assert torch.equal(seen["alpha"], torch.tensor([0.2, 0.3, 0.5]))
    assert torch.equal(seen["weight"], torch.tensor([1.0, 2.0, 3.0]))
    create_loss(_config(loss="focal", focal_alpha=0.25))(*_batch())
    assert seen["alpha"] == 0.25 and seen["weight"] is None  # scalar alpha passes as a number


def test_focal_rejects_negative_gamma() -> None:
    with pytest.raises(ValueError, match=r"gamma=-1.*>= 0"):
        FocalLoss(gamma=-1.0)


def test_dice_hand_computed() -> None:
    # logits 0: p = 1/2 everywhere; labels [0, 1]. Per class: intersection 1/2, sum p 1,
    # sum y 1 -> dice (2 * 1/2 + 1) / (1 + 1 + 1) = 2/3; loss 1 - 2/3.
    criterion = LOSSES["dice"]()
    loss = criterion(torch.zeros(2, 2), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(1 / 3, rel=1e-6)
    # confident and right -> dice 1 for both classes -> loss 0
    perfect = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert criterion(perfect, torch.tensor([0, 1])).item() == pytest.approx(0.0, abs=1e-6)


def _dice_by_loops(
    logits: torch.Tensor, labels: torch.Tensor, smooth: float, weight: list[float]
) -> float:
    probs = logits.softmax(-1).tolist()
    classes = len(weight)
    total = 0.0
    for c in range(classes):
        inter = sum(p[c] for p, y in zip(probs, labels.tolist()) if y == c)
        card = sum(p[c] for p in probs) + sum(1 for y in labels.tolist() if y == c)
        total += weight[c] * (2 * inter + smooth) / (card + smooth)
    return 1 - total / sum(weight)


def test_dice_matches_loops_with_weights_and_ignore_index() -> None:
    logits, labels = _batch(10, 3)
    weight = [1.0, 2.0, 0.5]
    criterion = create_loss(_config(loss="dice", class_weights=weight), smooth=0.5)
    expected = _dice_by_loops(logits, labels, 0.5, weight)
    assert criterion(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    # ignored samples change nothing
    padded_logits = torch.cat([logits, torch.randn(3, 3)])
    padded_labels = torch.cat([labels, torch.full((3,), -100)])
    assert criterion(padded_logits, padded_labels).item() == pytest.approx(expected, rel=1e-5)


def test_dice_gradient_lowers_the_loss() -> None:
    logits, labels = _batch(8, 3)
    logits.requires_grad_(True)
    criterion = DiceLoss()
    loss = criterion(logits, labels)
    loss.backward()
    with torch.no_grad():
        assert criterion(logits - 0.5 * logits.grad, labels) < loss


def test_huber_hand_computed() -> None:
    # |d| = 0.5 -> 0.5 d^2 = 0.125; |d| = 2 -> delta (|d| - delta / 2) = 1.5; mean 0.8125
    loss = LOSSES["huber"]()(torch.tensor([0.5, 3.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(0.8125)
    assert LossFunctions.huber_loss(torch.tensor([3.0]), torch.tensor([0.0]), delta=2.0).item() == (
        pytest.approx(2.0 * (3.0 - 1.0))
    )


def test_cosine_embedding_hand_computed() -> None:
    # similar pair at 90 degrees: 1 - cos = 1; dissimilar pair at 45 degrees: max(0, cos) = 0.7071
    x1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    x2 = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([1.0, -1.0])
    loss = LOSSES["cosine_embedding"]()(x1, x2, y)
    assert loss.item() == pytest.approx((1.0 + math.sqrt(0.5)) / 2, rel=1e-6)
    assert LossFunctions.cosine_embedding_loss(x1, x2, y, margin=0.8).item() == pytest.approx(0.5)


def test_triplet_hand_computed() -> None:
    # d(a, p) = 5, d(a, n) = 1, margin 1 -> 5; second triplet already separated -> 0
    anchor = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    positive = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    negative = torch.tensor([[1.0, 0.0], [6.0, 8.0]])
    expected = (5.0 - 1.0 + 1.0 + 0.0) / 2
    assert LOSSES["triplet"]()(anchor, positive, negative).item() == pytest.approx(
        expected, abs=1e-4
    )
    assert LossFunctions.triplet_loss(anchor, positive, negative, margin=1.0).item() == (
        pytest.approx(expected, abs=1e-4)
    )


def test_facade_classification_losses() -> None:
    logits, labels = _batch()
    torch.testing.assert_close(
        LossFunctions.cross_entropy_loss(logits, labels, label_smoothing=0.1),
        F.cross_entropy(logits, labels, label_smoothing=0.1),
    )
    # the 0.x API's alpha multiplies every sample: with gamma=0 that is alpha * cross-entropy
    torch.testing.assert_close(
        LossFunctions.focal_loss(logits, labels, alpha=0.25, gamma=0.0),
        0.25 * F.cross_entropy(logits, labels),
    )
    assert LossFunctions.dice_loss(torch.zeros(2, 2), torch.tensor([0, 1])).item() == (
        pytest.approx(1 / 3)
    )


def test_create_loss_kwargs_override() -> None:
    criterion = create_loss(_config(), ignore_index=-1, reduction="sum")
    logits, labels = _batch()
    labels[:4] = -1
    torch.testing.assert_close(
        criterion(logits, labels), F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    )


def test_create_loss_rejects_non_classification_loss() -> None:
    config = _config()
    config.loss = "huber"  # set after validation, which would refuse it
    with pytest.raises(ValueError, match=r"'huber'.*accepted: cross_entropy, focal, dice"):
        create_loss(config)
