"""Fused multi-class focal loss: softmax, focal term, loss and logit gradient in one kernel.

The maths, per row i with logits z (C classes), target y, class weights w (default 1), focal
balance a (default 1), focusing parameter g >= 0 and label smoothing s in [0, 1]:

    log p_c = z_c - m - log d,   m = max_c z_c,   d = sum_c exp(z_c - m)
    q       = 1 - p_y = sum_{c != y} exp(z_c - m) / d     (no cancellation when p_y -> 1)
    F       = q^g                                           (the focal factor)
    S       = (1 - s) w_y (-log p_y) + (s / C) sum_c w_c (-log p_c)
                                                            (torch's label-smoothed cross-entropy)
    loss_i  = a_y F S

With g = 0 and a = 1 this is exactly F.cross_entropy(weight=w, label_smoothing=s) row by row.
sum_c w_c log p_c is accumulated as T + W log p_y with T = sum_c w_c (z_c - z_y) and W = sum_c w_c,
so no large absolute logit offset enters a long sum. Using d(log p_k)/dz_c = [k = c] - p_c:

    dF/dz_c = -G' ([c = y] - p_c),            G' = g q^(g - 1) p_y
    dS/dz_c = p_c ((1 - s) w_y + s W / C) - [c = y] (1 - s) w_y - (s / C) w_c
    dL/dz_c = a_y ( p_c K - [c = y] K_y - (s / C) F w_c )
    K   = G + F ((1 - s) w_y + s W / C),   K_y = G + F (1 - s) w_y,   G = G' S

q is clamped below at the smallest normal float (q_min): F = max(q, q_min)^g, and G = 0 where
q < q_min (p_y rounds to 1). That keeps g < 1 finite there and matches the reference, whose
clamp has zero gradient below q_min.

Two kernels, one read of the logits each. The forward runs an online softmax over C in BLOCK_C
chunks (running max m, sums d and d minus the target's term, T, W), so any C fits; d and d minus
the target's term are kept per lane and reduced once after the loop, so a chunk costs one
reduction (its maximum; two more, T and W, with label smoothing). It writes the
loss and four statistics per row: lse = m + log d and the gradient's row constants a_y K, a_y K_y
and a_y F s / C (k_all, k_y, k_w). The backward re-reads the logits and writes, in fp32 until the
single rounding on store,

    dz_c = r_i * a_y ( p_c K - [c = y] K_y - (s / C) F w_c ),    p_c = exp(z_c - lse)

with r_i the incoming gradient of row i's loss (grad_output, times 1 / sum of counted weights
for the mean). Scaling before the rounding matters in fp16: at C = 50k most p_c are about 2e-5,
below fp16's smallest normal number (6.1e-5), so a gradient rounded to fp16 first and scaled by
GradScaler's factor afterwards loses their digits. No [N, C] tensor is kept between the two.
Rows of one program each (C > 512) are read in 16-byte vector loads whatever C: each row is split
at its first 16-byte boundary into h < 16 / element-size classes before it, an aligned body (a
multiple of 16 bytes, masked only in its last chunk, by whole 16-byte groups) and the few classes
after it; the edges go through one masked tile. Without that, C = 50,257 (rows starting at every
offset) compiled to one scalar load per value.

Ignored rows (target == ignore_index) get zero loss, weight and gradient; a target outside
[0, C) gets NaN loss and gradient (the host checks ranges where that costs no sync).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

# Chunk of classes one program holds at a time: big enough to keep the loop short, small enough
# to stay in registers. The forward holds three fp32 tiles of the chunk's shape (the logits and
# two lane-wise sums): 8,192 over 16 warps is 16 values a thread each, about 100 registers
# (sm_90, triton 3.9). Tried and rejected: 16,384 over 32 warps (a thread may then have only
# 64 registers) and over 16 warps (32 values a thread) both spilled in the forward, 64-152
# bytes of stack with label smoothing, 48-72 at C = 50,257 without.
MAX_BLOCK_C = 8192
# Rows per program for narrow heads (C = 5 would otherwise leave most lanes idle).
ROW_ELEMENTS = 1024
MAX_BLOCK_R = 64
# The smallest normal fp32; a constexpr because globals read inside a jit kernel must be.
Q_MIN = tl.constexpr(1.1754943508222875e-38)
# Fused multiply-adds: Triton 3.9's default, said explicitly because a launch that leaves it
# implicit warns (an error under pytest's warnings-as-errors) and 3.10 turns the default off.
FP_FUSION = True


@triton.jit
def _row_split(z_ptr, z_stride, n_cols, VEC: tl.constexpr, BLOCK_C: tl.constexpr):
    # A row of C values starting anywhere (C = 50,257: every row starts differently) is read as
    # h values up to the first 16-byte boundary, a body of n_body (a multiple of VEC) from
    # there, whose first n_full (a multiple of BLOCK_C) need no mask, and the < VEC values
    # after it. `body` points at the boundary: the hint lets Triton emit 16-byte loads there.
    row_start = z_ptr + tl.program_id(0).to(tl.int64) * z_stride
    misaligned = row_start.to(tl.int64, bitcast=True) % 16
    h = tl.minimum((16 - misaligned) % 16 // (16 // VEC), n_cols).to(tl.int32)
    n_body = (n_cols - h) // VEC * VEC
    n_full = n_body // BLOCK_C * BLOCK_C
    body = tl.multiple_of(row_start + h, 16)
    return h, n_body, n_full, body


@triton.jit
def _row_edges(cols0, h, n_body, n_cols, VEC: tl.constexpr):
    # The classes outside a row's body, in one masked tile: lanes [0, VEC) the h before it,
    # lanes [VEC, 2 VEC) the < VEC after it.
    before = cols0 < VEC
    cols = tl.where(before, cols0, h + n_body + cols0 - VEC)
    col_ok = tl.where(before, cols0 < h, (cols0 < 2 * VEC) & (cols < n_cols))
    return cols, col_ok


@triton.jit
def _forward_chunk(
    z, cols, mask, col_ok, y, z_y, m, d_lane, other_lane, t_sum, w_sum, w_ptr,
    HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
):  # fmt: skip
    # One chunk of the online softmax (see the forward's loop): z (R, BLOCK_C) fp32 with -inf
    # where `mask` is off, cols its class indices.
    m_new = tl.maximum(m, tl.max(z, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    rescale = tl.exp(m - m_use)[:, None]
    e = tl.exp(z - m_use[:, None])
    is_y = cols[None, :] == y[:, None]
    d_lane = d_lane * rescale + e
    other_lane = other_lane * rescale + tl.where(is_y, 0.0, e)
    if HAS_SMOOTHING:
        diff = tl.where(mask, z - z_y[:, None], 0.0)
        if HAS_WEIGHT:
            w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            diff = diff * w[None, :]
            w_sum += tl.sum(w, axis=0)
        # Reduced per chunk: a third lane-wise tile would cost 16 registers more a thread.
        t_sum += tl.sum(diff, axis=1)
    return m_new, d_lane, other_lane, t_sum, w_sum


@triton.jit
def _focal_loss_forward_kernel(
    z_ptr,
    z_stride,
    y_ptr,
    w_ptr,
    a_ptr,
    a_stride,
    loss_ptr,
    row_weight_ptr,
    stats_ptr,
    n_rows,
    n_cols,
    ignore_index,
    gamma,
    alpha_scale,
    smoothing,
    HAS_WEIGHT: tl.constexpr,
    HAS_ALPHA: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    SAVE_STATS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # int64 row offsets: N * C can pass 2**31 for vocabulary-sized heads.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # (R,)
    row_ok = rows < n_rows
    y = tl.load(y_ptr + rows, mask=row_ok, other=ignore_index)
    counted = row_ok & (y != ignore_index)
    in_range = (y >= 0) & (y < n_cols)
    live = counted & in_range
    y_safe = tl.where(live, y, 0)
    z_row = z_ptr + rows * z_stride  # (R,) row start pointers
    z_y = tl.load(z_row + y_safe, mask=live, other=0.0).to(tl.float32)

    # Online softmax statistics, kept per lane: each chunk's one reduction is its row maximum;
    # d and d_other stay (R, BLOCK_C) running sums, rescaled by the row's factor, reduced once
    # after the loop. Dead rows (padding, ignored) load -inf and keep m = -inf; m_use replaces
    # -inf by 0 so no -inf - -inf appears.
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    d_lane = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    other_lane = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)  # the same without the target's term
    t_sum = tl.full([BLOCK_R], 0.0, tl.float32)
    w_sum = tl.full([BLOCK_R], 0.0, tl.float32)
    cols0 = tl.arange(0, BLOCK_C)
    VEC: tl.constexpr = 128 // z_ptr.dtype.element_ty.primitive_bitwidth  # values in 16 bytes
    if BLOCK_R == 1 and BLOCK_C >= 2 * VEC:
        # One row: its 16-byte-aligned body in unmasked (or 16-byte-grouped) vector loads, the
        # h < VEC classes before it and the < VEC after it apart (see _row_split).
        h, n_body, n_full, body = _row_split(z_ptr, z_stride, n_cols, VEC, BLOCK_C)
        for start in range(0, n_full, BLOCK_C):
            cols = h + start + cols0
            mask = live[:, None]  # whole rows: the load stays 16 bytes wide
            z = tl.load(body + start + cols0[None, :], mask=mask, other=float("-inf"))
            m, d_lane, other_lane, t_sum, w_sum = _forward_chunk(
                z.to(tl.float32), cols, mask, cols < n_cols, y, z_y, m, d_lane, other_lane,
                t_sum, w_sum, w_ptr, HAS_WEIGHT, HAS_SMOOTHING,
            )  # fmt: skip
        for start in range(n_full, n_body, BLOCK_C):  # the body's last, partial chunk
            cols = h + start + cols0
            mask = live[:, None] & (start + cols0 < n_body)[None, :]
            z = tl.load(body + start + cols0[None, :], mask=mask, other=float("-inf"))
            m, d_lane, other_lane, t_sum, w_sum = _forward_chunk(
                z.to(tl.float32), cols, mask, start + cols0 < n_body, y, z_y, m, d_lane, other_lane,
                t_sum, w_sum, w_ptr, HAS_WEIGHT, HAS_SMOOTHING,
            )  # fmt: skip
        cols, col_ok = _row_edges(cols0, h, n_body, n_cols, VEC)
        mask = live[:, None] & col_ok[None, :]
        z = tl.load(z_row[:, None] + cols[None, :], mask=mask, other=float("-inf"))
        m, d_lane, other_lane, t_sum, w_sum = _forward_chunk(
            z.to(tl.float32), cols, mask, col_ok, y, z_y, m, d_lane, other_lane,
            t_sum, w_sum, w_ptr, HAS_WEIGHT, HAS_SMOOTHING,
        )  # fmt: skip
    else:
        for start in range(0, n_cols, BLOCK_C):
            cols = start + cols0
            col_ok = cols < n_cols
            mask = live[:, None] & col_ok[None, :]
            z = tl.load(z_row[:, None] + cols[None, :], mask=mask, other=float("-inf"))
            m, d_lane, other_lane, t_sum, w_sum = _forward_chunk(
                z.to(tl.float32), cols, mask, col_ok, y, z_y, m, d_lane, other_lane,
                t_sum, w_sum, w_ptr, HAS_WEIGHT, HAS_SMOOTHING,
            )  # fmt: skip
    d = tl.sum(d_lane, axis=1)
    d_other = tl.sum(other_lane, axis=1)

    m_fin = tl.where(m == float("-inf"), 0.0, m)
    d_safe = tl.where(live, d, 1.0)
    log_d = tl.log(d_safe)
    logp_y = tl.where(live, z_y - m_fin - log_d, 0.0)
    p_y = tl.exp(logp_y)
    q = tl.where(live, d_other / d_safe, 0.0)
    if HAS_WEIGHT:
        w_y = tl.load(w_ptr + y_safe, mask=live, other=0.0).to(tl.float32)
    else:
        w_y = tl.where(live, 1.0, 0.0)
    if HAS_SMOOTHING:
        if not HAS_WEIGHT:
            w_sum = tl.full([BLOCK_R], 0.0, tl.float32) + n_cols
        smooth = -(t_sum + w_sum * logp_y) / n_cols
        S = (1.0 - smoothing) * w_y * (-logp_y) + smoothing * smooth
    else:
        S = w_y * (-logp_y)
    q_c = tl.maximum(q, Q_MIN)
    focal = tl.exp2(gamma * tl.log2(q_c))
    a_y = tl.full([BLOCK_R], 0.0, tl.float32) + alpha_scale
    if HAS_ALPHA:
        a_y = a_y * tl.load(a_ptr + y_safe * a_stride, mask=live, other=0.0).to(tl.float32)
    bad = counted & (~in_range)
    loss = tl.where(live, a_y * focal * S, 0.0)
    loss = tl.where(bad, float("nan"), loss)
    tl.store(loss_ptr + rows, loss, mask=row_ok)
    tl.store(row_weight_ptr + rows, tl.where(live, w_y, 0.0), mask=row_ok)

    if SAVE_STATS:
        # The backward's row constants (see the module docstring); NaN in k_all poisons the
        # gradient of a row with an out-of-range target, zeros leave dead rows at zero.
        G = tl.where(q >= Q_MIN, gamma * (focal / q_c) * p_y * S, 0.0)
        k_all = a_y * (G + focal * (1.0 - smoothing) * w_y)
        k_y = k_all
        k_w = tl.full([BLOCK_R], 0.0, tl.float32)
        if HAS_SMOOTHING:
            k_all += a_y * focal * smoothing * w_sum / n_cols
            k_w = a_y * focal * smoothing / n_cols
        k_all = tl.where(bad, float("nan"), tl.where(live, k_all, 0.0))
        tl.store(stats_ptr + rows, m_fin + log_d, mask=row_ok)  # lse
        tl.store(stats_ptr + n_rows + rows, k_all, mask=row_ok)
        tl.store(stats_ptr + 2 * n_rows + rows, tl.where(live, k_y, 0.0), mask=row_ok)
        tl.store(stats_ptr + 3 * n_rows + rows, tl.where(live, k_w, 0.0), mask=row_ok)


@triton.jit
def _backward_chunk(z, cols, col_ok, y, lse, k_all, k_y, k_w, w_ptr,
                    HAS_WEIGHT: tl.constexpr, HAS_SMOOTHING: tl.constexpr):  # fmt: skip
    # dz for one chunk, fp32: z (R, BLOCK_C) in the logits' dtype, -inf where not loaded.
    p = tl.exp(z.to(tl.float32) - lse[:, None])  # 0 on dead rows
    g = p * k_all[:, None] - tl.where(cols[None, :] == y[:, None], k_y[:, None], 0.0)
    if HAS_SMOOTHING:
        if HAS_WEIGHT:
            w = tl.load(w_ptr + cols[None, :], mask=col_ok, other=0.0).to(tl.float32)
            g -= k_w[:, None] * w
        else:
            g -= k_w[:, None]
    return g


@triton.jit
def _focal_loss_backward_kernel(
    z_ptr,
    z_stride,
    y_ptr,
    w_ptr,
    stats_ptr,
    r_ptr,
    r_stride,
    grad_ptr,
    grad_stride,
    n_rows,
    n_cols,
    ignore_index,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # dz_c = r (p_c k_all - [c = y] k_y - k_w w_c), in fp32 until the store (module docstring).
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # (R,)
    row_ok = rows < n_rows
    y = tl.load(y_ptr + rows, mask=row_ok, other=ignore_index)
    live = row_ok & (y != ignore_index) & (y >= 0) & (y < n_cols)
    lse = tl.load(stats_ptr + rows, mask=row_ok, other=0.0)
    r = tl.load(r_ptr + rows * r_stride, mask=row_ok, other=0.0).to(tl.float32)
    # The incoming gradient goes into the row constants first: one product per element less.
    k_all = r * tl.load(stats_ptr + n_rows + rows, mask=row_ok, other=0.0)
    k_y = r * tl.load(stats_ptr + 2 * n_rows + rows, mask=row_ok, other=0.0)
    k_w = r * tl.load(stats_ptr + 3 * n_rows + rows, mask=row_ok, other=0.0)
    z_row = z_ptr + rows * z_stride
    g_row = grad_ptr + rows * grad_stride
    cols0 = tl.arange(0, BLOCK_C)
    VEC: tl.constexpr = 128 // z_ptr.dtype.element_ty.primitive_bitwidth  # values in 16 bytes
    if BLOCK_R == 1 and BLOCK_C >= 2 * VEC:
        # As in the forward. The host gives grad rows the logits' offsets from a 16-byte
        # boundary (focal_loss_backward), so the body is aligned in both.
        h, n_body, n_full, body = _row_split(z_ptr, z_stride, n_cols, VEC, BLOCK_C)
        g_body = tl.multiple_of(grad_ptr + tl.program_id(0).to(tl.int64) * grad_stride + h, 16)
        for start in range(0, n_full, BLOCK_C):
            z = tl.load(body + start + cols0[None, :], mask=live[:, None], other=float("-inf"))
            g = _backward_chunk(z, h + start + cols0, True, y, lse, k_all, k_y, k_w, w_ptr,
                                HAS_WEIGHT, HAS_SMOOTHING)  # fmt: skip
            tl.store(g_body + start + cols0[None, :], g.to(grad_ptr.dtype.element_ty),
                     mask=row_ok[:, None])  # fmt: skip
        for start in range(n_full, n_body, BLOCK_C):  # the body's last, partial chunk
            in_body = (start + cols0 < n_body)[None, :]
            z = tl.load(body + start + cols0[None, :], mask=live[:, None] & in_body,
                        other=float("-inf"))  # fmt: skip
            g = _backward_chunk(z, h + start + cols0, in_body, y, lse, k_all, k_y, k_w, w_ptr,
                                HAS_WEIGHT, HAS_SMOOTHING)  # fmt: skip
            tl.store(g_body + start + cols0[None, :], g.to(grad_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & in_body)  # fmt: skip
        cols, col_ok = _row_edges(cols0, h, n_body, n_cols, VEC)
        z = tl.load(z_row[:, None] + cols[None, :], mask=live[:, None] & col_ok[None, :],
                    other=float("-inf"))  # fmt: skip
        g = _backward_chunk(z, cols, col_ok[None, :], y, lse, k_all, k_y, k_w, w_ptr,
                            HAS_WEIGHT, HAS_SMOOTHING)  # fmt: skip
        tl.store(g_row[:, None] + cols[None, :], g.to(grad_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok[None, :])  # fmt: skip
    else:
        for start in range(0, n_cols, BLOCK_C):
            cols = start + cols0
            col_ok = cols < n_cols
            z = tl.load(z_row[:, None] + cols[None, :], mask=live[:, None] & col_ok[None, :],
                        other=float("-inf"))  # fmt: skip
            g = _backward_chunk(z, cols, col_ok[None, :], y, lse, k_all, k_y, k_w, w_ptr,
                                HAS_WEIGHT, HAS_SMOOTHING)  # fmt: skip
            tl.store(g_row[:, None] + cols[None, :], g.to(grad_ptr.dtype.element_ty),
                     mask=row_ok[:, None] & col_ok[None, :])  # fmt: skip


def _blocks(n_rows: int, n_cols: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps) for an (n_rows, n_cols) problem."""
    block_c = min(triton.next_power_of_2(n_cols), MAX_BLOCK_C)
    block_r = max(1, min(ROW_ELEMENTS // block_c, MAX_BLOCK_R, triton.next_power_of_2(n_rows)))
    elements = block_r * block_c
    # 16 elements a thread (see MAX_BLOCK_C): 4 warps up to 2,048 elements, 16 at 8,192.
    num_warps = min(16, max(4, elements // 512))
    return block_r, block_c, num_warps


def focal_loss_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float,
    alpha: Optional[torch.Tensor],
    alpha_scale: float,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
    save_stats: bool,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Per-row focal loss of `logits` (N, C) against int64 `target` (N,), one read of the logits.

    `alpha` is None, a 0-dim tensor (one value for every class) or a (C,) tensor; `alpha_scale`
    multiplies it (a Python-number alpha goes there, so it needs no tensor). `weight` is None
    or (C,). Returns the loss per row (N,) fp32, the weight each row counts with in a mean
    (w_y, 0 when ignored) (N,) fp32, and, when `save_stats`, the (4, N) fp32 statistics
    `focal_loss_backward` needs (lse, k_all, k_y, k_w; see the module docstring), else None.
    """
    assert logits.dim() == 2 and target.dim() == 1 and target.shape[0] == logits.shape[0], (
        f"expected logits (N, C) and target (N,), got {tuple(logits.shape)} and "
        f"{tuple(target.shape)}"
    )
    assert target.dtype == torch.int64, f"target must be int64, got {target.dtype}"
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    target = target.contiguous()
    n_rows, n_cols = logits.shape
    device = logits.device
    loss = torch.empty(n_rows, dtype=torch.float32, device=device)
    row_weight = torch.empty(n_rows, dtype=torch.float32, device=device)
    stats = torch.empty((4, n_rows), dtype=torch.float32, device=device) if save_stats else None
    if n_rows == 0:
        return loss, row_weight, stats
    if weight is not None:
        weight = weight.contiguous()
    if alpha is not None:
        alpha = alpha.contiguous()
    block_r, block_c, num_warps = _blocks(n_rows, n_cols)
    # Unused pointer arguments get a real tensor so every launch has the same signature kinds.
    _focal_loss_forward_kernel[(triton.cdiv(n_rows, block_r),)](
        logits,
        logits.stride(0),
        target,
        weight if weight is not None else loss,
        alpha if alpha is not None else loss,
        (alpha.stride(0) if alpha.dim() == 1 else 0) if alpha is not None else 0,
        loss,
        row_weight,
        stats if stats is not None else loss,
        n_rows,
        n_cols,
        ignore_index,
        float(gamma),
        float(alpha_scale),
        float(label_smoothing),
        HAS_WEIGHT=weight is not None,
        HAS_ALPHA=alpha is not None,
        HAS_SMOOTHING=label_smoothing > 0,
        SAVE_STATS=save_stats,
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=num_warps,
        enable_fp_fusion=FP_FUSION,
    )
    return loss, row_weight, stats


def focal_loss_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    stats: torch.Tensor,
    row_grad: torch.Tensor,
    *,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
) -> torch.Tensor:
    """The gradient (N, C), in the logits' dtype, of sum_i row_grad[i] * loss_i with respect to
    `logits`, from `focal_loss_forward`'s statistics. `row_grad` holds N values (any float dtype,
    any stride: a stride of 0 broadcasts one value); `weight` and `label_smoothing` as given to
    the forward."""
    assert stats.shape == (4, logits.shape[0]) and row_grad.shape == (logits.shape[0],), (
        f"expected stats (4, N) and row_grad (N,) for N={logits.shape[0]}, got "
        f"{tuple(stats.shape)} and {tuple(row_grad.shape)}"
    )
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    target, stats = target.contiguous(), stats.contiguous()
    n_rows, n_cols = logits.shape
    grad = torch.empty((n_rows, n_cols), dtype=logits.dtype, device=logits.device)
    # The kernel reads and writes each row's 16-byte-aligned body with one offset h for both,
    # so every grad row must start as far from a 16-byte boundary as its logits row: true for
    # contiguous logits; a view that breaks it (rare) is copied.
    size = logits.element_size()
    if (logits.data_ptr() - grad.data_ptr()) % 16 or (logits.stride(0) - n_cols) * size % 16:
        logits = logits.contiguous()
    if n_rows == 0:
        return grad
    if weight is not None:
        weight = weight.contiguous()
    block_r, block_c, num_warps = _blocks(n_rows, n_cols)
    _focal_loss_backward_kernel[(triton.cdiv(n_rows, block_r),)](
        logits,
        logits.stride(0),
        target,
        weight if weight is not None else stats,
        stats,
        row_grad,
        row_grad.stride(0),
        grad,
        grad.stride(0),
        n_rows,
        n_cols,
        ignore_index,
        HAS_WEIGHT=weight is not None,
        HAS_SMOOTHING=label_smoothing > 0,
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=num_warps,
        enable_fp_fusion=FP_FUSION,
    )
    return grad


__all__ = ["focal_loss_backward", "focal_loss_forward"]
