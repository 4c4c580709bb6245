"""Focal loss: the fused kernel against the reference composition, the reference against
F.cross_entropy and hand-computed values, gradcheck, argument errors.

Tests of the kernel make their tensors on the kernel device: CUDA where there is one, else the
CPU, where the kernel runs under TRITON_INTERPRET=1. They skip, saying why, where it cannot run
(the `triton`, `kernel_device` and `set_backend` fixtures in conftest.py). The others stay on the
CPU, where the targets' range is checked before the kernel runs."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compile_check import run_compile_script
from fbdl_fast.config import ModelConfig
from fbdl_fast.kernels.focal_loss import MAX_BLOCK_C, focal_loss_backward, focal_loss_forward
from fbdl_fast.nn import FocalLoss
from fbdl_fast.nn.functional import focal_loss
from fbdl_fast.ops import BackendError, explain
from fbdl_fast.ops import focal_loss as op
from tolerances import assert_close

IGNORE = -100


def _problem(
    n: int, c: int, dtype: torch.dtype = torch.float32, ignored: int = 1, scale: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, c) wide enough for confident and unsure rows; the first `ignored` targets
    are ignore_index."""
    logits = (scale * torch.randn(n, c)).to(dtype)
    target = torch.randint(0, c, (n,))
    target[:ignored] = IGNORE
    return logits, target


def _upstream(out: torch.Tensor) -> torch.Tensor:
    """A non-trivial incoming gradient: per-row for reduction='none', 0.7 for a scalar loss."""
    if out.dim() == 0:
        return torch.tensor(0.7, dtype=out.dtype)
    return torch.rand(out.shape).to(out.dtype) + 0.5


def _value_and_grad(
    fn: Any,
    logits: torch.Tensor,
    target: torch.Tensor,
    upstream: Optional[torch.Tensor] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = logits.detach().clone().requires_grad_()
    out = fn(x, target, **kwargs)
    if upstream is None:
        upstream = _upstream(out)
    (grad,) = torch.autograd.grad(out, x, upstream.to(out.dtype))
    return out.detach(), grad, upstream


def _as64(value: Any) -> Any:
    return value.double() if isinstance(value, torch.Tensor) else value


def _check_against_reference(logits: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> None:
    """Kernel (nn.functional under FBDL_FAST_BACKEND=triton) vs the float64 reference, value and
    gradient, with the logits' dtype tolerance."""
    out, grad, upstream = _value_and_grad(focal_loss, logits, target, **kwargs)
    ref_kwargs = {k: _as64(v) for k, v in kwargs.items()}
    expected, expected_grad, _ = _value_and_grad(
        op.reference, logits.double(), target, upstream.double(), **ref_kwargs
    )
    assert out.dtype == logits.dtype and grad.dtype == logits.dtype
    assert_close(out, expected)
    assert_close(grad, expected_grad)


# --------------------------------------------------------------------------- kernel vs reference


@pytest.mark.parametrize(("n", "c"), [(16, 2), (16, 5), (16, 17), (6, 1000), (3, 50257)])
def test_kernel_matches_reference_over_class_counts(triton: None, n: int, c: int) -> None:
    logits, target = _problem(n, c)
    weight, alpha = torch.rand(c) + 0.1, torch.rand(c)
    _check_against_reference(
        logits,
        target,
        gamma=2.0,
        alpha=alpha,
        weight=weight,
        ignore_index=IGNORE,
        label_smoothing=0.1,
    )
    _check_against_reference(logits, target, gamma=1.5, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("c", "offset", "stride"), [(1000, 3, 1003), (1000, 0, 1001), (3001, 5, 3009)]
)
def test_kernel_rows_off_16_byte_boundaries(
    triton: None, dtype: torch.dtype, c: int, offset: int, stride: int
) -> None:
    """Each row is read as the classes before its first 16-byte boundary, an aligned body and
    the classes after it; rows here start at every offset from a boundary (views into a wider
    tensor, stride not a multiple of 16 bytes), including rows whose first class is aligned."""
    base = (3.0 * torch.randn(5, stride)).to(dtype)
    logits = base[:, offset : offset + c]
    target = torch.randint(0, c, (5,))
    target[0], target[1], target[4] = IGNORE, c - 1, 0
    _check_against_reference(
        logits, target, gamma=2.0, weight=torch.rand(c) + 0.1, label_smoothing=0.1
    )
    _check_against_reference(logits, target, gamma=1.5, reduction="none")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_lane_sums_across_chunks(triton: None, dtype: torch.dtype) -> None:
    """The forward keeps its sums per lane over chunks of MAX_BLOCK_C classes and rescales them
    when a later chunk raises the row maximum: rows whose maximum is in the last chunk (rising),
    in the first (falling), far above the rest (one class dominates), with the target in another
    chunk than the maximum, and every chunk's lanes reduced at the end (smoothing, weight)."""
    c = 40_000  # five chunks of 8,192, the last one partial
    assert c > 4 * MAX_BLOCK_C
    ramp = torch.linspace(-6.0, 6.0, c)
    spike = torch.randn(c)
    spike[35_000] = 40.0
    logits = torch.stack([ramp, ramp.flip(0), spike, torch.randn(c)]).to(dtype)
    target = torch.tensor([3, 39_999, 20_000, IGNORE])
    _check_against_reference(
        logits, target, gamma=2.0, weight=torch.rand(c) + 0.1, label_smoothing=0.1
    )
    _check_against_reference(logits, target, gamma=0.5, reduction="none")


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha", [None, 0.25, "tensor", "0-dim"])
@pytest.mark.parametrize(("weighted", "smoothing"), [(False, 0.0), (True, 0.0), (True, 0.2)])
def test_kernel_matches_reference_over_options(
    triton: None, reduction: str, alpha: Any, weighted: bool, smoothing: float
) -> None:
    c = 5
    logits, target = _problem(12, c, ignored=2)
    if alpha == "tensor":
        alpha = torch.rand(c)
    elif alpha == "0-dim":
        alpha = torch.tensor(0.4)
    weight = torch.rand(c) + 0.1 if weighted else None
    _check_against_reference(
        logits,
        target,
        gamma=2.0,
        alpha=alpha,
        weight=weight,
        reduction=reduction,
        label_smoothing=smoothing,
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("n", "c"), [(16, 5), (4, 1000), (2, 50257)])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_kernel_half_precision(
    triton: None, dtype: torch.dtype, n: int, c: int, reduction: str
) -> None:
    logits, target = _problem(n, c, dtype)
    _check_against_reference(
        logits,
        target,
        gamma=2.0,
        alpha=torch.rand(c),
        weight=torch.rand(c) + 0.1,
        reduction=reduction,
        label_smoothing=0.1,
    )


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 3.0])
def test_kernel_gamma_values(triton: None, gamma: float) -> None:
    logits, target = _problem(10, 7)
    _check_against_reference(logits, target, gamma=gamma, label_smoothing=0.1)


