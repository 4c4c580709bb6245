"""Fused LayerNorm (fbdl_fast.nn.LayerNorm) vs torch.nn.LayerNorm.

Each group is one problem (hidden size, dtype, forward or forward+backward) with two variants:
`fbdl_fast` (the dispatched path: the Triton kernel on CUDA; on a CPU the PyTorch fallback, so
the ratio there measures dispatch overhead) and `torch` (the reference). The fbdl_fast benchmark
also times torch in the same run and records in extra_info: speedup_vs_torch, GB/s of both (bytes
moved / median time: forward reads x and writes y, 2·M·N elements; forward+backward adds reading
dy and x and writing dx, 5·M·N in all; parameters are negligible), peak CUDA memory of both and
memory_ratio_vs_torch, and on every device the MiB autograd keeps for backward (saved_mib).

Problem: M rows of hidden N, eps 1e-5, affine. On CUDA M = 16384 (e.g. 32 posts of 512 tokens),
fp16, bf16 and fp32. On a CPU M shrinks so M·N <= 2**16, keeping the smoke run (--benchmark-disable,
each benchmark once) quick; the interpreter is switched off there (a correctness tool, not
something to time) and torch runs on one thread (steadier on a shared machine; recorded).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

import pytest
import torch

from fbdl_fast.nn import LayerNorm
from fbdl_fast.ops import layer_norm as ln_op
from fbdl_fast.speed import interleaved_medians
from measure import peak_mib, saved_mib

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
HIDDEN = (768, 1024, 4096, 8192)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
VARIANTS = ("fbdl_fast", "torch")


@pytest.fixture(autouse=True)
def _dispatch_as_users_get_it(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FBDL_FAST_BACKEND", "auto")
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        # One thread: on a shared machine a parallel region waits for its slowest thread, and
        # descheduled workers turned medians of 0.1 ms into 60 ms.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)
    else:
        yield


def _rows(hidden: int) -> int:
    return 16384 if CUDA else max(8, 2**16 // hidden)


def _setup(hidden: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(_rows(hidden), hidden, generator=generator).to(DEVICE, dtype)
    dy = torch.randn(x.shape, generator=generator).to(DEVICE, dtype)
    ours = LayerNorm(hidden, device=DEVICE, dtype=dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    theirs = torch.nn.LayerNorm(hidden, device=DEVICE, dtype=dtype)
    theirs.load_state_dict(ours.state_dict())
    return x.requires_grad_(), dy, {"fbdl_fast": ours, "torch": theirs}


def _step(
    module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, backward: bool
) -> Callable[[], None]:
    params = list(module.parameters())

    def step() -> None:
        if backward:
            torch.autograd.grad(module(x), [x, *params], dy)
        else:
            with torch.no_grad():
                module(x)
        if CUDA:
            torch.cuda.synchronize()

    return step


def _max_error(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> float:
    """Largest |error| of the output and the input gradient against torch in float64."""
    x = x.detach().requires_grad_()
    y = module(x)
    (dx,) = torch.autograd.grad(y, x, dy)
    x64 = x.detach().double().requires_grad_()
    w64, b64 = (None if p is None else p.detach().double() for p in (module.weight, module.bias))
    y64 = torch.nn.functional.layer_norm(x64, module.normalized_shape, w64, b64, module.eps)
    (dx64,) = torch.autograd.grad(y64, x64, dy.double())
    return max((y.double() - y64).abs().max().item(), (dx.double() - dx64).abs().max().item())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("hidden", HIDDEN)
def bench_layer_norm(benchmark, hidden: int, dtype: torch.dtype, mode: str, variant: str) -> None:
    backward = mode == "forward+backward"
    x, dy, modules = _setup(hidden, dtype)
    module = modules[variant]
    step = _step(module, x, dy, backward)
    moved = (5 if backward else 2) * x.numel() * x.element_size()

    benchmark.group = f"layer_norm {mode} N={hidden} {str(dtype).replace('torch.', '')}"
    benchmark.extra_info.update(
        variant=variant,
        role="reference" if variant == "torch" else "candidate",
        shape=list(x.shape),
        device=DEVICE,
        threads=torch.get_num_threads(),
        path=ln_op.explain(x, (hidden,), module.weight, module.bias).path
        if variant == "fbdl_fast"
        else "torch",
        peak_memory_mib=peak_mib(step),
        saved_mib=round(saved_mib(lambda: module(x)), 3),
    )
    if variant == "fbdl_fast" and not benchmark.disabled:
        # Ratios measured here, in the same run, so they hold whatever else the machine does.
        torch_step = _step(modules["torch"], x, dy, backward)
        seconds = interleaved_medians({"ours": step, "torch": torch_step}, repeats=30)
        ours_s, torch_s = seconds["ours"], seconds["torch"]
        torch_peak = peak_mib(torch_step)
        ours_peak = benchmark.extra_info["peak_memory_mib"]
        benchmark.extra_info.update(
            speedup=torch_s / ours_s,  # timed in turns: the figure the report shows
            speedup_vs_torch=round(torch_s / ours_s, 3),
            gbps=round(moved / ours_s / 1e9, 1),
            gbps_torch=round(moved / torch_s / 1e9, 1),
            peak_memory_mib_torch=torch_peak,
            memory_ratio_vs_torch=round(ours_peak / torch_peak, 3) if torch_peak else None,
        )

    rounds = 1 if benchmark.disabled else 20
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=0 if benchmark.disabled else 2)

    # A wrong kernel must not look fast: within twice torch's own error against float64
    # (FlashAttention's parity rule), or a few ulps where torch's error is ~0.
    error = _max_error(module, x, dy)
    benchmark.extra_info["max_abs_error_vs_float64"] = error
    if variant == "fbdl_fast":
        floor = 8 * torch.finfo(dtype).eps
        assert error <= max(2 * _max_error(modules["torch"], x, dy), floor), error
