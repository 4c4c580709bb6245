"""Finite numbers only: a model whose weights or logits hold NaN or infinity gives answers that
look like answers (a label, a probability "nan") and mean nothing, so it is neither published
nor served.

    nonfinite_tensor(model.state_dict())   # "fc.weight": the first tensor holding NaN or inf
    check_logits(logits)                   # ValueError when any post's logits are not finite
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch


def nonfinite_tensor(tensors: Mapping[str, Any]) -> Optional[str]:
    """The name of the first floating-point tensor of `tensors` (a state dict) holding NaN or
    an infinity; None when all are finite. Other values (ints, steps, metadata) are skipped."""
    for name, value in tensors.items():
        floating = isinstance(value, torch.Tensor) and value.is_floating_point()
        if floating and not bool(torch.isfinite(value).all()):
            return name
    return None


def check_logits(logits: torch.Tensor) -> None:
    """ValueError when any row of `logits` (N, C) holds NaN or an infinity: the probabilities
    of those posts, and so their labels, would be meaningless."""
    bad = int((~torch.isfinite(logits.detach())).any(dim=-1).sum())
    if bad:
        raise ValueError(
            f"the model's logits hold NaN or infinite values for {bad} of {len(logits)} posts; "
            "its weights diverged or are damaged, and no label or probability can be given"
        )


__all__ = ["check_logits", "nonfinite_tensor"]