def test_kernel_leading_dims_and_strided_logits(triton: None) -> None:
    logits = torch.randn(7, 2, 3).permute(1, 2, 0)  # (2, 3, 7), classes not contiguous
    target = torch.randint(0, 7, (2, 3))
    target[0, 1] = IGNORE
    out, grad, _ = _value_and_grad(focal_loss, logits, target, reduction="none")
    assert out.shape == (2, 3) and grad.shape == (2, 3, 7)
    _check_against_reference(logits, target, reduction="none", alpha=0.5)
    _check_against_reference(logits, target, reduction="mean", weight=torch.rand(7))


def test_kernel_confident_rows_stay_finite(triton: None) -> None:
    # p_y rounds to 1 in fp32 (1 - p_y underflows to 0): gamma < 1 must not give inf or NaN.
    logits = torch.tensor([[200.0, 0.0, -5.0], [0.0, 150.0, 1.0], [1.0, 2.0, 3.0]])
    target = torch.tensor([0, 1, 2])
    for gamma in (0.5, 2.0):
        out, grad, _ = _value_and_grad(focal_loss, logits, target, gamma=gamma, label_smoothing=0.1)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all()
        _check_against_reference(logits, target, gamma=gamma, label_smoothing=0.1)


def test_kernel_large_logits_half(triton: None) -> None:
    # fp16 logits near its range: the kernel's fp32 softmax must not overflow.
    logits, target = _problem(8, 33, torch.float16, scale=2000.0)
    _check_against_reference(logits, target, gamma=2.0)


# ------------------------------------------------------------- cross-entropy, hand values


