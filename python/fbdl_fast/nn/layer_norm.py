"""Drop-in LayerNorm: torch.nn.LayerNorm's constructor, parameters and state_dict, running the
fused Triton kernel where fbdl_fast.ops' dispatch rules allow and torch's own elsewhere."""

from __future__ import annotations

from typing import Optional

import torch

from fbdl_fast.ops import layer_norm as _op
from fbdl_fast.ops.layer_norm import ShapeLike


def layer_norm(
    input: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """torch.nn.functional.layer_norm, with the same arguments and results."""
    return _op.dispatch(input, normalized_shape, weight, bias, eps)


class LayerNorm(torch.nn.LayerNorm):
    """torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
    device=None, dtype=None) with a fused forward and backward.

    A subclass, so construction, `weight`/`bias` parameters, initialisation, repr and state_dict
    are torch's own: a torch.nn.LayerNorm state_dict loads into it and back unchanged.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


__all__ = ["LayerNorm", "layer_norm"]
