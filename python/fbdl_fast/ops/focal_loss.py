"""Focal loss: the PyTorch reference, the fused Triton path and the dispatch between them.

Semantics (both paths), for logits (..., C) and class-index targets (...):

    loss_i = alpha[y_i] * (1 - p_i)^gamma * S_i
    S_i    = (1 - s) * w[y_i] * (-log p_i) + (s / C) * sum_c w[c] * (-log p_ic)

p_i is the softmax probability of the target class, w the class weights (default 1), s the
label smoothing: S_i is exactly what F.cross_entropy(weight=w, label_smoothing=s,
reduction="none") gives, so gamma = 0 without alpha equals cross-entropy in value and gradient.
The focal factor uses the true-class probability only; the smoothing term is not focused
per class. alpha is a balance factor: None (1), a number (the same for every class), or one
value per class; it is not part of the mean's denominator.

Reductions: "none" (shape of target), "sum", "mean" = sum / sum of w[y_i] over counted rows, as
F.cross_entropy does. Rows whose target is ignore_index count for nothing. When the counted
weights sum to zero (every row ignored, or an empty batch) the mean is 0 with a zero gradient,
where F.cross_entropy returns NaN: an all-padding batch must not poison a running loss.

The class dimension is the last one (unlike F.cross_entropy's (N, C, d1, ...) layout).
Half-precision logits are computed in fp32 (the reference upcasts, as autocast does for
log_softmax; the kernel accumulates in fp32) and the loss is returned in the logits' dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from fbdl_fast.ops._dispatch import Decision, decide, reference_at_once
from fbdl_fast.ops._library import define, is_compiling, nothing
from fbdl_fast.ops.checks import check_gamma

OP = "focal_loss"
REDUCTIONS = ("none", "mean", "sum")
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

Alpha = Union[None, float, Sequence[float], torch.Tensor]


# --------------------------------------------------------------------------- argument checks


def check_focal_loss_args(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    alpha: Alpha,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    check_range: bool = True,
) -> tuple[torch.Tensor, Union[float, torch.Tensor, None]]:
    """Validate the arguments; return (target as int64, alpha as None, a float or a tensor).

    Raises ValueError/TypeError naming the argument, its value and what is accepted.
    check_range=False leaves the targets' range to the caller: dispatch's CPU reference path,
    where `reference(..., check_targets=True)` finds a bad target at no cost (see there).
    """
    if not isinstance(input, torch.Tensor) or not input.is_floating_point() or input.dim() < 1:
        what = (
            f"a {input.dtype} tensor of shape {tuple(input.shape)}"
            if isinstance(input, torch.Tensor)
            else type(input).__name__
        )
        raise ValueError(
            f"focal_loss: input must be floating-point logits of shape (..., C); got {what}"
        )
    n_classes = input.shape[-1]
    if n_classes < 1:
        raise ValueError(
            f"focal_loss: input has {n_classes} classes in its last dimension; need at least 1"
        )
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            f"focal_loss: target must be a tensor of class indices, got {type(target).__name__}"
        )
    # Checks below test the common case (int64 target, float numbers) first: dispatch on CPU
    # tensors costs little more than these checks, so each abstract isinstance counts.
    if target.dtype is not torch.int64 and (
        target.is_floating_point() or target.is_complex() or target.dtype == torch.bool
    ):
        raise ValueError(
            f"focal_loss: target must hold class indices (int64), got dtype "
            f"{target.dtype}; class-probability targets are not supported"
        )
    if target.shape != input.shape[:-1]:
        raise ValueError(
            f"focal_loss: target shape {tuple(target.shape)} must equal the input "
            f"shape without its class dimension, {tuple(input.shape[:-1])} "
            f"(input {tuple(input.shape)}, classes last)"
        )
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"focal_loss: reduction={reduction!r} is not accepted; use one of "
            f"{', '.join(map(repr, REDUCTIONS))}"
        )
    check_gamma(gamma, "focal_loss: gamma")
    if (
        not (type(label_smoothing) is float or isinstance(label_smoothing, numbers.Real))
        or not 0.0 <= float(label_smoothing) <= 1.0
    ):
        raise ValueError(
            f"focal_loss: label_smoothing={label_smoothing!r} is not accepted; use "
            "a number in [0, 1]"
        )
    if type(ignore_index) is not int and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
    ):
        raise ValueError(f"focal_loss: ignore_index={ignore_index!r} is not accepted; use an int")
    if weight is not None:
        _check_per_class("weight", weight, n_classes, input.device)
    if alpha is not None:
        alpha = _normalize_alpha(alpha, n_classes, input.device)
    if target.dtype is not torch.int64:
        target = target.long()
    if check_range and target.is_cpu and target.numel() > 0 and not is_compiling():
        # Cheap on the CPU; on a GPU it would cost a sync, so the kernel marks such rows NaN (as
        # the reference does), and so does a compiled graph (the check would break it).
        _check_target_range(target, n_classes, ignore_index)
    return target, alpha


def _check_target_range(target: torch.Tensor, n_classes: int, ignore_index: int) -> None:
    """ValueError naming the first target outside [0, C) that is not ignore_index (CPU)."""
    # One pass finds the extremes; only when one is out of range (ignore_index, mostly) is the
    # target looked at again.
    low, high = torch.aminmax(target)
    if int(low) >= 0 and int(high) < n_classes:
        return
    bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"focal_loss: target {value} is out of range; targets must be class "
            f"indices in [0, {n_classes}) or ignore_index={ignore_index}"
        )


def _check_per_class(name: str, value: torch.Tensor, n_classes: int, device: torch.device) -> None:
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.shape[0] != n_classes:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"focal_loss: {name} must be a 1-D tensor with one value per class "
            f"({n_classes}); got {shape}"
        )
    if not value.is_floating_point():
        raise ValueError(f"focal_loss: {name} must be floating-point, got {value.dtype}")
    if value.device != device:
        raise ValueError(
            f"focal_loss: {name} is on {value.device} but input is on {device}; "
            "move it there (FocalLoss keeps it as a buffer, so module.to() does)"
        )


def _normalize_alpha(
    alpha: Alpha, n_classes: int, device: torch.device
) -> Union[float, torch.Tensor, None]:
    if alpha is None:
        return None
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
        if not math.isfinite(alpha) or alpha < 0:
            raise ValueError(
                f"focal_loss: alpha={alpha!r} is not accepted; use a number >= 0, "
                "one value per class, or None for no balance factor"
            )
        return float(alpha)
    if isinstance(alpha, (list, tuple)):
        alpha = torch.tensor(alpha, dtype=torch.float32, device=device)
    if not isinstance(alpha, torch.Tensor):
        raise ValueError(
            f"focal_loss: alpha of type {type(alpha).__name__} is not accepted; "
            "use None, a number, or a sequence/tensor with one value per class"
        )
    if alpha.dim() == 0:
        if not alpha.is_floating_point() or alpha.device != device:
            raise ValueError(
                f"focal_loss: alpha tensor must be floating-point on {device}; got "
                f"{alpha.dtype} on {alpha.device}"
            )
        return alpha
    _check_per_class("alpha", alpha, n_classes, device)
    return alpha


# --------------------------------------------------------------------------- reference


def _reduce(
    loss: torch.Tensor, row_weight: torch.Tensor, reduction: str, shape: torch.Size
) -> torch.Tensor:
    """none/sum/mean of per-row losses; the mean of zero total weight is 0 (zero gradient)."""
    if reduction == "none":
        return loss.reshape(shape)
    total = loss.sum()
    if reduction == "sum":
        return total
    denom = row_weight.sum()
    nonzero = denom != 0
    # Divide by 1 where the denominator is 0 so the unused branch has no 0/0 in its gradient.
    return total / torch.where(nonzero, denom, torch.ones_like(denom)) * nonzero


def reference(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Union[float, torch.Tensor, None] = None,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    check_targets: bool = False,
) -> torch.Tensor:
    """Focal loss as a plain torch composition (log_softmax, gather, pow); autograd does backward.

    Arguments as `dispatch` passes them after checking: target int64 of shape input.shape[:-1],
    alpha None, a float or a 0-dim/(C,) tensor. A target outside [0, C) that is not ignore_index
    gives a NaN row; with check_targets=True (CPU tensors only) it raises the ValueError of
    check_focal_loss_args instead, found by gather's own index check: valid targets pay nothing
    for it.
    """
    n_classes = input.shape[-1]
    z = input.reshape(-1, n_classes)  # (N, C)
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()
    y = target.reshape(-1)  # (N,)
    counted = y != ignore_index
    # With check_targets every counted row is in range once gather below has not raised.
    in_range = None if check_targets else (y >= 0) & (y < n_classes)
    live = counted if in_range is None else counted & in_range
    y_safe = torch.where(live, y, torch.zeros_like(y))
    logp = F.log_softmax(z, dim=-1)  # (N, C)
    try:
        logp_y = logp.gather(1, y_safe[:, None]).squeeze(1)  # (N,)
    except RuntimeError:
        if check_targets:  # an index out of bounds: check_focal_loss_args' message
            try:
                _check_target_range(y, n_classes, ignore_index)
            except ValueError as error:
                raise error from None  # the user's error, not gather's traceback before it
        raise
    w = weight.to(z.dtype) if weight is not None else None
    w_y = (w[y_safe] if w is not None else torch.ones_like(logp_y)) * live
    smooth_ce = w_y * -logp_y
    if label_smoothing > 0:
        # torch's label-smoothed cross-entropy: (1 - s) * nll + s / C * sum_c w_c * -log p_c
        all_classes = -(logp * w).sum(-1) if w is not None else -logp.sum(-1)
        all_classes = torch.where(live, all_classes, torch.zeros_like(all_classes))
        smooth_ce = (1 - label_smoothing) * smooth_ce + label_smoothing / n_classes * all_classes
    # 1 - p_y without cancellation; clamped at the smallest normal so gamma < 1 stays finite.
    q = (-torch.expm1(logp_y)).clamp_min(torch.finfo(z.dtype).tiny)
    loss = q.pow(gamma) * smooth_ce
    if isinstance(alpha, torch.Tensor):
        a = alpha.to(z.dtype)
        loss = loss * (a[y_safe] if a.dim() == 1 else a)
    elif alpha is not None:
        loss = loss * alpha
    # Ignored rows are 0 whatever their logits hold (as in F.cross_entropy); bad targets NaN.
    loss = torch.where(live, loss, torch.zeros_like(loss))
    if in_range is not None:
        loss = torch.where(counted & ~in_range, torch.full_like(loss, float("nan")), loss)
    return _reduce(loss, w_y, reduction, target.shape).to(input.dtype)


# --------------------------------------------------------------------------- Triton path


def _forward_impl(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    alpha: Optional[torch.Tensor],
    alpha_scale: float,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
    save_stats: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per row, weight per row, statistics for the backward or an empty tensor)."""
    from fbdl_fast.kernels.focal_loss import focal_loss_forward  # imports Triton

    loss, row_weight, stats = focal_loss_forward(
        logits,
        target,
        gamma=gamma,
        alpha=alpha,
        alpha_scale=alpha_scale,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        save_stats=save_stats,
    )
    return loss, row_weight, nothing(loss) if stats is None else stats