@pytest.mark.parametrize("path", ["reference", "kernel"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gamma_zero_is_cross_entropy(
    set_backend: Callable[[str], None], path: str, reduction: str
) -> None:
    set_backend("triton" if path == "kernel" else "torch")
    logits, target = _problem(11, 6, ignored=3)
    weight = torch.rand(6) + 0.1
    for kwargs in (
        {},
        {"weight": weight},
        {"weight": weight, "label_smoothing": 0.25},
        {"label_smoothing": 0.1},
    ):
        kw: dict[str, Any] = {"ignore_index": IGNORE, "reduction": reduction, **kwargs}
        out, grad, upstream = _value_and_grad(focal_loss, logits, target, gamma=0.0, **kw)
        expected, expected_grad, _ = _value_and_grad(
            F.cross_entropy, logits, target, upstream, **kw
        )
        assert_close(out, expected)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hand_computed_value(set_backend: Callable[[str], None], backend: str) -> None:
    # Logits (0, ln 3): p = (1/4, 3/4). Target 1: (1 - 3/4)^2 * -ln(3/4) = ln(4/3) / 16.
    set_backend(backend)
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    target = torch.tensor([1, 0])
    out = focal_loss(logits, target, gamma=2.0, reduction="none")
    # Target 0: p = 1/4, (3/4)^2 * ln 4.
    expected = torch.tensor([math.log(4 / 3) / 16, 9 / 16 * math.log(4.0)])
    assert_close(out, expected)
    # alpha per class (0.5, 2), weights (1, 3): mean = sum(a w l) / sum(w_y) = (6 l0 + 0.5 l1) / 4
    out = focal_loss(logits, target, gamma=2.0, alpha=[0.5, 2.0], weight=torch.tensor([1.0, 3.0]))
    assert_close(out, (3 * 2.0 * expected[0] + 0.5 * expected[1]) / 4)


def test_hand_computed_gradient(triton: None) -> None:
    # gamma = 1, logits (0, ln 3), target 1: p = 3/4, q = 1/4, L = -q ln p.
    # dL/dz_1 = dL/dp * dp/dz_1 = (ln p - q / p) * p q = (ln(3/4) - 1/3) * 3/16
    # dL/dz_0 = -dL/dz_1 (the gradient of a softmax loss sums to zero).
    logits = torch.tensor([[0.0, math.log(3.0)]])
    _, grad, _ = _value_and_grad(
        focal_loss, logits, torch.tensor([1]), torch.tensor(1.0), gamma=1.0
    )
    g1 = (math.log(0.75) - 1 / 3) * 3 / 16
    assert_close(grad, torch.tensor([[-g1, g1]]))


# --------------------------------------------------------------------------- ignored rows


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_all_rows_ignored_is_zero_without_nan(
    set_backend: Callable[[str], None], backend: str, reduction: str
) -> None:
    # Documented choice: F.cross_entropy returns NaN for a mean over nothing; we return 0.
    set_backend(backend)
    logits, target = _problem(4, 5, ignored=4)
    out, grad, _ = _value_and_grad(
        focal_loss, logits, target, weight=torch.rand(5), label_smoothing=0.2, reduction=reduction
    )
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_ignored_rows_count_for_nothing(set_backend: Callable[[str], None], backend: str) -> None:
    set_backend(backend)
    logits, target = _problem(9, 4, ignored=3)
    weight = torch.rand(4) + 0.5
    kept = focal_loss(logits[3:], target[3:], weight=weight, label_smoothing=0.1)
    logits_changed = logits.clone()
    logits_changed[:2] = 100 * torch.randn(2, 4)  # whatever ignored rows hold,
    logits_changed[2] = float("nan")  # even NaN, as in F.cross_entropy
    both = focal_loss(logits_changed, target, weight=weight, label_smoothing=0.1)
    assert_close(both, kept)
    _, grad, _ = _value_and_grad(focal_loss, logits, target)
    assert torch.equal(grad[:3], torch.zeros(3, 4))


# --------------------------------------------------------------------------- reference path


def test_reference_gradcheck_float64() -> None:
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 4, IGNORE, 2, 2, 1])
    weight = torch.rand(5, dtype=torch.float64) + 0.1
    alpha = torch.rand(5, dtype=torch.float64) + 0.1
    for gamma, smoothing, reduction in ((2.0, 0.0, "mean"), (0.5, 0.2, "none"), (1.5, 0.1, "sum")):
        assert torch.autograd.gradcheck(
            lambda x, g=gamma, s=smoothing, r=reduction: op.reference(
                x, target, g, alpha, weight, IGNORE, r, s
            ),
            (logits,),
        )


