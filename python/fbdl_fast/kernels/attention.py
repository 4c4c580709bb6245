"""Fused attention (FlashAttention-style): tiled, online softmax, never the L x L matrix.

Shapes: q [B, H, Lq, D], k and v [B, H, Lk, D], D in {16, 32, 64, 128}, any Lq and Lk (the tail
block is masked). Options: a key mask [B, Lk] (True where the key takes part), causal masking
(query i sees keys j <= i, torch's top-left convention), a softmax scale and dropout on the
attention probabilities.

The maths, per (batch, head), with S = scale * Q K^T, masked entries -inf:
    P = softmax(S)            row-wise; a row with no visible key is all zeros
    Z = keep * P / (1 - p)    keep ~ Bernoulli(1 - p), drawn by Philox from (seed, b, h, i, j)
    O = Z V
Forward streams over key blocks keeping a running max m and sum l per query (online softmax) and
saves only lse = m + log2(l) per query (base 2: the kernels use exp2 with log2(e) folded into the
scale). Backward recomputes P = exp2(S' - lse) block by block and, with delta = rowsum(dO * O):
    dV = Z^T dO,   dP = keep * (dO V^T) / (1 - p),   dS = P * (dP - delta)
    dQ = scale * dS K,   dK = scale * dS^T Q
(rowsum(dP * P) = rowsum(dO * O) holds with dropout too, so delta needs no second pass). Two
launches, no atomics, each output written once: dQ over query blocks, which also computes delta
for its rows (it reads dO anyway; one more read of O) and stores it, then dK/dV over key blocks,
which reads delta for every query block it visits (a kernel of its own for delta cost a third
launch and a second read of dO). In numbers, fp16, B*L = 32,768 tokens, H = 8, at every L (the
grids are 4,096 programs whatever L is): the backward's compulsory traffic (read Q, K, V, O, dO,
write dQ, dK, dV, lse and delta) is 272 MB at D=64 and 540 MB at D=128, against 306 and 608 MB
with the delta kernel: 34 / 68 MB and one launch less, about 7 / 14 us at 4.8 TB/s. One launch is
not reachable without atomics: dK/dV needs delta of every query first (the tutorial also
launches a preprocessing kernel, then dQ and dK/dV in one), and dQ accumulated by the dK/dV
programs (one per key block) would need atomic adds into an fp32 buffer, in a run-to-run varying
order. Both kernels re-read the other side's tiles once per block (L/64 times: K, V for dQ; Q, dO
for dK/dV), mostly from L2; merging the two loops into one program would not change that. dK/dV
works on transposed tiles, keys x queries, as the Triton tutorial does: S^T = K Q^T, so P^T and
dS^T come out of the dots in the layout of the A operands of dV = Z^T dO and dK = dS^T Q, with
no transpose of a score tile (it spilled with dropout).

Fully masked queries: running max starts at a finite -1e30 and masked scores are -inf, so
exp2 gives exact zeros (no inf - inf); l = 0 gives O = 0 and lse = +inf, so backward's
P = exp2(-inf - inf) = 0 and their gradients are zero.

Padded keys: with a key mask, each program first reads its sequence's mask row (Lk bytes, from
L2 after the first program of the sequence; no extra launch) and takes the key length klen =
last True index + 1 (0 when every key is masked). Keys at or past klen are all masked, so the
forward's and dQ's key loops stop at klen, and a dK/dV program whose key block starts at or past
klen runs no query block and writes zeros. Keys before klen are still masked element by
element (a mask may have holes). Queries are not skipped: a query row past klen (a padded post's
own padding, in self-attention) still attends to the valid keys and gets an output, as in the
reference; only a sequence with klen = 0 gives all-zero rows, which the empty key loop gives.

Dropout reproducibility: the keep mask is a pure function of (seed, b, h, i, j) (Philox4x32 on a
64-bit counter, one call for four neighbouring keys: see _keep), so backward regenerates exactly
the forward mask without storing it, whatever its tile shapes (BLOCK_N is a multiple of 4).

Interpreter notes (TRITON_INTERPRET=1): bf16 cannot be computed there, so the host sets
UPCAST=True for bf16 and the kernels cast tiles to fp32 right after loading; fp32 dots use
input_precision="ieee" (exact, like torch's fp32 matmul, not TF32).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import torch
import triton
import triton.language as tl

from fbdl_fast.kernels import interpreting, tuned_here

LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Fused multiply-adds: Triton 3.9's default, said explicitly because a launch that leaves it
# implicit warns (an error under pytest's warnings-as-errors) and 3.10 turns the default off.
FP_FUSION = True


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_tile(ptr, offs, offs_d, stride, n, UPCAST: tl.constexpr):
    """Rows `offs` of an [n, D] matrix (row stride `stride`), zeros past n; fp32 if UPCAST."""
    x = tl.load(ptr + offs[:, None] * stride + offs_d[None, :], mask=offs[:, None] < n, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


# Width of the chunks in which a program reads its sequence's key mask to find the key length:
# 1,024 bytes is 8 per thread with 4 warps (one 8-byte load), 2 chunks at L = 2,048.
MASK_CHUNK: tl.constexpr = tl.constexpr(1024)


@triton.jit
def _key_length(KMASK, smn, Lk, HAS_MASK: tl.constexpr):
    """Keys from this one on are all masked: 1 + the last index where the key mask (one
    sequence's row) is True, 0 if none; Lk without a mask."""
    if HAS_MASK:
        last = tl.zeros((MASK_CHUNK,), tl.int32)
        for start in range(0, Lk, MASK_CHUNK):
            offs = start + tl.arange(0, MASK_CHUNK)
            ok = tl.load(KMASK + offs * smn, mask=offs < Lk, other=0) != 0
            last = tl.maximum(last, tl.where(ok, offs + 1, 0))
        n = tl.max(last, 0)
    else:
        n = Lk
    return n


@triton.jit
def _keys_taking_part(KMASK, offs_n, smn, Lk, HAS_MASK: tl.constexpr):
    """Which keys of a block take part: in range and, with a key mask, marked True there."""
    key_ok = offs_n < Lk
    if HAS_MASK:
        key_ok = key_ok & (tl.load(KMASK + offs_n * smn, mask=key_ok, other=0) != 0)
    return key_ok


@triton.jit
def _scores(
    q, k, offs_m, offs_n, key_ok, Lq, qk_scale, CAUSAL: tl.constexpr, PRECISION: tl.constexpr
):
    """Base-2 scores of one (BLOCK_M, BLOCK_N) tile, -inf where a key may not be seen."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    visible = (offs_m[:, None] < Lq) & key_ok[None, :]
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_m[:, None])
    return tl.where(visible, s, float("-inf"))


@triton.jit
def _keep(seed, bh, offs_m, start_n, Lq, Lk, dropout_p, BLOCK_N: tl.constexpr):
    """The dropout keep mask of the tile of queries offs_m and keys start_n + [0, BLOCK_N): a pure
    function of (seed, b*h, i, j). One Philox call (tl.randint4x) gives the four 32-bit numbers
    of keys 4g .. 4g + 3 of a row, from the counter of key 4g (tl.rand used one of the four); a
    weight is kept when its number is at least p * 2**32, so P(keep) = 1 - p."""
    first = start_n + 4 * tl.arange(0, BLOCK_N // 4)  # the first key of each group of four
    counter = (bh * Lq + offs_m[:, None].to(tl.int64)) * Lk + first[None, :]
    r0, r1, r2, r3 = tl.randint4x(seed, counter)
    # join adds a last dimension of 2: [m, g, a, b] holds r_(2a + b), that is key 4g + 2a + b.
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (offs_m.shape[0], BLOCK_N))
    return r >= tl.cast(dropout_p * 4294967296.0, tl.uint32)


@triton.jit
def _backward_tile(
    q,
    k,
    v,
    do,
    lse,
    delta,
    offs_m,
    start_n,
    key_ok,
    bh,
    Lq,
    Lk,
    qk_scale,
    dropout_p,
    seed,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dQ's step on one (BLOCK_M, BLOCK_N) tile: recompute the forward's probabilities
    P = exp2(S' - lse) and return dS = P * (dP - delta), dP = keep * (dO V^T) / (1 - p). (dK/dV
    does the same on the transposed tile, in _attn_bwd_dkdv.)"""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    s = _scores(q, k, offs_m, offs_n, key_ok, Lq, qk_scale, CAUSAL, PRECISION)
    p = tl.exp2(s - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    if DROPOUT:
        keep = _keep(seed, bh, offs_m, start_n, Lq, Lk, dropout_p, BLOCK_N)
        dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
    return p * (dp - delta[:, None])


@triton.jit
def _attn_fwd(
    Q,
    K,
    V,
    O,
    LSE,
    KMASK,
    sqb,
    sqh,
    sqm,
    skb,
    skh,
    skn,
    svb,
    svh,
    svn,
    sob,
    soh,
    som,
    smb,
    smn,
    H,
    Lq,
    Lk,
    qk_scale,
    dropout_p,
    seed,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One block of queries: O and lse, streaming over the key blocks it may see."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: B*H*L*D may pass 2**31
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = _load_tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqm, Lq, UPCAST)
    K += b * skb + h * skh
    V += b * svb + h * svh
    KMASK += b * smb
    klen = _key_length(KMASK, smn, Lk, HAS_MASK)  # keys from klen on are all masked: not visited

    m_i = tl.full((BLOCK_M,), -1.0e30, tl.float32)  # finite: a fully masked row never sees inf-inf
    l_i = tl.full((BLOCK_M,), 0.0, tl.float32)
    acc = tl.full((BLOCK_M, D), 0.0, tl.float32)
    hi = klen
    if CAUSAL:
        hi = tl.minimum(klen, (pid_m + 1) * BLOCK_M)  # later keys are invisible to this block
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K, offs_n, offs_d, skn, klen, UPCAST)
        v = _load_tile(V, offs_n, offs_d, svn, klen, UPCAST)
        key_ok = _keys_taking_part(KMASK, offs_n, smn, klen, HAS_MASK)
        s = _scores(q, k, offs_m, offs_n, key_ok, Lq, qk_scale, CAUSAL, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser counts dropped entries too
        if DROPOUT:
            p = tl.where(_keep(seed, bh, offs_m, start_n, Lq, Lk, dropout_p, BLOCK_N), p, 0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    scale_out = 1.0 / l_safe
    if DROPOUT:
        scale_out = scale_out / (1.0 - dropout_p)
    out = acc * scale_out[:, None]  # acc is exactly 0 on rows without keys
    lse = tl.where(has_keys, m_i + tl.log2(l_safe), float("inf"))
    tl.store(
        O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :],
        out.to(O.dtype.element_ty),
        mask=offs_m[:, None] < Lq,
    )
    tl.store(LSE + bh * Lq + offs_m, lse, mask=offs_m < Lq)


# The two backward kernels take the same arguments (dQ also O and its strides): dK/dV loops over
# query blocks for one key block, on transposed tiles; dQ over key blocks for one query block.


@triton.jit
def _attn_bwd_dkdv(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    KMASK,
    DK,
    DV,
    sqb,
    sqh,
    sqm,
    skb,
    skh,
    skn,
    svb,
    svh,
    svn,
    sdb,
    sdh,
    sdm,
    smb,
    smn,
    H,
    Lq,
    Lk,
    sm_scale,
    qk_scale,
    dropout_p,
    seed,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One block of keys: dV = Z^T dO and dK = scale * dS^T Q, summed over all query blocks."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: B*H*L*D may pass 2**31
    b = bh // H
    h = bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    klen = _key_length(KMASK + b * smb, smn, Lk, HAS_MASK)
    k = _load_tile(K + b * skb + h * skh, offs_n, offs_d, skn, klen, UPCAST)
    v = _load_tile(V + b * svb + h * svh, offs_n, offs_d, svn, klen, UPCAST)
    key_ok = _keys_taking_part(KMASK + b * smb, offs_n, smn, klen, HAS_MASK)
    Q += b * sqb + h * sqh
    DO += b * sdb + h * sdh
    LSE += bh * Lq
    DELTA += bh * Lq

    dk = tl.full((BLOCK_N, D), 0.0, tl.float32)
    dv = tl.full((BLOCK_N, D), 0.0, tl.float32)
    lo = 0
    if CAUSAL:
        lo = (pid_n * BLOCK_N) // BLOCK_M * BLOCK_M  # earlier queries cannot see these keys
    hi = Lq
    if HAS_MASK:
        hi = tl.where(pid_n * BLOCK_N < klen, Lq, lo)  # a block of padding: no query, zeros out
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < Lq
        q = _load_tile(Q, offs_m, offs_d, sqm, Lq, UPCAST)
        do = _load_tile(DO, offs_m, offs_d, sdm, Lq, UPCAST)
        lse = tl.load(LSE + offs_m, mask=rows, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=rows, other=0.0)
        # Transposed tiles (keys x queries): S^T = K Q^T, so P^T and dS^T come out of the dots
        # in the layout dV's and dK's dots take them, with no transpose of a score tile. The
        # keep mask is the forward's (_keep), transposed: the same numbers, bit for bit. dV's dot
        # before dP's, so dP^T is not live across it (with dropout, D=128 spilled otherwise).
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
        visible = key_ok[:, None] & rows[None, :]
        if CAUSAL:
            visible = visible & (offs_n[:, None] <= offs_m[None, :])
        pt = tl.exp2(tl.where(visible, st, float("-inf")) - lse[None, :])
        if DROPOUT:
            keep = tl.trans(_keep(seed, bh, offs_m, pid_n * BLOCK_N, Lq, Lk, dropout_p, BLOCK_N))
            zt = tl.where(keep, pt, 0.0)  # dV's 1 / (1 - p) is applied once, at the end
        else:
            zt = pt
        dv += tl.dot(zt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        if DROPOUT:
            dpt = tl.where(keep, dpt * (1.0 / (1.0 - dropout_p)), 0.0)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)

    if DROPOUT:
        dv = dv * (1.0 / (1.0 - dropout_p))
    in_range = offs_n < Lk
    tl.store(
        DK + bh * Lk * D + offs_n[:, None] * D + offs_d[None, :],
        (dk * sm_scale).to(DK.dtype.element_ty),
        mask=in_range[:, None],
    )
    tl.store(
        DV + bh * Lk * D + offs_n[:, None] * D + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=in_range[:, None],
    )


@triton.jit
def _attn_bwd_dq(
    Q,
    K,
    V,
    O,
    DO,
    LSE,
    DELTA,
    KMASK,
    DQ,
    sob,
    soh,
    som,
    sqb,
    sqh,
    sqm,
    skb,
    skh,
    skn,
    svb,
    svh,
    svn,
    sdb,
    sdh,
    sdm,
    smb,
    smn,
    H,
    Lq,
    Lk,
    sm_scale,
    qk_scale,
    dropout_p,
    seed,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One block of queries: delta = rowsum(dO * O), stored for dK/dV (launched after this
    kernel), and dQ = scale * dS K, summed over all key blocks."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: B*H*L*D may pass 2**31
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    rows = offs_m < Lq
    q = _load_tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqm, Lq, UPCAST)
    do = _load_tile(DO + b * sdb + h * sdh, offs_m, offs_d, sdm, Lq, UPCAST)
    lse = tl.load(LSE + bh * Lq + offs_m, mask=rows, other=float("inf"))
    o = _load_tile(O + b * sob + h * soh, offs_m, offs_d, som, Lq, True)
    delta = tl.sum(o * do.to(tl.float32), 1)  # rowsum(dO * O), in fp32; dK/dV reads it
    tl.store(DELTA + bh * Lq + offs_m, delta, mask=rows)
    K += b * skb + h * skh
    V += b * svb + h * svh
    KMASK += b * smb
    klen = _key_length(KMASK, smn, Lk, HAS_MASK)

    dq = tl.full((BLOCK_M, D), 0.0, tl.float32)
    hi = klen
    if CAUSAL:
        hi = tl.minimum(klen, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(K, offs_n, offs_d, skn, klen, UPCAST)
        v = _load_tile(V, offs_n, offs_d, svn, klen, UPCAST)
        key_ok = _keys_taking_part(KMASK, offs_n, smn, klen, HAS_MASK)
        ds = _backward_tile(
            q, k, v, do, lse, delta, offs_m, start_n, key_ok, bh, Lq, Lk, qk_scale, dropout_p,
            seed, BLOCK_N, CAUSAL, DROPOUT, PRECISION,
        )  # fmt: skip
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

    tl.store(
        DQ + bh * Lq * D + offs_m[:, None] * D + offs_d[None, :],
        (dq * sm_scale).to(DQ.dtype.element_ty),
        mask=rows[:, None],
    )


# ---------------------------------------------------------------------------------------------
# Host functions: check, pick block sizes, launch
# ---------------------------------------------------------------------------------------------


def _gpu_config(backward: bool) -> dict[str, int]:
    """Block sizes, warps and stages on a GPU (Hopper). Chosen from the sm_90 compile (triton
    3.9, fp16, aligned lengths; tests/kernels/test_ptx_facts.py checks the facts): every dot is a
    wgmma and no kernel spills, except the D=128 forward with dropout (16 bytes of stack). The
    forward's 128 x 64 tiles with 8 warps keep each warpgroup on 64 whole rows (the D=64 forward
    with dropout spilled 112 bytes with 4 warps; 185 registers with 8). The backward's 64 x 64 tiles
    with 8 warps: dK/dV's dots have M = BLOCK_N, so BLOCK_N=32 (the old D=128 choice) fell back
    to mma.sync; with 4 warps 64 x 64 spilled 336 bytes at D=128. With FBDL_FAST_AUTOTUNE=1
    these are the first of the autotune candidates (FORWARD_CANDIDATES, BACKWARD_CANDIDATES)."""
    if backward:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}
    return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}


# Shared memory a block may use on sm_90 (H100/H200: 227 KiB of the SM's 228).
SMEM_LIMIT = 227 * 1024

# Autotune candidates (FBDL_FAST_AUTOTUNE=1 on CUDA), the rule's (_gpu_config) first: the
# forward's query blocks of 128 or 64 with 64-128 keys a step; the backward's blocks, whose
# roles swap between dQ (BLOCK_M queries) and dK/dV (BLOCK_N keys), 64 or 128.
FORWARD_CANDIDATES = (
    (128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3), (64, 128, 4, 2),
)  # (BLOCK_M, BLOCK_N, num_warps, num_stages)  # fmt: skip
BACKWARD_CANDIDATES = (
    (64, 64, 8, 2), (64, 64, 4, 2), (64, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2),
)  # fmt: skip


def _smem_bytes(block_m: int, block_n: int, stages: int, d: int, size: int, kernel: str) -> int:
    """Shared memory a launch is estimated to take: the tiles a dot reads from shared memory,
    the streamed ones once per pipeline stage. Forward: Q (BLOCK_M x D), K and V (BLOCK_N x D
    each, streamed) and P (BLOCK_M x BLOCK_N) for P V. dQ: Q, dO held; K and V streamed; dS.
    dK/dV: K, V held; Q and dO streamed; P^T and dS^T. Over the sm_90 compile's figures
    (dK/dV, 64 x 64, 2 stages: 53,760 / 102,912 bytes at D = 64 / 128; estimated 65,536 /
    114,688), so pruning by it errs on the safe side."""
    if kernel == "forward":
        tiles = block_m * d + stages * 2 * block_n * d + block_m * block_n
    elif kernel == "dq":
        tiles = 2 * block_m * d + stages * 2 * block_n * d + block_m * block_n
    else:  # dkdv
        tiles = 2 * block_n * d + stages * 2 * block_m * d + 2 * block_m * block_n
    return tiles * size


def _configs(kernel: str) -> list[triton.Config]:
    table = FORWARD_CANDIDATES if kernel == "forward" else BACKWARD_CANDIDATES
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in table
    ]


def _fits(config: triton.Config, kernel: str, d: int, size: int) -> bool:
    blocks = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    return _smem_bytes(*blocks, config.num_stages, d, size, kernel) <= SMEM_LIMIT


def _pruned(configs: list[triton.Config], kernel: str, d: int, size: int) -> list[triton.Config]:
    """The first config (the rule's) kept as it is, since it is what runs without autotune (its
    estimate passes the limit in fp32 at D = 128 only); the others while their estimate fits
    SMEM_LIMIT."""
    return [configs[0], *(c for c in configs[1:] if _fits(c, kernel, d, size))]


def _candidates(kernel: str, d: int, size: int) -> list[triton.Config]:
    """The autotune candidates of `kernel` ("forward", "dq", "dkdv") for head dim d and
    elements of `size` bytes, the rule's first."""
    return _pruned(_configs(kernel), kernel, d, size)


def _prune(kernel: str):
    """early_config_prune for `kernel`: the candidates that fit D and the dtype of this call."""

    def prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
        return _pruned(configs, kernel, kwargs["D"], named_args["Q"].element_size())

    return prune


@functools.cache
def _tuned(kernel: str):
    """`kernel`'s Triton autotuner over every candidate, pruned per call by D and dtype, keyed
    on the lengths, D, the mask, dropout and causal masking (and the dtypes, which Triton adds)."""
    fn = {"forward": _attn_fwd, "dq": _attn_bwd_dq, "dkdv": _attn_bwd_dkdv}[kernel]
    return triton.autotune(
        configs=_configs(kernel),
        key=["Lq", "Lk", "D", "HAS_MASK", "DROPOUT", "CAUSAL"],
        prune_configs_by={"early_config_prune": _prune(kernel)},
    )(fn)


def _launch_config(lq: int, lk: int, d: int, backward: bool) -> dict[str, int]:
    """Block sizes and launch options. The interpreter runs programs one after another through
    numpy, so it gets the largest blocks the lengths need (at least 16, tl.dot's minimum there);
    a GPU gets _gpu_config's, whatever the lengths and head dim."""
    if interpreting():
        block = min(64, max(16, triton.next_power_of_2(max(lq, lk))))
        cfg = {"BLOCK_M": block, "BLOCK_N": block, "num_warps": 4, "num_stages": 1}
    else:
        cfg = _gpu_config(backward)
    return {**cfg, "enable_fp_fusion": FP_FUSION}


def _flags(dtype: torch.dtype) -> dict[str, object]:
    # bf16 arithmetic does not exist in the interpreter: upcast tiles after loading there.
    upcast = dtype == torch.bfloat16 and interpreting()
    precision = "ieee" if dtype == torch.float32 or upcast else "tf32"
    return {"UPCAST": upcast, "PRECISION": precision}


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _mask_args(key_mask: Optional[torch.Tensor], q: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    if key_mask is None:
        return q, 0, 0  # any pointer: HAS_MASK=False never reads it
    mask = key_mask.view(torch.uint8) if key_mask.dtype == torch.bool else key_mask
    return mask, mask.stride(0), mask.stride(1)


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: int,
    autotune: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (out [B, H, Lq, D] in q's dtype, lse [B, H, Lq] fp32, base 2).

    key_mask: bool [B, Lk] (True: the key takes part; strides may be 0 to broadcast) or None.
    autotune: on CUDA, pick the launch among `_candidates` by Triton's autotune (else the rule).
    """
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    # ops/attention.py checks these for users; this guards direct calls.
    assert D in HEAD_DIMS and q.dtype in DTYPES, f"head dim {D} / dtype {q.dtype} not supported"
    out = torch.empty((B, H, Lq, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    mask, smb, smn = _mask_args(key_mask, q)
    cfg: dict[str, Any]  # the launch's keywords: block sizes, warps, stages, fp fusion
    if autotune and tuned_here(q):
        kernel, cfg = _tuned("forward"), {"enable_fp_fusion": FP_FUSION}
    else:
        kernel, cfg = _attn_fwd, _launch_config(Lq, Lk, D, backward=False)
    grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
    kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        mask,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *out.stride()[:3],
        smb,
        smn,
        H,
        Lq,
        Lk,
        scale * LOG2E,
        dropout_p,
        seed,
        D=D,
        HAS_MASK=key_mask is not None,
        CAUSAL=causal,
        DROPOUT=dropout_p > 0.0,
        **_flags(q.dtype),
        **cfg,
    )
    return out, lse


def attention_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: int,
    autotune: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (dq, dk, dv), contiguous, in the inputs' dtype. Same seed as the forward.
    autotune as in `attention_forward` (dQ and dK/dV tuned apart)."""
    q, k, v, out, do = (_last_dim_contiguous(t) for t in (q, k, v, out, do))
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    dq = torch.empty((B, H, Lq, D), device=q.device, dtype=q.dtype)
    dk = torch.empty((B, H, Lk, D), device=q.device, dtype=k.dtype)
    dv = torch.empty((B, H, Lk, D), device=q.device, dtype=v.dtype)
    delta = torch.empty((B, H, Lq), device=q.device, dtype=torch.float32)
    mask, smb, smn = _mask_args(key_mask, q)
    tuned = autotune and tuned_here(q)
    cfg = {"enable_fp_fusion": FP_FUSION} if tuned else _launch_config(Lq, Lk, D, backward=True)
    flags = _flags(q.dtype)
    common = (
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *do.stride()[:3],
        smb,
        smn,
        H,
        Lq,
        Lk,
        scale,
        scale * LOG2E,
        dropout_p,
        seed,
    )
    meta = dict(
        D=D, HAS_MASK=key_mask is not None, CAUSAL=causal, DROPOUT=dropout_p > 0.0, **flags, **cfg
    )
    # Two launches: dQ also writes delta, which dK/dV (the second launch, same stream) reads.
    dq_kernel = _tuned("dq") if tuned else _attn_bwd_dq
    dkdv_kernel = _tuned("dkdv") if tuned else _attn_bwd_dkdv
    dq_kernel[lambda c: (triton.cdiv(Lq, c["BLOCK_M"]), B * H)](
        q, k, v, out, do, lse, delta, mask, dq, *out.stride()[:3], *common, **meta
    )
    dkdv_kernel[lambda c: (triton.cdiv(Lk, c["BLOCK_N"]), B * H)](
        q, k, v, do, lse, delta, mask, dk, dv, *common, **meta
    )
    return dq, dk, dv


__all__ = ["DTYPES", "HEAD_DIMS", "attention_backward", "attention_forward"]