def _forward_fake(
    logits, target, gamma, alpha, alpha_scale, weight, ignore_index, label_smoothing, save_stats
):
    rows = logits.new_empty(logits.shape[0], dtype=torch.float32)
    stats = rows.new_empty((4, logits.shape[0])) if save_stats else nothing(rows)
    return rows, rows.new_empty(rows.shape), stats


def _backward_impl(
    logits: torch.Tensor,
    target: torch.Tensor,
    stats: torch.Tensor,
    row_grad: torch.Tensor,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
) -> torch.Tensor:
    """The logits' gradient, grad_output times dL/dz, from the forward's statistics."""
    from fbdl_fast.kernels.focal_loss import focal_loss_backward

    return focal_loss_backward(
        logits,
        target,
        stats,
        row_grad,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )


def _backward_fake(logits, target, stats, row_grad, weight, ignore_index, label_smoothing):
    return logits.new_empty(logits.shape)


_forward = define(
    "focal_loss_forward",
    "(Tensor logits, Tensor target, float gamma, Tensor? alpha, float alpha_scale, "
    "Tensor? weight, int ignore_index, float label_smoothing, bool save_stats) "
    "-> (Tensor, Tensor, Tensor)",
    _forward_impl,
    _forward_fake,
)
_backward = define(
    "focal_loss_backward",
    "(Tensor logits, Tensor target, Tensor stats, Tensor row_grad, Tensor? weight, "
    "int ignore_index, float label_smoothing) -> Tensor",
    _backward_impl,
    _backward_fake,
)


