"""Fused attention vs torch's scaled_dot_product_attention, each SDPA backend pinned, side by side.

One benchmark per problem: B sequences of length L, H heads of size D, dense or with a key
padding mask (lengths uniform in [L/4, L]: a padded batch of posts), dropout 0 or 0.1.

Before anything is timed, the output and dq, dk, dv (at dropout 0) are checked against the
reference in fp32: our error must be at most twice SDPA's own error in the same precision
(FlashAttention's rule), or a few ulps where that is ~0. With dropout the kernel's mask is its
own (Philox), so the check there is that one seed gives the same output and gradients twice.

SDPA is timed once per backend that accepts the inputs, pinned with torch.nn.attention.
sdpa_kernel (flash, cudnn, efficient, math); each row names every backend's time and the best,
which is what our speedup is measured against. Forward and forward+backward are timed in turns
(measure.time_in_turns: CUDA events, L2 flushed, >= 50 calls on a GPU; host time apart).
TFLOP/s count the nominal dense work, 4 * B * H * L^2 * D forward and 3.5 times that forward+
backward (FlashAttention's convention), padded or not. Peak memory shows whether it grows
linearly in L.

On CUDA: bf16, D in 32, 64, 128; L in 128, 512, 2,048 with B * L = 32,768 tokens and H = 8.
On a CPU: fp32, L = 64, B = H = 2, D in 32, 64, for the test command's smoke run.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F

from fbdl_fast.ops import attention as attention_op
from measure import (
    CUDA,
    dtype_name,
    max_abs_error,
    peak_mib,
    record,
    synchronized,
    time_in_turns,
    within_parity,
)

DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
LENGTHS = (128, 512, 2048) if CUDA else (64,)
HEAD_DIMS = (32, 64, 128) if CUDA else (32, 64)
HEADS = 8 if CUDA else 2
TOKENS = 32768 if CUDA else 128  # B * L
DROPOUTS = (0.0, 0.1)
GRADS = ("out", "dq", "dk", "dv")

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel

    SDPA_BACKENDS = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
except ImportError:  # pragma: no cover - older torch: SDPA as it dispatches itself
    SDPA_BACKENDS, sdpa_kernel = {}, None


def _inputs(L: int, D: int, padded: bool):
    generator = torch.Generator(DEVICE).manual_seed(0)
    shape = (TOKENS // L, HEADS, L, D)  # (B, H, L, D)
    q, k, v, dout = (torch.randn(shape, device=DEVICE, generator=generator) for _ in range(4))
    q, k, v = (t.to(DTYPE).requires_grad_() for t in (q, k, v))
    key_mask = None
    if padded:
        lengths = torch.randint(L // 4, L + 1, (shape[0],), device=DEVICE, generator=generator)
        key_mask = torch.arange(L, device=DEVICE)[None, :] < lengths[:, None]  # (B, L) True=real
    return q, k, v, dout.to(DTYPE), key_mask


def _ours(key_mask, dropout_p: float) -> Callable[..., torch.Tensor]:
    return lambda q, k, v: attention_op.dispatch(q, k, v, key_mask, dropout_p=dropout_p)


def _sdpa(
    key_mask, dropout_p: float, backend: Optional[str], quiet: bool = False
) -> Callable[..., torch.Tensor]:
    """SDPA pinned to `backend` (None: as torch picks). `quiet` silences the warnings of a
    backend that warns on every call while it works (they are errors under pytest here)."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, L)

    def run(q, k, v):
        pinned = sdpa_kernel(SDPA_BACKENDS[backend]) if backend else contextlib.nullcontext()
        with pinned, warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)

    return run


def _forward(fn, q, k, v) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad():
            return fn(q, k, v)

    return step


def _forward_backward(fn, q, k, v, dout) -> Callable[[], object]:
    def step() -> object:
        return torch.autograd.grad(fn(q, k, v), (q, k, v), dout)

    return step


def _outputs(fn, q, k, v, dout) -> list[torch.Tensor]:
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return [out, *torch.autograd.grad(out, (q, k, v), dout)]


