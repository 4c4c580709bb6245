"""Where the tests run the Triton kernels, and whether they can run here at all.

With CUDA the kernels are compiled and tested on CUDA tensors (TRITON_INTERPRET stays unset: a
kernel is compiled or interpreted depending on TRITON_INTERPRET when Triton decorates it, so one
process cannot do both). Without CUDA they run on CPU tensors through the Triton interpreter,
which conftest.py turns on before anything imports Triton.

Not every interpreter can run them: triton 3.6's calls int() on a one-element numpy array when a
loop runs `range()` over a runtime integer; numpy >= 2.4 raises on that, older numpy warns (an
error under the suite's filterwarnings). Rather than trusting a list of versions, a probe kernel
with such a loop is run once under the interpreter, with warnings as errors; if it fails, the
kernel tests skip and say why.
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch

from fbdl_fast.kernels import interpreting

CUDA = torch.cuda.is_available()
# Where the kernel tests put their tensors: dispatch runs the kernels on CUDA tensors, or on CPU
# tensors under the interpreter.
KERNEL_DEVICE = "cuda" if CUDA else "cpu"


@functools.cache
def interpreter_problem() -> Optional[str]:
    """None when the Triton interpreter runs a loop over a runtime bound correctly (as every
    kernel here needs), else what went wrong. Runs the probe once per process."""
    import numpy as np
    import triton
    import triton.language as tl

    if not interpreting():
        return "TRITON_INTERPRET is off, so this Triton kernel would be compiled, not interpreted"

    @triton.jit
    def _sum_in_blocks(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for start in range(0, n, BLOCK):  # a runtime bound, as in every kernel's row loop
            offsets = start + tl.arange(0, BLOCK)
            acc += tl.load(x_ptr + offsets, mask=offsets < n, other=0.0)
        tl.store(out_ptr + tl.arange(0, BLOCK), acc)

    x = torch.arange(40, dtype=torch.float32, device="cpu")
    out = torch.zeros(16, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as the suite's filterwarnings = error would
        try:
            _sum_in_blocks[(1,)](x, out, x.numel(), BLOCK=16)
        except Exception as error:  # the interpreter wraps what failed in its own error
            detail = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            return (
                f"Triton {triton.__version__}'s interpreter cannot loop over a runtime bound "
                f"with numpy {np.__version__} ({detail})"
            )
    if out.sum().item() != x.sum().item():
        return f"Triton {triton.__version__}'s interpreter summed {out.sum().item()}, not 780"
    return None


def kernel_skip_reason() -> Optional[str]:
    """None when the Triton kernels can run in this process (CUDA, or a working interpreter),
    else the reason a test that needs them is skipped."""
    if CUDA:
        return None
    problem = interpreter_problem()
    if problem is None:
        return None
    return f"no CUDA device, and {problem}"
