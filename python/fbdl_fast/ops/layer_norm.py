"""LayerNorm: the PyTorch reference, the Triton path (an autograd.Function over
fbdl_fast.kernels.layer_norm) and the dispatch between them.

Both paths take F.layer_norm's arguments and give its results: the output in the input's dtype,
gradients for the input, weight and bias. The Triton path computes in fp32 whatever the storage
dtype, as torch does.

Autocast: torch registers layer_norm in autocast's "float32" list on CUDA (and XPU, MPS): there
fp16/bf16 inputs are cast to fp32 and the output is fp32. On CPU layer_norm has no autocast rule
(checked with torch 2.15: bf16 in, bf16 out; fp32 in, fp32 out; bf16 input with fp32 weight gives
bf16). `dispatch` applies the same rule (`autocast_dtype`), so a model patched with
fbdl_fast.nn.LayerNorm returns the same dtypes as the torch.nn one under autocast. The kernel
gets the same answer without torch's fp32 copy of the input: it reads the half-precision x with
the parameters as they are, writes y in fp32 and dx in x's dtype (14 bytes an element moved
forward and backward instead of 40).
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from fbdl_fast.ops._dispatch import Decision, autotune, decide, reference_at_once
from fbdl_fast.ops._library import define, nothing

OP = "layer_norm"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)
# Device types whose autocast runs layer_norm in fp32 (torch's autocast "float32" list).
AUTOCAST_FP32_DEVICES = frozenset({"cuda", "xpu", "mps"})

ShapeLike = Union[int, Sequence[int], torch.Size]


def reference(
    x: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Plain PyTorch: what the Triton path must match."""
    return F.layer_norm(x, _as_shape(normalized_shape), weight, bias, eps)


def _forward_impl(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    n: int,
    eps: float,
    fp32_output: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, mean, rstd) from the Triton kernel; y in fp32 if fp32_output, else in x's dtype."""
    from fbdl_fast.kernels import layer_norm as kernels  # imports Triton: only on this path

    out_dtype = torch.float32 if fp32_output else None
    return kernels.layer_norm_forward(
        x, n, weight, bias, eps, out_dtype=out_dtype, autotune=autotune()
    )


def _forward_fake(x, weight, bias, n, eps, fp32_output):
    rows = x.numel() // n
    stats = x.new_empty(rows, dtype=torch.float32)
    y = x.new_empty(x.shape, dtype=torch.float32 if fp32_output else x.dtype)
    return y, stats, stats.new_empty(rows)


def _backward_impl(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    mean: torch.Tensor,
    rstd: torch.Tensor,
    n: int,
    need_dw: bool,
    need_db: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dw, db) from the Triton kernel; dw/db empty when not asked for."""
    from fbdl_fast.kernels import layer_norm as kernels

    dx, dw, db = kernels.layer_norm_backward(dy, x, n, weight, bias, mean, rstd, need_dw, need_db)
    return dx, nothing(x) if dw is None else dw, nothing(x) if db is None else db


def _backward_fake(dy, x, weight, bias, mean, rstd, n, need_dw, need_db):
    dw = weight.new_empty(weight.shape) if need_dw else nothing(x)
    db = bias.new_empty(bias.shape) if need_db else nothing(x)
    return x.new_empty(x.shape), dw, db


_forward = define(
    "layer_norm_forward",
    "(Tensor x, Tensor? weight, Tensor? bias, int n, float eps, bool fp32_output) "
    "-> (Tensor, Tensor, Tensor)",
    _forward_impl,
    _forward_fake,
)
_backward = define(
    "layer_norm_backward",
    "(Tensor dy, Tensor x, Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, int n, "
    "bool need_dw, bool need_db) -> (Tensor, Tensor, Tensor)",
    _backward_impl,
    _backward_fake,
)


class LayerNormFunction(torch.autograd.Function):
    """The Triton path. Saves x (not the output), mean and rstd for the backward. The kernels run
    as the custom ops fbdl_fast::layer_norm_forward/backward (see _library.py)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        n: int,
        eps: float,
        fp32_output: bool = False,
    ) -> torch.Tensor:
        y, mean, rstd = _forward(x, weight, bias, n, eps, fp32_output)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.n = n
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):  # type: ignore[override]
        x, weight, bias, mean, rstd = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        dx, dw, db = _backward(dy, x, weight, bias, mean, rstd, ctx.n, need_dw, need_db)
        return (
            (dx if need_dx else None),
            (dw if need_dw else None),
            (db if need_db else None),
            None,
            None,
            None,
        )


def _as_shape(normalized_shape: ShapeLike) -> tuple[int, ...]:
    given: Any = normalized_shape
    if type(given) is int:
        return (given,)
    if type(given) in (tuple, torch.Size) and given and all(type(d) is int for d in given):
        return tuple(given)  # the common case (a module's normalized_shape), checked quickly
    shape: Optional[tuple[int, ...]] = None
    if isinstance(given, bool):
        pass  # an int to Python, not a size
    elif hasattr(type(given), "__index__"):  # numpy and other integer scalars
        shape = (operator.index(given),)
    elif not isinstance(given, (str, bytes)):
        with contextlib.suppress(TypeError):  # not iterable, or items that are not integers
            shape = tuple(operator.index(d) for d in given)
            if any(isinstance(d, bool) for d in given):
                shape = None
    if not shape:
        raise ValueError(
            f"normalized_shape must be an int or a non-empty sequence of ints, got {given!r}"
        )
    return shape


