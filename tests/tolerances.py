"""Parity tolerances per dtype, written once for every fast-path test.

Where they come from: torch.testing.assert_close's own defaults per dtype (fp32: 1.3e-6 rel /
1e-5 abs; fp16: 1e-3 / 1e-5; bf16: 1.6e-2 / 1e-5), widened because a fused kernel accumulates in
another order than the reference: fp32 results differ by a few ulps of the row's reduction
(sums over up to 8192 elements), and half-precision outputs are rounded once from an fp32 value
that itself differs in the last bits, so they may land one half-precision ulp apart (fp16 ulp
at 1.0 is 9.8e-4, bf16's is 7.8e-3). Gradients of reductions get the same bounds relative to
their magnitude.
"""

from __future__ import annotations

from typing import Any

import torch

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-7},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return TOLERANCES[dtype]


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None, **kwargs: Any
) -> None:
    """torch.testing.assert_close with this project's tolerance for `dtype` (default: actual's)."""
    tol = tolerance(dtype or actual.dtype)
    torch.testing.assert_close(actual, expected.to(actual.dtype), **{**tol, **kwargs})
