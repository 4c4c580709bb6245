"""The kernel tests' skip decision (tests/devices.py) tells the truth about this machine."""

from __future__ import annotations

import pytest
import torch

from devices import CUDA, interpreter_problem, kernel_skip_reason


@pytest.mark.skipif(CUDA, reason="with CUDA the kernels are compiled, not interpreted")
def test_interpreter_probe_agrees_with_a_real_kernel() -> None:
    """Where the probe says the interpreter fails, the LayerNorm kernel's tiled path (a loop over
    the row in 32-wide tiles, a runtime bound) fails too; where it says it works, that kernel
    runs and is right. So a skip of the kernel tests never hides a working interpreter."""
    from fbdl_fast.kernels import layer_norm as kernels

    x, w, b = torch.randn(3, 100), torch.randn(100), torch.randn(100)
    problem = interpreter_problem()
    assert kernel_skip_reason() == (None if problem is None else f"no CUDA device, and {problem}")
    if problem is not None:
        with pytest.raises(Exception):  # noqa: B017  (the interpreter's own error, or a warning)
            kernels.layer_norm_forward(x, 100, w, b, 1e-5, max_tile=32)
        return
    y, _, _ = kernels.layer_norm_forward(x, 100, w, b, 1e-5, max_tile=32)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (100,), w, b, 1e-5))
