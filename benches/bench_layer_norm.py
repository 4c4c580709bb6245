"""Fused LayerNorm (fbdl_fast.nn.LayerNorm) vs torch.nn.LayerNorm, side by side.

One benchmark per problem: M rows of hidden N, eps 1e-5, affine, in one precision:
- `fp32`, `fp16`, `bf16`: input and parameters in that dtype;
- `bf16-autocast`: bf16 input, fp32 parameters, under bf16 autocast (a mixed-precision model):
  torch runs layer_norm in fp32 there and returns fp32 on CUDA.

Before anything is timed, our output and every gradient (x, weight, bias) are checked against
torch in float64: our error must be at most twice torch's own error in the same precision
(FlashAttention's rule), or a few ulps where that is ~0. A wrong kernel never gets a speed.

Then forward and forward+backward are timed in turns against torch (measure.time_in_turns: CUDA
events, L2 flushed, >= 50 calls on a GPU; host time apart), and the forward against a plain
device copy of x, the bandwidth a memory-bound kernel can hope for. GB/s count the fewest bytes
each pass must move: forward reads x and writes y; forward+backward also reads x and dy and
writes dx, dw, db; parameters once per pass.

On CUDA: M in 4,096, 16,384, 65,536 x N in 768, 1,024, 4,096, 8,192, four precisions. On a CPU
a small M (the smoke run of the test command, and `fbdl-fast bench` there); there the dispatched
path is torch's own (benches/conftest.py), so the ratio measures dispatch overhead.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from fbdl_fast.nn import LayerNorm
from fbdl_fast.ops import layer_norm as ln_op
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
ROWS = (4096, 16384, 65536) if CUDA else (64,)
HIDDEN = (768, 1024, 4096, 8192) if CUDA else (768, 4096)
PRECISIONS = ("fp32", "fp16", "bf16", "bf16-autocast")
STORAGE = {
    "fp32": (torch.float32, torch.float32),  # (x dtype, parameter dtype)
    "fp16": (torch.float16, torch.float16),
    "bf16": (torch.bfloat16, torch.bfloat16),
    "bf16-autocast": (torch.bfloat16, torch.float32),
}


def _setup(rows: int, hidden: int, precision: str):
    x_dtype, p_dtype = STORAGE[precision]
    generator = torch.Generator(DEVICE).manual_seed(0)
    x = torch.randn(rows, hidden, device=DEVICE, generator=generator).to(x_dtype)
    ours = LayerNorm(hidden, device=DEVICE, dtype=p_dtype)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn(p.shape, device=DEVICE, generator=generator))
    theirs = torch.nn.LayerNorm(hidden, device=DEVICE, dtype=p_dtype)
    theirs.load_state_dict(ours.state_dict())
    with _autocast(precision):
        y_dtype = theirs(x[:1]).dtype
    dy = torch.randn(rows, hidden, device=DEVICE, generator=generator).to(y_dtype)
    return x.requires_grad_(), dy, ours, theirs


def _autocast(precision: str) -> torch.autocast:
    return torch.autocast(DEVICE, torch.bfloat16, enabled=precision == "bf16-autocast")


def _call(module: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    with _autocast(precision):
        return module(x)


def _forward(module: torch.nn.Module, x: torch.Tensor, precision: str) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad():
            return _call(module, x, precision)

    return step


def _forward_backward(
    module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, precision: str
) -> Callable[[], object]:
    inputs = [x, *module.parameters()]

    def step() -> object:
        return torch.autograd.grad(_call(module, x, precision), inputs, dy)

    return step


def _errors(module, x, dy, precision: str) -> dict[str, float]:
    """Max |error| of y, dx, dw, db against torch's layer_norm in float64."""
    y = _call(module, x, precision)
    got = [y, *torch.autograd.grad(y, [x, module.weight, module.bias], dy)]
    x64 = x.detach().double().requires_grad_()
    w64, b64 = (p.detach().double().requires_grad_() for p in (module.weight, module.bias))
    y64 = torch.nn.functional.layer_norm(x64, module.normalized_shape, w64, b64, module.eps)
    want = [y64, *torch.autograd.grad(y64, [x64, w64, b64], dy.double())]
    return {name: max_abs_error(g, w) for name, g, w in zip(("y", "dx", "dw", "db"), got, want)}


