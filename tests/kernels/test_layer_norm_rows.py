"""LayerNorm with several rows per program: rows of up to ROWS_MAX_N values go
to kernels.layer_norm._forward_rows_kernel, BLOCK_M rows a tile on a persistent grid, and up to
BACKWARD_ROWS_MAX_N values to _backward_rows_kernel, each program a block of rows a tile at a time.

Against torch in float64: the output, mean and rstd, and every gradient through the module (the
backward reads the forward's mean and rstd), in fp32, fp16, bf16 and the autocast mixture (bf16 x,
fp32 weight and bias, fp32 y); odd widths (100, 769: masked lanes and a masked stretch), row
counts that are not a multiple of BLOCK_M, programs walking several tiles, more programs than
tiles, no affine. A spy on the kernel proves it ran with the grid and BLOCK_M asserted.
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from fbdl_fast.kernels import layer_norm as kernels
from fbdl_fast.ops import layer_norm as op
from tolerances import assert_close

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


class _Spy:
    """Stands in for a @triton.jit kernel: records each launch's grid and constexprs."""

    def __init__(self, kernel) -> None:
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, kwargs))
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.fixture
def rows_kernel(kernel_device: str, monkeypatch: pytest.MonkeyPatch) -> _Spy:
    spy = _Spy(kernels._forward_rows_kernel)
    monkeypatch.setattr(kernels, "_forward_rows_kernel", spy)
    return spy


@pytest.fixture
def backward_rows_kernel(kernel_device: str, monkeypatch: pytest.MonkeyPatch) -> _Spy:
    spy = _Spy(kernels._backward_rows_kernel)
    monkeypatch.setattr(kernels, "_backward_rows_kernel", spy)
    return spy


def _programs(monkeypatch: pytest.MonkeyPatch, programs: Optional[int]) -> None:
    """Fix the persistent grid's size (None: the host's rule)."""
    if programs is not None:
        monkeypatch.setattr(kernels, "_forward_programs", lambda x, tiles, config: programs)


# (n, rows, x dtype, parameter dtype, fp32 output, affine, programs)
CASES = [
    (100, 37, FP32, FP32, False, "affine", None),  # 32-row tiles: 2 tiles, the last of 5 rows
    (769, 23, FP32, FP32, False, "affine", 2),  # 4-row tiles: 6 tiles, 3 a program, last of 3
    (769, 10, BF16, FP32, True, "affine", 2),  # autocast: bf16 x, fp32 w/b/y, bf16 dx
    (100, 9, BF16, BF16, False, "affine", 5),  # 1 tile, 5 programs: 4 with no tile
    (768, 6, FP16, FP16, False, "affine", 7),  # 2 tiles, 7 programs
    (512, 11, BF16, BF16, False, "none", 3),  # 8-row tiles, no affine
    (2048, 5, FP32, FP32, False, "weight", 1),  # 8 stretches a row, one program for 2 tiles
    (7, 300, FP16, FP32, True, "affine", 1),  # 256-row tiles, 2 rows a lane group, autocast
]


