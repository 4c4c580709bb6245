"""LayerNorm forward and backward as Triton kernels: tensors in, tensors out.

The maths, for one row x of N values (computed in fp32 whatever the storage dtype):

    mean = Σ x / N
    var  = Σ (x − mean)² / N                 biased, as torch.nn.LayerNorm
    rstd = 1 / sqrt(var + eps)
    x̂    = (x − mean) · rstd
    y    = x̂ · w + b                         w = 1 and b = 0 when absent

Backward, with g = dy · w (g = dy without a weight):

    dx = rstd · (g − x̂ · mean(g · x̂) − mean(g))
    dw = Σ_rows dy · x̂                       db = Σ_rows dy

The forward saves mean and rstd per row (fp32) so the backward never recomputes the row
reductions over x. The backward runs a fixed number of programs, each owning a contiguous block of
rows: it writes dx for its rows and sums their dw/db contributions in fp32 into its own partial row;
a second kernel sums the partial rows column by column and writes dw and db in the parameters'
dtypes (deterministic: no atomics, no locks; one launch for both).

Rows up to ROWS_MAX_N (2,048) values are normalised several to a program (_forward_rows_kernel):
BLOCK_M rows a tile, one warp a row (or several rows a warp when they are short), tiles walked by
a persistent grid of a few programs an SM; _rows_config gives the block sizes per (N, dtype) and
why (with FBDL_FAST_AUTOTUNE=1 on CUDA, Triton's autotune picks among _rows_candidates instead,
the rule's first). Up to BACKWARD_ROWS_MAX_N (1,024) the backward walks its rows in the same tiles
(_backward_rows_kernel). Longer rows, up to MAX_TILE values, are held whole in registers (one
tile, one read of x), one row a program or a step. Longer still, rows are walked in
tiles of CHUNK values: three passes in the forward (mean, variance, normalise); in the backward
one pass per row for the two means, then a tile-major pass so each program's dw/db tile stays in
registers while it walks its rows.

bf16 is loaded and cast to fp32 before any arithmetic (the CPU interpreter holds bf16 as raw 16-bit
integers and cannot compute in it); outputs are rounded to nearest-even into their tensor's dtype
on store. Rows may have any row and column strides (a stride of 0 too, as in expanded gradients);
inputs whose rows cannot be viewed as an (M, N) matrix are copied first.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from fbdl_fast.kernels import tuned_here

MAX_TILE = 8192  # widest row held in registers; past it the backward spills (flash-attn's finding)
CHUNK = 4096  # tile width for longer rows
MIN_BLOCK = 16  # the interpreter and tl.arange want blocks of at least 16 lanes
# Rows up to ROWS_MAX_N values take the several-rows forward (_forward_rows_kernel), one warp a
# row, on a persistent grid (_rows_config says why these); up to BACKWARD_ROWS_MAX_N the
# backward too (_backward_rows_kernel: it holds x, dy, w, dw and db, 221-254 registers a thread
# at 1,024 on sm_90; 2,048 would spill).
ROWS_MAX_N = 2048
BACKWARD_ROWS_MAX_N = 1024
# The dw/db reduction's tiles: 32 fp32 columns are one 128-byte line per partial row; 64 partial
# rows a step (the backward has up to 4 per SM, 528 on an H200).
PARTIALS_BLOCK_N = 32
PARTIALS_BLOCK_P = 64
# Fused multiply-adds in the normalisation: one rounding instead of two. Said explicitly because
# Triton 3.9 warns when the default is left implicit (and will change it in 3.10).
FP_FUSION = True


@triton.jit
def _to_storage(x, dtype: tl.constexpr):
    """fp32 -> `dtype`, rounding to nearest (ties to even). bf16 is rounded by hand, in the bits:
    the interpreter's fp32->bf16 cast truncates (a GPU's rounds). The result is then exact in
    bf16, so the final cast cannot round again."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _forward_kernel(
    X,
    Y,
    W,
    B,
    Mean,
    Rstd,
    stride_xm,
    stride_xn,
    N,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ONE_TILE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride may pass 2**31
    X += row * stride_xm
    Y += row * N  # y is contiguous (M, N)
    if ONE_TILE:
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(X + cols * stride_xn, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(mask, x - mean, 0.0)  # padded lanes must not leak into the variance
        rstd = tl.rsqrt(tl.sum(xc * xc, axis=0) / N + eps)
        y = xc * rstd
        if HAS_WEIGHT:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + cols, _to_storage(y, Y.dtype.element_ty), mask=mask)
    else:
        acc = tl.full([BLOCK_N], 0.0, tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            acc += tl.load(X + cols * stride_xn, mask=cols < N, other=0.0).to(tl.float32)
        mean = tl.sum(acc, axis=0) / N
        acc = tl.full([BLOCK_N], 0.0, tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            x = tl.load(X + cols * stride_xn, mask=mask, other=0.0).to(tl.float32)
            xc = tl.where(mask, x - mean, 0.0)
            acc += xc * xc
        rstd = tl.rsqrt(tl.sum(acc, axis=0) / N + eps)
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            mask = cols < N
            x = tl.load(X + cols * stride_xn, mask=mask, other=0.0).to(tl.float32)
            y = (x - mean) * rstd
            if HAS_WEIGHT:
                y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(Y + cols, _to_storage(y, Y.dtype.element_ty), mask=mask)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)


@triton.jit
def _forward_rows_kernel(
    X,
    Y,
    W,
    B,
    Mean,
    Rstd,
    stride_xm,
    stride_xn,
    M,
    N,
    eps,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    SPLIT: tl.constexpr,
    LANE_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """The forward for short rows (N <= ROWS_MAX_N): BLOCK_M rows a tile, tiles taken in turn
    by a persistent grid (program p does tiles p, p + P, p + 2P, ...).

    A row is SPLIT stretches of LANE_N columns (32 lanes x 16 bytes of x). Memory is read and
    written as a 2-D [SPLIT * BLOCK_M, LANE_N] tile whose line i holds stretch i // BLOCK_M of
    row i % BLOCK_M: Triton lays it out lanes along a line and warps along lines, line i on
    warp i mod num_warps, so with BLOCK_M a multiple of num_warps every stretch of a row lands
    on the same warp. The maths reshapes it (no data moved) to [SPLIT, BLOCK_M, LANE_N]: a row's
    two reductions are in-thread sums over SPLIT and shuffles over LANE_N, with no shared memory
    and no barrier. (A 3-D load would leave the layout to the dimension order Triton picks for
    equal contiguities, which differs between 3.6 and 3.9; a [BLOCK_M, N] tile spreads each row
    of 1,024 over 4 to 8 warps.) The weight and bias are read once per program as whole tiles,
    so they get x's layout."""
    pid = tl.program_id(0)
    lines: tl.constexpr = SPLIT * BLOCK_M
    line = tl.arange(0, lines)
    cols = (line // BLOCK_M * LANE_N)[:, None] + tl.arange(0, LANE_N)[None, :]
    col_ok = cols < N
    shape3: tl.constexpr = (SPLIT, BLOCK_M, LANE_N)
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
        w = tl.reshape(w, shape3)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.reshape(b, shape3)
    tiles = tl.cdiv(M, BLOCK_M)
    for tile in tl.range(pid, tiles, tl.num_programs(0), num_stages=NUM_STAGES):
        rows = (tile * BLOCK_M + line % BLOCK_M).to(tl.int64)[:, None]  # int64: row * stride
        mask = col_ok & (rows < M)
        x = tl.load(X + rows * stride_xm + cols * stride_xn, mask=mask, other=0.0)
        x = tl.reshape(x.to(tl.float32), shape3)
        mask3 = tl.reshape(mask, shape3)
        mean = tl.sum(tl.sum(x, axis=2), axis=0) / N
        xc = tl.where(mask3, x - mean[None, :, None], 0.0)  # padded lanes: not in the variance
        rstd = tl.rsqrt(tl.sum(tl.sum(xc * xc, axis=2), axis=0) / N + eps)
        y = xc * rstd[None, :, None]
        if HAS_WEIGHT:
            y = y * w
        if HAS_BIAS:
            y = y + b
        y = tl.reshape(_to_storage(y, Y.dtype.element_ty), (lines, LANE_N))
        tl.store(Y + rows * N + cols, y, mask=mask)
        tile_rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(Mean + tile_rows, mean, mask=tile_rows < M)
        tl.store(Rstd + tile_rows, rstd, mask=tile_rows < M)


@triton.jit
def _backward_kernel(
    X,
    DY,
    DX,
    W,
    Mean,
    Rstd,
    DW,
    DB,
    C1,
    C2,
    stride_xm,
    stride_xn,
    stride_dym,
    stride_dyn,
    M,
    N,
    rows_per_program,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    ONE_TILE: tl.constexpr,
):
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    if not ONE_TILE:
        # Pass 1, row by row: the two means of the dx formula, kept in C1/C2 scratch (fp32, (M,)).
        for row in range(row_start, row_end):
            mean = tl.load(Mean + row)
            rstd = tl.load(Rstd + row)
            acc1 = tl.full([BLOCK_N], 0.0, tl.float32)
            acc2 = tl.full([BLOCK_N], 0.0, tl.float32)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                x = tl.load(X + row * stride_xm + cols * stride_xn, mask=mask, other=0.0)
                dy = tl.load(DY + row * stride_dym + cols * stride_dyn, mask=mask, other=0.0)
                xhat = tl.where(mask, (x.to(tl.float32) - mean) * rstd, 0.0)
                g = dy.to(tl.float32)
                if HAS_WEIGHT:
                    g = g * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
                acc1 += xhat * g
                acc2 += g
            tl.store(C1 + row, tl.sum(acc1, axis=0) / N)
            tl.store(C2 + row, tl.sum(acc2, axis=0) / N)
        tl.debug_barrier()  # pass 2 reads C1/C2 written by other threads of this program
    # Pass 2, tile by tile (one tile, a constant-trip loop, when the row fits): dx, and this
    # program's dw/db for the tile in registers. A whole row in the tile gives the two means
    # directly; otherwise pass 1 left them in C1/C2.
    end = N
    if ONE_TILE:
        end = BLOCK_N
    for start in range(0, end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < N
        if HAS_WEIGHT:
            w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        dw = tl.full([BLOCK_N], 0.0, tl.float32)
        db = tl.full([BLOCK_N], 0.0, tl.float32)
        # Two stages: the next row's x and dy are copied to shared memory (cp.async) while this
        # row is computed.
        for row in tl.range(row_start, row_end, num_stages=2):
            x = tl.load(X + row * stride_xm + cols * stride_xn, mask=mask, other=0.0)
            dy = tl.load(DY + row * stride_dym + cols * stride_dyn, mask=mask, other=0.0)
            rstd = tl.load(Rstd + row)
            xhat = tl.where(mask, (x.to(tl.float32) - tl.load(Mean + row)) * rstd, 0.0)
            dy = dy.to(tl.float32)
            g = dy * w if HAS_WEIGHT else dy
            if ONE_TILE:
                c1 = tl.sum(xhat * g, axis=0) / N
                c2 = tl.sum(g, axis=0) / N
            else:
                c1 = tl.load(C1 + row)
                c2 = tl.load(C2 + row)
            dx = (g - (xhat * c1 + c2)) * rstd
            tl.store(DX + row * N + cols, _to_storage(dx, DX.dtype.element_ty), mask=mask)
            if COMPUTE_DW:
                dw += dy * xhat
            if COMPUTE_DB:
                db += dy
        if COMPUTE_DW:
            tl.store(DW + pid * N + cols, dw, mask=mask)
        if COMPUTE_DB:
            tl.store(DB + pid * N + cols, db, mask=mask)


@triton.jit
def _backward_rows_kernel(
    X,
    DY,
    DX,
    W,
    Mean,
    Rstd,
    DW,
    DB,
    stride_xm,
    stride_xn,
    stride_dym,
    stride_dyn,
    M,
    N,
    rows_per_program,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    SPLIT: tl.constexpr,
    LANE_N: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """The backward for short rows, BLOCK_M rows a step in the forward's tile layout (see
    _forward_rows_kernel): each program walks its contiguous block of rows a tile at a time,
    the two row means of the dx formula reduced inside each row's warp, and keeps dw/db for its
    tiles in registers (one row of them a warp), summed over the tile's rows once at the end
    into its partial row."""
    pid = tl.program_id(0)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    lines: tl.constexpr = SPLIT * BLOCK_M
    line = tl.arange(0, lines)
    cols = (line // BLOCK_M * LANE_N)[:, None] + tl.arange(0, LANE_N)[None, :]
    col_ok = cols < N
    shape3: tl.constexpr = (SPLIT, BLOCK_M, LANE_N)
    if HAS_WEIGHT:
        w = tl.reshape(tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32), shape3)
    dw = tl.full(shape3, 0.0, tl.float32)
    db = tl.full(shape3, 0.0, tl.float32)
    for start in tl.range(row_start, row_end, BLOCK_M, num_stages=NUM_STAGES):
        rows = (start + line % BLOCK_M).to(tl.int64)[:, None]
        mask = col_ok & (rows < row_end)
        x = tl.load(X + rows * stride_xm + cols * stride_xn, mask=mask, other=0.0)
        dy = tl.load(DY + rows * stride_dym + cols * stride_dyn, mask=mask, other=0.0)
        x = tl.reshape(x.to(tl.float32), shape3)
        dy = tl.reshape(dy.to(tl.float32), shape3)
        mask3 = tl.reshape(mask, shape3)
        tile_rows = start + tl.arange(0, BLOCK_M)
        row_ok = tile_rows < row_end
        mean = tl.load(Mean + tile_rows, mask=row_ok, other=0.0)[None, :, None]
        rstd = tl.load(Rstd + tile_rows, mask=row_ok, other=0.0)[None, :, None]
        xhat = tl.where(mask3, (x - mean) * rstd, 0.0)
        g = dy * w if HAS_WEIGHT else dy
        c1 = (tl.sum(tl.sum(xhat * g, axis=2), axis=0) / N)[None, :, None]
        c2 = (tl.sum(tl.sum(g, axis=2), axis=0) / N)[None, :, None]
        dx = (g - (xhat * c1 + c2)) * rstd
        dx = tl.reshape(_to_storage(dx, DX.dtype.element_ty), (lines, LANE_N))
        tl.store(DX + rows * N + cols, dx, mask=mask)
        if COMPUTE_DW:
            dw += dy * xhat
        if COMPUTE_DB:
            db += dy
    part = tl.arange(0, SPLIT)[:, None] * LANE_N + tl.arange(0, LANE_N)[None, :]
    if COMPUTE_DW:
        tl.store(DW + pid * N + part, tl.sum(dw, axis=1), mask=part < N)
    if COMPUTE_DB:
        tl.store(DB + pid * N + part, tl.sum(db, axis=1), mask=part < N)


@triton.jit
def _sum_partials_kernel(
    DW_PART,
    DB_PART,
    DW,
    DB,
    P,
    N,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dw = Σ_p DW_PART[p, :] and db = Σ_p DB_PART[p, :] over the backward's P partial rows, for
    BLOCK_N columns, summed in fp32 in a fixed order and stored in the parameters' dtypes."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    dw = tl.full([BLOCK_P, BLOCK_N], 0.0, tl.float32)
    db = tl.full([BLOCK_P, BLOCK_N], 0.0, tl.float32)
    for start in range(0, P, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        mask = (parts[:, None] < P) & col_ok[None, :]
        offs = parts[:, None].to(tl.int64) * N + cols[None, :]
        if COMPUTE_DW:
            dw += tl.load(DW_PART + offs, mask=mask, other=0.0)
        if COMPUTE_DB:
            db += tl.load(DB_PART + offs, mask=mask, other=0.0)
    if COMPUTE_DW:
        tl.store(DW + cols, _to_storage(tl.sum(dw, axis=0), DW.dtype.element_ty), mask=col_ok)
    if COMPUTE_DB:
        tl.store(DB + cols, _to_storage(tl.sum(db, axis=0), DB.dtype.element_ty), mask=col_ok)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """`t` as an (M, n) matrix of rows: a view when the strides allow (any row and column
    stride), a copy otherwise."""
    return t.reshape(-1, n)


def _block(n: int, max_tile: int) -> tuple[int, bool]:
    """(BLOCK_N, ONE_TILE) for rows of n values."""
    block = max(MIN_BLOCK, triton.next_power_of_2(n))
    if block <= max_tile:
        return block, True
    return max(MIN_BLOCK, min(CHUNK, triton.next_power_of_2(max_tile))), False


def _num_warps(block: int) -> int:
    """256 values per warp, 1 to 16 warps: wide rows get more threads so that the backward's
    five row-wide fp32 vectors fit in registers (Liger uses 16 warps from 8192)."""
    return min(max(block // 256, 1), 16)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _device_sms(x: torch.Tensor) -> int:
    """The SM count of x's GPU (cached per device); 1 on the interpreter, which runs the
    programs one after another anyway."""
    if not x.is_cuda:
        return 1
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    return _sm_count(index)


class RowsConfig(NamedTuple):
    """Launch shape of _forward_rows_kernel for one (N, dtype)."""

    block_m: int  # rows a tile
    split: int  # a row is held as split x lane_n values
    lane_n: int
    num_warps: int
    num_stages: int  # tiles in flight per program (2: the next tile is copied while one computes)
    programs_per_sm: int  # the persistent grid is programs_per_sm x the SM count


@functools.cache
def _rows_config(n: int, x_size: int) -> RowsConfig:
    """Block sizes for rows of n <= ROWS_MAX_N values of x_size bytes, chosen by rule (no extra
    compiles; the GPU check gives the whole LayerNorm bench 60 s; autotune is opt-in, see
    _rows_candidates):

    - Layout: Triton gives each load and store a layout of 16 bytes a lane, lanes first along
      the last dimension, then warps along the lines. A stretch is lane_n = 32 lanes x 16 bytes
      of x (256 values in bf16/fp16, 128 in fp32), one line of the kernel's 2-D tile, so a
      warp holds whole stretches and (block_m a multiple of the warps) all stretches of its
      rows; narrower rows are one line each, lane_n / vec lanes a row, several rows a warp.
      The weight and bias, loaded as whole tiles, and y get the same layout when they have x's
      dtype: no layout conversion in the loop. With fp32 y under autocast (bf16 x), y's 16-byte
      layout spans two warps a stretch, so y is converted through shared memory (4 KiB a
      program) before its store: the price of reading x and writing y 16 bytes a lane.
    - Registers: each thread holds about 32 fp32 values of x a tile (rows_per_thread rows of
      block_n / lanes values; 64 at 2,048), and as many of the weight and of the bias, read
      once per program. Compiled for sm_90 (tests/kernels/test_ptx_facts.py): 128-167 registers at
      768-1,024 and 240-255 at 2,048 (triton 3.6 and 3.9), spill-free.
    - Warps: 4 (128 threads), along rows: block_m = 4 x (rows that a warp's lanes hold) x
      rows_per_thread (4 rows of 768-2,048 values, 8 of 512, 16 of 256, ... 256 rows of 16),
      so no row is split across warps: its reductions are in-thread sums and warp shuffles.
    - Persistent grid: programs_per_sm programs of 4 warps an SM, as many as the register
      estimate below lets be resident at once (3 up to 1,024, 2 at 2,048; the compiled kernels
      are checked to fit), so no program waits for a second wave. With num_stages=2 each
      program copies its next tile (cp.async: block_m x block_n x x_size, 8 KiB in bf16 at
      1,024) while it computes one: with 12 warps an SM that is ~50 KiB an SM in flight, over
      the ~30 KiB that an H200's 4.8 TB/s x ~0.8 us latency / 132 SMs needs.
    """
    _, per_row = _rows_lanes(n, x_size)
    return _rows_launch(n, x_size, max(1, 32 // per_row), num_warps=4, num_stages=2)


def _rows_lanes(n: int, x_size: int) -> tuple[int, int]:
    """(lanes holding one row of x, at most 32; values of a row each of them holds)."""
    block_n = max(MIN_BLOCK, triton.next_power_of_2(n))
    lane_n = min(block_n, 32 * (16 // x_size))
    x_lanes = lane_n // (16 // x_size)
    return x_lanes, block_n // x_lanes


def _rows_registers(n: int, x_size: int, rows_per_thread: int) -> int:
    """Registers a thread of _forward_rows_kernel is estimated to take: x, the weight and the
    bias held in fp32 (y reuses x's registers), plus addresses and loop state; rounded to
    ptxas's unit of 8. 144 or 240 at 32 and 64 values a thread (compiled: 128-167, 240-255)."""
    _, per_row = _rows_lanes(n, x_size)
    return -(-(3 * per_row * rows_per_thread + 48) // 8) * 8


def _rows_launch(
    n: int, x_size: int, rows_per_thread: int, num_warps: int, num_stages: int
) -> RowsConfig:
    """The launch with `rows_per_thread` rows of x a thread on `num_warps` warps (_rows_config's
    layout), as many programs an SM as registers and shared memory let be resident."""
    block_n = max(MIN_BLOCK, triton.next_power_of_2(n))
    lane_n = min(block_n, 32 * (16 // x_size))
    x_lanes, _ = _rows_lanes(n, x_size)
    block_m = num_warps * (32 // x_lanes) * rows_per_thread
    registers = _rows_registers(n, x_size, rows_per_thread)
    programs_per_sm = max(1, min(4, 65536 // (registers * 32 * num_warps)))
    config = RowsConfig(block_m, block_n // lane_n, lane_n, num_warps, num_stages, 1)
    fit = SM_SHARED_BYTES // _rows_smem(config, x_size, 4)  # fp32 y: the larger conversion
    return config._replace(programs_per_sm=max(1, min(programs_per_sm, fit)))


# Shared memory on sm_90 (H100/H200): 227 KiB a block may use, 228 KiB an SM; registers a thread.
SMEM_LIMIT = 227 * 1024
SM_SHARED_BYTES = 228 * 1024
MAX_REGISTERS = 255


def _rows_smem(config: RowsConfig, x_size: int, y_size: int) -> int:
    """Shared memory of _forward_rows_kernel, estimated as compiled for sm_90
    (tests/kernels/test_ptx_facts.py checks the rule's against this bound): the tiles of x copied
    ahead (num_stages - 1), y's re-layout when its element size differs from x's (BLOCK_M
    stretches of 16-byte lanes: 4 KiB at 768-1,024 under autocast) and the BLOCK_M means and
    rstds."""
    tile = config.block_m * config.split * config.lane_n * x_size
    conversion = config.block_m * config.lane_n * y_size if y_size != x_size else 0
    return max(1, config.num_stages - 1) * tile + conversion + 8 * config.block_m


def _rows_candidates(n: int, x_size: int, y_size: int) -> list[RowsConfig]:
    """Autotune candidates of _forward_rows_kernel (FBDL_FAST_AUTOTUNE=1 on CUDA) for rows of n
    values: the rule's (_rows_config) first, then 3 stages, twice or half the rows a thread,
    8 warps; a candidate is kept while its register estimate stays spill-free
    (MAX_REGISTERS) and its shared memory under SMEM_LIMIT."""
    rule = _rows_config(n, x_size)
    _, per_row = _rows_lanes(n, x_size)
    rows = max(1, 32 // per_row)
    wanted = [(rows, 4, 3), (2 * rows, 4, 2), (rows, 8, 2)]
    if rows > 1:
        wanted.append((rows // 2, 4, 2))
    candidates = [rule]
    for rows_per_thread, num_warps, num_stages in wanted:
        config = _rows_launch(n, x_size, rows_per_thread, num_warps, num_stages)
        if (
            config not in candidates
            and _rows_registers(n, x_size, rows_per_thread) <= MAX_REGISTERS
            and _rows_smem(config, x_size, y_size) <= SMEM_LIMIT
        ):
            candidates.append(config)
    return candidates


@functools.cache
def _tuned_rows(n: int, x_size: int, y_size: int):
    """(Triton autotuner of _forward_rows_kernel over _rows_candidates, programs an SM for each
    candidate's (BLOCK_M, NUM_STAGES)): one tuner per row length and element sizes, keyed on N
    (and the dtypes, which Triton adds)."""
    candidates = _rows_candidates(n, x_size, y_size)
    configs = [
        triton.Config(
            {"BLOCK_M": c.block_m, "SPLIT": c.split, "LANE_N": c.lane_n,
             "NUM_STAGES": c.num_stages},
            num_warps=c.num_warps, num_stages=c.num_stages,
        )
        for c in candidates
    ]  # fmt: skip
    programs: dict[tuple[int, int], int] = {}
    for c in candidates:  # two candidates may share BLOCK_M: the fewer programs fit both
        key = (c.block_m, c.num_stages)
        programs[key] = min(programs.get(key, c.programs_per_sm), c.programs_per_sm)
    return triton.autotune(configs=configs, key=["N"])(_forward_rows_kernel), programs


def _forward_programs(x: torch.Tensor, tiles: int, config: RowsConfig) -> int:
    """The persistent grid: programs_per_sm per SM, never more programs than tiles."""
    return max(1, min(tiles, config.programs_per_sm * _device_sms(x)))


def _backward_programs(x: torch.Tensor, rows: int) -> int:
    """How many programs share the rows: a few per SM keeps the GPU busy while the partial dw/db
    rows stay few; on the interpreter a handful (it runs them one after another anyway)."""
    if x.is_cuda:
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        return max(1, min(rows, 4 * _sm_count(index)))
    return max(1, min(rows, 4))


def _flat_param(p: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if p is None else p.reshape(-1).contiguous()


def layer_norm_forward(
    x: torch.Tensor,
    n: int,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
    max_tile: int = MAX_TILE,
    out_dtype: Optional[torch.dtype] = None,
    autotune: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise the last dimensions of `x` (n values per row).

    Returns y (x's shape, contiguous, in `out_dtype`, default x's dtype), and mean and rstd
    (fp32, one per row) for `layer_norm_backward`. weight/bias hold n values each (any shape), in
    x's dtype or fp32. A half-precision x with out_dtype=float32 is what CUDA autocast asks of
    layer_norm: x is read as it is (2 bytes an element) and y written in fp32, with no fp32 copy
    of x.
    autotune: on CUDA, rows up to ROWS_MAX_N take the launch Triton's autotune picks among
    `_rows_candidates` (else, and in the interpreter, `_rows_config`'s rule).
    """
    x2 = _rows(x, n)
    rows = x2.shape[0]
    y = torch.empty((rows, n), dtype=out_dtype or x.dtype, device=x.device)
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    block, one_tile = _block(n, max_tile)
    if rows > 0 and one_tile and block <= ROWS_MAX_N and autotune and tuned_here(x):
        kernel, programs = _tuned_rows(n, x.element_size(), y.element_size())
        sms = _device_sms(x)

        def grid(meta: dict) -> tuple[int]:
            per_sm = programs[(meta["BLOCK_M"], meta["NUM_STAGES"])]
            return (max(1, min(triton.cdiv(rows, meta["BLOCK_M"]), per_sm * sms)),)

        kernel[grid](
            x2, y, _flat_param(weight), _flat_param(bias), mean, rstd, x2.stride(0),
            x2.stride(1), rows, n, eps, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, enable_fp_fusion=FP_FUSION,
        )  # fmt: skip
    elif rows > 0 and one_tile and block <= ROWS_MAX_N:
        config = _rows_config(n, x.element_size())
        tiles = triton.cdiv(rows, config.block_m)
        _forward_rows_kernel[(_forward_programs(x, tiles, config),)](
            x2,
            y,
            _flat_param(weight),
            _flat_param(bias),
            mean,
            rstd,
            x2.stride(0),
            x2.stride(1),
            rows,
            n,
            eps,
            HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None,
            BLOCK_M=config.block_m,
            SPLIT=config.split,
            LANE_N=config.lane_n,
            NUM_STAGES=config.num_stages,
            num_warps=config.num_warps,
            enable_fp_fusion=FP_FUSION,
        )
    elif rows > 0:
        _forward_kernel[(rows,)](
            x2,
            y,
            _flat_param(weight),
            _flat_param(bias),
            mean,
            rstd,
            x2.stride(0),
            x2.stride(1),
            n,
            eps,
            HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None,
            BLOCK_N=block,
            ONE_TILE=one_tile,
            num_warps=_num_warps(block),
            enable_fp_fusion=FP_FUSION,
        )
    return y.view(x.shape), mean, rstd


def layer_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    n: int,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    mean: torch.Tensor,
    rstd: torch.Tensor,
    compute_dw: bool,
    compute_db: bool,
    max_tile: int = MAX_TILE,
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of `layer_norm_forward` given dy (x's shape, any strides, in y's dtype: fp32
    for a half-precision x under autocast).

    Returns dx (x's shape and dtype), dw and db (their parameter's shape and dtype; None unless
    compute_dw / compute_db, which need the weight / bias). mean and rstd come from
    `layer_norm_forward`.
    """
    x2, dy2 = _rows(x, n), _rows(dy, n)
    rows = x2.shape[0]
    dx = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    block, one_tile = _block(n, max_tile)
    config = None
    if one_tile and block <= BACKWARD_ROWS_MAX_N:
        config = _rows_config(n, x.element_size())
    programs = _backward_programs(x, rows)
    rows_per_program = -(-rows // programs) if rows else 0
    if config is not None and rows_per_program >= config.block_m:  # whole tiles a program
        rows_per_program = -(-rows_per_program // config.block_m) * config.block_m
    programs = -(-rows // rows_per_program) if rows else 0
    # fp32 partial sums, one row per program, each written whole by its program; zeros when
    # there are no rows (and so no programs): the gradients of an empty batch are zero.
    alloc = torch.empty if rows else torch.zeros
    dw_part = alloc(
        (max(programs, 1), n) if compute_dw else (1,), dtype=torch.float32, device=x.device
    )
    db_part = alloc(
        (max(programs, 1), n) if compute_db else (1,), dtype=torch.float32, device=x.device
    )
    if rows > 0 and config is not None:
        _backward_rows_kernel[(programs,)](
            x2,
            dy2,
            dx,
            _flat_param(weight),
            mean,
            rstd,
            dw_part,
            db_part,
            x2.stride(0),
            x2.stride(1),
            dy2.stride(0),
            dy2.stride(1),
            rows,
            n,
            rows_per_program,
            HAS_WEIGHT=weight is not None,
            COMPUTE_DW=compute_dw,
            COMPUTE_DB=compute_db,
            BLOCK_M=config.block_m,
            SPLIT=config.split,
            LANE_N=config.lane_n,
            NUM_STAGES=config.num_stages,
            num_warps=config.num_warps,
            enable_fp_fusion=FP_FUSION,
        )
    elif rows > 0:
        scratch = (
            torch.empty((2, rows), dtype=torch.float32, device=x.device)
            if not one_tile
            else mean.new_empty((2, 1))
        )
        _backward_kernel[(programs,)](
            x2,
            dy2,
            dx,
            _flat_param(weight),
            mean,
            rstd,
            dw_part,
            db_part,
            scratch[0],
            scratch[1],
            x2.stride(0),
            x2.stride(1),
            dy2.stride(0),
            dy2.stride(1),
            rows,
            n,
            rows_per_program,
            HAS_WEIGHT=weight is not None,
            COMPUTE_DW=compute_dw,
            COMPUTE_DB=compute_db,
            BLOCK_N=block,
            ONE_TILE=one_tile,
            num_warps=_num_warps(block),
            enable_fp_fusion=FP_FUSION,
        )
    dw = db = None
    if compute_dw:
        assert weight is not None, "dw asked for without a weight"
        dw = torch.empty(weight.shape, dtype=weight.dtype, device=x.device)
    if compute_db:
        assert bias is not None, "db asked for without a bias"
        db = torch.empty(bias.shape, dtype=bias.dtype, device=x.device)
    if compute_dw or compute_db:
        # One launch sums both partials' rows and casts (instead of .sum(0) and .to() for each).
        _sum_partials_kernel[(triton.cdiv(n, PARTIALS_BLOCK_N),)](
            dw_part,
            db_part,
            dw if dw is not None else dw_part,  # an unused pointer: any tensor
            db if db is not None else db_part,
            dw_part.shape[0] if compute_dw else db_part.shape[0],
            n,
            COMPUTE_DW=compute_dw,
            COMPUTE_DB=compute_db,
            BLOCK_P=PARTIALS_BLOCK_P,
            BLOCK_N=PARTIALS_BLOCK_N,
            num_warps=4,
            enable_fp_fusion=FP_FUSION,
        )
    return dx.view(x.shape), dw, db


__all__ = ["layer_norm_backward", "layer_norm_forward"]