def check_layer_norm_args(
    x: torch.Tensor,
    shape: tuple[int, ...],
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
) -> None:
    """Raise ValueError when x does not end with `shape` (normalized_shape as a tuple of ints)
    or weight/bias do not have that shape: bad arguments get the same error whichever path
    would run."""
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape) :]) != shape:
        raise ValueError(
            f"layer_norm: input of shape {tuple(x.shape)} does not end with "
            f"normalized_shape {shape}; accepted: inputs of shape (*, {', '.join(map(str, shape))})"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != shape:
            raise ValueError(
                f"layer_norm: {name} has shape {tuple(p.shape)}; it must have "
                f"normalized_shape {shape}"
            )


def _autocast_enabled(device: str) -> bool:
    try:
        return torch.is_autocast_enabled(device)
    except TypeError:  # torch < 2.4 takes no device and answers for CUDA
        return device == "cuda" and torch.is_autocast_enabled()


def autocast_dtype(x_dtype: torch.dtype, device_type: str, enabled: bool) -> Optional[torch.dtype]:
    """torch's autocast rule for layer_norm: float32 when autocast is `enabled` on a device
    that lists layer_norm as fp32 and the input is fp16/bf16 (the output is then fp32), else None
    (the output keeps the input's dtype)."""
    if enabled and device_type in AUTOCAST_FP32_DEVICES and x_dtype in HALF_DTYPES:
        return torch.float32
    return None


def _autocast(x: torch.Tensor) -> Optional[torch.dtype]:
    """`autocast_dtype` for x under the autocast state of its device."""
    if x.dtype not in HALF_DTYPES:  # the common case, answered without building x.device
        return None
    device = x.device.type
    return autocast_dtype(x.dtype, device, _autocast_enabled(device))


def _upcast(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return t.float() if t is not None and t.dtype in HALF_DTYPES else t


def unsupported(
    x: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> Optional[str]:
    """Why the Triton kernel cannot run these arguments, or None when it can."""
    if x.dtype not in SUPPORTED_DTYPES:
        return f"input dtype {x.dtype} is not supported (float32, float16, bfloat16 are)"
    for name, p in (("weight", weight), ("bias", bias)):
        # Like torch: parameters in the input's dtype, or fp32 with a half-precision input.
        if p is not None and p.dtype not in (x.dtype, torch.float32):
            return f"{name} dtype {p.dtype} differs from the input's {x.dtype} (and is not float32)"
    if math.prod(_as_shape(normalized_shape)) == 0:
        return "normalized_shape has no elements"
    return None


def _prepare(
    x: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    eps: float,
):
    shape = _as_shape(normalized_shape)
    check_layer_norm_args(x, shape, weight, bias)
    out_dtype = _autocast(x)
    if out_dtype is not None:  # autocast: x stays as it is, half parameters go fp32 as in torch
        weight, bias = _upcast(weight), _upcast(bias)
    tensors = tuple(t for t in (x, weight, bias) if t is not None)
    decision = decide(OP, tensors, unsupported(x, shape, weight, bias, eps))
    return decision, shape, x, weight, bias, out_dtype


def explain(
    x: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> Decision:
    """Which path `dispatch` would take for these arguments, and why, without running it."""
    return _prepare(x, normalized_shape, weight, bias, eps)[0]


def dispatch(
    x: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """F.layer_norm through the Triton kernel or the reference, by the rules in _dispatch.py.
    Under autocast (CUDA's fp32 rule) a half-precision x gives an fp32 output."""
    if reference_at_once(x):  # the early exit: CPU outside the interpreter, or backend torch
        shape = _as_shape(normalized_shape)
        try:  # F.layer_norm's own call, without its Python wrapper (~0.8 us of a 27 us call)
            return torch.layer_norm(x, shape, weight, bias, eps, torch.backends.cudnn.enabled)
        except RuntimeError:
            check_layer_norm_args(
                x, shape, weight, bias
            )  # torch's error becomes ours when it is about shapes
            raise
    decision, shape, x, weight, bias, out_dtype = _prepare(x, normalized_shape, weight, bias, eps)
    if decision.path == "torch":
        if out_dtype is not None:  # what autocast does (it may be off here, see the tests)
            x = x.float()
        return reference(x, shape, weight, bias, eps)
    fp32_output = out_dtype is not None
    return LayerNormFunction.apply(x, weight, bias, math.prod(shape), float(eps), fp32_output)


__all__ = [
    "OP",
    "LayerNormFunction",
    "check_layer_norm_args",
    "dispatch",
    "explain",
    "reference",
    "unsupported",
]