@pytest.mark.parametrize("n, rows, dtype, p_dtype, fp32_out, affine, programs", CASES)
def test_rows_kernel_matches_torch(
    rows_kernel: _Spy,
    backward_rows_kernel: _Spy,
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    rows: int,
    dtype: torch.dtype,
    p_dtype: torch.dtype,
    fp32_out: bool,
    affine: str,
    programs: Optional[int],
) -> None:
    _programs(monkeypatch, programs)
    x = (torch.randn(rows, n) * 3 + 1).to(dtype).requires_grad_()
    w = torch.randn(n, dtype=p_dtype).requires_grad_() if affine != "none" else None
    b = torch.randn(n, dtype=p_dtype).requires_grad_() if affine == "affine" else None
    leaves = [t for t in (x, w, b) if t is not None]
    y = op.LayerNormFunction.apply(x, w, b, n, 1e-5, fp32_out)

    config = kernels._rows_config(n, x.element_size())
    [(grid, flags)] = rows_kernel.launches
    tiles = -(-rows // config.block_m)
    assert flags["BLOCK_M"] == config.block_m and flags["SPLIT"] * flags["LANE_N"] >= n
    persistent = min(tiles, config.programs_per_sm * kernels._device_sms(x))
    assert grid == (programs if programs is not None else persistent,)

    refs = [t.detach().double().requires_grad_() for t in leaves]
    ref_w = refs[1] if w is not None else None
    ref_b = refs[-1] if b is not None else None
    y_ref = F.layer_norm(refs[0], (n,), ref_w, ref_b, 1e-5)
    assert y.dtype == (FP32 if fp32_out else dtype)
    assert_close(y, y_ref)
    dy = torch.randn(rows, n).to(y.dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    grads_ref = torch.autograd.grad(y_ref, refs, dy.double())
    assert len(backward_rows_kernel.launches) == (n <= kernels.BACKWARD_ROWS_MAX_N)
    for grad, leaf, want in zip(grads, leaves, grads_ref):
        assert grad.dtype == leaf.dtype
        # dy is rounded to y's dtype, x to its own: the coarser one's tolerance
        coarse = max((dtype, leaf.dtype), key=lambda t: torch.finfo(t).eps)
        assert_close(grad, want, dtype=coarse)


@pytest.mark.parametrize("n, rows, programs", [(100, 70, 2), (769, 9, 3), (64, 1, 4)])
def test_rows_kernel_statistics(rows_kernel, monkeypatch, n: int, rows: int, programs: int):
    """mean and rstd of every row, the last partial tile's included; x is a view of the first
    rows of a larger tensor, so a load past M would read real (other) rows."""
    _programs(monkeypatch, programs)
    base = torch.randn(rows + 5, n) * 2 - 1
    x = base[:rows]
    y, mean, rstd = kernels.layer_norm_forward(x, n, None, None, 1e-5)
    assert len(rows_kernel.launches) == 1
    x64 = x.double()
    assert_close(mean, x64.mean(-1), dtype=FP32)
    assert_close(rstd, torch.rsqrt(x64.var(-1, unbiased=False) + 1e-5), dtype=FP32)
    assert_close(y, F.layer_norm(x64, (n,)))


def test_rows_kernel_strided_input(rows_kernel) -> None:
    """A row stride that is not N and a column stride of 2 (views, not copies)."""
    wide = torch.randn(13, 300)
    for view, n in ((wide[:, 10:110], 100), (wide[:, ::3], 100)):
        y, _, _ = kernels.layer_norm_forward(view, n, None, None, 1e-5)
        assert_close(y, F.layer_norm(view.double(), (n,)))
    assert len(rows_kernel.launches) == 2


def test_wide_rows_keep_the_one_row_kernel(rows_kernel) -> None:
    x = torch.randn(2, kernels.ROWS_MAX_N + 1)
    y, _, _ = kernels.layer_norm_forward(x, x.shape[1], None, None, 1e-5)
    assert rows_kernel.launches == []
    assert_close(y, F.layer_norm(x.double(), (x.shape[1],)))


@pytest.mark.parametrize("element_size", [2, 4])
def test_rows_config_keeps_each_row_in_one_warp(element_size: int) -> None:
    """The kernel's 2-D tile has SPLIT * BLOCK_M lines of LANE_N values (line i: stretch
    i // BLOCK_M of row i % BLOCK_M); Triton lays it out 16 bytes a lane along a line, then warps
    along lines (line i on warp (i // lines-a-warp) mod num_warps). A row stays inside one warp
    when it is one line, or when BLOCK_M is a multiple of num_warps and a line fills a warp. The
    tile must also hold each column once, and every warp must get lines (BLOCK_M large enough)."""
    for n in [1, 7, 16, 33, 64, 100, 128, 255, 256, 512, 768, 769, 1024, 1500, 2048]:
        c = kernels._rows_config(n, element_size)
        block_n = c.split * c.lane_n
        assert block_n >= n and block_n == max(16, 1 << (n - 1).bit_length()), (n, c)
        lanes_per_line = min(32, c.lane_n // (16 // element_size))
        lines_a_warp = 32 // lanes_per_line
        assert c.block_m * c.split >= c.num_warps * lines_a_warp, (n, c)
        if c.split > 1:
            assert lines_a_warp == 1 and c.block_m % c.num_warps == 0, (n, c)
        assert c.block_m * block_n <= 2048 * 4 * c.num_warps, (n, c)  # <= 64 values a thread
        assert c.programs_per_sm * c.num_warps <= 16, (n, c)


@pytest.mark.parametrize(
    "rows, n, programs, dtype",
    [(37, 100, 3, FP32), (300, 45, 150, BF16), (23, 769, 2, FP16), (40, 1024, 3, FP32)],
)
def test_backward_rows_blocks(
    backward_rows_kernel, monkeypatch, rows: int, n: int, programs: int, dtype: torch.dtype
):
    """The backward's programs own contiguous blocks of rows, whole tiles when a block holds
    one (40 rows of 1,024 in 3 programs: 14 -> 16 rows, the last 8), else fewer rows than a tile
    (37 rows of 100 in blocks of 13 against 32-row tiles; 300 rows in 150 programs of 2); dx,
    dw, db against float64 torch, the programs' dw/db partial rows summed."""
    monkeypatch.setattr(kernels, "_backward_programs", lambda x, rows: programs)
    x = torch.randn(rows, n).to(dtype)
    w, b = torch.randn(n, dtype=dtype), torch.randn(n, dtype=dtype)
    dy = torch.randn(rows, n).to(dtype)
    _, mean, rstd = kernels.layer_norm_forward(x, n, w, b, 1e-5)
    dx, dw, db = kernels.layer_norm_backward(dy, x, n, w, b, mean, rstd, True, True)
    [(grid, flags)] = backward_rows_kernel.launches
    config = kernels._rows_config(n, x.element_size())
    per_program = -(-rows // programs)
    if per_program >= config.block_m:
        per_program = -(-per_program // config.block_m) * config.block_m
    assert flags["BLOCK_M"] == config.block_m and grid == (-(-rows // per_program),)
    leaves = [t.double().requires_grad_() for t in (x, w, b)]
    F.layer_norm(leaves[0], (n,), leaves[1], leaves[2], 1e-5).backward(dy.double())
    for grad, leaf in zip((dx, dw, db), leaves):
        assert grad.dtype == dtype
        assert_close(grad, leaf.grad)
