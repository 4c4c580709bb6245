"""Multi-class focal loss (Lin et al., 2017) for imbalanced classes: a drop-in for
nn.CrossEntropyLoss that down-weights examples the model already gets right.

    loss_i = alpha[y_i] * (1 - p_i)^gamma * CE_i

CE_i is F.cross_entropy's per-row loss with the same weight and label_smoothing, so gamma=0 and
alpha=None give cross-entropy exactly. The exact semantics (smoothing, the mean's denominator,
all-ignored batches) are written once in fbdl_fast.ops.focal_loss; the fused Triton kernel runs on
CUDA, the PyTorch reference elsewhere (see fbdl_fast.ops.explain("focal_loss", ...)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch

from fbdl_fast.ops import focal_loss as _op
from fbdl_fast.ops.checks import check_gamma


def focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Union[float, Sequence[float], torch.Tensor, None] = None,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Focal loss of logits `input` (..., C) against class indices `target` (...).

    gamma: focusing parameter >= 0 (0 is cross-entropy). alpha: balance factor — None, a number
    for every class, or one value per class (not in the mean's denominator). weight: per-class
    weights as in F.cross_entropy. ignore_index: targets with this value count for nothing.
    reduction: "none" | "mean" (divided by the summed weights of counted rows; 0 when there are
    none) | "sum". label_smoothing: in [0, 1], applied as F.cross_entropy does, then focused by
    the true-class probability.
    """
    return _op.dispatch(
        input, target, gamma, alpha, weight, ignore_index, reduction, label_smoothing
    )


class FocalLoss(torch.nn.Module):
    """Module form of `focal_loss`. Tensor weight/alpha are buffers, so `.to(device)` moves them
    and they are saved in the state_dict; a number alpha is a plain attribute."""

    weight: Optional[torch.Tensor]

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Union[float, Sequence[float], torch.Tensor, None] = None,
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        # Check what can be checked without logits now, so a bad config fails at construction.
        if reduction not in _op.REDUCTIONS:
            raise ValueError(
                f"FocalLoss: reduction={reduction!r} is not accepted; use one of "
                f"{', '.join(map(repr, _op.REDUCTIONS))}"
            )
        gamma = check_gamma(gamma, "FocalLoss.gamma")
        if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(
                f"FocalLoss: label_smoothing={label_smoothing!r} is not accepted; "
                "use a number in [0, 1]"
            )
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", _as_tensor(weight, "weight"))
        # A number stays a number (the same for every class); per-class alpha is a buffer.
        if alpha is None:
            self.alpha = None
        elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            self.alpha = float(alpha)
        else:
            self.register_buffer("alpha", _as_tensor(alpha, "alpha"))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_loss(
            input,
            target,
            self.gamma,
            self.alpha,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
        )

    def extra_repr(self) -> str:
        alpha = "per-class" if isinstance(self.alpha, torch.Tensor) else self.alpha
        return (
            f"gamma={self.gamma}, alpha={alpha}, reduction={self.reduction!r}, "
            f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"
        )


def _as_tensor(value: object, name: str) -> Optional[torch.Tensor]:
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return torch.tensor(value, dtype=torch.float32)
    raise ValueError(
        f"FocalLoss: {name} of type {type(value).__name__} is not accepted; use a "
        "tensor or a sequence of floats with one value per class"
    )


__all__ = ["FocalLoss", "focal_loss"]
