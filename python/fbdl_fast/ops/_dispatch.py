"""One rule for every op: which implementation runs — the Triton kernel or the PyTorch reference.

FBDL_FAST_BACKEND=auto|triton|torch (default auto):
- torch:  always the reference.
- auto:   the Triton kernel when the inputs are CUDA tensors (or CPU tensors under
          TRITON_INTERPRET=1), Triton imports, and the op supports the shape/dtype; else the
          reference. auto never fails because of the backend.
- triton: the Triton kernel, or a BackendError saying why it cannot run.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "FBDL_FAST_BACKEND"


class BackendError(RuntimeError):
    """FBDL_FAST_BACKEND=triton was asked for, but the Triton kernel cannot run these inputs."""


@dataclass(frozen=True)
class Decision:
    """What would run for an op and why."""

    op: str
    path: str  # "triton" or "torch"
    reason: str

    def __str__(self) -> str:
        return f"{self.op}: {self.path} ({self.reason})"


def backend() -> str:
    """The requested backend, read from FBDL_FAST_BACKEND on every call (so tests can change it)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not a backend; accepted: {', '.join(BACKENDS)}")
    return value


# The values Triton itself reads as true for TRITON_INTERPRET (its getenv_bool).
_TRUE = ("1", "true", "yes", "on", "y")


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (or true/yes/on, as Triton reads it), where Triton kernels
    run on CPU tensors through numpy."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in _TRUE


@functools.cache
def triton_import_error() -> Optional[str]:
    """None when Triton imports, else the reason it does not. Imported lazily, once."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception as error:  # ImportError, or a broken install raising something else
        return f"{type(error).__name__}: {error}"
    return None


def _device_problem(tensors: tuple[torch.Tensor, ...]) -> Optional[str]:
    # is_cuda/is_cpu first: this runs on every call of every op, and they cost a fifth of .device
    if tensors and all(t.is_cuda for t in tensors):
        return None
    if tensors and interpreting() and all(t.is_cpu for t in tensors):
        return None
    where = " and ".join(sorted({t.device.type for t in tensors})) or "no device"
    return (
        f"inputs are on {where}; the Triton kernels need CUDA tensors "
        "(or CPU tensors under TRITON_INTERPRET=1)"
    )


def decide(op: str, tensors: tuple[torch.Tensor, ...], unsupported: Optional[str]) -> Decision:
    """Pick the path for `op` on `tensors`.

    `unsupported` is the op's own verdict on the inputs: None when its kernel handles this
    shape/dtype/argument combination, otherwise a short reason why not.
    """
    requested = backend()
    if requested == "torch":
        return Decision(op, "torch", f"{ENV_VAR}=torch")
    problem = _device_problem(tensors)
    if problem is None:
        error = triton_import_error()
        problem = f"triton is not importable ({error})" if error else unsupported
    if problem is None:
        where = "interpreter" if interpreting() else "cuda"
        return Decision(op, "triton", f"{ENV_VAR}={requested}, Triton {where} supports the inputs")
    if requested == "triton":
        raise BackendError(
            f"{op}: {ENV_VAR}=triton but the Triton kernel cannot run: {problem}. "
            f"Unset {ENV_VAR} (or set it to auto) to fall back to PyTorch."
        )
    return Decision(op, "torch", problem)
