"""Ops: each has a PyTorch `reference`, a Triton path (an autograd.Function over kernels/), and a
`dispatch` that picks one by the rules in _dispatch.py. `explain` says what would run and why.

FBDL_FAST_BACKEND, TRITON_INTERPRET and FBDL_FAST_AUTOTUNE are read once, at import; `refresh()`
reads them again after a change, `settings()` says what was read."""

from __future__ import annotations

import importlib
from typing import Any

from fbdl_fast.ops._dispatch import (
    BackendError,
    Decision,
    Settings,
    backend,
    interpreting,
    refresh,
    settings,
)

OPS = ("layer_norm", "focal_loss", "attention")

__all__ = [
    "OPS",
    "BackendError",
    "Decision",
    "Settings",
    "backend",
    "explain",
    "interpreting",
    "refresh",
    "settings",
]


def explain(op: str, *tensors: Any, **kwargs: Any) -> Decision:
    """What `op` would run on these inputs and why, without running it.

    Takes the op's own arguments, e.g. ``explain("layer_norm", x, (768,), weight, bias)``.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are: {', '.join(OPS)}")
    module = importlib.import_module(f"fbdl_fast.ops.{op}")
    return module.explain(*tensors, **kwargs)