def test_kernel_forward_marks_out_of_range_targets_nan(kernel_device: str) -> None:
    # On a GPU the range check would cost a sync, so the kernel poisons such rows instead.
    logits, target = torch.randn(3, 4), torch.tensor([1, 7, -100])
    loss, row_weight, stats = focal_loss_forward(
        logits,
        target,
        gamma=2.0,
        alpha=None,
        alpha_scale=1.0,
        weight=None,
        ignore_index=-100,
        label_smoothing=0.0,
        save_stats=True,
    )
    assert stats is not None
    grad = focal_loss_backward(
        logits, target, stats, torch.ones(3), weight=None, ignore_index=-100, label_smoothing=0.0
    )
    assert torch.isnan(loss[1]) and torch.isnan(grad[1]).all()
    assert torch.isfinite(loss[[0, 2]]).all() and torch.equal(grad[2], torch.zeros(4))
    assert torch.equal(row_weight, torch.tensor([1.0, 0.0, 0.0]))


def test_no_grad_inputs_give_the_same_loss(triton: None) -> None:
    logits, target = _problem(8, 6)
    with torch.no_grad():
        out = focal_loss(logits, target, label_smoothing=0.1)
    assert_close(out, op.reference(logits.double(), target, label_smoothing=0.1))


# --------------------------------------------------------------------------- dispatch


def test_dispatch_decisions(monkeypatch: pytest.MonkeyPatch, on_kernel_device: str) -> None:
    logits, target = _problem(4, 3)
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    assert explain("focal_loss", logits, target).path == "triton"  # CUDA, or the interpreter
    decision = explain("focal_loss", logits.double(), target)
    assert decision.path == "torch" and "float64" in decision.reason
    monkeypatch.setenv("FBDL_FAST_BACKEND", "triton")
    with pytest.raises(BackendError, match="float64"):
        focal_loss(logits.double(), target)
    monkeypatch.setenv("FBDL_FAST_BACKEND", "torch")
    assert explain("focal_loss", logits, target).path == "torch"


def test_trainable_alpha_falls_back_and_gets_gradient(
    monkeypatch: pytest.MonkeyPatch, on_kernel_device: str
) -> None:
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    logits, target = _problem(6, 3)
    alpha = torch.rand(3, requires_grad=True)
    decision = explain("focal_loss", logits, target, alpha=alpha)
    assert decision.path == "torch" and "alpha requires grad" in decision.reason
    focal_loss(logits, target, alpha=alpha).backward()
    assert alpha.grad is not None
    expected = op.reference(logits, target, 2.0, alpha.detach(), None, IGNORE, "mean", 0.0)
    # The loss is linear in alpha: d(mean)/d(alpha_k) times alpha_k, summed, is the loss.
    assert_close((alpha.grad * alpha.detach()).sum(), expected)


# --------------------------------------------------------------------------- module and errors


def test_module_matches_functional_and_moves_buffers(triton: None) -> None:
    weight, alpha = torch.rand(5) + 0.1, [0.1, 0.2, 0.3, 0.4, 0.5]
    module = FocalLoss(gamma=1.0, alpha=alpha, weight=weight, reduction="sum", label_smoothing=0.05)
    assert set(module.state_dict()) == {"weight", "alpha"}
    logits, target = _problem(7, 5)
    expected = focal_loss(logits, target, 1.0, torch.tensor(alpha), weight, IGNORE, "sum", 0.05)
    assert_close(module(logits, target), expected)
    module64 = module.to(torch.float64)  # buffers follow .to(), like nn.CrossEntropyLoss's weight
    assert module64.weight.dtype == torch.float64 and module64.alpha.dtype == torch.float64
    scalar = FocalLoss(alpha=0.25)
    assert scalar.alpha == 0.25 and set(scalar.state_dict()) == set()
    assert_close(scalar(logits, target), 0.25 * focal_loss(logits, target))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduction": "avg"}, "reduction='avg'"),
        ({"gamma": -1.0}, "gamma=-1.0"),
        ({"alpha": [0.5, 0.5]}, r"alpha must be a 1-D tensor with one value per class \(3\)"),
        ({"alpha": -0.25}, "alpha=-0.25"),
        ({"weight": torch.ones(4)}, r"weight must be .* per class \(3\)"),
        ({"label_smoothing": 1.5}, "label_smoothing=1.5"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    logits, target = _problem(4, 3, ignored=0)
    with pytest.raises(ValueError, match=message):
        focal_loss(logits, target, **kwargs)


def test_bad_targets_are_named() -> None:
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"target 3 is out of range.*\[0, 3\)"):
        focal_loss(logits, torch.tensor([0, 1, 3, IGNORE]))
    with pytest.raises(ValueError, match=r"target -2 is out of range"):
        focal_loss(logits, torch.tensor([0, -2, 1, 1]))
    with pytest.raises(ValueError, match="class-probability targets are not supported"):
        focal_loss(logits, torch.rand(4))
    with pytest.raises(ValueError, match=r"target shape \(3,\) must equal .* \(4,\)"):
        focal_loss(logits, torch.tensor([0, 1, 2]))