def _check_parity(q, k, v, dout, key_mask, dropout_p: float) -> dict[str, float]:
    if dropout_p:  # the kernel's own dropout mask: the same seed must give the same result
        results = []
        for _ in range(2):
            torch.manual_seed(1234)
            results.append(_outputs(_ours(key_mask, dropout_p), q, k, v, dout))
        differ = [n for n, a, b in zip(GRADS, *results) if not torch.equal(a, b)]
        assert not differ, f"attention with dropout: one seed gave two results for {differ}"
        return {}
    truth = _outputs(lambda *t: attention_op.reference(*t, key_mask), *(
        t.float() for t in (q, k, v, dout)
    ))  # fmt: skip
    ours = _outputs(_ours(key_mask, 0.0), q, k, v, dout)
    sdpa = _outputs(_sdpa(key_mask, 0.0, None), q, k, v, dout)
    errors = {name: max_abs_error(o, t) for name, o, t in zip(GRADS, ours, truth)}
    yardstick = {name: max_abs_error(s, t) for name, s, t in zip(GRADS, sdpa, truth)}
    floor = 8 * torch.finfo(DTYPE).eps
    failed = {
        name: (errors[name], yardstick[name])
        for name in GRADS
        if not within_parity(errors[name], yardstick[name], floor)
    }
    assert not failed, f"fused attention off the fp32 reference (ours, SDPA's): {failed}"
    return {**errors, **{f"sdpa_{name}": value for name, value in yardstick.items()}}


def _usable_backends(q, k, v, dout, key_mask, dropout_p: float) -> dict[str, bool]:
    """The SDPA backends that accept these inputs forward and backward, each with whether it
    warned while doing so."""
    if not SDPA_BACKENDS:
        return {"default": False}
    usable = {}
    for name in SDPA_BACKENDS:
        try:
            with warnings.catch_warnings(record=True) as caught:  # a refusing one warns why
                warnings.simplefilter("always")
                _forward_backward(_sdpa(key_mask, dropout_p, name), q, k, v, dout)()
        except (RuntimeError, NotImplementedError, ValueError):  # "No available kernel"
            continue
        usable[name] = bool(caught)
    assert usable, "no SDPA backend accepted these inputs"
    return usable


@pytest.mark.parametrize("dropout_p", DROPOUTS, ids=lambda p: f"dropout{p}")
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("L", LENGTHS)
def bench_attention(benchmark, L: int, D: int, padded: bool, dropout_p: float) -> None:
    q, k, v, dout, key_mask = _inputs(L, D, padded)
    errors = _check_parity(q, k, v, dout, key_mask, dropout_p)
    backends = _usable_backends(q, k, v, dout, key_mask, dropout_p)
    B = q.shape[0]
    problem = {
        "batch": B, "heads": HEADS, "length": L, "head_dim": D, "dtype": dtype_name(DTYPE),
        "padded": padded, "dropout": dropout_p, "device": DEVICE,
    }  # fmt: skip
    path = attention_op.explain(q, k, v, key_mask, dropout_p=dropout_p).path
    benchmark.group = f"attention L={L} D={D} {'padded' if padded else 'dense'} p={dropout_p}"
    benchmark.extra_info.update(
        **problem, role="candidate", variant="fbdl_fast", path=path, errors=errors
    )

    measured = not benchmark.disabled or CUDA
    for mode in ("forward", "forward+backward"):
        backward = mode == "forward+backward"
        variants = {"ours": _ours(key_mask, dropout_p)}
        for name, warned in backends.items():
            backend = None if name == "default" else name
            variants[f"sdpa_{name}"] = _sdpa(key_mask, dropout_p, backend, quiet=warned)
        steps = {
            name: _forward_backward(fn, q, k, v, dout) if backward else _forward(fn, q, k, v)
            for name, fn in variants.items()
        }
        timings = time_in_turns(steps, repeats=10 if measured else 1, warmup=2 if measured else 0)
        best = min(backends, key=lambda name: timings[f"sdpa_{name}"].median_s)
        flops = 4 * B * HEADS * L * L * D * (3.5 if backward else 1.0)
        row = {
            **problem,
            "mode": mode,
            "path": path,
            **timings["ours"].summary("ours"),
            "sdpa_best": best,
            **timings[f"sdpa_{best}"].summary("sdpa"),
            **{f"sdpa_{name}_ms": timings[f"sdpa_{name}"].median_s * 1e3 for name in backends},
            "speedup": timings[f"sdpa_{best}"].median_s / timings["ours"].median_s,
            "ours_tflops": flops / timings["ours"].median_s / 1e12,
            "ours_peak_mib": peak_mib(steps["ours"]),
            "sdpa_peak_mib": peak_mib(steps[f"sdpa_{best}"]),
            "errors": errors,
        }
        record("attention", row)
        benchmark.extra_info[mode] = row
    benchmark.extra_info["speedup"] = benchmark.extra_info["forward+backward"]["speedup"]

    step = synchronized(_forward_backward(_ours(key_mask, dropout_p), q, k, v, dout))
    benchmark.pedantic(step, rounds=1 if benchmark.disabled else 20, warmup_rounds=0)
