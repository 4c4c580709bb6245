"""LayerNorm backward: dw and db summed on the device from the backward's per-program partial
rows (kernels.layer_norm._sum_partials_kernel, one launch for both, in the parameters' dtypes),
and the pipelined row loop (tl.range with num_stages=2), against torch in float64.

On the interpreter the backward runs 4 programs (4 partial rows); here the program count is
raised so the reduction walks several 64-row steps with a partial last step, over odd widths
(a partial last 32-column block).
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from fbdl_fast.kernels import layer_norm as kernels
from tolerances import assert_close

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


def run_backward(
    rows: int,
    n: int,
    dtype: torch.dtype,
    param_dtype: torch.dtype,
    weight: bool,
    bias: bool,
    max_tile: int = kernels.MAX_TILE,
) -> tuple[tuple[Optional[torch.Tensor], ...], tuple[Optional[torch.Tensor], ...]]:
    """(dx, dw, db) from the kernels and from F.layer_norm in float64 on the same values."""
    x = torch.randn(rows, n, dtype=dtype)
    w = torch.randn(n, dtype=param_dtype) if weight else None
    b = torch.randn(n, dtype=param_dtype) if bias else None
    dy = torch.randn(rows, n, dtype=dtype)
    _, mean, rstd = kernels.layer_norm_forward(x, n, w, b, 1e-5, max_tile=max_tile)
    ours = kernels.layer_norm_backward(dy, x, n, w, b, mean, rstd, weight, bias, max_tile=max_tile)
    leaves = [t.double().requires_grad_() if t is not None else None for t in (x, w, b)]
    F.layer_norm(leaves[0], (n,), leaves[1], leaves[2], 1e-5).backward(dy.double())
    return ours, tuple(t.grad if t is not None else None for t in leaves)


@pytest.fixture
def many_programs(kernel_device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to 150 backward programs (partial rows) on any device."""
    monkeypatch.setattr(kernels, "_backward_programs", lambda x, rows: max(1, min(rows, 150)))


@pytest.mark.parametrize(
    ("dtype", "param_dtype", "weight", "bias"),
    [
        (FP32, FP32, True, True),
        (FP16, FP16, True, True),
        (BF16, FP32, True, False),  # bf16 rows, fp32 parameters (autocast's mixture)
        (FP32, FP32, False, True),  # a bias without a weight: db alone
        (BF16, BF16, True, True),  # bf16 dw/db: rounded to nearest from the fp32 sums
    ],
)
def test_partials_summed_on_device(many_programs, dtype, param_dtype, weight, bias):
    rows, n = 300, 45  # 150 partial rows: 64 + 64 + 22; columns 32 + 13
    (dx, dw, db), (rx, rw, rb) = run_backward(rows, n, dtype, param_dtype, weight, bias)
    assert_close(dx, rx)
    for grad, want in ((dw, rw), (db, rb)):
        assert (grad is None) == (want is None)
        if grad is not None:
            assert grad.dtype == param_dtype and grad.shape == (n,)
            # dy and x are rounded to `dtype` before the sums: the tolerance of the coarser one
            coarse = dtype if torch.finfo(dtype).eps > torch.finfo(param_dtype).eps else param_dtype
            assert_close(grad, want, dtype=coarse)


def test_partials_tiled_rows(many_programs):
    # Rows walked in 32-wide tiles (max_tile=32): pass 1 then the pipelined pass 2.
    (dx, dw, db), (rx, rw, rb) = run_backward(200, 70, FP32, FP32, True, True, max_tile=32)
    for actual, want in ((dx, rx), (dw, rw), (db, rb)):
        assert_close(actual, want)


def test_partials_exact_sum_order(many_programs):
    # Integer-valued partials: any summation order gives the exact sum, so the reduction kernel
    # must equal torch's sum bit for bit, and repeat itself.
    P, n = 150, 45
    part_w = torch.randint(-1000, 1000, (P, n)).float()
    part_b = torch.randint(-1000, 1000, (P, n)).float()
    dw, db = torch.empty(n), torch.empty(n, dtype=FP16)
    grid = (-(-n // kernels.PARTIALS_BLOCK_N),)
    kernels._sum_partials_kernel[grid](
        part_w, part_b, dw, db, P, n, COMPUTE_DW=True, COMPUTE_DB=True,
        BLOCK_P=kernels.PARTIALS_BLOCK_P, BLOCK_N=kernels.PARTIALS_BLOCK_N,
        enable_fp_fusion=kernels.FP_FUSION,
    )  # fmt: skip
    assert torch.equal(dw, part_w.sum(0))
    assert torch.equal(db, part_b.sum(0).half())


def test_no_rows_gives_zero_gradients(kernel_device):
    w, b = torch.randn(16), torch.randn(16)
    x = torch.randn(0, 16)
    _, mean, rstd = kernels.layer_norm_forward(x, 16, w, b, 1e-5)
    dx, dw, db = kernels.layer_norm_backward(
        torch.randn(0, 16), x, 16, w, b, mean, rstd, True, True
    )
    assert dx.shape == (0, 16)
    assert torch.equal(dw, torch.zeros(16)) and torch.equal(db, torch.zeros(16))
