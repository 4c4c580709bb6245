"""The kernel launchers as torch.library custom ops, so torch.compile sees each as one opaque op.

Dynamo cannot trace a Triton launcher (it dies inside Triton's runtime, or under the interpreter
on `__triton_builtin__`). Each op's autograd.Function therefore calls its launchers through
`define`: under torch.compile / torch.export they are `torch.ops.fbdl_fast.<name>`, with a fake
implementation that gives the outputs' shapes, dtypes and strides without running anything; the
autograd.Function around them (traced by dynamo as flash-attn's are) is their autograd formula.

In eager code the launcher is called directly: going through the dispatcher costs about 9 us a
call (measured with torch 2.15 on this CPU), as much as a whole small LayerNorm. On a torch
without torch.library.custom_op (before 2.4) there is no op: eager works as before and
torch.compile falls back to its own graph breaks.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

NAMESPACE = "fbdl_fast"

_custom_op = getattr(torch.library, "custom_op", None)
_is_compiling: Callable[[], bool] = getattr(
    getattr(torch, "compiler", None), "is_compiling", lambda: False
)


def is_compiling() -> bool:
    """True while torch.compile (or torch.export) traces the caller."""
    return _is_compiling()


def define(name: str, schema: str, impl: Callable[..., Any], fake: Callable[..., Any]):
    """Register `impl` as torch.ops.fbdl_fast.<name> with `schema` and the `fake` implementation
    (same arguments, outputs of the right shape made with new_empty, nothing computed), and
    return the function to call: the op while compiling, `impl` itself otherwise.

    The schema's outputs must be fresh tensors, never an input or a view of one (custom ops may
    not alias); an optional output is returned as an empty tensor instead of None."""
    if _custom_op is None:
        return impl
    _custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=(), schema=schema).register_fake(fake)
    op = getattr(getattr(torch.ops, NAMESPACE), name).default  # an OpOverload: dynamo knows it

    def call(*args: Any) -> Any:
        return op(*args) if _is_compiling() else impl(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = impl.__doc__
    call.op = op  # type: ignore[attr-defined]
    return call


def nothing(like: torch.Tensor) -> torch.Tensor:
    """The placeholder for an output that was not asked for (custom ops return no None)."""
    return like.new_empty(0)


__all__ = ["NAMESPACE", "define", "is_compiling", "nothing"]
