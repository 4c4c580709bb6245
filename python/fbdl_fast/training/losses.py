"""Loss functions by name; `create_loss(config)` builds the trainer's criterion.

LOSSES maps a name to an nn.Module class. The classification losses (CLASSIFICATION_LOSSES) are
called as `criterion(logits, labels)` with logits (N, C) and integer labels (N,); the others keep
torch's signatures: huber(input, target), cosine_embedding(x1, x2, y),
triplet(anchor, positive, negative). The focal entry is fbdl_fast.nn.FocalLoss, so it
runs the fused kernel wherever that kernel runs. The 0.x API's `LossFunctions`
namespace is kept as thin functional wrappers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, TypedDict, Union

import torch
import torch.nn.functional as F
from torch import nn

import fbdl_fast.nn.functional as fused
from fbdl_fast.config import CLASSIFICATION_LOSS_NAMES
from fbdl_fast.nn import FocalLoss

if TYPE_CHECKING:
    from fbdl_fast.config import ModelConfig
    from fbdl_fast.data import LabelMap, Posts

Alpha = Optional[Union[float, Sequence[float], torch.Tensor]]


def _as_tensor(values: Optional[Union[Sequence[float], torch.Tensor]]) -> Optional[torch.Tensor]:
    return None if values is None else torch.as_tensor(values, dtype=torch.float32)


class DiceLoss(nn.Module):
    """Multi-class soft dice loss on softmax probabilities against one-hot labels.

    For each class c over the batch: dice_c = (2 sum_n p_nc y_nc + smooth)
    / (sum_n p_nc + sum_n y_nc + smooth); the loss is 1 - the (optionally weighted) mean of
    dice_c over classes. `smooth` keeps classes absent from a batch well defined (their dice is 1
    only when no probability goes to them). Samples labelled ignore_index are dropped.
    """

    weight: Optional[torch.Tensor]

    def __init__(
        self,
        smooth: float = 1.0,
        weight: Optional[Union[Sequence[float], torch.Tensor]] = None,
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"dice loss: smooth={smooth!r} is invalid; expected a number >= 0")
        self.smooth, self.ignore_index = smooth, ignore_index
        self.register_buffer("weight", _as_tensor(weight))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = labels != self.ignore_index
        logits, labels = logits[keep], labels[keep]
        probs = logits.float().softmax(dim=-1)  # (N, C)
        onehot = F.one_hot(labels, probs.shape[-1]).to(probs.dtype)  # (N, C)
        intersection = (probs * onehot).sum(dim=0)  # (C,)
        cardinality = probs.sum(dim=0) + onehot.sum(dim=0)  # (C,)
        # clamp: with smooth=0 an absent, unpredicted class would be 0/0
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(1e-7)
        if self.weight is None:
            return 1 - dice.mean()
        return 1 - (self.weight * dice).sum() / self.weight.sum()

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}"


# name -> nn.Module class; kwargs of the class are the loss's options.
LOSSES: dict[str, type[nn.Module]] = {
    "cross_entropy": nn.CrossEntropyLoss,
    "focal": FocalLoss,
    "dice": DiceLoss,
    "huber": nn.HuberLoss,
    "cosine_embedding": nn.CosineEmbeddingLoss,
    "triplet": nn.TripletMarginLoss,
}

# The losses a classifier can train with: criterion(logits (N, C), labels (N,)). The tuple is
# config.py's, which checks ModelConfig.loss without importing torch.
CLASSIFICATION_LOSSES = CLASSIFICATION_LOSS_NAMES


def create_loss(config: ModelConfig, **kwargs: Any) -> nn.Module:
    """The criterion(logits, labels) named by config.loss_name ("focal" when use_focal_loss).

    Honours config.class_weights (all three), label_smoothing (cross-entropy, focal), focal_gamma
    and focal_alpha. config.multi_label: multilabel.MultiLabelLoss (binary cross-entropy, or the
    binary focal loss with focal_gamma). kwargs override or extend the options (e.g.
    ignore_index=-1, smooth=0.5).
    """
    name = config.loss_name
    if name not in CLASSIFICATION_LOSSES:
        raise ValueError(
            f"loss {name!r} cannot train a classifier (criterion(logits, labels)); accepted: "
            f"{', '.join(CLASSIFICATION_LOSSES)}"
        )
    if config.multi_label:  # multi-hot targets: one sigmoid a class
        from fbdl_fast.training.multilabel import MultiLabelLoss

        return MultiLabelLoss(gamma=config.focal_gamma if name == "focal" else None)
    weight = _as_tensor(config.class_weights)
    options: dict[str, Any]
    if name == "cross_entropy":
        options = {"weight": weight, "label_smoothing": config.label_smoothing}
    elif name == "focal":
        options = {
            "gamma": config.focal_gamma,
            "alpha": config.focal_alpha,
            "weight": weight,
            "label_smoothing": config.label_smoothing,
        }
    else:
        options = {"weight": weight}
    options.update(kwargs)
    return LOSSES[name](**options)


def balanced_class_weights(counts: Sequence[int]) -> list[float]:
    """Inverse-frequency class weights from the training posts per class: w_c = n / (C * n_c).

    Normalised as scikit-learn's "balanced": the mean weight over the training posts is 1, so
    the loss keeps its scale and a balanced set gets all ones. A class with no training post
    (seen only in validation) gets the largest weight of the others: it is the rarest.
    """
    if len(counts) < 1 or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts
    ):
        raise ValueError(f"class counts {list(counts)!r} are invalid; expected integers >= 0")
    total = sum(counts)
    if total == 0:
        raise ValueError("class counts are all 0; balanced class weights need training posts")
    weights = [total / (len(counts) * c) if c else 0.0 for c in counts]
    largest = max(weights)
    return [w if c else largest for w, c in zip(weights, counts)]


# A run's class weights: "balanced", "none", a JSON / CSV file of label weights, or label -> weight.
ClassWeights = Union[str, "os.PathLike[str]", Mapping[Any, float]]
CLASS_WEIGHT_CHOICES = ("balanced", "none")


class LossWeights(TypedDict, total=False):
    """The ModelConfig fields loss_class_weights sets."""

    class_weights: Optional[list[float]]
    focal_alpha: Optional[list[float]]


def loss_class_weights(
    choice: ClassWeights, train: Posts, label_map: LabelMap, *, as_focal_alpha: bool = False
) -> LossWeights:
    """The class-weights rule of a training run, as the ModelConfig fields it sets.

    `choice` is "none" (no weights), "balanced" (balanced_class_weights over the training posts
    `train`: w_c = n / (C * n_c)), a JSON / CSV file (data.read_class_weights) or a mapping
    label -> weight; a file's or mapping's weights are put in label_map's class order, naming
    every label (ValueError naming the unknown or missing ones). Returns
    {"class_weights": weights}, or with `as_focal_alpha` {"class_weights": None,
    "focal_alpha": weights}: the focal loss's per-class alpha instead (then nothing else is
    weighted).

        loss_class_weights("balanced", train, label_map)  # counts [6, 3, 1]: [10/18, 10/9, 10/3]
    """
    from fbdl_fast.data import class_counts, read_class_weights, weights_in_label_order

    weights: Optional[list[float]]
    if isinstance(choice, Mapping):
        weights = weights_in_label_order(choice, label_map, "the mapping of class weights")
    elif choice == "none":
        weights = None
    elif choice == "balanced":
        counts = class_counts(label_map.encode_all(train), len(label_map))
        weights = balanced_class_weights(counts)
    else:
        weights = read_class_weights(choice, label_map)
    if not as_focal_alpha:
        return {"class_weights": weights}
    if weights is None:
        raise ValueError(
            "as_focal_alpha takes the focal loss's alpha from the class weights, and the "
            "choice is none; accepted: balanced, a file or a mapping"
        )
    return {"class_weights": None, "focal_alpha": weights}


class LossFunctions:
    """The 0.x API's namespace, kept for compatibility: functional forms, each a mean over the
    batch."""

    @staticmethod
    def cross_entropy_loss(
        predictions: torch.Tensor,
        targets: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        return F.cross_entropy(predictions, targets, weight=weight, label_smoothing=label_smoothing)

    @staticmethod
    def focal_loss(
        predictions: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0, gamma: float = 2.0
    ) -> torch.Tensor:
        # The 0.x API's scalar alpha multiplies every sample's loss, so it factors out of the mean.
        return alpha * fused.focal_loss(predictions, targets, gamma=gamma)

    @staticmethod
    def dice_loss(
        predictions: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0
    ) -> torch.Tensor:
        return DiceLoss(smooth=smooth)(predictions, targets)

    @staticmethod
    def huber_loss(
        predictions: torch.Tensor, targets: torch.Tensor, delta: float = 1.0
    ) -> torch.Tensor:
        return F.huber_loss(predictions, targets, delta=delta)

    @staticmethod
    def cosine_embedding_loss(
        x1: torch.Tensor, x2: torch.Tensor, y: torch.Tensor, margin: float = 0.0
    ) -> torch.Tensor:
        return F.cosine_embedding_loss(x1, x2, y, margin=margin)

    @staticmethod
    def triplet_loss(
        anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 1.0
    ) -> torch.Tensor:
        return F.triplet_margin_loss(anchor, positive, negative, margin=margin)


__all__ = [
    "CLASSIFICATION_LOSSES",
    "CLASS_WEIGHT_CHOICES",
    "LOSSES",
    "ClassWeights",
    "DiceLoss",
    "LossFunctions",
    "balanced_class_weights",
    "create_loss",
    "loss_class_weights",
]