def _messages(fn: Callable[[], Any]) -> str:
    with pytest.raises(ValueError) as error:
        fn()
    return str(error.value)


BAD_TARGETS = [
    (torch.tensor([0, 1, 3, IGNORE]), {}, r"target 3 is out of range.*\[0, 3\)"),
    (torch.tensor([0, -2, 1, 1]), {}, "target -2 is out of range"),
    (torch.tensor([0, 1, 7, 3], dtype=torch.int32), {"ignore_index": 7}, "target 3 is out"),
    (torch.tensor([[0, 5], [-1, 1]]), {"ignore_index": 5}, "target -1 is out of range"),
    (torch.tensor([[0, 1], [9, 9]]), {"reduction": "none", "gamma": 0}, "target 9 is out"),
]


@pytest.mark.parametrize(("target", "kwargs", "message"), BAD_TARGETS)
def test_cpu_early_exit_names_bad_targets_as_the_full_check_does(
    monkeypatch: pytest.MonkeyPatch, target: torch.Tensor, kwargs: dict[str, Any], message: str
) -> None:
    """Outside the interpreter, CPU calls leave the range check to the reference's gather (free
    for valid targets); the message must be the full check's, word for word, and the early exit
    must really be the path taken (check_focal_loss_args' own range check is made to fail
    there)."""
    logits = torch.randn(*target.shape, 3)
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    full = _messages(lambda: focal_loss(logits, target, **kwargs))
    assert full == _messages(lambda: op.explain(logits, target, **kwargs))
    monkeypatch.delenv("TRITON_INTERPRET")
    real = op._check_target_range
    calls: list[str] = []

    def counted(*args: Any) -> None:
        calls.append(sys._getframe(1).f_code.co_name)  # who asked: the check or reference
        real(*args)

    monkeypatch.setattr(op, "_check_target_range", counted)
    for run in (
        lambda: focal_loss(logits, target, **kwargs),
        lambda: FocalLoss(**kwargs)(logits.clone().requires_grad_(), target),
    ):
        calls.clear()
        assert _messages(run) == full
        assert calls == ["reference"]  # once, after gather refused the index, not before
    assert re.search(message, full)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"reduction": "none", "gamma": 0.5, "label_smoothing": 0.2},
        {"reduction": "sum", "alpha": torch.tensor([0.2, 0.3, 0.5, 1.0]), "weight": torch.rand(4)},
        {"ignore_index": 4, "alpha": 0.25, "weight": torch.rand(4), "label_smoothing": 0.1},
    ],
)
def test_cpu_early_exit_equals_the_reference_exactly(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]
) -> None:
    """check_targets=True drops the reference's range masks; with valid targets (and
    ignore_index rows, also one past C) value and gradient are bit for bit the reference's."""
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    logits, target = _problem(6, 4, ignored=2)
    target[:2] = kwargs.get("ignore_index", IGNORE)
    out, grad, upstream = _value_and_grad(focal_loss, logits, target, **kwargs)
    ref, ref_grad, _ = _value_and_grad(op.reference, logits, target, upstream, **kwargs)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    assert grad[:2].abs().max() == 0 and out.isfinite().all()


def test_module_rejects_bad_config_at_construction() -> None:
    with pytest.raises(ValueError, match="reduction='batchmean'"):
        FocalLoss(reduction="batchmean")
    with pytest.raises(ValueError, match=r"gamma=-0\.5"):
        FocalLoss(gamma=-0.5)


@pytest.mark.parametrize("gamma", [-0.5, math.inf, math.nan, True, "2", None], ids=repr)
def test_a_bad_gamma_is_refused_alike_by_config_module_and_function(gamma: Any) -> None:
    """gamma is checked in one place: ModelConfig, nn.FocalLoss and the functional op refuse the
    same values (negative, infinite, NaN, a bool, not a number) in the same words, each naming
    gamma as its user knows it."""
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    refusals = {
        "ModelConfig.focal_gamma": lambda: ModelConfig(focal_gamma=gamma),
        "FocalLoss.gamma": lambda: FocalLoss(gamma=gamma),
        "focal_loss: gamma": lambda: focal_loss(logits, target, gamma=gamma),
    }
    for name, refuse in refusals.items():
        with pytest.raises(ValueError) as error:
            refuse()
        assert str(error.value) == f"{name}={gamma!r} is invalid; expected a number >= 0 (finite)"


