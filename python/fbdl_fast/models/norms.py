"""Normalisation layers by name: `create_norm("layer", 512)`.

NORMS maps a name to a factory `(dim, **kwargs) -> nn.Module`; `dim` is the normalised feature
size (the channel count for batch/instance/group norm, whose inputs are (N, C) or (N, C, L)).
"layer" builds fbdl_fast.nn.LayerNorm (the fused drop-in for torch.nn.LayerNorm, same state_dict);
pass fused=False for torch's own. The 0.x API's `NormalizationLayers` namespace is a thin
facade.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

import fbdl_fast.nn as fnn


class AdaptiveLayerNorm(nn.Module):
    """LayerNorm whose scale and shift are predicted from a conditioning vector.

    y = LayerNorm(x) * (1 + scale(cond)) + shift(cond), with [scale, shift] = Linear(cond).
    The projection starts at zero, so a fresh layer is exactly a plain LayerNorm and conditioning
    is learned from there (the "adaLN-Zero" start). x is (..., dim); cond is (B, cond_dim) for one
    vector per sample, broadcast over x's middle dims, or has x's leading dims for per-position
    conditioning.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        _require_positive("AdaptiveLayerNorm", "dim", dim)
        _require_positive("AdaptiveLayerNorm", "cond_dim", cond_dim)
        self.dim, self.cond_dim = dim, cond_dim
        self.norm = fnn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.proj = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim or cond.shape[-1] != self.cond_dim:
            raise ValueError(
                f"AdaptiveLayerNorm(dim={self.dim}, cond_dim={self.cond_dim}) got x of shape "
                f"{tuple(x.shape)} and cond of shape {tuple(cond.shape)}; expected x (..., "
                f"{self.dim}) and cond (B, {self.cond_dim})"
            )
        scale, shift = self.proj(cond).chunk(2, dim=-1)  # each (B, dim)
        while scale.dim() < x.dim():  # (B, dim) -> (B, 1, ..., dim): one vector per sample
            scale, shift = scale.unsqueeze(-2), shift.unsqueeze(-2)
        return self.norm(x) * (1 + scale) + shift

    def extra_repr(self) -> str:
        return f"dim={self.dim}, cond_dim={self.cond_dim}"


def _require_positive(owner: str, name: str, value: int) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected a positive integer")


def _layer(
    dim: int, eps: float = 1e-5, elementwise_affine: bool = True, fused: bool = True
) -> nn.Module:
    cls = fnn.LayerNorm if fused else nn.LayerNorm
    return cls(dim, eps=eps, elementwise_affine=elementwise_affine)


def _batch(dim: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True) -> nn.Module:
    return nn.BatchNorm1d(dim, eps=eps, momentum=momentum, affine=affine)


def _instance(dim: int, eps: float = 1e-5, affine: bool = False) -> nn.Module:
    # affine=False is torch's default; instance statistics are never tracked across batches.
    return nn.InstanceNorm1d(dim, eps=eps, affine=affine)


def _group(dim: int, num_groups: Optional[int] = None, eps: float = 1e-5) -> nn.Module:
    # Default: gcd(dim, 32) groups, the usual 32 when dim allows it, and always a divisor of dim.
    groups = math.gcd(dim, 32) if num_groups is None else num_groups
    if not (isinstance(groups, int) and groups >= 1 and dim % groups == 0):
        raise ValueError(
            f"group norm: num_groups={groups!r} is invalid for {dim} channels; "
            f"expected a positive divisor of {dim}"
        )
    return nn.GroupNorm(groups, dim, eps=eps)


def _adaptive_layer(dim: int, cond_dim: Optional[int] = None, eps: float = 1e-5) -> nn.Module:
    return AdaptiveLayerNorm(dim, dim if cond_dim is None else cond_dim, eps=eps)


# name -> factory(dim, **kwargs) -> module
NORMS: dict[str, Callable[..., nn.Module]] = {
    "layer": _layer,
    "batch": _batch,
    "instance": _instance,
    "group": _group,
    "adaptive_layer": _adaptive_layer,
}


def create_norm(name: str, dim: int, **kwargs: object) -> nn.Module:
    """Build normalisation layer `name` over `dim` features; kwargs go to its factory (eps, ...)."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; accepted: {', '.join(sorted(NORMS))}")
    _require_positive(f"{name} norm", "dim", dim)
    return NORMS[name](dim, **kwargs)


class NormalizationLayers:
    """The 0.x API's namespace, kept for compatibility, as thin wrappers over NORMS."""

    @staticmethod
    def layer_norm(dim: int, eps: float = 1e-5) -> nn.Module:
        return create_norm("layer", dim, eps=eps)

    @staticmethod
    def batch_norm(dim: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
        return create_norm("batch", dim, eps=eps, momentum=momentum)

    @staticmethod
    def instance_norm(dim: int, eps: float = 1e-5, affine: bool = False) -> nn.Module:
        return create_norm("instance", dim, eps=eps, affine=affine)

    @staticmethod
    def group_norm(num_groups: int, num_channels: int, eps: float = 1e-5) -> nn.Module:
        return create_norm("group", num_channels, num_groups=num_groups, eps=eps)

    @staticmethod
    def adaptive_layer_norm(dim: int, cond_dim: int, eps: float = 1e-5) -> AdaptiveLayerNorm:
        return AdaptiveLayerNorm(dim, cond_dim, eps=eps)


__all__ = ["NORMS", "AdaptiveLayerNorm", "NormalizationLayers", "create_norm"]
