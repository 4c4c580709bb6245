"""Fused attention vs torch's scaled_dot_product_attention vs the naive composition.

Each group is one problem (length, dtype, key padding or not, forward or forward+backward) with
three variants: `fused` (fbdl_fast.ops.attention.dispatch: the Triton kernel on CUDA, whatever
dispatch picks elsewhere), `sdpa` (torch, the group's reference; with a key mask torch cannot use
its flash backend and runs mem-efficient or math), `naive` (softmax(QK^T * scale + mask) V
written out, materialising the L x L matrix). The fused benchmark also times the other two in
the same run and records the ratios (speedup_vs_sdpa, speedup_vs_naive) in extra_info, with its
TFLOP/s and the peak memory of each variant.

FLOPs count the nominal dense work, 4 * B * H * L^2 * D forward and 2.5 times that for the
backward (FlashAttention's convention), whether keys are padded or not.

On CUDA: L in 128, 512, 2048, D = 64, fp16 and bf16. On a CPU: a reduced problem (L = 64, fp32)
so the smoke run (--benchmark-disable, each benchmark once) is quick; there the dispatched path
is the reference unless TRITON_INTERPRET=1 and a backend asks for the kernel.
"""

from __future__ import annotations

from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F

from fbdl_fast.ops import attention as attention_op
from fbdl_fast.speed import interleaved_medians
from measure import peak_mib

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
LENGTHS = (128, 512, 2048) if CUDA else (64,)
DTYPES = (torch.float16, torch.bfloat16) if CUDA else (torch.float32,)
B, H, D = (16, 8, 64) if CUDA else (2, 2, 64)
VARIANTS = ("fused", "sdpa", "naive")


def _inputs(L: int, dtype: torch.dtype, padded: bool):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=generator) for _ in range(3))
    q, k, v = (t.to(DEVICE, dtype).requires_grad_() for t in (q, k, v))
    key_mask = None
    if padded:  # post lengths uniform in [L/4, L]: a padded batch of posts
        lengths = torch.randint(L // 4, L + 1, (B,), generator=generator)
        key_mask = (torch.arange(L)[None, :] < lengths[:, None]).to(DEVICE)  # (B, L) True = real
    return q, k, v, key_mask


def _naive(q, k, v, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) * D**-0.5  # (B, H, L, L)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _variant(name: str, key_mask: Optional[torch.Tensor]) -> Callable[..., torch.Tensor]:
    if name == "fused":
        return lambda q, k, v: attention_op.dispatch(q, k, v, key_mask)
    if name == "sdpa":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return lambda q, k, v: _naive(q, k, v, key_mask)


def _step(fn: Callable[..., torch.Tensor], q, k, v, backward: bool) -> Callable[[], None]:
    dout = torch.randn_like(q)

    def step() -> None:
        out = fn(q, k, v)
        if backward:
            torch.autograd.grad(out, (q, k, v), dout)
        if CUDA:
            torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("L", LENGTHS)
def bench_attention(
    benchmark, L: int, dtype: torch.dtype, padded: bool, mode: str, variant: str
) -> None:
    backward = mode == "forward+backward"
    q, k, v, key_mask = _inputs(L, dtype, padded)
    step = _step(_variant(variant, key_mask), q, k, v, backward)
    flops = 4 * B * H * L * L * D * (3.5 if backward else 1.0)
    dtype_name = str(dtype).removeprefix("torch.")

    benchmark.group = f"attention {mode} L={L} {dtype_name} {'padded' if padded else 'dense'}"
    benchmark.extra_info.update(
        variant=variant,
        role="reference" if variant == "sdpa" else "candidate",
        shape=[B, H, L, D],
        device=DEVICE,
        path=attention_op.explain(q, k, v, key_mask).path if variant == "fused" else variant,
        peak_memory_mib=peak_mib(step),
    )
    if variant == "fused" and not benchmark.disabled:
        # Ratios measured here, in the same run, so they survive without the report.
        others = {o: _step(_variant(o, key_mask), q, k, v, backward) for o in ("sdpa", "naive")}
        seconds = interleaved_medians({"fused": step, **others}, repeats=10)  # timed in turns
        fused_s = seconds["fused"]
        benchmark.extra_info["speedup"] = seconds["sdpa"] / fused_s  # the report's figure
        for other, other_step in others.items():
            benchmark.extra_info[f"speedup_vs_{other}"] = round(seconds[other] / fused_s, 3)
            benchmark.extra_info[f"peak_memory_mib_{other}"] = peak_mib(other_step)
        benchmark.extra_info["tflops"] = round(flops / fused_s / 1e12, 3)

    rounds = 1 if benchmark.disabled else 20
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=0 if benchmark.disabled else 2)

    # A wrong kernel must not look fast: the forward agrees with torch's SDPA.
    with torch.no_grad():
        out = _variant(variant, key_mask)(q, k, v).float()
        ref = _variant("sdpa", key_mask)(q, k, v).float()
    difference = (out - ref).abs().max().item()
    benchmark.extra_info["max_abs_diff_vs_sdpa"] = difference
    assert difference < (1e-4 if dtype == torch.float32 else 5e-2), difference
