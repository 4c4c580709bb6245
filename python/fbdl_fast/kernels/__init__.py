"""Triton kernels: tensors in, tensors out. No autograd, modules, config or dispatch here.

Importing this package does not import Triton; each kernel module does, and only ops/ imports
them, lazily. `interpreting` is the one reading of TRITON_INTERPRET for the whole library (the
kernels' launch choices and ops' dispatch both use it)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import torch

# What Triton reads as true for a boolean variable such as TRITON_INTERPRET, case-insensitively
# (checked against triton 3.9's knobs: "1", "TRUE", "Yes", "y", "ON" are true; " 1", "2", "t"
# are not).
TRUE_SPELLINGS = ("1", "true", "yes", "on", "y")


def flag(value: Optional[str]) -> bool:
    """A boolean environment value read as Triton reads it; unset is false."""
    return value is not None and value.lower() in TRUE_SPELLINGS


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (or any spelling in TRUE_SPELLINGS): Triton kernels then run
    on CPU tensors through numpy. Reads the environment on each call; ops' dispatch keeps its own
    copy (see fbdl_fast.ops.refresh)."""
    return flag(os.environ.get("TRITON_INTERPRET"))


def tuned_here(x: torch.Tensor) -> bool:
    """Whether a launch on `x` may be autotuned (when asked): compiled for CUDA, not in the
    interpreter, which keeps each kernel's documented rule."""
    return x.is_cuda and not interpreting()


__all__ = ["TRUE_SPELLINGS", "flag", "interpreting", "tuned_here"]
