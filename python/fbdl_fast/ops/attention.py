"""Attention op: softmax(Q K^T * scale + mask) V with a key mask, causal masking and dropout.

- `reference`: plain torch (autograd does the backward); builds the (Lq, Lk) score matrix.
- `AttentionFunction`: the autograd.Function over kernels/attention.py (tiled, O(L) memory).
- `dispatch`: picks one by the rules in _dispatch.py; `explain` says which and why.

Conventions (torch SDPA's): q [B, H, Lq, D], k and v [B, H, Lk, D]; key_mask bool [B, Lk], True
where the key takes part; causal means query i sees keys j <= i. A query that sees no key at all
gets a zero output and zero gradients on both paths (torch's plain softmax would give NaN).

Dropout runs in the kernel: the keep mask comes from a Philox stream keyed by a seed drawn from
torch's default generator (so torch.manual_seed makes it reproducible) and is regenerated, not
stored, in backward. The paths draw different masks for the same seed (the reference uses
torch.nn.functional.dropout, the CPU path SDPA's own); all keep each weight with probability
1 - p and scale by 1/(1-p).

CPU tensors outside the interpreter (the early exit) go to torch's own
F.scaled_dot_product_attention (`cpu_sdpa`), which is the reference's formula with fused CPU
kernels: at the bench's CPU shapes the plain reference measured 0.46-0.86x SDPA without dropout
(0.91-1.29x with it, where SDPA runs its math backend), this path 0.92-1.16x SDPA's best backend
(AMD EPYC, 2 cores, 1 thread, timed in turns). It keeps the contract for rows
without a visible key (zeros, zero gradients: SDPA's safe softmax since torch 2.5, checked by
tests/kernels/test_attention_cpu.py); inputs it does not take as they are (mixed dtypes, no keys or
no queries, dropout_p = 1) keep the reference.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from fbdl_fast.ops._dispatch import Decision, autotune, decide, reference_at_once
from fbdl_fast.ops._library import define

OP = "attention"
HEAD_DIMS = (16, 32, 64, 128)  # what the kernel's tiles support (kernels.attention.HEAD_DIMS)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _default_scale(q: torch.Tensor) -> float:
    return q.shape[-1] ** -0.5


def _visible(
    key_mask: Optional[torch.Tensor], causal: bool, lq: int, lk: int, device: torch.device
) -> Optional[torch.Tensor]:
    """Bool mask broadcastable to (B, H, Lq, Lk): True where query i may see key j."""
    visible = None
    if causal:
        visible = torch.ones(lq, lk, dtype=torch.bool, device=device).tril()  # (Lq, Lk)
    if key_mask is not None:
        keys = key_mask[:, None, None, :]  # (B, 1, 1, Lk)
        visible = keys if visible is None else keys & visible
    return visible


def reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v in plain torch; scores and softmax in fp32.

    Returns [B, H, Lq, Dv] in v's dtype. Rows without a visible key are zeros, with zero
    gradients: their scores are made finite before the softmax and their weights zeroed after.
    """
    check_attention_args(q, k, v, key_mask, dropout_p)
    scale = _default_scale(q) if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale  # (B, H, Lq, Lk)
    visible = _visible(key_mask, causal, q.shape[-2], k.shape[-2], q.device)
    if visible is not None:
        has_keys = visible.any(dim=-1, keepdim=True)  # (B|1, 1, Lq|1, 1)
        scores = scores.masked_fill(~visible, float("-inf")).masked_fill(~has_keys, 0.0)
        probs = torch.softmax(scores, dim=-1).masked_fill(~has_keys, 0.0)
    else:
        probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs.to(v.dtype), v)


def cpu_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """The op by torch's F.scaled_dot_product_attention: what CPU tensors run outside the
    interpreter. Same arguments, checks and results as `reference` (within rounding; dropout
    draws SDPA's mask); inputs SDPA would treat otherwise go to `reference`."""
    check_attention_args(q, k, v, key_mask, dropout_p)
    if (
        not q.dtype.is_floating_point
        or k.dtype != q.dtype
        or v.dtype != q.dtype
        or q.shape[-2] == 0
        or k.shape[-2] == 0
        or dropout_p >= 1.0
    ):
        return reference(q, k, v, key_mask, causal, scale, dropout_p)
    if key_mask is None:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale
        )
    mask = _visible(key_mask, causal, q.shape[-2], k.shape[-2], q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)


def _forward_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) from the Triton kernel."""
    from fbdl_fast.kernels import attention as kernels  # Triton loads on first use only

    seed_value = 0 if seed is None else int(seed.item())
    return kernels.attention_forward(
        q, k, v, key_mask, causal, scale, dropout_p, seed_value, autotune=autotune()
    )


def _forward_fake(q, k, v, key_mask, causal, scale, dropout_p, seed):
    B, H, Lq, D = q.shape
    return q.new_empty((B, H, Lq, D)), q.new_empty((B, H, Lq), dtype=torch.float32)


def _backward_impl(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    causal: bool,
    scale: float,
    dropout_p: float,
    seed: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the Triton kernels."""
    from fbdl_fast.kernels import attention as kernels

    seed_value = 0 if seed is None else int(seed.item())
    return kernels.attention_backward(
        dout, q, k, v, out, lse, key_mask, causal, scale, dropout_p, seed_value,
        autotune=autotune(),
    )  # fmt: skip


