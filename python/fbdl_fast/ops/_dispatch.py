"""One rule for every op: which implementation runs — the Triton kernel or the PyTorch reference.

FBDL_FAST_BACKEND=auto|triton|torch (default auto):
- torch:  always the reference.
- auto:   the Triton kernel when the inputs are CUDA tensors (or CPU tensors under
          TRITON_INTERPRET=1), Triton imports, and the op supports the shape/dtype; else the
          reference. auto never fails because of the backend.
- triton: the Triton kernel, or a BackendError saying why it cannot run.

The environment is read once, when this module is imported, so a call costs no lookups:
`refresh()` reads FBDL_FAST_BACKEND and TRITON_INTERPRET again after a change (tests' monkeypatch
does it for them, see tests/conftest.py). TRITON_INTERPRET is read by fbdl_fast.kernels'
`interpreting`, the library's one rule for it (Triton's own: 1/true/yes/on/y, any case).

FBDL_FAST_AUTOTUNE=1 (any spelling Triton reads as true; default off): the LayerNorm forward and
attention kernels on CUDA pick their block sizes, warps and stages by Triton's autotune among
a few candidates, the documented rule's first (kernels/layer_norm.py _rows_candidates,
kernels/attention.py _candidates); off, and always in the interpreter, the rule alone. It costs
a compile and a timing of each candidate per new key, so it is opt-in. Read with the others.

`reference_backend()` is FBDL_FAST_BACKEND=torch for a block (an ONNX export traces the references
that way), the environment as it was afterwards.

`reference_at_once(x)` is the early exit every op takes first: True when x takes the reference
whatever else the arguments hold (FBDL_FAST_BACKEND=torch, or a CPU tensor under auto outside the
interpreter), so the common CPU call skips the decision below.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import torch

from fbdl_fast.kernels import flag as _flag
from fbdl_fast.kernels import interpreting as _read_interpret

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "FBDL_FAST_BACKEND"
AUTOTUNE_VAR = "FBDL_FAST_AUTOTUNE"


@dataclass(frozen=True)
class Settings:
    """The environment as dispatch sees it, read by `refresh`."""

    backend: str  # FBDL_FAST_BACKEND stripped and lowered, "auto" when unset; may be invalid
    interpret: bool  # TRITON_INTERPRET, by fbdl_fast.kernels.interpreting's rule
    autotune: bool = False  # FBDL_FAST_AUTOTUNE, by the same rule


def _read() -> Settings:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    return Settings(value, _read_interpret(), _flag(os.environ.get(AUTOTUNE_VAR)))


_settings = _read()
# The early exit's two flags, kept as plain globals: reading them is the whole cost of the exit.
_ALL_REFERENCE = _settings.backend == "torch"
_CPU_REFERENCE = _ALL_REFERENCE or (_settings.backend == "auto" and not _settings.interpret)


def refresh() -> Settings:
    """Read FBDL_FAST_BACKEND, TRITON_INTERPRET and FBDL_FAST_AUTOTUNE again (after a test or a
    script changed them) and return what dispatch now sees. Setting TRITON_INTERPRET after
    Triton compiled a kernel does not change how that kernel runs; set it before the first
    launch."""
    global _settings, _ALL_REFERENCE, _CPU_REFERENCE
    _settings = _read()
    _ALL_REFERENCE = _settings.backend == "torch"
    _CPU_REFERENCE = _ALL_REFERENCE or (_settings.backend == "auto" and not _settings.interpret)
    return _settings


@contextlib.contextmanager
def reference_backend() -> Iterator[None]:
    """FBDL_FAST_BACKEND=torch for the block: every op takes its PyTorch reference. Afterwards,
    also when the block raises, the variable is as it was (unset if it was) and dispatch reads
    the environment again."""
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "torch"
    refresh()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = before
        refresh()


def settings() -> Settings:
    """What dispatch read from the environment (at import or the last `refresh`)."""
    return _settings


def autotune() -> bool:
    """True when FBDL_FAST_AUTOTUNE asked for autotuned launches (as last read, see `refresh`);
    the kernels use it on CUDA only."""
    return _settings.autotune


def reference_at_once(x: torch.Tensor) -> bool:
    """True when an op given `x` (its main input) takes the reference whatever its other
    arguments: FBDL_FAST_BACKEND=torch, or auto with a CPU tensor outside the interpreter. Costs
    two global reads and `is_cpu`; ops call it before anything else."""
    return _ALL_REFERENCE or (_CPU_REFERENCE and x.is_cpu)


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
    """The requested backend, from FBDL_FAST_BACKEND as last read (see `refresh`)."""
    value = _settings.backend
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not a backend; accepted: {', '.join(BACKENDS)}")
    return value


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (any spelling Triton reads as true), as last read (see
    `refresh`): Triton kernels then run on CPU tensors through numpy."""
    return _settings.interpret


_NOT_TRIED = object()
_triton_error: object = _NOT_TRIED


def triton_import_error() -> Optional[str]:
    """None when Triton imports, else the reason it does not. Imported lazily, once."""
    global _triton_error
    if _triton_error is _NOT_TRIED:
        try:
            import triton
            import triton.language  # noqa: F401
        except Exception as error:  # ImportError, or a broken install raising something else
            _triton_error = f"{type(error).__name__}: {error}"
        else:
            _triton_error = None
    return _triton_error  # type: ignore[return-value]


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