class FocalLossFunction(torch.autograd.Function):
    """The fused kernels: forward reads the logits once and keeps four fp32 numbers per row;
    backward reads them once more and writes grad_output x dL/dz. alpha and weight are
    constants here.

    Memory and precision design notes. Between forward and backward the logits themselves are
    kept (no probabilities, no gradient), so forward + backward peak at one (N, C) tensor beyond
    the logits, the gradient. The incoming gradient is applied in fp32 before the one rounding
    to the logits' dtype, so fp16 with GradScaler keeps probabilities below fp16's normal range
    (see kernels/focal_loss.py). Considered and rejected: writing the gradient in the forward and
    scaling it in backward (the previous design: 3 more passes, an fp16 rounding before the scale,
    work under no_grad, and a graph that could not run backward twice); writing the gradient into
    the logits themselves (Liger's cross-entropy; it corrupts autograd when the logits are saved
    by another op, Liger issues #272/#1251).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,  # FunctionCtx; carries the attributes set below
        input: torch.Tensor,
        target: torch.Tensor,
        gamma: float,
        alpha: Union[float, torch.Tensor, None],
        weight: Optional[torch.Tensor],
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        needs_grad: bool,
    ) -> torch.Tensor:
        n_classes = input.shape[-1]
        logits, rows = input.reshape(-1, n_classes), target.reshape(-1)
        alpha_tensor = alpha if isinstance(alpha, torch.Tensor) else None
        loss, row_weight, stats = _forward(
            logits,
            rows,
            gamma,
            alpha_tensor,
            1.0 if alpha is None or alpha_tensor is not None else float(alpha),
            weight,
            ignore_index,
            label_smoothing,
            needs_grad,
        )
        scale = None
        if reduction == "mean":
            denom = row_weight.sum()
            nonzero = denom != 0
            scale = nonzero / torch.where(nonzero, denom, torch.ones_like(denom))  # 0-dim
            out = loss.sum() * scale
        elif reduction == "sum":
            out = loss.sum()
        else:
            out = loss.reshape(target.shape)
        if needs_grad:
            ctx.save_for_backward(logits, rows, stats, weight, scale)
        ctx.reduction, ctx.ignore_index, ctx.label_smoothing = (
            reduction,
            ignore_index,
            label_smoothing,
        )
        ctx.input_shape = input.shape
        return out.to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        logits, rows, stats, weight, scale = ctx.saved_tensors
        # The incoming gradient of each row's loss, fp32, (N,); a stride of 0 broadcasts a scalar.
        row_grad = grad_output.float()
        if ctx.reduction == "mean":
            row_grad = row_grad * scale
        row_grad = row_grad.reshape(-1).expand(logits.shape[0])
        grad = _backward(
            logits, rows, stats, row_grad, weight, ctx.ignore_index, ctx.label_smoothing
        )
        return grad.reshape(ctx.input_shape), None, None, None, None, None, None, None, None


# --------------------------------------------------------------------------- dispatch


def unsupported(
    input: torch.Tensor,
    alpha: Union[float, torch.Tensor, None] = None,
    weight: Optional[torch.Tensor] = None,
) -> Optional[str]:
    """None when the kernel handles these inputs, else why it does not."""
    if input.dtype not in KERNEL_DTYPES:
        return f"logits dtype {input.dtype} is not supported by the kernel (fp32, fp16, bf16)"
    if input.numel() == 0:
        return "the input is empty"
    if torch.is_grad_enabled():
        for name, value in (("alpha", alpha), ("weight", weight)):
            if isinstance(value, torch.Tensor) and value.requires_grad:
                return f"{name} requires grad; the kernel treats it as a constant"
    return None


def _decide(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: Union[float, torch.Tensor, None],
    weight: Optional[torch.Tensor],
) -> Decision:
    tensors = tuple(t for t in (input, target, alpha, weight) if isinstance(t, torch.Tensor))
    return decide(OP, tensors, unsupported(input, alpha, weight))


def dispatch(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Alpha = None,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Check the arguments, then run the kernel or the reference by the rules in _dispatch."""
    # CPU tensors outside the interpreter (the early exit): the reference's gather checks the
    # targets' range for free, where check_focal_loss_args' own check costs 3-8 small ops and
    # syncs.
    cpu_reference = (
        isinstance(input, torch.Tensor)
        and reference_at_once(input)
        and input.is_cpu
        and isinstance(target, torch.Tensor)
        and target.is_cpu
        and not is_compiling()
    )
    target, alpha = check_focal_loss_args(
        input,
        target,
        gamma,
        alpha,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        check_range=not cpu_reference,
    )
    gamma, label_smoothing = float(gamma), float(label_smoothing)
    if cpu_reference:
        return reference(
            input,
            target,
            gamma,
            alpha,
            weight,
            int(ignore_index),
            reduction,
            label_smoothing,
            check_targets=True,
        )
    if not reference_at_once(input) and _decide(input, target, alpha, weight).path == "triton":
        # Read here: inside the Function's forward grad mode is always off.
        needs_grad = input.requires_grad and torch.is_grad_enabled()
        return FocalLossFunction.apply(
            input,
            target,
            gamma,
            alpha,
            weight,
            int(ignore_index),
            reduction,
            label_smoothing,
            needs_grad,
        )
    return reference(
        input, target, gamma, alpha, weight, int(ignore_index), reduction, label_smoothing
    )


def explain(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Alpha = None,
    weight: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Decision:
    """What `dispatch` would run on these arguments and why, without running it."""
    target, alpha = check_focal_loss_args(
        input, target, gamma, alpha, weight, ignore_index, reduction, label_smoothing
    )
    return _decide(input, target, alpha, weight)


__all__ = [
    "FocalLossFunction",
    "check_focal_loss_args",
    "dispatch",
    "explain",
    "reference",
    "unsupported",
]
