"""Fused focal loss vs the reference composition (log_softmax, gather, pow).

Each group is one problem (classes C, dtype, forward or forward+backward) with two variants:
`fused` (fbdl_fast.ops.focal_loss.dispatch: the Triton kernel on CUDA, whatever dispatch picks
elsewhere — the reference on a plain CPU run) and `reference` (ops.focal_loss.reference, the
group's reference). The fused benchmark also times the reference in the same run and records
speedup_vs_reference, the peak memory of both and memory_ratio_vs_reference in extra_info, plus
the bytes each variant keeps for backward (saved_mib; measured on any device).

Problem: gamma = 2, mean reduction, 1 in 16 targets ignored. On CUDA: N = 8192 rows, C in 5,
1000, 32000, fp32 and bf16. On a CPU: the same C with N shrunk so N * C <= 2**18, fp32, so the
smoke run (--benchmark-disable, each benchmark once) is quick.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from fbdl_fast.ops import focal_loss as focal_op
from fbdl_fast.speed import interleaved_medians
from measure import peak_mib, saved_mib

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
CLASSES = (5, 1000, 32000)
DTYPES = (torch.float32, torch.bfloat16) if CUDA else (torch.float32,)
VARIANTS = ("fused", "reference")
GAMMA = 2.0


def _rows(n_classes: int) -> int:
    return 8192 if CUDA else max(16, min(8192, 2**18 // n_classes))


def _inputs(n_classes: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    n = _rows(n_classes)
    logits = 3 * torch.randn(n, n_classes, generator=generator)
    target = torch.randint(0, n_classes, (n,), generator=generator)
    target[::16] = -100
    return logits.to(DEVICE, dtype).requires_grad_(), target.to(DEVICE)


def _variant(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "fused":
        return lambda x, y: focal_op.dispatch(x, y, GAMMA)
    return lambda x, y: focal_op.reference(x, y, GAMMA)


def _step(
    fn: Callable[..., torch.Tensor], logits: torch.Tensor, target: torch.Tensor, backward: bool
) -> Callable[[], None]:
    def step() -> None:
        if backward:
            torch.autograd.grad(fn(logits, target), logits)
        else:
            with torch.no_grad():
                fn(logits, target)
        if CUDA:
            torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("n_classes", CLASSES)
def bench_focal_loss(
    benchmark, n_classes: int, dtype: torch.dtype, mode: str, variant: str
) -> None:
    backward = mode == "forward+backward"
    logits, target = _inputs(n_classes, dtype)
    fn = _variant(variant)
    step = _step(fn, logits, target, backward)
    dtype_name = str(dtype).removeprefix("torch.")

    benchmark.group = f"focal_loss {mode} C={n_classes} {dtype_name}"
    benchmark.extra_info.update(
        variant=variant,
        role="reference" if variant == "reference" else "candidate",
        shape=list(logits.shape),
        device=DEVICE,
        path=focal_op.explain(logits, target, GAMMA).path if variant == "fused" else "torch",
        peak_memory_mib=peak_mib(step),
        saved_mib=round(saved_mib(lambda: fn(logits, target), exclude=[logits]), 3),
    )
    if variant == "fused" and not benchmark.disabled:
        # Ratios measured here, in the same run, so they survive without the report.
        reference_step = _step(_variant("reference"), logits, target, backward)
        seconds = interleaved_medians({"fused": step, "reference": reference_step}, repeats=10)
        ratio = seconds["reference"] / seconds["fused"]
        benchmark.extra_info["speedup"] = ratio  # timed in turns: the figure the report shows
        benchmark.extra_info["speedup_vs_reference"] = round(ratio, 3)
        reference_peak = peak_mib(reference_step)
        benchmark.extra_info["peak_memory_mib_reference"] = reference_peak
        fused_peak = benchmark.extra_info["peak_memory_mib"]
        if reference_peak and fused_peak is not None:
            benchmark.extra_info["memory_ratio_vs_reference"] = round(
                fused_peak / reference_peak, 3
            )

    rounds = 1 if benchmark.disabled else 20
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=0 if benchmark.disabled else 2)

    # A wrong kernel must not look fast: loss and gradient agree with the reference.
    x = logits.detach().requires_grad_()
    out = fn(x, target)
    (grad,) = torch.autograd.grad(out, x)
    x_ref = logits.detach().double().requires_grad_()
    ref = focal_op.reference(x_ref, target, GAMMA)
    (grad_ref,) = torch.autograd.grad(ref, x_ref)
    loss_diff = abs(out.item() - ref.item()) / max(1.0, abs(ref.item()))
    grad_diff = (grad.double() - grad_ref).abs().max().item()
    benchmark.extra_info["loss_rel_diff_vs_reference"] = loss_diff
    benchmark.extra_info["grad_max_abs_diff_vs_reference"] = grad_diff
    limit = 1e-4 if dtype == torch.float32 else 2e-2
    assert loss_diff < limit and grad_diff < limit, (loss_diff, grad_diff)