def _backward_fake(dout, q, k, v, out, lse, key_mask, causal, scale, dropout_p, seed):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_forward = define(
    "attention_forward",
    "(Tensor q, Tensor k, Tensor v, Tensor? key_mask, bool causal, float scale, "
    "float dropout_p, Tensor? seed) -> (Tensor, Tensor)",
    _forward_impl,
    _forward_fake,
)
_backward = define(
    "attention_backward",
    "(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? key_mask, "
    "bool causal, float scale, float dropout_p, Tensor? seed) -> (Tensor, Tensor, Tensor)",
    _backward_impl,
    _backward_fake,
)


class AttentionFunction(torch.autograd.Function):
    """Fused attention: forward saves q, k, v, out and the per-query log-sum-exp only. The
    kernels run as the custom ops fbdl_fast::attention_forward/backward (see _library.py)."""

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: Optional[torch.Tensor],
        causal: bool,
        scale: Optional[float],
        dropout_p: float,
    ) -> torch.Tensor:
        scale = _default_scale(q) if scale is None else float(scale)
        # The seed comes from torch's generator, so torch.manual_seed fixes the dropout mask; it
        # stays a tensor (read inside the op) so torch.compile needs no .item() in the graph.
        seed = torch.randint(0, 2**62, (1,), device="cpu") if dropout_p > 0.0 else None
        out, lse = _forward(q, k, v, key_mask, causal, scale, dropout_p, seed)
        ctx.save_for_backward(q, k, v, out, lse, key_mask, seed)
        ctx.causal, ctx.scale, ctx.dropout_p = causal, scale, dropout_p
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        q, k, v, out, lse, key_mask, seed = ctx.saved_tensors
        dq, dk, dv = _backward(
            dout, q, k, v, out, lse, key_mask, ctx.causal, ctx.scale, ctx.dropout_p, seed
        )
        return dq, dk, dv, None, None, None, None


def check_attention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor],
    dropout_p: float,
) -> None:
    """Raise ValueError for inputs no path can run (shapes, key_mask, dropout_p), naming the
    argument, its value and what is accepted; both paths call it first."""
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.dim() != 4:
            raise ValueError(
                f"attention: {name} must be 4-D [B, H, L, D], got shape {tuple(t.shape)}"
            )
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"attention: shapes query {tuple(q.shape)}, key {tuple(k.shape)}, value "
            f"{tuple(v.shape)} do not fit; accepted: query [B, H, Lq, D], key [B, H, Lk, D], "
            "value [B, H, Lk, Dv]"
        )
    if key_mask is not None:
        want = (q.shape[0], k.shape[2])
        if key_mask.dtype != torch.bool or tuple(key_mask.shape) != want:
            raise ValueError(
                f"attention: key_mask must be a bool tensor of shape {want} "
                f"(True where the key takes part), got {key_mask.dtype} "
                f"{tuple(key_mask.shape)}"
            )
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1], got {dropout_p}")


def unsupported(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> Optional[str]:
    """None when the kernel runs these (valid) inputs, else why not."""
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return (
            f"dtypes query {q.dtype}, key {k.dtype}, value {v.dtype}: the kernel needs one "
            "of float16, bfloat16, float32 for all three"
        )
    if q.shape[-1] not in HEAD_DIMS or v.shape[-1] != q.shape[-1]:
        return (
            f"head dims {q.shape[-1]} (query/key) and {v.shape[-1]} (value): the kernel "
            f"needs one of {HEAD_DIMS} for all three"
        )
    if dropout_p >= 1.0:
        return "dropout_p=1 drops everything; the reference returns the zeros"
    return None


def explain(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> Decision:
    """Which path `dispatch` takes for these arguments and why (runs nothing)."""
    check_attention_args(q, k, v, key_mask, dropout_p)
    tensors = (q, k, v) if key_mask is None else (q, k, v, key_mask)
    return decide(OP, tensors, unsupported(q, k, v, key_mask, causal, scale, dropout_p))


def dispatch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention by the Triton kernel where it can run, else by `reference`."""
    if reference_at_once(q):  # the early exit; cpu_sdpa checks the arguments itself
        if q.is_cpu:
            return cpu_sdpa(q, k, v, key_mask, causal, scale, dropout_p)
        return reference(q, k, v, key_mask, causal, scale, dropout_p)
    if explain(q, k, v, key_mask, causal, scale, dropout_p).path == "triton":
        return AttentionFunction.apply(q, k, v, key_mask, causal, scale, dropout_p)
    return reference(q, k, v, key_mask, causal, scale, dropout_p)


__all__ = [
    "AttentionFunction",
    "check_attention_args",
    "cpu_sdpa",
    "dispatch",
    "explain",
    "reference",
    "unsupported",
]