def _check_parity(ours, theirs, x, dy, precision: str) -> dict[str, float]:
    errors, yardstick = _errors(ours, x, dy, precision), _errors(theirs, x, dy, precision)
    x_dtype, _ = STORAGE[precision]
    failed = {}
    for name, error in errors.items():
        floor = 8 * torch.finfo(x_dtype).eps * (x.shape[0] if name in ("dw", "db") else 1)
        if not within_parity(error, yardstick[name], floor):
            failed[name] = (error, yardstick[name])
    assert not failed, f"fused LayerNorm off torch's float64 result (ours, torch's): {failed}"
    return errors


def _bytes(x: torch.Tensor, dy: torch.Tensor, module: torch.nn.Module, backward: bool) -> int:
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    x_bytes, y_bytes = x.numel() * x.element_size(), dy.numel() * dy.element_size()
    forward = x_bytes + y_bytes + params
    return forward + (2 * x_bytes + y_bytes + 2 * params if backward else 0)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("rows", ROWS)
def bench_layer_norm(benchmark, rows: int, hidden: int, precision: str) -> None:
    x, dy, ours, theirs = _setup(rows, hidden, precision)
    errors = _check_parity(ours, theirs, x, dy, precision)
    with _autocast(precision):
        path = ln_op.explain(x, (hidden,), ours.weight, ours.bias).path
    problem = {"rows": rows, "hidden": hidden, "precision": precision, "device": DEVICE}
    benchmark.group = f"layer_norm M={rows} N={hidden} {precision}"
    benchmark.extra_info.update(
        **problem, role="candidate", variant="fbdl_fast", path=path, max_abs_error=errors
    )

    copy_target = torch.empty_like(x)
    measured = not benchmark.disabled or CUDA
    for mode in ("forward", "forward+backward"):
        backward = mode == "forward+backward"
        steps = {
            "ours": _forward_backward(ours, x, dy, precision)
            if backward
            else _forward(ours, x, precision),
            "torch": _forward_backward(theirs, x, dy, precision)
            if backward
            else _forward(theirs, x, precision),
        }
        repeats, warmup = (30, 3) if measured else (1, 0)
        timings = time_in_turns(steps, repeats=repeats, warmup=warmup)
        if not backward:  # apart: on a CPU the call after the copy paid ~1.5 us of 22 (measured)
            copy = {"copy": lambda: copy_target.copy_(x.detach())}
            timings.update(time_in_turns(copy, repeats=repeats, warmup=warmup))
        moved = _bytes(x, dy, ours, backward)
        row = {
            **problem,
            "mode": mode,
            "path": path,
            **timings["ours"].summary("ours"),
            **timings["torch"].summary("torch"),
            "speedup": timings["torch"].median_s / timings["ours"].median_s,
            "bytes": moved,
            "ours_gbps": moved / timings["ours"].median_s / 1e9,
            "torch_gbps": moved / timings["torch"].median_s / 1e9,
            "ours_peak_mib": peak_mib(steps["ours"]),
            "torch_peak_mib": peak_mib(steps["torch"]),
            "ours_saved_mib": saved_mib(lambda: _call(ours, x, precision)) if backward else None,
            "max_abs_error": errors,
        }
        if "copy" in timings:
            copy_gbps = 2 * x.numel() * x.element_size() / timings["copy"].median_s / 1e9
            row.update(copy_gbps=copy_gbps, ours_pct_of_copy=100 * row["ours_gbps"] / copy_gbps)
        record("layer_norm", row)
        benchmark.extra_info[mode] = row
    # The report's figure: forward+backward, timed in turns against torch.
    benchmark.extra_info["speedup"] = benchmark.extra_info["forward+backward"]["speedup"]

    step = synchronized(_forward_backward(ours, x, dy, precision))
    benchmark.pedantic(step, rounds=1 if benchmark.disabled else 20, warmup_rounds=0)
