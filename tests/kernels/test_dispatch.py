"""The dispatch rules (fbdl_fast/ops/_dispatch.py), seen through the LayerNorm op.

FBDL_FAST_BACKEND=torch always runs the reference; auto runs the Triton kernel where it can
(CUDA tensors, or CPU tensors under TRITON_INTERPRET=1) and the reference elsewhere, never
failing because of the backend; triton runs the kernel or raises BackendError saying why. Which
path ran is read from the output's grad_fn: the autograd.Function's node or torch's own.

Tests that run the kernel take the `kernel_device` fixture: CUDA tensors where CUDA is (the
interpreter then stays off: Triton compiled the kernels), else CPU tensors under the interpreter.
"""

from __future__ import annotations

import os

import pytest
import torch

import fbdl_fast
import fbdl_fast.ops
from devices import CUDA
from fbdl_fast.nn import LayerNorm
from fbdl_fast.nn.layer_norm import layer_norm
from fbdl_fast.ops import BackendError, Decision, _dispatch
from fbdl_fast.ops import layer_norm as op

TRITON_NODE = "LayerNormFunctionBackward"
TORCH_NODE = "NativeLayerNormBackward0"


def _ran(x: torch.Tensor, *args, **kwargs) -> str:
    """Run layer_norm and return which path produced the output."""
    y = layer_norm(x.requires_grad_(), *args, **kwargs)
    return {TRITON_NODE: "triton", TORCH_NODE: "torch"}[type(y.grad_fn).__name__]


# Where the kernels run, the interpreter is on without CUDA and off with it (conftest.py).
INTERPRET = None if CUDA else "1"


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch):
    def set_backend(value: str | None, interpret: str | None = INTERPRET) -> None:
        for name, v in (("FBDL_FAST_BACKEND", value), ("TRITON_INTERPRET", interpret)):
            if v is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, v)

    return set_backend


@pytest.mark.parametrize("value", ["auto", "triton", "torch"])
def test_where_the_kernels_run(backend, kernel_device: str, value: str) -> None:
    backend(value)
    expected = "torch" if value == "torch" else "triton"
    x = torch.randn(2, 16)
    assert _ran(x, (16,)) == expected
    decision = fbdl_fast.ops.explain("layer_norm", x, (16,))
    assert decision == op.explain(x, (16,))
    assert (decision.op, decision.path) == ("layer_norm", expected)
    assert f"FBDL_FAST_BACKEND={value}" in decision.reason


def test_auto_is_the_default(backend, kernel_device: str) -> None:
    backend(None)
    assert fbdl_fast.backend() == "auto"
    assert _ran(torch.randn(2, 16), (16,)) == "triton"


@pytest.mark.parametrize("interpret", [None, "0", "off"])
def test_auto_on_cpu_without_interpreter_runs_torch(backend, interpret) -> None:
    backend("auto", interpret)
    x = torch.randn(2, 16, device="cpu")
    decision = op.explain(x, (16,))
    assert decision.path == "torch"
    assert "inputs are on cpu" in decision.reason and "CUDA" in decision.reason
    assert _ran(x, (16,)) == "torch"


@pytest.mark.parametrize("interpret", ["1", "true", "Yes", "on", "y"])
def test_interpreter_flag_read_as_triton_reads_it(backend, interpret: str) -> None:
    backend("auto", interpret)
    assert _dispatch.interpreting()
    assert op.explain(torch.randn(2, 16, device="cpu"), (16,)).path == "triton"


def test_triton_on_cpu_without_interpreter_raises(backend) -> None:
    backend("triton", None)
    with pytest.raises(
        BackendError,
        match=r"layer_norm: FBDL_FAST_BACKEND=triton but the Triton "
        r"kernel cannot run: inputs are on cpu.*TRITON_INTERPRET=1.*auto",
    ):
        layer_norm(torch.randn(2, 16, device="cpu"), (16,))
    with pytest.raises(BackendError):
        op.explain(torch.randn(2, 16, device="cpu"), (16,))


@pytest.mark.parametrize("value", ["auto", "triton"])
def test_unsupported_dtype(backend, on_kernel_device: str, value: str) -> None:
    backend(value)
    x = torch.randn(2, 16, dtype=torch.float64)
    if value == "auto":
        decision = op.explain(x, (16,))
        assert decision.path == "torch"
        assert "input dtype torch.float64 is not supported" in decision.reason
        assert _ran(x, (16,)) == "torch"
    else:
        with pytest.raises(
            BackendError,
            match=r"input dtype torch\.float64 is not supported "
            r"\(float32, float16, bfloat16 are\)",
        ):
            layer_norm(x, (16,))


