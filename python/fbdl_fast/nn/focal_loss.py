"""PLACEHOLDER until the fused focal loss lands (issue 5): plain torch composition."""

from typing import Optional, Union

import torch
import torch.nn.functional as F


def focal_loss(input: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               alpha: Optional[Union[float, torch.Tensor]] = None,
               weight: Optional[torch.Tensor] = None, ignore_index: int = -100,
               reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    ce = F.cross_entropy(input, target, weight=weight, ignore_index=ignore_index,
                         reduction="none", label_smoothing=label_smoothing)
    pt = torch.exp(-ce)
    loss = (1 - pt) ** gamma * ce
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


class FocalLoss(torch.nn.Module):
    def __init__(self, gamma: float = 2.0, alpha=None, weight=None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma, self.alpha, self.weight = gamma, alpha, weight
        self.ignore_index, self.reduction, self.label_smoothing = (
            ignore_index, reduction, label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(input, target, self.gamma, self.alpha, self.weight,
                          self.ignore_index, self.reduction, self.label_smoothing)


__all__ = ["FocalLoss", "focal_loss"]
