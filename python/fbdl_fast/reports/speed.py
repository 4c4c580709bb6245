"""Timing training steps: reference vs patched model, fp32 vs AMP, measured in one run.

Used by `fbdl-fast demo` (its Patched and AMP columns) and by benches/bench_models.py. A step is
forward, cross-entropy, backward and an AdamW step on one fixed batch.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Optional

import torch
from torch import nn

from fbdl_fast.nn.patch import patch


def amp_dtype_for(device: str) -> torch.dtype:
    """The AMP dtype a device uses: fp16 (with a GradScaler) on CUDA, bf16 on a CPU."""
    return torch.float16 if device == "cuda" else torch.bfloat16


def training_step(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    amp_dtype: Optional[torch.dtype] = None,
) -> Callable[[], float]:
    """A closure running one training step of `model` on the batch; it returns the loss."""
    device = input_ids.device.type
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=amp_dtype is torch.float16)

    def step() -> float:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = model(input_ids, attention_mask)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step


def median_seconds(step: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `step` over `repeats` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_times(
    steps: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall time of every call of each step, timed in turns (a, b, c, a, b, c, ...).

    Taking turns spreads the machine's slow and fast moments over every variant; timing one
    variant after the other lets a drift in between pass for a speedup.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return times


def interleaved_medians(
    steps: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median wall time of each step, timed in turns (see interleaved_times)."""
    times = interleaved_times(steps, repeats, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


def step_speedups(
    reference: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    repeats: int = 5,
) -> dict[str, float]:
    """Speed of a patched copy and of AMP relative to `reference` (fp32), on one batch.

    Returns {"patched": t_ref / t_patched, "amp": t_ref / t_amp}; above 1 means faster. Each
    variant trains its own copy of the weights, so the reference model is left untouched; the
    three steps are timed in turns.
    """
    batch = (input_ids, attention_mask, labels)
    patched = copy.deepcopy(reference)
    patch(patched)
    amp_dtype = amp_dtype_for(input_ids.device.type)
    seconds = interleaved_medians(
        {
            "reference": training_step(copy.deepcopy(reference), *batch),
            "patched": training_step(patched, *batch),
            "amp": training_step(copy.deepcopy(reference), *batch, amp_dtype=amp_dtype),
        },
        repeats,
    )
    return {
        "patched": seconds["reference"] / seconds["patched"],
        "amp": seconds["reference"] / seconds["amp"],
    }