def test_mismatched_parameter_dtype(backend, on_kernel_device: str) -> None:
    """fp32 parameters with a half input run fused; half parameters with an fp32 input do not
    (torch itself rejects them)."""
    backend("auto")
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    assert op.explain(x, (16,), torch.ones(16), torch.zeros(16)).path == "triton"
    decision = op.explain(x.float(), (16,), torch.ones(16, dtype=torch.float16))
    assert decision.path == "torch" and "weight dtype torch.float16 differs" in decision.reason


def test_triton_not_importable(
    backend, monkeypatch: pytest.MonkeyPatch, on_kernel_device: str
) -> None:
    monkeypatch.setattr(_dispatch, "triton_import_error", lambda: "ImportError: no triton")
    backend("auto")
    decision = op.explain(torch.randn(2, 16), (16,))
    assert decision.path == "torch" and "triton is not importable (ImportError" in decision.reason
    backend("triton")
    with pytest.raises(BackendError, match="triton is not importable"):
        layer_norm(torch.randn(2, 16), (16,))


def test_meta_tensors_never_reach_triton(backend) -> None:
    backend("auto")
    x = torch.empty(2, 16, device="meta")
    decision = op.explain(x, (16,))
    assert decision.path == "torch" and "inputs are on meta" in decision.reason
    assert layer_norm(x, (16,)).shape == (2, 16)
    backend("triton")
    with pytest.raises(BackendError, match="inputs are on meta"):
        layer_norm(x, (16,))


@pytest.mark.parametrize("value", ["cuda", "fast", "1"])
def test_invalid_backend_value(backend, value: str) -> None:
    backend(value)
    with pytest.raises(
        ValueError,
        match=rf"FBDL_FAST_BACKEND='{value}' is not a backend; "
        r"accepted: auto, triton, torch",
    ):
        layer_norm(torch.randn(2, 16), (16,))


def test_backend_value_is_normalised(backend) -> None:
    backend(" Torch ")
    assert fbdl_fast.backend() == "torch"
    backend("")
    assert fbdl_fast.backend() == "auto"


def test_explain_unknown_op() -> None:
    with pytest.raises(ValueError, match=r"unknown op 'rms_norm'; ops are: layer_norm"):
        fbdl_fast.ops.explain("rms_norm", torch.randn(2, 16))


def test_decision_str() -> None:
    assert str(Decision("layer_norm", "torch", "FBDL_FAST_BACKEND=torch")) == (
        "layer_norm: torch (FBDL_FAST_BACKEND=torch)"
    )


def test_module_follows_the_backend(backend, kernel_device: str) -> None:
    ln = LayerNorm(16)
    x = torch.randn(3, 16)
    backend("torch")
    y_torch = ln(x)
    assert type(y_torch.grad_fn).__name__ == TORCH_NODE
    backend("triton")
    y_triton = ln(x)
    assert type(y_triton.grad_fn).__name__ == TRITON_NODE
    torch.testing.assert_close(y_triton, y_torch)


@pytest.mark.parametrize("before", [None, "auto", "triton"])
def test_reference_backend_runs_the_block_on_the_references(
    backend, kernel_device: str, before: str | None
) -> None:
    """Inside `fbdl_fast.ops.reference_backend()` every op takes its PyTorch reference whatever
    FBDL_FAST_BACKEND said; afterwards the variable is as it was (unset stays unset) and dispatch
    follows it again, also when the block raised."""
    backend(before)
    x = torch.randn(2, 16)
    with fbdl_fast.ops.reference_backend():
        assert os.environ["FBDL_FAST_BACKEND"] == "torch" and fbdl_fast.backend() == "torch"
        assert _ran(x, (16,)) == "torch"
    assert os.environ.get("FBDL_FAST_BACKEND") == before
    assert _ran(x, (16,)) == "triton"
    with pytest.raises(KeyError), fbdl_fast.ops.reference_backend():
        raise KeyError("inside the block")
    assert os.environ.get("FBDL_FAST_BACKEND") == before
    assert fbdl_fast.ops.settings().backend == (before or "auto")


def test_bad_arguments_fail_alike_on_both_paths(backend) -> None:
    """Argument errors come before the dispatch, so they do not depend on the backend."""
    for value in ("torch", "triton"):
        backend(value)
        with pytest.raises(ValueError, match="does not end with normalized_shape"):
            layer_norm(torch.randn(3, 8), (7,))
