"""LayerNorm under autocast without an fp32 copy of the input.

On CUDA autocast runs layer_norm in fp32: torch casts a bf16/fp16 input to fp32 and returns fp32.
The kernel reads the half-precision input as it is, with fp32 (or half, upcast) parameters,
writes y in fp32 and dx in the input's dtype. Checked here without CUDA: the kernel functions
directly in the interpreter, the rule as a pure function, and the whole dispatch with the rule
pointed at the CPU (where torch's own autocast leaves layer_norm alone).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fbdl_fast.nn.functional import layer_norm
from fbdl_fast.ops import layer_norm as op
from tolerances import assert_close

HALF = [torch.float16, torch.bfloat16]


def test_autocast_rule() -> None:
    for device in ("cuda", "xpu", "mps"):
        for dtype in HALF:
            assert op.autocast_dtype(dtype, device, True) == torch.float32
            assert op.autocast_dtype(dtype, device, False) is None
        assert op.autocast_dtype(torch.float32, device, True) is None
    for dtype in HALF:
        assert op.autocast_dtype(dtype, "cpu", True) is None  # torch has no CPU rule for it


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("n", "max_tile"), [(37, 8192), (200, 8192), (70, 32)])
def test_kernel_half_input_fp32_output(
    kernel_device: str, dtype: torch.dtype, n: int, max_tile: int
) -> None:
    """The kernels against torch's autocast computation (F.layer_norm of x.float()), forward and
    backward, one tile and several (max_tile=32)."""
    from fbdl_fast.kernels import layer_norm as kernels

    x = (torch.randn(5, 3, n) * 2 + 1).to(dtype)
    w, b = torch.randn(n), torch.randn(n)
    y, mean, rstd = kernels.layer_norm_forward(
        x, n, w, b, 1e-5, max_tile=max_tile, out_dtype=torch.float32
    )
    x32 = x.float().requires_grad_()
    w32, b32 = w.clone().requires_grad_(), b.clone().requires_grad_()
    expected = F.layer_norm(x32, (n,), w32, b32)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert_close(y, expected)
    dy = torch.randn(5, 3, n)
    expected.backward(dy)
    dx, dw, db = kernels.layer_norm_backward(
        dy, x, n, w, b, mean, rstd, True, True, max_tile=max_tile
    )
    assert dx.dtype == dtype and dw.dtype == db.dtype == torch.float32
    assert_close(dx, x32.grad)
    assert_close(dw, w32.grad, dtype=torch.float32)
    assert_close(db, b32.grad, dtype=torch.float32)


@pytest.fixture
def cpu_autocast_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make dispatch apply CUDA's autocast rule as if autocast were on, to CPU tensors too."""
    monkeypatch.setattr(op, "AUTOCAST_FP32_DEVICES", frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(op, "_autocast_enabled", lambda device: True)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("param_dtype", [torch.float32, "half"])
def test_dispatch_under_the_rule(
    triton: str, cpu_autocast_rule: None, dtype: torch.dtype, param_dtype
) -> None:
    n = 48
    param_dtype = dtype if param_dtype == "half" else param_dtype
    x = torch.randn(4, 7, n).to(dtype).requires_grad_()
    w = (torch.rand(n) + 0.5).to(param_dtype).requires_grad_()
    b = torch.randn(n).to(param_dtype).requires_grad_()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer_norm(x, (n,), w, b)
    assert type(y.grad_fn).__name__ == "LayerNormFunctionBackward"
    assert y.dtype == torch.float32
    # No fp32 copy of x: the only x-sized tensor kept for the backward is x itself.
    big = [t for t in saved if t.numel() == x.numel()]
    assert [(t.dtype, t.data_ptr()) for t in big] == [(dtype, x.data_ptr())]
    dy = torch.randn(4, 7, n)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    leaves = [t.detach().float().requires_grad_() for t in (x, w, b)]
    expected = F.layer_norm(leaves[0], (n,), leaves[1], leaves[2])
    expected_grads = torch.autograd.grad(expected, leaves, dy)
    assert_close(y, expected)
    for grad, leaf, expected_grad in zip(grads, (x, w, b), expected_grads):
        assert grad.dtype == leaf.dtype
        assert_close(grad, expected_grad)


def test_reference_path_under_the_rule(
    cpu_autocast_rule: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the decision (not the early exit) picks the reference, it follows the rule too: the
    same fp32 output as the kernel."""
    from fbdl_fast.ops import _dispatch

    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "triton_import_error", lambda: "ImportError: none here")
    x, w = torch.randn(3, 16).to(torch.bfloat16), torch.randn(16)
    assert op.explain(x, (16,), w).path == "torch"
    y = layer_norm(x, (16,), w)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.layer_norm(x.float(), (16,), w), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", HALF)
def test_the_rule_reads_the_autocast_state(
    triton: str, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    """The fixture above fakes the autocast state; here torch's own is read, on the kernel
    device (CPU autocast is real autocast, only its op list differs from CUDA's): fp32 out inside
    torch.autocast, the input's dtype outside."""
    device = torch.empty(0).device.type
    monkeypatch.setattr(op, "AUTOCAST_FP32_DEVICES", frozenset({device}))
    x, w = torch.randn(3, 16).to(dtype), torch.randn(16)
    assert not op._autocast_enabled(device)
    assert layer_norm(x, (16,), w).dtype == dtype
    with torch.autocast(device, dtype=dtype):
        assert op._autocast_enabled(device)
        y = layer_norm(x, (16,), w)
    assert y.dtype == torch.float32
    assert_close(y, F.layer_norm(x.float(), (16,), w))


# Compiles the autocast combination (half x, fp32 y and dy, half dx) for sm_90 without a GPU,
# with tests/compile_check.py: one line per kernel with whether it built and its spill count.
_COMPILE_FOR_H100 = """
import re
from compile_check import compile_for_gpu
from fbdl_fast.kernels import layer_norm as K

for half in ("bf16", "fp16"):
    for block, one_tile in ((1024, True), (4096, False)):
        flags = {"BLOCK_N": block, "ONE_TILE": one_tile}
        options = {"num_warps": K._num_warps(block), "enable_fp_fusion": K.FP_FUSION}
        forward = compile_for_gpu(K._forward_kernel, {
            "X": f"*{half}", "Y": "*fp32", "W": "*fp32", "B": "*fp32", "Mean": "*fp32",
            "Rstd": "*fp32", "stride_xm": "i64", "N": "i32", "eps": "fp32"},
            {"stride_xn": 1, "HAS_WEIGHT": True, "HAS_BIAS": True, **flags}, **options)
        backward = compile_for_gpu(K._backward_kernel, {
            "X": f"*{half}", "DY": "*fp32", "DX": f"*{half}", "W": "*fp32", "Mean": "*fp32",
            "Rstd": "*fp32", "DW": "*fp32", "DB": "*fp32", "C1": "*fp32", "C2": "*fp32",
            "stride_xm": "i64", "stride_dym": "i64", "M": "i32", "N": "i32",
            "rows_per_program": "i32"},
            {"stride_xn": 1, "stride_dyn": 1, "HAS_WEIGHT": True, "COMPUTE_DW": True,
             "COMPUTE_DB": True, **flags}, **options)
        for name, kernel in (("forward", forward), ("backward", backward)):
            spills = len(re.findall(r"(ld|st)\\.local", kernel.asm["ptx"]))
            print(half, block, name, "cubin" in kernel.asm, spills)
"""


@pytest.mark.slow
def test_autocast_kernels_compile_for_h100(tmp_path) -> None:
    from compile_check import run_compile_script

    lines = run_compile_script(_COMPILE_FOR_H100, tmp_path).splitlines()
    assert lines == [
        f"{half} {block} {name} True 0"
        for half in ("bf16", "fp16")
        for block in (1024, 4096)
        for name in ("forward", "backward")
    ]
