"""Ops: each has a PyTorch `reference`, a Triton path (an autograd.Function over kernels/), and a
`dispatch` that picks one by the rules in _dispatch.py. `explain` says what would run and why.

The names each op module uses, the same in all three (`<op>` is the module's name):
`<Op>Function` the Triton path's autograd.Function, `check_<op>_args` the argument check both
paths share, `reference`, `unsupported`, `explain` and `dispatch`; the Triton launchers they
call are kernels/<op>.py's `<op>_forward` and `<op>_backward`, registered as the custom ops
torch.ops.fbdl_fast.<op>_forward/_backward.

FBDL_FAST_BACKEND, TRITON_INTERPRET and FBDL_FAST_AUTOTUNE are read once, at import; `refresh()`
reads them again after a change, `settings()` says what was read, `reference_backend()` runs a
block on the PyTorch references. `decide` and `reference_at_once` are the dispatch rule itself,
for the layers in nn/ that choose between the kernel and torch's own module."""

from __future__ import annotations

import importlib
from typing import Any

from fbdl_fast.ops._dispatch import (
    BackendError,
    Decision,
    Settings,
    backend,
    decide,
    interpreting,
    reference_at_once,
    reference_backend,
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
    "decide",
    "explain",
    "interpreting",
    "reference_at_once",
    "reference_backend",
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
