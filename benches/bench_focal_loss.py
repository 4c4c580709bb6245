"""Fused focal loss vs the reference composition (log_softmax, gather, pow), side by side.

One benchmark per problem: N rows x C classes, gamma 2, mean reduction, 1 in 16 targets
ignored, in one precision:
- `fp32`, `bf16`: logits in that dtype, the gradient of the loss itself;
- `fp16-scaled`: fp16 logits and the loss multiplied by 32,768 before the backward, as
  torch.amp.GradScaler does. (Its initial scale is 65,536, which fp16 cannot hold: with a loss
  returned in fp16 its first backward overflows and the scale halves to 32,768.) At C = 50,257
  most probabilities are ~2e-5 and their gradient, divided by N, is far below fp16's smallest
  number: only a backward that applies the scale before it rounds to fp16 keeps them.
  `underflow` counts the gradient entries that are zero where the float64 gradient, scaled, is
  a normal fp16 number.

Before anything is timed, the loss and the gradient are checked against the reference in
float64 (unscaled): our error must be at most twice the reference composition's own error in the
same precision, or a few ulps where that is ~0. Then forward (under no_grad) and
forward+backward are timed in turns against the reference (measure.time_in_turns: CUDA events,
L2 flushed, >= 50 calls on a GPU; host time apart). GB/s count the fewest bytes: the logits read
once forward, once more backward plus the gradient written. Peak memory is the CUDA allocator's.

On CUDA: N = 8,192, C in 5, 1,000, 32,000 and 50,257 (unaligned). On a CPU: the same C with N
shrunk so N * C <= 2**16, fp32 and bf16, for the test command's smoke run.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from fbdl_fast.ops import focal_loss as focal_op
from measure import (
    CUDA,
    max_abs_error,
    peak_mib,
    record,
    saved_mib,
    synchronized,
    time_in_turns,
    within_parity,
)

DEVICE = "cuda" if CUDA else "cpu"
CLASSES = (5, 1000, 32000, 50257)
PRECISIONS = ("fp32", "bf16", "fp16-scaled") if CUDA else ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16-scaled": torch.float16}
GRAD_SCALE = 32768.0  # GradScaler's scale once a loss returned in fp16 has overflowed 65,536
GAMMA = 2.0
VARIANTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ours": lambda x, y: focal_op.dispatch(x, y, GAMMA),
    "reference": lambda x, y: focal_op.reference(x, y, GAMMA),
}


def _rows(n_classes: int) -> int:
    return 8192 if CUDA else max(16, min(8192, 2**16 // n_classes))


def _inputs(n_classes: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(DEVICE).manual_seed(0)
    n = _rows(n_classes)
    logits = 3 * torch.randn(n, n_classes, device=DEVICE, generator=generator)
    target = torch.randint(0, n_classes, (n,), device=DEVICE, generator=generator)
    target[::16] = -100
    return logits.to(dtype).requires_grad_(), target


def _scale(precision: str) -> float:
    return GRAD_SCALE if precision == "fp16-scaled" else 1.0


def _forward(fn, logits, target) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad():
            return fn(logits, target)

    return step


def _forward_backward(fn, logits, target, scale: float) -> Callable[[], object]:
    def step() -> object:
        return torch.autograd.grad(fn(logits, target).float() * scale, logits)

    return step


def _loss_and_grad(fn, logits, target, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.detach().requires_grad_()
    loss = fn(x, target)
    (grad,) = torch.autograd.grad(loss.float() * scale, x)  # scaled in fp32, as GradScaler does
    return loss, grad


def _check_parity(logits, target, precision: str) -> dict[str, float]:
    scale = _scale(precision)
    loss64, grad64 = _loss_and_grad(VARIANTS["reference"], logits.double(), target, 1.0)
    errors = {}
    for name, fn in VARIANTS.items():
        loss, grad = _loss_and_grad(fn, logits, target, scale)
        errors[name] = {
            "loss": max_abs_error(loss, loss64) / max(1.0, abs(loss64.item())),
            "grad": max_abs_error(grad.double() / scale, grad64),
        }
        if name == "ours":
            representable = (grad64 * scale).abs() >= torch.finfo(logits.dtype).smallest_normal
            errors[name]["underflow"] = ((grad == 0) & representable).sum().item()
    ours, reference = errors["ours"], errors["reference"]
    eps = torch.finfo(logits.dtype).eps
    failed = {
        key: (ours[key], reference[key])
        for key in ("loss", "grad")
        if not within_parity(ours[key], reference[key], 8 * eps)
    }
    assert not failed, f"fused focal loss off the float64 reference (ours, composition's): {failed}"
    return {**ours, "reference_loss": reference["loss"], "reference_grad": reference["grad"]}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("n_classes", CLASSES)
def bench_focal_loss(benchmark, n_classes: int, precision: str) -> None:
    logits, target = _inputs(n_classes, DTYPES[precision])
    errors = _check_parity(logits, target, precision)
    problem = {"rows": logits.shape[0], "classes": n_classes, "precision": precision}
    path = focal_op.explain(logits, target, GAMMA).path
    benchmark.group = f"focal_loss N={logits.shape[0]} C={n_classes} {precision}"
    benchmark.extra_info.update(
        **problem, device=DEVICE, role="candidate", variant="fbdl_fast", path=path, errors=errors
    )

    measured = not benchmark.disabled or CUDA
    logit_bytes = logits.numel() * logits.element_size()
    for mode in ("forward", "forward+backward"):
        backward = mode == "forward+backward"
        steps = {
            name: _forward_backward(fn, logits, target, _scale(precision))
            if backward
            else _forward(fn, logits, target)
            for name, fn in VARIANTS.items()
        }
        timings = time_in_turns(steps, repeats=10 if measured else 1, warmup=3 if measured else 0)
        moved = logit_bytes * (3 if backward else 1) + target.numel() * target.element_size()
        ours_peak, reference_peak = peak_mib(steps["ours"]), peak_mib(steps["reference"])
        row = {
            **problem,
            "device": DEVICE,
            "mode": mode,
            "path": path,
            **timings["ours"].summary("ours"),
            **timings["reference"].summary("reference"),
            "speedup": timings["reference"].median_s / timings["ours"].median_s,
            "bytes": moved,
            "ours_gbps": moved / timings["ours"].median_s / 1e9,
            "ours_peak_mib": ours_peak,
            "reference_peak_mib": reference_peak,
            "memory_ratio": ours_peak / reference_peak if ours_peak and reference_peak else None,
            "ours_saved_mib": saved_mib(lambda: VARIANTS["ours"](logits, target), exclude=[logits]),
            "reference_saved_mib": saved_mib(
                lambda: VARIANTS["reference"](logits, target), exclude=[logits]
            ),
            "loss_dtype": str(VARIANTS["ours"](logits, target).dtype).removeprefix("torch."),
            "errors": errors,
        }
        record("focal_loss", row)
        benchmark.extra_info[mode] = row
    benchmark.extra_info["speedup"] = benchmark.extra_info["forward+backward"]["speedup"]

    step = synchronized(_forward_backward(VARIANTS["ours"], logits, target, _scale(precision)))
    benchmark.pedantic(step, rounds=1 if benchmark.disabled else 20, warmup_rounds=0)