@pytest.mark.parametrize("gamma", [0, 2, 0.5, np.float32(1.5)], ids=repr)
def test_a_good_gamma_is_taken_alike_by_config_module_and_function(gamma: Any) -> None:
    """Integers and numpy scalars are gammas too, for the config, the module (which keeps a
    float) and the function, which gives the module's loss."""
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert ModelConfig(focal_gamma=gamma).focal_gamma == gamma
    module = FocalLoss(gamma=gamma)
    assert type(module.gamma) is float and module.gamma == float(gamma)
    torch.testing.assert_close(module(logits, target), focal_loss(logits, target, gamma=gamma))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_keeps_one_logit_sized_tensor_for_backward(triton: None, dtype: torch.dtype) -> None:
    # The design's memory rule: between forward and backward only the logits themselves are
    # kept; no probabilities, no gradient. The reference keeps its log-probabilities.
    logits, target = _problem(8, 300, dtype)
    x = logits.clone().requires_grad_()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        loss = focal_loss(x, target, weight=torch.rand(300), label_smoothing=0.1)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert [(tuple(t.shape), t.dtype) for t in big] == [((8, 300), dtype)]
    assert big[0].data_ptr() == x.data_ptr()  # the logits, not a copy
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.dtype == dtype and grad.data_ptr() != x.data_ptr()  # written fresh, not in place


def test_kernel_backward_twice_gives_the_gradient_twice(triton: None) -> None:
    # The backward computes the gradient from the saved logits each time (nothing is scaled in
    # place), so a second backward through the same graph accumulates the same gradient again.
    logits, target = _problem(6, 4)
    x = logits.clone().requires_grad_()
    loss = focal_loss(x, target)
    loss.backward(retain_graph=True)
    _, expected_grad, _ = _value_and_grad(
        op.reference, logits.double(), target, torch.tensor(1.0, dtype=torch.float64)
    )
    assert_close(x.grad, expected_grad)
    loss.backward()
    assert_close(x.grad, 2 * expected_grad)


# Compiles the kernel as a GPU launch would, for sm_90, with tests/compile_check.py.
_COMPILE_FOR_H100 = """
from compile_check import compile_for_gpu
from fbdl_fast.kernels import focal_loss as K

ok = 0
for dtype, block_r, block_c in (("bf16", 1, 4096),):
    types = dict(z_ptr=f"*{dtype}", y_ptr="*i64", w_ptr="*fp32", a_ptr="*fp32",
                 loss_ptr="*fp32", row_weight_ptr="*fp32", stats_ptr="*fp32", z_stride="i64",
                 gamma="fp32", alpha_scale="fp32", smoothing="fp32")
    constants = dict(HAS_WEIGHT=True, HAS_ALPHA=True, HAS_SMOOTHING=True, SAVE_STATS=True,
                     BLOCK_R=block_r, BLOCK_C=block_c)
    compiled = compile_for_gpu(K._focal_loss_forward_kernel, types, constants, default="i32",
                               num_warps=8, enable_fp_fusion=K.FP_FUSION)
    ok += ".entry _focal_loss_forward_kernel" in compiled.asm["ptx"] and "cubin" in compiled.asm
    types = dict(z_ptr=f"*{dtype}", grad_ptr=f"*{dtype}", y_ptr="*i64", w_ptr="*fp32",
                 stats_ptr="*fp32", r_ptr="*fp32", z_stride="i64", grad_stride="i64")
    constants = dict(HAS_WEIGHT=True, HAS_SMOOTHING=True, BLOCK_R=block_r, BLOCK_C=block_c)
    compiled = compile_for_gpu(K._focal_loss_backward_kernel, types, constants, default="i32",
                               num_warps=8, enable_fp_fusion=K.FP_FUSION)
    ok += ".entry _focal_loss_backward_kernel" in compiled.asm["ptx"] and "cubin" in compiled.asm
print("compiled", ok)
"""


@pytest.mark.slow
def test_kernel_compiles_for_a_gpu(tmp_path: Path) -> None:
    # The interpreter runs the kernel as Python and misses what only the compiler rejects (e.g.
    # a non-constexpr global). Compile it for an H100 (sm_90) without a GPU.
    stdout = run_compile_script(_COMPILE_FOR_H100, tmp_path, timeout=300)
    assert stdout.split()[-2:] == ["compiled", "2"], stdout
